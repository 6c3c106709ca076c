//! Runs the built `cos-customizer` with a temporary `$HOME`, as a user would, and
//! checks exit codes, messages and the state files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join("lib")).unwrap();
        std::fs::write(ctx.join("preload.sh"), "echo hi\n").unwrap();
        std::fs::write(ctx.join(".hidden"), "x\n").unwrap();
        std::fs::write(ctx.join("lib/x.sh"), "x\n").unwrap();
        std::fs::write(dir.path().join("source.img"), vec![0u8; 4096]).unwrap();
        Home { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .args(args)
            .env("HOME", self.path())
            .current_dir(self.path())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a failing command and returns its exit code and stderr.
    fn fail(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn state(&self, workdir: &str, name: &str) -> String {
        std::fs::read_to_string(self.state_dir(workdir).join("config").join(name)).unwrap()
    }

    fn state_dir(&self, workdir: &str) -> PathBuf {
        self.path().join(workdir)
    }

    fn start_local(&self) {
        self.ok(&[
            "start-image-build",
            "-build-context=ctx",
            "-image-file",
            "source.img",
        ]);
    }
}

#[test]
fn upstream_cloudbuild_args_parse_and_record_steps() {
    let h = Home::new();
    h.ok(&[
        "-local-state-workdir=.w",
        "start-image-build",
        "-build-context=ctx",
        "-gcs-bucket=b",
        "-gcs-workdir=customizer",
        "-image-project=cos-cloud",
        "-image-name=cos-stable-1",
    ]);
    assert_eq!(
        h.state(".w", "source_image"),
        r#"{"name":"cos-stable-1","Project":"cos-cloud"}"#
    );
    assert!(h
        .state(".w", "build")
        .starts_with(r#"{"GCSBucket":"b","GCSDir":"customizer","Project":"""#));
    h.ok(&[
        "-local-state-workdir",
        ".w",
        "run-script",
        "-script=preload.sh",
        "-env=B=2,A=1",
    ]);
    h.ok(&[
        "--local-state-workdir=.w",
        "run-script",
        "--script",
        "lib/x.sh",
    ]);
    h.ok(&["-local-state-workdir=.w", "seal-oem"]);
    h.ok(&["-local-state-workdir=.w", "disable-auto-update"]);
    assert_eq!(
        h.state(".w", "provisioner"),
        r#"{"BuildContexts":null,"BootDisk":{"OEMSize":"","OEMFSSize4K":0,"ReclaimSDA3":true,"WaitForDiskResize":false},"Steps":[{"Type":"RunScript","Args":{"BuildContext":"user","Path":"preload.sh","Env":"A=1,B=2"}},{"Type":"RunScript","Args":{"BuildContext":"user","Path":"lib/x.sh","Env":""}},{"Type":"SealOEM","Args":null},{"Type":"DisableAutoUpdate","Args":null}]}"#
    );
}

#[test]
fn exit_codes() {
    let h = Home::new();
    assert_eq!(h.fail(&["no-such-command"]).0, 2);
    assert_eq!(h.fail(&["run-script", "positional"]).0, 2);
    assert_eq!(h.fail(&["run-script", "-script=a.sh"]).0, 1);
    assert!(h.run(&["run-script", "-help"]).status.success());
    assert!(h.run(&["help", "finish-image-build"]).status.success());
}

#[test]
fn help_for_every_subcommand() {
    let h = Home::new();
    for sub in [
        "start-image-build",
        "run-script",
        "install-gpu",
        "seal-oem",
        "disable-auto-update",
        "anthos-installer-install",
        "finish-image-build",
    ] {
        let out = h.ok(&[sub, "-h"]);
        assert!(out.contains("Usage: cos-customizer"), "{sub}: {out}");
    }
    let out = h.ok(&["finish-image-build", "--help"]);
    for flag in [
        "--oem-size",
        "--disk-size-gb",
        "--timeout",
        "--output-file",
        "--dry-run",
        "--labels",
    ] {
        assert!(out.contains(flag), "{flag}");
    }
}

#[test]
fn step_without_start_and_second_start() {
    let h = Home::new();
    let (code, err) = h.fail(&["seal-oem"]);
    assert_eq!(code, 1);
    assert!(err.contains("run start-image-build first"), "{err}");
    h.start_local();
    let (_, err) = h.fail(&[
        "start-image-build",
        "-build-context=ctx",
        "-image-file=source.img",
    ]);
    assert!(err.contains("already in progress"), "{err}");
}

#[test]
fn corrupt_state_is_named() {
    let h = Home::new();
    h.start_local();
    std::fs::write(
        h.state_dir(".cos-customizer-workdir")
            .join("config/provisioner"),
        "{",
    )
    .unwrap();
    let (code, err) = h.fail(&["seal-oem"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("config/provisioner") && err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn script_must_be_a_member_and_suggestions_are_given() {
    let h = Home::new();
    h.start_local();
    let (_, err) = h.fail(&["run-script", "-script=./preload.sh"]);
    assert!(err.contains("closest members: preload.sh"), "{err}");
    h.ok(&["run-script", "-script=.hidden"]);
}

#[test]
fn env_values_with_commas_are_kept() {
    let h = Home::new();
    h.start_local();
    h.ok(&[
        "run-script",
        "-script=preload.sh",
        "-env=LIST=a,b,c",
        "-env",
        "X=1,LIST=z,y",
    ]);
    let prov = h.state(".cos-customizer-workdir", "provisioner");
    assert!(prov.contains(r#""Env":"LIST=z\\,y,X=1""#), "{prov}");
}

#[test]
fn install_gpu_rules() {
    let h = Home::new();
    h.start_local();
    let (_, err) = h.fail(&["install-gpu"]);
    assert!(err.contains("-version is required"), "{err}");
    let (_, err) = h.fail(&["install-gpu", "-version=NVIDIA-Linux-x86_64-450.51.06.run"]);
    assert!(err.contains("-deps-dir"), "{err}");
    h.ok(&["install-gpu", "-version=450.51.06"]);
    let (_, err) = h.fail(&["install-gpu", "-version=450.51.06"]);
    assert!(err.contains("only be invoked once"), "{err}");
    // Unlike the original, no GPU type is made up.
    assert!(h
        .state(".cos-customizer-workdir", "build")
        .contains(r#""GPUType":"""#));
    let (_, err) = h.fail(&["finish-image-build", "-output-file=out.img", "-dry-run"]);
    assert!(err.contains("QEMU backend cannot attach"), "{err}");
    let (_, err) = h.fail(&[
        "finish-image-build",
        "-backend=gce",
        "-image-name=x",
        "-zone=z",
        "-project=p",
        "-dry-run",
    ]);
    assert!(err.contains("-gpu-type"), "{err}");
}

#[test]
fn finish_oem_examples_and_dry_run_keeps_state() {
    let h = Home::new();
    h.start_local();
    h.ok(&["run-script", "-script=preload.sh"]);
    h.ok(&["seal-oem"]);
    let out = h.ok(&[
        "finish-image-build",
        "-output-file=out.img",
        "-oem-size=1G",
        "-disk-size-gb=12",
        "-dry-run",
    ]);
    assert!(
        out.contains(
            r#""OEMSize":"2047M","OEMFSSize4K":262144,"ReclaimSDA3":true,"WaitForDiskResize":true"#
        ),
        "{out}"
    );
    assert!(
        out.contains(
            r#""BuildContexts":{"user":"file:///mnt/disks/cidata/user_build_context.tar"}"#
        ),
        "{out}"
    );
    assert!(out.contains("Reboots to expect: 3"), "{out}");
    assert!(
        h.state_dir(".cos-customizer-workdir").exists(),
        "dry run keeps the state"
    );
    assert!(
        !h.path().join("out.img").exists(),
        "dry run creates nothing"
    );

    let out = h.ok(&[
        "finish-image-build",
        "-output-file=out.img",
        "-oem-size=50M",
        "-dry-run",
    ]);
    assert!(
        out.contains(r#""OEMSize":"99M","OEMFSSize4K":12800"#),
        "{out}"
    );
    assert!(!out.contains("grows to"), "{out}");
    let out = h.ok(&["finish-image-build", "-output-file=out.img", "-dry-run"]);
    assert!(
        out.contains(r#""OEMSize":"32M","OEMFSSize4K":4096"#),
        "{out}"
    );
}

#[test]
fn finish_validation_keeps_state() {
    let h = Home::new();
    h.start_local();
    let (code, err) = h.fail(&[
        "finish-image-build",
        "-output-file=out.img",
        "-oem-size=3072M",
        "-disk-size-gb=11",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("'disk-size-gb' must be at least"), "{err}");
    let (_, err) = h.fail(&["finish-image-build", "-output-file=out.img", "-timeout=1x"]);
    assert!(err.contains("-timeout"), "{err}");
    let (_, err) = h.fail(&[
        "finish-image-build",
        "-output-file=out.img",
        "-sbom-input-path=a.json",
    ]);
    assert!(err.contains("together"), "{err}");
    let (_, err) = h.fail(&[
        "finish-image-build",
        "-backend=gce",
        "-zone=z",
        "-project=p",
    ]);
    assert!(err.contains("-image-name or -image-suffix"), "{err}");
    assert!(h.state_dir(".cos-customizer-workdir").exists());
    let out = h.ok(&[
        "finish-image-build",
        "-output-file=out.img",
        "-oem-size=1G",
        "-disk-size-gb=11",
        "-dry-run",
    ]);
    assert!(out.contains(r#""OEMSize":"1023M""#), "{out}");
    let out = h.ok(&[
        "finish-image-build",
        "-output-file=o.qcow2",
        "-timeout=1m30s",
        "-dry-run",
    ]);
    assert!(
        out.contains("format qcow2") && out.contains("timeout 1m30s per wait"),
        "{out}"
    );
}

#[test]
fn parallel_state_folders_are_independent() {
    let h = Home::new();
    h.ok(&[
        "-local-state-workdir=.a",
        "start-image-build",
        "-build-context=ctx",
        "-image-file=source.img",
    ]);
    h.ok(&[
        "-local-state-workdir=.b",
        "start-image-build",
        "-build-context=ctx/lib",
        "-image-file=source.img",
    ]);
    h.ok(&[
        "-local-state-workdir=.a",
        "run-script",
        "-script=preload.sh",
    ]);
    h.fail(&[
        "-local-state-workdir=.b",
        "run-script",
        "-script=preload.sh",
    ]);
    h.ok(&["-local-state-workdir=.b", "run-script", "-script=x.sh"]);
}

#[test]
fn existing_output_is_a_no_op_as_upstream() {
    let h = Home::new();
    h.start_local();
    std::fs::write(h.path().join("out.img"), "keep me").unwrap();
    // The smallest static ELF header the provisioner check accepts: no program headers.
    let mut elf = vec![0u8; 64];
    elf[..5].copy_from_slice(b"\x7fELF\x02");
    std::fs::write(h.path().join("prov"), elf).unwrap();
    let out = h.run(&[
        "finish-image-build",
        "-output-file=out.img",
        "-provisioner=prov",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already exists. Exiting."), "{err}");
    assert_eq!(std::fs::read(h.path().join("out.img")).unwrap(), b"keep me");
    assert!(
        !h.state_dir(".cos-customizer-workdir").exists(),
        "the state is cleared, as upstream"
    );
}

#[test]
fn missing_provisioner_says_how_to_build_it() {
    let h = Home::new();
    h.start_local();
    let (code, err) = h.fail(&[
        "finish-image-build",
        "-output-file=out.img",
        "-provisioner=/nonexistent/p",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("scripts/build-provisioner.sh"), "{err}");
    assert!(!h.path().join("out.img").exists());
    assert!(
        h.state_dir(".cos-customizer-workdir").exists(),
        "a set-up mistake keeps the state"
    );
}
