//! The preload flow: CIDATA, disks, VM, the serial-port watch, the acknowledgement and
//! the image, in the order of the original's workflow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{Created, LogLine, Preloader, Request, CLEANUP_LABEL, VM_NAME};
use crate::backend::{DiskId, DiskSource, DiskSpec, VmId, VmSpec, VmStatus};
use crate::{cidata, scratch};
use cos_customizer_common::config::Step;
use cos_customizer_common::duration;
use cos_customizer_common::protocol::{
    BUILD_CONTEXT_TAR, FAILURE_MARKER, RELOCATION_END, RELOCATION_FAILED, RELOCATION_START,
    RESIZE_TRIGGER, STATUS_PORT, STATUS_PREFIX, SUCCESS_MARKER, USER_CONTEXT,
};
use cos_customizer_common::sizing::{initial_disk_gb, resize_to_gb};

/// The folder `install-gpu -deps-dir`'s files are staged in, as the original names it.
const GPU_DEPS_FOLDER: &str = "gcs_files";

/// The instance metadata of the build VM, as the original's workflow sets it.
fn vm_metadata(user_data: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("user-data".to_string(), user_data.to_string()),
        ("block-project-ssh-keys".to_string(), "TRUE".to_string()),
        (
            "cos-update-strategy".to_string(),
            "update_disabled".to_string(),
        ),
    ])
}

/// The guest's console, where the kernel and systemd write (GCE's port 1, ttyS0).
const CONSOLE_PORT: u8 = 1;
/// How many lines of each serial port go into a failure's message.
const LOG_TAIL_LINES: usize = 15;
/// The most of one serial port kept after a failure.
const MAX_KEPT_LOG: usize = 64 << 20;
/// An idle watch reads the VM's status once in this many polls of its serial port.
const STATUS_EVERY_POLLS: u32 = 5;
/// How long serial reads may fail in a row before the watch gives up. Daisy rides out
/// minutes of failed reads (an API hiccup, the VM between two boots) and so does the watch,
/// reading the VM's status after each failure so that a VM that stopped ends it at once.
const SERIAL_FAILURE_BUDGET: Duration = Duration::from_secs(300);

/// What to add to an error when serial port 3 shows a relocation at shutdown that never
/// ended: the VM lost power or crashed while it moved the partitions.
fn interrupted_relocation(status: &str) -> Option<String> {
    let start = status.rfind(RELOCATION_START)?;
    let after = &status[start..];
    if after.contains(RELOCATION_END) || after.contains(RELOCATION_FAILED) {
        return None;
    }
    let last = after
        .lines()
        .rev()
        .map(strip_escapes)
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    Some(format!(
        "The VM stopped reporting while it moved the boot disk's partitions at shutdown, and never said the move ended (last: {:?}): a power cut or crash interrupted the relocation. This build's boot disk is deleted and nothing is written to the output: run the build again.",
        last.trim_start_matches(STATUS_PREFIX)
    ))
}

/// The last `n` lines of `text`, without terminal escape sequences and carriage returns.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(strip_escapes)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Drops ANSI escape sequences and control characters.
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // `ESC [ … final` (CSI), or a two-character escape such as `ESC M`.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Writes `files` into a new folder under `dir`, named after the time and this process.
fn keep_logs(dir: &Path, files: &[(&str, &str)]) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = dir.join(format!("build-{secs}-{}", std::process::id()));
    std::fs::create_dir_all(&kept).with_context(|| format!("creating {}", kept.display()))?;
    for (name, text) in files {
        let path = kept.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(kept)
}

impl Preloader {
    /// Builds the image. Does not clean up: call [`Preloader::cleanup`] afterwards.
    pub async fn run(&self, req: &Request, log: &mut dyn FnMut(LogLine)) -> Result<()> {
        let b = &self.backend;
        let timeout_text = duration::format(req.timeout);
        b.prepare_source(&req.source)
            .await
            .context("preparing the source image")?;
        let cidata_image = self.build_cidata(req, log).await?;
        let cidata = self
            .creating()
            .create_disk(&DiskSpec {
                name: "cidata-disk".into(),
                source: DiskSource::RawFile(cidata_image),
                size_gb: None,
                disk_type: req.build.disk_type.clone(),
            })
            .await
            .context("creating the CIDATA disk")?;
        self.record(Created::Disk(cidata.clone()));
        let boot_gb = initial_disk_gb(&req.build, &req.prov);
        let boot = b
            .create_disk(&DiskSpec {
                name: "boot-disk".into(),
                source: DiskSource::Image(req.source.clone()),
                size_gb: Some(boot_gb),
                disk_type: req.build.disk_type.clone(),
            })
            .await
            .context("creating the boot disk from the source image")?;
        self.record(Created::Disk(boot.clone()));
        log(LogLine::Host(&format!(
            "Created boot disk ({boot_gb} GB) from {} and the CIDATA disk",
            req.source.url()
        )));
        let mut disks = vec![boot.clone()];
        if scratch::needed(&req.prov) {
            disks.push(self.create_scratch(req, log).await?);
        }
        disks.push(cidata.clone());
        let vm = b
            .create_vm(&VmSpec {
                name: VM_NAME.into(),
                disks,
                metadata: vm_metadata(&req.user_data),
                labels: BTreeMap::from([(CLEANUP_LABEL.to_string(), String::new())]),
                machine_type: req.build.machine_type.clone(),
                service_account: req.build.service_account.clone(),
                gpu_type: req.build.gpu_type.clone(),
                network: req.build.network.clone(),
                subnet: req.build.subnet.clone(),
                // Three waits of `timeout` each, plus time to boot and shut down.
                max_lifetime: req.timeout * 3 + Duration::from_secs(300),
            })
            .await
            .context("creating the build VM")?;
        self.record(Created::Vm(vm.clone()));
        log(LogLine::Host(&format!(
            "Started {VM_NAME}; waiting for the provisioner (timeout {timeout_text} per wait)"
        )));
        match self.follow(req, &vm, &boot, log).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.with_serial_logs(e, &vm, &req.log_dir).await),
        }
    }

    /// From a running VM to the image: the serial-port watch, the acknowledgement, the
    /// VM's stop and the image.
    async fn follow(
        &self,
        req: &Request,
        vm: &VmId,
        boot: &DiskId,
        log: &mut dyn FnMut(LogLine),
    ) -> Result<()> {
        let b = &self.backend;
        let resize_to = resize_to_gb(&req.build, &req.prov);
        self.watch(vm, boot, resize_to, req.timeout, log).await?;

        b.acknowledge(vm)
            .await
            .context("acknowledging the build (metadata DaisyEnd)")?;
        log(LogLine::Host("Build succeeded; waiting for the VM to stop"));
        self.wait_stopped(vm, req.timeout, log).await?;

        log(LogLine::Host(&format!(
            "Creating image {}",
            req.output.display_name()
        )));
        b.create_image(boot, &req.output)
            .await
            .with_context(|| format!("creating image {}", req.output.display_name()))?;
        Ok(())
    }

    /// `err` with the last lines of the VM's serial console and of serial port 3, and the
    /// path of the whole logs, kept in a new folder under `log_dir` (the VM and its own
    /// logs are about to be deleted).
    async fn with_serial_logs(
        &self,
        err: anyhow::Error,
        vm: &VmId,
        log_dir: &Path,
    ) -> anyhow::Error {
        let console = self.read_serial(vm, CONSOLE_PORT).await;
        let status = self.read_serial(vm, STATUS_PORT).await;
        let mut msg = format!("{err:#}");
        if let Some(hint) = interrupted_relocation(&status) {
            msg += &format!("\n{hint}");
        }
        for (what, text) in [("the serial console", &console), ("serial port 3", &status)] {
            let tail = last_lines(text, LOG_TAIL_LINES);
            if !tail.is_empty() {
                msg += &format!("\nLast lines of {what}:\n{tail}");
            }
        }
        let kept = keep_logs(
            log_dir,
            &[
                ("serial-console.log", &console),
                ("serial-port-3.log", &status),
            ],
        );
        match kept {
            Ok(dir) => msg += &format!("\nThe serial logs are kept in {}", dir.display()),
            Err(e) => msg += &format!("\n(the serial logs could not be kept: {e:#})"),
        }
        anyhow!(msg)
    }

    /// All of a serial port's output so far (best effort: what could be read).
    async fn read_serial(&self, vm: &VmId, port: u8) -> String {
        let mut text = String::new();
        let mut offset = 0;
        while text.len() < MAX_KEPT_LOG {
            match self.backend.serial_output(vm, port, offset).await {
                Ok(chunk) if chunk.next > offset => {
                    text.push_str(&chunk.contents);
                    offset = chunk.next;
                }
                _ => break,
            }
        }
        text
    }

    /// Writes the CIDATA image (provisioner, config, cloud-config, build context) into
    /// the preloader's folder.
    async fn build_cidata(
        &self,
        req: &Request,
        log: &mut dyn FnMut(LogLine),
    ) -> Result<std::path::PathBuf> {
        let started = Instant::now();
        let mut prov = req.prov.clone();
        let context_len = std::fs::metadata(&req.context_tar)
            .with_context(|| format!("reading the build context {}", req.context_tar.display()))?
            .len();
        let context = if context_len <= self.cidata_file_limit {
            Some(req.context_tar.as_path())
        } else {
            let url = self
                .creating()
                .stage_file(&req.context_tar, BUILD_CONTEXT_TAR)
                .await
                .context("staging the build context for the VM")?
                .with_context(|| {
                    format!(
                        "the build context {} is {context_len} bytes, more than the CIDATA disk \
                         holds ({} bytes) and this backend has nowhere else to put it: leave \
                         large files out of start-image-build's -build-context and fetch them \
                         from a script instead, or build with -backend=gce",
                        req.context_tar.display(),
                        self.cidata_file_limit
                    )
                })?;
            log(LogLine::Host(&format!(
                "The build context ({context_len} bytes) is too large for the CIDATA disk; the VM fetches it from {url}"
            )));
            prov.build_contexts.insert(USER_CONTEXT.to_string(), url);
            None
        };
        if !req.build.gcs_files.is_empty() {
            let url = self.stage_gpu_deps(&req.build.gcs_files, log).await?;
            for step in &mut prov.steps {
                if let Step::InstallGpu(gpu) = step {
                    if !gpu.gcs_deps_prefix.is_empty() {
                        gpu.gcs_deps_prefix = url.clone();
                    }
                }
            }
        }
        let files = cidata::cidata_files(
            &prov,
            &req.user_data,
            &req.provisioner,
            context,
            &format!("cos-customizer-{}", std::process::id()),
        )?;
        let image = self.work_dir.path().join("cidata.img");
        cidata::build_cidata(&image, &files).context("building the CIDATA disk")?;
        log(LogLine::Note(&format!(
            "Built the CIDATA disk in {:.2}s; provisioner config: {}",
            started.elapsed().as_secs_f64(),
            serde_json::to_string(&prov).context("encoding the provisioner config")?
        )));
        Ok(image)
    }

    /// Stages `install-gpu -deps-dir`'s files as one folder the VM fetches them from, as a
    /// build context too large for the CIDATA disk; returns the folder's URL, which replaces
    /// the `-deps-dir` recorded in the steps.
    async fn stage_gpu_deps(
        &self,
        files: &[String],
        log: &mut dyn FnMut(LogLine),
    ) -> Result<String> {
        let mut folder = None;
        for file in files {
            let path = Path::new(file);
            let name = path
                .file_name()
                .with_context(|| format!("install-gpu dependency {file} names no file"))?
                .to_string_lossy();
            let url = self
                .creating()
                .stage_file(path, &format!("{GPU_DEPS_FOLDER}/{name}"))
                .await
                .with_context(|| format!("staging install-gpu dependency {file}"))?
                .with_context(|| {
                    format!(
                        "install-gpu -deps-dir files need a place the build VM fetches them \
                         from, which the {} backend lacks: build on GCE (-backend=gce)",
                        self.backend.info().name.to_uppercase()
                    )
                })?;
            let dir = url.strip_suffix(&format!("/{name}")).with_context(|| {
                format!("the backend staged {file} as {url}, not under its name")
            })?;
            folder.get_or_insert_with(|| dir.to_string());
        }
        let folder = folder.context("no install-gpu dependency to stage")?;
        log(LogLine::Host(&format!(
            "Staged {} install-gpu dependencies in {folder}",
            files.len()
        )));
        Ok(folder)
    }

    /// The SCRATCH disk of a GPU build, attached between the boot and CIDATA disks as
    /// upstream does.
    async fn create_scratch(&self, req: &Request, log: &mut dyn FnMut(LogLine)) -> Result<DiskId> {
        let image = self.work_dir.path().join("scratch.img");
        scratch::build(&image).await?;
        let disk = self
            .backend
            .create_disk(&DiskSpec {
                name: "scratch-disk".into(),
                source: DiskSource::RawFile(image),
                size_gb: Some(scratch::DISK_GB),
                disk_type: req.build.disk_type.clone(),
            })
            .await
            .context("creating the SCRATCH disk")?;
        self.record(Created::Disk(disk.clone()));
        log(LogLine::Host(&format!(
            "Created the SCRATCH disk ({} GB) for the GPU driver installer",
            scratch::DISK_GB
        )));
        Ok(disk)
    }

    /// Follows serial port 3 until success, failure, a stopped VM or the timeout.
    ///
    /// An idle poll reads the port once; the VM's status is read only every
    /// [`STATUS_EVERY_POLLS`] polls and after a failed read, which keeps a cloud backend's
    /// calls per minute low while a marker is still seen within one poll interval.
    async fn watch(
        &self,
        vm: &VmId,
        boot: &DiskId,
        mut resize_to: Option<u64>,
        timeout: Duration,
        log: &mut dyn FnMut(LogLine),
    ) -> Result<()> {
        let interval = self.backend.poll_interval();
        let start = Instant::now();
        let mut offset = 0;
        let mut partial = String::new();
        let mut last_report = Instant::now();
        let mut polls_since_status = 0;
        let mut failing_since: Option<(Instant, u32)> = None;
        loop {
            let mut got_output = false;
            let mut check_status = polls_since_status + 1 >= STATUS_EVERY_POLLS;
            match self.backend.serial_output(vm, STATUS_PORT, offset).await {
                Ok(chunk) => {
                    failing_since = None;
                    if chunk.start > offset {
                        log(LogLine::Note(&format!(
                            "{} bytes of serial port 3 output were lost before they could be read",
                            chunk.start - offset
                        )));
                        // The rest of the cut line is gone with them.
                        partial.clear();
                    }
                    offset = chunk.next;
                    got_output = !chunk.contents.is_empty();
                    partial.push_str(&chunk.contents);
                }
                Err(e) => {
                    let (since, reads) = failing_since.get_or_insert((Instant::now(), 0));
                    *reads += 1;
                    if since.elapsed() >= SERIAL_FAILURE_BUDGET {
                        return Err(e.context(format!(
                            "reading serial port 3 of the build VM failed {reads} times in a row \
                             over {}s",
                            since.elapsed().as_secs()
                        )));
                    }
                    // A VM that stopped has no serial output to read: the status says which.
                    check_status = true;
                }
            }
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if line.contains(STATUS_PREFIX.trim_end()) {
                    log(LogLine::Guest(line));
                    last_report = Instant::now();
                }
                if line.contains(FAILURE_MARKER) {
                    bail!("the build failed in the VM: {line}");
                }
                if line.contains(SUCCESS_MARKER) {
                    log(LogLine::Guest(line));
                    return Ok(());
                }
                if line.contains(RESIZE_TRIGGER) {
                    if let Some(gb) = resize_to.take() {
                        log(LogLine::Host(&format!("Resizing the boot disk to {gb} GB")));
                        self.backend
                            .resize_disk(boot, gb)
                            .await
                            .with_context(|| format!("resizing the boot disk to {gb} GB"))?;
                    }
                }
            }
            if check_status {
                polls_since_status = 0;
                match self.backend.vm_status(vm).await? {
                    VmStatus::Running => {}
                    VmStatus::Unrecognized(s) => self.note_unrecognized(s, log),
                    VmStatus::Stopped => bail!(
                        "the build VM stopped before reporting success or failure on serial port 3"
                    ),
                    VmStatus::Failed(why) => bail!("the build VM failed: {why}"),
                }
            } else {
                polls_since_status += 1;
            }
            if start.elapsed() > timeout {
                bail!(
                    "step \"wait-preload-finished\" did not complete within the specified timeout of {}",
                    duration::format(timeout)
                );
            }
            if last_report.elapsed() > Duration::from_secs(60) {
                log(LogLine::Host(&format!(
                    "Still waiting for the build VM ({}s elapsed, timeout {})",
                    start.elapsed().as_secs(),
                    duration::format(timeout)
                )));
                last_report = Instant::now();
            }
            if !got_output {
                tokio::time::sleep(interval).await;
            }
        }
    }

    async fn wait_stopped(
        &self,
        vm: &VmId,
        timeout: Duration,
        log: &mut dyn FnMut(LogLine),
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.backend.vm_status(vm).await? {
                VmStatus::Stopped => return Ok(()),
                VmStatus::Failed(why) => bail!("the build VM failed while shutting down: {why}"),
                VmStatus::Running => {}
                VmStatus::Unrecognized(s) => self.note_unrecognized(s, log),
            }
            if start.elapsed() > timeout {
                bail!(
                    "step \"wait-vm-shutdown\" did not complete within the specified timeout of {}",
                    duration::format(timeout)
                );
            }
            tokio::time::sleep(self.backend.poll_interval()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_relocation_that_never_ended() {
        let cut = "BuildStatus: Reboot is required to continue provisioning\n\
            BuildStatus: Relocating partitions at shutdown (then reboot)\n\
            BuildStatus: Copying the blocks that land on old blocks: 3.0 MiB in 2 pieces\n";
        let hint = interrupted_relocation(cut).unwrap();
        assert!(
            hint.contains("interrupted the relocation")
                && hint.contains(
                    "\"Copying the blocks that land on old blocks: 3.0 MiB in 2 pieces\""
                ),
            "{hint}"
        );
        let ended = format!("{cut}BuildStatus: Relocation complete\n");
        assert_eq!(interrupted_relocation(&ended), None);
        let failed = format!("{cut}BuildStatus: Relocation failed: no room\n");
        assert_eq!(interrupted_relocation(&failed), None);
        assert_eq!(interrupted_relocation("BuildStatus: step 1\n"), None);
        // A later relocation that was cut counts, not an earlier one that ended.
        let again =
            format!("{ended}BuildStatus: Relocating partitions at shutdown (then reboot)\n");
        assert!(interrupted_relocation(&again).is_some());
    }
    use std::sync::{Arc, Mutex};

    use super::super::sample_request;
    use crate::backend::{
        Backend, BackendInfo, BackendType, OutputImage, SerialChunk, SourceFacts,
    };
    use async_trait::async_trait;
    use cos_customizer_common::config::{InstallGpuArgs, SourceImage, Step};

    /// Records every call and plays a scripted serial log.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        serial: Mutex<String>,
        /// Lines appended once the boot disk has grown (the provisioner's view).
        after_resize: String,
        stops_after_ack: bool,
        acked: Mutex<bool>,
        /// Port 3 output before this offset is no longer held, as GCE drops old output.
        lost_before: usize,
        /// Where `stage_file` puts a file; `None`: the backend cannot stage.
        stages_to: Option<String>,
        /// How many reads of port 3 fail before the port answers again.
        failing_reads: Mutex<u32>,
        /// Statuses `vm_status` gives, one a call, before the usual answer.
        statuses: Mutex<std::collections::VecDeque<VmStatus>>,
    }

    impl Fake {
        fn call(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl BackendType for Fake {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                name: "fake",
                attaches_gpus: false,
                host_from_guest: None,
                stages_files: false,
            }
        }
        fn inspect_source(&self, _: &SourceImage, _: bool) -> Result<Option<SourceFacts>> {
            Ok(None)
        }
    }

    #[async_trait]
    impl Backend for Fake {
        async fn image_exists(&self, _: &OutputImage) -> Result<bool> {
            Ok(false)
        }
        async fn create_disk(&self, s: &DiskSpec) -> Result<DiskId> {
            self.call(format!("create_disk {} {:?}", s.name, s.size_gb));
            Ok(DiskId(s.name.clone()))
        }
        async fn create_vm(&self, s: &VmSpec) -> Result<VmId> {
            self.call(format!("create_vm {} {:?}", s.name, s.disks));
            Ok(VmId(s.name.clone()))
        }
        async fn serial_output(&self, _: &VmId, port: u8, offset: u64) -> Result<SerialChunk> {
            if port == 3 {
                let mut failing = self.failing_reads.lock().unwrap();
                if *failing > 0 {
                    *failing -= 1;
                    bail!("HTTP 503 backendError");
                }
            }
            let console = "[\x1b[0;32m  OK  \x1b[0m] Reached target Multi-User System.\r\n";
            let s = match port {
                1 => console.to_string(),
                3 => self.serial.lock().unwrap().clone(),
                other => panic!("port {other}"),
            };
            let from = if port == 3 {
                (offset as usize).max(self.lost_before)
            } else {
                offset as usize
            };
            // Hand out a few bytes at a time to exercise partial lines.
            let end = (from + 7).min(s.len());
            Ok(SerialChunk {
                contents: s[from..end].to_string(),
                start: from as u64,
                next: end as u64,
            })
        }
        async fn resize_disk(&self, d: &DiskId, gb: u64) -> Result<()> {
            self.call(format!("resize_disk {d} {gb}"));
            self.serial.lock().unwrap().push_str(&self.after_resize);
            Ok(())
        }
        async fn set_metadata(&self, _: &VmId, k: &str, v: &str) -> Result<()> {
            self.call(format!("set_metadata {k}={v}"));
            *self.acked.lock().unwrap() = true;
            Ok(())
        }
        async fn vm_status(&self, _: &VmId) -> Result<VmStatus> {
            if let Some(status) = self.statuses.lock().unwrap().pop_front() {
                return Ok(status);
            }
            Ok(if self.stops_after_ack && *self.acked.lock().unwrap() {
                VmStatus::Stopped
            } else {
                VmStatus::Running
            })
        }
        async fn create_image(&self, d: &DiskId, o: &OutputImage) -> Result<()> {
            self.call(format!("create_image {d} {}", o.name));
            Ok(())
        }
        async fn delete_vm(&self, vm: &VmId) -> Result<()> {
            self.call(format!("delete_vm {vm}"));
            Ok(())
        }
        async fn delete_disk(&self, d: &DiskId) -> Result<()> {
            self.call(format!("delete_disk {d}"));
            Ok(())
        }
        async fn stage_file(&self, f: &Path, name: &str) -> Result<Option<String>> {
            self.call(format!("stage_file {} {name}", f.display()));
            Ok(self.stages_to.as_ref().map(|url| format!("{url}/{name}")))
        }
    }

    async fn run(fake: Arc<Fake>, req: &Request) -> (Result<()>, Vec<String>, Vec<String>) {
        let p = Preloader::new(fake.clone()).unwrap();
        let mut lines = Vec::new();
        let r = p.run(req, &mut |l| lines.push(l.text().to_string())).await;
        assert!(p.cleanup().await.is_empty());
        let work = p.work_dir.path().to_path_buf();
        assert!(work.join("cidata.img").is_file(), "CIDATA built");
        drop(p);
        assert!(!work.exists(), "the CIDATA folder goes with the preloader");
        (r, lines, fake.calls())
    }

    #[tokio::test]
    async fn success_streams_status_acks_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            ..Default::default()
        });
        *fake.serial.lock().unwrap() =
            "noise\nBuildStatus: hello\nBuildStatus: world\nBuildSucceeded: done\n".into();
        let (r, lines, calls) =
            run(fake, &sample_request(dir.path(), Duration::from_secs(30))).await;
        r.unwrap();
        assert!(
            lines.contains(&"BuildStatus: hello".to_string()),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l == "noise"));
        assert_eq!(
            calls,
            [
                "create_disk cidata-disk None",
                "create_disk boot-disk Some(10)",
                "create_vm preload-vm [DiskId(\"boot-disk\"), DiskId(\"cidata-disk\")]",
                "set_metadata DaisyEnd=ack",
                "create_image boot-disk out",
                "delete_vm preload-vm",
                "delete_disk boot-disk",
                "delete_disk cidata-disk",
            ]
        );
    }

    #[tokio::test]
    async fn serial_reads_that_fail_for_a_while_are_ridden_out() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            failing_reads: Mutex::new(6),
            ..Default::default()
        });
        *fake.serial.lock().unwrap() = "BuildSucceeded: done\n".into();
        let (r, _, calls) = run(fake, &sample_request(dir.path(), Duration::from_secs(30))).await;
        r.unwrap();
        assert!(calls.contains(&"create_image boot-disk out".to_string()));
    }

    #[tokio::test]
    async fn a_failed_read_of_a_stopped_vm_ends_the_watch_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            failing_reads: Mutex::new(u32::MAX),
            statuses: Mutex::new([VmStatus::Stopped].into()),
            ..Default::default()
        });
        let started = Instant::now();
        let (r, _, _) = run(fake, &sample_request(dir.path(), Duration::from_secs(30))).await;
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("stopped before reporting"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn statuses_this_version_does_not_know_are_waited_out_and_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            ..Default::default()
        });
        let odd = || VmStatus::Unrecognized("SOMETHING_NEW".into());
        *fake.statuses.lock().unwrap() = [odd(), odd(), odd()].into();
        *fake.serial.lock().unwrap() = format!("{}BuildSucceeded: done\n", "x\n".repeat(40));
        let (r, lines, _) = run(fake, &sample_request(dir.path(), Duration::from_secs(30))).await;
        r.unwrap();
        let notes: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("SOMETHING_NEW"))
            .collect();
        assert_eq!(notes.len(), 1, "{lines:?}");
    }

    #[tokio::test]
    async fn a_gpu_build_gets_a_scratch_disk_between_boot_and_cidata() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            ..Default::default()
        });
        *fake.serial.lock().unwrap() = "BuildSucceeded: done\n".into();
        let mut req = sample_request(dir.path(), Duration::from_secs(30));
        req.prov
            .steps
            .push(Step::InstallGpu(InstallGpuArgs::default()));
        let (r, _, calls) = run(fake, &req).await;
        r.unwrap();
        assert_eq!(
            calls[..4],
            [
                "create_disk cidata-disk None",
                "create_disk boot-disk Some(10)",
                "create_disk scratch-disk Some(10)",
                "create_vm preload-vm [DiskId(\"boot-disk\"), DiskId(\"scratch-disk\"), DiskId(\"cidata-disk\")]",
            ]
        );
        assert!(
            calls.contains(&"delete_disk scratch-disk".to_string()),
            "{calls:?}"
        );
    }

    /// The provisioner config the CIDATA disk got, as the log notes it.
    fn provisioner_config(lines: &[String]) -> serde_json::Value {
        let config = lines
            .iter()
            .find_map(|l| l.split_once("provisioner config: ").map(|(_, c)| c))
            .unwrap_or_else(|| panic!("{lines:?}"));
        serde_json::from_str(config).unwrap()
    }

    #[tokio::test]
    async fn a_context_too_large_for_cidata_is_staged_by_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            stages_to: Some("gs://b/w".into()),
            ..Default::default()
        });
        *fake.serial.lock().unwrap() = "BuildSucceeded: done\n".into();
        let req = sample_request(dir.path(), Duration::from_secs(30));
        std::fs::write(&req.context_tar, [0u8; 2048]).unwrap();
        let p = Preloader::new(fake.clone())
            .unwrap()
            .with_cidata_file_limit(1024);
        let mut lines = Vec::new();
        p.run(&req, &mut |l| lines.push(l.text().to_string()))
            .await
            .unwrap();
        assert!(p.cleanup().await.is_empty());
        let calls = fake.calls();
        assert_eq!(
            calls[0],
            format!(
                "stage_file {} {BUILD_CONTEXT_TAR}",
                req.context_tar.display()
            )
        );
        let config = provisioner_config(&lines);
        assert_eq!(
            config["BuildContexts"]["user"],
            "gs://b/w/user_build_context.tar"
        );
    }

    #[tokio::test]
    async fn install_gpu_deps_are_staged_and_replace_the_recorded_folder() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            stages_to: Some("gs://b/w/cos-customizer/id".into()),
            ..Default::default()
        });
        *fake.serial.lock().unwrap() = "BuildSucceeded: done\n".into();
        let mut req = sample_request(dir.path(), Duration::from_secs(30));
        let step = |deps: &str| {
            Step::InstallGpu(InstallGpuArgs {
                gcs_deps_prefix: deps.into(),
                ..Default::default()
            })
        };
        req.prov.steps = vec![step("/home/me/deps"), step("")];
        let files: Vec<String> = ["driver.run", "toolchain.tar.xz"]
            .iter()
            .map(|f| {
                let path = dir.path().join(f);
                std::fs::write(&path, f).unwrap();
                path.to_string_lossy().into_owned()
            })
            .collect();
        req.build.gcs_files = files.clone();
        let p = Preloader::new(fake.clone()).unwrap();
        let mut lines = Vec::new();
        p.run(&req, &mut |l| lines.push(l.text().to_string()))
            .await
            .unwrap();
        assert!(p.cleanup().await.is_empty());
        let calls = fake.calls();
        assert_eq!(
            calls[..2],
            [
                format!("stage_file {} gcs_files/driver.run", files[0]),
                format!("stage_file {} gcs_files/toolchain.tar.xz", files[1]),
            ]
        );
        let config = provisioner_config(&lines);
        let prefixes: Vec<&str> = config["Steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Args"]["GCSDepsPrefix"].as_str().unwrap())
            .collect();
        assert_eq!(prefixes, ["gs://b/w/cos-customizer/id/gcs_files", ""]);

        // A backend with nowhere to stage them says so, before any disk exists.
        let fake = Arc::new(Fake::default());
        let p = Preloader::new(fake.clone()).unwrap();
        let e = format!("{:#}", p.run(&req, &mut |_| {}).await.unwrap_err());
        assert!(e.contains("-deps-dir") && e.contains("-backend=gce"), "{e}");
        assert!(fake.calls().iter().all(|c| c.starts_with("stage_file")));
    }

    #[tokio::test]
    async fn a_context_too_large_for_cidata_and_the_backend_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let req = sample_request(dir.path(), Duration::from_secs(30));
        std::fs::write(&req.context_tar, [0u8; 2048]).unwrap();
        let p = Preloader::new(fake.clone())
            .unwrap()
            .with_cidata_file_limit(1024);
        let e = p.run(&req, &mut |_| {}).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&req.context_tar.display().to_string()) && msg.contains("2048 bytes"),
            "{msg}"
        );
        assert!(
            !fake.calls().iter().any(|c| c.starts_with("create_")),
            "{:?}",
            fake.calls()
        );
    }

    #[tokio::test]
    async fn resize_on_trigger_line() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            after_resize: "BuildSucceeded: ok\n".into(),
            ..Default::default()
        });
        *fake.serial.lock().unwrap() =
            "BuildStatus: WaitForDiskResize is set; waiting for the boot disk size to change. Timeout is 3 minutes\n".into();
        let mut req = sample_request(dir.path(), Duration::from_secs(30));
        req.build.disk_size_gb = Some(12);
        req.prov.boot_disk.reclaim_sda3 = true;
        let (r, _, calls) = run(fake, &req).await;
        r.unwrap();
        assert!(calls.contains(&"create_disk boot-disk Some(10)".to_string()));
        assert!(
            calls.contains(&"resize_disk boot-disk 12".to_string()),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn lost_output_is_reported_and_its_cut_line_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let lost = "BuildStatus: first\nBuildFa";
        let fake = Arc::new(Fake {
            stops_after_ack: true,
            lost_before: lost.len(),
            ..Default::default()
        });
        *fake.serial.lock().unwrap() = format!("{lost}iled: gone\nBuildSucceeded: ok\n");
        let (r, lines, _) = run(fake, &sample_request(dir.path(), Duration::from_secs(30))).await;
        r.unwrap();
        let note = format!(
            "{} bytes of serial port 3 output were lost before they could be read",
            lost.len()
        );
        assert!(lines.contains(&note), "{lines:?}");
        assert!(
            lines.contains(&"BuildSucceeded: ok".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\r\x1b[K\x1bM[\x1b[0;1;31m***\x1b[0m] Job running\t(4s)"),
            "[***] Job running\t(4s)"
        );
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b\nc");
    }

    #[tokio::test]
    async fn failure_makes_no_image_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        *fake.serial.lock().unwrap() =
            "BuildStatus: error in step 1 (RunScript)\nBuildFailed: exiting due to errors\n".into();
        let req = sample_request(dir.path(), Duration::from_secs(30));
        let (r, _, calls) = run(fake, &req).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("BuildFailed: exiting due to errors"), "{e}");
        assert!(
            e.contains(
                "Last lines of the serial console:\n[  OK  ] Reached target Multi-User System."
            ),
            "{e}"
        );
        assert!(
            e.contains("Last lines of serial port 3:\nBuildStatus: error in step 1 (RunScript)"),
            "{e}"
        );
        let kept = e.rsplit("The serial logs are kept in ").next().unwrap();
        assert!(kept.starts_with(req.log_dir.to_str().unwrap()), "{e}");
        let status = std::fs::read_to_string(Path::new(kept).join("serial-port-3.log")).unwrap();
        assert!(
            status.ends_with("BuildFailed: exiting due to errors\n"),
            "{status}"
        );
        assert!(!calls
            .iter()
            .any(|c| c.starts_with("create_image") || c.starts_with("set_metadata")));
        assert!(calls.ends_with(&[
            "delete_vm preload-vm".to_string(),
            "delete_disk boot-disk".to_string(),
            "delete_disk cidata-disk".to_string()
        ]));
    }

    #[tokio::test]
    async fn timeout_uses_the_original_wording() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        *fake.serial.lock().unwrap() = "BuildStatus: sleeping\n".into();
        let (r, _, calls) = run(
            fake,
            &sample_request(dir.path(), Duration::from_millis(600)),
        )
        .await;
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("did not complete within the specified timeout"),
            "{e}"
        );
        assert!(calls.contains(&"delete_vm preload-vm".to_string()));
    }
}
