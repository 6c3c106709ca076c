//! Boots real QEMU (TCG) with OVMF and an empty disk: no OS, but the firmware writes to
//! serial port 1, QMP answers, and the deadline and clean-up are real.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cos_customizer_core::backend::{Backend, DiskSource, DiskSpec, VmId, VmSpec, VmStatus};
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
    let backend = QemuBackend::new(QemuOptions {
        parent_dir: dir.path().into(),
        accel: Accel::Tcg,
        cpus: Some(1),
        ..Default::default()
    })
    .unwrap();
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
