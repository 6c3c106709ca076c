//! DisableAutoUpdate: masks update-engine.service on the kernel command line in the ESP's grub.cfg.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cos_customizer_core::fsutil;

use crate::host::Host;
use crate::mount::Mounted;

const ESP_LABEL: &str = "EFI-SYSTEM";
const MASK: &str = "systemd.mask=update-engine.service";

pub fn run(host: &Host) -> Result<()> {
    let esp = find_esp(host)?;
    // Not a TempDir: its recursive delete would wipe the ESP if unmounting failed.
    let dir = host.path("/tmp/cos-customizer-esp");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mounted = Mounted::new(host, &esp, &dir)?;
    let grub = dir.join("efi/boot/grub.cfg");
    let text = fs::read_to_string(&grub).with_context(|| format!("reading {}", grub.display()))?;
    match mask_update_engine(&text) {
        Some(new) => {
            // Through a temporary file on the ESP itself, so a crash never leaves half a grub.cfg.
            fsutil::write_atomic(&grub, new.as_bytes())?;
            println!("Masked update-engine.service in grub.cfg");
        }
        None => println!("update-engine.service is already masked in grub.cfg"),
    }
    mounted.close()?;
    fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))
}

/// The ESP by its GPT label: the udev link, or sysfs when udev made none.
pub fn find_esp(host: &Host) -> Result<PathBuf> {
    let link = host.path("/dev/disk/by-partlabel").join(ESP_LABEL);
    if link.exists() {
        return Ok(link);
    }
    let sys = host.path("/sys/class/block");
    let mut entries: Vec<_> = fs::read_dir(&sys)
        .with_context(|| format!("listing {}", sys.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for dev in entries {
        let Ok(uevent) = fs::read_to_string(dev.join("uevent")) else {
            continue;
        };
        let field = |k: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        if field("PARTNAME") == Some(ESP_LABEL) {
            if let Some(name) = field("DEVNAME") {
                return Ok(host.path("/dev").join(name));
            }
        }
    }
    bail!(
        "no partition labelled {ESP_LABEL} found (looked at {} and {})",
        link.display(),
        sys.display()
    )
}

/// Adds the mask after every `cros_efi` word; `None` if grub.cfg already has it.
pub fn mask_update_engine(cfg: &str) -> Option<String> {
    if cfg.contains(MASK) {
        return None;
    }
    let mut out = String::with_capacity(cfg.len() + 256);
    let mut rest = cfg;
    while let Some(i) = rest.find("cros_efi") {
        let end = i + "cros_efi".len();
        out.push_str(&rest[..end]);
        let is_word = rest[end..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '='));
        if is_word {
            out.push(' ');
            out.push_str(MASK);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRUB: &str = r#"set default=2
menuentry "local image A" {
  linux /syslinux/vmlinuz.A init=/usr/lib/systemd/systemd boot=local rootwait ro cros_efi root=PARTUUID=X
}
menuentry "verified image A" {
  linux /syslinux/vmlinuz.A init=/usr/lib/systemd/systemd boot=local ro cros_efi root=/dev/dm-0 dm="1 vroot none ro 1,0 2539520 verity"
}
menuentry "verified image B" {
  linux /syslinux/vmlinuz.B console=ttyS0 cros_efi
}
"#;

    #[test]
    fn masks_after_every_cros_efi() {
        let new = mask_update_engine(GRUB).unwrap();
        assert_eq!(
            new.matches("cros_efi systemd.mask=update-engine.service")
                .count(),
            3
        );
        assert!(new.contains("ro cros_efi systemd.mask=update-engine.service root=/dev/dm-0 dm="));
        assert!(new.ends_with("console=ttyS0 cros_efi systemd.mask=update-engine.service\n}\n"));
        assert_eq!(new.replace(" systemd.mask=update-engine.service", ""), GRUB);
    }

    #[test]
    fn idempotent() {
        let once = mask_update_engine(GRUB).unwrap();
        assert_eq!(mask_update_engine(&once), None);
    }

    #[test]
    fn lines_without_cros_efi_and_lookalikes_are_kept() {
        let cfg = "set timeout=0\nlinux /k cros_efi_x=1 cros_legacy\n";
        assert_eq!(mask_update_engine(cfg).unwrap(), cfg);
    }

    #[test]
    fn esp_from_partlabel_link_or_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let host = Host {
            root: d.path().into(),
            ..Host::system()
        };
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
