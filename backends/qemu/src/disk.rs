//! Disk files: qcow2 overlays on top of the source, so the source is never written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cos_customizer_core::{async_cmd, gce_tar};
use serde::Deserialize;
use tokio::process::Command;

/// GB as GCE counts them (GiB).
pub const GB: u64 = 1 << 30;

/// What `qemu-img info --output=json` says about an image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageInfo {
    /// The file as qemu-img opened it: a backing file's name resolved against its
    /// overlay's folder, relative to the working directory when the overlay's path was.
    #[serde(default)]
    pub filename: String,
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    pub format_specific: Option<FormatSpecific>,
}

/// The part of `format-specific` that names other host files the image reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FormatSpecific {
    #[serde(default)]
    pub data: FormatData,
}

/// qcow2's external data file, if it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FormatData {
    #[serde(rename = "data-file")]
    pub data_file: Option<String>,
}

impl ImageInfo {
    /// A host file the image reads its data from (qcow2's `data_file`), if any.
    pub fn data_file(&self) -> Option<&str> {
        self.format_specific.as_ref()?.data.data_file.as_deref()
    }
}

/// Parses `qemu-img info --output=json` of `path`.
pub fn parse_info(json: &[u8], path: &Path) -> Result<ImageInfo> {
    serde_json::from_slice(json)
        .with_context(|| format!("parsing qemu-img info of {}", path.display()))
}

/// Parses `qemu-img info --backing-chain --output=json` of `path`: the image first, then
/// each backing file in turn.
pub fn parse_chain(json: &[u8], path: &Path) -> Result<Vec<ImageInfo>> {
    serde_json::from_slice(json).with_context(|| {
        format!(
            "parsing qemu-img info --backing-chain of {}",
            path.display()
        )
    })
}

pub async fn image_info(path: &Path) -> Result<ImageInfo> {
    // -U: also works while a running QEMU holds the image's lock.
    let out = async_cmd::run(
        Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(path),
    )
    .await?;
    parse_info(&out.stdout, path)
}

/// Extracts `disk.raw` from a GCE image archive into `dir`, holes kept where the
/// archive recorded them.
pub async fn extract_disk_raw(archive: &Path, dir: &Path) -> Result<PathBuf> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    async_cmd::run(
        Command::new("tar")
            .arg("-xzSf")
            .arg(archive)
            .arg("-C")
            .arg(dir)
            .arg(gce_tar::MEMBER),
    )
    .await
    .with_context(|| {
        format!(
            "extracting disk.raw from {} (a GCE image archive holds disk.raw)",
            archive.display()
        )
    })?;
    let disk = dir.join(gce_tar::MEMBER);
    // A symlink or a later member of the same name would put a host file in the output.
    let meta = tokio::fs::symlink_metadata(&disk)
        .await
        .with_context(|| format!("reading {}", disk.display()))?;
    if !meta.is_file() {
        bail!(
            "disk.raw in {} is not a regular file (a link to a host file?): make the archive with `tar -czSf image.tar.gz disk.raw`",
            archive.display()
        );
    }
    Ok(disk)
}

/// The virtual size for a disk of `size_gb` on a source of `source_bytes`; `None`
/// keeps the source's size.
pub fn target_size(size_gb: Option<u64>, source_bytes: u64, source: &Path) -> Result<Option<u64>> {
    let Some(gb) = size_gb else {
        return Ok(None);
    };
    let bytes = gb
        .checked_mul(GB)
        .context("computing the disk size in bytes")?;
    if bytes < source_bytes {
        bail!(
            "the requested disk size of {gb} GB ({bytes} bytes) is smaller than the source image {} \
             ({source_bytes} bytes)",
            source.display()
        );
    }
    Ok(Some(bytes))
}

/// Creates a qcow2 overlay at `overlay` backed by `source` (absolute), of `size` bytes
/// or the source's size.
pub async fn create_overlay(
    source: &Path,
    format: &str,
    overlay: &Path,
    size: Option<u64>,
) -> Result<()> {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(source)
        .args(["-F", format])
        .arg(overlay);
    if let Some(bytes) = size {
        c.arg(bytes.to_string());
    }
    async_cmd::run(&mut c).await?;
    Ok(())
}

/// Grows a disk file that no VM has open.
pub async fn resize_offline(path: &Path, bytes: u64) -> Result<()> {
    async_cmd::run(
        Command::new("qemu-img")
            .args(["resize", "-q", "-f", "qcow2"])
            .arg(path)
            .arg(bytes.to_string()),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_must_not_shrink_the_source() {
        let src = Path::new("/img/cos.raw");
        assert_eq!(target_size(None, 5 * GB, src).unwrap(), None);
        assert_eq!(target_size(Some(10), 5 * GB, src).unwrap(), Some(10 * GB));
        assert_eq!(target_size(Some(5), 5 * GB, src).unwrap(), Some(5 * GB));
        let e = target_size(Some(4), 5 * GB + 1, src)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("4 GB") && e.contains("/img/cos.raw") && e.contains("5368709121 bytes"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_disk_raw_that_is_a_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("disk.raw"), "regular").unwrap();
        // gzip -k below turns two.tar into this.
        let archive = d.path().join("two.tar.gz");
        // A regular disk.raw first (what a first-member check sees), then a link.
        let links = d.path().join("links");
        std::fs::create_dir(&links).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", links.join("disk.raw")).unwrap();
        let tar = d.path().join("two.tar");
        for (dir, flag) in [(&src, "-cf"), (&links, "-rf")] {
            let ok = std::process::Command::new("tar")
                .arg(flag)
                .arg(&tar)
                .arg("-C")
                .arg(dir)
                .arg("disk.raw")
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        let gz = std::process::Command::new("gzip")
            .arg("-k")
            .arg(&tar)
            .status()
            .unwrap();
        assert!(gz.success());
        let e = extract_disk_raw(&archive, &d.path().join("out"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
