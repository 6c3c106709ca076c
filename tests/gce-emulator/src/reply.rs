//! Errors in GCE's envelope: `{"error":{"code","message","errors":[{"domain","reason","message"}]}}`.

use serde_json::{json, Value};

/// An API error as GCE reports it: an HTTP status, a `reason` and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code.
    pub status: u16,
    /// The `reason` of the single entry in `error.errors[]` (`notFound`, `conditionNotMet` …).
    pub reason: String,
    /// The message, both in `error.message` and in `error.errors[0].message`.
    pub message: String,
}

impl ApiError {
    /// An error with this status, reason and message.
    pub fn new(status: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// 404 `notFound` for a resource path (`projects/p/zones/z/disks/d`).
    pub(crate) fn not_found(path: &str) -> Self {
        Self::new(
            404,
            "notFound",
            format!("The resource '{path}' was not found"),
        )
    }

    /// 409 `alreadyExists` for a resource path.
    pub(crate) fn already_exists(path: &str) -> Self {
        Self::new(
            409,
            "alreadyExists",
            format!("The resource '{path}' already exists"),
        )
    }

    /// 400 `invalid`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid", message)
    }

    /// 400 `resourceInUseByAnotherResource`.
    pub(crate) fn in_use(message: impl Into<String>) -> Self {
        Self::new(400, "resourceInUseByAnotherResource", message)
    }

    /// 412 `conditionNotMet`: a metadata fingerprint that does not match.
    pub(crate) fn fingerprint_mismatch() -> Self {
        Self::new(
            412,
            "conditionNotMet",
            "Supplied fingerprint does not match current metadata fingerprint.",
        )
    }

    /// 501 for a route the emulator does not implement, naming it.
    pub(crate) fn not_implemented(method: &str, path: &str) -> Self {
        Self::new(
            501,
            "notImplemented",
            format!("gce-emulator does not implement {method} {path}"),
        )
    }

    /// The JSON body GCE sends with this error.
    pub fn envelope(&self) -> Value {
        json!({"error": {
            "code": self.status,
            "message": self.message,
            "errors": [{"domain": "global", "reason": self.reason, "message": self.message}],
        }})
    }
}

/// What a route handler returns: a 200 JSON body, or an error.
pub(crate) type Reply = Result<Value, ApiError>;
