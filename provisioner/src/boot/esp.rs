//! The EFI system partition and the grub.cfg on it: found by GPT label, mounted for the
//! length of one edit.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cos_customizer_common::fsutil;

use super::grub_cfg;
use crate::disk::bootdisk;
use crate::host::Host;
use crate::mount::Mounted;

const ESP_LABEL: &str = cos_customizer_common::cos_layout::EFI_SYSTEM.label;

/// The ESP by its GPT label: the udev link, or sysfs when udev made none.
pub fn find_esp(host: &Host) -> Result<PathBuf> {
    let link = host.path("/dev/disk/by-partlabel").join(ESP_LABEL);
    if link.exists() {
        return Ok(link);
    }
    match bootdisk::find_labelled(host, ESP_LABEL)? {
        Some(entry) => bootdisk::dev_node(&host.path("/dev"), &entry),
        None => bail!(
            "no partition labelled {ESP_LABEL} found (looked at {} and {})",
            link.display(),
            host.path("/sys/class/block").display()
        ),
    }
}

/// Mounts the ESP, applies `edit` to `/efi/boot/grub.cfg` (`None`: nothing to change) and
/// unmounts it. Returns whether the file changed.
pub fn edit_grub_cfg(
    host: &Host,
    edit: impl FnOnce(&str) -> Result<Option<String>>,
) -> Result<bool> {
    let esp = find_esp(host)?;
    // Not a TempDir: its recursive delete would wipe the ESP if unmounting failed.
    let dir = host.path("/tmp/cos-customizer-esp");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mounted = Mounted::new(host, &esp, &dir)?;
    let grub = dir.join("efi/boot/grub.cfg");
    let text = fs::read_to_string(&grub).with_context(|| format!("reading {}", grub.display()))?;
    let new = edit(&text).with_context(|| format!("editing {}", grub.display()))?;
    if let Some(new) = &new {
        grub_cfg::check_cmdline_lengths(new)?;
        // Through a temporary file on the ESP itself, so a crash never leaves half a grub.cfg.
        fsutil::write_atomic(&grub, new.as_bytes())?;
    }
    mounted.close()?;
    fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(new.is_some())
}

/// Masks systemd units on every COS kernel command line.
pub fn mask_units(host: &Host, units: &[&str]) -> Result<()> {
    let changed = edit_grub_cfg(host, |text| {
        let mut text = text.to_string();
        let mut changed = false;
        for unit in units {
            if let Some(new) = grub_cfg::mask_unit(&text, unit) {
                text = new;
                changed = true;
            }
        }
        Ok(changed.then_some(text))
    })?;
    if changed {
        println!("Masked {} in grub.cfg", units.join(" and "));
    } else {
        println!("{} already masked in grub.cfg", units.join(" and "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_from_partlabel_link_or_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let host = crate::host::tests::fake_host(d.path());
        assert!(find_esp(&host).is_err());
        for (dev, label) in [("sda1", "STATE"), ("sda12", "EFI-SYSTEM"), ("sdb", "")] {
            let p = d.path().join("sys/class/block").join(dev);
            fs::create_dir_all(&p).unwrap();
            fs::write(
                p.join("uevent"),
                format!("MAJOR=8\nMINOR=1\nDEVNAME={dev}\nDEVTYPE=partition\nPARTNAME={label}\n"),
            )
            .unwrap();
        }
        assert_eq!(find_esp(&host).unwrap(), d.path().join("dev/sda12"));
        let link = d.path().join("dev/disk/by-partlabel");
        fs::create_dir_all(&link).unwrap();
        fs::write(link.join("EFI-SYSTEM"), "").unwrap();
        assert_eq!(find_esp(&host).unwrap(), link.join("EFI-SYSTEM"));
    }
}
