//! The CIDATA disk as the GCE backend imports it: [`gce_tar`]'s archive of a raw disk file,
//! in the staging folder it uploads from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use cos_customizer_core::gce_tar;

/// Packs the raw disk `raw` as `<dir>/disk.tar.gz`; returns the archive's path.
pub async fn pack(raw: &Path, dir: &Path) -> Result<PathBuf> {
    let archive = dir.join("disk.tar.gz");
    gce_tar::write(raw, &archive)
        .await
        .with_context(|| format!("packing {} for import into GCE", raw.display()))?;
    Ok(archive)
}
