//! GCE's image import format, written once for every backend: a gzipped tar holding one
//! member, `disk.raw`, sparse in the old GNU format, as GCE's import documentation makes it
//! (`tar --format=oldgnu -Sczf`) and `images.insert` with `rawDisk` reads it. GNU tar
//! writes it, since it finds the raw disk's holes and keeps them out of the archive.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::async_cmd;

/// The one member's name, which GCE requires.
pub const MEMBER: &str = "disk.raw";

/// Writes `archive`, holding the raw disk file `raw` (whatever its name) as [`MEMBER`].
pub async fn write(raw: &Path, archive: &Path) -> Result<()> {
    let dir = cos_customizer_common::fsutil::parent_dir(raw);
    let name = raw
        .file_name()
        .with_context(|| format!("{} names no file", raw.display()))?;
    async_cmd::run(
        Command::new("tar")
            .args(["--format=oldgnu", "-Sczf"])
            .arg(archive)
            .arg("--dereference")
            .arg(format!("--transform=s,.*,{MEMBER},"))
            .arg("-C")
            .arg(dir)
            .arg("--")
            .arg(name),
    )
    .await
    .with_context(|| {
        format!(
            "writing {} as GCE's import tar.gz of {}",
            archive.display(),
            raw.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::Command;

    use super::*;
    use cos_customizer_common::cmd;

    const MIB: usize = 1 << 20;

    /// A 3 MiB disk, zero but for a byte at 1 MiB, written sparse (no file system here
    /// stores holes of zeros written out).
    fn raw_disk(path: &Path) -> Vec<u8> {
        let mut content = vec![0u8; 3 * MIB];
        content[MIB] = 0xaa;
        let f = std::fs::File::create(path).unwrap();
        f.set_len(content.len() as u64).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &content[MIB..=MIB], MIB as u64).unwrap();
        content
    }

    #[tokio::test]
    async fn one_sparse_old_gnu_member_named_disk_raw_with_the_content() {
        let dir = tempfile::tempdir().unwrap();
        // Not named disk.raw, beginning with a dash, and reached through a link.
        let raw = dir.path().join("-cidata.img");
        let content = raw_disk(&raw);
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&raw, &link).unwrap();
        let archive = dir.path().join("out.tar.gz");
        write(&link, &archive).await.unwrap();

        let listing = cmd::run_stdout(Command::new("tar").arg("-tvzf").arg(&archive)).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 1, "{listing}");
        let fields: Vec<&str> = lines[0].split_whitespace().collect();
        assert!(fields[0].starts_with('-'), "a regular file: {listing}");
        assert_eq!(fields[2], (3 * MIB).to_string(), "{listing}");
        assert_eq!(fields.last(), Some(&"disk.raw"), "{listing}");

        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
        let mut tar = tar::Archive::new(gz);
        let mut entries = tar.entries().unwrap();
        let mut first = entries.next().unwrap().unwrap();
        assert!(first.header().as_gnu().is_some(), "old GNU format");
        assert!(first.header().entry_type().is_gnu_sparse(), "stored sparse");
        // Only the data block is stored; the holes are not.
        assert!(first.header().entry_size().unwrap() < MIB as u64);
        let mut back = Vec::new();
        first.read_to_end(&mut back).unwrap();
        assert!(back == content, "the content comes back whole");
        drop(first);
        assert!(entries.next().is_none(), "one member");
    }

    #[tokio::test]
    async fn a_missing_disk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = write(&dir.path().join("gone.img"), &dir.path().join("o.tar.gz"))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("gone.img"), "{e:#}");
    }
}
