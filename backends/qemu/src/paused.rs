//! Guests that QEMU has paused for good, told apart from running ones over QMP.
//!
//! When a guest's write fails for lack of space, QEMU pauses the guest instead of
//! failing the write (`werror=enospc`, the default), so that someone can free space
//! and resume it. Nobody resumes a build VM: it would sit paused until its deadline.
//! The watcher in `vm.rs` asks QEMU with [`probe`] and turns such a pause into a
//! failure that names the disk and the folder that is full.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::qmp::Qmp;

/// A disk of a VM, as QEMU and the user know it.
#[derive(Debug, Clone, PartialEq)]
pub struct Drive {
    /// QEMU's drive id (see `args::drive_id`).
    pub id: String,
    /// The disk's name in the build, such as `boot-disk`.
    pub name: String,
    /// Its qcow2 overlay, which takes every write of the guest.
    pub overlay: PathBuf,
}

/// Why QEMU has paused the guest for good, or `None` if it has not or cannot say (not
/// listening yet, or gone: the watcher sees the exit).
pub async fn probe(qmp: &Path, drives: &[Drive]) -> Option<String> {
    let mut q = Qmp::connect(qmp).await.ok()?;
    let status = q.execute("query-status", None).await.ok()?;
    match status.get("status")?.as_str()? {
        "io-error" => {
            let blocks = q.execute("query-block", None).await.ok();
            Some(io_error_reason(blocks.as_ref(), drives, free_bytes))
        }
        // KVM cannot emulate an instruction; the guest will never run again.
        "internal-error" => {
            Some("QEMU paused the guest after an internal error (emulation failure)".into())
        }
        _ => None,
    }
}

/// The bytes an unprivileged writer can still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The failure for a guest paused by an I/O error: each disk whose `io-status` in
/// `query-block` is not `ok`, and for `nospace` the folder that is full.
fn io_error_reason(
    blocks: Option<&Value>,
    drives: &[Drive],
    free: impl Fn(&Path) -> Option<u64>,
) -> String {
    let failed: Vec<String> = blocks
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let io_status = b.get("io-status")?.as_str()?;
            let device = b.get("device")?.as_str()?;
            (io_status != "ok").then(|| disk_failure(device, io_status, drives, &free))
        })
        .collect();
    if failed.is_empty() {
        return "QEMU paused the guest after an I/O error on a disk (QEMU did not say which)"
            .into();
    }
    format!("QEMU paused the guest: {}", failed.join("; "))
}

fn disk_failure(
    device: &str,
    io_status: &str,
    drives: &[Drive],
    free: &impl Fn(&Path) -> Option<u64>,
) -> String {
    let Some(d) = drives.iter().find(|d| d.id == device) else {
        return format!("an I/O error ({io_status}) on QEMU drive {device}");
    };
    let disk = format!("disk {} ({})", d.name, d.overlay.display());
    if io_status != "nospace" {
        return format!("an I/O error ({io_status}) writing {disk}");
    }
    let folder = d.overlay.parent().unwrap_or(Path::new("/"));
    let room = match free(folder) {
        Some(n) => format!("{n} bytes free"),
        None => "free space unknown".into(),
    };
    format!(
        "{disk} could not grow: the file system of {} is full ({room}); free space there or \
         build with TMPDIR on a larger file system",
        folder.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drives() -> Vec<Drive> {
        ["boot-disk", "cidata-disk"]
            .iter()
            .enumerate()
            .map(|(i, n)| Drive {
                id: format!("disk{i}"),
                name: n.to_string(),
                overlay: PathBuf::from(format!("/w/{n}.qcow2")),
            })
            .collect()
    }

    /// What `query-block` returns, trimmed: firmware flash has no io-status.
    fn blocks(boot: &str) -> Value {
        json!([
            {"device": "pflash0", "locked": false},
            {"device": "disk0", "io-status": boot, "inserted": {"file": "/w/boot-disk.qcow2"}},
            {"device": "disk1", "io-status": "ok"},
        ])
    }

    #[test]
    fn full_folder_is_named_with_its_free_space() {
        let free = |p: &Path| (p == Path::new("/w")).then_some(4096);
        let why = io_error_reason(Some(&blocks("nospace")), &drives(), free);
        assert_eq!(
            why,
            "QEMU paused the guest: disk boot-disk (/w/boot-disk.qcow2) could not grow: the \
             file system of /w is full (4096 bytes free); free space there or build with TMPDIR \
             on a larger file system"
        );
        let why = io_error_reason(Some(&blocks("nospace")), &drives(), |_| None);
        assert!(why.contains("is full (free space unknown)"), "{why}");
    }

    #[test]
    fn other_errors_name_the_disk_or_say_they_cannot() {
        let why = io_error_reason(Some(&blocks("failed")), &drives(), |_| None);
        assert_eq!(
            why,
            "QEMU paused the guest: an I/O error (failed) writing disk boot-disk (/w/boot-disk.qcow2)"
        );
        let unknown = json!([{"device": "disk7", "io-status": "failed"}]);
        let why = io_error_reason(Some(&unknown), &drives(), |_| None);
        assert!(
            why.ends_with("an I/O error (failed) on QEMU drive disk7"),
            "{why}"
        );
        for blocks in [None, Some(&blocks("ok"))] {
            let why = io_error_reason(blocks, &drives(), |_| None);
            assert!(why.contains("QEMU did not say which"), "{why}");
        }
    }

    #[test]
    fn free_space_of_a_real_folder() {
        assert!(free_bytes(&std::env::temp_dir()).is_some());
        assert_eq!(free_bytes(Path::new("/nonexistent/dir")), None);
    }
}
