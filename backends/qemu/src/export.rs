//! Making the output image file from a disk, atomically: written to a temporary name
//! beside the destination, fsynced, then renamed, so a failed build leaves no half file.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use cos_customizer_common::fsutil;
use cos_customizer_core::async_cmd;
use cos_customizer_core::backend::ImageFormat;
use cos_customizer_core::gce_tar;
use cos_customizer_core::output_lock;
use tempfile::TempPath;
use tokio::process::Command;

/// Writes `disk` to `out` in `format`; `scratch` holds the intermediate raw disk of a
/// tar.gz export.
pub async fn export(disk: &Path, out: &Path, format: ImageFormat, scratch: &Path) -> Result<()> {
    let dir = fsutil::parent_dir(out);
    let tmp = temp_path_beside(out)?;
    match format {
        ImageFormat::Raw => convert(disk, "raw", &tmp).await?,
        ImageFormat::Qcow2 => convert(disk, "qcow2", &tmp).await?,
        ImageFormat::TarGz => {
            let raw_dir = tempfile::Builder::new()
                .prefix("export-")
                .tempdir_in(scratch)
                .with_context(|| format!("creating an export folder in {}", scratch.display()))?;
            let raw = raw_dir.path().join(gce_tar::MEMBER);
            convert(disk, "raw", &raw).await?;
            gce_tar::write(&raw, &tmp).await?;
        }
    }
    tokio::fs::File::open(&tmp)
        .await
        .with_context(|| format!("opening {}", tmp.display()))?
        .sync_all()
        .await
        .with_context(|| format!("syncing {}", tmp.display()))?;
    tmp.persist(out)
        .with_context(|| format!("renaming the new image into {}", out.display()))?;
    fsutil::sync_dir(dir)
}

/// A not yet existing path next to `out`, removed on drop unless persisted; the tools
/// create the file themselves, so it gets the usual permissions.
fn temp_path_beside(out: &Path) -> Result<TempPath> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = fsutil::parent_dir(out).join(format!(
        "{}{}-{n}",
        output_lock::temp_prefix(out),
        std::process::id()
    ));
    TempPath::try_from_path(&tmp).with_context(|| format!("resolving {}", tmp.display()))
}

async fn convert(disk: &Path, format: &str, to: &Path) -> Result<()> {
    // qemu-img writes raw output sparse (it skips zero blocks).
    async_cmd::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", format])
            .arg(disk)
            .arg(to),
    )
    .await?;
    Ok(())
}
