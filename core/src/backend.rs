//! Where the preloader creates disks, runs the build VM and makes the image.
//!
//! A backend only manages resources. What goes on the disks and how the VM reports
//! progress live in [`crate::preload`], written once, so QEMU and GCE cannot drift apart.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use cos_customizer_common::config::SourceImage;
use cos_customizer_common::names;
use cos_customizer_common::protocol::{ACK_METADATA_KEY, ACK_METADATA_VALUE};

/// A disk the backend created: a file path for QEMU, a disk name for GCE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskId(pub String);

/// A VM the backend created.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmId(pub String);

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a new disk starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskSource {
    /// The build's source OS image (never modified).
    Image(SourceImage),
    /// A raw disk image built on this machine, such as the CIDATA disk.
    RawFile(PathBuf),
}

/// A disk to create.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpec {
    /// The disk's name within the build (QEMU names its overlay file after it).
    pub name: String,
    /// What the disk starts from.
    pub source: DiskSource,
    /// Size in GB; `None` keeps the source's size.
    pub size_gb: Option<u64>,
    /// GCE disk type (`pd-standard`); backends without types ignore it.
    pub disk_type: String,
}

/// A VM to create and boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSpec {
    /// The VM's name ([`crate::preload::VM_NAME`] for the build VM).
    pub name: String,
    /// Attached in this order; the first is the boot disk.
    pub disks: Vec<DiskId>,
    /// Instance metadata the guest reads from the metadata server (`user-data`, …).
    pub metadata: BTreeMap<String, String>,
    /// Labels on the VM (the build VM gets [`crate::preload::CLEANUP_LABEL`]).
    pub labels: BTreeMap<String, String>,
    /// Machine type, such as `n1-standard-1`; QEMU derives vCPUs and memory from it.
    pub machine_type: String,
    /// Service account the VM runs as; backends without accounts ignore it.
    pub service_account: String,
    /// GPU accelerator type; the VM then also stops on host maintenance.
    pub gpu_type: Option<String>,
    /// The VM's network; `None` for the default.
    pub network: Option<String>,
    /// The VM's subnetwork; `None` for the network's default.
    pub subnet: Option<String>,
    /// The backend stops the VM by force once it has run this long.
    pub max_lifetime: Duration,
}

/// Serial port text from an offset, and the offset to read from next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialChunk {
    /// The text read, from byte [`start`](Self::start) on.
    pub contents: String,
    /// Where `contents` starts: the requested offset, or later when the backend no longer
    /// holds the output between them (GCE keeps the last 1 MiB), which is then lost.
    pub start: u64,
    /// The offset to read from in the next call (in bytes; not derived from `contents`,
    /// whose invalid UTF-8 may have been replaced).
    pub next: u64,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStatus {
    /// The guest is still running.
    Running,
    /// The guest powered off.
    Stopped,
    /// The VM ended some other way (a crash, a panic, a forced stop); the reason says which.
    Failed(String),
    /// A status this version does not know (a cloud added one): the flow says so once and
    /// waits on, as for [`VmStatus::Running`], until a known status or its timeout.
    Unrecognized(String),
}

/// The file format of a local output image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw disk image.
    Raw,
    /// QEMU's qcow2 format.
    Qcow2,
    /// GCE's import format: a gzipped tar holding `disk.raw`.
    TarGz,
}

impl ImageFormat {
    /// Infers the format from a file name: `.qcow2`, `.tar.gz`/`.tgz`, anything else raw.
    pub fn from_path(path: &std::path::Path) -> Self {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".qcow2") {
            ImageFormat::Qcow2
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            ImageFormat::TarGz
        } else {
            ImageFormat::Raw
        }
    }

    /// The format's name as [`FromStr`](std::str::FromStr) reads it: `raw`, `qcow2` or `tar.gz`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::TarGz => "tar.gz",
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            "tar.gz" | "tgz" => Ok(ImageFormat::TarGz),
            _ => anyhow::bail!("unknown image format {s:?}: use raw, qcow2 or tar.gz"),
        }
    }
}

/// The image to make from the finished boot disk.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputImage {
    /// The image's name; may be empty for a local build, which writes
    /// [`local_file`](Self::local_file).
    pub name: String,
    /// Project the image is created in.
    pub project: String,
    /// Image family; empty for none.
    pub family: String,
    /// Labels on the image: the source image's when inherited, plus those given.
    pub labels: BTreeMap<String, String>,
    /// Licenses attached to the image, as `projects/P/global/licenses/L`.
    pub licenses: Vec<String>,
    /// The image's description, `Derivative of <source>.`.
    pub description: String,
    /// For local builds: the file to write, and its format.
    pub local_file: Option<(PathBuf, ImageFormat)>,
}

impl OutputImage {
    /// How the user knows this image: its file or `projects/P/global/images/N`.
    pub fn display_name(&self) -> String {
        match &self.local_file {
            Some((p, _)) => p.display().to_string(),
            None => format!("projects/{}/global/images/{}", self.project, self.name),
        }
    }
}

/// What the preload flow must know of a backend before it creates anything (also for
/// `-dry-run`, which opens no backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// Short name for messages (`qemu`, `gce`).
    pub name: &'static str,
    /// Whether the build VM can have a GPU (`install-gpu` needs one, unless it preloads
    /// with `-no-verify`).
    pub attaches_gpus: bool,
    /// The address the build VM reaches this machine's loopback at, when the VM runs here
    /// (QEMU's user network); `None` when it runs elsewhere.
    pub host_from_guest: Option<&'static str>,
    /// Whether [`Backend::stage_file`] puts files where the build VM fetches them
    /// (`install-gpu -deps-dir` needs it).
    pub stages_files: bool,
}

/// What a local source image turned out to be, as its backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFacts {
    /// `raw`, `qcow2`, … as QEMU names it, or `tar.gz` for a GCE image archive: found from
    /// the content, and the format every later tool is told rather than left to guess.
    pub format: String,
    /// The disk's size in bytes.
    pub virtual_size: u64,
    /// Roughly how many bytes of data it holds (what an unpacked or converted copy needs).
    pub data_bytes: u64,
    /// The disk's first MiB as raw bytes, where its partition table is.
    pub head: Vec<u8>,
    /// Every host file the disk is read from: the source itself and, with
    /// `-allow-backing-file`, each file of its backing chain, which the output must never
    /// replace.
    pub files: Vec<PathBuf>,
}

/// A line one of a backend's hooks reports for the build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Goes with the build's progress ([`LogLine::Host`]).
    Progress(String),
    /// A note beside it ([`LogLine::Note`]).
    Note(String),
}

impl Report {
    /// The line as the build's log takes it.
    pub fn line(&self) -> LogLine<'_> {
        match self {
            Report::Progress(l) => LogLine::Host(l),
            Report::Note(l) => LogLine::Note(l),
        }
    }
}

/// What a kind of backend is, known before one is opened (`-dry-run` opens none): what it
/// can do, and what it makes of the build's source and output image.
pub trait BackendType: Send + Sync {
    /// What this backend is and can do.
    fn info(&self) -> BackendInfo;
    /// Reads the build's source before anything is created; `None` when there is nothing
    /// to read on this machine (an image in the cloud). A local file that sits on a host
    /// backing file (which would be copied into the output) is refused unless
    /// `allow_backing`; a backend that cannot build from a local file refuses one here.
    fn inspect_source(
        &self,
        source: &SourceImage,
        allow_backing: bool,
    ) -> Result<Option<SourceFacts>>;
    /// Checks the output image's name and labels against the backend's rules.
    fn check_output(&self, _out: &OutputImage) -> Result<()> {
        Ok(())
    }
    /// Checks before anything is made that the backend can make the build's boot disk of
    /// `gb` GB (its largest size) and the output image `out` from it.
    fn check_disk_size(&self, _gb: u64, _out: &OutputImage) -> Result<()> {
        Ok(())
    }
    /// Checks `-machine-type` before anything is made. The default takes whatever could
    /// name a GCE machine type (the cloud itself says whether it exists in the zone) and
    /// refuses what never could.
    fn check_machine_type(&self, machine_type: &str) -> Result<()> {
        if !names::is_machine_type(machine_type) {
            anyhow::bail!(
                "-machine-type={machine_type:?} cannot name a GCE machine type: give a name such \
                 as n1-standard-1, e2-custom-2-4096 or custom-2-5120 (lowercase letters, digits \
                 and dashes), or a path or URL ending in machineTypes/NAME"
            );
        }
        Ok(())
    }
}

/// A place to build images: QEMU on this machine, or GCE.
///
/// Deleting something that is already gone is not an error.
#[async_trait]
pub trait Backend: BackendType {
    /// Checks, creating nothing, that what the build needs answers (GCE: the Compute and
    /// Storage endpoints answer as those APIs do, the source image is READY, the bucket
    /// exists). Runs before anything is made, and for `-dry-run`; an error keeps the state.
    async fn check_reachable(&self, _source: &SourceImage) -> Result<Vec<Report>> {
        Ok(Vec::new())
    }
    /// Runs once the build's options are checked, before anything is made (GCE: the
    /// `-enable-cleanup` sweep of old build resources). An error stops the build.
    async fn before_build(&self) -> Result<Vec<Report>> {
        Ok(Vec::new())
    }
    /// Runs once the output image `out` is made (GCE: `-deprecate-old-images`).
    async fn after_image(&self, _out: &OutputImage) -> Result<Vec<Report>> {
        Ok(Vec::new())
    }
    /// Runs last, whatever the outcome, also after a refusal (GCE: removes the build's
    /// Cloud Storage folder, as upstream). Its failure is only a warning.
    async fn end_run(&self) -> Result<()> {
        Ok(())
    }
    /// Whether the output image already exists (then the build is a no-op, as upstream).
    async fn image_exists(&self, out: &OutputImage) -> Result<bool>;
    /// Makes `source` ready for [`Backend::create_disk`] without creating anything (QEMU
    /// unpacks a GCE `tar.gz` here). Runs before the first disk, so a failure or Ctrl-C
    /// here keeps the recorded build.
    async fn prepare_source(&self, _source: &SourceImage) -> Result<()> {
        Ok(())
    }
    /// Creates a disk from its source, at the spec's size.
    async fn create_disk(&self, spec: &DiskSpec) -> Result<DiskId>;
    /// Creates and boots a VM.
    async fn create_vm(&self, spec: &VmSpec) -> Result<VmId>;
    /// Serial port `port` (1-based, as GCE counts: port 3 is the guest's ttyS2) from `offset`.
    async fn serial_output(&self, vm: &VmId, port: u8, offset: u64) -> Result<SerialChunk>;
    /// Grows a disk, also while a running VM has it attached.
    async fn resize_disk(&self, disk: &DiskId, size_gb: u64) -> Result<()>;
    /// Sets one instance metadata key the guest can read.
    async fn set_metadata(&self, vm: &VmId, key: &str, value: &str) -> Result<()>;
    /// Tells the build VM that its success has been seen, so it can power off. The
    /// default sets [`ACK_METADATA_KEY`] to [`ACK_METADATA_VALUE`], the original's
    /// protocol on GCE; a backend that can also stop the guest at once may do so.
    async fn acknowledge(&self, vm: &VmId) -> Result<()> {
        self.set_metadata(vm, ACK_METADATA_KEY, ACK_METADATA_VALUE)
            .await
    }
    /// Whether the VM is running, has stopped or has failed.
    async fn vm_status(&self, vm: &VmId) -> Result<VmStatus>;
    /// Makes the output image from a disk whose VM has stopped.
    async fn create_image(&self, disk: &DiskId, out: &OutputImage) -> Result<()>;
    /// Stops and deletes a VM.
    async fn delete_vm(&self, vm: &VmId) -> Result<()>;
    /// Deletes a disk; a disk a running VM still uses is an error.
    async fn delete_disk(&self, disk: &DiskId) -> Result<()>;
    /// How long the preload flow waits between two polls of an idle VM. Each poll reads
    /// the serial port and, now and then, the VM's status; a cloud API counts them against
    /// a rate limit, so a remote backend polls less often than a local one.
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(500)
    }
    /// Puts `file`, too large for the CIDATA disk, where the build VM can fetch it with its
    /// service account, under `name`; returns the URL the provisioner reads it from
    /// (`gs://...`), or `None` when the backend has no such place. What it stores is
    /// removed by [`Backend::remove_temporaries`].
    async fn stage_file(&self, _file: &std::path::Path, _name: &str) -> Result<Option<String>> {
        Ok(None)
    }
    /// Deletes what the backend made for its own use rather than the flow's (GCE: the
    /// temporary image and the uploaded object a CIDATA disk is made from), also when the
    /// call that made it was cancelled. The flow calls it last when it cleans up.
    async fn remove_temporaries(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn format_from_path() {
        assert_eq!(
            ImageFormat::from_path(Path::new("a/out.qcow2")),
            ImageFormat::Qcow2
        );
        assert_eq!(
            ImageFormat::from_path(Path::new("out.tar.gz")),
            ImageFormat::TarGz
        );
        assert_eq!(
            ImageFormat::from_path(Path::new("out.img")),
            ImageFormat::Raw
        );
        assert!("vmdk".parse::<ImageFormat>().is_err());
    }
}

/// A line for the build log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine<'a> {
    /// What the provisioner reported on serial port 3 (`BuildStatus:` and the end marker).
    Guest(&'a str),
    /// What the preloader does, step by step (the build's progress, with the guest's).
    Host(&'a str),
    /// A note on the run beside the progress: timings, warnings.
    Note(&'a str),
}

impl LogLine<'_> {
    /// The line's text.
    pub fn text(&self) -> &str {
        match self {
            LogLine::Guest(t) | LogLine::Host(t) | LogLine::Note(t) => t,
        }
    }
}
