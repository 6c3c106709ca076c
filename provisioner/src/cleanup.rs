//! Makes the image "fresh": stops the services that write state, then deletes what a
//! first boot must not find (the original's `stopServices` and `cleanup`).

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::context::Context;
use crate::host::Host;

const SERVICES: &[&str] = &[
    "crash-reporter.service",
    "crash-sender.service",
    "device_policy_manager.service",
    "metrics-daemon.service",
    "update-engine.service",
    "systemd-random-seed.service",
    "systemd-journald-audit.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald.socket",
    "systemd-journald.service",
];

const REMOVE: &[&str] = &[
    "/mnt/stateful_partition/etc",
    "/etc/docker/key.json",
    "/var/lib/systemd/random-seed",
];

/// Folders emptied, with the entries kept (the keeps are for Ubuntu sources).
const EMPTY: &[(&str, &[&str])] = &[
    ("/var/cache", &["apt", "debconf"]),
    ("/var/lib/systemd", &["deb-systemd-helper-enabled"]),
    ("/var/tmp", &[]),
    ("/var/lib/crash_reporter", &[]),
    ("/var/lib/metrics", &[]),
    ("/var/lib/update_engine", &[]),
    ("/var/lib/whitelist", &[]),
    // May be a tmpfs mount point: only its contents go.
    ("/var/lib/cloud", &[]),
    ("/var/log/journal", &[]),
    ("/var/log/audit", &[]),
    ("/etc/netplan", &[]),
    ("/tmp", &[]),
];

/// Stops the services that would write state into the image while it is cleaned.
pub fn stop_services(host: &Host) -> Result<()> {
    host.stop_active(SERVICES).map(|_| ())
}

/// Removes the provisioner's own traces and what a first boot must not find.
pub fn cleanup(ctx: &Context) -> Result<()> {
    let host = &ctx.host;
    let bin = ctx.bin_dir();
    if host.mounted_fs_type(&bin)?.is_some() {
        host.umount(&bin)
            .with_context(|| format!("unmounting {}", bin.display()))?;
    }
    remove(&ctx.state_dir)?;
    // Nothing of the tmpfs is kept either way; it may already be gone.
    let _ = host.umount(&host.path("/root"));
    for path in REMOVE {
        remove(&host.path(path))?;
    }
    for (dir, keep) in EMPTY {
        empty_dir(&host.path(dir), keep)?;
    }
    truncate_files(&host.path("/var/log"))?;
    let ssh = host.path("/etc/ssh");
    for entry in read_dir_if_exists(&ssh)? {
        if entry.to_string_lossy().starts_with("ssh_host_") {
            remove(&ssh.join(entry))?;
        }
    }
    println!("Cleaned up the image");
    Ok(())
}

/// Entry names in `dir`; none if it does not exist.
fn read_dir_if_exists(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// `rm -rf`: a symlink itself is removed, never what it points to.
fn remove(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn empty_dir(dir: &Path, keep: &[&str]) -> Result<()> {
    for name in read_dir_if_exists(dir)? {
        if !keep.iter().any(|k| name == *k) {
            remove(&dir.join(name))?;
        }
    }
    Ok(())
}

/// Truncates every regular file under `dir`, so logs of the build never ship.
fn truncate_files(dir: &Path) -> Result<()> {
    for name in read_dir_if_exists(dir)? {
        let path = dir.join(name);
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("inspecting {}", path.display()))?;
        if meta.is_dir() {
            truncate_files(&path)?;
        } else if meta.is_file() {
            File::options()
                .write(true)
                .truncate(true)
                .open(&path)
                .with_context(|| format!("truncating {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::test_context;

    fn touch(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn removes_the_listed_things_and_truncates_logs() {
        let d = tempfile::tempdir().unwrap();
        let ctx = test_context(d.path());
        let r = d.path();
        for rel in [
            "state/state.json",
            "state/user/run.sh",
            "mnt/stateful_partition/etc/x",
            "etc/docker/key.json",
            "etc/docker/daemon.json",
            "var/lib/systemd/random-seed",
            "var/lib/systemd/deb-systemd-helper-enabled/a",
            "var/lib/systemd/timers/t",
            "var/cache/apt/keep",
            "var/cache/debconf/keep",
            "var/cache/other/x",
            "var/lib/cloud/instance/boot-finished",
            "var/lib/update_engine/prefs/p",
            "var/log/journal/abc/system.journal",
            "var/log/audit/audit.log",
            "etc/netplan/50-cloud-init.yaml",
            "tmp/startup.sh",
            "tmp/.hidden",
            "etc/ssh/ssh_host_rsa_key",
            "etc/ssh/ssh_host_rsa_key.pub",
            "etc/ssh/sshd_config",
        ] {
            touch(r, rel, "data");
        }
        touch(r, "var/log/messages", "lots of log");
        touch(r, "var/log/nested/dir/x.log", "more");
        std::os::unix::fs::symlink("../../etc/ssh/sshd_config", r.join("var/log/link")).unwrap();

        stop_services(&ctx.host).unwrap();
        cleanup(&ctx).unwrap();

        for gone in [
            "state",
            "mnt/stateful_partition/etc",
            "etc/docker/key.json",
            "var/lib/systemd/random-seed",
            "var/lib/systemd/timers",
            "var/cache/other",
            "var/lib/cloud/instance",
            "var/lib/update_engine/prefs",
            "var/log/journal/abc",
            "var/log/audit/audit.log",
            "etc/netplan/50-cloud-init.yaml",
            "tmp/startup.sh",
            "tmp/.hidden",
            "etc/ssh/ssh_host_rsa_key",
            "etc/ssh/ssh_host_rsa_key.pub",
        ] {
            assert!(!r.join(gone).exists(), "{gone} should be gone");
        }
        for kept in [
            "etc/docker/daemon.json",
            "var/lib/systemd/deb-systemd-helper-enabled/a",
            "var/cache/apt/keep",
            "var/cache/debconf/keep",
            "var/lib/cloud",
            "var/log/journal",
            "tmp",
            "etc/ssh/sshd_config",
        ] {
            assert!(r.join(kept).exists(), "{kept} should stay");
        }
        assert_eq!(fs::read(r.join("var/log/messages")).unwrap(), b"");
        assert_eq!(fs::read(r.join("var/log/nested/dir/x.log")).unwrap(), b"");
        assert!(fs::symlink_metadata(r.join("var/log/link"))
            .unwrap()
            .is_symlink());
        assert_eq!(fs::read(r.join("etc/ssh/sshd_config")).unwrap(), b"data");
    }

    #[test]
    fn missing_paths_are_fine() {
        let d = tempfile::tempdir().unwrap();
        cleanup(&test_context(d.path())).unwrap();
    }
}
