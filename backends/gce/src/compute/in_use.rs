//! Deleting a disk that GCE may still see attached: a disk is detached a little after the
//! instance using it is deleted, and a delete in that window fails with
//! `resourceInUseByAnotherResource`.

use std::time::Duration;

use anyhow::Result;

use super::Compute;
use crate::error::{kind_of, ErrorKind};

/// How often, and how patiently, a delete is retried while its resource is in use.
#[derive(Debug, Clone, Copy)]
pub struct InUseRetry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait after the first failed attempt; the n-th wait is n times this.
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
        let mut attempt = 1;
        loop {
            let result = match self.disks_delete(project, zone, disk).await {
                Ok(op) => self.wait(project, op, op_timeout).await.map(drop),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if kind_of(&e) == Some(ErrorKind::InUse) => {
                    if attempt >= retry.attempts {
                        return Err(e.context(format!("still in use after {attempt} attempts")));
                    }
                    tokio::time::sleep(retry.backoff * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
