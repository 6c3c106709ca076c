//! `instances.getSerialPortOutput`, with GCE's `start`/`next` byte offsets (int64 strings; a
//! negative `start` means the last bytes; a `start` in dropped output moves forward to the oldest
//! byte kept), and output a test appends.

use serde_json::json;

use crate::links::link;
use crate::listing::arg;
use crate::model::State;
use crate::reply::{ApiError, Reply};
use crate::serial_buffer::PORT_3;

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
    // A guest that prints has left STAGING.
    if instance.status == "STAGING" {
        instance.status = "RUNNING";
    }
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
