//! Sending a ureq request, with an HTTP error status turned into an error that carries the
//! status and the server's words, for the metadata server and GCS alike.

use anyhow::{bail, Context, Result};

/// Sends `req`; `what` says what for, in every error.
pub fn call(req: ureq::Request, what: &str) -> Result<ureq::Response> {
    match req.call() {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(code, r)) => bail!(
            "{what}: HTTP {code}: {}",
            r.into_string().unwrap_or_default().trim()
        ),
        Err(e) => Err(e).with_context(|| what.to_string()),
    }
}
