//! `-deprecate-old-images`: once the new image exists, every other image of its family that is
//! still active becomes DEPRECATED in its favour, as upstream's `DeprecateInFamily` does: list
//! the family with `(family = F) (name != N)`, send every deprecation, then wait for them all.
//!
//! GCE treats the deprecation's `deleted` time as information only ("the status will not
//! change unless the client explicitly changes it"): a TTL records when an old image may be
//! deleted, and nothing deletes it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::compute::body;
use crate::compute::model::Image;
use crate::compute::Compute;
use crate::names::check_name;

/// The server-side filter upstream lists the family with: every image of `family` but
/// `new_image`.
fn family_filter(family: &str, new_image: &str) -> String {
    format!("(family = {family}) (name != {new_image})")
}

/// Whether `image` is one to deprecate in favour of `new_image`. The family and name are
/// checked again so that a server ignoring the filter can never get the new image deprecated;
/// images already DEPRECATED, OBSOLETE or DELETED keep their state, as upstream leaves them.
fn to_deprecate(image: &Image, family: &str, new_image: &str) -> bool {
    image.name != new_image
        && image.family.as_deref() == Some(family)
        && image
            .deprecated
            .as_ref()
            .is_none_or(|d| d.state == "ACTIVE")
}

/// Deprecates every image of `family` in `project` except `new_image` (which replaces them)
/// and those already deprecated; `ttl` (if given and not zero) sets their `deleted` time to
/// now + `ttl`. Waits for every deprecation, all within `timeout`, and returns the names of
/// the images deprecated.
pub async fn deprecate_in_family(
    compute: &Compute,
    project: &str,
    family: &str,
    new_image: &str,
    ttl: Option<Duration>,
    timeout: Duration,
) -> Result<Vec<String>> {
    if family.is_empty() {
        bail!("deprecating old images needs the output image's family: set -image-family");
    }
    check_name(family).context("the output image's family (-image-family)")?;
    check_name(new_image).context("the output image's name")?;
    let deadline = Instant::now() + timeout;
    let filter = family_filter(family, new_image);
    let images = compute
        .images_list(project, Some(&filter))
        .await
        .with_context(|| format!("listing the images of family {family} in project {project}"))?;
    let replacement = format!("projects/{project}/global/images/{new_image}");
    let status = body::deprecate(
        &replacement,
        jiff::Timestamp::now(),
        ttl.filter(|t| !t.is_zero()),
    );
    // Send them all first, as upstream does, so GCE works on them together.
    let mut pending = Vec::new();
    for image in images.iter().filter(|i| to_deprecate(i, family, new_image)) {
        let op = compute
            .images_deprecate(project, &image.name, &status)
            .await
            .with_context(|| format!("deprecating image {} of project {project}", image.name))?;
        pending.push((image.name.clone(), op));
    }
    let mut deprecated = Vec::new();
    for (name, op) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        compute.wait(project, op, left).await.with_context(|| {
            format!(
                "deprecating image {name} of project {project} in favour of {new_image} \
                 (all deprecations must finish within {timeout:?})"
            )
        })?;
        deprecated.push(name);
    }
    Ok(deprecated)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn image(value: serde_json::Value) -> Image {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_filter_is_upstreams() {
        assert_eq!(
            family_filter("cos-custom", "cos-custom-2"),
            "(family = cos-custom) (name != cos-custom-2)"
        );
    }

    #[test]
    fn only_active_images_of_the_family_other_than_the_new_one_are_deprecated() {
        let old = |deprecated: serde_json::Value| {
            let mut v = json!({"name": "old", "family": "f"});
            if !deprecated.is_null() {
                v["deprecated"] = deprecated;
            }
            image(v)
        };
        assert!(to_deprecate(&old(json!(null)), "f", "new"));
        assert!(to_deprecate(&old(json!({"state": "ACTIVE"})), "f", "new"));
        for state in ["DEPRECATED", "OBSOLETE", "DELETED"] {
            assert!(
                !to_deprecate(&old(json!({"state": state})), "f", "new"),
                "{state}"
            );
        }
        assert!(!to_deprecate(
            &image(json!({"name": "new", "family": "f"})),
            "f",
            "new"
        ));
        assert!(!to_deprecate(
            &image(json!({"name": "old", "family": "g"})),
            "f",
            "new"
        ));
        assert!(!to_deprecate(&image(json!({"name": "old"})), "f", "new"));
    }
}
