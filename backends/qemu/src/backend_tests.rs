//! Tests of the backend through the `Backend` trait, with real qemu-img and tar, and a
//! stand-in for qemu-system where only the process handling matters.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use cos_customizer_common::config::SourceImage;

use super::*;

fn sh(script: &str) {
    let ok = Command::new("sh")
        .args(["-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

fn stdout(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&stdout(&[
        "qemu-img",
        "info",
        "-U",
        "--output=json",
        path.to_str().unwrap(),
    ]))
    .unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    backend: QemuBackend,
}

fn fixture(qemu_system: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = QemuBackend::new(QemuOptions {
        parent_dir: dir.path().into(),
        accel: Accel::Tcg,
        qemu_system: qemu_system.into(),
        ..Default::default()
    })
    .unwrap();
    Fixture { dir, backend }
}

impl Fixture {
    /// A 16 MiB raw file with a marker at its start.
    fn raw_source(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        sh(&format!(
            "printf SOURCE > {0} && truncate -s 16M {0}",
            p.display()
        ));
        p
    }

    fn image_spec(&self, name: &str, file: &Path, size_gb: Option<u64>) -> DiskSpec {
        DiskSpec {
            name: name.into(),
            source: DiskSource::Image(SourceImage {
                local_file: file.to_string_lossy().into_owned(),
                ..Default::default()
            }),
            size_gb,
            disk_type: "pd-standard".into(),
        }
    }

    fn out(&self, file: &str, format: ImageFormat) -> OutputImage {
        OutputImage {
            name: "out".into(),
            project: "p".into(),
            family: String::new(),
            labels: BTreeMap::new(),
            licenses: Vec::new(),
            description: String::new(),
            local_file: Some((self.dir.path().join(file), format)),
        }
    }

    /// A script standing in for qemu-system-x86_64; it records its argv.
    fn fake_qemu(&self, body: &str) -> String {
        let p = self.dir.path().join("fake-qemu");
        let argv = self.dir.path().join("argv");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n{body}\n",
                argv.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// A backend whose QEMU is a [`fake_qemu`](Self::fake_qemu) running `body`.
    fn fake_backend(&self, body: &str) -> QemuBackend {
        QemuBackend::new(QemuOptions {
            parent_dir: self.dir.path().into(),
            qemu_system: self.fake_qemu(body),
            ..Default::default()
        })
        .unwrap()
    }

    /// A boot disk and the VM `preload-vm` on it, started on `b`.
    async fn start_vm(&self, b: &QemuBackend, lifetime: Duration) -> (DiskId, VmId) {
        let src = self.raw_source("cos.img");
        let d = b
            .create_disk(&self.image_spec("boot-disk", &src, None))
            .await
            .unwrap();
        let vm = b
            .create_vm(&vm_spec("preload-vm", vec![d.clone()], lifetime))
            .await
            .unwrap();
        (d, vm)
    }
}

fn vm_spec(name: &str, disks: Vec<DiskId>, lifetime: Duration) -> VmSpec {
    VmSpec {
        name: name.into(),
        disks,
        metadata: BTreeMap::from([("user-data".to_string(), "#cloud-config\n".to_string())]),
        labels: BTreeMap::new(),
        machine_type: "n1-standard-1".into(),
        service_account: "default".into(),
        gpu_type: None,
        network: None,
        subnet: None,
        max_lifetime: lifetime,
    }
}

fn fingerprint(p: &Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        std::fs::read(p).unwrap(),
        std::fs::metadata(p).unwrap().modified().unwrap(),
    )
}

/// Writes a pattern into a disk as a guest would.
fn guest_write(disk: &DiskId) {
    sh(&format!(
        "qemu-io -f qcow2 -c 'write -P 0xab 0 64k' {disk} >/dev/null"
    ));
}

#[tokio::test]
async fn raw_source_is_never_written() {
    let f = fixture("qemu-system-x86_64");
    let src = f.raw_source("cos.img");
    let before = fingerprint(&src);
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    guest_write(&d);
    let i = info(Path::new(&d.0));
    assert_eq!(i["format"], "qcow2");
    assert_eq!(i["backing-filename"], src.to_str().unwrap());
    assert_eq!(i["virtual-size"], 16 << 20);
    assert_eq!(fingerprint(&src), before);
}

#[tokio::test]
async fn qcow2_source_grows_to_the_asked_size() {
    let f = fixture("qemu-system-x86_64");
    let src = f.dir.path().join("cos.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 {} 32M",
        src.display()
    ));
    let before = fingerprint(&src);
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, Some(1)))
        .await
        .unwrap();
    guest_write(&d);
    let i = info(Path::new(&d.0));
    assert_eq!(i["virtual-size"], 1u64 << 30);
    assert_eq!(i["backing-filename-format"], "qcow2");
    assert_eq!(fingerprint(&src), before);
}

#[tokio::test]
async fn gce_tar_gz_source_is_unpacked() {
    let f = fixture("qemu-system-x86_64");
    let raw_dir = f.dir.path().join("gce");
    std::fs::create_dir(&raw_dir).unwrap();
    sh(&format!("truncate -s 8M {}/disk.raw", raw_dir.display()));
    let src = f.dir.path().join("cos.tar.gz");
    sh(&format!(
        "tar --format=oldgnu -Sczf {} -C {} disk.raw",
        src.display(),
        raw_dir.display()
    ));
    let before = fingerprint(&src);
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    guest_write(&d);
    let i = info(Path::new(&d.0));
    assert_eq!(i["backing-filename-format"], "raw");
    assert_eq!(i["virtual-size"], 8 << 20);
    let unpacked = f.backend.work_dir().join("boot-disk-source");
    assert!(unpacked.join("disk.raw").exists());
    assert_eq!(fingerprint(&src), before);
    f.backend.delete_disk(&d).await.unwrap();
    assert!(!unpacked.exists() && !Path::new(&d.0).exists());
}

#[tokio::test]
async fn tar_gz_without_disk_raw_is_an_error() {
    let f = fixture("qemu-system-x86_64");
    let other = f.raw_source("other.raw");
    let src = f.dir.path().join("bad.tar.gz");
    sh(&format!(
        "tar -czf {} -C {} other.raw",
        src.display(),
        f.dir.path().display()
    ));
    let e = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("extracting disk.raw"), "{e:#}");
    assert!(other.exists());
}

#[tokio::test]
async fn disk_errors_name_the_problem() {
    let f = fixture("qemu-system-x86_64");
    let src = f.dir.path().join("big.raw");
    sh(&format!("truncate -s 2G {}", src.display()));
    let e = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, Some(1)))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("1 GB") && msg.contains("2147483648 bytes"),
        "{msg}"
    );

    let mut spec = f.image_spec("boot-disk", &src, None);
    spec.source = DiskSource::Image(SourceImage {
        name: "cos-stable-1".into(),
        project: "cos-cloud".into(),
        ..Default::default()
    });
    let e = f.backend.create_disk(&spec).await.unwrap_err();
    assert!(e.to_string().contains("-image-file"), "{e}");

    let e = f
        .backend
        .create_disk(&f.image_spec("Boot_Disk", &src, None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid disk name"), "{e}");

    f.backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    let e = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[tokio::test]
async fn raw_file_disk_and_offline_resize() {
    let f = fixture("qemu-system-x86_64");
    let cidata = f.raw_source("cidata.img");
    let before = fingerprint(&cidata);
    let spec = DiskSpec {
        name: "cidata-disk".into(),
        source: DiskSource::RawFile(cidata.clone()),
        size_gb: None,
        disk_type: String::new(),
    };
    let d = f.backend.create_disk(&spec).await.unwrap();
    f.backend.resize_disk(&d, 2).await.unwrap();
    assert_eq!(info(Path::new(&d.0))["virtual-size"], 2u64 << 30);
    f.backend.resize_disk(&d, 2).await.unwrap();
    let e = f.backend.resize_disk(&d, 1).await.unwrap_err();
    assert!(e.to_string().contains("cannot shrink"), "{e}");
    assert_eq!(fingerprint(&cidata), before);
}

#[tokio::test]
async fn a_source_replaced_during_the_build_makes_no_image() {
    let f = fixture("qemu-system-x86_64");
    let src = f.raw_source("cos.img");
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    // As a rebuild of the source would: a new file renamed over the old one.
    let newer = f.raw_source("newer.img");
    std::fs::rename(&newer, &src).unwrap();
    let out = f.out("out.img", ImageFormat::Raw);
    let e = format!("{:#}", f.backend.create_image(&d, &out).await.unwrap_err());
    assert!(
        e.contains("was replaced by another file") && e.contains("cos.img"),
        "{e}"
    );
    assert!(!out.local_file.as_ref().unwrap().0.exists());
    f.backend.delete_disk(&d).await.unwrap();
}

#[tokio::test]
async fn exports_all_formats() {
    let f = fixture("qemu-system-x86_64");
    let src = f.raw_source("cos.img");
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    guest_write(&d);

    let raw = f.out("out.img", ImageFormat::Raw);
    assert!(!f.backend.image_exists(&raw).await.unwrap());
    f.backend.create_image(&d, &raw).await.unwrap();
    assert!(f.backend.image_exists(&raw).await.unwrap());
    let raw_path = &raw.local_file.as_ref().unwrap().0;
    assert_eq!(info(raw_path)["format"], "raw");
    let bytes = std::fs::read(raw_path).unwrap();
    assert_eq!(bytes.len(), 16 << 20);
    assert!(
        bytes[..65536].iter().all(|&b| b == 0xab),
        "the guest's write is in the image"
    );

    let qcow2 = f.out("out.qcow2", ImageFormat::Qcow2);
    f.backend.create_image(&d, &qcow2).await.unwrap();
    let i = info(&qcow2.local_file.as_ref().unwrap().0);
    assert_eq!(i["format"], "qcow2");
    assert!(
        i.get("backing-filename").is_none(),
        "a standalone image: {i}"
    );

    let tgz = f.out("out.tar.gz", ImageFormat::TarGz);
    f.backend.create_image(&d, &tgz).await.unwrap();
    let tgz_path = tgz.local_file.as_ref().unwrap().0.to_str().unwrap();
    assert_eq!(stdout(&["tar", "-tzf", tgz_path]), "disk.raw\n");
    let listing = stdout(&["tar", "-tvzf", tgz_path]);
    assert!(listing.contains(&format!(" {} ", 16 << 20)), "{listing}");

    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(std::fs::read_dir(f.backend.work_dir()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("export-")));
}

#[tokio::test]
async fn export_needs_a_local_file() {
    let f = fixture("qemu-system-x86_64");
    let mut out = f.out("x.img", ImageFormat::Raw);
    out.local_file = None;
    let e = f.backend.image_exists(&out).await.unwrap_err();
    assert!(e.to_string().contains("-output-file"), "{e}");
    let src = f.raw_source("cos.img");
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    let e = f.backend.create_image(&d, &out).await.unwrap_err();
    assert!(e.to_string().contains("-output-file"), "{e}");
}

#[tokio::test]
async fn deletes_are_idempotent_and_drop_cleans_up() {
    let f = fixture("qemu-system-x86_64");
    let src = f.raw_source("cos.img");
    let d = f
        .backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    f.backend.delete_disk(&d).await.unwrap();
    f.backend.delete_disk(&d).await.unwrap();
    f.backend.delete_vm(&VmId("nope".into())).await.unwrap();
    f.backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    let work = f.backend.work_dir().to_path_buf();
    assert!(work.starts_with(f.dir.path()));
    drop(f.backend);
    assert!(!work.exists());
    assert!(src.exists());
}

#[tokio::test]
async fn deadline_kills_the_vm() {
    let f = fixture("qemu-system-x86_64");
    let backend = f.fake_backend("exec sleep 60");
    let (d, vm) = f.start_vm(&backend, Duration::from_secs(1)).await;
    assert_eq!(backend.vm_status(&vm).await.unwrap(), VmStatus::Running);
    let e = backend.delete_disk(&d).await.unwrap_err();
    assert!(
        e.to_string().contains("in use by running VM preload-vm"),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let VmStatus::Failed(reason) = backend.vm_status(&vm).await.unwrap() else {
        panic!("still running after its deadline")
    };
    assert!(
        reason.contains("VM preload-vm killed after its deadline of 1s"),
        "{reason}"
    );
    assert!(!running(backend.work_dir()), "the process is gone");
    backend.delete_vm(&vm).await.unwrap();
    backend.delete_vm(&vm).await.unwrap();
    assert!(!backend.work_dir().join("preload-vm-qemu.log").exists());
}

#[tokio::test]
async fn acknowledge_sets_daisy_end_even_where_no_button_can_be_pressed() {
    let f = fixture("qemu-system-x86_64");
    // A QEMU without a QMP socket: the power button cannot be pressed.
    let backend = f.fake_backend("exec sleep 60");
    let (_, vm) = f.start_vm(&backend, Duration::from_secs(30)).await;
    let daisy_end = |b: &QemuBackend| b.state().vms[&vm].metadata.attribute("DaisyEnd");
    assert_eq!(daisy_end(&backend), None);
    backend.acknowledge(&vm).await.unwrap();
    assert_eq!(daisy_end(&backend).as_deref(), Some("ack"));
    assert_eq!(backend.vm_status(&vm).await.unwrap(), VmStatus::Running);
    let e = backend.acknowledge(&VmId("nope".into())).await.unwrap_err();
    assert!(e.to_string().contains("unknown VM nope"), "{e}");
}

#[tokio::test]
async fn exit_codes_become_statuses() {
    let f = fixture("qemu-system-x86_64");
    let src = f.raw_source("cos.img");
    for (name, body, want) in [
        ("off", "exit 0", None),
        (
            "bad",
            "echo 'qemu: oops' >&2; exit 2",
            Some("QEMU said: qemu: oops"),
        ),
        ("panic", "exit 1", Some("guest kernel panicked")),
    ] {
        let backend = f.fake_backend(body);
        let d = backend
            .create_disk(&f.image_spec("boot-disk", &src, None))
            .await
            .unwrap();
        let vm = backend
            .create_vm(&vm_spec(name, vec![d], Duration::from_secs(30)))
            .await
            .unwrap();
        let status = loop {
            match backend.vm_status(&vm).await.unwrap() {
                VmStatus::Running => tokio::time::sleep(Duration::from_millis(50)).await,
                s => break s,
            }
        };
        match (want, status) {
            (None, VmStatus::Stopped) => {}
            (Some(w), VmStatus::Failed(r)) => assert!(r.contains(w), "{name}: {r}"),
            (_, s) => panic!("{name}: {s:?}"),
        }
    }
}

#[tokio::test]
async fn spawn_failure_is_an_error_and_leaves_no_files() {
    let f = fixture("qemu-system-x86_64");
    let backend = f.fake_backend("exit 0");
    let fake = backend.opts.qemu_system.clone();
    // QEMU went away after the backend checked the host.
    std::fs::remove_file(&fake).unwrap();
    let src = f.raw_source("cos.img");
    let d = backend
        .create_disk(&f.image_spec("boot-disk", &src, None))
        .await
        .unwrap();
    let e = backend
        .create_vm(&vm_spec("vm", vec![d.clone()], Duration::from_secs(5)))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!("starting VM vm: starting `{fake} -name guest=vm"))
            && msg.ends_with(&format!(": {fake} is not an executable file")),
        "{msg}"
    );
    let mut names: Vec<_> = std::fs::read_dir(backend.work_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, [workdir::OWNER_FILE, "boot-disk.qcow2"]);
    let e = backend
        .create_vm(&vm_spec(
            "vm",
            vec![DiskId("x".into())],
            Duration::from_secs(5),
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown disk x"), "{e}");
}

/// Whether a process with the work dir on its command line is alive.
fn running(work_dir: &Path) -> bool {
    Command::new("pgrep")
        .args(["-f", work_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn an_unusable_host_is_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let e = QemuBackend::new(QemuOptions {
        parent_dir: dir.path().into(),
        qemu_system: "no-such-qemu-system".into(),
        ovmf_vars: "/nonexistent/VARS.fd".into(),
        ..Default::default()
    })
    .err()
    .unwrap();
    assert_eq!(
        format!("{e:#}"),
        "no-such-qemu-system not found on PATH: install the qemu-system-x86 package; \
         UEFI firmware variables /nonexistent/VARS.fd is missing: install the ovmf package"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn work_dirs_of_dead_builds_are_swept() {
    let f = fixture("qemu-system-x86_64");
    // A build killed before it could clean up: its owner file names a reaped process.
    let stale = workdir::create_in(f.dir.path(), WORK_DIR_PREFIX)
        .unwrap()
        .keep();
    let owner = stale.join(workdir::OWNER_FILE);
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&owner).unwrap();
    let text = text.replacen(
        &format!("pid={}\n", std::process::id()),
        &format!("pid={dead}\n"),
        1,
    );
    std::fs::write(&owner, text).unwrap();
    std::fs::write(stale.join("boot-disk.qcow2"), "x").unwrap();
    // Not ours to judge: no owner file.
    let unowned = f.dir.path().join(format!("{WORK_DIR_PREFIX}unowned"));
    std::fs::create_dir(&unowned).unwrap();

    let second = QemuBackend::new(QemuOptions {
        parent_dir: f.dir.path().into(),
        ..Default::default()
    })
    .unwrap();
    assert!(!stale.exists(), "the dead build's work dir is removed");
    assert!(unowned.exists() && second.work_dir().exists());
    assert!(
        f.backend.work_dir().exists(),
        "a live backend's work dir is kept"
    );
}
