//! Runs the built `cos-customizer` with a temporary `$HOME`, as a user would, and
//! checks exit codes, messages and the state files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cos_customizer_gce::auth::Auth;
use cos_customizer_gce::drivers;
use cos_customizer_gce::storage::Gcs;
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};

/// A sparse 64 MiB raw disk with COS's partition numbers and labels (no file systems):
/// enough for every check made before a VM starts.
fn cos_shaped_disk(path: &Path) {
    cos_shaped_disk_of(path, 64 << 20);
}

/// Runs `c`, which must succeed.
fn succeed(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`cos_shaped_disk`] of `bytes` (sparse).
fn cos_shaped_disk_of(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
    let mut c = Command::new("sgdisk");
    for (n, label) in [
        (1, "STATE"),
        (2, "KERN-A"),
        (3, "ROOT-A"),
        (4, "KERN-B"),
        (5, "ROOT-B"),
        (8, "OEM"),
        (12, "EFI-SYSTEM"),
    ] {
        c.arg(format!("--new={n}:0:+4M"))
            .arg(format!("--change-name={n}:{label}"));
    }
    succeed(c.arg(path));
}

struct Home {
    dir: tempfile::TempDir,
    /// The commands' private TMPDIR, to prove a refusal leaves nothing there.
    tmp: tempfile::TempDir,
}

/// What a refused command must leave as it was: every entry under a folder, with its
/// type, size, mode, link target and change time (any write or `chmod` moves the ctime, so
/// an unchanged one proves the source byte-identical without reading 11 GiB of it).
fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut all = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let link = std::fs::read_link(&p).ok();
            // The tool's lock file in its own state folder is rewritten by every command, and
            // a folder's times move when a probe file is made and removed in it: those are
            // compared by type, and a folder by its entries.
            if m.is_dir() || p.file_name() == Some(std::ffi::OsStr::new(".lock")) {
                all.insert(p.clone(), format!("{:?} {:o}", m.file_type(), m.mode()));
                if m.is_dir() {
                    todo.push(p);
                }
                continue;
            }
            all.insert(
                p.clone(),
                format!(
                    "{:?} {} {:o} {:?} {}.{}",
                    m.file_type(),
                    m.size(),
                    m.mode(),
                    link,
                    m.ctime(),
                    m.ctime_nsec()
                ),
            );
        }
    }
    all
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join("lib")).unwrap();
        std::fs::write(ctx.join("preload.sh"), "echo hi\n").unwrap();
        std::fs::write(ctx.join(".hidden"), "x\n").unwrap();
        std::fs::write(ctx.join("lib/x.sh"), "x\n").unwrap();
        cos_shaped_disk(&dir.path().join("source.img"));
        Home {
            dir,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .args(args)
            .env("HOME", self.path())
            .env("TMPDIR", self.tmp.path())
            // A static binary stands in for the provisioner, which -dry-run checks too.
            .env("COS_CUSTOMIZER_PROVISIONER", "/bin/busybox")
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

    /// Runs a failing command and returns its exit code and stderr. Every refusal is held
    /// to the fault suite's rules: nothing in the home changed (the source, the state, a
    /// user's folder; no output), no temporary file and no process left.
    fn fail(&self, args: &[&str]) -> (i32, String) {
        let before = tree(self.path());
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let after = tree(self.path());
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        assert!(changed.is_empty(), "{args:?} changed {changed:?}");
        let left: Vec<_> = std::fs::read_dir(self.tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left temporary files: {left:?}");
        let pgrep = Command::new("pgrep")
            .args(["-a", "-f", &self.tmp.path().to_string_lossy()])
            .output()
            .unwrap();
        assert!(
            pgrep.stdout.is_empty(),
            "{args:?} left processes: {pgrep:?}"
        );
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

    /// `finish-image-build` with `args` (and `-output-file=out.img`) in the state folder
    /// `workdir`, with and without `-dry-run`: both fail with exit 1, naming each of `why`,
    /// and leave no output and the state in place.
    fn finish_refused(&self, workdir: &str, args: &[&str], why: &[&str]) {
        let flag = format!("-local-state-workdir={workdir}");
        for dry in [true, false] {
            let mut all = vec![&flag[..], "finish-image-build", "-output-file=out.img"];
            all.extend(args);
            if dry {
                all.push("-dry-run");
            }
            let (code, err) = self.fail(&all);
            assert_eq!(code, 1, "{all:?}: {err}");
            for w in why {
                assert!(err.contains(w), "{all:?}: no {w:?} in {err}");
            }
            assert!(!self.path().join("out.img").exists(), "{all:?}");
            assert!(
                self.state_dir(workdir).join("config/build").is_file(),
                "{all:?}: the state must be kept"
            );
        }
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
        "-oem-size",
        "-disk-size-gb",
        "-timeout",
        "-output-file",
        "-dry-run",
        "-labels",
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
fn a_script_or_env_the_vm_could_not_use_is_refused_and_nothing_recorded() {
    let h = Home::new();
    let ctx = h.path().join("ctx");
    std::os::unix::fs::symlink("/etc/shadow", ctx.join("shadow.sh")).unwrap();
    std::os::unix::fs::symlink("loop.sh", ctx.join("loop.sh")).unwrap();
    h.start_local();
    let before = h.state(".cos-customizer-workdir", "provisioner");
    for (args, why) in [
        (&["-script=lib"][..], "is a folder"),
        (&["-script=shadow.sh"], "outside the build context"),
        (&["-script=loop.sh"], "loops"),
        (
            &["-script=preload.sh", "-env=A B=1"],
            "not a shell variable name",
        ),
        (
            &["-script=preload.sh", "-env=1A=2"],
            "not a shell variable name",
        ),
        (&["-script=preload.sh", "-env=A=1,"], "empty entry"),
    ] {
        let all: Vec<&str> = ["run-script"].iter().chain(args).copied().collect();
        let (code, err) = h.fail(&all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
        assert_eq!(
            h.state(".cos-customizer-workdir", "provisioner"),
            before,
            "{args:?}"
        );
    }
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

/// fake-gcs-server holding NVIDIA's driver bucket with one installer under
/// `tesla/<version>/` for each of `versions`, and the global flag that points the CLI at it;
/// `None` (after a loud SKIPPED line) without the server, unless `REQUIRE_FAKE_GCS=1`.
fn nvidia_bucket(versions: &[&str]) -> Option<(FakeGcs, String)> {
    if !fake_gcs::require() {
        return None;
    }
    // On the test's own thread: the server dies with the thread that started it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(async {
        let fake = FakeGcs::start(drivers::DRIVER_BUCKET).await.unwrap();
        let gcs = Gcs::new(&fake.endpoint(), Auth::None).unwrap();
        for v in versions {
            let name = format!("tesla/{v}/NVIDIA-Linux-x86_64-{v}.run");
            gcs.upload_bytes(drivers::DRIVER_BUCKET, &name, b"x".to_vec())
                .await
                .unwrap();
        }
        fake
    });
    let flag = format!("-storage-endpoint={}", fake.endpoint());
    Some((fake, flag))
}

#[test]
fn install_gpu_rules() {
    let Some((_gcs, storage)) = nvidia_bucket(&["450.51.06"]) else {
        return;
    };
    let h = Home::new();
    h.start_local();
    let (_, err) = h.fail(&["install-gpu"]);
    assert!(err.contains("-version is required"), "{err}");
    let (_, err) = h.fail(&["install-gpu", "-version=NVIDIA-Linux-x86_64-450.51.06.run"]);
    assert!(err.contains("-deps-dir"), "{err}");
    h.ok(&[&storage, "install-gpu", "-version=450.51.06"]);
    let (_, err) = h.fail(&[&storage, "install-gpu", "-version=450.51.06"]);
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
fn install_gpu_without_a_gpu_is_the_users_choice_and_dry_run_shows_it() {
    let Some((_gcs, storage)) = nvidia_bucket(&["450.51.06"]) else {
        return;
    };
    let h = Home::new();
    h.start_local();
    h.ok(&[&storage, "install-gpu", "-version=450.51.06", "-no-verify"]);
    let out = h.ok(&["finish-image-build", "-output-file=out.img", "-dry-run"]);
    assert!(
        out.contains("GPU drivers: preloaded without a GPU (cos-gpu-installer install -no-verify)")
            && out.contains(r#""NoVerify":true"#)
            && out.contains("scratch-disk"),
        "{out}"
    );
    let (_, err) = h.fail(&[
        "finish-image-build",
        "-output-file=out.img",
        "-gpu-type=nvidia-tesla-t4",
        "-dry-run",
    ]);
    assert!(
        err.contains("cannot attach the GPU nvidia-tesla-t4"),
        "{err}"
    );
    // Without the choice, QEMU refuses up front and names it.
    let h = Home::new();
    h.start_local();
    h.ok(&[&storage, "install-gpu", "-version=450.51.06"]);
    let (_, err) = h.fail(&["finish-image-build", "-output-file=out.img", "-dry-run"]);
    assert!(err.contains("install-gpu -no-verify"), "{err}");
    // The plan GCE would follow; this build's source is a local file, which GCE refuses.
    let run = h.run(&[
        "finish-image-build",
        "-backend=gce",
        "-image-name=x",
        "-zone=z",
        "-project=p",
        "-gpu-type=nvidia-tesla-t4",
        "-dry-run",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        out.contains("GPU drivers: installed and checked with nvidia-smi on the VM's GPU")
            && out.contains("GPU nvidia-tesla-t4"),
        "{out}"
    );
    assert!(
        !run.status.success() && err.contains("a GCE build needs a GCE image"),
        "{err}"
    );
}

#[test]
fn anthos_inputs_are_checked_before_the_build() {
    let h = Home::new();
    h.start_local();
    let (_, err) = h.fail(&[
        "anthos-installer-install",
        "-pkgspec-url=specs/missing.yaml",
    ]);
    assert!(
        err.contains("-pkgspec-url=specs/missing.yaml is not in the build context"),
        "{err}"
    );
    h.ok(&["anthos-installer-install", "-pkgspec-url=lib"]);
    h.ok(&["anthos-installer-install", "-pkgspec-url=gs://specs/s.yaml"]);
    let provisioner = h.state(".cos-customizer-workdir", "provisioner");
    assert!(
        provisioner.contains(r#""PkgSpecURL":"lib""#)
            && provisioner.contains(r#""AnthosInstallerReleaseBucket":"cos-anthos-builds-us""#),
        "{provisioner}"
    );
    // The release bucket holds something else: the archive's absence is known here.
    let Some((_gcs, storage)) = release_bucket(&["anthos_installer-other.tar.gz"]) else {
        return;
    };
    let (_, err) = h.fail(&[
        &storage,
        "finish-image-build",
        "-output-file=out.img",
        "-dry-run",
    ]);
    assert!(
        err.contains(
            "the anthos_installer archive anthos_installer-linux-amd64-v0.0.1-bb7e04e.tar.gz is not in bucket cos-anthos-builds-us"
        ),
        "{err}"
    );
    let Some((_gcs, storage)) =
        release_bucket(&["anthos_installer-linux-amd64-v0.0.1-bb7e04e.tar.gz"])
    else {
        return;
    };
    let out = h.ok(&[
        &storage,
        "finish-image-build",
        "-output-file=out.img",
        "-dry-run",
    ]);
    assert!(
        out.contains(r#""StorageEndpoint":"http://169.254.169.2:"#),
        "{out}"
    );
}

/// fake-gcs-server with the anthos_installer release bucket holding `objects`.
fn release_bucket(objects: &[&str]) -> Option<(FakeGcs, String)> {
    if !fake_gcs::require() {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(async {
        let fake = FakeGcs::start("cos-anthos-builds-us").await.unwrap();
        let gcs = Gcs::new(&fake.endpoint(), Auth::None).unwrap();
        for o in objects {
            gcs.upload_bytes("cos-anthos-builds-us", o, b"x".to_vec())
                .await
                .unwrap();
        }
        fake
    });
    let flag = format!("-storage-endpoint={}", fake.endpoint());
    Some((fake, flag))
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
    assert!(out.contains("Reboots to expect: 1"), "{out}");
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
fn existing_output_is_refused_and_the_state_kept() {
    let h = Home::new();
    h.start_local();
    std::fs::write(h.path().join("out.img"), "keep me").unwrap();
    let (code, err) = h.fail(&["finish-image-build", "-output-file=out.img"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("out.img already exists: pass -overwrite to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::read(h.path().join("out.img")).unwrap(), b"keep me");
    assert!(h.state_dir(".cos-customizer-workdir").exists());
    for (out, why) in [
        ("source.img", "is the source image"),
        ("ctx", "is a folder"),
        (".cos-customizer-workdir/o.img", "inside the state folder"),
    ] {
        let (_, err) = h.fail(&[
            "finish-image-build",
            &format!("-output-file={out}"),
            "-overwrite",
        ]);
        assert!(err.contains(why), "{out}: {err}");
    }
}

#[test]
fn an_unknown_machine_type_is_refused_before_anything_and_the_state_kept() {
    let h = Home::new();
    h.start_local();
    h.finish_refused(
        ".cos-customizer-workdir",
        &["-machine-type=garbage"],
        &[
            r#"-machine-type="garbage""#,
            "<family>-standard-N",
            "custom-N-MIB",
        ],
    );
    h.ok(&[
        "finish-image-build",
        "-output-file=out.img",
        "-machine-type=e2-custom-2-4096",
        "-dry-run",
    ]);
}

#[test]
fn a_disk_size_below_the_source_or_beyond_qemu_is_refused_before_anything() {
    let h = Home::new();
    // Sparse: 11 GiB and one sector, so 12 GB is the least that holds it.
    cos_shaped_disk_of(&h.path().join("big.img"), (11 << 30) + 512);
    h.ok(&[
        "start-image-build",
        "-build-context=ctx",
        "-image-file=big.img",
    ]);
    let size = "big.img is 11811160576 bytes (12 GB)";
    let w = ".cos-customizer-workdir";
    h.finish_refused(
        w,
        &["-disk-size-gb=11"],
        &["-disk-size-gb=11 is smaller than the source image", size],
    );
    h.finish_refused(
        w,
        &[],
        &["without -disk-size-gb: give -disk-size-gb=12 or more", size],
    );
    h.finish_refused(
        w,
        &["-disk-size-gb=9999999999"],
        &["QEMU cannot make the build's disk of 9999999999 GB"],
    );
    h.ok(&[
        "finish-image-build",
        "-output-file=out.img",
        "-disk-size-gb=12",
        "-dry-run",
    ]);
}

#[test]
fn overwrite_never_replaces_a_file_the_source_reads() {
    let h = Home::new();
    let qemu_img = |args: &str| {
        succeed(
            Command::new("qemu-img")
                .args(args.split(' '))
                .current_dir(h.path()),
        )
    };
    // top.qcow2 -> lower/mid.qcow2 -> source.img, the lower names relative to their overlays.
    std::fs::create_dir(h.path().join("lower")).unwrap();
    qemu_img("create -q -f qcow2 -F raw -b ../source.img lower/mid.qcow2");
    qemu_img("create -q -f qcow2 -F qcow2 -b lower/mid.qcow2 top.qcow2");
    h.ok(&[
        "start-image-build",
        "-build-context=ctx",
        "-image-file=top.qcow2",
    ]);
    let before = std::fs::read(h.path().join("source.img")).unwrap();
    for (out, why) in [
        ("source.img", "a backing file of the source image"),
        ("lower/mid.qcow2", "a backing file of the source image"),
        ("lower/../top.qcow2", "is the source image"),
    ] {
        for dry in [true, false] {
            let flag = format!("-output-file={out}");
            let mut args = vec![
                "finish-image-build",
                &flag,
                "-output-format=raw",
                "-allow-backing-file",
                "-overwrite",
            ];
            if dry {
                args.push("-dry-run");
            }
            let (code, err) = h.fail(&args);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(err.contains(why), "{args:?}: {err}");
        }
    }
    assert_eq!(std::fs::read(h.path().join("source.img")).unwrap(), before);
    assert!(h
        .state_dir(".cos-customizer-workdir")
        .join("config/build")
        .is_file());
    h.ok(&[
        "finish-image-build",
        "-output-file=out.img",
        "-allow-backing-file",
        "-dry-run",
    ]);
}

/// A `tar.gz` whose first `disk.raw` is the regular file `disk` and a later member of the
/// same name is a symlink to `target` (an extractor that keeps the last one reads the host file).
fn tar_gz_with_a_second_disk_raw(path: &Path, disk: &Path, target: &Path) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_path_with_name(disk, "disk.raw").unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    tar.append_link(&mut link, "disk.raw", target).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn a_source_that_reads_host_files_is_refused_before_anything_and_the_state_kept() {
    let h = Home::new();
    // The host file each source would pull in; COS-shaped, so only the new rule refuses.
    let host_file = h.path().join("host-file.bin");
    cos_shaped_disk(&host_file);
    let vmdk = h.path().join("vmdk.img");
    std::fs::write(
        &vmdk,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 131072 FLAT \"{}\" 0\n",
            host_file.display()
        ),
    )
    .unwrap();
    let qcow2 = h.path().join("data-file.qcow2");
    succeed(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!(
                "data_file={},data_file_raw=on",
                host_file.display()
            ))
            .arg(&qcow2)
            .arg("64M"),
    );
    let tgz = h.path().join("two-members.tar.gz");
    tar_gz_with_a_second_disk_raw(&tgz, &h.path().join("source.img"), &host_file);

    for (source, why) in [(&vmdk, "vmdk"), (&qcow2, "data file"), (&tgz, "disk.raw")] {
        let name = source.file_name().unwrap().to_str().unwrap();
        let workdir = format!("-local-state-workdir=w-{name}");
        h.ok(&[
            &workdir,
            "start-image-build",
            "-build-context=ctx",
            &format!("-image-file={name}"),
        ]);
        h.finish_refused(&format!("w-{name}"), &[], &[name, why]);
    }
}

#[test]
fn a_script_name_that_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let h = Home::new();
    h.start_local();
    let out = Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
        .arg("run-script")
        .arg(std::ffi::OsStr::from_bytes(b"-script=\xff.sh"))
        .env("HOME", h.path())
        .current_dir(h.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(r#"-script "\xFF.sh" is not valid UTF-8"#)
            && err.contains("rename the script"),
        "{err}"
    );
}

#[test]
fn install_gpu_lists_the_valid_drivers_without_a_build() {
    let Some((_gcs, storage)) = nvidia_bucket(&["535.129.03", "450.51.06", "96.1"]) else {
        return;
    };
    let h = Home::new();
    let out = h.ok(&[&storage, "install-gpu", "-get-valid-drivers"]);
    assert_eq!(
        out,
        "Valid driver versions are: [96.1 390.46 450.51.06 535.129.03]\n"
    );
    assert!(!h.state_dir(".cos-customizer-workdir").exists());
}

#[test]
fn install_gpu_refuses_a_version_nvidia_does_not_publish() {
    let Some((_gcs, storage)) = nvidia_bucket(&["450.51.06"]) else {
        return;
    };
    let h = Home::new();
    h.start_local();
    let before = h.state(".cos-customizer-workdir", "provisioner");
    let (code, err) = h.fail(&[&storage, "install-gpu", "-version=450.51.07"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "driver version 450.51.07 is not valid; valid driver versions are: [390.46 450.51.06]"
        ),
        "{err}"
    );
    assert_eq!(h.state(".cos-customizer-workdir", "provisioner"), before);
    // The legacy version is valid though its bucket has no folder for it.
    h.ok(&[&storage, "install-gpu", "-version=390.46"]);
    assert!(h
        .state(".cos-customizer-workdir", "provisioner")
        .contains(r#""NvidiaDriverVersion":"390.46""#));
}

#[test]
fn install_gpu_names_the_bucket_and_the_fix_when_the_listing_fails() {
    if !fake_gcs::require() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A Cloud Storage without NVIDIA's bucket: the listing fails at once (404, not retried).
    let gcs = rt.block_on(FakeGcs::start("another-bucket")).unwrap();
    let storage = format!("-storage-endpoint={}", gcs.endpoint());
    let h = Home::new();
    h.start_local();
    let before = h.state(".cos-customizer-workdir", "provisioner");
    let (code, err) = h.fail(&[&storage, "install-gpu", "-version=450.51.06"]);
    assert_eq!(code, 1);
    for part in [
        "-version=450.51.06",
        "gs://nvidia-drivers-us-public/tesla/",
        "check the network",
        "-storage-endpoint",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_eq!(h.state(".cos-customizer-workdir", "provisioner"), before);
    let (code, err) = h.fail(&[&storage, "install-gpu", "-get-valid-drivers"]);
    assert_eq!(code, 1);
    assert!(err.contains("-storage-endpoint"), "{err}");
}

#[test]
fn dry_run_shows_the_plan_and_every_reason_to_refuse() {
    let Some((_gcs, storage)) = nvidia_bucket(&["450.51.06"]) else {
        return;
    };
    let h = Home::new();
    h.start_local();
    h.ok(&[&storage, "install-gpu", "-version=450.51.06"]);
    std::fs::remove_file(h.path().join("source.img")).unwrap();
    let out = h.run(&["finish-image-build", "-output-file=out.img", "-dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let plan = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(plan.contains("Reboots to expect"), "{plan}");
    assert!(err.contains("QEMU backend cannot attach"), "{err}");
    assert!(
        err.contains("moved or removed after start-image-build"),
        "{err}"
    );
    assert!(h.state_dir(".cos-customizer-workdir").exists());
}

#[test]
fn the_state_folder_must_be_under_home_and_made_by_the_tool() {
    let h = Home::new();
    for bad in ["", "..", "../x", "/tmp/w", "."] {
        let (code, err) = h.fail(&[
            &format!("-local-state-workdir={bad}"),
            "start-image-build",
            "-build-context=ctx",
            "-image-file=source.img",
        ]);
        assert_eq!(code, 1, "{bad:?}");
        assert!(err.contains("-local-state-workdir"), "{bad:?}: {err}");
    }
    // An existing project folder is neither written into nor removed.
    let (_, err) = h.fail(&[
        "-local-state-workdir=ctx",
        "start-image-build",
        "-build-context=ctx",
        "-image-file=source.img",
    ]);
    assert!(err.contains("not made by cos-customizer"), "{err}");
    assert!(h.path().join("ctx/preload.sh").exists());
}

/// The names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_users_folder_is_never_adopted_and_a_symlinked_one_is_resolved() {
    let h = Home::new();
    // A user's folder holding only config/build, as the original's layout would.
    let mine = h.path().join("mine");
    std::fs::create_dir_all(mine.join("config")).unwrap();
    std::fs::write(mine.join("config/build"), "{\"GCSBucket\":\"b\"}").unwrap();
    let start = [
        "-local-state-workdir=mine",
        "start-image-build",
        "-build-context=ctx",
        "-image-file=source.img",
    ];
    let (code, err) = h.fail(&start);
    assert_eq!(code, 1);
    assert!(err.contains("not made by cos-customizer"), "{err}");
    for cmd in [
        &["finish-image-build", "-output-file=out.img"][..],
        &["seal-oem"],
    ] {
        let args: Vec<&str> = ["-local-state-workdir=mine"]
            .iter()
            .chain(cmd)
            .copied()
            .collect();
        let (code, err) = h.fail(&args);
        assert_eq!(code, 1, "{cmd:?}");
        assert!(err.contains("not made by cos-customizer"), "{cmd:?}: {err}");
    }
    assert_eq!(
        listing(&mine),
        ["config"],
        "nothing added, not even a lock file"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("config/build")).unwrap(),
        "{\"GCSBucket\":\"b\"}"
    );

    // A workdir that is a symlink to an empty folder elsewhere: the folder is the state.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("state");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, h.path().join("link")).unwrap();
    let mut linked = start;
    linked[0] = "-local-state-workdir=link";
    h.ok(&linked);
    assert!(target.join("config/build").is_file());
    let out = h.ok(&[
        "-local-state-workdir=link",
        "finish-image-build",
        "-output-file=out.img",
        "-dry-run",
    ]);
    assert!(out.contains("Reboots to expect: 0"), "{out}");
    assert!(
        target.join("config/build").is_file(),
        "a dry run keeps the state"
    );

    // A symlink to nothing is refused before anything is written through it.
    std::os::unix::fs::symlink(elsewhere.path().join("gone"), h.path().join("dangling")).unwrap();
    let mut dangling = start;
    dangling[0] = "-local-state-workdir=dangling";
    let (_, err) = h.fail(&dangling);
    assert!(err.contains("symlink to nothing"), "{err}");
    assert!(!elsewhere.path().join("gone").exists());
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
    // -dry-run refuses what the real run refuses: missing, a folder, text, dynamically linked.
    std::fs::write(h.path().join("text"), "#!/bin/sh\n").unwrap();
    for (provisioner, says) in [
        ("/nonexistent/p", "no provisioner binary found"),
        ("/tmp", "no provisioner binary found"),
        ("text", "is not a 64-bit ELF executable"),
        (
            env!("CARGO_BIN_EXE_cos-customizer"),
            "is dynamically linked",
        ),
    ] {
        let flag = format!("-provisioner={provisioner}");
        let (code, err) = h.fail(&[
            "finish-image-build",
            "-output-file=out.img",
            &flag,
            "-dry-run",
        ]);
        assert_eq!(code, 1, "{provisioner}");
        assert!(
            err.contains("a real run would be refused") && err.contains(says),
            "{err}"
        );
    }
    assert!(
        h.state_dir(".cos-customizer-workdir").exists(),
        "a set-up mistake keeps the state"
    );
}

#[test]
fn an_output_device_kvm_a_broken_context_and_a_linked_context_are_named_before_anything() {
    let h = Home::new();
    h.start_local();
    let w = ".cos-customizer-workdir";
    // -overwrite replaces only a regular file: a FIFO stands for any device or socket.
    let fifo = h.path().join("out.fifo");
    succeed(Command::new("mkfifo").arg(&fifo));
    for dry in [false, true] {
        let mut args = vec!["finish-image-build", "-output-file=out.fifo", "-overwrite"];
        if dry {
            args.push("-dry-run");
        }
        let (code, err) = h.fail(&args);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is not a regular file"), "{err}");
    }
    // -accel=kvm on a host whose KVM cannot run the guest is a host problem named up front.
    if cos_customizer_qemu::host_has_kvm() {
        h.ok(&[
            "finish-image-build",
            "-output-file=out.img",
            "-accel=kvm",
            "-dry-run",
        ]);
    } else {
        h.finish_refused(w, &["-accel=kvm"], &["-accel=kvm", "KVM"]);
    }
    // A recorded build context damaged after start-image-build.
    std::fs::write(
        h.state_dir(w).join("user_build_context.tar"),
        "not a tar archive, but long enough to look at: ".repeat(20),
    )
    .unwrap();
    h.finish_refused(w, &[], &["user_build_context.tar"]);

    // A -build-context that is a symlink to a folder is the folder, as a user means it.
    let linked = Home::new();
    std::os::unix::fs::symlink("ctx", linked.path().join("ctx-link")).unwrap();
    linked.ok(&[
        "start-image-build",
        "-build-context=ctx-link",
        "-image-file=source.img",
    ]);
    linked.ok(&["run-script", "-script=preload.sh"]);
}
