//! SealOEM: builds a dm-verity hash tree over the OEM file system, in the same partition
//! right after it, and adds the `oemroot` verity device to the kernel command line.
//!
//! The provisioner writes the tree itself (`disk::verity`), byte for byte the one the
//! original's `veritysetup format` (run in docker) writes: COS images have no veritysetup.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::boot::esp;
use crate::boot::grub_cfg::{self, OemVerity};
use crate::context::Context;
use crate::disk::bootdisk::{BootDisk, OEM};
use crate::disk::{ext4, table, verity};

const OEM_MOUNT_UNIT: &str = "usr-share-oem.mount";

/// Seals the OEM partition, whose file system is `oem_fs_size_4k` 4 KiB blocks at most.
pub fn run(ctx: &Context, oem_fs_size_4k: u64) -> Result<()> {
    let host = &ctx.host;
    if oem_fs_size_4k == 0 {
        bail!("OEMFSSize4K is 0: the OEM file system size is unknown (finish-image-build sets it for seal-oem)");
    }
    let disk = BootDisk::find(host)?;
    let dev = disk.partition(OEM)?;
    // Nothing may write to the file system once its hash tree exists.
    host.stop_if_active(OEM_MOUNT_UNIT)?;
    for target in host.mount_points_of(&disk.partition_devnum(OEM)?)? {
        host.umount(&target)
            .with_context(|| format!("unmounting the OEM partition from {}", target.display()))?;
    }
    let (blocks, block_size) = ext4::size(&dev).with_context(|| {
        format!(
            "the OEM partition {} must hold an ext4 file system to be sealed",
            dev.display()
        )
    })?;
    check_sealable(&dev, blocks, block_size, oem_fs_size_4k)?;
    let (root_hash, salt) = verity::format(&dev, &verity_params(oem_fs_size_4k))
        .with_context(|| format!("building the dm-verity hash tree of {}", dev.display()))?;
    let v = OemVerity {
        partuuid: table::read(&disk.dev)?.unique_guid(OEM)?,
        root_hash,
        salt,
        data_blocks: oem_fs_size_4k,
    };
    esp::edit_grub_cfg(host, |text| grub_cfg::add_oem_verity(text, &v).map(Some))?;
    println!(
        "Added the oemroot verity device (root hash {}) to grub.cfg",
        v.root_hash
    );
    esp::mask_units(host, &["update-engine.service", OEM_MOUNT_UNIT])?;
    println!("OEM partition sealed");
    Ok(())
}

/// The sealed OEM is a dm-verity device with 4096-byte sectors, on which the kernel cannot
/// mount a file system with smaller blocks (the original seals it anyway, and the OEM
/// never mounts); and the hash tree, written after the first `data_blocks_4k` blocks, must
/// not overwrite the file system.
fn check_sealable(dev: &Path, blocks: u64, block_size: u64, data_blocks_4k: u64) -> Result<()> {
    if block_size < 4096 {
        bail!(
            "the OEM file system on {} has {block_size}-byte blocks: once sealed, dm-verity presents it with 4096-byte sectors and the kernel cannot mount it; recreate it with 4 KiB blocks (mkfs.ext4 -b 4096), as on COS images",
            dev.display()
        );
    }
    let (fs_bytes, room) = (blocks * block_size, data_blocks_4k * 4096);
    if fs_bytes > room {
        bail!(
            "the OEM file system on {} is {fs_bytes} bytes, but only {room} bytes come before the hash tree; give finish-image-build a larger -oem-size",
            dev.display()
        );
    }
    Ok(())
}

/// The original's `veritysetup format <dev> <dev> --data-block-size=4096
/// --hash-block-size=4096 --data-blocks=<blocks> --hash-offset=<blocks * 4096>
/// --no-superblock --format=0`: data first, the hash tree right after it, a random salt.
fn verity_params(blocks: u64) -> verity::Params {
    verity::Params {
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: blocks,
        hash_offset: blocks * 4096,
        salt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::verity::tests::have_veritysetup;
    use cos_customizer_common::cmd;
    use std::fs;
    use std::process::Command;

    #[test]
    fn sealable_file_systems() {
        let dev = Path::new("/dev/vda8");
        check_sealable(dev, 12800, 4096, 12800).unwrap();
        check_sealable(dev, 4096, 4096, 12800).unwrap();
        let small_blocks = check_sealable(dev, 51200, 1024, 12800).unwrap_err();
        assert!(
            small_blocks.to_string().contains("1024-byte blocks")
                && small_blocks.to_string().contains("mkfs.ext4 -b 4096"),
            "{small_blocks}"
        );
        let too_big = check_sealable(dev, 12801, 4096, 12800).unwrap_err();
        assert!(too_big.to_string().contains("-oem-size"), "{too_big}");
    }

    /// Our tree over a file, as on the OEM partition, is the one the original's veritysetup
    /// command writes with the same salt, and that command's options verify it.
    #[test]
    fn matches_the_originals_veritysetup_command() {
        if !have_veritysetup() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (ours, theirs) = (d.path().join("ours.img"), d.path().join("theirs.img"));
        let mut bytes: Vec<u8> = (0..2 * 256 * 4096u32).map(|i| (i % 251) as u8).collect();
        bytes[256 * 4096..].fill(0);
        fs::write(&ours, &bytes).unwrap();
        fs::write(&theirs, &bytes).unwrap();
        let (hash, salt) = verity::format(&ours, &verity_params(256)).unwrap();
        let original = |action: &str, img: &Path| {
            let mut c = Command::new("veritysetup");
            c.arg(action).arg(img).arg(img).args([
                "--data-block-size=4096",
                "--hash-block-size=4096",
                "--data-blocks=256",
                "--hash-offset=1048576",
                "--no-superblock",
                "--format=0",
                &format!("--salt={salt}"),
            ]);
            c
        };
        let out = cmd::run_stdout(&mut original("format", &theirs)).unwrap();
        assert!(
            out.lines()
                .any(|l| l.strip_prefix("Root hash:").map(str::trim) == Some(&hash)),
            "{out}"
        );
        assert!(fs::read(&ours).unwrap() == fs::read(&theirs).unwrap());
        cmd::run(original("verify", &ours).arg(&hash)).unwrap();
    }
}
