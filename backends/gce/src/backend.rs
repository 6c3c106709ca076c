//! [`GceBackend`]: the preload flow's disks, VM and image on Compute Engine, with the CIDATA disk
//! carried through Cloud Storage.
//!
//! Names follow Daisy's (`boot-disk-build-image-<id>` …) so dashboards written for the original
//! keep matching, and every resource carries the build's labels. Everything the backend inserts
//! is remembered until it is deleted, so [`Backend::remove_temporaries`] also removes what a
//! cancelled call (Ctrl-C, a timeout) created before it could return its id.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use cos_customizer_common::config::SourceImage;
use cos_customizer_core::backend::{
    Backend, BackendInfo, BackendType, DiskId, DiskSource, DiskSpec, OutputImage, Report,
    SerialChunk, SourceFacts, VmId, VmSpec, VmStatus,
};

use crate::compute::body::{self, Gpu, ImageSpec, InstanceSpec};
use crate::compute::in_use::InUseRetry;
use crate::compute::model::{MetadataItem, Operation};
use crate::compute::Compute;
use crate::error::{kind_of, ApiError, ErrorKind};
use crate::housekeeping::{self, Housekeeping};
use crate::names::{self, build_labels, daisy_name, WORKFLOW};
use crate::raw_disk;
use crate::retry::{Failure, RetryPolicy};
use crate::status::{self, Phase};
use crate::storage::{raw_disk_url, Gcs};

/// How often the build VM is polled: a marker is seen within this, at about 36 API reads a
/// minute while the VM is quiet (see the contract test `polling_is_prompt_and_sparing`).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The GCE backend before it is opened: its VM can have a GPU, it builds from GCE images
/// only, and its image names and labels follow GCE's rules.
pub struct Gce;

impl BackendType for Gce {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "gce",
            attaches_gpus: true,
            host_from_guest: None,
            stages_files: true,
        }
    }

    fn inspect_source(
        &self,
        source: &SourceImage,
        _allow_backing: bool,
    ) -> Result<Option<SourceFacts>> {
        refuse_local(source)?;
        Ok(None)
    }

    fn check_output(&self, out: &OutputImage) -> Result<()> {
        names::check_name(&out.name).context("checking the output image's name")?;
        names::check_labels(&out.labels).context("checking -labels")
    }
}

/// Whether `e` is GCE's 400 for the fields of the build VM's time limit ("Invalid value for
/// field 'resource.scheduling.maxRunDuration…'" or `…instanceTerminationAction`), which an
/// instance without one does not send.
fn refuses_scheduling(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>().is_some_and(|api| {
        api.status == 400
            && [
                "maxRunDuration",
                "instanceTerminationAction",
                "terminationTime",
            ]
            .iter()
            .any(|f| api.message.contains(&format!("'resource.scheduling.{f}")))
    })
}

/// A GCE build cannot start from a file on this machine.
fn refuse_local(source: &SourceImage) -> Result<()> {
    if !source.local_file.is_empty() {
        bail!(
            "the build's source image is the local file {}: a GCE build needs a GCE image; \
             start the build again with -image-name, -image-family or -image-milestone, or \
             build locally with -backend=qemu -output-file=PATH",
            source.local_file
        );
    }
    Ok(())
}

/// How often a metadata update is retried when another writer changed the metadata first.
const METADATA_ATTEMPTS: u32 = 5;
/// How often a disk delete is retried while the disk is still attached.
const IN_USE_ATTEMPTS: u32 = 8;

/// Where and how a build runs on GCE.
#[derive(Clone, Debug)]
pub struct GceOptions {
    /// The project the disks and the VM are made in (`-project`).
    pub project: String,
    /// Their zone (`-zone`).
    pub zone: String,
    /// The bucket the CIDATA disk goes through (`-gcs-bucket`).
    pub gcs_bucket: String,
    /// The build's folder in the bucket (`-gcs-workdir`); objects go under `<dir>/cos-customizer/`.
    pub gcs_dir: String,
    /// The build's id, in every name and in the `cos-customizer-build` label.
    pub build_id: String,
    /// Whether the VM gets an external IP (upstream always gives one).
    pub external_ip: bool,
    /// How long to wait for one operation, such as the image's creation.
    pub op_timeout: Duration,
    /// How long the preload flow waits between two polls of the VM.
    pub poll_interval: Duration,
    /// The pause before the first retry of a disk delete that found the disk still attached;
    /// each later retry waits one more of it.
    pub in_use_backoff: Duration,
}

impl GceOptions {
    /// `<gcs_dir>/cos-customizer/`: everything this tool puts in the bucket, as upstream lays it out.
    pub fn gcs_prefix(&self) -> String {
        let dir = self.gcs_dir.trim_matches('/');
        if dir.is_empty() {
            "cos-customizer/".into()
        } else {
            format!("{dir}/cos-customizer/")
        }
    }
}

/// Something the backend inserted and has not deleted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Object(String),
    Image(String),
    Disk(String),
    Instance(String),
}

/// What a disk's or an image's status came to.
#[derive(Debug)]
enum Settled {
    /// There is no such resource.
    Gone,
    /// A status the table knows and does not wait on (READY, FAILED, ...).
    Known(String),
    /// A status this version does not know, still shown when the wait ran out.
    Unknown(UnknownStatus),
}

#[derive(Debug)]
struct UnknownStatus {
    value: String,
    what: &'static str,
    waited: Duration,
}

impl std::fmt::Display for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Settled::Gone => f.write_str("gone"),
            Settled::Known(s) => f.write_str(s),
            Settled::Unknown(u) => write!(
                f,
                "still {} (a {} status this version does not know) after {}s",
                u.value,
                u.what,
                u.waited.as_secs()
            ),
        }
    }
}

/// Builds on Compute Engine.
#[derive(Debug)]
pub struct GceBackend {
    compute: Compute,
    gcs: Gcs,
    opts: GceOptions,
    housekeeping: Housekeeping,
    owned: Mutex<Vec<Owned>>,
}

impl GceBackend {
    /// A backend calling `compute` and `gcs` for the build `opts` describes.
    pub fn new(compute: Compute, gcs: Gcs, opts: GceOptions) -> GceBackend {
        GceBackend {
            compute,
            gcs,
            opts,
            housekeeping: Housekeeping::default(),
            owned: Mutex::new(Vec::new()),
        }
    }

    /// The same backend, also doing `h` around the build.
    pub fn with_housekeeping(self, h: Housekeeping) -> GceBackend {
        GceBackend {
            housekeeping: h,
            ..self
        }
    }

    /// The options the backend was made with.
    pub fn options(&self) -> &GceOptions {
        &self.opts
    }

    fn own(&self, o: Owned) {
        self.owned.lock().expect("owned list lock").push(o);
    }

    fn disown(&self, o: &Owned) {
        self.owned
            .lock()
            .expect("owned list lock")
            .retain(|x| x != o);
    }

    fn name(&self, role: &str) -> String {
        daisy_name(role, WORKFLOW, &self.opts.build_id)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        build_labels(&self.opts.build_id)
    }

    fn disk_path(&self, disk: &str) -> String {
        format!(
            "projects/{}/zones/{}/disks/{disk}",
            self.opts.project, self.opts.zone
        )
    }

    /// Inserts the build VM `body` and waits for it; a quota or stockout error names the zone
    /// and `machine_type`.
    async fn insert_instance(&self, body: &serde_json::Value, machine_type: &str) -> Result<()> {
        let placed = |e: anyhow::Error| match e.downcast::<ApiError>() {
            Ok(api) => anyhow::Error::new(api.with_placement(&self.opts.zone, machine_type)),
            Err(e) => e,
        };
        let op = self
            .compute
            .instances_insert(&self.opts.project, &self.opts.zone, body)
            .await
            .map_err(placed)?;
        self.wait(op).await.map_err(placed)?;
        Ok(())
    }

    async fn wait(&self, op: Operation) -> Result<Operation> {
        self.compute
            .wait(&self.opts.project, op, self.opts.op_timeout)
            .await
    }

    /// The image a disk of `source` starts from, as `projects/P/global/images/N`.
    fn source_image(source: &SourceImage) -> Result<String> {
        refuse_local(source)?;
        if source.name.is_empty() || source.project.is_empty() {
            bail!(
                "the build state names no resolved GCE source image: run start-image-build \
                 again (it resolves -image-family and -image-milestone to an image name)"
            );
        }
        Ok(format!(
            "projects/{}/global/images/{}",
            source.project, source.name
        ))
    }

    /// A temporary image of the raw disk file `raw`, through Cloud Storage; returns its name
    /// and the object it was imported from.
    async fn import_raw(&self, role: &str, raw: &Path) -> Result<(String, String)> {
        let staging = tempfile::Builder::new()
            .prefix("gce-import-")
            .tempdir_in(raw.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("creating a folder beside {}", raw.display()))?;
        let archive = raw_disk::pack(raw, staging.path()).await?;
        let object = format!(
            "{}{}/{role}.tar.gz",
            self.opts.gcs_prefix(),
            self.opts.build_id
        );
        let bucket = &self.opts.gcs_bucket;
        self.own(Owned::Object(object.clone()));
        self.gcs
            .upload_file(bucket, &object, &archive)
            .await
            .with_context(|| format!("uploading {} to gs://{bucket}/{object}", raw.display()))?;
        let image = self.name(role.trim_end_matches("-disk"));
        let body = body::raw_image(&image, &raw_disk_url(bucket, &object), &self.labels());
        self.own(Owned::Image(image.clone()));
        let op = self
            .compute
            .images_insert(&self.opts.project, &body)
            .await
            .with_context(|| format!("importing gs://{bucket}/{object} as image {image}"))?;
        self.wait(op)
            .await
            .with_context(|| format!("importing gs://{bucket}/{object} as image {image}"))?;
        let project = &self.opts.project;
        match self.settled_image(project, &image).await {
            Ok(Settled::Known(s)) if s == "READY" => Ok((image, object)),
            Ok(Settled::Gone) => bail!("importing gs://{bucket}/{object}: image {image} vanished"),
            Ok(other) => bail!("importing gs://{bucket}/{object}: image {image} ended {other}"),
            Err(e) => Err(e.context(format!("importing gs://{bucket}/{object} as image {image}"))),
        }
    }

    async fn delete_image(&self, image: &str) -> Result<()> {
        let project = &self.opts.project;
        match self.compute.images_delete(project, image).await {
            Ok(op) => self.wait(op).await.map(drop).or_else(not_found_is_done)?,
            Err(e) => not_found_is_done(e)?,
        }
        self.disown(&Owned::Image(image.to_string()));
        Ok(())
    }

    async fn delete_object(&self, object: &str) -> Result<()> {
        self.gcs
            .delete(&self.opts.gcs_bucket, object)
            .await
            .with_context(|| format!("deleting gs://{}/{object}", self.opts.gcs_bucket))?;
        self.disown(&Owned::Object(object.to_string()));
        Ok(())
    }

    /// Waits until disk `name` is READY (GCE's insert may be DONE while the source's data is
    /// still being restored), failing on a status that will not get there.
    async fn disk_ready(&self, name: &str) -> Result<()> {
        let (project, zone) = (&self.opts.project, &self.opts.zone);
        let read = || async {
            let disk = self.compute.disks_get(project, zone, name).await?;
            Ok(Some(disk.status))
        };
        match self.settle(status::DISK, "disk", read).await? {
            Settled::Known(s) if s == "READY" => Ok(()),
            Settled::Known(s) => bail!("disk {name} is {s}"),
            unknown @ Settled::Unknown(_) => bail!("disk {name} is {unknown}"),
            Settled::Gone => bail!("disk {name} vanished after it was created"),
        }
    }

    /// What image `name` of `project` settles in (READY, FAILED, or one this version does not
    /// know once the operation timeout has passed), or [`Settled::Gone`] if there is no such
    /// image; an image being deleted is waited out, as it is about to be none.
    async fn settled_image(&self, project: &str, name: &str) -> Result<Settled> {
        let read = || async {
            match self.compute.images_get(project, name).await {
                Ok(image) => Ok(Some(image.status)),
                Err(e) if kind_of(&e) == Some(ErrorKind::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.settle(status::IMAGE_UNDER_NAME, "image", read).await
    }

    /// Reads a resource's status with `read` until `table` says it is no longer going (or it
    /// is gone), polling for at most the operation timeout. An unknown status is waited on;
    /// if the time runs out in one, it is returned, for the caller to name.
    async fn settle<F, Fut>(
        &self,
        table: &'static [status::Status],
        what: &'static str,
        read: F,
    ) -> Result<Settled>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>>>,
    {
        let deadline = tokio::time::Instant::now() + self.opts.op_timeout;
        loop {
            let Some(value) = read().await? else {
                return Ok(Settled::Gone);
            };
            let phase = status::phase(table, &value);
            if phase != Some(Phase::Going) && phase.is_some() {
                return Ok(Settled::Known(value));
            }
            if tokio::time::Instant::now() >= deadline {
                if phase.is_none() {
                    return Ok(Settled::Unknown(UnknownStatus {
                        value,
                        what,
                        waited: self.opts.op_timeout,
                    }));
                }
                bail!(
                    "the {what} is still {value} after {}s",
                    self.opts.op_timeout.as_secs()
                );
            }
            tokio::time::sleep(self.opts.poll_interval.min(Duration::from_secs(2))).await;
        }
    }

    /// Reads the instance's metadata, sets `key` in it and writes it back with the fingerprint
    /// it was read with; a fingerprint race (HTTP 412, or an operation that fails on it) starts
    /// over from the read.
    async fn set_metadata_once(&self, vm: &str, key: &str, value: &str) -> Result<()> {
        let (project, zone) = (&self.opts.project, &self.opts.zone);
        let current = self
            .compute
            .instances_get(project, zone, vm)
            .await
            .context("reading the instance's metadata")?
            .metadata;
        let merged = body::merge_metadata(&current, key, value);
        let op = self
            .compute
            .instances_set_metadata(project, zone, vm, &merged)
            .await?;
        self.wait(op).await?;
        Ok(())
    }
}

/// `Ok` for an error that says the resource is already gone.
fn not_found_is_done(e: anyhow::Error) -> Result<()> {
    if kind_of(&e) == Some(ErrorKind::NotFound) {
        Ok(())
    } else {
        Err(e)
    }
}

/// The flow's status of a GCE instance status (see [`status::INSTANCE`]).
fn vm_status(value: &str) -> VmStatus {
    match status::phase(status::INSTANCE, value) {
        Some(Phase::Going) => VmStatus::Running,
        Some(Phase::Settled) => VmStatus::Stopped,
        // No instance status means failure; a table that grows one says why here.
        Some(Phase::Failed) => VmStatus::Failed(format!("the instance is {value}")),
        None => VmStatus::Unrecognized(value.to_string()),
    }
}

impl BackendType for GceBackend {
    fn info(&self) -> BackendInfo {
        Gce.info()
    }

    fn inspect_source(
        &self,
        source: &SourceImage,
        allow_backing: bool,
    ) -> Result<Option<SourceFacts>> {
        Gce.inspect_source(source, allow_backing)
    }

    fn check_output(&self, out: &OutputImage) -> Result<()> {
        Gce.check_output(out)
    }
}

#[async_trait]
impl Backend for GceBackend {
    async fn check_reachable(&self, source: &SourceImage) -> Result<Vec<Report>> {
        let path = Self::source_image(source)?;
        let compute = self.compute.base();
        let image = match self.compute.images_get(&source.project, &source.name).await {
            Ok(image) => image,
            Err(e) if kind_of(&e) == Some(ErrorKind::NotFound) => {
                return Err(e.context(format!(
                    "the source image {path} does not exist or the caller cannot see it: \
                     start the build again (start-image-build) with an image that exists, or \
                     check -compute-endpoint ({compute})"
                )))
            }
            Err(e) => {
                return Err(e.context(format!(
                    "the Compute API at {compute} did not answer for the source image {path}"
                )))
            }
        };
        let mut reports = Vec::new();
        match status::phase(status::IMAGE, &image.status) {
            Some(Phase::Settled) => {}
            Some(Phase::Failed) => bail!(
                "the source image {path} is {}: start the build again with another image",
                image.status
            ),
            _ => reports.push(Report::Note(format!(
                "the source image {path} is {}, not READY yet: GCE waits for it when the boot \
                 disk is made",
                image.status
            ))),
        }
        self.gcs
            .check_bucket(&self.opts.gcs_bucket)
            .await
            .context("checking the build's bucket (-gcs-bucket)")?;
        Ok(reports)
    }

    async fn before_build(&self) -> Result<Vec<Report>> {
        if !self.housekeeping.sweep_old {
            return Ok(Vec::new());
        }
        housekeeping::sweep(&self.compute, &self.opts.project, &self.opts.zone).await
    }

    async fn after_image(&self, out: &OutputImage) -> Result<Vec<Report>> {
        if !self.housekeeping.deprecate_old_images {
            return Ok(Vec::new());
        }
        housekeeping::deprecate(&self.compute, out, self.housekeeping.old_image_ttl).await
    }

    async fn end_run(&self) -> Result<()> {
        let (bucket, prefix) = (&self.opts.gcs_bucket, self.opts.gcs_prefix());
        self.gcs
            .delete_prefix(bucket, &prefix)
            .await
            .with_context(|| format!("could not delete gs://{bucket}/{prefix}"))?;
        Ok(())
    }

    async fn image_exists(&self, out: &OutputImage) -> Result<bool> {
        let name = out.display_name();
        let found = self
            .settled_image(&out.project, &out.name)
            .await
            .with_context(|| format!("looking for image {name}"))?;
        match found {
            Settled::Gone => Ok(false),
            Settled::Known(s) if s == "READY" => Ok(true),
            other => bail!(
                "image {name} exists but is {other}, so it cannot be the build's result: delete \
                 it (gcloud compute images delete {} --project {}) or pick another -image-name",
                out.name,
                out.project
            ),
        }
    }

    async fn create_disk(&self, spec: &DiskSpec) -> Result<DiskId> {
        let name = self.name(&spec.name);
        let (source, temporary) = match &spec.source {
            DiskSource::Image(source) => (Self::source_image(source)?, None),
            DiskSource::RawFile(raw) => {
                let (image, object) = self.import_raw(&spec.name, raw).await?;
                let path = format!("projects/{}/global/images/{image}", self.opts.project);
                (path, Some((image, object)))
            }
        };
        let labels = self.labels();
        let size_gb = spec
            .size_gb
            .map(|gb| i64::try_from(gb).context("disk size"))
            .transpose()?;
        let body = body::disk(
            &self.opts.project,
            &self.opts.zone,
            &body::DiskSpec {
                name: &name,
                source_image: Some(&source),
                disk_type: &spec.disk_type,
                size_gb,
                labels: &labels,
            },
        );
        self.own(Owned::Disk(name.clone()));
        let op = self
            .compute
            .disks_insert(&self.opts.project, &self.opts.zone, &body)
            .await
            .with_context(|| format!("creating disk {name} from {source}"))?;
        self.wait(op)
            .await
            .with_context(|| format!("creating disk {name} from {source}"))?;
        self.disk_ready(&name)
            .await
            .with_context(|| format!("creating disk {name} from {source}"))?;
        // The disk holds its own copy: the imported image and its object can go at once.
        if let Some((image, object)) = temporary {
            self.delete_image(&image).await?;
            self.delete_object(&object).await?;
        }
        Ok(DiskId(name))
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmId> {
        let name = self.name(&spec.name);
        let mut labels = spec.labels.clone();
        labels.extend(self.labels());
        let metadata: Vec<MetadataItem> = spec
            .metadata
            .iter()
            .map(|(k, v)| MetadataItem {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let disks: Vec<&str> = spec.disks.iter().map(|d| d.0.as_str()).collect();
        let description = format!("Build VM of cos-customizer build {}", self.opts.build_id);
        let account = if spec.service_account.is_empty() {
            "default"
        } else {
            &spec.service_account
        };
        let instance = |max_run_duration| {
            body::instance(
                &self.opts.project,
                &self.opts.zone,
                &InstanceSpec {
                    name: &name,
                    description: &description,
                    machine_type: &spec.machine_type,
                    disks: &disks,
                    labels: &labels,
                    metadata: &metadata,
                    service_account: account,
                    gpu: spec.gpu_type.as_deref().map(|t| Gpu {
                        accelerator_type: t,
                        count: 1,
                    }),
                    network: spec.network.as_deref(),
                    subnetwork: spec.subnet.as_deref(),
                    external_ip: self.opts.external_ip,
                    max_run_duration,
                },
            )
        };
        self.own(Owned::Instance(name.clone()));
        let limited = self
            .insert_instance(&instance(Some(spec.max_lifetime)), &spec.machine_type)
            .await;
        match limited {
            // A project may refuse the time limit (GCE's rules for it have changed before);
            // the VM is the build's and its cleanup deletes it, so the limit is only a net.
            Err(e) if refuses_scheduling(&e) => {
                eprintln!(
                    "warning: GCE refused the build VM's run-duration limit ({e:#}); \
                     creating {name} without one (the build still deletes it)"
                );
                self.insert_instance(&instance(None), &spec.machine_type)
                    .await
            }
            r => r,
        }
        .with_context(|| format!("creating instance {name}"))?;
        Ok(VmId(name))
    }

    async fn serial_output(&self, vm: &VmId, port: u8, offset: u64) -> Result<SerialChunk> {
        let start = i64::try_from(offset).context("serial offset")?;
        let out = self
            .compute
            .instances_serial_port(&self.opts.project, &self.opts.zone, &vm.0, port, start)
            .await
            .with_context(|| format!("reading serial port {port} of instance {vm}"))?;
        Ok(SerialChunk {
            contents: out.contents,
            start: u64::try_from(out.start).unwrap_or(offset).max(offset),
            next: u64::try_from(out.next).unwrap_or(offset),
        })
    }

    async fn resize_disk(&self, disk: &DiskId, size_gb: u64) -> Result<()> {
        let gb = i64::try_from(size_gb).context("disk size")?;
        let (project, zone) = (&self.opts.project, &self.opts.zone);
        let op = self
            .compute
            .disks_resize(project, zone, &disk.0, gb)
            .await
            .with_context(|| format!("resizing disk {disk} to {size_gb} GB"))?;
        self.wait(op)
            .await
            .with_context(|| format!("resizing disk {disk} to {size_gb} GB"))?;
        Ok(())
    }

    async fn set_metadata(&self, vm: &VmId, key: &str, value: &str) -> Result<()> {
        // A fingerprint race is mended by reading again at once.
        let policy = RetryPolicy {
            attempts: METADATA_ATTEMPTS,
            base_delay: Duration::from_millis(100),
            attempt_timeout: self.opts.op_timeout,
            budget: self.opts.op_timeout * METADATA_ATTEMPTS,
            ..RetryPolicy::default()
        };
        policy
            .run(|_| async {
                self.set_metadata_once(&vm.0, key, value)
                    .await
                    .map_err(|e| Failure::retry_on(ErrorKind::Precondition, e))
            })
            .await
            .map_err(|f| {
                f.error
                    .context(format!("setting metadata {key} on instance {vm}"))
            })
    }

    async fn vm_status(&self, vm: &VmId) -> Result<VmStatus> {
        match self
            .compute
            .instances_get(&self.opts.project, &self.opts.zone, &vm.0)
            .await
        {
            Ok(i) => Ok(vm_status(&i.status)),
            Err(e) if kind_of(&e) == Some(ErrorKind::NotFound) => Ok(VmStatus::Failed(format!(
                "instance {vm} no longer exists (deleted by someone else, or by GCE at its \
                 maximum run duration)"
            ))),
            Err(e) => Err(e.context(format!("reading the status of instance {vm}"))),
        }
    }

    async fn create_image(&self, disk: &DiskId, out: &OutputImage) -> Result<()> {
        let source_disk = self.disk_path(&disk.0);
        let body = body::image(&ImageSpec {
            name: &out.name,
            source_disk: &source_disk,
            family: Some(out.family.as_str()).filter(|f| !f.is_empty()),
            labels: &out.labels,
            licenses: &out.licenses,
            description: &out.description,
        });
        let op = self.compute.images_insert(&out.project, &body).await?;
        // The image's operation lives in the image's project, which may not be the build's.
        self.compute
            .wait(&out.project, op, self.opts.op_timeout)
            .await?;
        match self.settled_image(&out.project, &out.name).await? {
            Settled::Known(s) if s == "READY" => Ok(()),
            Settled::Gone => bail!("image {} vanished as it was made", out.display_name()),
            other => bail!("image {} ended {other}", out.display_name()),
        }
    }

    async fn delete_vm(&self, vm: &VmId) -> Result<()> {
        let (project, zone) = (&self.opts.project, &self.opts.zone);
        match self.compute.instances_delete(project, zone, &vm.0).await {
            Ok(op) => self.wait(op).await.map(drop).or_else(not_found_is_done)?,
            Err(e) => not_found_is_done(e)?,
        }
        self.disown(&Owned::Instance(vm.0.clone()));
        Ok(())
    }

    async fn delete_disk(&self, disk: &DiskId) -> Result<()> {
        let retry = InUseRetry {
            attempts: IN_USE_ATTEMPTS,
            backoff: self.opts.in_use_backoff,
        };
        self.compute
            .delete_disk_when_free(
                &self.opts.project,
                &self.opts.zone,
                &disk.0,
                self.opts.op_timeout,
                retry,
            )
            .await
            .or_else(not_found_is_done)?;
        self.disown(&Owned::Disk(disk.0.clone()));
        Ok(())
    }

    fn poll_interval(&self) -> Duration {
        self.opts.poll_interval
    }

    async fn stage_file(&self, file: &Path, name: &str) -> Result<Option<String>> {
        let object = format!("{}{}/{name}", self.opts.gcs_prefix(), self.opts.build_id);
        let bucket = &self.opts.gcs_bucket;
        self.own(Owned::Object(object.clone()));
        self.gcs
            .upload_file(bucket, &object, file)
            .await
            .with_context(|| format!("uploading {} to gs://{bucket}/{object}", file.display()))?;
        Ok(Some(format!("gs://{bucket}/{object}")))
    }

    async fn remove_temporaries(&self) -> Result<()> {
        let owned = self.owned.lock().expect("owned list lock").clone();
        let mut failures = Vec::new();
        for o in owned.iter().rev() {
            let r = match o {
                Owned::Instance(i) => self.delete_vm(&VmId(i.clone())).await,
                Owned::Disk(d) => self.delete_disk(&DiskId(d.clone())).await,
                Owned::Image(i) => self.delete_image(i).await,
                Owned::Object(o) => self.delete_object(o).await,
            };
            if let Err(e) = r {
                failures.push(format!("{o:?}: {e:#}"));
            }
        }
        if !failures.is_empty() {
            bail!("could not delete: {}", failures.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_statuses() {
        assert_eq!(vm_status("RUNNING"), VmStatus::Running);
        assert_eq!(vm_status("STAGING"), VmStatus::Running);
        assert_eq!(vm_status("DEPROVISIONING"), VmStatus::Running);
        assert_eq!(vm_status("PENDING"), VmStatus::Running);
        assert_eq!(vm_status("TERMINATED"), VmStatus::Stopped);
        assert_eq!(vm_status("SUSPENDED"), VmStatus::Stopped);
        assert_eq!(
            vm_status("SOMETHING_NEW"),
            VmStatus::Unrecognized("SOMETHING_NEW".into())
        );
    }

    #[test]
    fn gcs_prefix_follows_upstream() {
        let mut o = GceOptions {
            project: "p".into(),
            zone: "z".into(),
            gcs_bucket: "b".into(),
            gcs_dir: "/w/".into(),
            build_id: "b4x9q".into(),
            external_ip: true,
            op_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            in_use_backoff: Duration::from_secs(1),
        };
        assert_eq!(o.gcs_prefix(), "w/cos-customizer/");
        o.gcs_dir = String::new();
        assert_eq!(o.gcs_prefix(), "cos-customizer/");
    }

    #[test]
    fn local_and_unresolved_sources_are_refused() {
        let mut s = cos_customizer_common::config::SourceImage {
            name: "cos".into(),
            project: "cos-cloud".into(),
            ..Default::default()
        };
        assert_eq!(
            GceBackend::source_image(&s).unwrap(),
            "projects/cos-cloud/global/images/cos"
        );
        s.local_file = "/x/cos.img".into();
        let e = GceBackend::source_image(&s).unwrap_err().to_string();
        assert!(e.contains("-backend=qemu"), "{e}");
        s.local_file.clear();
        s.name.clear();
        let e = GceBackend::source_image(&s).unwrap_err().to_string();
        assert!(e.contains("run start-image-build again"), "{e}");
    }

    #[test]
    fn only_a_400_on_the_time_limit_drops_it() {
        let refusal = |status, field: &str| {
            anyhow::Error::new(ApiError::from_response(
                status,
                &serde_json::json!({"error": {"code": status, "errors": [{"reason": "invalid"}],
                    "message": format!("Invalid value for field 'resource.scheduling.{field}': 'x'.")}})
                .to_string(),
            ))
            .context("creating instance vm")
        };
        assert!(refuses_scheduling(&refusal(
            400,
            "instanceTerminationAction"
        )));
        assert!(refuses_scheduling(&refusal(400, "maxRunDuration.seconds")));
        assert!(!refuses_scheduling(&refusal(400, "onHostMaintenance")));
        assert!(!refuses_scheduling(&refusal(403, "maxRunDuration")));
    }
}
