//! The dry-run plan of `finish-image-build -dry-run`: what the preloader would create
//! and the reboots the provisioner would ask for.

use anyhow::{Context, Result};

use super::{Request, VM_NAME};
use crate::scratch;
use cos_customizer_common::config::{ProvisionerConfig, Step};
use cos_customizer_common::duration;
use cos_customizer_common::sizing::{initial_disk_gb, moves_partitions, resize_to_gb};

/// The reboots the provisioner will ask for. Repartitioning of any kind takes one: the
/// first boot prepares it (switching the root to ROOT-B when ROOT-A is reclaimed) and the
/// partitions move at that boot's shutdown, all at once. None when the source's layout
/// already fits (the provisioner then finds nothing to move), which only the VM can see.
pub fn expected_reboots(prov: &ProvisionerConfig) -> Vec<String> {
    let boot = &prov.boot_disk;
    if !moves_partitions(boot) {
        return Vec::new();
    }
    let mut what = Vec::new();
    if boot.reclaim_sda3 {
        what.push("ROOT-A (sda3) shrunk after the root switches to ROOT-B".to_string());
    }
    if let Some(size) = &boot.oem_size {
        what.push(format!("OEM grown to {size}"));
    }
    what.push("STATE moved after them".to_string());
    vec![format!(
        "at the first boot's shutdown, from the exit ramdisk: {}",
        what.join(", ")
    )]
}

/// What [`super::Preloader::run`] would do, for `finish-image-build -dry-run`.
pub fn plan(req: &Request, backend: &str) -> Result<String> {
    let config = serde_json::to_string(&req.prov).context("encoding the provisioner config")?;
    let boot_gb = initial_disk_gb(&req.build, &req.prov);
    let mut out = format!("Backend: {backend}\n");
    out += &format!("Provisioner config (config.json on the CIDATA disk):\n{config}\n");
    out += "Disks:\n";
    out += "  cidata-disk: CIDATA FAT image built from the provisioner, its config and the build context\n";
    out += &format!("  boot-disk: {boot_gb} GB from {}\n", req.source.url());
    let vm_disks = if scratch::needed(&req.prov) {
        out += &format!(
            "  scratch-disk: {} GB ext4 labelled SCRATCH, for the GPU driver installer\n",
            scratch::DISK_GB
        );
        "boot-disk, scratch-disk, cidata-disk"
    } else {
        "boot-disk, cidata-disk"
    };
    if let Some(gb) = resize_to_gb(&req.build, &req.prov) {
        out += &format!("  boot-disk grows to {gb} GB when the provisioner asks\n");
    }
    out += &format!(
        "VM: {VM_NAME}, machine type {}, disks [{vm_disks}]{}, timeout {} per wait\n",
        req.build.machine_type,
        match &req.build.gpu_type {
            Some(gpu) => format!(", GPU {gpu}"),
            None => String::new(),
        },
        duration::format(req.timeout)
    );
    if let Some(gpu) = req.prov.steps.iter().find_map(|st| match st {
        Step::InstallGpu(a) => Some(a),
        _ => None,
    }) {
        out += if gpu.no_verify {
            "GPU drivers: preloaded without a GPU (cos-gpu-installer install -no-verify): neither loaded nor checked until the image first boots on a GPU VM\n"
        } else {
            "GPU drivers: installed and checked with nvidia-smi on the VM's GPU\n"
        };
    }
    let o = &req.output;
    out += &format!("Image: {}", o.display_name());
    if let Some((_, format)) = &o.local_file {
        out += &format!(" (format {})", format.as_str());
    }
    if !o.family.is_empty() {
        out += &format!(", family {}", o.family);
    }
    if !o.labels.is_empty() {
        out += &format!(", labels {:?}", o.labels);
    }
    if !o.licenses.is_empty() {
        out += &format!(", licenses {:?}", o.licenses);
    }
    out += "\n";
    let reboots = expected_reboots(&req.prov);
    out += &format!("Reboots to expect: {}\n", reboots.len());
    for r in reboots {
        out += &format!("  - {r}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::sample_request;
    use super::*;
    use std::time::Duration;

    #[test]
    fn reboots_to_expect() {
        let mut p = ProvisionerConfig::default();
        assert!(expected_reboots(&p).is_empty());
        p.boot_disk.oem_size = Some("1023M".into());
        assert_eq!(expected_reboots(&p).len(), 1);
        // disable-auto-update -oem-size=16M: one reboot, as the provisioner does it.
        p.boot_disk.oem_size = Some("16M".into());
        p.boot_disk.reclaim_sda3 = true;
        let r = expected_reboots(&p);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("ROOT-A") && r[0].contains("OEM grown to 16M"),
            "{r:?}"
        );
    }

    #[test]
    fn plan_shows_config_disks_and_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = sample_request(dir.path(), Duration::from_secs(90));
        req.build.disk_size_gb = Some(12);
        req.prov.boot_disk.reclaim_sda3 = true;
        let text = plan(&req, "fake").unwrap();
        assert!(
            text.contains(&serde_json::to_string(&req.prov).unwrap()),
            "{text}"
        );
        assert!(
            text.contains("boot-disk: 10 GB from projects/p/global/images/cos"),
            "{text}"
        );
        assert!(
            text.contains("grows to 12 GB") && text.contains("Reboots to expect: 1"),
            "{text}"
        );
        assert!(text.contains("timeout 1m30s per wait"), "{text}");
    }
}
