//! GCE's resource links (`selfLink`s and the paths they name) and its int64 fields.

use serde_json::Value;

/// Where GCE's `selfLink`s live.
pub(crate) const API_ROOT: &str = "https://www.googleapis.com/compute/v1/";
/// The API's other root (the discovery document's `rootUrl`), which GCE takes in links too.
const COMPUTE_ROOT: &str = "https://compute.googleapis.com/compute/v1/";

/// The full URL of a resource path such as `projects/p/zones/z/disks/d`.
pub(crate) fn link(path: &str) -> String {
    format!("{API_ROOT}{path}")
}

/// The resource path of a full URL under either root (the inverse of [`link`]); a path is
/// returned as it is.
pub(crate) fn unlink(url: &str) -> &str {
    url.strip_prefix(API_ROOT)
        .or_else(|| url.strip_prefix(COMPUTE_ROOT))
        .unwrap_or(url)
}

/// An int64 field that GCE sends as a string and accepts as either form.
pub(crate) fn int64(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}
