//! Faults of the host, with a stand-in for `qemu-system-x86_64` (the fault is the host's,
//! so no guest is needed): the CLI killed with SIGKILL takes QEMU with it, a later build
//! removes the work folders the killed one left and says so, and a missing QEMU is
//! named before anything is created. Every case checks the exit code, the message, that
//! no process or temporary file is left, the source byte-identical, and the state.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A user's home with a recorded build of a COS-shaped disk, a private TMPDIR, and a
/// folder of stand-in programs put first on `PATH`.
struct Host {
    home: tempfile::TempDir,
    tmp: tempfile::TempDir,
    bin: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Self::with_source("source.img")
    }

    /// A build of `source`: a raw disk, or, for a name ending in `.tar.gz`, a GCE image
    /// archive holding it as `disk.raw`.
    fn with_source(source: &str) -> Self {
        let h = Host {
            home: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            bin: tempfile::tempdir().unwrap(),
        };
        let ctx = h.home.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("a.sh"), "echo hi\n").unwrap();
        let src = if source.ends_with(".tar.gz") {
            h.bin.path().join("disk.raw")
        } else {
            h.home.path().join(source)
        };
        std::fs::File::create(&src)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let mut sgdisk = Command::new("sgdisk");
        for (n, label) in [(1, "STATE"), (3, "ROOT-A"), (8, "OEM"), (12, "EFI-SYSTEM")] {
            sgdisk
                .arg(format!("--new={n}:0:+4M"))
                .arg(format!("--change-name={n}:{label}"));
        }
        assert!(sgdisk.arg(&src).output().unwrap().status.success());
        if source.ends_with(".tar.gz") {
            let tar = Command::new("tar")
                .arg("-czSf")
                .arg(h.home.path().join(source))
                .arg("-C")
                .arg(h.bin.path())
                .arg("disk.raw")
                .status()
                .unwrap();
            assert!(tar.success());
            std::fs::remove_file(&src).unwrap();
        }
        // The smallest ELF the provisioner check accepts: 64-bit, no program headers.
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        std::fs::write(h.home.path().join("provisioner"), elf).unwrap();
        let start = h.run(&[
            "start-image-build",
            "-build-context=ctx",
            &format!("-image-file={source}"),
        ]);
        assert!(start.status.success());
        assert!(h.run(&["run-script", "-script=a.sh"]).status.success());
        h
    }

    fn source(&self) -> PathBuf {
        ["source.img", "source.tar.gz"]
            .iter()
            .map(|n| self.home.path().join(n))
            .find(|p| p.exists())
            .unwrap()
    }

    /// Puts a stand-in `qemu-system-x86_64` running `body` first on `PATH`.
    fn fake_qemu(&self, body: &str) {
        self.stand_in("qemu-system-x86_64", body);
    }

    /// Puts a stand-in program `name` running `body` (sh) first on `PATH`.
    fn stand_in(&self, name: &str, body: &str) {
        let p = self.bin.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap()
        );
        let mut c = Command::new(env!("CARGO_BIN_EXE_cos-customizer"));
        c.args(args)
            .env("HOME", self.home.path())
            .env("TMPDIR", self.tmp.path())
            .env("PATH", path)
            .current_dir(self.home.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn finish(&self) -> Child {
        self.command(&[
            "finish-image-build",
            "-output-file=out.img",
            "-provisioner=provisioner",
            "-accel=tcg",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    }

    /// Processes whose command line names this test's TMPDIR (QEMU, and only QEMU,
    /// gets paths in it).
    fn processes(&self) -> String {
        let out = Command::new("pgrep")
            .args(["-a", "-f", &self.tmp.path().to_string_lossy()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the stand-in QEMU runs: the checks before it (`qemu-img` reading the
    /// source's first MiB into TMPDIR) also name TMPDIR, and a kill then would land before
    /// the build made anything.
    fn qemu_runs(&self) -> bool {
        self.processes().lines().any(|l| l.contains("qemu-system"))
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tmp_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn sigkill_takes_qemu_along_and_a_later_build_sweeps_what_was_left() {
    let h = Host::new();
    let before = sha256(&h.source());
    h.fake_qemu("while :; do sleep 1; done");

    let mut first = h.finish();
    h.wait_for("the stand-in QEMU", || h.qemu_runs());
    kill(&first, "-KILL");
    first.wait().unwrap();
    h.wait_for("QEMU to die with the CLI", || h.processes().is_empty());
    let left = h.tmp_entries();
    assert!(
        left.iter().any(|n| n.starts_with("cos-customizer-qemu-"))
            && left.iter().any(|n| n.starts_with("cos-customizer-cidata-")),
        "a SIGKILL leaves the work folders: {left:?}"
    );
    assert!(
        h.home.path().join(".cos-customizer-workdir").exists(),
        "the killed build never consumed the state"
    );

    // The next build removes them, says so, and cleans up after itself on SIGHUP
    // (a closed terminal) as on SIGTERM.
    let second = h.finish();
    h.wait_for("the second stand-in QEMU", || h.qemu_runs());
    kill(&second, "-HUP");
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hung up (SIGHUP)"), "{err}");
    assert_eq!(
        err.matches("removed the work folder").count(),
        2,
        "both folders of the killed build: {err}"
    );
    assert!(err.contains("whose process (pid"), "{err}");
    assert!(h.processes().is_empty(), "{}", h.processes());
    assert!(h.tmp_entries().is_empty(), "{:?}", h.tmp_entries());
    assert!(!h.home.path().join("out.img").exists());
    assert!(
        !h.home.path().join(".cos-customizer-workdir").exists(),
        "a build that ran consumes the state, as upstream"
    );
    assert_eq!(sha256(&h.source()), before, "the source image is unchanged");
}

#[test]
fn sigterm_cleans_up_everything() {
    let h = Host::new();
    h.fake_qemu("while :; do sleep 1; done");
    let child = h.finish();
    h.wait_for("the stand-in QEMU", || h.qemu_runs());
    kill(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("terminated (SIGTERM)"), "{err}");
    assert!(h.processes().is_empty(), "{}", h.processes());
    assert!(h.tmp_entries().is_empty(), "{:?}", h.tmp_entries());
}

#[test]
fn a_missing_qemu_is_named_first_and_nothing_is_created() {
    let h = Host::new();
    // A qemu-system-x86_64 that is there but cannot run, as after a broken install.
    let p = h.bin.path().join("qemu-system-x86_64");
    std::fs::write(&p, "").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h
        .command(&[
            "finish-image-build",
            "-output-file=out.img",
            "-provisioner=provisioner",
        ])
        .env("PATH", h.bin.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(
            "Error: qemu-system-x86_64 not found on PATH: install the qemu-system-x86 package"
        ),
        "the reason comes first: {err}"
    );
    assert!(h.tmp_entries().is_empty(), "{:?}", h.tmp_entries());
    assert!(
        h.home.path().join(".cos-customizer-workdir").exists(),
        "a host problem keeps the state"
    );
}

#[test]
fn ctrl_c_while_a_tar_gz_source_is_unpacked_keeps_the_state() {
    let h = Host::with_source("source.tar.gz");
    let before = sha256(&h.source());
    h.fake_qemu("while :; do sleep 1; done");
    // The unpacking `tar` holds still until the interrupt, as a large archive would.
    let unpacking = h.bin.path().join("unpacking");
    h.stand_in(
        "tar",
        &format!(
            "case \"$1\" in -x*) touch {}; exec sleep 60;; esac\nexec /usr/bin/tar \"$@\"",
            unpacking.display()
        ),
    );
    let child = h.finish();
    h.wait_for("the source to be unpacked", || unpacking.exists());
    kill(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted (Ctrl-C)"), "{err}");
    assert!(err.contains("the build state is kept"), "{err}");
    assert!(h.processes().is_empty(), "{}", h.processes());
    assert!(h.tmp_entries().is_empty(), "{:?}", h.tmp_entries());
    assert!(!h.home.path().join("out.img").exists());
    assert_eq!(sha256(&h.source()), before, "the source image is unchanged");
    let again = h.run(&[
        "finish-image-build",
        "-output-file=out.img",
        "-provisioner=provisioner",
        "-dry-run",
    ]);
    assert!(
        again.status.success(),
        "the kept state runs again: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}
