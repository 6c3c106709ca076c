//! Opens the QEMU backend for a local build.

use anyhow::{Context, Result};
use cos_customizer_qemu::{Accel, QemuBackend, QemuOptions};

use crate::cli::AccelKind;

pub fn open(accel: AccelKind) -> Result<QemuBackend> {
    let exe = std::env::current_exe().context("finding this program for the metadata relay")?;
    let backend = QemuBackend::new(QemuOptions {
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
    })?;
    eprintln!(
        "QEMU backend: accelerator {}, work folder {}",
        backend.accel(),
        backend.work_dir().display()
    );
    Ok(backend)
}
