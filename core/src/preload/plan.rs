//! The dry-run plan of `finish-image-build -dry-run`: what the preloader would create
//! and the reboots the provisioner would ask for.

use anyhow::{Context, Result};

use super::{Request, VM_NAME};
use crate::scratch;
use cos_customizer_common::config::ProvisionerConfig;
use cos_customizer_common::duration;
use cos_customizer_common::sizing::{initial_disk_gb, moves_partitions, resize_to_gb};

/// The reboots the provisioner will ask for: switching the root to ROOT-B and shrinking
/// ROOT-A when reclaiming it, and moving partitions at shutdown.
pub fn expected_reboots(prov: &ProvisionerConfig) -> Vec<&'static str> {
    let mut r = Vec::new();
    if prov.boot_disk.reclaim_sda3 {
        r.push("boot from ROOT-B so ROOT-A can be reclaimed");
        r.push("shrink ROOT-A (sda3)");
    }
    if moves_partitions(&prov.boot_disk) {
        r.push("move STATE and OEM at shutdown");
    }
    r
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
        p.boot_disk.reclaim_sda3 = true;
        assert_eq!(expected_reboots(&p).len(), 3);
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
            text.contains("grows to 12 GB") && text.contains("Reboots to expect: 3"),
            "{text}"
        );
        assert!(text.contains("timeout 1m30s per wait"), "{text}");
    }
}
