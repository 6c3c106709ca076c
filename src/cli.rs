//! The command line: the original's subcommands and flags (Go `flag` style, see
//! [`cos_customizer_common::goflags`]), plus the flags of local builds.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use cos_customizer_common::goflags::parse_bool;

/// The program's name, in its help, man pages and completions.
pub const BIN: &str = "cos-customizer";

/// Turns a Container-Optimized OS image into a customized image.
///
/// start-image-build and the steps only record intent in a local state folder;
/// finish-image-build does the work. Flags take Go's forms (-flag=value, -flag value, a bare
/// -bool) and --flag; global flags come before the subcommand.
#[derive(Debug, Parser)]
#[command(name = "cos-customizer", version, help_expected = true)]
pub struct Cli {
    /// State folder for the build: a path under $HOME, relative, without . or ..; two builds
    /// at once need two folders.
    #[arg(long, default_value = cos_customizer_core::state::DEFAULT_WORKDIR, value_name = "DIR")]
    pub local_state_workdir: String,
    /// Overrides the Compute Engine API endpoint, a base path such as
    /// https://compute.googleapis.com/compute/v1/ (for a fake or a non-production API;
    /// default: $CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE, else the public one).
    #[arg(long, default_value = "", value_name = "URL")]
    pub compute_endpoint: String,
    /// Overrides the Cloud Storage endpoint (default: $STORAGE_EMULATOR_HOST, else
    /// https://storage.googleapis.com).
    #[arg(long, default_value = "", value_name = "URL")]
    pub storage_endpoint: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Starts a build: records the source image and archives the build context.
    StartImageBuild(StartOpts),
    /// Adds a step that runs a script from the build context on the image.
    RunScript(RunScriptOpts),
    /// Adds a step that installs NVIDIA GPU drivers on the image.
    InstallGpu(InstallGpuOpts),
    /// Adds a step that seals the OEM partition with dm-verity.
    SealOem(NoOpts),
    /// Adds a step that disables automatic updates (and reclaims ROOT-A's space).
    DisableAutoUpdate(NoOpts),
    /// Adds a step that installs packages with the Anthos installer.
    AnthosInstallerInstall(AnthosOpts),
    /// Runs the recorded steps in a VM and makes the output image.
    FinishImageBuild(Box<FinishOpts>),
    /// Writes the shell completion script to standard output.
    ///
    /// Hidden, as the man page writer: the list of subcommands stays the original's.
    #[command(hide = true)]
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Writes the man pages (cos-customizer.1 and one per subcommand) into a folder.
    #[command(hide = true)]
    ManPages {
        /// The folder, for example /usr/local/share/man/man1; it must exist.
        dir: PathBuf,
    },
    /// Relays the build VM's metadata connection to this process (used by QEMU).
    #[command(name = "__metadata-proxy", hide = true)]
    MetadataProxy {
        /// Loopback address of the metadata server.
        addr: String,
    },
}

/// No flags.
#[derive(Debug, Args)]
pub struct NoOpts {}

fn go_bool(s: &str) -> Result<bool, String> {
    parse_bool(s)
}

#[derive(Debug, Args)]
pub struct StartOpts {
    /// File or folder whose contents the steps can use (archived now).
    #[arg(long, default_value = ".", value_name = "PATH")]
    pub build_context: PathBuf,
    /// Cloud Storage bucket for scratch files (GCE builds).
    #[arg(long, default_value = "")]
    pub gcs_bucket: String,
    /// Folder in -gcs-bucket for scratch files (GCE builds).
    #[arg(long, default_value = "")]
    pub gcs_workdir: String,
    /// Project of the source image (GCE builds).
    #[arg(long, default_value = "")]
    pub image_project: String,
    /// Source image name.
    #[arg(long, default_value = "")]
    pub image_name: String,
    /// Source image: the newest cos-cloud image of this milestone.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub image_milestone: i64,
    /// Source image family.
    #[arg(long, default_value = "")]
    pub image_family: String,
    /// Source image as a local file (raw, qcow2, or GCE tar.gz holding disk.raw): a local build.
    #[arg(long, value_name = "PATH")]
    pub image_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunScriptOpts {
    /// Script to run, as named in the build context (no ./ prefix).
    #[arg(long, default_value = "")]
    pub script: std::ffi::OsString,
    /// Environment for the script: NAME=VALUE[,NAME=VALUE]; repeatable; a later value wins.
    /// A segment without '=' continues the previous value (LIST=a,b); '\,' is a literal comma.
    #[arg(long, value_name = "NAME=VALUE,…")]
    pub env: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InstallGpuOpts {
    /// Driver version (e.g. 535.129.03), or an installer file name ending in .run found in -deps-dir.
    #[arg(long, default_value = "")]
    pub version: String,
    /// MD5 checksum of the driver installer.
    #[arg(long, default_value = "")]
    pub md5sum: String,
    /// Where the drivers go on the image (setup_gpu.sh is written there).
    #[arg(long, default_value = "/var/lib/nvidia")]
    pub install_dir: String,
    /// GPU type to attach to the GCE build VM (finish-image-build -gpu-type overrides it).
    /// Unlike the original there is no default: a GCE build needs one given explicitly.
    #[arg(long, default_value = "")]
    pub gpu_type: String,
    /// Lists the valid driver versions and exits.
    #[arg(long, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub get_valid_drivers: bool,
    /// Local folder with the driver installer and its dependencies.
    #[arg(long, default_value = "")]
    pub deps_dir: String,
    /// cos-gpu-installer container image pulled on the VM.
    #[arg(long, default_value = "gcr.io/cos-cloud/cos-gpu-installer:v20230815")]
    pub installer_container: String,
    /// Preloads the drivers on a build VM without a GPU, with cos-gpu-installer's
    /// `install -no-verify` (so a QEMU build can install them). The trade: the driver is
    /// neither loaded nor checked until the image first boots on a GPU VM and runs
    /// setup_gpu.sh from -install-dir.
    #[arg(long, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub no_verify: bool,
}

#[derive(Debug, Args)]
pub struct AnthosOpts {
    /// Package spec: a path in the build context (folder or .tar.gz), or a gs://, http:// or https:// URL.
    #[arg(long, default_value = "")]
    pub pkgspec_url: String,
    /// Passed to anthos_installer -top-workdir.
    #[arg(long, default_value = "")]
    pub top_workdir: String,
}

/// Which backend builds the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// QEMU on this machine: local image files in and out.
    Qemu,
    /// Google Compute Engine.
    Gce,
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelKind {
    /// KVM where hardware virtualization is really there, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// How a QEMU build VM's disks are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskInterfaceKind {
    /// virtio-scsi, as GCE attaches persistent disks (/dev/sda, /dev/sdb, ...).
    Scsi,
    /// virtio-blk (/dev/vda, ...).
    Virtio,
}

/// The headings `finish-image-build -h` groups its flags under, in the order shown.
const BUILD: &str = "Build";
const LOCAL: &str = "Local build (QEMU)";
const OUTPUT_IMAGE: &str = "Output image";
const GCE_VM: &str = "GCE build VM";
const SBOM: &str = "SBOM";
const CACHE: &str = "Build cache (local builds)";

#[derive(Debug, Clone, Args)]
pub struct FinishOpts {
    /// Backend: qemu or gce. Default: qemu for a local source image or -output-file, else gce.
    #[arg(long, help_heading = BUILD, value_enum)]
    pub backend: Option<BackendKind>,
    /// Runs every check a build makes and prints the plan (config, disks, VM, image, reboots)
    /// and every reason the build would be refused (exit 1 if any); creates nothing, keeps the state.
    #[arg(long, help_heading = BUILD, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub dry_run: bool,
    /// Timeout of each wait, a Go duration (1h, 90m, 1m30s), as Daisy's -default_timeout.
    #[arg(long, help_heading = BUILD, default_value = "1h")]
    pub timeout: String,
    /// Machine type of the build VM (QEMU maps GCE's predefined and custom types to vCPUs
    /// and memory, and refuses any other name).
    #[arg(long, help_heading = BUILD, default_value = "n1-standard-1")]
    pub machine_type: String,
    /// Static provisioner binary to put on the CIDATA disk (default: $COS_CUSTOMIZER_PROVISIONER,
    /// else provisioner next to this program).
    #[arg(long, help_heading = BUILD, value_name = "PATH")]
    pub provisioner: Option<PathBuf>,
    /// Local output image file (QEMU builds); it must not exist (unless -overwrite), be the
    /// source or one of its backing files, a folder or inside the state folder.
    #[arg(long, help_heading = LOCAL, value_name = "PATH")]
    pub output_file: Option<PathBuf>,
    /// Replaces an existing -output-file (atomically, once the new image is whole).
    #[arg(long, help_heading = LOCAL, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub overwrite: bool,
    /// Output format: raw, qcow2 or tar.gz (GCE import format). Default: from -output-file's name.
    #[arg(long, help_heading = LOCAL, value_name = "FORMAT")]
    pub output_format: Option<String>,
    /// Accepts a local source image that sits on a backing file (whose contents then go
    /// into the output).
    #[arg(long, help_heading = LOCAL, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_backing_file: bool,
    /// QEMU acceleration: auto (KVM only where hardware virtualization works), kvm or tcg.
    #[arg(long, help_heading = LOCAL, value_enum, default_value = "auto")]
    pub accel: AccelKind,
    /// QEMU builds: how the build VM's disks are attached (default scsi, as on GCE).
    #[arg(long, help_heading = LOCAL, value_enum, value_name = "BUS")]
    pub disk_interface: Option<DiskInterfaceKind>,
    /// QEMU builds: no network for the build's scripts beyond the metadata server (by
    /// default they reach the internet through NAT, as a GCE VM with an external IP).
    #[arg(long, help_heading = LOCAL, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub hermetic: bool,
    /// Output image name (a GCE build needs exactly one of -image-name and -image-suffix).
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "")]
    pub image_name: String,
    /// Output image name = source image name + this suffix.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "")]
    pub image_suffix: String,
    /// OEM partition size: N 512-byte sectors, or N with B, K, M or G; at least 16M.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "")]
    pub oem_size: String,
    /// Output disk size in GB (0 = 10); no smaller than the source image, and checked against
    /// the OEM size as the original does.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value_t = 0, value_name = "GB")]
    pub disk_size_gb: i64,
    /// Project of the output image.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "")]
    pub image_project: String,
    /// Output image family.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "")]
    pub image_family: String,
    /// Output image labels: NAME=VALUE[,NAME=VALUE]; repeatable.
    #[arg(long, help_heading = OUTPUT_IMAGE, value_name = "NAME=VALUE,…")]
    pub labels: Vec<String>,
    /// Output image licenses: comma list; repeatable.
    #[arg(long, help_heading = OUTPUT_IMAGE, value_name = "LICENSE,…")]
    pub licenses: Vec<String>,
    /// Copies the source image's labels (explicit -labels win).
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub inherit_labels: bool,
    /// Deprecates the older images of -image-family.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub deprecate_old_images: bool,
    /// Seconds after deprecation to record as the old images' "deleted" time (needs
    /// -deprecate-old-images). GCE treats it as information only: it deletes nothing.
    #[arg(long, help_heading = OUTPUT_IMAGE, default_value_t = 0, value_name = "SECONDS")]
    pub old_image_ttl: i64,
    /// Project of the build VM and disks (GCE builds).
    #[arg(long, help_heading = GCE_VM, default_value = "")]
    pub project: String,
    /// Zone of the build VM (GCE builds).
    #[arg(long, help_heading = GCE_VM, default_value = "")]
    pub zone: String,
    /// Service account e-mail of the build VM.
    #[arg(long, help_heading = GCE_VM, default_value = "default")]
    pub service_account: String,
    /// GPU type to attach to the build VM.
    #[arg(long, help_heading = GCE_VM, default_value = "")]
    pub gpu_type: String,
    /// Network of the build VM.
    #[arg(long, help_heading = GCE_VM, default_value = "")]
    pub network: String,
    /// Subnetwork of the build VM, e.g. regions/us-west1/subnetworks/x.
    #[arg(long, help_heading = GCE_VM, default_value = "")]
    pub subnet: String,
    /// Disk type of the build disks (GCE builds).
    #[arg(long, help_heading = GCE_VM, default_value = "pd-standard")]
    pub disk_type: String,
    /// Gives the build VM no external IP (GCE builds), as an organization policy may demand;
    /// its network then needs Private Google Access or Cloud NAT for what the scripts fetch.
    #[arg(long, help_heading = GCE_VM, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub no_external_ip: bool,
    /// Deletes leftover build VMs older than a day first (GCE builds).
    #[arg(long, help_heading = GCE_VM, default_value = "false", value_parser = go_bool, action = ArgAction::Set, value_name = "BOOL")]
    pub enable_cleanup: bool,
    /// SBOM input: a JSON file in the build context (needs -sbom-output-path).
    #[arg(long, help_heading = SBOM, default_value = "")]
    pub sbom_input_path: String,
    /// Where the SPDX SBOM is written: gs://BUCKET/FOLDER or a local folder (needs
    /// -sbom-input-path).
    #[arg(long, help_heading = SBOM, default_value = "")]
    pub sbom_output_path: String,
    /// Folder of the build cache: a build whose inputs match a kept one writes the kept
    /// image without booting a VM; any other builds and keeps its image (-output-file only).
    #[arg(long, help_heading = CACHE, value_name = "PATH")]
    pub cache_dir: Option<PathBuf>,
    /// Most the cache's images may take on disk, in GB (blocks in use, not apparent size);
    /// the least recently used go first.
    #[arg(long, help_heading = CACHE, default_value_t = 50, value_name = "GB")]
    pub cache_size_gb: u64,
    /// Goes into the cache key: change it (e.g. to the date) to rebuild what the inputs do not
    /// show, such as what a script downloads.
    #[arg(long, help_heading = CACHE, default_value = "")]
    pub cache_salt: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_self_check() {
        Cli::command().debug_assert();
    }
}

/// The shells a completion script is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}
