//! The build state shared by the CLI steps, the preloader and the provisioner.
//!
//! Field names are the Go struct field names of the original (no JSON tags there),
//! so state written by either implementation reads in the other. Go marshals nil
//! maps and slices as `null`; empty collections here do the same, and `null` reads
//! back as empty.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `config/provisioner`, and `config.json` on the CIDATA disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProvisionerConfig {
    /// Build context name (`user`) to the archive's URL (`gs://…` or `file://…`).
    #[serde(
        rename = "BuildContexts",
        default,
        serialize_with = "empty_map_as_null",
        deserialize_with = "null_as_default"
    )]
    pub build_contexts: BTreeMap<String, String>,
    /// How the provisioner repartitions the boot disk (Go `BootDisk`).
    #[serde(rename = "BootDisk", default)]
    pub boot_disk: BootDiskConfig,
    /// The recorded steps, run in order on the build VM (Go `Steps`).
    #[serde(
        rename = "Steps",
        default,
        serialize_with = "empty_vec_as_null",
        deserialize_with = "null_as_default"
    )]
    pub steps: Vec<Step>,
    /// The Cloud Storage endpoint the VM downloads from, as the VM reaches it, when the build
    /// was given one (`-storage-endpoint`, or fake-gcs-server on this host); empty for
    /// `https://storage.googleapis.com`. Not in the original, which knows no other endpoint;
    /// left out of the JSON when empty, so the config stays the original's.
    #[serde(
        rename = "StorageEndpoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub storage_endpoint: String,
}

/// What the provisioner does to the boot disk's partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDiskConfig {
    /// The OEM partition's new size (`2047M`); `None` (Go's `""`) leaves OEM as it is.
    #[serde(
        rename = "OEMSize",
        default,
        serialize_with = "none_as_empty",
        deserialize_with = "empty_as_none"
    )]
    pub oem_size: Option<String>,
    /// OEM file system size in 4 KiB blocks (Go `OEMFSSize4K`); 0 fills the partition. Sealing sets
    /// it so the hash tree fits after it.
    #[serde(rename = "OEMFSSize4K", default)]
    pub oem_fs_size_4k: u64,
    /// Reclaims ROOT-A (sda3) for OEM, running the build from ROOT-B (Go `ReclaimSDA3`); `seal-oem`
    /// and `disable-auto-update` set it.
    #[serde(rename = "ReclaimSDA3", default)]
    pub reclaim_sda3: bool,
    /// Wait for the host to grow the boot disk before moving partitions (Go `WaitForDiskResize`).
    #[serde(rename = "WaitForDiskResize", default)]
    pub wait_for_disk_resize: bool,
}

/// One recorded step. Serialized as the original's `{"Type": …, "Args": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Runs a script from a build context (`run-script`).
    RunScript(RunScriptArgs),
    /// Installs NVIDIA GPU drivers (`install-gpu`; Go type `InstallGPU`).
    InstallGpu(InstallGpuArgs),
    /// Seals the OEM partition read-only with dm-verity (`seal-oem`; Go type `SealOEM`).
    SealOem,
    /// Masks update-engine so the image does not update itself (`disable-auto-update`).
    DisableAutoUpdate,
    /// Installs packages with anthos_installer (`anthos-installer-install`).
    InstallPackages(InstallPackagesArgs),
}

/// Arguments of [`Step::RunScript`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunScriptArgs {
    /// Name of the build context holding the script, such as `user` (Go `BuildContext`).
    #[serde(rename = "BuildContext", default)]
    pub build_context: String,
    /// The script's path inside that build context (Go `Path`).
    #[serde(rename = "Path", default)]
    pub path: String,
    /// Sorted `k=v` pairs joined by `,` (see [`crate::env`] for commas in values).
    #[serde(rename = "Env", default)]
    pub env: String,
}

/// Arguments of [`Step::InstallGpu`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallGpuArgs {
    /// Driver version (`535.129.03`), or the name of an installer `.run` file among the
    /// dependencies (Go `NvidiaDriverVersion`).
    #[serde(rename = "NvidiaDriverVersion", default)]
    pub nvidia_driver_version: String,
    /// MD5 checksum the installer must match; empty skips the check (Go `NvidiaDriverMD5Sum`).
    #[serde(rename = "NvidiaDriverMD5Sum", default)]
    pub nvidia_driver_md5sum: String,
    /// Where the image gets the drivers, `/var/lib/nvidia` by default (Go `NvidiaInstallDirHost`).
    #[serde(rename = "NvidiaInstallDirHost", default)]
    pub nvidia_install_dir_host: String,
    /// The cos-gpu-installer container image run on the VM (Go `NvidiaInstallerContainer`).
    #[serde(rename = "NvidiaInstallerContainer", default)]
    pub nvidia_installer_container: String,
    /// Where the installer's dependencies are: `-deps-dir` as recorded, empty for none; Go's GCE
    /// flow swaps in their `gs://` prefix (Go `GCSDepsPrefix`).
    #[serde(rename = "GCSDepsPrefix", default)]
    pub gcs_deps_prefix: String,
    /// Preload the drivers on a VM with no GPU: cos-gpu-installer's `install -no-verify`,
    /// which neither loads nor checks the driver (`install-gpu -no-verify`; not in the
    /// original, and left out of the JSON when false).
    #[serde(rename = "NoVerify", default, skip_serializing_if = "is_false")]
    pub no_verify: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Arguments of [`Step::InstallPackages`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallPackagesArgs {
    /// Name of the build context a relative package spec is in (Go `BuildContext`).
    #[serde(rename = "BuildContext", default)]
    pub build_context: String,
    /// Package spec: a build context path, or a `gs://` or `http(s)://` URL (Go `PkgSpecURL`).
    #[serde(rename = "PkgSpecURL", default)]
    pub pkg_spec_url: String,
    /// Work folder passed to anthos_installer's `-top-workdir` (Go `TopWorkDir`).
    #[serde(rename = "TopWorkDir", default)]
    pub top_work_dir: String,
    /// Where anthos_installer is installed on the VM (Go `AnthosInstallerDir`); empty for the
    /// provisioner's default.
    #[serde(rename = "AnthosInstallerDir", default)]
    pub anthos_installer_dir: String,
    /// The anthos_installer release archive to fetch (Go `AnthosInstallerVersion`).
    #[serde(rename = "AnthosInstallerVersion", default)]
    pub anthos_installer_version: String,
    /// Bucket the anthos_installer release is fetched from (Go `AnthosInstallerReleaseBucket`).
    #[serde(rename = "AnthosInstallerReleaseBucket", default)]
    pub anthos_installer_release_bucket: String,
}

impl InstallPackagesArgs {
    /// Whether a package spec is a URL (`gs://`, `http://`, `https://`) rather than a path
    /// in the build context, as the original tells them apart.
    pub fn is_url(spec: &str) -> bool {
        ["http://", "https://", "gs://"]
            .iter()
            .any(|scheme| spec.starts_with(scheme))
    }
}

impl Step {
    /// The original's `Type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Step::RunScript(_) => "RunScript",
            Step::InstallGpu(_) => "InstallGPU",
            Step::SealOem => "SealOEM",
            Step::DisableAutoUpdate => "DisableAutoUpdate",
            Step::InstallPackages(_) => "InstallPackages",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawStep {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Args", default)]
    args: serde_json::Value,
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let args = match self {
            Step::RunScript(a) => serde_json::to_value(a),
            Step::InstallGpu(a) => serde_json::to_value(a),
            Step::InstallPackages(a) => serde_json::to_value(a),
            Step::SealOem | Step::DisableAutoUpdate => Ok(serde_json::Value::Null),
        }
        .map_err(serde::ser::Error::custom)?;
        RawStep {
            kind: self.type_name().to_string(),
            args,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawStep::deserialize(d)?;
        fn args<T: DeserializeOwned + Default, E: serde::de::Error>(
            v: serde_json::Value,
        ) -> Result<T, E> {
            if v.is_null() {
                return Ok(T::default());
            }
            serde_json::from_value(v).map_err(E::custom)
        }
        Ok(match raw.kind.as_str() {
            "RunScript" => Step::RunScript(args(raw.args)?),
            "InstallGPU" => Step::InstallGpu(args(raw.args)?),
            "InstallPackages" => Step::InstallPackages(args(raw.args)?),
            "SealOEM" => Step::SealOem,
            "DisableAutoUpdate" => Step::DisableAutoUpdate,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown step type: {other:?}"
                )))
            }
        })
    }
}

/// `config/build`: the Go `config.Build` struct, in its field order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildConfig {
    /// Cloud Storage bucket for a GCE build's scratch files (Go `GCSBucket`, flag `-gcs-bucket`).
    #[serde(rename = "GCSBucket", default)]
    pub gcs_bucket: String,
    /// Folder in the bucket for those scratch files (Go `GCSDir`, flag `-gcs-workdir`).
    #[serde(rename = "GCSDir", default)]
    pub gcs_dir: String,
    /// Project of the build VM and its disks (Go `Project`).
    #[serde(rename = "Project", default)]
    pub project: String,
    /// Zone of the build VM and its disks (Go `Zone`).
    #[serde(rename = "Zone", default)]
    pub zone: String,
    /// Build VM machine type (`n1-standard-1`); QEMU sizes the VM by it (Go `MachineType`).
    #[serde(rename = "MachineType", default)]
    pub machine_type: String,
    /// Service account the build VM runs as (Go `ServiceAccount`).
    #[serde(rename = "ServiceAccount", default)]
    pub service_account: String,
    /// Disk type of the build disks, such as `pd-standard` (Go `DiskType`).
    #[serde(rename = "DiskType", default)]
    pub disk_type: String,
    /// The output disk's size; `None` (Go's `0`) keeps the image's.
    #[serde(
        rename = "DiskSize",
        default,
        serialize_with = "none_as_zero",
        deserialize_with = "zero_as_none"
    )]
    pub disk_size_gb: Option<u64>,
    /// The GPU attached to the build VM; `None` (Go's `""`) for none.
    #[serde(
        rename = "GPUType",
        default,
        serialize_with = "none_as_empty",
        deserialize_with = "empty_as_none"
    )]
    pub gpu_type: Option<String>,
    /// Time allowed for each wait of the build, as a Go duration such as `1h0m0s` (Go `Timeout`).
    #[serde(rename = "Timeout", default)]
    pub timeout: String,
    /// Local files a GCE build uploads for the VM: `install-gpu`'s dependencies (Go `GCSFiles`).
    #[serde(
        rename = "GCSFiles",
        default,
        serialize_with = "empty_vec_as_null",
        deserialize_with = "null_as_default"
    )]
    pub gcs_files: Vec<String>,
    /// Compute Engine API endpoint the build talks to (Go `GCEEndpoint`).
    #[serde(rename = "GCEEndpoint", default)]
    pub gce_endpoint: String,
    /// The build VM's network; `None` (Go's `""`) for the project's default.
    #[serde(
        rename = "Network",
        default,
        serialize_with = "none_as_empty",
        deserialize_with = "empty_as_none"
    )]
    pub network: Option<String>,
    /// The build VM's subnetwork; `None` (Go's `""`) for the network's default.
    #[serde(
        rename = "Subnet",
        default,
        serialize_with = "none_as_empty",
        deserialize_with = "empty_as_none"
    )]
    pub subnet: Option<String>,
}

/// `config/source_image`: the GCE image JSON (lowerCamel) plus `Project`.
///
/// Local builds add `LocalFile`, which the original ignores when it reads the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceImage {
    /// The source image's name (GCE `name`); for a local file, its stem such as `cos-dev`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Project of the source image, such as `cos-cloud` (Go `Project`).
    #[serde(rename = "Project", default)]
    pub project: String,
    /// Absolute path of a local source image (raw, qcow2 or GCE `tar.gz`).
    #[serde(
        rename = "LocalFile",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub local_file: String,
    /// Every other field of the GCE image resource, kept as read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SourceImage {
    /// `projects/P/global/images/N`, as the original names the source in its image description.
    pub fn url(&self) -> String {
        if !self.local_file.is_empty() {
            return self.local_file.clone();
        }
        format!("projects/{}/global/images/{}", self.project, self.name)
    }

    /// The GCE labels of the source image, if the resolved resource carried any.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.extra
            .get("labels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

/// Parses one of the state files, naming it and the fix in the error.
pub fn parse_json<T: DeserializeOwned>(what: &std::path::Path, data: &[u8]) -> Result<T> {
    if data.iter().all(u8::is_ascii_whitespace) {
        bail!(
            "{} is empty; the build state is corrupt: remove the state folder and run start-image-build again",
            what.display()
        );
    }
    serde_json::from_slice(data).with_context(|| {
        format!(
            "parsing {}; the build state is corrupt: remove the state folder and run start-image-build again",
            what.display()
        )
    })
}

fn empty_map_as_null<S: Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        s.serialize_none()
    } else {
        m.serialize(s)
    }
}

fn empty_vec_as_null<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        v.serialize(s)
    }
}

fn none_as_empty<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or(""))
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|v| !v.is_empty()))
}

fn none_as_zero<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.unwrap_or(0))
}

/// Go's `int` 0 is "not given"; a negative size is refused with the field named.
fn zero_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        None | Some(0) => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(serde::de::Error::custom(format!(
            "DiskSize {n} is negative"
        ))),
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_provisioner_config_matches_go() {
        let s = serde_json::to_string(&ProvisionerConfig::default()).unwrap();
        assert_eq!(
            s,
            r#"{"BuildContexts":null,"BootDisk":{"OEMSize":"","OEMFSSize4K":0,"ReclaimSDA3":false,"WaitForDiskResize":false},"Steps":null}"#
        );
    }

    #[test]
    fn upstream_example_round_trips() {
        let text = r#"{"BuildContexts":{"user":"gs://B/W/cos-customizer/user_build_context.tar"},"BootDisk":{"OEMSize":"2047M","OEMFSSize4K":262144,"ReclaimSDA3":true,"WaitForDiskResize":true},"Steps":[{"Type":"RunScript","Args":{"BuildContext":"user","Path":"preload.sh","Env":"A=1,B=2"}},{"Type":"SealOEM","Args":null}]}"#;
        let c: ProvisionerConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.boot_disk.oem_fs_size_4k, 262144);
        assert_eq!(c.steps.len(), 2);
        assert_eq!(c.steps[1], Step::SealOem);
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
    }

    #[test]
    fn unknown_step_type_is_an_error() {
        let e = serde_json::from_str::<Step>(r#"{"Type":"Bogus","Args":null}"#).unwrap_err();
        assert!(
            e.to_string().contains(r#"unknown step type: "Bogus""#),
            "{e}"
        );
    }

    #[test]
    fn build_config_matches_go_field_order() {
        let b = BuildConfig {
            gcs_bucket: "b".into(),
            gcs_dir: "d".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"GCSBucket":"b","GCSDir":"d","Project":"","Zone":"","MachineType":"","ServiceAccount":"","DiskType":"","DiskSize":0,"GPUType":"","Timeout":"","GCSFiles":null,"GCEEndpoint":"","Network":"","Subnet":""}"#
        );
    }

    #[test]
    fn go_zero_values_are_none() {
        let text = r#"{"GCSBucket":"","GCSDir":"","Project":"","Zone":"","MachineType":"","ServiceAccount":"","DiskType":"","DiskSize":12,"GPUType":"nvidia-tesla-t4","Timeout":"","GCSFiles":null,"GCEEndpoint":"","Network":"","Subnet":"s"}"#;
        let b: BuildConfig = serde_json::from_str(text).unwrap();
        assert_eq!(b.disk_size_gb, Some(12));
        assert_eq!(b.gpu_type.as_deref(), Some("nvidia-tesla-t4"));
        assert_eq!((b.network, b.subnet.as_deref()), (None, Some("s")));
        let b: BuildConfig = serde_json::from_str(r#"{"DiskSize":0}"#).unwrap();
        assert_eq!(b.disk_size_gb, None);
        let e = serde_json::from_str::<BuildConfig>(r#"{"DiskSize":-1}"#).unwrap_err();
        assert!(e.to_string().contains("DiskSize -1 is negative"), "{e}");
        let c: BootDiskConfig = serde_json::from_str(r#"{"OEMSize":""}"#).unwrap();
        assert_eq!(c.oem_size, None);
    }

    #[test]
    fn source_image_keeps_unknown_fields() {
        let text = r#"{"name":"cos-1","labels":{"a":"b"},"Project":"cos-cloud"}"#;
        let s: SourceImage = serde_json::from_str(text).unwrap();
        assert_eq!(s.url(), "projects/cos-cloud/global/images/cos-1");
        assert_eq!(s.labels().get("a").map(String::as_str), Some("b"));
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(back["labels"]["a"], "b");
    }

    #[test]
    fn corrupt_state_names_the_file_and_fix() {
        let e = parse_json::<BuildConfig>(std::path::Path::new("/x/config/build"), b"{bad")
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("/x/config/build") && msg.contains("start-image-build"),
            "{msg}"
        );
    }
}
