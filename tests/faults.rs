//! Guests that misbehave, under QEMU on the COS-shaped fixture: each build must fail at
//! once (not at its timeout), say why with the end of the serial console, keep the
//! serial logs where the message says, leave no process or temporary file, make no
//! output, leave the source image byte-identical, and remove the state as the README
//! says (a build that ran consumes its state, as upstream).
//!
//! A VM suite: needs the fixture and the static provisioner, run by `scripts/test.sh`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::{fixture, vm_slots, Build};

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Unmounts a test's TMPDIR file system when the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Runs a build whose one script is `script`, expecting it to fail; returns its stderr.
fn failing_build(script: &str) -> (Build, String, Duration) {
    failing_build_in(Build::new(&[("fault.sh", script)]))
}

fn failing_build_in(b: Build) -> (Build, String, Duration) {
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=fault.sh"]);
    let started = Instant::now();
    let out = b.cli(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=15m",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    (b, String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

/// What every failed build must leave: no output, no state, nothing in TMPDIR, no
/// process, and the serial logs it names.
fn assert_failed_cleanly(b: &Build, stderr: &str) -> PathBuf {
    assert!(!b.output("out.img").exists(), "no output");
    assert!(!b.home.path().join(".w").exists(), "the state was consumed");
    b.assert_nothing_left();
    assert!(
        stderr.contains("Last lines of the serial console:"),
        "{stderr}"
    );
    let kept = stderr
        .rsplit("The serial logs are kept in ")
        .next()
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let kept = PathBuf::from(kept);
    assert!(kept.starts_with(b.home.path().join(".w-logs")), "{stderr}");
    let console = std::fs::read_to_string(kept.join("serial-console.log")).unwrap();
    assert!(
        console.contains("Reached target") && console.lines().count() > 50,
        "the whole console is kept, from the boot on"
    );
    assert!(kept.join("serial-port-3.log").is_file());
    kept
}

#[test]
fn a_kernel_panic_fails_the_build_at_once() {
    let _vm = vm_slots(1);
    let before = sha256(&fixture());
    let (b, stderr, took) =
        failing_build("#!/bin/bash\necho about to panic\nsync\necho c > /proc/sysrq-trigger\n");
    assert!(stderr.contains("panic"), "{stderr}");
    let kept = assert_failed_cleanly(&b, &stderr);
    let console = std::fs::read_to_string(kept.join("serial-console.log")).unwrap();
    assert!(console.contains("Kernel panic"), "{console}");
    assert!(took < Duration::from_secs(600), "failed at once: {took:?}");
    assert_eq!(sha256(&fixture()), before, "the source image is unchanged");
}

#[test]
fn a_guest_that_powers_off_without_a_status_line_fails_at_once() {
    let _vm = vm_slots(1);
    let before = sha256(&fixture());
    let (b, stderr, took) =
        failing_build("#!/bin/bash\necho powering off\nsystemctl poweroff --force --force\n");
    assert!(
        stderr.contains("stopped before reporting success or failure"),
        "{stderr}"
    );
    assert!(
        stderr.contains("BuildStatus: powering off"),
        "port 3's tail: {stderr}"
    );
    assert_failed_cleanly(&b, &stderr);
    assert!(took < Duration::from_secs(600), "failed at once: {took:?}");
    assert_eq!(sha256(&fixture()), before, "the source image is unchanged");
}

#[test]
fn a_guest_writing_past_a_small_tmpdir_fails_at_once_naming_the_full_folder() {
    let _vm = vm_slots(1);
    let before = sha256(&fixture());
    let b = Build::new(&[(
        "fault.sh",
        "#!/bin/bash\necho filling the disk\ndd if=/dev/urandom of=/var/lib/big bs=1M count=400\nsync\n",
    )]);
    // TMPDIR holds the boot disk's overlay, which takes every write of the guest.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=120M", "tmpfs"])
        .arg(b.tmp.path())
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mounting a tmpfs on TMPDIR needs root");
    let _unmount = Unmount(b.tmp.path().to_path_buf());
    let (b, stderr, took) = failing_build_in(b);
    assert!(stderr.contains("QEMU paused the guest"), "{stderr}");
    assert!(stderr.contains("disk boot-disk"), "{stderr}");
    assert!(
        stderr.contains(&format!("the file system of {}", b.tmp.path().display())),
        "names the full folder: {stderr}"
    );
    assert_failed_cleanly(&b, &stderr);
    assert!(took < Duration::from_secs(600), "failed at once: {took:?}");
    assert_eq!(sha256(&fixture()), before, "the source image is unchanged");
}
