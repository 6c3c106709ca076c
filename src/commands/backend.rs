//! The one place that picks the backend a build runs on.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cos_customizer_core::backend::{Backend, BackendInfo};
use cos_customizer_qemu::{Accel, QemuBackend, QemuOptions};

use crate::cli::{AccelKind, BackendKind};

/// What a GCE build VM can do; the backend itself is not in this build yet.
const GCE_INFO: BackendInfo = BackendInfo {
    name: "gce",
    attaches_gpus: true,
};

/// What `kind` can do, without opening it (for `-dry-run`).
pub fn info(kind: BackendKind) -> BackendInfo {
    match kind {
        BackendKind::Qemu => cos_customizer_qemu::INFO,
        BackendKind::Gce => GCE_INFO,
    }
}

/// Opens the backend for a build.
pub fn open(kind: BackendKind, accel: AccelKind) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Qemu => Ok(Arc::new(open_qemu(accel)?)),
        BackendKind::Gce => bail!(
            "this build of cos-customizer has only the QEMU backend; build locally with start-image-build -image-file and finish-image-build -output-file (your build state is kept)"
        ),
    }
}

/// What keeps this machine from running `kind`'s VMs, for `-dry-run` (a real run finds
/// the same when it opens the backend).
pub fn host_problems(kind: BackendKind, accel: AccelKind) -> Vec<String> {
    let checked = match kind {
        BackendKind::Qemu => qemu_options(accel).and_then(|o| cos_customizer_qemu::check_host(&o)),
        BackendKind::Gce => Ok(()),
    };
    checked
        .err()
        .map(|e| format!("{e:#}"))
        .into_iter()
        .collect()
}

fn qemu_options(accel: AccelKind) -> Result<QemuOptions> {
    let exe = std::env::current_exe().context("finding this program for the metadata relay")?;
    Ok(QemuOptions {
        accel: match accel {
            AccelKind::Auto => Accel::Auto,
            AccelKind::Kvm => Accel::Kvm,
            AccelKind::Tcg => Accel::Tcg,
        },
        // QEMU's guestfwd runs this per guest connection to 169.254.169.254:80.
        metadata_proxy: vec![
            exe.to_string_lossy().into_owned(),
            "__metadata-proxy".into(),
        ],
        ..Default::default()
    })
}

fn open_qemu(accel: AccelKind) -> Result<QemuBackend> {
    let backend = QemuBackend::new(qemu_options(accel)?)?;
    eprintln!(
        "QEMU backend: accelerator {}, work folder {}",
        backend.accel(),
        backend.work_dir().display()
    );
    Ok(backend)
}
