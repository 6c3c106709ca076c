//! One QEMU process: its exit watched by a task that also enforces the VM's deadline.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cos_customizer_common::cmd;
use cos_customizer_core::backend::VmStatus;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::qmp::Qmp;

/// How often the watcher looks at the process.
const POLL: Duration = Duration::from_millis(100);
/// How long a guest gets to stop after QMP `quit` before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How much of QEMU's stderr goes into a failure reason.
const STDERR_TAIL: usize = 2048;

pub struct VmProcess {
    child: Arc<Mutex<Child>>,
    status: Arc<Mutex<VmStatus>>,
    watcher: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmProcess {
    /// Starts `program argv`, its stdout and stderr going to `log`; the VM `name` is
    /// killed once it has run for `deadline`.
    pub fn spawn(
        program: &str,
        argv: &[String],
        log: &Path,
        name: &str,
        deadline: Duration,
    ) -> Result<Self> {
        let line = cmd::render(program.as_ref(), argv.iter().map(|a| a.as_ref()));
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("sharing {}", log.display()))?;
        let child = Command::new(program)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        let child = Arc::new(Mutex::new(child));
        let status = Arc::new(Mutex::new(VmStatus::Running));
        let watcher = tokio::spawn(watch(
            child.clone(),
            status.clone(),
            log.to_path_buf(),
            format!(
                "VM {name} killed after its deadline of {}",
                cos_customizer_common::duration::format(deadline)
            ),
            Instant::now() + deadline,
        ));
        Ok(VmProcess {
            child,
            status,
            watcher,
        })
    }

    pub fn status(&self) -> VmStatus {
        lock(&self.status).clone()
    }

    pub fn is_running(&self) -> bool {
        self.status() == VmStatus::Running
    }

    /// Asks QEMU to quit over QMP, then kills it if it is still there after a grace
    /// period; returns once the process is gone.
    pub async fn stop(&self, qmp: &Path) {
        if !self.is_running() {
            return;
        }
        let quit = async {
            let mut q = Qmp::connect(qmp).await?;
            q.execute("quit", None).await
        };
        // QEMU may close the socket before its reply arrives; the wait below decides.
        let _ = tokio::time::timeout(QUIT_GRACE, quit).await;
        let gone = tokio::time::timeout(QUIT_GRACE, async {
            while self.is_running() {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if gone.is_err() {
            let _ = lock(&self.child).start_kill();
            while self.is_running() {
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

impl Drop for VmProcess {
    /// Kills a QEMU still running and reaps it, so no process outlives the backend.
    fn drop(&mut self) {
        self.watcher.abort();
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            if let Err(e) = child.start_kill() {
                eprintln!("killing QEMU: {e}");
            }
            let until = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

async fn watch(
    child: Arc<Mutex<Child>>,
    status: Arc<Mutex<VmStatus>>,
    log: PathBuf,
    deadline_reason: String,
    deadline: Instant,
) {
    let end = loop {
        tokio::time::sleep(POLL).await;
        // The guard must not live across an await: a statement of its own.
        let polled = lock(&child).try_wait();
        match polled {
            Ok(Some(exit)) => break exit_status(exit, &stderr_tail(&log)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = lock(&child).start_kill();
                // Reap it, so the VM is not reported gone while QEMU still holds its files.
                loop {
                    let polled = lock(&child).try_wait();
                    if !matches!(polled, Ok(None)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                break VmStatus::Failed(with_tail(deadline_reason, &stderr_tail(&log)));
            }
            Ok(None) => {}
            Err(e) => break VmStatus::Failed(format!("waiting for QEMU: {e}")),
        }
    };
    *lock(&status) = end;
}

/// Exit 0 is a guest power-off; exit 1 with nothing on stderr is pvpanic's
/// `panic=exit-failure`; anything else is QEMU failing.
fn exit_status(exit: ExitStatus, stderr: &str) -> VmStatus {
    match exit.code() {
        Some(0) => VmStatus::Stopped,
        Some(1) if stderr.is_empty() => {
            VmStatus::Failed("QEMU exited with status 1: the guest kernel panicked".into())
        }
        _ => VmStatus::Failed(with_tail(format!("QEMU ended ({exit})"), stderr)),
    }
}

fn with_tail(reason: String, stderr: &str) -> String {
    if stderr.is_empty() {
        reason
    } else {
        format!("{reason}; QEMU said: {stderr}")
    }
}

/// The end of QEMU's log, trimmed.
fn stderr_tail(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    match text.char_indices().rev().nth(STDERR_TAIL) {
        Some((i, _)) => format!("…{}", &text[i..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_map_to_statuses() {
        assert_eq!(exit_status(ExitStatus::from_raw(0), ""), VmStatus::Stopped);
        let VmStatus::Failed(r) = exit_status(ExitStatus::from_raw(1 << 8), "") else {
            panic!()
        };
        assert!(r.contains("panicked"), "{r}");
        let VmStatus::Failed(r) = exit_status(ExitStatus::from_raw(1 << 8), "qemu: bad option")
        else {
            panic!()
        };
        assert!(
            r.contains("exit status: 1") && r.ends_with("QEMU said: qemu: bad option"),
            "{r}"
        );
        let VmStatus::Failed(r) = exit_status(ExitStatus::from_raw(9), "") else {
            panic!()
        };
        assert!(r.contains("signal: 9"), "{r}");
    }
}
