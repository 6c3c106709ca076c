//! ext4 file systems: their size, read from the superblock so a resize that is already
//! done is not repeated (e2fsck -fp would rewrite the superblock of a sealed OEM
//! partition), and the check that comes before every resize.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use cos_customizer_common::cmd;

use super::le::{u16_at, u32_at};

/// Where the superblock starts in its file system, and its size.
pub const SUPERBLOCK: u64 = 1024;
/// The superblock's magic, and where in the superblock it is.
pub const MAGIC: u16 = 0xEF53;
/// See [`MAGIC`].
pub const MAGIC_AT: usize = 0x38;
/// `s_feature_incompat`: 64-bit block numbers.
pub const INCOMPAT_64BIT: u32 = 0x80;

/// `(block count, block size)` from a raw 1024-byte ext2/3/4 superblock.
pub fn parse_superblock(sb: &[u8]) -> Result<(u64, u64)> {
    if sb.len() < 1024 || u16_at(sb, MAGIC_AT) != MAGIC {
        bail!("no ext2/3/4 superblock");
    }
    let mut blocks = u64::from(u32_at(sb, 0x4));
    if u32_at(sb, 0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(sb, 0x150)) << 32;
    }
    let log = u32_at(sb, 0x18);
    if log > 6 {
        bail!("implausible block size 2^{} bytes", 10 + log);
    }
    Ok((blocks, 1024 << log))
}

/// `(block count, block size)` of the file system on `device`.
pub fn size(device: &Path) -> Result<(u64, u64)> {
    let f = File::open(device).with_context(|| format!("opening {}", device.display()))?;
    let mut sb = vec![0u8; 1024];
    f.read_exact_at(&mut sb, SUPERBLOCK)
        .with_context(|| format!("reading the superblock of {}", device.display()))?;
    parse_superblock(&sb).with_context(|| format!("reading the superblock of {}", device.display()))
}

/// `e2fsck -fp <device>`: exit 1 means errors were found and fixed, which is success here.
pub fn e2fsck(device: &Path) -> Result<()> {
    let mut c = Command::new("e2fsck");
    c.arg("-fp").arg(device);
    let line = cmd::render(c.get_program(), c.get_args());
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            println!("e2fsck fixed errors on {}", device.display());
            Ok(())
        }
        _ => Err(cmd::failure(&line, &out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(blocks_lo: u32, blocks_hi: u32, log: u32, bit64: bool) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[0x4..0x8].copy_from_slice(&blocks_lo.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&log.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        if bit64 {
            sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
        }
        sb[0x150..0x154].copy_from_slice(&blocks_hi.to_le_bytes());
        sb
    }

    #[test]
    fn block_counts() {
        assert_eq!(
            parse_superblock(&superblock(12800, 0, 2, false)).unwrap(),
            (12800, 4096)
        );
        // The high half only counts with the 64bit feature.
        assert_eq!(
            parse_superblock(&superblock(5, 1, 2, false)).unwrap(),
            (5, 4096)
        );
        assert_eq!(
            parse_superblock(&superblock(5, 1, 2, true)).unwrap(),
            ((1 << 32) + 5, 4096)
        );
        assert_eq!(
            parse_superblock(&superblock(8, 0, 0, false)).unwrap(),
            (8, 1024)
        );
        assert!(parse_superblock(&[0u8; 1024]).is_err());
    }

    #[test]
    fn reads_a_real_file_system() {
        assert!(
            crate::tool::on_path("mkfs.ext4"),
            "mkfs.ext4 is missing: run scripts/install-deps.sh"
        );
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        cos_customizer_common::cmd::run(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-b", "4096"])
                .arg(&img)
                .arg("16M"),
        )
        .unwrap();
        assert_eq!(size(&img).unwrap(), (4096, 4096));
    }
}
