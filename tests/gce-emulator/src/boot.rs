//! Boot mode: instances are QEMU VMs of the images' files, run by the QEMU backend. A disk made
//! from an image is a QEMU disk of the image's file (a seeded file, a `rawDisk` fetched from
//! storage, or an image made from a disk); an instance is a VM of its disks, whose metadata
//! server serves the instance's metadata and follows `setMetadata`; serial output and status
//! come from the VM; `disks.resize` grows the disk of the running VM; an image made from a
//! disk is a qcow2 file in the images folder.
//!
//! This module holds boot mode's QEMU backend and the work a request queues for it
//! ([`Job`]); `jobs.rs` runs that work.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cos_customizer_core::backend::{DiskId, DiskSpec, OutputImage, VmId, VmSpec};
use cos_customizer_qemu::{QemuBackend, QemuOptions};

/// How to run boot mode.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// How to run the VMs; QEMU's work dir is made under its `parent_dir`.
    pub qemu: QemuOptions,
    /// Where images made through the API are kept as files (`<name>.qcow2`, `<name>.tar.gz`).
    pub images_dir: PathBuf,
}

/// The QEMU backend the instances run on, and the images folder.
pub(crate) struct Boot {
    pub backend: QemuBackend,
    pub images_dir: PathBuf,
    /// One refresh at a time, so no serial output is copied twice.
    pub refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boot")
            .field("work_dir", &self.backend.work_dir())
            .field("images_dir", &self.images_dir)
            .finish()
    }
}

impl Boot {
    /// Opens the QEMU backend (checking the host) and creates the images folder.
    pub fn new(opts: BootOptions) -> anyhow::Result<Boot> {
        std::fs::create_dir_all(&opts.images_dir)
            .with_context(|| format!("creating {}", opts.images_dir.display()))?;
        Ok(Boot {
            backend: QemuBackend::new(opts.qemu).context("starting boot mode")?,
            images_dir: opts.images_dir,
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// The file an image made through the API is kept in.
    pub fn image_file(&self, name: &str, extension: &str) -> PathBuf {
        self.images_dir.join(format!("{name}.{extension}"))
    }
}

/// QEMU work a request started.
#[derive(Debug)]
pub(crate) enum Job {
    /// Make the QEMU disk of the disk at `path`.
    CreateDisk { path: String, spec: DiskSpec },
    /// Boot the instance at `path` on the QEMU disks of `disks` (paths).
    CreateVm {
        path: String,
        spec: VmSpec,
        disks: Vec<String>,
    },
    /// Set these metadata items in the VM's metadata server.
    SetMetadata {
        path: String,
        items: Vec<(String, String)>,
    },
    /// Grow the QEMU disk of the disk at `path`, live if a VM runs on it.
    ResizeDisk { path: String, size_gb: u64 },
    /// Write the image at `path` from the disk at `disk`.
    CreateImage {
        path: String,
        disk: String,
        out: OutputImage,
    },
    /// Delete a VM, then disks that went with its instance.
    DeleteVm {
        vm: Option<VmId>,
        disks: Vec<DiskId>,
    },
    /// Delete a QEMU disk.
    DeleteDisk { disk: Option<DiskId> },
    /// Stop the instance at `path`: its VM ends at once, its disks stay.
    StopVm { path: String },
}

/// Removes a file the emulator made; one already gone is fine.
pub(crate) fn remove_file(file: &Path) {
    if let Err(e) = std::fs::remove_file(file) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("gce-emulator: removing {}: {e}", file.display());
        }
    }
}
