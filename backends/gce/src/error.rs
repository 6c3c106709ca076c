//! GCE's errors: the JSON envelope of a failed HTTP call and the `error` of a finished
//! operation, both turned into one [`ApiError`] and classified by reason ([`ErrorKind`]).
//!
//! Classification goes by reason before status because the two disagree where it matters: a
//! zone stockout arrives on a DONE operation with `httpErrorStatusCode: 503`, and must not be
//! retried as a transient 503 would be.

use std::fmt;

use serde::Deserialize;

use crate::compute::model::Operation;

/// What a caller can do about an error, decided from its reasons and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The resource does not exist (`notFound`, 404): a delete is done, a get is empty.
    NotFound,
    /// The name is taken (`alreadyExists`, 409).
    AlreadyExists,
    /// A fingerprint did not match (`conditionNotMet`, 412): read again, merge, retry.
    Precondition,
    /// The resource is used by another one (`resourceInUseByAnotherResource`), such as a disk
    /// still attached to an instance being deleted: retry later.
    InUse,
    /// Too many requests (429, `rateLimitExceeded`, `userRateLimitExceeded`): retry later.
    RateLimited,
    /// A project or region quota is exhausted (`QUOTA_EXCEEDED`, `quotaExceeded`).
    Quota,
    /// The zone has no capacity for the machine type
    /// (`ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS]`).
    Stockout,
    /// A server-side failure worth retrying (5xx but 501, `backendError`, `internalError`).
    Transient,
    /// Anything else: a mistake in the request or a permission problem.
    Other,
}

/// One failed Compute call or operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status (for an operation, its `httpErrorStatusCode`; 0 when it has none).
    pub status: u16,
    /// The reasons GCE gave (`errors[].reason` in an envelope, `errors[].code` on an operation).
    pub reasons: Vec<String>,
    /// The messages GCE gave, joined with `; `.
    pub message: String,
    /// The zone and machine type the failed call asked for, named in the message of a quota or
    /// stockout error (see [`ApiError::with_placement`]).
    pub placement: Option<(String, String)>,
}

/// The reason given to an answer that cannot be Compute's (see
/// [`ApiError::from_compute_response`]); no GCE reason has a colon.
pub const NOT_AN_API_ANSWER: &str = "cos-customizer:notAnApiAnswer";

#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<EnvelopeItem>,
}

#[derive(Deserialize)]
struct EnvelopeItem {
    #[serde(default)]
    reason: String,
}

impl ApiError {
    /// The error of an HTTP response with status `status` and body `body`. A body that is not
    /// GCE's envelope (a proxy's HTML page, an empty body) keeps the status and the start of the
    /// body as its message.
    pub fn from_response(status: u16, body: &str) -> ApiError {
        match serde_json::from_str::<Envelope>(body) {
            Ok(Envelope { error }) => ApiError {
                status: if error.code == 0 { status } else { error.code },
                reasons: error
                    .errors
                    .into_iter()
                    .map(|e| e.reason)
                    .filter(|r| !r.is_empty())
                    .collect(),
                message: error.message,
                placement: None,
            },
            Err(_) => ApiError {
                status,
                reasons: Vec::new(),
                message: body.chars().take(300).collect(),
                placement: None,
            },
        }
    }

    /// [`ApiError::from_response`] for Compute, which answers every error with its envelope:
    /// a 404 without one comes from something that is not the API (a wrong
    /// `-compute-endpoint`, a proxy), so it is not "not found", which would read as "the image
    /// does not exist yet".
    pub fn from_compute_response(status: u16, body: &str) -> ApiError {
        let mut err = ApiError::from_response(status, body);
        if status == 404 && err.reasons.is_empty() {
            err.reasons.push(NOT_AN_API_ANSWER.to_string());
            err.message = format!(
                "the endpoint answered 404 without Compute's error body ({:?}): is \
                 -compute-endpoint the Compute API's base path (such as \
                 https://compute.googleapis.com/compute/v1/)?",
                err.message
            );
        }
        err
    }

    /// The error of a DONE operation, or `None` when it succeeded. DONE alone says nothing
    /// about success: the operation's `error.errors[]` does.
    pub fn from_operation(op: &Operation) -> Option<ApiError> {
        let errors = &op.error.as_ref()?.errors;
        if errors.is_empty() {
            return None;
        }
        Some(ApiError {
            status: op.http_error_status_code.unwrap_or(0) as u16,
            reasons: errors.iter().map(|e| e.code.clone()).collect(),
            message: errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            placement: None,
        })
    }

    /// The same error, naming `zone` and `machine_type` if it turns out to be a quota or
    /// stockout error, so the user knows which `-zone` or `-machine-type` to change.
    pub fn with_placement(mut self, zone: &str, machine_type: &str) -> ApiError {
        self.placement = Some((zone.to_string(), machine_type.to_string()));
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        let has = |names: &[&str]| self.reasons.iter().any(|r| names.contains(&r.as_str()));
        if has(&[NOT_AN_API_ANSWER]) {
            ErrorKind::Other
        } else if has(&[
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        ]) {
            ErrorKind::Stockout
        } else if has(&["QUOTA_EXCEEDED", "quotaExceeded"]) {
            ErrorKind::Quota
        } else if has(&["rateLimitExceeded", "userRateLimitExceeded"]) {
            ErrorKind::RateLimited
        } else if has(&[
            "resourceInUseByAnotherResource",
            "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
        ]) {
            ErrorKind::InUse
        } else if has(&["conditionNotMet", "CONDITION_NOT_MET"])
            // An operation may report a fingerprint race with only this message.
            || self.message.contains("fingerprint does not match")
        {
            ErrorKind::Precondition
        } else if has(&["alreadyExists", "RESOURCE_ALREADY_EXISTS"]) {
            ErrorKind::AlreadyExists
        } else if has(&["notFound", "RESOURCE_NOT_FOUND"]) {
            ErrorKind::NotFound
        } else {
            match self.status {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::AlreadyExists,
                412 => ErrorKind::Precondition,
                429 => ErrorKind::RateLimited,
                // 501 says the route is not served (the emulator's answer to an unknown route):
                // sending it again cannot help.
                500 | 502..=599 => ErrorKind::Transient,
                _ if has(&["backendError", "internalError"]) => ErrorKind::Transient,
                _ => ErrorKind::Other,
            }
        }
    }

    /// Whether the same request may succeed if sent again after a pause.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::RateLimited | ErrorKind::Transient)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reasons = self.reasons.join(", ");
        match (self.kind(), &self.placement) {
            (ErrorKind::Stockout, Some((zone, machine))) => write!(
                f,
                "zone {zone} has no capacity for machine type {machine} right now ({reasons}): \
                 {}; try another -zone or -machine-type",
                self.message
            ),
            (ErrorKind::Quota, Some((zone, machine))) => write!(
                f,
                "quota exceeded for machine type {machine} in zone {zone} ({reasons}): {}; \
                 raise the quota or pick another -zone or -machine-type",
                self.message
            ),
            _ if reasons.is_empty() => write!(f, "GCE error {}: {}", self.status, self.message),
            _ => write!(f, "GCE error {} ({reasons}): {}", self.status, self.message),
        }
    }
}

impl std::error::Error for ApiError {}

/// The kind of the [`ApiError`] anywhere in `err`'s chain, or `None` for errors that are not
/// GCE's (a broken connection, a bad URL).
pub fn kind_of(err: &anyhow::Error) -> Option<ErrorKind> {
    err.downcast_ref::<ApiError>().map(ApiError::kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/errors/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn envelope(status: u16, name: &str) -> ApiError {
        ApiError::from_response(status, &fixture(name))
    }

    fn operation(name: &str) -> ApiError {
        let op: Operation = serde_json::from_str(&fixture(name)).unwrap();
        ApiError::from_operation(&op).expect("the operation failed")
    }

    #[test]
    fn envelopes_are_classified_by_reason() {
        let cases = [
            (404, "not_found.json", ErrorKind::NotFound),
            (409, "already_exists.json", ErrorKind::AlreadyExists),
            (412, "condition_not_met.json", ErrorKind::Precondition),
            (400, "resource_in_use.json", ErrorKind::InUse),
            (403, "rate_limit_exceeded.json", ErrorKind::RateLimited),
            (403, "user_rate_limit_exceeded.json", ErrorKind::RateLimited),
            (403, "quota_exceeded.json", ErrorKind::Quota),
            (503, "backend_error.json", ErrorKind::Transient),
            (403, "forbidden.json", ErrorKind::Other),
        ];
        for (status, name, kind) in cases {
            let err = envelope(status, name);
            assert_eq!(err.kind(), kind, "{name}: {err:?}");
            assert!(!err.message.is_empty(), "{name}");
        }
    }

    #[test]
    fn an_envelope_keeps_its_status_reasons_and_message() {
        let err = envelope(400, "resource_in_use.json");
        assert_eq!(err.status, 400);
        assert_eq!(err.reasons, ["resourceInUseByAnotherResource"]);
        assert!(
            err.message.contains("preload-vm-build-image-"),
            "{}",
            err.message
        );
    }

    #[test]
    fn only_rate_limits_and_server_errors_are_retried() {
        assert!(envelope(403, "rate_limit_exceeded.json").is_retryable());
        assert!(envelope(503, "backend_error.json").is_retryable());
        assert!(!envelope(403, "quota_exceeded.json").is_retryable());
        assert!(!envelope(403, "forbidden.json").is_retryable());
        assert!(!operation("op_stockout.json").is_retryable());
    }

    #[test]
    fn a_compute_404_without_an_envelope_is_not_not_found() {
        let err = ApiError::from_compute_response(404, "<html>Not Found</html>");
        assert_eq!(err.kind(), ErrorKind::Other);
        assert!(err.message.contains("-compute-endpoint"), "{}", err.message);
        assert_eq!(
            ApiError::from_compute_response(404, &fixture("not_found.json")).kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn a_body_that_is_not_an_envelope_keeps_the_status() {
        let err = ApiError::from_response(502, "<html>Bad Gateway</html>");
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(err.message, "<html>Bad Gateway</html>");
        assert_eq!(
            ApiError::from_response(429, "").kind(),
            ErrorKind::RateLimited
        );
        assert_eq!(ApiError::from_response(404, "").kind(), ErrorKind::NotFound);
        assert_eq!(
            ApiError::from_response(412, "").kind(),
            ErrorKind::Precondition
        );
        assert_eq!(ApiError::from_response(501, "").kind(), ErrorKind::Other);
    }

    #[test]
    fn a_stockout_on_an_operation_names_the_zone_and_machine_type() {
        let err = operation("op_stockout.json");
        assert_eq!(err.kind(), ErrorKind::Stockout);
        assert_eq!(err.status, 503);
        let text = err
            .with_placement("us-central1-a", "n1-standard-8")
            .to_string();
        assert!(text.contains("zone us-central1-a"), "{text}");
        assert!(text.contains("machine type n1-standard-8"), "{text}");
        assert!(text.contains("does not have enough resources"), "{text}");
    }

    #[test]
    fn a_quota_error_on_an_operation_names_the_zone_and_machine_type() {
        let err = operation("op_quota.json");
        assert_eq!(err.kind(), ErrorKind::Quota);
        let text = err
            .with_placement("us-west1-b", "e2-standard-4")
            .to_string();
        assert!(text.contains("e2-standard-4"), "{text}");
        assert!(text.contains("us-west1-b"), "{text}");
        assert!(text.contains("CPUS"), "{text}");
    }

    #[test]
    fn a_fingerprint_race_on_an_operation_is_a_precondition() {
        assert_eq!(
            operation("op_fingerprint.json").kind(),
            ErrorKind::Precondition
        );
    }

    #[test]
    fn other_errors_do_not_name_a_placement() {
        let text = envelope(404, "not_found.json")
            .with_placement("us-central1-a", "n1-standard-1")
            .to_string();
        assert!(text.starts_with("GCE error 404 (notFound): "), "{text}");
        assert!(!text.contains("n1-standard-1"), "{text}");
    }

    #[test]
    fn a_done_operation_without_errors_succeeded() {
        let op: Operation = serde_json::from_str(&fixture("op_done.json")).unwrap();
        assert_eq!(ApiError::from_operation(&op), None);
    }

    #[test]
    fn kind_of_finds_the_error_under_context() {
        let err = anyhow::Error::new(envelope(404, "not_found.json")).context("getting a disk");
        assert_eq!(kind_of(&err), Some(ErrorKind::NotFound));
        assert_eq!(kind_of(&anyhow::anyhow!("connection reset")), None);
    }
}
