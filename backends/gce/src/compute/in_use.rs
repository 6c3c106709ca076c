//! Deleting a disk that GCE may still see attached: a disk is detached a little after the
//! instance using it is deleted, and a delete in that window fails with
//! `resourceInUseByAnotherResource`.

use std::time::Duration;

use anyhow::Result;

use super::Compute;
use crate::error::{kind_of, ErrorKind};
use crate::retry::{Failure, RetryPolicy};

/// How often, and how patiently, a delete is retried while its resource is in use.
#[derive(Debug, Clone, Copy)]
pub struct InUseRetry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait after the first failed attempt; the n-th wait is n times this (and up to
    /// twice that, jittered).
    pub backoff: Duration,
}

impl Compute {
    /// Deletes `disk` and waits up to `op_timeout` for the operation, retrying as `retry`
    /// says while the disk is in use. Any other error, "not found" included, is returned
    /// as it came, so callers decide what a disk already gone means to them.
    pub async fn delete_disk_when_free(
        &self,
        project: &str,
        zone: &str,
        disk: &str,
        op_timeout: Duration,
        retry: InUseRetry,
    ) -> Result<()> {
        // Each attempt waits for its operation, so attempts and budget come from the
        // operation's timeout, the pauses from `retry`.
        let policy = RetryPolicy {
            attempts: retry.attempts,
            base_delay: retry.backoff,
            max_delay: retry.backoff * retry.attempts,
            attempt_timeout: op_timeout,
            budget: op_timeout * retry.attempts,
        };
        policy
            .run(|_| async {
                let result = match self.disks_delete(project, zone, disk).await {
                    Ok(op) => self.wait(project, op, op_timeout).await.map(drop),
                    Err(e) => Err(e),
                };
                result.map_err(|e| Failure::retry_on(ErrorKind::InUse, e))
            })
            .await
            .map_err(|f| match kind_of(&f.error) {
                Some(ErrorKind::InUse) => f.error.context("still in use"),
                _ => f.error,
            })
    }
}
