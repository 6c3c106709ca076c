//! Waiting for long-running operations, in their own scope: a zonal operation (disks,
//! instances) under its zone, a global one (images) under `global`.
//!
//! `/wait` returns at a server deadline (about 2 minutes on GCE) whether or not the operation
//! is DONE, so it is looped; a server that does not serve `/wait` (501, 405, 404) is polled with
//! GET instead. DONE is not success: the operation's `error` is checked and returned as an
//! [`ApiError`].

use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::time::Instant;

use super::model::{Operation, OperationStatus};
use super::{
    Compute, GLOBAL_OPERATIONS_GET, GLOBAL_OPERATIONS_WAIT, ZONE_OPERATIONS_GET,
    ZONE_OPERATIONS_WAIT,
};
use crate::error::ApiError;
use crate::urls;

/// How long one `/wait` may be held open: GCE answers at its deadline, "about 2 minutes"
/// (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait), whether or
/// not the operation is DONE.
const WAIT_HOLD: Duration = Duration::from_secs(150);

impl Compute {
    /// The current state of `op`, read in its scope.
    pub async fn operation_get(&self, project: &str, op: &Operation) -> Result<Operation> {
        match &op.zone {
            Some(zone) => {
                let args = [project, urls::name(zone), op.name.as_str()];
                self.call(&ZONE_OPERATIONS_GET, &args, vec![], None).await
            }
            None => {
                let args = [project, op.name.as_str()];
                self.call(&GLOBAL_OPERATIONS_GET, &args, vec![], None).await
            }
        }
    }

    /// `op` after `/wait` in its scope: DONE, or not yet when the server's deadline came first.
    async fn operation_wait(&self, project: &str, op: &Operation) -> Result<Operation> {
        let segments = match &op.zone {
            Some(zone) => {
                ZONE_OPERATIONS_WAIT.segments(&[project, urls::name(zone), op.name.as_str()])
            }
            None => GLOBAL_OPERATIONS_WAIT.segments(&[project, op.name.as_str()]),
        };
        self.api.post_long_poll(&segments, WAIT_HOLD).await
    }

    /// Waits until `op` (of `project`) is DONE, at most `timeout`, and returns it; a failed
    /// operation is an [`ApiError`] (find its kind with [`crate::error::kind_of`]).
    pub async fn wait(
        &self,
        project: &str,
        mut op: Operation,
        timeout: Duration,
    ) -> Result<Operation> {
        let deadline = Instant::now() + timeout;
        let mut use_wait = true;
        while op.status != OperationStatus::Done {
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "operation {} on {} is still {:?} after {timeout:?}",
                    op.name,
                    op.target_link,
                    op.status
                ));
            }
            let asked = Instant::now();
            if use_wait {
                match self.operation_wait(project, &op).await {
                    Ok(next) => op = next,
                    Err(err) if wait_unsupported(&err) => use_wait = false,
                    Err(err) => return Err(err),
                }
            } else {
                op = self.operation_get(project, &op).await?;
            }
            // A `/wait` that answers at once, and GET polling, must not spin.
            if op.status != OperationStatus::Done {
                tokio::time::sleep_until((asked + self.poll_interval).min(deadline)).await;
            }
        }
        match ApiError::from_operation(&op) {
            Some(err) => Err(anyhow::Error::new(err).context(format!(
                "operation {} on {} failed",
                op.name, op.target_link
            ))),
            None => Ok(op),
        }
    }
}

/// Whether `/wait` failed because the server does not serve it, rather than for the operation.
fn wait_unsupported(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ApiError>()
        .is_some_and(|e| matches!(e.status, 404 | 405 | 501))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::compute::tests::compute;
    use crate::error::{kind_of, ErrorKind};
    use cos_customizer_testkit::testserver::Reply;

    fn zonal(status: &str) -> Value {
        json!({"name": "op-z", "status": status, "targetLink": "projects/p/zones/us-central1-a/disks/d",
               "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a"})
    }

    fn global(status: &str) -> Value {
        json!({"name": "op-g", "status": status, "targetLink": "projects/p/global/images/i"})
    }

    fn parse(v: Value) -> Operation {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn a_done_operation_needs_no_call() {
        let (compute, server) = compute(vec![]).await;
        let op = compute
            .wait("p", parse(global("DONE")), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(op.name, "op-g");
        assert!(server.seen().is_empty());
    }

    #[tokio::test]
    async fn wait_loops_in_the_zone_until_done() {
        let (compute, server) = compute(vec![
            Reply::Json(200, zonal("RUNNING")),
            Reply::Json(200, zonal("RUNNING")),
            Reply::Json(200, zonal("DONE")),
        ])
        .await;
        compute
            .wait("p", parse(zonal("PENDING")), Duration::from_secs(5))
            .await
            .unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        for s in &seen {
            assert_eq!(s.method, "POST");
            assert_eq!(
                s.path(),
                "/compute/v1/projects/p/zones/us-central1-a/operations/op-z/wait"
            );
        }
    }

    #[tokio::test]
    async fn a_global_operation_is_waited_on_globally() {
        let (compute, server) = compute(vec![Reply::Json(200, global("DONE"))]).await;
        compute
            .wait(
                "img-project",
                parse(global("RUNNING")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            server.seen()[0].path(),
            "/compute/v1/projects/img-project/global/operations/op-g/wait"
        );
    }

    #[tokio::test]
    async fn without_wait_the_operation_is_polled() {
        let (compute, server) = compute(vec![
            Reply::Json(
                501,
                json!({"error": {"code": 501, "message": "POST .../wait not implemented"}}),
            ),
            Reply::Json(200, global("RUNNING")),
            Reply::Json(200, global("DONE")),
        ])
        .await;
        compute
            .wait("p", parse(global("PENDING")), Duration::from_secs(5))
            .await
            .unwrap();
        let seen: Vec<_> = server
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path()))
            .collect();
        assert_eq!(
            seen,
            [
                "POST /compute/v1/projects/p/global/operations/op-g/wait",
                "GET /compute/v1/projects/p/global/operations/op-g",
                "GET /compute/v1/projects/p/global/operations/op-g",
            ]
        );
    }

    #[tokio::test]
    async fn a_done_operation_with_an_error_fails_with_its_kind() {
        let stockout = json!({"name": "op-z", "status": "DONE", "targetLink": "projects/p/zones/z/instances/vm",
            "zone": "projects/p/zones/z", "httpErrorStatusCode": 503,
            "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "The zone 'projects/p/zones/z' does not have enough resources"}]}});
        let (compute, _server) = compute(vec![Reply::Json(200, stockout)]).await;
        let err = compute
            .wait("p", parse(zonal("RUNNING")), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(kind_of(&err), Some(ErrorKind::Stockout));
        let text = format!("{err:#}");
        assert!(
            text.contains("operation op-z on projects/p/zones/z/instances/vm failed"),
            "{text}"
        );
        assert!(text.contains("does not have enough resources"), "{text}");
    }

    #[tokio::test]
    async fn an_operation_that_never_ends_times_out() {
        let replies = (0..100)
            .map(|_| Reply::Json(200, zonal("RUNNING")))
            .collect();
        let (compute, _server) = compute(replies).await;
        let compute = compute.with_poll_interval(Duration::from_millis(20));
        let err = compute
            .wait("p", parse(zonal("RUNNING")), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("still Running after 100ms"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn other_wait_errors_are_returned() {
        let (compute, _server) = compute(vec![Reply::Json(
            403,
            json!({"error": {"code": 403, "message": "denied", "errors": [{"reason": "forbidden"}]}}),
        )])
        .await;
        let err = compute
            .wait("p", parse(global("RUNNING")), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(kind_of(&err), Some(ErrorKind::Other));
    }
}
