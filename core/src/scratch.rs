//! The SCRATCH disk of a build that installs GPU drivers: an empty ext4 file system the
//! cloud-config mounts at [`MOUNT`], where the driver installer keeps its
//! toolchain so it does not fill the boot disk (upstream PR #66 and 57b6adb).

use std::path::Path;

use anyhow::{Context, Result};
use cos_customizer_common::config::{ProvisionerConfig, Step};

use crate::async_cmd;

/// The file system's label; the cloud-config looks for `/dev/disk/by-label/SCRATCH`.
pub const LABEL: &str = "SCRATCH";
/// Where the cloud-config mounts it (the provisioner's GPU step keeps its files below).
pub const MOUNT: &str = "/mnt/disks/scratch";
/// The image made on the host, as upstream's `scratch.img`. The disk made from it is
/// [`DISK_GB`] and the cloud-config grows the file system to fill it.
pub const IMAGE_BYTES: u64 = 512 << 20;
/// The scratch disk's size, as upstream's workflow.
pub const DISK_GB: u64 = 10;

/// Whether the build needs a scratch disk: upstream attaches one for `install-gpu` only.
pub fn needed(prov: &ProvisionerConfig) -> bool {
    prov.steps.iter().any(|s| matches!(s, Step::InstallGpu(_)))
}

/// Writes a sparse [`IMAGE_BYTES`] ext4 image labelled [`LABEL`] to `path`.
pub async fn build(path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(IMAGE_BYTES)
        .with_context(|| format!("sizing {}", path.display()))?;
    drop(file);
    // No reserved blocks: the disk lives for one build and root uses all of it.
    async_cmd::run(
        tokio::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L", LABEL])
            .arg(path),
    )
    .await
    .context("formatting the SCRATCH disk image (mkfs.ext4 comes with e2fsprogs)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_common::config::InstallGpuArgs;

    #[test]
    fn only_gpu_builds_need_one() {
        let mut prov = ProvisionerConfig::default();
        assert!(!needed(&prov));
        prov.steps.push(Step::InstallGpu(InstallGpuArgs::default()));
        assert!(needed(&prov));
    }

    #[tokio::test]
    async fn the_image_is_a_clean_ext4_labelled_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("scratch.img");
        build(&img).await.unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), IMAGE_BYTES);
        let fsck = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{fsck:?}");
        let label = std::process::Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), LABEL);
    }
}
