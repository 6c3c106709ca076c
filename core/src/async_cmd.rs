//! The async form of the project's tool runner ([`cos_customizer_common::cmd`]), for
//! the host side: same command line and stderr tail in every error.

use std::process::{Output, Stdio};

use anyhow::{Context, Result};
use cos_customizer_common::cmd::{check, render};

/// Runs a command to completion with stdin closed; fails on a non-zero exit. The
/// process is killed if the future is dropped (Ctrl-C, timeout).
pub async fn run(cmd: &mut tokio::process::Command) -> Result<Output> {
    let std_cmd = cmd.as_std();
    let line = render(std_cmd.get_program(), std_cmd.get_args());
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("starting `{line}`"))?;
    check(line, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_names_command() {
        let e = run(&mut tokio::process::Command::new("false"))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("`false` failed"));
    }
}
