//! End-to-end builds under QEMU, modelled on the original's integration tests: the
//! built `cos-customizer` customizes the COS-shaped fixture image, and the output is
//! checked by reading its STATE file system and by booting it with a test
//! cloud-config that reports `TestPass:`/`TestFail:` on serial port 2.
//!
//! Needs the fixture (`scripts/make-fixture.sh`) and the static provisioner
//! (`scripts/build-provisioner.sh`); `scripts/test.sh` makes both.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::{boot_and_check, provisioner, read_file, vm_slots, Build};

#[test]
fn smoke() {
    let _vm = vm_slots(1);
    let b = Build::new(&[(
        "preload.sh",
        "#!/bin/bash\nset -e\necho hello > /var/lib/hello\necho wrote the file\n",
    )]);
    b.start(".w");
    b.ok(&[
        "-local-state-workdir=.w",
        "run-script",
        "-script=preload.sh",
    ]);
    let out = b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=10m",
        "-cache-dir=cache",
    ]);
    assert!(
        out.contains("BuildStatus: wrote the file"),
        "script output is streamed: {out}"
    );
    assert!(out.contains("BuildSucceeded:"), "{out}");
    let img = b.output("out.img");
    assert_eq!(
        read_file(&img, "STATE", "/var_overlay/lib/hello").as_deref(),
        Some("hello\n")
    );
    assert!(read_file(&img, "STATE", "/var_overlay/lib/.cos-customizer/state.json").is_none());
    assert!(
        !b.home.path().join(".w").exists(),
        "the state folder is removed after a build"
    );
    b.assert_nothing_left();
    cache_hit_of_the_same_build(&b, &img);
    let verdict = boot_and_check(
        &img,
        r#"[ "$(cat /var/lib/hello)" = hello ] || fail "/var/lib/hello is $(cat /var/lib/hello 2>&1)"
[ ! -e /var/lib/.cos-customizer ] || fail "/var/lib/.cos-customizer was left in the image"
grep -q ' / ' /proc/mounts && [ "$(findmnt -no SOURCE /)" = /dev/dm-0 ] || fail "root is not /dev/dm-0"
"#,
    );
    assert!(verdict.contains("TestPass:"), "{verdict}");
}

/// The build `smoke` kept in its cache, recorded again and finished: a hit that boots
/// nothing, ends in seconds and writes the same image, as sparse.
fn cache_hit_of_the_same_build(b: &Build, built: &Path) {
    b.start(".w2");
    b.ok(&[
        "-local-state-workdir=.w2",
        "run-script",
        "-script=preload.sh",
    ]);
    let started = Instant::now();
    let out = b.cli(&[
        "-local-state-workdir=.w2",
        "finish-image-build",
        "-output-file=again.img",
        "-timeout=1m",
        "-cache-dir=cache",
    ]);
    let elapsed = started.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Cache hit: key "), "{stderr}");
    assert!(
        !stdout.contains("BuildStatus:"),
        "a hit boots no VM: {stdout}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "the hit took {elapsed:?}"
    );
    let again = b.output("again.img");
    // qemu-img compares the contents, skipping what both leave as holes.
    let same = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .args([built, again.as_path()])
        .status()
        .unwrap();
    assert!(same.success(), "the hit's image differs from the build's");
    let (a, h) = (
        std::fs::metadata(built).unwrap(),
        std::fs::metadata(&again).unwrap(),
    );
    assert_eq!(a.len(), h.len());
    assert!(h.blocks() <= a.blocks() + 2048, "the hit filled holes");
    assert!(
        !b.home.path().join(".w2").exists(),
        "a hit uses up the state"
    );
    b.assert_nothing_left();
}

#[test]
fn env_and_two_scripts_in_order() {
    let _vm = vm_slots(1);
    let b = Build::new(&[
        (
            "first.sh",
            "set -e\n[ \"$HELLO\" = hello ] || { echo \"HELLO=$HELLO\"; exit 1; }\n[ \"$LIST\" = 'a,b,c' ] || { echo \"LIST=$LIST\"; exit 1; }\necho first >> /var/lib/order\n",
        ),
        ("second.sh", "set -e\necho second >> /var/lib/order\n"),
    ]);
    b.start(".w");
    b.ok(&[
        "-local-state-workdir=.w",
        "run-script",
        "-script=first.sh",
        "-env=HELLO=hello,LIST=a,b,c",
    ]);
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=second.sh"]);
    b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.qcow2",
        "-timeout=10m",
    ]);
    let raw = b.output("out.raw");
    let conv = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(b.output("out.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(conv.success());
    assert_eq!(
        read_file(&raw, "STATE", "/var_overlay/lib/order").as_deref(),
        Some("first\nsecond\n")
    );
    b.assert_nothing_left();
}

#[test]
fn failing_script_makes_no_image() {
    let _vm = vm_slots(1);
    let b = Build::new(&[
        ("ok.sh", "true\n"),
        ("fail.sh", "echo about to fail\nexit 7\n"),
    ]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=ok.sh"]);
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=fail.sh"]);
    let out = b.cli(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=10m",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("BuildStatus: about to fail"), "{stdout}");
    // Steps count from 0, as in the original's messages.
    assert!(
        stdout.contains("error in step 1 (RunScript): script fail.sh exited with status 7"),
        "step number and exit code: {stdout}"
    );
    assert!(
        stderr.contains("BuildFailed:") && stderr.contains("no output image"),
        "{stderr}"
    );
    assert!(!b.output("out.img").exists());
    b.assert_nothing_left();
}

#[test]
fn timeout_removes_everything() {
    let _vm = vm_slots(1);
    let b = Build::new(&[("sleep.sh", "sleep 300\n")]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=sleep.sh"]);
    let out = b.cli(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=1m",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not complete within the specified timeout"),
        "{stderr}"
    );
    assert!(!b.output("out.img").exists());
    b.assert_nothing_left();
}

#[test]
fn interrupt_removes_everything() {
    let _vm = vm_slots(1);
    let b = Build::new(&[("sleep.sh", "sleep 300\n")]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=sleep.sh"]);
    let child = Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
        .args([
            "-local-state-workdir=.w",
            "finish-image-build",
            "-output-file=out.img",
        ])
        .env("HOME", b.home.path())
        .env("TMPDIR", b.tmp.path())
        .env("COS_CUSTOMIZER_PROVISIONER", provisioner())
        .current_dir(b.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the VM is up, as a user pressing Ctrl-C would.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Command::new("pgrep")
        .args(["-f", &format!("qemu-system.*{}", b.tmp.path().display())])
        .output()
        .unwrap()
        .stdout
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the build VM never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!b.output("out.img").exists());
    b.assert_nothing_left();
}

#[test]
fn reboot_and_resume_inside_one_build() {
    let _vm = vm_slots(1);
    // The first run reboots the VM mid-step; after the reboot the provisioner
    // resumes and runs the unfinished step again, then the next one.
    let b = Build::new(&[
        (
            "reboot.sh",
            "set -e\nif [ ! -e /var/lib/rebooted ]; then\n  echo before-reboot >> /var/lib/log\n  touch /var/lib/rebooted\n  echo rebooting now\n  systemctl reboot\n  sleep 600\nfi\necho after-reboot >> /var/lib/log\n",
        ),
        ("after.sh", "echo second-step >> /var/lib/log\n"),
    ]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=reboot.sh"]);
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=after.sh"]);
    let out = b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=10m",
    ]);
    assert!(out.contains("rebooting now"), "{out}");
    assert_eq!(
        read_file(&b.output("out.img"), "STATE", "/var_overlay/lib/log").as_deref(),
        Some("before-reboot\nafter-reboot\nsecond-step\n")
    );
    b.assert_nothing_left();
}

#[test]
fn two_builds_at_once() {
    let _vm = vm_slots(2);
    let b = Build::new(&[
        ("a.sh", "echo a > /var/lib/which\n"),
        ("b.sh", "echo b > /var/lib/which\n"),
    ]);
    b.start(".a");
    b.start(".b");
    b.ok(&["-local-state-workdir=.a", "run-script", "-script=a.sh"]);
    b.ok(&["-local-state-workdir=.b", "run-script", "-script=b.sh"]);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let h: Vec<_> = ["a", "b"]
            .map(|w| {
                let b = &b;
                s.spawn(move || {
                    b.cli(&[
                        &format!("-local-state-workdir=.{w}"),
                        "finish-image-build",
                        &format!("-output-file={w}.img"),
                        "-timeout=15m",
                    ])
                })
            })
            .into_iter()
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(outs.iter().all(|o| o.status.success()));
    for w in ["a", "b"] {
        assert_eq!(
            read_file(
                &b.output(&format!("{w}.img")),
                "STATE",
                "/var_overlay/lib/which"
            )
            .as_deref(),
            Some(format!("{w}\n").as_str())
        );
    }
    b.assert_nothing_left();
}

/// A guest that cannot reach the metadata server never reads the `DaisyEnd`
/// acknowledgement and would wait 300 s before powering off. A local build needs no
/// round trip to know its serial log is safe (it is a file on the host), so the QEMU
/// backend presses the ACPI power button after acknowledging, and the build ends within
/// seconds of `BuildSucceeded:`.
#[test]
fn a_guest_without_network_still_ends_soon_after_success() {
    use std::io::BufRead;
    let _vm = vm_slots(1);
    let b = Build::new(&[(
        "offline.sh",
        "#!/bin/bash\nfor i in /sys/class/net/*; do [ \"${i##*/}\" = lo ] || ip link set \"${i##*/}\" down; done\necho network down\n",
    )]);
    b.start(".w");
    b.ok(&[
        "-local-state-workdir=.w",
        "run-script",
        "-script=offline.sh",
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
        .args([
            "-local-state-workdir=.w",
            "finish-image-build",
            "-output-file=out.img",
            "-timeout=15m",
        ])
        .env("HOME", b.home.path())
        .env("TMPDIR", b.tmp.path())
        .env("COS_CUSTOMIZER_PROVISIONER", provisioner())
        .current_dir(b.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut succeeded = None;
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("BuildSucceeded:") {
            succeeded = Some(Instant::now());
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    let ended = Instant::now();
    let out = lines.join("\n");
    assert!(status.success(), "{out}");
    assert!(out.contains("BuildStatus: network down"), "{out}");
    let after = ended - succeeded.expect("a BuildSucceeded: line");
    assert!(
        after < Duration::from_secs(90),
        "the build ended {after:?} after BuildSucceeded: (the guest's own wait is 300 s)"
    );
    assert!(b.output("out.img").exists());
    b.assert_nothing_left();
}
