//! The preloader: the original's Daisy workflow (`build_image.wf.json`), written once
//! for every backend.
//!
//! It builds the CIDATA disk, creates the boot and CIDATA disks and the VM, follows
//! serial port 3 until the provisioner reports `BuildSucceeded:` or `BuildFailed:`
//! (growing the boot disk when asked), acknowledges through the `DaisyEnd` metadata key,
//! waits for the VM to stop, makes the image, and removes everything it created, in
//! reverse order, however the build ends. The flow is in `flow.rs`, the dry-run plan
//! in `plan.rs`; the disk-size rules are in [`cos_customizer_common::sizing`].

mod flow;
mod plan;

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::backend::{Backend, DiskId, OutputImage, VmId};
use crate::{cidata, workdir};
use cos_customizer_common::config::{BuildConfig, ProvisionerConfig, SourceImage};

pub use plan::{expected_reboots, plan};

/// The build VM's name, as the original's workflow names it.
pub const VM_NAME: &str = "preload-vm";
/// The name prefix of the preloader's folder in `TMPDIR`.
pub const WORK_DIR_PREFIX: &str = "cos-customizer-cidata-";
/// The label on every build VM, so leftovers can be found and removed.
pub const CLEANUP_LABEL: &str = "cos-customizer-cleanup";

pub use crate::backend::LogLine;

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source image the boot disk is created from.
    pub source: SourceImage,
    /// The build VM settings.
    pub build: BuildConfig,
    /// The provisioner config as it goes on the CIDATA disk.
    pub prov: ProvisionerConfig,
    /// The `user-data` cloud-config, also served as instance metadata.
    pub user_data: String,
    /// The static provisioner binary that goes on the CIDATA disk.
    pub provisioner: PathBuf,
    /// The build context archive that goes on the CIDATA disk.
    pub context_tar: PathBuf,
    /// Where the serial logs of a failed build are kept.
    pub log_dir: PathBuf,
    /// The image to make from the finished boot disk.
    pub output: OutputImage,
    /// Applies to each wait, as the original's Daisy `-default_timeout`.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
enum Created {
    Disk(DiskId),
    Vm(VmId),
}

/// Runs builds on one backend and remembers what it created, so that [`cleanup`]
/// can remove it even when the build future was dropped (Ctrl-C, timeout).
///
/// [`cleanup`]: Preloader::cleanup
pub struct Preloader {
    backend: Arc<dyn Backend>,
    created: Mutex<Vec<Created>>,
    /// Holds the CIDATA image until the preloader is dropped, after cleanup.
    work_dir: tempfile::TempDir,
    /// A build context larger than this is staged by the backend instead of going on CIDATA.
    cidata_file_limit: u64,
    /// Whether a call that may create something was made (from then on a failure may have
    /// left resources behind, and the recorded steps have been used).
    began_creating: AtomicBool,
    /// VM statuses the backend did not know, said once each.
    unrecognized: Mutex<BTreeSet<String>>,
}

impl Preloader {
    /// A preloader for `backend`, with a private folder in `TMPDIR` for the CIDATA image
    /// (named with [`WORK_DIR_PREFIX`], and swept by a later build if this one is killed).
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self> {
        let work_dir = workdir::create_in(&std::env::temp_dir(), WORK_DIR_PREFIX)
            .context("creating a temporary folder for the CIDATA disk")?;
        Ok(Preloader {
            backend,
            created: Mutex::new(Vec::new()),
            work_dir,
            cidata_file_limit: cidata::MAX_FILE,
            began_creating: AtomicBool::new(false),
            unrecognized: Mutex::new(BTreeSet::new()),
        })
    }

    /// Sets the largest build context that goes on the CIDATA disk (by default the largest
    /// file FAT holds); a larger one is handed to [`Backend::stage_file`].
    pub fn with_cidata_file_limit(mut self, bytes: u64) -> Self {
        self.cidata_file_limit = bytes.min(cidata::MAX_FILE);
        self
    }

    /// The backend, for a call that may create something: from the first such call on, a
    /// failure may have left something to clean up and has used the recorded build.
    fn creating(&self) -> &dyn Backend {
        self.began_creating.store(true, Ordering::SeqCst);
        &*self.backend
    }

    /// Whether the build got as far as creating anything (a staged file, a disk). A failure
    /// before that cost nothing, so the caller may keep the recorded build for another try.
    pub fn began_creating(&self) -> bool {
        self.began_creating.load(Ordering::SeqCst)
    }

    /// Says once per value that the VM is in a status the backend did not know.
    fn note_unrecognized(&self, status: String, log: &mut dyn FnMut(LogLine)) {
        if self
            .unrecognized
            .lock()
            .expect("status list lock")
            .insert(status.clone())
        {
            log(LogLine::Note(&format!(
                "the build VM is in status {status:?}, which this version does not know: \
                 waiting on as if it were running"
            )));
        }
    }

    fn record(&self, c: Created) {
        self.created.lock().expect("cleanup list lock").push(c);
    }

    /// Deletes everything created so far, newest first. Returns the failures, each
    /// naming what may be left behind; call it whatever the build's outcome.
    pub async fn cleanup(&self) -> Vec<String> {
        let created = std::mem::take(&mut *self.created.lock().expect("cleanup list lock"));
        let mut failures = Vec::new();
        for c in created.into_iter().rev() {
            let r = match &c {
                Created::Vm(vm) => self.backend.delete_vm(vm).await,
                Created::Disk(d) => self.backend.delete_disk(d).await,
            };
            if let Err(e) = r {
                failures.push(format!("deleting {c:?}: {e:#}"));
            }
        }
        if let Err(e) = self.backend.remove_temporaries().await {
            failures.push(format!("removing the backend's temporary resources: {e:#}"));
        }
        failures
    }
}

/// A request whose CIDATA inputs are small files in `dir`, for the flow and plan tests.
#[cfg(test)]
pub(crate) fn sample_request(dir: &std::path::Path, timeout: Duration) -> Request {
    let provisioner = dir.join("provisioner");
    let context_tar = dir.join("context.tar");
    std::fs::write(&provisioner, "\x7fELF").unwrap();
    std::fs::write(&context_tar, "").unwrap();
    Request {
        source: SourceImage {
            name: "cos".into(),
            project: "p".into(),
            ..Default::default()
        },
        build: BuildConfig::default(),
        prov: ProvisionerConfig::default(),
        user_data: "#cloud-config\n{}".into(),
        provisioner,
        context_tar,
        log_dir: dir.join("logs"),
        output: OutputImage {
            name: "out".into(),
            project: "p".into(),
            family: String::new(),
            labels: BTreeMap::new(),
            licenses: vec![],
            description: String::new(),
            local_file: None,
        },
        timeout,
    }
}
