//! Running tools where core's `cmd::run` does not fit: a script on stdin (sfdisk), and
//! exit codes that mean success (e2fsck). Errors have the same shape as `cmd::run`'s:
//! the full command line and the tail of stderr.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use cos_customizer_core::cmd;

/// How much of a failed command's stderr goes into the error (as core's `cmd`).
const STDERR_TAIL: usize = 2048;

fn line(c: &Command) -> String {
    cmd::render(c.get_program(), c.get_args())
}

fn fail(line: &str, out: &Output) -> anyhow::Error {
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim_end();
    let err = match err.char_indices().rev().nth(STDERR_TAIL) {
        Some((i, _)) => format!("…{}", &err[i..]),
        None => err.to_string(),
    };
    if err.is_empty() {
        anyhow::anyhow!("`{line}` failed ({})", out.status)
    } else {
        anyhow::anyhow!("`{line}` failed ({}): {err}", out.status)
    }
}

/// Runs a command with `input` on its stdin; returns its stdout. Fails on a non-zero exit.
pub fn run_with_input(c: &mut Command, input: &str) -> Result<String> {
    let line = line(c);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        return Err(fail(&line, &out));
    }
    written.with_context(|| format!("writing the input of `{line}`"))?;
    String::from_utf8(out.stdout).context("decoding command output as UTF-8")
}

/// `e2fsck -fp <device>`: exit 1 means errors were found and fixed, which is success here.
pub fn e2fsck(device: &std::path::Path) -> Result<()> {
    let mut c = Command::new("e2fsck");
    c.arg("-fp").arg(device);
    let line = line(&c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            println!("e2fsck fixed errors on {}", device.display());
            Ok(())
        }
        _ => Err(fail(&line, &out)),
    }
}

/// Whether `name` is an executable on `PATH`.
pub fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reaches_the_command() {
        let out = run_with_input(Command::new("sed").arg("s/a/b/"), "aaa\n").unwrap();
        assert_eq!(out, "baa\n");
    }

    #[test]
    fn failure_names_command_and_stderr() {
        let e = run_with_input(
            Command::new("sh").args(["-c", "cat >/dev/null; echo bad >&2; exit 4"]),
            "x",
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("`sh -c 'cat >/dev/null; echo bad >&2; exit 4'` failed"),
            "{msg}"
        );
        assert!(msg.ends_with("bad"), "{msg}");
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-no-such-tool-here"));
    }
}
