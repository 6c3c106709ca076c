//! One QEMU process: its exit watched by a task that also enforces the VM's deadline
//! and fails a guest that QEMU has paused for good (a full disk, see `paused.rs`).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cos_customizer_common::cmd;
use cos_customizer_core::async_cmd;
use cos_customizer_core::backend::VmStatus;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::paused::{self, Drive};
use crate::qmp::Qmp;

/// How often the watcher looks at the process.
const POLL: Duration = Duration::from_millis(100);
/// How often the watcher asks QEMU whether it has paused the guest for good.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one such question may take; a busy QEMU is asked again later.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// What the watcher of one VM needs.
pub struct Watch {
    /// The VM's name, for messages.
    pub name: String,
    /// Where QEMU's stdout and stderr go.
    pub log: PathBuf,
    /// The VM is killed once it has run this long.
    pub deadline: Duration,
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The VM's disks, to name the one a pause is about.
    pub drives: Vec<Drive>,
}

impl VmProcess {
    /// Starts `program argv` (through `setpriv`, so it dies with this process), its
    /// stdout and stderr going to `w.log`, and a task watching it.
    pub fn spawn(program: &str, argv: &[String], w: Watch) -> Result<Self> {
        let line = cmd::render(program.as_ref(), argv.iter().map(|a| a.as_ref()));
        let log = &w.log;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("sharing {}", log.display()))?;
        let mut qemu = std::process::Command::new(program);
        qemu.args(argv);
        let tied = async_cmd::dies_with_us(&qemu).with_context(|| format!("starting `{line}`"))?;
        let child = Command::from(tied)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        let child = Arc::new(Mutex::new(child));
        let status = Arc::new(Mutex::new(VmStatus::Running));
        let watcher = tokio::spawn(watch(child.clone(), status.clone(), w));
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

async fn watch(child: Arc<Mutex<Child>>, status: Arc<Mutex<VmStatus>>, w: Watch) {
    let deadline = Instant::now() + w.deadline;
    let mut next_probe = Instant::now() + PROBE_EVERY;
    let end = loop {
        tokio::time::sleep(POLL).await;
        // The guard must not live across an await: a statement of its own.
        let polled = lock(&child).try_wait();
        match polled {
            Ok(Some(exit)) => break exit_status(exit, &stderr_tail(&w.log)),
            Ok(None) if Instant::now() >= deadline => {
                kill_and_reap(&child).await;
                let why = format!(
                    "VM {} killed after its deadline of {}",
                    w.name,
                    cos_customizer_common::duration::format(w.deadline)
                );
                break VmStatus::Failed(with_tail(why, &stderr_tail(&w.log)));
            }
            Ok(None) if Instant::now() >= next_probe => {
                // Never past the deadline, which the next turn enforces.
                let limit = PROBE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
                let probed = tokio::time::timeout(limit, paused::probe(&w.qmp, &w.drives)).await;
                if let Ok(Some(why)) = probed {
                    // Nothing will resume it; its status must not say failed while QEMU
                    // still holds the disks.
                    kill_and_reap(&child).await;
                    break VmStatus::Failed(why);
                }
                next_probe = Instant::now() + PROBE_EVERY;
            }
            Ok(None) => {}
            Err(e) => break VmStatus::Failed(format!("waiting for QEMU: {e}")),
        }
    };
    *lock(&status) = end;
}

/// Kills QEMU and reaps it, so that the VM is not reported gone while QEMU still holds
/// its files.
async fn kill_and_reap(child: &Mutex<Child>) {
    let _ = lock(child).start_kill();
    loop {
        let polled = lock(child).try_wait();
        if !matches!(polled, Ok(None)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
