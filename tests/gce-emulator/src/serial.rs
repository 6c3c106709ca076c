//! Serial port output: a byte buffer with a retention window, read with GCE's `start`/`next`
//! byte offsets (int64 strings; a negative `start` means the last bytes; a `start` in dropped
//! output moves forward to the oldest byte kept).

use serde_json::json;

use crate::listing::arg;
use crate::model::{link, State};
use crate::reply::{ApiError, Reply};

/// Where port 3, which the build reports on, is in [`crate::model::Instance::serial`].
pub(crate) const PORT_3: usize = 2;

/// One port's output: the bytes kept and how many were dropped before them.
#[derive(Clone, Debug, Default)]
pub(crate) struct SerialBuffer {
    kept: Vec<u8>,
    dropped: u64,
    window: usize,
}

impl SerialBuffer {
    /// An empty buffer that keeps at most `window` bytes.
    pub fn new(window: usize) -> Self {
        SerialBuffer {
            kept: Vec::new(),
            dropped: 0,
            window: window.max(1),
        }
    }

    /// Appends output, dropping the oldest bytes beyond the window.
    pub fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > self.window {
            let excess = self.kept.len() - self.window;
            self.kept.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The bytes from `start` on, and the `start` and `next` offsets to report.
    pub fn read(&self, start: i64) -> (&[u8], u64, u64) {
        let total = self.dropped + self.kept.len() as u64;
        let wanted = if start < 0 {
            total.saturating_sub(start.unsigned_abs())
        } else {
            (start as u64).min(total)
        };
        let from = wanted.max(self.dropped);
        let slice = &self.kept[(from - self.dropped) as usize..];
        (slice, from, total)
    }
}

/// `GET projects/{p}/zones/{z}/instances/{i}/serialPort?port=&start=`.
pub(crate) fn get(state: &mut State, path: &str, query: &[(String, String)]) -> Reply {
    let port = match arg(query, "port") {
        None => 1,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=4).contains(p))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Invalid value for field 'port': '{p}'. Must be between 1 and 4"
                ))
            })?,
    };
    let start = match arg(query, "start") {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| ApiError::invalid(format!("Invalid value for field 'start': '{s}'")))?,
    };
    let instance = state
        .store
        .instances
        .get_mut(path)
        .ok_or_else(|| ApiError::not_found(path))?;
    if instance.status != "RUNNING" {
        return Err(ApiError::new(
            400,
            "resourceNotReady",
            format!("The resource '{path}' is not ready"),
        ));
    }
    if port == 3 {
        let reads = instance.serial_reads;
        let due: Vec<Vec<u8>> = instance
            .script
            .serial
            .iter()
            .filter(|(after, _)| *after <= reads)
            .map(|(_, bytes)| bytes.clone())
            .collect();
        instance.script.serial.retain(|(after, _)| *after > reads);
        for bytes in due {
            instance.serial[PORT_3].push(&bytes);
        }
        instance.serial_reads += 1;
    }
    let index = usize::try_from(port - 1).expect("ports are 1 to 4");
    let (bytes, from, next) = instance.serial[index].read(start);
    Ok(json!({
        "kind": "compute#serialPortOutput",
        "contents": String::from_utf8_lossy(bytes),
        "start": from.to_string(),
        "next": next.to_string(),
        "selfLink": link(&format!("{path}/serialPort")),
    }))
}

/// Appends raw bytes to serial port 3 of the instance at `path`, if it exists.
pub(crate) fn append(state: &mut State, path: &str, bytes: &[u8]) -> bool {
    match state.store.instances.get_mut(path) {
        Some(i) => {
            i.serial[PORT_3].push(bytes);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_bytes_and_start_moves_past_dropped_output() {
        let mut b = SerialBuffer::new(8);
        b.push("héllo".as_bytes());
        assert_eq!(b.read(0), ("héllo".as_bytes(), 0, 6));
        assert_eq!(b.read(6).0, b"");
        b.push(b" world");
        let (bytes, start, next) = b.read(0);
        assert_eq!((bytes, start, next), (&b"lo world"[..], 4, 12));
        assert_eq!(b.read(-3), (&b"rld"[..], 9, 12));
        assert_eq!(b.read(100), (&b""[..], 12, 12));
    }
}
