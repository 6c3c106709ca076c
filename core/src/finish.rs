//! `finish-image-build` as one library call, for every backend: resolved options and an
//! opened backend in, the output image out. It applies the options to the recorded build (as
//! the original does before `validateOEM`), checks them against what the backend can do and
//! makes of the source, sizes the disks, runs the backend's steps before the build, the
//! preloader, and removes the build state once a build has run; then the SBOM and the
//! backend's steps after the image (GCE: deprecation), and last, whatever the outcome, the
//! backend's end of the run (GCE: its Cloud Storage folder goes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cos_customizer_common::config::Step;
use cos_customizer_common::protocol::{cidata_url, BUILD_CONTEXT_TAR, USER_CONTEXT};
use cos_customizer_common::{cos_layout, duration, sizing};

use crate::backend::{Backend, BackendType, ImageFormat, OutputImage};
use crate::cache::{self, Cache, CacheOptions, Held, Stored};
use crate::cloud_config;
use crate::output_lock::OutputLock;
use crate::preload::{self, LogLine, Preloader, Request};
use crate::sbom::{Sbom, Storage};
use crate::state::{BuildState, StateDir};
use crate::{archive, cidata, preflight, provisioner_bin, workdir};

/// The prefix the original trims from `-licenses` values.
const LICENSE_PREFIX: &str = "https://www.googleapis.com/compute/v1/";
const GIB: u64 = 1 << 30;
/// Room for the CIDATA disk's FAT structures and cloud-init files, beyond its payload.
const CIDATA_SLACK: u64 = 16 << 20;

/// Everything `finish-image-build` was asked, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishOptions {
    /// Applies to each wait, as the original's Daisy `-default_timeout`.
    pub timeout: Duration,
    /// The output disk's size; `None` keeps the image's 10 GB.
    pub disk_size_gb: Option<u64>,
    /// The OEM partition's size as given (`-oem-size`).
    pub oem_size: Option<String>,
    /// The build VM.
    pub vm: VmOptions,
    /// The output image.
    pub image: ImageOptions,
    /// The static provisioner binary for the CIDATA disk (`-provisioner`); `None` looks in
    /// the usual places ([`provisioner_bin::locate`]).
    pub provisioner: Option<PathBuf>,
    /// Accept a local source image that sits on a backing file (`-allow-backing-file`).
    pub allow_backing_file: bool,
    /// The Cloud Storage endpoint the build uses, when it is not Cloud Storage's own
    /// (`-storage-endpoint`, or `STORAGE_EMULATOR_HOST`); the VM downloads from it too.
    pub storage_endpoint: Option<String>,
    /// The SBOM to write once the image is built.
    pub sbom: Option<SbomOptions>,
    /// The build cache (`-cache-dir`), for a local output.
    pub cache: Option<CacheOptions>,
}

/// Where the SBOM's input is and where the document goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomOptions {
    /// The input JSON file in the build context (`-sbom-input-path`).
    pub input_path: String,
    /// A `gs://` folder or a local one (`-sbom-output-path`).
    pub output_path: String,
}

/// How a build that did not fail ended, with the output image.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The output image was made.
    Built(OutputImage),
    /// The output image existed already, so nothing was done (as the original).
    AlreadyExisted(OutputImage),
}

/// The build VM's flags; GCE-only ones are recorded for every backend, as the original.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmOptions {
    /// Project of the VM and its disks.
    pub project: String,
    /// Zone of the VM and its disks.
    pub zone: String,
    /// Machine type (QEMU maps it to vCPUs and memory).
    pub machine_type: String,
    /// Service account of the VM.
    pub service_account: String,
    /// Disk type of the build disks.
    pub disk_type: String,
    /// GPU to attach; `None` keeps the one `install-gpu` recorded.
    pub gpu_type: Option<String>,
    /// Network; `None` for the default.
    pub network: Option<String>,
    /// Subnetwork; `None` for the network's default.
    pub subnet: Option<String>,
}

/// How the output image is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    /// No name (a local build writes a file).
    Unnamed,
    /// This name.
    Name(String),
    /// The source image's name followed by this suffix.
    Suffix(String),
}

impl ImageName {
    /// The name for a build of the image `source_name`; empty when [`ImageName::Unnamed`].
    pub fn resolve(&self, source_name: &str) -> String {
        match self {
            ImageName::Unnamed => String::new(),
            ImageName::Name(n) => n.clone(),
            ImageName::Suffix(suffix) => format!("{source_name}{suffix}"),
        }
    }
}

/// The output image's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageOptions {
    /// Its name.
    pub name: ImageName,
    /// Project it is made in.
    pub project: String,
    /// Image family.
    pub family: String,
    /// Labels given with `-labels`; they win over inherited ones.
    pub labels: BTreeMap<String, String>,
    /// Whether the source image's labels are copied.
    pub inherit_labels: bool,
    /// `-licenses` values as given (comma lists).
    pub licenses: Vec<String>,
    /// For local builds: the absolute file to write, and its format.
    pub local_file: Option<(PathBuf, ImageFormat)>,
    /// Replace an existing local output file (`-overwrite`).
    pub overwrite: bool,
}

/// What `finish-image-build -dry-run` prints for the build `s` recorded in `state`: the
/// plan, after the same checks as a real build on a `backend`, and every reason the real
/// build would be refused (with `host_problems`, the backend's own checks of this machine).
/// Creates nothing and keeps the state.
pub fn plan(
    state: &StateDir,
    s: BuildState,
    opts: &FinishOptions,
    backend: &dyn BackendType,
    host_problems: Vec<String>,
) -> Result<(String, Vec<String>)> {
    let (req, mut refusals) = prepare(state, s, opts, backend);
    let sbom = prepare_sbom(state, opts, &req)?;
    refusals.splice(0..0, host_problems);
    let mut text = preload::plan(&req, backend.info().name)?;
    if let Some(sbom) = sbom {
        text += &format!("{}\n", sbom.plan());
    }
    Ok((text, refusals))
}

/// What a failure before anything was made adds: the recorded build can be run again.
const KEPT: &str = "nothing was created and the build state is kept: mend the cause and run \
                    finish-image-build again";

/// Builds the output image of the build `s` recorded in `state` on `backend`; `storage`
/// carries the SBOM to and from Cloud Storage. Bad options keep the state, so the user can
/// fix the flag and run again; once the build has run, the state is removed whatever the
/// outcome, as upstream. Ctrl-C, SIGTERM and SIGHUP stop the build and clean up.
pub async fn finish(
    state: &StateDir,
    s: BuildState,
    opts: &FinishOptions,
    backend: Arc<dyn Backend>,
    storage: &dyn Storage,
    log: &mut dyn FnMut(LogLine),
) -> Result<Outcome> {
    let result = async {
        let (mut req, refusals, source_files) = prepare_with_files(state, s, opts, &*backend);
        // Before the build, so that a mistake in the SBOM input costs no build.
        let sbom = prepare_sbom(state, opts, &req)?;
        if !refusals.is_empty() {
            bail!("{} (the build state is kept)", refused(&refusals));
        }
        // A missing provisioner is a set-up mistake: say so and keep the state.
        req.provisioner = provisioner_bin::locate(opts.provisioner.as_deref())?;
        // Held until the output is renamed into place: a second build naming the same file
        // fails here, with its state kept, instead of replacing this one's image.
        let _output_lock = match &opts.image.local_file {
            Some((out, _)) => Some(OutputLock::acquire(out, state.root())?),
            None => None,
        };
        for r in backend.check_reachable(&req.source).await.context(KEPT)? {
            log(r.line());
        }
        for r in backend.before_build().await.context(KEPT)? {
            log(r.line());
        }
        let held = match (&opts.cache, &req.output.local_file) {
            (Some(c), Some((out, _))) => Some(
                look_up(c, &req, source_files, out, log)
                    .await
                    .context(KEPT)?,
            ),
            _ => None,
        };
        let (result, used) = match held {
            // Written from the cache: the recorded steps are used up as by a build.
            Some((_, true)) => (Ok(Outcome::Built(req.output.clone())), true),
            Some((held, false)) => {
                let built = build(&req, backend.clone(), log).await;
                if let (Ok(Outcome::Built(image)), Some((out, _))) =
                    (&built.0, &req.output.local_file)
                {
                    store(held, out, image, log).await;
                }
                built
            }
            None => build(&req, backend.clone(), log).await,
        };
        if !used {
            // Failed before anything was made (an endpoint down, Ctrl-C while the CIDATA
            // disk was built): the recorded build is still good for another try.
            let e = result.expect_err("a build that made nothing failed");
            return Err(e.context(KEPT));
        }
        let removed = state.remove();
        let outcome = result?;
        removed?;
        if let Outcome::Built(image) = &outcome {
            if let Some(sbom) = &sbom {
                sbom.write(storage, log).await?;
            }
            for r in backend.after_image(image).await? {
                log(r.line());
            }
        }
        Ok(outcome)
    }
    .await;
    if let Err(e) = backend.end_run().await {
        log(LogLine::Note(&format!("warning: {e:#}")));
    }
    result
}

/// The SBOM asked for, read and checked for the image `req` makes.
fn prepare_sbom(state: &StateDir, opts: &FinishOptions, req: &Request) -> Result<Option<Sbom>> {
    opts.sbom
        .as_ref()
        .map(|o| {
            Sbom::prepare(
                &state.context_archive(),
                &o.input_path,
                &o.output_path,
                &req.source,
                &req.output.name,
            )
        })
        .transpose()
}

/// One message for one or more reasons to refuse a build.
pub fn refused(reasons: &[String]) -> String {
    match reasons {
        [one] => one.clone(),
        many => format!("the build cannot start:\n  - {}", many.join("\n  - ")),
    }
}

/// Applies the options to the recorded build and checks them against the backend and
/// this machine. Returns the request, and every reason to refuse it.
fn prepare(
    state: &StateDir,
    s: BuildState,
    opts: &FinishOptions,
    backend: &dyn BackendType,
) -> (Request, Vec<String>) {
    let (req, refusals, _) = prepare_with_files(state, s, opts, backend);
    (req, refusals)
}

/// [`prepare`], also returning the host files the source image is read from (for the
/// cache key).
fn prepare_with_files(
    state: &StateDir,
    mut s: BuildState,
    opts: &FinishOptions,
    backend: &dyn BackendType,
) -> (Request, Vec<String>, Vec<PathBuf>) {
    let mut refusals = Vec::new();
    let mut refuse = |e: anyhow::Error| refusals.push(format!("{e:#}"));
    if opts.timeout.is_zero() {
        refuse(anyhow!("-timeout must be longer than 0, e.g. -timeout=1h"));
    }
    let b = &mut s.build;
    let vm = &opts.vm;
    b.project = vm.project.clone();
    b.zone = vm.zone.clone();
    b.machine_type = vm.machine_type.clone();
    b.service_account = vm.service_account.clone();
    b.disk_type = vm.disk_type.clone();
    b.disk_size_gb = opts.disk_size_gb;
    b.timeout = duration::format(opts.timeout);
    b.network = vm.network.clone();
    b.subnet = vm.subnet.clone();
    if vm.gpu_type.is_some() {
        b.gpu_type = vm.gpu_type.clone();
    }
    if let Err(e) = backend.check_machine_type(&vm.machine_type) {
        refuse(e);
    }
    let info = backend.info();
    let gpu_step = s.prov.steps.iter().find_map(|st| match st {
        Step::InstallGpu(a) => Some(a.no_verify),
        _ => None,
    });
    match (gpu_step, &b.gpu_type) {
        (Some(false), _) if !info.attaches_gpus => refuse(anyhow!(
            "install-gpu needs a GPU in the build VM, which the {} backend cannot attach: build on GCE (-backend=gce), or preload the drivers without a GPU with install-gpu -no-verify (they are then neither loaded nor checked until the image first boots on a GPU VM)",
            info.name.to_uppercase()
        )),
        (Some(false), None) => refuse(anyhow!(
            "the build has an install-gpu step but no GPU type: give -gpu-type (e.g. -gpu-type=nvidia-tesla-t4), or preload without a GPU with install-gpu -no-verify"
        )),
        (_, Some(gpu)) if !info.attaches_gpus => refuse(anyhow!(
            "the {} backend cannot attach the GPU {gpu} (-gpu-type): drop -gpu-type, or build on GCE (-backend=gce)",
            info.name.to_uppercase()
        )),
        _ => {}
    }
    if let Some(deps) = s.prov.steps.iter().find_map(|st| match st {
        Step::InstallGpu(a)
            if !info.stages_files
                && !a.gcs_deps_prefix.is_empty()
                && !a.gcs_deps_prefix.starts_with("gs://") =>
        {
            Some(a.gcs_deps_prefix.clone())
        }
        _ => None,
    }) {
        refuse(anyhow!(
            "install-gpu -deps-dir={deps}: the {} backend has nowhere to upload the files for the build VM; build on GCE (-backend=gce), or record install-gpu again without -deps-dir and with a driver version",
            info.name.to_uppercase()
        ));
    }
    if let Some(gb) = opts.disk_size_gb.filter(|gb| gb.checked_mul(GIB).is_none()) {
        refuse(anyhow!(
            "-disk-size-gb={gb} is too large to be a disk size: give a size in GB, e.g. -disk-size-gb=20"
        ));
    }
    s.prov.boot_disk.oem_size = opts.oem_size.clone();
    if let Err(e) = sizing::validate_oem(s.build.disk_size_gb, &mut s.prov) {
        refuse(e);
    }
    s.prov.boot_disk.wait_for_disk_resize = sizing::resize_to_gb(&s.build, &s.prov).is_some();
    s.prov.storage_endpoint = opts
        .storage_endpoint
        .as_deref()
        .map(|e| guest_endpoint(e, info.host_from_guest))
        .unwrap_or_default();
    // Every backend carries the build context on the CIDATA disk.
    s.prov.build_contexts =
        BTreeMap::from([(USER_CONTEXT.to_string(), cidata_url(BUILD_CONTEXT_TAR))]);
    let (problems, source_files) = check_local_files(state, &s, opts, backend);
    for problem in problems {
        refuse(problem);
    }
    let output = output_image(&opts.image, &s);
    if let Err(e) = backend.check_output(&output) {
        refuse(e);
    }
    let disk_gb = sizing::resize_to_gb(&s.build, &s.prov)
        .unwrap_or(0)
        .max(sizing::initial_disk_gb(&s.build, &s.prov));
    // A size too large for bytes is refused above.
    if disk_gb.checked_mul(GIB).is_some() {
        if let Err(e) = backend.check_disk_size(disk_gb, &output) {
            refuse(e);
        }
    }
    // The real run stops on these too; -dry-run lists them with the rest.
    if let Err(e) = provisioner_bin::locate(opts.provisioner.as_deref()) {
        refuse(e);
    }
    if let Err(e) = archive::check_whole(&state.context_archive()) {
        refuse(e);
    }
    let context_len = file_len(&state.context_archive());
    if context_len > cidata::MAX_FILE && !info.stages_files {
        refuse(anyhow!(
            "the build context is {context_len} bytes, more than the CIDATA disk holds ({} \
             bytes), and the {} backend has nowhere else to put it: leave large files out of \
             start-image-build's -build-context and fetch them from a script, or build on GCE",
            cidata::MAX_FILE,
            info.name.to_uppercase()
        ));
    }
    let req = Request {
        output,
        user_data: cloud_config::user_data(),
        provisioner: opts.provisioner.clone().unwrap_or_default(),
        context_tar: state.context_archive(),
        log_dir: state.log_dir(),
        source: s.source,
        build: s.build,
        prov: s.prov,
        timeout: opts.timeout,
    };
    (req, refusals, source_files)
}

/// `endpoint` as the build VM reaches it: a loopback host is `host_from_guest` when the VM
/// runs on this machine.
fn guest_endpoint(endpoint: &str, host_from_guest: Option<&str>) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    let (Some(addr), Some((scheme, rest))) = (host_from_guest, endpoint.split_once("://")) else {
        return endpoint.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    };
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return endpoint.to_string();
    }
    match port {
        Some(p) => format!("{scheme}://{addr}:{p}{path}"),
        None => format!("{scheme}://{addr}{path}"),
    }
}

/// The local source image as the backend reads it, the output file and the free space they
/// need; also returns the files the build reads the source from.
fn check_local_files(
    state: &StateDir,
    s: &BuildState,
    opts: &FinishOptions,
    backend: &dyn BackendType,
) -> (Vec<anyhow::Error>, Vec<PathBuf>) {
    let mut problems = Vec::new();
    let source = Some(Path::new(&s.source.local_file)).filter(|p| !p.as_os_str().is_empty());
    // The files the build reads the source from, once the backend has read it.
    let mut source_files: Vec<PathBuf> = source.map(Path::to_path_buf).into_iter().collect();
    let mut data_bytes = 0;
    let mut needs = cos_layout::ALWAYS.to_vec();
    if s.prov.boot_disk.reclaim_sda3 {
        needs.extend(cos_layout::FOR_RECLAIM);
    }
    let inspected = backend
        .inspect_source(&s.source, opts.allow_backing_file)
        .and_then(|facts| match (facts, source) {
            (Some(facts), Some(src)) => {
                preflight::check_partitions(src, &facts, &needs)?;
                Ok(Some(facts))
            }
            (facts, _) => Ok(facts),
        });
    match inspected {
        Ok(None) => {}
        Err(e) => problems.push(e),
        Ok(Some(facts)) => {
            data_bytes = facts.data_bytes;
            source_files.clone_from(&facts.files);
            if let Err(e) = preflight::check_disk_size(
                Path::new(&s.source.local_file),
                facts.virtual_size,
                s.build.disk_size_gb,
                sizing::initial_disk_gb(&s.build, &s.prov),
            ) {
                problems.push(e);
            }
            // The backend unpacks a GCE archive into TMPDIR; the CIDATA disk goes
            // there too.
            let unpacked = if facts.format == "tar.gz" {
                data_bytes
            } else {
                0
            };
            let cidata = file_len(&state.context_archive())
                + opts.provisioner.as_deref().map_or(0, file_len)
                + CIDATA_SLACK;
            if let Err(e) = preflight::check_space(
                &std::env::temp_dir(),
                unpacked + cidata,
                "the build's disks (TMPDIR)",
            ) {
                problems.push(e);
            }
        }
    }
    if let Some((out, _)) = &opts.image.local_file {
        match preflight::check_output(out, &source_files, state.root(), opts.image.overwrite) {
            Ok(()) => {
                let dir = cos_customizer_common::fsutil::parent_dir(out);
                if let Err(e) = preflight::check_space(dir, data_bytes, "the output image") {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(e),
        }
    }
    (problems, source_files)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The image the build makes, named once for every use: `-image-name`, the source's name
/// with `-image-suffix`, or for a local build without either, the output file's name without
/// its image extension.
fn output_image(o: &ImageOptions, s: &BuildState) -> OutputImage {
    let mut labels = if o.inherit_labels {
        s.source.labels()
    } else {
        BTreeMap::new()
    };
    labels.extend(o.labels.clone());
    let name = match (&o.name, &o.local_file) {
        (ImageName::Unnamed, Some((path, _))) => file_image_name(path),
        (name, _) => name.resolve(&s.source.name),
    };
    OutputImage {
        name,
        project: o.project.clone(),
        family: o.family.clone(),
        labels,
        licenses: licenses(&o.licenses),
        description: format!("Derivative of {}.", s.source.url()),
        local_file: o.local_file.clone(),
    }
}

fn file_image_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    [".tar.gz", ".tgz", ".qcow2", ".img", ".raw"]
        .iter()
        .find(|ext| lower.len() > ext.len() && lower.ends_with(*ext))
        .map_or(name.clone(), |ext| {
            name[..name.len() - ext.len()].to_string()
        })
}

/// The original's licenses sanitising: comma lists, empties dropped, API prefix trimmed.
fn licenses(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix(LICENSE_PREFIX).unwrap_or(l).to_string())
        .collect()
}

/// Runs the preloader, and cleans up whether it succeeds, fails or is interrupted. Also says
/// whether the build got as far as creating anything (else it may be run again as recorded).
async fn build(
    req: &Request,
    backend: Arc<dyn Backend>,
    log: &mut dyn FnMut(LogLine),
) -> (Result<Outcome>, bool) {
    // A local output was checked up front (it exists only with -overwrite); a GCE image
    // that exists means the build is done, as the original.
    if req.output.local_file.is_none() {
        let exists = tokio::select! {
            r = backend.image_exists(&req.output) => r,
            s = interrupted() => Err(s),
        };
        match exists {
            Ok(false) => {}
            Ok(true) => {
                log(LogLine::Note(&format!(
                    "Result image {} already exists. Exiting.",
                    req.output.display_name()
                )));
                return (Ok(Outcome::AlreadyExisted(req.output.clone())), true);
            }
            Err(e) => return (Err(e), false),
        }
    }
    let started = std::time::Instant::now();
    for removed in workdir::sweep(&std::env::temp_dir(), preload::WORK_DIR_PREFIX) {
        log(LogLine::Note(&removed.to_string()));
    }
    let preloader = match Preloader::new(backend) {
        Ok(p) => p,
        Err(e) => return (Err(e), false),
    };
    let result = tokio::select! {
        r = preloader.run(req, log) => r,
        s = interrupted() => Err(s),
    };
    for l in preloader.cleanup().await {
        log(LogLine::Note(&format!("warning: {l}")));
    }
    let used = preloader.began_creating();
    let result = match result {
        Ok(()) => {
            log(LogLine::Note(&format!(
                "Image {} created in {}s",
                req.output.display_name(),
                started.elapsed().as_secs()
            )));
            Ok(Outcome::Built(req.output.clone()))
        }
        Err(e) if used => Err(e.context("the image build failed; no output image was made")),
        Err(e) => Err(e),
    };
    (result, used)
}

/// Looks the build `req` up in the cache `o`, waiting while another build of the same key
/// runs; on a hit the cached image is written to `out`. Returns the key's lock, to be held
/// until the built image is stored, and whether it was a hit.
async fn look_up(
    o: &CacheOptions,
    req: &Request,
    source_files: Vec<PathBuf>,
    out: &Path,
    log: &mut dyn FnMut(LogLine),
) -> Result<(Held, bool)> {
    let started = std::time::Instant::now();
    let (o, req_) = (o.clone(), req.clone());
    // Hashing reads the source image: seconds, off the async threads.
    let keyed = tokio::task::spawn_blocking(move || -> Result<_> {
        let (cache, notes) = Cache::open(&o)?;
        let key = cache::key(&req_, &source_files, &o)?;
        Ok((cache, notes, key))
    });
    let (cache, notes, key) = tokio::select! {
        r = keyed => r.context("hashing the build's inputs")??,
        s = interrupted() => return Err(s),
    };
    for n in notes {
        log(LogLine::Note(&n));
    }
    log(LogLine::Note(&format!(
        "Cache: key {key} (the build's inputs hashed in {:.1}s)",
        started.elapsed().as_secs_f64()
    )));
    let mut said = false;
    let held = loop {
        if let Some(held) = cache.try_hold(&key)? {
            break held;
        }
        if !said {
            log(LogLine::Note(
                "Cache: another build of the same inputs is running; waiting for it to end",
            ));
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            s = interrupted() => return Err(s),
        }
    };
    let started = std::time::Instant::now();
    let dest = out.to_path_buf();
    let restored = tokio::task::spawn_blocking(move || -> Result<_> {
        let hit = held.restore(&dest)?;
        Ok((held, hit))
    });
    let (held, hit) = tokio::select! {
        r = restored => r.context("writing the cached image")??,
        s = interrupted() => return Err(s),
    };
    if hit {
        log(LogLine::Note(&format!(
            "Cache hit: key {key}; wrote {} from the cache in {:.1}s, without a build",
            out.display(),
            started.elapsed().as_secs_f64()
        )));
    } else {
        log(LogLine::Note(&format!("Cache miss: key {key}; building")));
    }
    Ok((held, hit))
}

/// Keeps the built image `out` in the cache under the key `held`; a failure only costs the
/// next build its hit, so it is a warning.
async fn store(held: Held, out: &Path, image: &OutputImage, log: &mut dyn FnMut(LogLine)) {
    let key = held.key().clone();
    let path = out.to_path_buf();
    let stored = tokio::task::spawn_blocking(move || held.store(&path)).await;
    let note = match stored.context("storing the image in the cache") {
        Ok(Ok(Stored::Kept { bytes, evicted })) => {
            let mut n = format!(
                "Cache: kept {} as key {key} ({} MiB)",
                image.display_name(),
                bytes >> 20
            );
            if !evicted.is_empty() {
                n += &format!(
                    "; evicted the least recently used {} entries",
                    evicted.len()
                );
            }
            n
        }
        Ok(Ok(Stored::TooLarge { bytes })) => format!(
            "Cache: not kept: the image takes {} MiB, more than -cache-size-gb",
            bytes >> 20
        ),
        Ok(Err(e)) | Err(e) => format!("warning: the image was not kept in the cache: {e:#}"),
    };
    log(LogLine::Note(&note));
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP, so the build's resources are removed before
/// exiting.
async fn interrupted() -> anyhow::Error {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            return anyhow::Error::new(e).context("listening for SIGTERM and SIGHUP")
        }
    };
    let (mut term, mut hup) = (term, hup);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => anyhow::anyhow!("interrupted (Ctrl-C)"),
        _ = term.recv() => anyhow::anyhow!("terminated (SIGTERM)"),
        _ = hup.recv() => anyhow::anyhow!("hung up (SIGHUP)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendInfo, SourceFacts};
    use cos_customizer_common::config::{BuildConfig, InstallGpuArgs, SourceImage};

    /// A backend that reads no source (these builds' sources are GCE images).
    struct Kind(BackendInfo);

    impl BackendType for Kind {
        fn info(&self) -> BackendInfo {
            self.0
        }
        fn inspect_source(&self, _: &SourceImage, _: bool) -> Result<Option<SourceFacts>> {
            Ok(None)
        }
    }

    const QEMU: Kind = Kind(BackendInfo {
        name: "qemu",
        attaches_gpus: false,
        host_from_guest: Some("169.254.169.2"),
        stages_files: false,
    });
    const GCE: Kind = Kind(BackendInfo {
        name: "gce",
        attaches_gpus: true,
        host_from_guest: None,
        stages_files: true,
    });

    fn options() -> FinishOptions {
        FinishOptions {
            timeout: Duration::from_secs(60),
            disk_size_gb: None,
            oem_size: None,
            vm: VmOptions {
                machine_type: "n1-standard-1".into(),
                ..VmOptions::default()
            },
            image: ImageOptions {
                name: ImageName::Suffix("-custom".into()),
                project: "p".into(),
                family: String::new(),
                labels: BTreeMap::from([("a".into(), "given".into())]),
                inherit_labels: true,
                licenses: vec![],
                local_file: None,
                overwrite: false,
            },
            // A static binary stands in for the provisioner, which prepare checks.
            provisioner: Some("/bin/busybox".into()),
            allow_backing_file: false,
            storage_endpoint: None,
            sbom: None,
            cache: None,
        }
    }

    fn started() -> (tempfile::TempDir, StateDir) {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let dir = StateDir::new(home.path(), "w").unwrap();
        let _lock = dir.lock("start-image-build", true).unwrap();
        let source: SourceImage = serde_json::from_str(
            r#"{"name":"cos-1","labels":{"a":"src","b":"src"},"Project":"cos-cloud"}"#,
        )
        .unwrap();
        dir.start(ctx.path(), &source, &BuildConfig::default())
            .unwrap();
        (home, dir)
    }

    #[test]
    fn prepare_applies_flags_and_sizes() {
        let (_home, dir) = started();
        let mut s = dir.load().unwrap();
        s.prov.boot_disk.reclaim_sda3 = true;
        let mut o = options();
        o.disk_size_gb = Some(12);
        o.oem_size = Some("1G".into());
        let (req, refusals) = prepare(&dir, s, &o, &QEMU);
        assert!(refusals.is_empty(), "{refusals:?}");
        assert_eq!(req.build.disk_size_gb, Some(12));
        assert_eq!(req.build.timeout, "1m0s");
        assert_eq!(req.prov.boot_disk.oem_size.as_deref(), Some("1023M"));
        assert!(req.prov.boot_disk.wait_for_disk_resize);
        assert_eq!(
            req.prov.build_contexts["user"],
            "file:///mnt/disks/cidata/user_build_context.tar"
        );
        assert_eq!(req.output.name, "cos-1-custom");
        assert_eq!(req.output.labels["a"], "given");
        assert_eq!(req.output.labels["b"], "src");
        assert_eq!(
            req.output.description,
            "Derivative of projects/cos-cloud/global/images/cos-1."
        );
        assert_eq!(req.context_tar, dir.context_archive());
    }

    #[test]
    fn gpu_steps_need_a_backend_with_gpus_and_a_type() {
        let (_home, dir) = started();
        let mut s = dir.load().unwrap();
        s.add_step(Step::InstallGpu(InstallGpuArgs::default()));
        let (_, r) = prepare(&dir, s.clone(), &options(), &QEMU);
        assert!(r[0].contains("QEMU backend cannot attach"), "{r:?}");
        assert_eq!(r.len(), 1, "{r:?}");
        let (_, r) = prepare(&dir, s.clone(), &options(), &GCE);
        assert!(r[0].contains("give -gpu-type"), "{r:?}");
        assert_eq!(r.len(), 1, "{r:?}");
        let mut o = options();
        o.vm.gpu_type = Some("nvidia-tesla-t4".into());
        let (req, r) = prepare(&dir, s.clone(), &o, &GCE);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(req.build.gpu_type.as_deref(), Some("nvidia-tesla-t4"));
        let (_, r) = prepare(&dir, s, &o, &QEMU);
        assert!(r[0].contains("install-gpu -no-verify"), "{r:?}");
        assert_eq!(r.len(), 1, "{r:?}");
    }

    #[test]
    fn a_preload_without_gpu_needs_none() {
        let (_home, dir) = started();
        let mut s = dir.load().unwrap();
        s.add_step(Step::InstallGpu(InstallGpuArgs {
            no_verify: true,
            ..Default::default()
        }));
        for backend in [&QEMU, &GCE] {
            let (req, r) = prepare(&dir, s.clone(), &options(), backend);
            assert!(r.is_empty(), "{r:?}");
            assert_eq!(req.build.gpu_type, None);
        }
        let mut o = options();
        o.vm.gpu_type = Some("nvidia-tesla-t4".into());
        let (req, r) = prepare(&dir, s.clone(), &o, &GCE);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(req.build.gpu_type.as_deref(), Some("nvidia-tesla-t4"));
        let (_, r) = prepare(&dir, s, &o, &QEMU);
        assert!(r[0].contains("drop -gpu-type"), "{r:?}");
    }

    #[test]
    fn the_vm_reaches_a_loopback_endpoint_through_the_host() {
        let qemu = Some("169.254.169.2");
        for (given, backend, guest) in [
            ("http://127.0.0.1:4443", qemu, "http://169.254.169.2:4443"),
            ("http://localhost:4443/", qemu, "http://169.254.169.2:4443"),
            ("http://[::1]:80/x", qemu, "http://169.254.169.2:80/x"),
            ("http://127.0.0.1", qemu, "http://169.254.169.2"),
            ("https://storage.example", qemu, "https://storage.example"),
            ("http://127.0.0.1:4443", None, "http://127.0.0.1:4443"),
        ] {
            assert_eq!(guest_endpoint(given, backend), guest, "{given}");
        }
        let (_home, dir) = started();
        let mut o = options();
        o.storage_endpoint = Some("http://127.0.0.1:4443".into());
        let (req, _) = prepare(&dir, dir.load().unwrap(), &o, &QEMU);
        assert_eq!(req.prov.storage_endpoint, "http://169.254.169.2:4443");
        let (req, _) = prepare(&dir, dir.load().unwrap(), &options(), &QEMU);
        assert_eq!(req.prov.storage_endpoint, "");
    }

    #[test]
    fn a_deps_dir_needs_a_backend_that_stages_files() {
        let (_home, dir) = started();
        let mut s = dir.load().unwrap();
        let step = |deps: &str| {
            Step::InstallGpu(InstallGpuArgs {
                gcs_deps_prefix: deps.into(),
                ..Default::default()
            })
        };
        s.add_step(step("/home/me/deps"));
        s.add_step(step(""));
        let mut o = options();
        o.vm.gpu_type = Some("nvidia-tesla-t4".into());
        let (_, r) = prepare(&dir, s.clone(), &o, &QEMU);
        assert!(
            r.iter()
                .any(|r| r.contains("-deps-dir=/home/me/deps") && r.contains("nowhere to upload")),
            "{r:?}"
        );
        // GCE stages them as the build starts (the flow's test), in place of the folder.
        let (req, r) = prepare(&dir, s, &o, &GCE);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(req.prov.steps, [step("/home/me/deps"), step("")]);
    }

    #[test]
    fn a_context_too_large_for_cidata_needs_a_backend_that_stages_files() {
        let (_home, dir) = started();
        // Sparse: an archive of zeros is a whole (empty) tar.
        let f = std::fs::File::options()
            .write(true)
            .open(dir.context_archive())
            .unwrap();
        f.set_len(cidata::MAX_FILE + 1).unwrap();
        let (_, r) = prepare(&dir, dir.load().unwrap(), &options(), &QEMU);
        assert!(
            r.iter()
                .any(|r| r.contains("more than the CIDATA disk holds")),
            "{r:?}"
        );
        let (_, r) = prepare(&dir, dir.load().unwrap(), &options(), &GCE);
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn zero_timeout_and_bad_sizes_are_refused() {
        let (_home, dir) = started();
        let mut o = options();
        o.timeout = Duration::ZERO;
        o.oem_size = Some("3072M".into());
        o.disk_size_gb = Some(11);
        let (_, r) = prepare(&dir, dir.load().unwrap(), &o, &QEMU);
        assert!(r[0].contains("-timeout must be longer than 0"), "{r:?}");
        assert!(r[1].contains("-disk-size-gb=13"), "{r:?}");
        o.disk_size_gb = Some(u64::MAX / 2);
        let (_, r) = prepare(&dir, dir.load().unwrap(), &o, &QEMU);
        assert!(r.iter().any(|m| m.contains("too large")), "{r:?}");
    }

    #[test]
    fn a_machine_type_the_backend_cannot_take_is_refused() {
        let (_home, dir) = started();
        let mut o = options();
        o.vm.machine_type = "N1 Standard".into();
        let (_, r) = prepare(&dir, dir.load().unwrap(), &o, &GCE);
        assert!(
            r.len() == 1 && r[0].contains(r#"-machine-type="N1 Standard""#),
            "{r:?}"
        );
        // GCE says itself whether a well-formed name exists.
        o.vm.machine_type = "zones/z/machineTypes/n9-huge-7".into();
        let (_, r) = prepare(&dir, dir.load().unwrap(), &o, &GCE);
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn plan_checks_like_a_build_and_keeps_the_state() {
        let (_home, dir) = started();
        let (text, refusals) = plan(
            &dir,
            dir.load().unwrap(),
            &options(),
            &QEMU,
            vec!["no qemu".into()],
        )
        .unwrap();
        assert!(text.starts_with("Backend: qemu\n"), "{text}");
        assert_eq!(refusals, ["no qemu"]);
        assert!(dir.load().is_ok(), "the state is kept");
    }

    #[test]
    fn a_local_build_names_its_image_after_the_output_file() {
        let (_home, dir) = started();
        let s = dir.load().unwrap();
        let image = |name: ImageName, file: Option<&str>| ImageOptions {
            name,
            local_file: file.map(|f| (PathBuf::from(f), ImageFormat::Raw)),
            ..options().image
        };
        let name = |i: ImageOptions| output_image(&i, &s).name;
        assert_eq!(name(image(ImageName::Name("n".into()), None)), "n");
        assert_eq!(name(image(ImageName::Suffix("-x".into()), None)), "cos-1-x");
        for (file, want) in [
            ("/o/my-cos.img", "my-cos"),
            ("/o/my-cos.QCOW2", "my-cos"),
            ("/o/my-cos.tar.gz", "my-cos"),
            ("/o/my.cos", "my.cos"),
            ("/o/.img", ".img"),
        ] {
            assert_eq!(name(image(ImageName::Unnamed, Some(file))), want, "{file}");
        }
    }

    #[test]
    fn licenses_are_sanitised() {
        let l = licenses(&[
            "https://www.googleapis.com/compute/v1/projects/p/global/licenses/a,".into(),
            "projects/p/global/licenses/b".into(),
        ]);
        assert_eq!(
            l,
            [
                "projects/p/global/licenses/a",
                "projects/p/global/licenses/b"
            ]
        );
    }
}
