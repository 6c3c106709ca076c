//! An operation as the emulator holds it, and its JSON as GCE shows it.

use serde_json::{json, Map, Value};

/// What becomes true when an operation is DONE without an error.
#[derive(Clone, Debug)]
pub(crate) enum Finish {
    /// Nothing more.
    Nothing,
    /// The instance at this path goes STAGING (RUNNING after a GET).
    InstanceRunning(String),
    /// The disk at this path goes READY.
    DiskReady(String),
    /// The image at this path goes READY.
    ImageReady(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    Running,
    Done,
}

/// One operation.
#[derive(Clone, Debug)]
pub(crate) struct Operation {
    pub json: Map<String, Value>,
    pub status: Status,
    pub running_left: u32,
    /// Boot-mode work (a VM starting, a disk being made) keeps it RUNNING until it ends.
    pub busy: bool,
    pub finish: Finish,
    pub error: Option<(String, String, u16)>,
}

impl Operation {
    pub fn to_json(&self) -> Value {
        let mut json = self.json.clone();
        let (status, progress) = match self.status {
            Status::Pending => ("PENDING", 0),
            Status::Running => ("RUNNING", 50),
            Status::Done => ("DONE", 100),
        };
        json.insert("status".into(), status.into());
        json.insert("progress".into(), progress.into());
        if self.status == Status::Done {
            if let Some((code, message, http)) = &self.error {
                json.insert(
                    "error".into(),
                    json!({"errors": [{"code": code, "message": message}]}),
                );
                json.insert("httpErrorStatusCode".into(), (*http).into());
                json.insert("httpErrorMessage".into(), http_reason(*http).into());
            }
        }
        Value::Object(json)
    }
}

/// The reason phrase GCE puts in `httpErrorMessage`.
fn http_reason(status: u16) -> &'static str {
    match status {
        400 => "BAD REQUEST",
        403 => "FORBIDDEN",
        404 => "NOT FOUND",
        409 => "CONFLICT",
        412 => "PRECONDITION FAILED",
        429 => "TOO MANY REQUESTS",
        503 => "SERVICE UNAVAILABLE",
        _ => "ERROR",
    }
}
