//! SealOEM: builds a dm-verity hash tree over the OEM file system, in the same partition
//! right after it, and adds the `oemroot` verity device to the kernel command line.
//!
//! veritysetup runs directly when it is on PATH; otherwise from the container image given
//! with `-veritysetup-image`, as the original does on COS (which has docker, not veritysetup).

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use cos_customizer_common::cmd;

use crate::boot::esp;
use crate::boot::grub_cfg::{self, OemVerity};
use crate::context::Context;
use crate::disk::bootdisk::{BootDisk, OEM};
use crate::disk::{ext4, sfdisk};
use crate::tool;

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
    let args = verity_args(&dev, oem_fs_size_4k);
    let out = if tool::on_path("veritysetup") {
        cmd::run_stdout(Command::new("veritysetup").args(&args))
            .with_context(|| format!("building the dm-verity hash tree of {}", dev.display()))?
    } else if let Some(image) = &ctx.veritysetup_image {
        veritysetup_in_docker(&ctx.state_dir, image, &args)?
    } else {
        bail!("veritysetup is not installed and no -veritysetup-image was given; cannot seal the OEM partition");
    };
    let (root_hash, salt) = parse_veritysetup(&out)?;
    let v = OemVerity {
        partuuid: sfdisk::read(&disk.dev)?.uuid(OEM)?,
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

/// `veritysetup format` over the partition: data first, the hash tree right after it.
fn verity_args(dev: &Path, blocks: u64) -> Vec<String> {
    let dev = dev.display().to_string();
    vec![
        "format".into(),
        dev.clone(),
        dev,
        "--data-block-size=4096".into(),
        "--hash-block-size=4096".into(),
        format!("--data-blocks={blocks}"),
        format!("--hash-offset={}", blocks * 4096),
        "--no-superblock".into(),
        "--format=0".into(),
    ]
}

/// `(root hash, salt)` from `veritysetup format` output.
fn parse_veritysetup(out: &str) -> Result<(String, String)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    match (field("Root hash:"), field("Salt:")) {
        (Some(h), Some(s)) => Ok((h, s)),
        _ => bail!("veritysetup printed no \"Root hash:\" and \"Salt:\":\n{out}"),
    }
}

/// The original's way on COS: import the veritysetup image, run it privileged with /dev.
fn veritysetup_in_docker(state_dir: &Path, image: &Path, args: &[String]) -> Result<String> {
    let copy = state_dir.join("veritysetup.img");
    fs::copy(image, &copy)
        .with_context(|| format!("copying {} to {}", image.display(), copy.display()))?;
    let tag = format!("veritysetup:veritysetup_{}", go_arch());
    cmd::run(Command::new("docker").arg("import").arg(&copy).arg(&tag))
        .with_context(|| format!("importing the veritysetup image {}", image.display()))?;
    let id = cmd::run_stdout(Command::new("docker").args(["images", &tag, "-q"]))
        .context("reading the veritysetup image id")?;
    let id = id.lines().next().unwrap_or("").trim().to_string();
    if id.is_empty() {
        bail!(
            "docker has no image {tag} after importing {}",
            image.display()
        );
    }
    let out = cmd::run_stdout(
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--name",
                "veritysetup",
                "--privileged",
                "-v",
                "/dev:/dev",
                &id,
                "veritysetup",
            ])
            .args(args),
    )
    .context("building the dm-verity hash tree of the OEM partition in docker");
    let removed = cmd::run(Command::new("docker").args(["rmi", &id]))
        .with_context(|| format!("removing the veritysetup image {id}"));
    fs::remove_file(&copy).with_context(|| format!("removing {}", copy.display()))?;
    let out = out?;
    removed?;
    Ok(out)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_veritysetup_output() {
        let out = "VERITY header information for /dev/vda8\nUUID:            \t\nHash type:       \t0\nData blocks:     \t12800\nSalt:            \t3c2f0cf2\nRoot hash:      \te754c6df\n";
        assert_eq!(
            parse_veritysetup(out).unwrap(),
            ("e754c6df".to_string(), "3c2f0cf2".to_string())
        );
        assert!(parse_veritysetup("Salt: 12\n").is_err());
        assert!(parse_veritysetup("Salt: 12\nRoot hash: not-hex\n").is_err());
    }

    #[test]
    fn format_arguments() {
        assert_eq!(
            verity_args(Path::new("/dev/vda8"), 12800).join(" "),
            "format /dev/vda8 /dev/vda8 --data-block-size=4096 --hash-block-size=4096 --data-blocks=12800 --hash-offset=52428800 --no-superblock --format=0"
        );
    }

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

    /// veritysetup on a file, as on the OEM partition, and the hash verifies.
    #[test]
    fn real_veritysetup_round_trip() {
        assert!(
            tool::on_path("veritysetup"),
            "veritysetup is missing: run scripts/install-deps.sh"
        );
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("oem.img");
        fs::write(&img, vec![7u8; 2 * 256 * 4096]).unwrap();
        let out =
            cmd::run_stdout(Command::new("veritysetup").args(verity_args(&img, 256))).unwrap();
        let (hash, salt) = parse_veritysetup(&out).unwrap();
        cmd::run(
            Command::new("veritysetup")
                .args([
                    "verify",
                    "--data-block-size=4096",
                    "--hash-block-size=4096",
                    "--data-blocks=256",
                ])
                .arg(format!("--hash-offset={}", 256 * 4096))
                .args(["--no-superblock", "--format=0", &format!("--salt={salt}")])
                .arg(&img)
                .arg(&img)
                .arg(&hash),
        )
        .unwrap();
    }
}
