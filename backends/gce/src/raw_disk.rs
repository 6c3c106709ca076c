//! GCE's import format for a raw disk file: a gzipped tar holding one sparse member,
//! `disk.raw`, in the old GNU format (what `images.insert` with `rawDisk` reads).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::process::Command;

use cos_customizer_core::async_cmd;

/// Packs the raw disk `raw` as `<dir>/disk.tar.gz`, linking (or copying) it in as
/// `<dir>/disk.raw` first since the member must have that name; returns the archive's path.
pub async fn pack(raw: &Path, dir: &Path) -> Result<PathBuf> {
    let member = dir.join("disk.raw");
    if std::fs::hard_link(raw, &member).is_err() {
        std::fs::copy(raw, &member)
            .with_context(|| format!("copying {} to {}", raw.display(), member.display()))?;
    }
    let archive = dir.join("disk.tar.gz");
    async_cmd::run(
        Command::new("tar")
            .args(["--format=oldgnu", "-Sczf"])
            .arg(&archive)
            .arg("-C")
            .arg(dir)
            .arg("disk.raw"),
    )
    .await
    .with_context(|| format!("packing {} for import into GCE", raw.display()))?;
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[tokio::test]
    async fn the_archive_holds_only_disk_raw() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("cidata.img");
        let mut content = vec![0u8; 3 << 20];
        content[1 << 20] = 0xaa;
        std::fs::write(&raw, &content).unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let archive = pack(&raw, &staging).await.unwrap();
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
        let mut tar = tar::Archive::new(gz);
        let mut entries = tar.entries().unwrap();
        let mut first = entries.next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str(), Some("disk.raw"));
        assert!(first.header().as_gnu().is_some(), "GNU format");
        let mut back = Vec::new();
        first.read_to_end(&mut back).unwrap();
        assert_eq!(back, content);
        drop(first);
        assert!(entries.next().is_none(), "one member");
    }
}
