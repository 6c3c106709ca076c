//! Faults a test queues per route; each request on the route takes the next one.

use crate::reply::ApiError;

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this error instead of handling the request.
    Http(ApiError),
    /// Accept the request, but its operation ends DONE with this error and nothing changes.
    OpError {
        /// `error.errors[0].code` (`QUOTA_EXCEEDED` …).
        code: String,
        /// `error.errors[0].message`.
        message: String,
        /// `httpErrorStatusCode`.
        http_status: u16,
    },
    /// The request's operation stays RUNNING for this many more polls.
    OpStaysRunning(u32),
    /// On a `/wait` route: return after one step, before DONE.
    WaitReturnsEarly,
    /// On `setMetadata`: another writer changes the metadata first, so the fingerprint the
    /// client sends is stale.
    ConcurrentMetadataChange,
}

impl Fault {
    /// 429 `rateLimitExceeded`.
    pub fn rate_limited() -> Self {
        Fault::Http(ApiError::new(
            429,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        ))
    }

    /// 503 `backendError`.
    pub fn unavailable() -> Self {
        Fault::Http(ApiError::new(
            503,
            "backendError",
            "The service is currently unavailable.",
        ))
    }

    /// 403 `quotaExceeded`.
    pub fn quota_exceeded() -> Self {
        Fault::Http(ApiError::new(
            403,
            "quotaExceeded",
            "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute'.",
        ))
    }

    /// 412 `conditionNotMet`, as a stale metadata fingerprint gets.
    pub fn precondition_failed() -> Self {
        Fault::Http(ApiError::fingerprint_mismatch())
    }

    /// 400 `resourceInUseByAnotherResource`, as a disk delete gets while the disk is attached.
    pub fn disk_in_use() -> Self {
        Fault::Http(ApiError::in_use(
            "The disk resource is already being used by an instance",
        ))
    }

    /// An operation that ends with `QUOTA_EXCEEDED`.
    pub fn op_quota_exceeded() -> Self {
        Fault::OpError {
            code: "QUOTA_EXCEEDED".into(),
            message: "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1.".into(),
            http_status: 403,
        }
    }

    /// An operation that ends with `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS` (a stockout).
    pub fn op_stockout(zone: &str, machine_type: &str) -> Self {
        Fault::OpError {
            code: "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS".into(),
            message: format!(
                "The zone 'projects/p/zones/{zone}' does not have enough resources available to fulfill the request.  '(resource type:compute)'. Machine type {machine_type}."
            ),
            http_status: 503,
        }
    }

    /// A `setMetadata` operation that ends with a fingerprint mismatch.
    pub fn op_fingerprint_mismatch() -> Self {
        Fault::OpError {
            code: "CONDITION_NOT_MET".into(),
            message: "Supplied fingerprint does not match current metadata fingerprint.".into(),
            http_status: 412,
        }
    }
}
