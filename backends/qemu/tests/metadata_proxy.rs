//! The guest's path to the metadata server without a guest: the command QEMU's
//! `guestfwd` would run per connection (the `metadata_proxy` binary of this crate)
//! reaches the VM's server, and `set_metadata` shows up there at once. QEMU is a
//! stand-in script that records its argv.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use cos_customizer_common::config::SourceImage;
use cos_customizer_core::backend::{Backend, DiskSource, DiskSpec, VmSpec};
use cos_customizer_qemu::{Accel, QemuBackend, QemuOptions};

/// Blocking calls below: the metadata server runs on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reaches_metadata_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let fake_qemu = dir.path().join("fake-qemu");
    let argv = dir.path().join("argv");
    std::fs::write(
        &fake_qemu,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexec sleep 60\n",
            argv.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake_qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let source = dir.path().join("cos.img");
    std::fs::File::create(&source)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    let backend = QemuBackend::new(QemuOptions {
        parent_dir: dir.path().into(),
        accel: Accel::Tcg,
        qemu_system: fake_qemu.to_string_lossy().into_owned(),
        metadata_proxy: vec![env!("CARGO_BIN_EXE_metadata_proxy").into()],
        ..Default::default()
    })
    .unwrap();
    let disk = backend
        .create_disk(&DiskSpec {
            name: "boot-disk".into(),
            source: DiskSource::Image(SourceImage {
                local_file: source.to_string_lossy().into_owned(),
                ..Default::default()
            }),
            size_gb: None,
            disk_type: "pd-standard".into(),
        })
        .await
        .unwrap();
    let vm = backend
        .create_vm(&VmSpec {
            name: "preload-vm".into(),
            disks: vec![disk],
            metadata: BTreeMap::from([("user-data".to_string(), "#cloud-config\n".to_string())]),
            labels: BTreeMap::new(),
            machine_type: "n1-standard-1".into(),
            service_account: "default".into(),
            gpu_type: None,
            network: None,
            subnet: None,
            max_lifetime: Duration::from_secs(30),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let argv = std::fs::read_to_string(&argv).unwrap();
    let netdev = argv.lines().find(|l| l.contains("guestfwd=")).unwrap();
    let cmd = netdev.split_once("-cmd:").unwrap().1.replace(",,", ",");

    let get = |key: &str| {
        let req = format!("GET /computeMetadata/v1/instance/attributes/{key} HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n");
        let out = Command::new("sh")
            .args(["-c", &format!("printf '%s' \"$REQ\" | {cmd}")])
            .env("REQ", req)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(get("user-data").ends_with("\r\n\r\n#cloud-config\n"));
    assert!(get("DaisyEnd").starts_with("HTTP/1.1 404"));
    backend.set_metadata(&vm, "DaisyEnd", "ack").await.unwrap();
    assert!(get("DaisyEnd").ends_with("\r\n\r\nack"));
    backend.delete_vm(&vm).await.unwrap();
}
