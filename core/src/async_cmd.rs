//! The async form of the project's tool runner ([`cos_customizer_common::cmd`]), for
//! the host side: same command line and stderr tail in every error, and every child
//! dies with this process ([`dies_with_us`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use cos_customizer_common::cmd::{check, render};

/// The util-linux program [`dies_with_us`] starts commands through.
pub const SETPRIV: &str = "setpriv";

/// Runs a command to completion with stdin closed; fails on a non-zero exit. The
/// process is killed if the future is dropped (Ctrl-C, timeout) and, through
/// [`dies_with_us`], if this process dies.
pub async fn run(cmd: &mut tokio::process::Command) -> Result<Output> {
    let std_cmd = cmd.as_std();
    let line = render(std_cmd.get_program(), std_cmd.get_args());
    let tied = dies_with_us(std_cmd).with_context(|| format!("starting `{line}`"))?;
    let out = tokio::process::Command::from(tied)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("starting `{line}`"))?;
    check(line, out)
}

/// `cmd` run through `setpriv --pdeathsig KILL`, so that the kernel kills it when the
/// thread that spawns it ends: also when this process is killed by SIGKILL and no
/// destructor or `kill_on_drop` runs. Environment changes and the working folder are
/// carried over; set stdio on the result.
///
/// Spawn the result from a thread that lives as long as the child should (a tokio
/// worker, or the thread running `block_on`), never from a `spawn_blocking` thread: those
/// end when idle and would take the child with them. Both programs are looked up first,
/// so a missing one is an error that names it, not setpriv's exit status 127.
pub fn dies_with_us(cmd: &Command) -> Result<Command> {
    let program = cmd.get_program();
    // The child's own PATH decides where a bare name is found.
    let path_var = match cmd.get_envs().find(|(k, _)| *k == OsStr::new("PATH")) {
        Some((_, v)) => v.map(OsStr::to_os_string),
        None => std::env::var_os("PATH"),
    };
    let has_slash = program.as_bytes().contains(&b'/');
    let lookup = match cmd.get_current_dir() {
        Some(dir) if has_slash => dir.join(program),
        _ => PathBuf::from(program),
    };
    if find_program_in(lookup.as_os_str(), path_var.as_deref()).is_none() {
        if has_slash {
            bail!("{} is not an executable file", lookup.display());
        }
        bail!("{} not found on PATH", program.to_string_lossy());
    }
    let Some(setpriv) = find_program(OsStr::new(SETPRIV)) else {
        bail!("{SETPRIV} not found on PATH: install the util-linux package");
    };
    let mut tied = Command::new(setpriv);
    tied.args(["--pdeathsig", "KILL", "--"])
        .arg(program)
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => tied.env(key, v),
            None => tied.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        tied.current_dir(dir);
    }
    Ok(tied)
}

/// Where `program` runs from: itself if it names a path (has a `/`), else the first
/// executable file of that name in the folders of `path_var` (a `PATH` value).
pub fn find_program_in(program: &OsStr, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let name = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return is_executable(name).then(|| name.to_path_buf());
    }
    std::env::split_paths(path_var?)
        // An empty entry would mean the current folder; never look there.
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// [`find_program_in`] this process's `PATH`.
pub fn find_program(program: &OsStr) -> Option<PathBuf> {
    find_program_in(program, std::env::var_os("PATH").as_deref())
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

    #[tokio::test]
    async fn missing_programs_are_named_with_the_real_command_line() {
        let e = run(tokio::process::Command::new("/nonexistent/tool").arg("x"))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "starting `/nonexistent/tool x`: /nonexistent/tool is not an executable file"
        );
        let e = run(&mut tokio::process::Command::new("no-such-tool-here"))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "starting `no-such-tool-here`: no-such-tool-here not found on PATH"
        );
    }

    #[tokio::test]
    async fn environment_and_folder_are_carried_over() {
        let out = run(tokio::process::Command::new("sh")
            .args(["-c", "echo \"$X\"; pwd; echo \"${GONE-unset}\""])
            .env("X", "y")
            .env_remove("GONE")
            .current_dir("/"))
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "y\n/\nunset\n");
    }

    #[test]
    fn lookup_follows_path_and_skips_what_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("plain"), "").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["relative", "/nonexistent", dir.path().to_str().unwrap()])
            .unwrap();
        assert_eq!(
            find_program_in("tool".as_ref(), Some(&path)),
            Some(tool.clone())
        );
        assert_eq!(find_program_in("plain".as_ref(), Some(&path)), None);
        assert_eq!(find_program_in("tool".as_ref(), None), None);
        assert_eq!(find_program_in(tool.as_os_str(), None), Some(tool));
        assert_eq!(find_program_in(dir.path().as_os_str(), None), None);
    }

    /// The kernel kills the child once the thread that started it ends, as it would if
    /// this process were killed: nothing here kills or drops it.
    #[test]
    fn child_dies_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt;
        use std::time::{Duration, Instant};

        let mut child = std::thread::spawn(|| {
            let child = dies_with_us(Command::new("sleep").arg("300"))
                .unwrap()
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            // setpriv has set the death signal once it has become `sleep`.
            let comm = format!("/proc/{}/comm", child.id());
            let until = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(&comm).unwrap_or_default() != "sleep\n" {
                assert!(Instant::now() < until, "setpriv never ran sleep");
                std::thread::sleep(Duration::from_millis(5));
            }
            child
        })
        .join()
        .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > until {
                child.kill().unwrap();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}
