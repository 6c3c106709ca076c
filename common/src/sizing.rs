//! The sizing rules of `finish-image-build`, exactly as the original's: the OEM
//! arithmetic of `validateOEM` (how large the OEM partition and file system become,
//! and how large the disk must be for them), and how large the boot disk is made and
//! when it grows (`needDiskResize`).

use anyhow::{bail, Context, Result};

use crate::config::{BootDiskConfig, BuildConfig, ProvisionerConfig, Step};

/// The size of a COS image's disk, in GB: the boot disk's size while partitions move,
/// and the output's size when `-disk-size-gb` is not given.
pub const IMAGE_SIZE_GB: u64 = 10;
/// What reclaiming ROOT-A (sda3) frees, in MiB.
pub const RECLAIMED_MIB: u64 = 2046;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The smallest OEM size the original accepts.
pub const MIN_OEM_BYTES: u64 = 16 * MIB;

/// Parses `-oem-size`: `N` (512-byte sectors) or `N` with a `B`, `K`, `M` or `G` suffix
/// (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "invalid -oem-size {s:?}: give a number of 512-byte sectors, or a number with B, K, M or G, e.g. 1G or 500M"
        )
    };
    let (digits, mult) = match s.chars().last() {
        Some('B') => (&s[..s.len() - 1], 1),
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], MIB),
        Some('G') => (&s[..s.len() - 1], GIB),
        Some(c) if c.is_ascii_digit() => (s, 512),
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

fn ceil_gb(bytes: u64) -> u64 {
    bytes.div_ceil(GIB)
}

/// Checks the disk size against the OEM request and fills in `OEMSize` and
/// `OEMFSSize4K`. No `disk_size_gb` means the default of 10.
pub fn validate_oem(disk_size_gb: Option<u64>, prov: &mut ProvisionerConfig) -> Result<()> {
    let disk = disk_size_gb.unwrap_or(IMAGE_SIZE_GB);
    let sealed = prov.steps.contains(&Step::SealOem);
    let boot = &mut prov.boot_disk;
    let Some(requested) = boot.oem_size.clone() else {
        if sealed {
            // A 16 MiB file system plus its hash tree.
            boot.oem_size = Some("32M".into());
            boot.oem_fs_size_4k = 4096;
        }
        return Ok(());
    };
    let size = parse_size(&requested).with_context(|| "checking -oem-size".to_string())?;
    if size < MIN_OEM_BYTES {
        bail!("-oem-size={requested} is too small: the OEM partition must be at least 16M");
    }
    let reclaimed = RECLAIMED_MIB * MIB;
    let (bytes, needed) = if sealed {
        boot.oem_fs_size_4k = size >> 12;
        let bytes = 2 * size;
        (bytes, ceil_gb(bytes.saturating_sub(reclaimed)))
    } else {
        let freed = if boot.reclaim_sda3 { reclaimed } else { 0 };
        (size, ceil_gb(size.saturating_sub(freed)))
    };
    let min_disk = IMAGE_SIZE_GB + needed;
    if disk < min_disk {
        let rule = match (sealed, boot.reclaim_sda3) {
            (true, _) => {
                "2 * 'oem-size' + image size (10GB) - reclaimed space (2046MB) when sealing OEM"
            }
            (false, true) => "'oem-size' + image size (10GB) - reclaimed space (2046MB)",
            (false, false) => "'oem-size' + image size (10GB)",
        };
        bail!(
            "'disk-size-gb' must be at least {rule}: -disk-size-gb={disk} is too small for -oem-size={requested}; use -disk-size-gb={min_disk} or more"
        );
    }
    // One MiB less, to absorb rounding when the partitions are moved.
    boot.oem_size = Some(format!("{}M", (bytes >> 20) - 1));
    Ok(())
}

/// Whether partitions move during the build (`ReclaimSDA3` or an `OEMSize`).
pub fn moves_partitions(boot: &BootDiskConfig) -> bool {
    boot.reclaim_sda3 || boot.oem_size.is_some()
}

/// `needDiskResize` of the original: the size the boot disk grows to once the
/// partitions have moved, if it grows at all.
pub fn resize_to_gb(build: &BuildConfig, prov: &ProvisionerConfig) -> Option<u64> {
    build
        .disk_size_gb
        .filter(|&gb| gb > IMAGE_SIZE_GB && moves_partitions(&prov.boot_disk))
}

/// The boot disk's size at creation: the requested size only when no partition moves
/// (partitions are moved on a disk of the image's size, which then grows).
pub fn initial_disk_gb(build: &BuildConfig, prov: &ProvisionerConfig) -> u64 {
    match build.disk_size_gb {
        Some(gb) if gb > IMAGE_SIZE_GB && !moves_partitions(&prov.boot_disk) => gb,
        _ => IMAGE_SIZE_GB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sealed: bool, oem: &str, reclaim: bool) -> ProvisionerConfig {
        let mut c = ProvisionerConfig::default();
        if sealed {
            c.steps.push(Step::SealOem);
        }
        c.boot_disk.oem_size = Some(oem.to_string()).filter(|o| !o.is_empty());
        c.boot_disk.reclaim_sda3 = reclaim || sealed;
        c
    }

    #[test]
    fn worked_examples() {
        let mut c = config(true, "1G", true);
        validate_oem(Some(12), &mut c).unwrap();
        assert_eq!(
            (
                c.boot_disk.oem_fs_size_4k,
                c.boot_disk.oem_size.as_deref().unwrap()
            ),
            (262144, "2047M")
        );

        let mut c = config(true, "50M", true);
        validate_oem(Some(10), &mut c).unwrap();
        assert_eq!(
            (
                c.boot_disk.oem_fs_size_4k,
                c.boot_disk.oem_size.as_deref().unwrap()
            ),
            (12800, "99M")
        );

        let mut c = config(false, "1G", false);
        validate_oem(Some(11), &mut c).unwrap();
        assert_eq!(c.boot_disk.oem_size.as_deref(), Some("1023M"));

        let mut c = config(true, "", true);
        validate_oem(None, &mut c).unwrap();
        assert_eq!(
            (
                c.boot_disk.oem_fs_size_4k,
                c.boot_disk.oem_size.as_deref().unwrap()
            ),
            (4096, "32M")
        );
    }

    #[test]
    fn small_disk_size_fails() {
        let mut c = config(false, "3072M", false);
        let e = validate_oem(Some(11), &mut c).unwrap_err().to_string();
        assert!(
            e.contains("'disk-size-gb' must be at least 'oem-size' + image size (10GB)"),
            "{e}"
        );
        assert!(e.contains("-disk-size-gb=13"), "{e}");
    }

    #[test]
    fn reclaim_without_seal_counts_reclaimed_space() {
        // disable-auto-update frees 2046 MiB, so a 2G OEM fits in 11 GB.
        let mut c = config(false, "2G", true);
        validate_oem(Some(11), &mut c).unwrap();
        assert_eq!(c.boot_disk.oem_size.as_deref(), Some("2047M"));
        let mut c = config(false, "2G", false);
        assert!(validate_oem(Some(11), &mut c).is_err());
    }

    #[test]
    fn nothing_to_check_without_seal_or_size() {
        let mut c = config(false, "", false);
        validate_oem(None, &mut c).unwrap();
        assert_eq!(c.boot_disk, Default::default());
    }

    #[test]
    fn disk_size_rules() {
        let mut b = BuildConfig {
            disk_size_gb: Some(20),
            ..Default::default()
        };
        let mut p = ProvisionerConfig::default();
        assert_eq!(initial_disk_gb(&b, &p), 20);
        assert_eq!(resize_to_gb(&b, &p), None);
        p.boot_disk.oem_size = Some("1023M".into());
        assert_eq!(initial_disk_gb(&b, &p), 10);
        assert_eq!(resize_to_gb(&b, &p), Some(20));
        b.disk_size_gb = Some(10);
        assert_eq!(resize_to_gb(&b, &p), None);
        b.disk_size_gb = None;
        assert_eq!(initial_disk_gb(&b, &p), 10);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32768").unwrap(), 16 * MIB);
        assert_eq!(parse_size("1G").unwrap(), GIB);
        assert_eq!(parse_size("512K").unwrap(), 512 * 1024);
        assert_eq!(parse_size("10B").unwrap(), 10);
        for bad in ["", "G", "A45M", "-200K", "+200K", "1.5G", "200T", "12m"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let mut c = config(false, "8M", false);
        assert!(validate_oem(Some(20), &mut c)
            .unwrap_err()
            .to_string()
            .contains("at least 16M"));
    }
}
