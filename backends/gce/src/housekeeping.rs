//! What a GCE build does around the image, as the original's `finish-image-build` does: the
//! `-enable-cleanup` sweep of old build resources before the build, and the deprecation of
//! the family's older images once the image is made.

use std::time::Duration;

use anyhow::{Context, Result};
use cos_customizer_core::backend::{OutputImage, Report};

use crate::compute::Compute;
use crate::{deprecate, sweep};

/// How long the deprecation of one image may take (upstream: 600 s).
const DEPRECATE_TIMEOUT: Duration = Duration::from_secs(600);

/// Which of the steps around the build to take; none by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Delete this tool's build resources older than a day first (`-enable-cleanup`).
    pub sweep_old: bool,
    /// Deprecate the family's older images once the image is made (`-deprecate-old-images`).
    pub deprecate_old_images: bool,
    /// How long after its deprecation an older image is deleted (`-old-image-ttl`); `None`
    /// keeps it.
    pub old_image_ttl: Option<Duration>,
}

/// Deletes the old build resources in `project` and `zone`, and says what went.
pub async fn sweep(compute: &Compute, project: &str, zone: &str) -> Result<Vec<Report>> {
    let now = jiff::Timestamp::now();
    let swept = sweep::sweep_old(compute, project, zone, sweep::DEFAULT_AGE, now)
        .await
        .context("deleting old build VMs (-enable-cleanup)")?;
    let mut reports = Vec::new();
    for (what, names) in [
        ("instance", &swept.instances),
        ("disk", &swept.disks),
        ("image", &swept.images),
    ] {
        for name in names {
            reports.push(Report::Note(format!(
                "-enable-cleanup: deleted old {what} {name}"
            )));
        }
    }
    // As upstream, a leftover that cannot be deleted does not stop the build.
    for failure in &swept.failures {
        reports.push(Report::Note(format!("-enable-cleanup: warning: {failure}")));
    }
    Ok(reports)
}

/// Deprecates the older images of `out`'s family in favour of `out`.
pub async fn deprecate(
    compute: &Compute,
    out: &OutputImage,
    ttl: Option<Duration>,
) -> Result<Vec<Report>> {
    let deprecated = deprecate::deprecate_in_family(
        compute,
        &out.project,
        &out.family,
        &out.name,
        ttl,
        DEPRECATE_TIMEOUT,
    )
    .await
    .with_context(|| format!("deprecating the older images of family {}", out.family))?;
    if deprecated.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Report::Progress(format!(
        "Deprecated {} in favour of {}",
        deprecated.join(", "),
        out.name
    ))])
}
