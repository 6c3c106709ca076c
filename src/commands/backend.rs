//! What each backend can do, and opening the QEMU one (a GCE build opens its clients in
//! [`crate::commands::gce_build`], with the steps around its build).

use std::sync::Arc;

use anyhow::{Context, Result};
use cos_customizer_core::backend::{Backend, BackendInfo};
use cos_customizer_qemu::{Accel, DiskBus, QemuBackend, QemuOptions};

use crate::cli::{AccelKind, BackendKind, DiskInterfaceKind, FinishOpts};

/// What `kind` can do, without opening it (for `-dry-run`).
pub fn info(kind: BackendKind) -> BackendInfo {
    match kind {
        BackendKind::Qemu => cos_customizer_qemu::INFO,
        BackendKind::Gce => cos_customizer_gce::backend::INFO,
    }
}

/// Opens the QEMU backend for a build.
pub fn open_qemu(o: &FinishOpts) -> Result<Arc<dyn Backend>> {
    let backend = QemuBackend::new(qemu_options(o)?)?;
    eprintln!(
        "QEMU backend: accelerator {}, work folder {}",
        backend.accel(),
        backend.work_dir().display()
    );
    Ok(Arc::new(backend))
}

/// What keeps this machine from running `kind`'s VMs, for `-dry-run` (a real run finds
/// the same when it opens the backend).
pub fn host_problems(kind: BackendKind, o: &FinishOpts) -> Vec<String> {
    let checked = match kind {
        BackendKind::Qemu => qemu_options(o).and_then(|o| cos_customizer_qemu::check_host(&o)),
        BackendKind::Gce => Ok(()),
    };
    checked
        .err()
        .map(|e| format!("{e:#}"))
        .into_iter()
        .collect()
}

fn qemu_options(o: &FinishOpts) -> Result<QemuOptions> {
    let exe = std::env::current_exe().context("finding this program for the metadata relay")?;
    Ok(QemuOptions {
        accel: match o.accel {
            AccelKind::Auto => Accel::Auto,
            AccelKind::Kvm => Accel::Kvm,
            AccelKind::Tcg => Accel::Tcg,
        },
        // QEMU's guestfwd runs this per guest connection to 169.254.169.254:80.
        metadata_proxy: vec![
            exe.to_string_lossy().into_owned(),
            "__metadata-proxy".into(),
        ],
        disk_bus: match o.disk_interface {
            Some(DiskInterfaceKind::Virtio) => DiskBus::Virtio,
            Some(DiskInterfaceKind::Scsi) | None => DiskBus::Scsi,
        },
        hermetic: o.hermetic,
        ..Default::default()
    })
}
