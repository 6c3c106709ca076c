//! Boots real QEMU (TCG) with OVMF and an empty disk: no OS, but the firmware writes to
//! serial port 1, QMP answers, and the deadline and clean-up are real. The tests of how
//! a guest ends (a full disk, the power button) boot the COS-shaped fixture
//! (`scripts/make-fixture.sh`, which `scripts/test.sh` runs first) with a NoCloud seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cos_customizer_core::backend::{Backend, DiskId, DiskSource, DiskSpec, VmId, VmSpec, VmStatus};
use cos_customizer_core::cidata::{build_cidata, CidataFile};
use cos_customizer_qemu::{Accel, QemuBackend, QemuOptions};

fn vm_spec(name: &str, disk: &cos_customizer_core::backend::DiskId, lifetime: Duration) -> VmSpec {
    VmSpec {
        name: name.into(),
        disks: vec![disk.clone()],
        metadata: BTreeMap::new(),
        labels: BTreeMap::new(),
        machine_type: "e2-small".into(),
        service_account: String::new(),
        gpu_type: None,
        network: None,
        subnet: None,
        max_lifetime: lifetime,
    }
}

/// A backend whose VMs run under TCG with one vCPU, its work dir in `parent`.
fn tcg_backend(parent: &Path) -> QemuBackend {
    QemuBackend::new(QemuOptions {
        parent_dir: parent.into(),
        accel: Accel::Tcg,
        cpus: Some(1),
        ..Default::default()
    })
    .unwrap()
}

fn virtual_size(path: &str) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", path])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Whether any process has the work dir on its command line.
fn qemu_alive(work_dir: &Path) -> bool {
    Command::new("pgrep")
        .args(["-f", work_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

async fn wait_serial(b: &QemuBackend, vm: &VmId, within: Duration) -> String {
    let start = Instant::now();
    let mut text = String::new();
    let mut offset = 0;
    while start.elapsed() < within {
        let chunk = b.serial_output(vm, 1, offset).await.unwrap();
        offset = chunk.next;
        text.push_str(&chunk.contents);
        if text.contains("BdsDxe") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovmf_boots_resizes_live_and_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("empty.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
    let backend = tcg_backend(dir.path());
    let work = backend.work_dir().to_path_buf();
    let disk = backend
        .create_disk(&DiskSpec {
            name: "boot-disk".into(),
            source: DiskSource::RawFile(src.clone()),
            size_gb: Some(1),
            disk_type: String::new(),
        })
        .await
        .unwrap();

    let vm = backend
        .create_vm(&vm_spec("preload-vm", &disk, Duration::from_secs(25)))
        .await
        .unwrap();
    let text = wait_serial(&backend, &vm, Duration::from_secs(20)).await;
    assert!(
        text.contains("BdsDxe"),
        "OVMF wrote to serial port 1: {text:?}"
    );
    assert_eq!(backend.vm_status(&vm).await.unwrap(), VmStatus::Running);

    backend.resize_disk(&disk, 2).await.unwrap();
    assert_eq!(
        virtual_size(&disk.0),
        2 << 30,
        "QMP block_resize on the running VM"
    );

    let t = Instant::now();
    backend.delete_vm(&vm).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "QMP quit took {:?}",
        t.elapsed()
    );
    assert!(!qemu_alive(&work));
    assert!(!work.join("preload-vm.qmp").exists() && !work.join("preload-vm-serial1.log").exists());

    // A second VM on the same disk, stopped by its deadline.
    let vm = backend
        .create_vm(&vm_spec("short-vm", &disk, Duration::from_secs(3)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = backend.vm_status(&vm).await.unwrap();
    assert!(
        matches!(&status, VmStatus::Failed(r) if r.contains("killed after its deadline of 3s")),
        "{status:?}"
    );
    assert!(!qemu_alive(&work));

    drop(backend);
    assert!(!work.exists());
    assert_eq!(std::fs::metadata(&src).unwrap().modified().unwrap(), mtime);
}

/// The COS-shaped fixture image.
fn fixture() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/out/cos-fixture.img");
    assert!(
        p.exists(),
        "{} is missing: run scripts/make-fixture.sh (or scripts/test.sh)",
        p.display()
    );
    p
}

/// Boots the fixture (on an overlay, never written) with a seed whose cloud-config runs
/// `script` (bash) at the end of boot; returns the VM and its disks.
async fn boot_fixture(b: &QemuBackend, seed_dir: &Path, script: &str) -> (VmId, [DiskId; 2]) {
    let seed = seed_dir.join("seed.img");
    let user_data = serde_json::json!({ "runcmd": [["bash", "-c", script]] });
    build_cidata(
        &seed,
        &[
            CidataFile::bytes("user-data", format!("#cloud-config\n{user_data}")),
            CidataFile::bytes(
                "meta-data",
                "instance-id: vm-test\nlocal-hostname: vm-test\n",
            ),
        ],
    )
    .unwrap();
    let mut disks = Vec::new();
    for (name, file) in [("boot-disk", fixture()), ("cidata-disk", seed)] {
        let spec = DiskSpec {
            name: name.into(),
            source: DiskSource::RawFile(file),
            size_gb: None,
            disk_type: String::new(),
        };
        disks.push(b.create_disk(&spec).await.unwrap());
    }
    let mut spec = vm_spec("preload-vm", &disks[0], Duration::from_secs(400));
    spec.disks = disks.clone();
    let vm = b.create_vm(&spec).await.unwrap();
    (vm, disks.try_into().unwrap())
}

/// Polls the VM until it is no longer running or `within` has passed.
async fn wait_end(b: &QemuBackend, vm: &VmId, within: Duration) -> VmStatus {
    let start = Instant::now();
    loop {
        match b.vm_status(vm).await.unwrap() {
            VmStatus::Running if start.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            s => return s,
        }
    }
}

/// Unmounts a test's file system, after everything in it is gone.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A guest whose writes fill the file system of the work dir: QEMU pauses it
/// (`werror=enospc`), and the backend fails the VM within seconds, naming the disk and
/// the full folder, instead of leaving it paused until its deadline; nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_work_dir_fails_the_vm_and_names_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40M", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success();
    assert!(
        mounted,
        "mounting a tmpfs on {} needs root",
        small.display()
    );
    let _unmount = Unmount(small.clone());
    let backend = tcg_backend(&small);
    let work = backend.work_dir().to_path_buf();
    // 100 MiB of noise, straight to the disk: the overlay cannot take it.
    let start = Instant::now();
    let (vm, disks) = boot_fixture(
        &backend,
        dir.path(),
        "dd if=/dev/urandom of=/var/lib/fill bs=1M count=100 oflag=direct",
    )
    .await;
    let status = wait_end(&backend, &vm, Duration::from_secs(240)).await;
    eprintln!("the VM ended {:?} after it was created", start.elapsed());
    let VmStatus::Failed(why) = status else {
        panic!(
            "the guest did not fill the disk ({status:?}); console:\n{}",
            backend.serial_output(&vm, 1, 0).await.unwrap().contents
        )
    };
    eprintln!("{why}");
    let w = work.display();
    assert!(
        why.starts_with(&format!(
            "QEMU paused the guest: disk boot-disk ({w}/boot-disk.qcow2) could not grow: \
             the file system of {w} is full ("
        )) && why.contains(" bytes free); free space there"),
        "{why}"
    );
    assert!(!qemu_alive(&work), "QEMU is killed once the VM has failed");
    backend.delete_vm(&vm).await.unwrap();
    for d in &disks {
        backend.delete_disk(d).await.unwrap();
    }
    drop(backend);
    assert!(!work.exists());
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0);
}

/// What systemd-logind does on COS when the power button is pressed (`HandlePowerKey=
/// poweroff`). The fixture has no D-Bus, so its logind never starts ("no trigger
/// condition checks were met") and nothing there handles the key; this stands in,
/// reading the kernel's "Power Button" input device (ACPI `button` driver). The device
/// is opened before `booted` is printed, so no press is missed.
const POWER_KEY_HANDLER: &str = r#"
ev=$(awk '/^N: Name="Power Button"/ {p = 1} p && /^H:/ {for (i = 1; i <= NF; i++) if ($i ~ /^event/) {print $i; exit}}' /proc/bus/input/devices)
systemd-run --unit=power-key bash -c "exec 3</dev/input/$ev; echo booted > /dev/ttyS1; head -c 1 <&3 >/dev/null; systemctl poweroff"
"#;

/// The acknowledgement presses the power button (ACPI): a guest that cannot reach the
/// metadata server (no relay here) powers off within seconds instead of waiting minutes
/// for `DaisyEnd`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_powers_the_guest_off() {
    let dir = tempfile::tempdir().unwrap();
    let backend = tcg_backend(dir.path());
    let work = backend.work_dir().to_path_buf();
    let (vm, _) = boot_fixture(&backend, dir.path(), POWER_KEY_HANDLER).await;
    let start = Instant::now();
    loop {
        let port2 = backend.serial_output(&vm, 2, 0).await.unwrap().contents;
        if port2.contains("booted") {
            break;
        }
        assert!(
            backend.vm_status(&vm).await.unwrap() == VmStatus::Running
                && start.elapsed() < Duration::from_secs(240),
            "the guest did not boot; console:\n{}",
            backend.serial_output(&vm, 1, 0).await.unwrap().contents
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("booted in {:?}", start.elapsed());
    let pressed = Instant::now();
    backend.acknowledge(&vm).await.unwrap();
    let status = wait_end(&backend, &vm, Duration::from_secs(60)).await;
    eprintln!(
        "the guest stopped {:.1} s after the acknowledgement",
        pressed.elapsed().as_secs_f64()
    );
    assert_eq!(
        status,
        VmStatus::Stopped,
        "console:\n{}",
        backend.serial_output(&vm, 1, 0).await.unwrap().contents
    );
    // Already stopped: nothing to press, and no error.
    backend.acknowledge(&vm).await.unwrap();
    assert!(!qemu_alive(&work));
}
