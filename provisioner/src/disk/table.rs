//! The boot disk's partition table, read and changed through [`gpt_edit`] with the sector
//! size of every COS disk on GCE and QEMU.
//!
//! [`gpt_edit`]: super::gpt_edit

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};

use super::gpt_edit::Gpt;

/// Bytes per sector of the boot disk.
pub const SECTOR: u64 = 512;

/// Reads the GPT of `dev` (a disk or a disk image).
pub fn read(dev: &Path) -> Result<Gpt> {
    let mut f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    Gpt::read(&mut f, SECTOR)
        .with_context(|| format!("reading the partition table of {}", dev.display()))
}

/// A disk larger than its GPT says (a grown disk, or an image written to a bigger disk) has
/// its backup GPT in the middle; moves it to the end, so the space after it is usable.
/// Returns whether it moved.
pub fn move_backup_to_end(dev: &Path) -> Result<bool> {
    let what = || {
        format!(
            "moving the backup GPT of {} to the end of the disk",
            dev.display()
        )
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {} to write", dev.display()))?;
    let mut gpt = Gpt::read(&mut f, SECTOR)
        .with_context(|| format!("reading the partition table of {}", dev.display()))?;
    let bytes = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("finding the size of {}", dev.display()))?;
    if !gpt.backup_misplaced(bytes) {
        return Ok(false);
    }
    println!(
        "Moving the backup GPT of {} to the end of the disk",
        dev.display()
    );
    gpt.move_backup_to_end(bytes).with_context(what)?;
    gpt.write(&mut f).with_context(what)?;
    f.sync_all().with_context(what)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use cos_customizer_common::cmd;

    /// An image with one partition, grown by `grow` bytes after its table was written.
    fn grown_image(dir: &Path, grow: u64) -> std::path::PathBuf {
        let img = dir.join("disk.img");
        File::create(&img).unwrap().set_len(8 << 20).unwrap();
        cmd::run_with_input(
            Command::new("sfdisk").args(["-q", "--no-reread"]).arg(&img),
            "label: gpt\nd1 : start=2048, size=4096, name=\"STATE\"\n",
        )
        .unwrap();
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len((8 << 20) + grow).unwrap();
        img
    }

    #[test]
    fn the_backup_of_a_grown_disk_moves_to_its_end_as_sfdisk_would() {
        let d = tempfile::tempdir().unwrap();
        let img = grown_image(d.path(), 8 << 20);
        let before = read(&img).unwrap();
        assert!(before.backup_misplaced(16 << 20));
        assert!(move_backup_to_end(&img).unwrap());
        let after = read(&img).unwrap();
        assert!(after.copies_agree(), "both copies written whole");
        assert_eq!(after.last_usable(), (16 << 20) / SECTOR - 34);
        assert_eq!(after.partitions(), before.partitions());
        assert!(
            !move_backup_to_end(&img).unwrap(),
            "a second call changes nothing"
        );
        // sgdisk agrees: the table is whole and its backup is at the end.
        let v = cmd::run_stdout(Command::new("sgdisk").arg("-v").arg(&img)).unwrap();
        assert!(v.contains("No problems found"), "{v}");
        let out = cmd::run_stdout(Command::new("sfdisk").arg("--dump").arg(&img)).unwrap();
        assert!(
            out.contains(&format!("last-lba: {}", (16 << 20) / SECTOR - 34)),
            "{out}"
        );
    }

    #[test]
    fn a_disk_that_fits_its_table_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let img = grown_image(d.path(), 0);
        let bytes = std::fs::read(&img).unwrap();
        assert!(!move_backup_to_end(&img).unwrap());
        assert_eq!(std::fs::read(&img).unwrap(), bytes);
        assert_eq!(read(&img).unwrap().unique_guid(1).unwrap().len(), 36);
    }
}
