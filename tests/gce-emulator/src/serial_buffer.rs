//! Serial port output: a byte buffer with a retention window, read by byte offset.

/// Where port 3, which the build reports on, is in an instance's four ports.
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
