//! The floor a build is measured against (`scripts/bench.sh`): the source image booted by
//! the QEMU backend in a build VM's shape (GCE SMBIOS, the metadata server, NAT, a boot
//! disk and a small CIDATA disk on the build's bus, an `n1-standard-1`'s vCPU and memory),
//! with `user-data` that powers off at once, timed from the first disk made to the VM
//! stopped. Not a test: it prints one line, `floor: <seconds> s`.
//!
//! `cargo bench -p cos-customizer-qemu --bench floor -- IMAGE [scsi|virtio]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::SourceImage;
use cos_customizer_core::backend::{Backend, DiskSource, DiskSpec, VmSpec, VmStatus};
use cos_customizer_core::cidata::{build_cidata, CidataFile};
use cos_customizer_qemu::{DiskBus, QemuBackend, QemuOptions};

/// As a build's cloud-config hands over to the provisioner, this one powers off.
const POWEROFF: &str = "#cloud-config\nruncmd:\n  - [ systemctl, poweroff ]\n";
const LIMIT: Duration = Duration::from_secs(600);

fn main() -> Result<()> {
    // cargo bench adds --bench; cargo test --all-targets runs this without an image.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(image) = args.first() else {
        eprintln!("floor: give the image to boot (scripts/bench.sh does); nothing measured");
        return Ok(());
    };
    let bus = match args.get(1).map(String::as_str) {
        None | Some("scsi") => DiskBus::Scsi,
        Some("virtio") => DiskBus::Virtio,
        Some(other) => bail!("unknown disk bus {other:?}: scsi or virtio"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let secs = rt.block_on(boot(PathBuf::from(image), bus))?;
    println!("floor: {secs:.1} s");
    Ok(())
}

async fn boot(image: PathBuf, bus: DiskBus) -> Result<f64> {
    let work = tempfile::tempdir().context("making a work folder")?;
    let backend = QemuBackend::new(QemuOptions {
        metadata_proxy: vec![env!("CARGO_BIN_EXE_metadata_proxy").into()],
        disk_bus: bus,
        ..Default::default()
    })?;
    let cidata = work.path().join("cidata.img");
    build_cidata(&cidata, &[CidataFile::bytes("user-data", POWEROFF)])?;
    let started = Instant::now();
    let result = run(&backend, image, cidata).await;
    let elapsed = started.elapsed().as_secs_f64();
    backend.remove_temporaries().await?;
    result.map(|()| elapsed)
}

async fn run(backend: &QemuBackend, image: PathBuf, cidata: PathBuf) -> Result<()> {
    let source = SourceImage {
        local_file: image.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let mut disks = Vec::new();
    for (name, source) in [
        ("boot-disk", DiskSource::Image(source)),
        ("cidata-disk", DiskSource::RawFile(cidata)),
    ] {
        disks.push(
            backend
                .create_disk(&DiskSpec {
                    name: name.into(),
                    source,
                    size_gb: None,
                    disk_type: String::new(),
                })
                .await?,
        );
    }
    let vm = backend
        .create_vm(&VmSpec {
            name: "floor-vm".into(),
            disks: disks.clone(),
            metadata: BTreeMap::from([("user-data".into(), POWEROFF.into())]),
            machine_type: "n1-standard-1".into(),
            max_lifetime: LIMIT,
            ..Default::default()
        })
        .await?;
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        match backend.vm_status(&vm).await? {
            VmStatus::Running | VmStatus::Unrecognized(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s => break s,
        }
    };
    backend.delete_vm(&vm).await?;
    for d in disks.iter().rev() {
        backend.delete_disk(d).await?;
    }
    match status {
        VmStatus::Stopped => Ok(()),
        s => bail!("the VM did not power off: {s:?}"),
    }
}
