//! QEMU backend: builds COS images on this machine.
//!
//! Each backend owns a work dir (removed when it is dropped, and by a later backend if
//! this process dies first) holding qcow2 overlays on top of the source images, per-VM
//! serial logs, QMP sockets, OVMF variable stores and QEMU logs. QEMU and every tool
//! run through `setpriv --pdeathsig KILL`, so none outlives this process. Every VM gets
//! its own metadata server on 127.0.0.1, which the guest reaches at 169.254.169.254
//! through QEMU's `guestfwd` and [`proxy_stdio`].
//!
//! GCE-only parts of a spec are ignored: labels, service account, network and subnet.

mod accel;
mod args;
#[cfg(test)]
mod backend_tests;
mod disk;
mod disk_size;
mod export;
mod host;
mod inspect;
mod machine;
mod metadata_server;
mod paused;
mod proxy;
mod qmp;
mod source_stamp;
mod vm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use cos_customizer_common::config::SourceImage;
use cos_customizer_common::protocol::{ACK_METADATA_KEY, ACK_METADATA_VALUE};
use cos_customizer_core::backend::{
    Backend, BackendInfo, BackendType, DiskId, DiskSource, DiskSpec, ImageFormat, OutputImage,
    SerialChunk, SourceFacts, VmId, VmSpec, VmStatus,
};
use cos_customizer_core::workdir;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

pub use accel::{host_has_kvm, Accel};
pub use args::DiskBus;
pub use host::check_host;
pub use proxy::{proxy, proxy_stdio};

use metadata_server::MetadataServer;
use paused::Drive;
use source_stamp::SourceStamp;
use vm::{VmProcess, Watch};

/// The most serial output one call returns.
const SERIAL_CHUNK: u64 = 1 << 20;
/// Unix socket paths longer than this do not fit `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 107;
/// The start of every work dir's name; [`QemuBackend::new`] sweeps stale ones.
const WORK_DIR_PREFIX: &str = "cos-customizer-qemu-";
/// How long [`QemuBackend::acknowledge`] waits to learn that a VM whose power button
/// could not be pressed has stopped by itself.
const STOPPED_GRACE: Duration = Duration::from_secs(1);

/// The file name of a VM's QMP socket in the work dir.
fn qmp_socket_name(vm: &str) -> String {
    format!("{vm}.qmp")
}

/// How to run VMs.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuOptions {
    /// Where the per-build work dir is created.
    pub parent_dir: PathBuf,
    /// The accelerator VMs run under.
    pub accel: Accel,
    /// vCPUs; `None` follows the machine type (see `machine.rs`).
    pub cpus: Option<u32>,
    /// Memory in MiB; `None` follows the machine type.
    pub memory_mib: Option<u64>,
    /// UEFI firmware code (read-only).
    pub ovmf_code: PathBuf,
    /// UEFI variable store template; each VM gets a writable copy.
    pub ovmf_vars: PathBuf,
    /// The QEMU program (`qemu-system-x86_64`).
    pub qemu_system: String,
    /// Program and arguments QEMU runs per guest connection to the metadata address;
    /// `127.0.0.1:PORT` is appended. Empty: the guest gets no metadata server.
    pub metadata_proxy: Vec<String>,
    /// How disks are attached: virtio-scsi as on GCE by default.
    pub disk_bus: DiskBus,
    /// No network beyond the metadata server: a build whose scripts cannot download.
    pub hermetic: bool,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            parent_dir: std::env::temp_dir(),
            accel: Accel::Auto,
            cpus: None,
            memory_mib: None,
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            qemu_system: "qemu-system-x86_64".into(),
            metadata_proxy: Vec::new(),
            disk_bus: DiskBus::default(),
            hermetic: false,
        }
    }
}

struct Disk {
    /// The name it was created with (`boot-disk`), for messages.
    name: String,
    overlay: PathBuf,
    /// Where this disk's own `tar.gz` source was unpacked (not one [`Backend::prepare_source`]
    /// unpacked); the overlay's backing file lives there.
    unpacked: Option<PathBuf>,
    /// The caller's file the overlay reads from, as it was; `None` when it was unpacked.
    backing: Option<SourceStamp>,
}

struct Vm {
    disks: Vec<DiskId>,
    qmp: PathBuf,
    /// Serial port files, 1-based as GCE counts.
    serial: [PathBuf; 4],
    /// Everything of this VM's in the work dir, removed with it.
    files: Vec<PathBuf>,
    metadata: MetadataServer,
    process: VmProcess,
}

#[derive(Default)]
struct State {
    disks: HashMap<DiskId, Disk>,
    vms: HashMap<VmId, Vm>,
    /// A `tar.gz` source unpacked by [`Backend::prepare_source`]: the archive as given
    /// (resolved) and its `disk.raw`, kept until the work dir goes.
    prepared: Option<(PathBuf, PathBuf)>,
}

impl State {
    fn vm(&self, vm: &VmId) -> Result<&Vm> {
        self.vms.get(vm).ok_or_else(|| anyhow!("unknown VM {vm}"))
    }

    /// The running VM that has `disk` attached, and its drive index there.
    fn running_vm_with(&self, disk: &DiskId) -> Option<(&VmId, &Vm, usize)> {
        self.vms.iter().find_map(|(id, vm)| {
            let i = vm.disks.iter().position(|d| d == disk)?;
            vm.process.is_running().then_some((id, vm, i))
        })
    }
}

/// The QEMU backend: disks are qcow2 overlays in a work dir, VMs are QEMU processes.
pub struct QemuBackend {
    opts: QemuOptions,
    work_dir: PathBuf,
    /// `tcg` or `kvm`, decided once.
    accel: &'static str,
    host_cpus: u32,
    state: Mutex<State>,
}

impl QemuBackend {
    /// Checks the host ([`check_host`]), removes the work dirs of builds whose process
    /// died (saying so on stderr), creates the work dir and decides the accelerator.
    pub fn new(opts: QemuOptions) -> Result<Self> {
        check_host(&opts)?;
        let parent = std::fs::canonicalize(&opts.parent_dir)
            .with_context(|| format!("resolving work dir parent {}", opts.parent_dir.display()))?;
        for removed in workdir::sweep(&parent, WORK_DIR_PREFIX) {
            eprintln!("{removed}");
        }
        // Removed by Drop, after the VMs are gone, rather than by TempDir.
        let work_dir = workdir::create_in(&parent, WORK_DIR_PREFIX)?.keep();
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Ok(QemuBackend {
            accel: opts.accel.resolve(),
            opts,
            work_dir,
            host_cpus,
            state: Mutex::new(State::default()),
        })
    }

    /// The per-build folder holding disks, logs and sockets.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The accelerator VMs run under (`tcg` or `kvm`).
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, file: &str) -> String {
        self.work_dir.join(file).to_string_lossy().into_owned()
    }

    /// Whether the VM still runs `grace` from now (the watcher notices an exit within
    /// its poll interval).
    async fn still_running_after(&self, vm: &VmId, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        loop {
            let running = self
                .state()
                .vms
                .get(vm)
                .is_some_and(|v| v.process.is_running());
            if !running || Instant::now() >= until {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn disk_path(&self, disk: &DiskId) -> Result<PathBuf> {
        self.state()
            .disks
            .get(disk)
            .map(|d| d.overlay.clone())
            .ok_or_else(|| anyhow!("unknown disk {disk}"))
    }
}

impl Drop for QemuBackend {
    fn drop(&mut self) {
        // Dropping a VM kills and reaps its QEMU before its files go.
        let state = std::mem::take(&mut *self.state());
        drop(state);
        if let Err(e) = std::fs::remove_dir_all(&self.work_dir) {
            eprintln!("removing QEMU work dir {}: {e}", self.work_dir.display());
        }
    }
}

/// GCE's resource name rule, which also keeps names safe in file names and QEMU options.
fn check_name(kind: &str, name: &str) -> Result<()> {
    if !cos_customizer_common::names::is_resource_name(name) {
        bail!("invalid {kind} name {name:?}: use 1-63 lowercase letters, digits and dashes, starting with a letter");
    }
    Ok(())
}

fn local_file(out: &OutputImage) -> Result<(&Path, ImageFormat)> {
    match &out.local_file {
        Some((p, f)) => Ok((p.as_path(), *f)),
        None => bail!(
            "the QEMU backend writes the image to a local file: give finish-image-build -output-file"
        ),
    }
}

/// The QEMU backend before it is opened: it attaches no GPU, and builds from a local file,
/// which it reads here.
pub struct Qemu;

impl BackendType for Qemu {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "qemu",
            attaches_gpus: false,
            host_from_guest: Some(args::HOST_FROM_GUEST),
            stages_files: false,
        }
    }

    fn inspect_source(
        &self,
        source: &SourceImage,
        allow_backing: bool,
    ) -> Result<Option<SourceFacts>> {
        if source.local_file.is_empty() {
            bail!(
                "the build was started from the GCE image {}, and a local build (-output-file, \
                 -backend=qemu) needs an image file: finish it on GCE (-backend=gce with \
                 -project and -zone), or start again with start-image-build -image-file=PATH",
                source.url()
            );
        }
        inspect::inspect_file(Path::new(&source.local_file), allow_backing).map(Some)
    }

    /// Only the types `machine.rs` maps to vCPUs and memory.
    fn check_machine_type(&self, machine_type: &str) -> Result<()> {
        machine::resources(machine_type, 1).map(|_| ())
    }

    fn check_disk_size(&self, gb: u64, out: &OutputImage) -> Result<()> {
        disk_size::check(gb, out)
    }
}

impl BackendType for QemuBackend {
    fn info(&self) -> BackendInfo {
        Qemu.info()
    }

    fn inspect_source(
        &self,
        source: &SourceImage,
        allow_backing: bool,
    ) -> Result<Option<SourceFacts>> {
        Qemu.inspect_source(source, allow_backing)
    }

    fn check_machine_type(&self, machine_type: &str) -> Result<()> {
        Qemu.check_machine_type(machine_type)
    }

    fn check_disk_size(&self, gb: u64, out: &OutputImage) -> Result<()> {
        Qemu.check_disk_size(gb, out)
    }
}

#[async_trait]
impl Backend for QemuBackend {
    async fn image_exists(&self, out: &OutputImage) -> Result<bool> {
        let (path, _) = local_file(out)?;
        tokio::fs::try_exists(path)
            .await
            .with_context(|| format!("checking for {}", path.display()))
    }

    async fn prepare_source(&self, source: &SourceImage) -> Result<()> {
        if source.local_file.is_empty() {
            return Ok(());
        }
        let given = tokio::fs::canonicalize(&source.local_file)
            .await
            .with_context(|| format!("resolving source image {}", source.local_file))?;
        if !inspect::is_gzip(&given)? || self.state().prepared.is_some() {
            return Ok(());
        }
        let raw = disk::extract_disk_raw(&given, &self.work_dir.join("source")).await?;
        self.state().prepared = Some((given, raw));
        Ok(())
    }

    async fn create_disk(&self, spec: &DiskSpec) -> Result<DiskId> {
        check_name("disk", &spec.name)?;
        let overlay = self.work_dir.join(format!("{}.qcow2", spec.name));
        let id = DiskId(overlay.to_string_lossy().into_owned());
        if self.state().disks.contains_key(&id) {
            bail!("disk {} already exists", spec.name);
        }
        let given = match &spec.source {
            DiskSource::Image(img) if img.local_file.is_empty() => bail!(
                "the QEMU backend needs a local image file for source image {}: give \
                 start-image-build -image-file",
                img.url()
            ),
            DiskSource::Image(img) => PathBuf::from(&img.local_file),
            DiskSource::RawFile(p) => p.clone(),
        };
        let given = tokio::fs::canonicalize(&given)
            .await
            .with_context(|| format!("resolving source image {}", given.display()))?;
        let prepared = self
            .state()
            .prepared
            .as_ref()
            .filter(|(archive, _)| *archive == given)
            .map(|(_, raw)| raw.clone());
        let (source, unpacked, backing) = if let Some(raw) = prepared {
            (raw, None, None)
        } else if inspect::is_gzip(&given)? {
            let dir = self.work_dir.join(format!("{}-source", spec.name));
            (disk::extract_disk_raw(&given, &dir).await?, Some(dir), None)
        } else {
            let stamp = SourceStamp::of(&given)?;
            (given, None, Some(stamp))
        };
        let result = async {
            let info = disk::image_info(&source).await?;
            // The checks made before the build, again on what is read now.
            inspect::refuse_host_files("the source image", &source, &info)?;
            let size = disk::target_size(spec.size_gb, info.virtual_size, &source)?;
            disk::create_overlay(&source, &info.format, &overlay, size).await
        }
        .await
        .with_context(|| format!("creating disk {}", spec.name));
        if let Err(e) = result {
            if let Some(dir) = &unpacked {
                let _ = tokio::fs::remove_dir_all(dir).await;
            }
            return Err(e);
        }
        self.state().disks.insert(
            id.clone(),
            Disk {
                name: spec.name.clone(),
                overlay,
                unpacked,
                backing,
            },
        );
        Ok(id)
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmId> {
        check_name("VM", &spec.name)?;
        let name = &spec.name;
        let id = VmId(name.clone());
        if let Some(gpu) = &spec.gpu_type {
            bail!("the QEMU backend cannot attach GPUs (asked for {gpu}); build GPU images on GCE");
        }
        if spec.disks.is_empty() {
            bail!("VM {name} needs at least a boot disk");
        }
        let drives = {
            let state = self.state();
            if state.vms.contains_key(&id) {
                bail!("VM {name} already exists");
            }
            spec.disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    if let Some((vm, _, _)) = state.running_vm_with(d) {
                        bail!("disk {d} is in use by running VM {vm}");
                    }
                    let disk = state
                        .disks
                        .get(d)
                        .ok_or_else(|| anyhow!("unknown disk {d}"))?;
                    Ok(Drive {
                        id: args::drive_id(i),
                        name: disk.name.clone(),
                        overlay: disk.overlay.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let disks = drives
            .iter()
            .map(|d| args::DiskArg {
                file: d.overlay.to_string_lossy().into_owned(),
                name: d.name.clone(),
            })
            .collect();
        let (mut cpus, mut memory_mib) = machine::resources(&spec.machine_type, self.host_cpus)?;
        cpus = self.opts.cpus.unwrap_or(cpus);
        memory_mib = self.opts.memory_mib.unwrap_or(memory_mib);

        // Present: check_host made sure when the backend was opened.
        let code = &self.opts.ovmf_code;
        let vars = self.path(&format!("{name}-OVMF_VARS.fd"));
        tokio::fs::copy(&self.opts.ovmf_vars, &vars)
            .await
            .with_context(|| {
                format!(
                    "copying UEFI variables {} to {vars}",
                    self.opts.ovmf_vars.display()
                )
            })?;
        let qmp = self.path(&qmp_socket_name(name));
        if qmp.len() > MAX_SOCKET_PATH {
            bail!("QMP socket path {qmp} is too long for a unix socket; use a shorter work dir parent");
        }
        let serial = [1, 2, 3, 4].map(|n| self.path(&format!("{name}-serial{n}.log")));
        let log = self.path(&format!("{name}-qemu.log"));
        let mut files: Vec<PathBuf> = [&vars, &qmp, &log].into_iter().map(PathBuf::from).collect();
        files.extend(serial.iter().map(PathBuf::from));

        let metadata = MetadataServer::start(name, spec.metadata.clone()).await?;
        let mut metadata_proxy = self.opts.metadata_proxy.clone();
        if !metadata_proxy.is_empty() {
            metadata_proxy.push(metadata.addr().to_string());
        }
        let argv = args::qemu_argv(&args::VmArgs {
            name: name.clone(),
            accel: self.accel.to_string(),
            cpus,
            memory_mib,
            ovmf_code: code.to_string_lossy().into_owned(),
            ovmf_vars: vars,
            disks,
            disk_bus: self.opts.disk_bus,
            outbound_network: !self.opts.hermetic,
            serial: serial.clone(),
            qmp_socket: qmp.clone(),
            metadata_proxy,
        });
        let watch = Watch {
            name: name.clone(),
            log: log.into(),
            deadline: spec.max_lifetime,
            qmp: qmp.clone().into(),
            drives,
        };
        let process = match VmProcess::spawn(&self.opts.qemu_system, &argv, watch) {
            Ok(p) => p,
            Err(e) => {
                for f in &files {
                    let _ = tokio::fs::remove_file(f).await;
                }
                return Err(e.context(format!("starting VM {name}")));
            }
        };
        self.state().vms.insert(
            id.clone(),
            Vm {
                disks: spec.disks.clone(),
                qmp: qmp.into(),
                serial: serial.map(PathBuf::from),
                files,
                metadata,
                process,
            },
        );
        Ok(id)
    }

    async fn serial_output(&self, vm: &VmId, port: u8, offset: u64) -> Result<SerialChunk> {
        if !(1..=4).contains(&port) {
            bail!("serial port {port} does not exist: VMs have ports 1 to 4");
        }
        let path = {
            let state = self.state();
            let v = state.vm(vm)?;
            v.serial[usize::from(port) - 1].clone()
        };
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            // QEMU has not created it yet: nothing written so far.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SerialChunk {
                    contents: String::new(),
                    start: offset,
                    next: offset,
                })
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .with_context(|| format!("seeking {} to {offset}", path.display()))?;
        let mut bytes = Vec::new();
        f.take(SERIAL_CHUNK)
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(SerialChunk {
            contents: String::from_utf8_lossy(&bytes).into_owned(),
            start: offset,
            next: offset + bytes.len() as u64,
        })
    }

    async fn resize_disk(&self, disk: &DiskId, size_gb: u64) -> Result<()> {
        let path = self.disk_path(disk)?;
        let bytes = size_gb
            .checked_mul(disk::GB)
            .context("computing the disk size in bytes")?;
        let current = disk::image_info(&path).await?.virtual_size;
        if bytes < current {
            bail!("cannot shrink disk {disk} from {current} bytes to {size_gb} GB ({bytes} bytes)");
        }
        if bytes == current {
            return Ok(());
        }
        let live = {
            let state = self.state();
            state
                .running_vm_with(disk)
                .map(|(_, vm, i)| (vm.qmp.clone(), i))
        };
        match live {
            // The guest sees the new size at once, as on GCE.
            Some((qmp, i)) => {
                let mut q = qmp::Qmp::connect(&qmp).await?;
                let args = serde_json::json!({ "device": args::drive_id(i), "size": bytes });
                q.execute("block_resize", Some(args)).await?;
            }
            None => disk::resize_offline(&path, bytes).await?,
        }
        Ok(())
    }

    async fn set_metadata(&self, vm: &VmId, key: &str, value: &str) -> Result<()> {
        let state = self.state();
        let v = state.vm(vm)?;
        v.metadata.set(key, value);
        Ok(())
    }

    /// Sets `DaisyEnd` as on GCE, then presses the VM's power button (ACPI, QMP
    /// `system_powerdown`). Its serial logs are files here, so nothing is lost when the
    /// guest stops at once, and it stops within seconds even when its network never
    /// came up and it would wait minutes for the metadata server before powering off.
    async fn acknowledge(&self, vm: &VmId) -> Result<()> {
        self.set_metadata(vm, ACK_METADATA_KEY, ACK_METADATA_VALUE)
            .await?;
        let qmp = {
            let state = self.state();
            let v = state.vm(vm)?;
            if !v.process.is_running() {
                return Ok(());
            }
            v.qmp.clone()
        };
        let pressed = async {
            let mut q = qmp::Qmp::connect(&qmp).await?;
            q.execute("system_powerdown", None).await
        }
        .await;
        // The guest may have read DaisyEnd and stopped first; if it is still running,
        // the build is not lost either: it powers off by itself after DaisyEnd.
        if let Err(e) = pressed {
            if self.still_running_after(vm, STOPPED_GRACE).await {
                eprintln!(
                    "could not press the power button of VM {vm} ({e:#}); it powers off by itself once it reads {ACK_METADATA_KEY}"
                );
            }
        }
        Ok(())
    }

    async fn vm_status(&self, vm: &VmId) -> Result<VmStatus> {
        let state = self.state();
        let v = state.vm(vm)?;
        Ok(v.process.status())
    }

    async fn create_image(&self, disk: &DiskId, out: &OutputImage) -> Result<()> {
        let (file, format) = local_file(out)?;
        let path = self.disk_path(disk)?;
        let backing = {
            let state = self.state();
            if let Some((vm, _, _)) = state.running_vm_with(disk) {
                bail!("disk {disk} is still in use by running VM {vm}");
            }
            state.disks.get(disk).and_then(|d| d.backing.clone())
        };
        if let Some(stamp) = backing {
            stamp.check()?;
        }
        export::export(&path, file, format, &self.work_dir)
            .await
            .with_context(|| format!("writing image {} ({})", file.display(), format.as_str()))
    }

    async fn delete_vm(&self, vm: &VmId) -> Result<()> {
        let Some(v) = self.state().vms.remove(vm) else {
            return Ok(());
        };
        v.process.stop(&v.qmp).await;
        for f in &v.files {
            match tokio::fs::remove_file(f).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
            }
        }
        Ok(())
    }

    async fn delete_disk(&self, disk: &DiskId) -> Result<()> {
        let d = {
            let mut state = self.state();
            if let Some((vm, _, _)) = state.running_vm_with(disk) {
                bail!("disk {disk} is in use by running VM {vm}");
            }
            match state.disks.remove(disk) {
                Some(d) => d,
                None => return Ok(()),
            }
        };
        match tokio::fs::remove_file(&d.overlay).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", d.overlay.display())),
        }
        if let Some(dir) = d.unpacked {
            tokio::fs::remove_dir_all(&dir)
                .await
                .with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }
}
