//! RunScript: `/bin/bash <state>/<context>/<path>` in the build context, output streamed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cos_customizer_common::config::RunScriptArgs;

use crate::context::Context;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the script with the step's environment; fails unless it exits 0.
pub fn run(ctx: &Context, args: &RunScriptArgs) -> Result<()> {
    if args.build_context.is_empty() || args.path.is_empty() {
        bail!(
            "RunScript needs BuildContext and Path (got BuildContext={:?}, Path={:?})",
            args.build_context,
            args.path
        );
    }
    let env = cos_customizer_common::env::decode(&args.env)?;
    let dir = ctx.state_dir.join(&args.build_context);
    let script = dir.join(&args.path);
    let mut child = Command::new("/bin/bash")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", ctx.child_path())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting /bin/bash {} in {}",
                script.display(),
                dir.display()
            )
        })?;
    // Both streams go to our stdout (the serial console) as lines arrive.
    let out = forward_lines(child.stdout.take().expect("stdout is piped"));
    let err = forward_lines(child.stderr.take().expect("stderr is piped"));
    let status = child
        .wait()
        .with_context(|| format!("waiting for script {}", args.path))?;
    drain(&[out, err]);
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => bail!("script {} exited with status {code}", args.path),
        (None, Some(sig)) => bail!("script {} was killed by signal {sig}", args.path),
        (None, None) => bail!("script {} ended abnormally ({status})", args.path),
    }
}

/// Waits for the output to be forwarded, but not forever: a background process the
/// script left running may hold the pipes open.
fn drain(threads: &[thread::JoinHandle<()>]) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

fn forward_lines(stream: impl Read + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { break };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&line);
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
        }
    })
}
