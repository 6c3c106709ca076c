//! The one way this project runs external tools: the full command line and the tail
//! of stderr go into every error, so a failure says what ran and what it said.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

/// How much of a failed command's stderr goes into the error.
const STDERR_TAIL: usize = 2048;

/// Renders a command line the way a user could paste it into a shell.
pub fn render<'a>(program: &'a OsStr, args: impl IntoIterator<Item = &'a OsStr>) -> String {
    std::iter::once(program)
        .chain(args)
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` as one shell word: as it is when that is safe, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    match text.char_indices().rev().nth(STDERR_TAIL) {
        Some((i, _)) => format!("…{}", &text[i..]),
        None => text.to_string(),
    }
}

/// `out` if the command succeeded, else [`failure`]'s error.
pub fn check(line: String, out: Output) -> Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    Err(failure(&line, &out))
}

/// The error for a command that ran and failed: its command line, status and stderr tail.
/// For callers that accept some non-zero exits (e2fsck's "errors fixed").
pub fn failure(line: &str, out: &Output) -> anyhow::Error {
    let err = tail(&out.stderr);
    if err.is_empty() {
        anyhow::anyhow!("`{line}` failed ({})", out.status)
    } else {
        anyhow::anyhow!("`{line}` failed ({}): {err}", out.status)
    }
}

/// Runs a command to completion with stdin closed; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = render(cmd.get_program(), cmd.get_args());
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    check(line, out)
}

/// Runs a command and returns its stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    String::from_utf8(out.stdout).context("decoding command output as UTF-8")
}

/// Runs a command with `input` on its stdin (sfdisk scripts); returns its stdout.
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    let line = render(cmd.get_program(), cmd.get_args());
    let mut child = cmd
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
    let out = check(line.clone(), out)?;
    // A tool that exits early without reading its input fails above with its own words.
    written.with_context(|| format!("writing the input of `{line}`"))?;
    String::from_utf8(out.stdout).context("decoding command output as UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_output() {
        let out = run_stdout(Command::new("sh").args(["-c", "echo hi"])).unwrap();
        assert_eq!(out, "hi\n");
    }

    #[test]
    fn failure_names_command_and_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("`sh -c 'echo boom >&2; exit 3'` failed"),
            "{msg}"
        );
        assert!(
            msg.contains("exit status: 3") && msg.ends_with("boom"),
            "{msg}"
        );
    }

    #[test]
    fn missing_program_is_named() {
        let e = run(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(format!("{e:#}").contains("starting `/nonexistent/tool`"));
    }

    #[test]
    fn long_stderr_is_cut_to_its_tail() {
        let e = run(Command::new("sh").args([
            "-c",
            "head -c 10000 /dev/zero | tr '\\0' x >&2; echo END >&2; false",
        ]))
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.ends_with("END") && msg.len() < 3000, "{}", msg.len());
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_with_input(&mut Command::new("cat"), "line\n").unwrap();
        assert_eq!(out, "line\n");
        let e = run_with_input(Command::new("sh").args(["-c", "echo no >&2; exit 2"]), "x")
            .unwrap_err();
        assert!(format!("{e:#}").ends_with("no"));
    }
}
