//! Running a step's program with its output forwarded to the serial console line by line, as
//! it comes, and its last lines kept for the error when it fails.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of output an installer's failure carries: few, so that the error line itself is
/// still among the serial lines the host quotes when the build fails.
pub const TAIL_LINES: usize = 10;

/// How a forwarded program ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    /// Its last [`TAIL_LINES`] lines of output, both streams.
    pub tail: Vec<String>,
}

impl Ended {
    /// `None` for exit status 0, else how it ended: "exited with status N", "was killed by
    /// signal N".
    pub fn failure(&self) -> Option<String> {
        match (self.status.code(), self.status.signal()) {
            (Some(0), _) => None,
            (Some(code), _) => Some(format!("exited with status {code}")),
            (None, Some(sig)) => Some(format!("was killed by signal {sig}")),
            (None, None) => Some(format!("ended abnormally ({})", self.status)),
        }
    }
}

/// Runs `cmd` with stdin closed, forwarding its stdout and stderr to ours; `what` names it
/// in errors.
pub fn run_forwarded(cmd: &mut Command, what: &str) -> Result<Ended> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let out = forward_lines(child.stdout.take().expect("stdout is piped"), tail.clone());
    let err = forward_lines(child.stderr.take().expect("stderr is piped"), tail.clone());
    let status = child
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    drain(&[out, err]);
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok(Ended { status, tail })
}

/// Waits for the output to be forwarded, but not forever: a background process the
/// program left running may hold the pipes open.
fn drain(threads: &[thread::JoinHandle<()>]) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { break };
            {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&line);
                let _ = stdout.write_all(b"\n");
                let _ = stdout.flush();
            }
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(String::from_utf8_lossy(&line).into_owned());
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_of_both_streams() {
        let sh = |script: &str| {
            run_forwarded(
                Command::new("/bin/sh").args(["-c", script]),
                "the test script",
            )
            .unwrap()
        };
        let ended = sh("for i in $(seq 40); do echo out$i; done; exit 4");
        assert_eq!(ended.failure().unwrap(), "exited with status 4");
        assert_eq!(ended.tail.len(), TAIL_LINES);
        assert_eq!(ended.tail.first().unwrap(), "out31");
        assert_eq!(ended.tail.last().unwrap(), "out40");
        let ended = sh("echo out; echo err >&2; kill -9 $$");
        assert_eq!(ended.failure().unwrap(), "was killed by signal 9");
        assert!(
            ended.tail.contains(&"err".to_string()) && ended.tail.contains(&"out".to_string()),
            "{:?}",
            ended.tail
        );
        let ok = run_forwarded(&mut Command::new("/bin/true"), "true").unwrap();
        assert!(ok.failure().is_none());
        let e = run_forwarded(&mut Command::new("/nonexistent/x"), "the x tool").unwrap_err();
        assert!(e.to_string().contains("starting the x tool"), "{e}");
    }
}
