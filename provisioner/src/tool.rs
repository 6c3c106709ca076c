//! Tool helpers beyond core's `cmd`: exit codes that mean success (e2fsck), and
//! finding a program on `PATH`.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use cos_customizer_common::cmd;

fn line(c: &Command) -> String {
    cmd::render(c.get_program(), c.get_args())
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
        _ => Err(cmd::failure(&line, &out)),
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
    fn finds_programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-no-such-tool-here"));
    }
}
