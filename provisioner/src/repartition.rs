//! Boot disk repartitioning (the original's `repartitionBootDisk`): not implemented yet,
//! so a config that needs it fails before anything on the disk changes.

use anyhow::{bail, Result};
use cos_customizer_core::config::BootDiskConfig;

pub fn repartition(boot_disk: &BootDiskConfig) -> Result<()> {
    if boot_disk.reclaim_sda3 || !boot_disk.oem_size.is_empty() || boot_disk.wait_for_disk_resize {
        bail!(
            "disk repartitioning (seal-oem, disable-auto-update, -oem-size) is not implemented by this provisioner yet"
        );
    }
    Ok(())
}
