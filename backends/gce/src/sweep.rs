//! `-enable-cleanup`: deletes what earlier builds left behind in the build project and zone,
//! before the build starts, as upstream does.
//!
//! Upstream deletes the instances labelled `cos-customizer-cleanup` created more than a day
//! ago. This sweep does that, waits for them to go, and then also deletes the disks and the
//! temporary images of earlier builds: those labelled `cos-customizer-build=<id>`, named
//! `<role>-build-image-<id>` as this builder names them, older than the same cutoff, and (a
//! disk) attached to no instance or (an image) in no family. Nothing without our labels, or
//! newer than the cutoff, is touched: a build running next to this one keeps its resources.
//!
//! One resource that cannot be deleted or dated does not stop the sweep: it is reported in
//! [`Swept::failures`].

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jiff::Timestamp;

use crate::compute::in_use::InUseRetry;
use crate::compute::Compute;
use crate::error::{kind_of, ErrorKind};
use crate::names::{BUILD_LABEL, CLEANUP_LABEL, WORKFLOW};

/// Upstream's age for `-enable-cleanup` (`cleanupVMTTL`): a day.
pub const DEFAULT_AGE: Duration = Duration::from_secs(24 * 3600);

/// The youngest age a sweep accepts (upstream's limit): a younger cutoff could delete the
/// resources of a build that is still running.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// How long one deletion may take.
const OP_TIMEOUT: Duration = Duration::from_secs(600);

/// How a disk delete is retried while GCE still sees the disk attached to an instance the
/// sweep has just deleted.
const IN_USE: InUseRetry = InUseRetry {
    attempts: 4,
    backoff: Duration::from_secs(1),
};

/// What a sweep deleted, and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// The instances deleted.
    pub instances: Vec<String>,
    /// The disks deleted.
    pub disks: Vec<String>,
    /// The images deleted.
    pub images: Vec<String>,
    /// The resources left in place because deleting or dating them failed, each with why.
    pub failures: Vec<String>,
}

/// The moment before which a resource counts as old: `now - older_than`.
fn cutoff(now: Timestamp, older_than: Duration) -> Result<Timestamp> {
    now.checked_sub(older_than)
        .with_context(|| format!("{older_than:?} before {now} is out of range"))
}

/// Whether a resource created at `created` (GCE's RFC 3339 `creationTimestamp`) is at or
/// before `cutoff`.
fn is_old(created: &str, cutoff: Timestamp) -> Result<bool> {
    let created: Timestamp = created
        .parse()
        .with_context(|| format!("its creationTimestamp {created:?} is not RFC 3339"))?;
    Ok(created <= cutoff)
}

/// Whether a disk or image is one this builder made: labelled with a build id and named
/// `<role>-build-image-<id>` for that id (see [`crate::names::daisy_name`]). The name is
/// checked too because a user's own image could carry the label (through `-labels`).
fn made_by_a_build(name: &str, labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(BUILD_LABEL)
        .is_some_and(|id| !id.is_empty() && name.ends_with(&format!("-{WORKFLOW}-{id}")))
}

/// The outcome of deleting one resource: recorded as deleted, skipped if it was already gone,
/// or recorded as a failure.
fn record(
    deleted: &mut Vec<String>,
    failures: &mut Vec<String>,
    what: &str,
    name: &str,
    result: Result<()>,
) {
    match result {
        Ok(()) => deleted.push(name.to_string()),
        Err(e) if kind_of(&e) == Some(ErrorKind::NotFound) => {}
        Err(e) => failures.push(format!("{what} {name}: {e:#}")),
    }
}

/// Deletes, in `project` and `zone`, the instances labelled `cos-customizer-cleanup` created
/// `older_than` or more before `now`, then the disks and temporary images of earlier builds
/// older than that (see the module's text). Fails only when `older_than` is under
/// [`MIN_AGE`] or a list call fails; a resource that cannot be deleted is in
/// [`Swept::failures`].
pub async fn sweep_old(
    compute: &Compute,
    project: &str,
    zone: &str,
    older_than: Duration,
    now: Timestamp,
) -> Result<Swept> {
    if older_than < MIN_AGE {
        bail!(
            "cleanup age {older_than:?} is under {MIN_AGE:?}: it could delete the resources \
             of a build that is still running"
        );
    }
    let cutoff = cutoff(now, older_than)?;
    let mut swept = Swept::default();

    let instances = compute
        .instances_list(project, zone, None)
        .await
        .with_context(|| format!("listing the instances of project {project} in zone {zone}"))?;
    // Send every instance delete first: each takes a while, and GCE works on them together.
    let mut deleting = Vec::new();
    for instance in instances
        .iter()
        .filter(|i| i.labels.contains_key(CLEANUP_LABEL))
    {
        let name = &instance.name;
        match is_old(&instance.creation_timestamp, cutoff) {
            Ok(false) => {}
            Ok(true) => match compute.instances_delete(project, zone, name).await {
                Ok(op) => deleting.push((name, op)),
                Err(e) => record(
                    &mut swept.instances,
                    &mut swept.failures,
                    "instance",
                    name,
                    Err(e),
                ),
            },
            Err(e) => swept.failures.push(format!("instance {name}: {e:#}")),
        }
    }
    for (name, op) in deleting {
        let result = compute.wait(project, op, OP_TIMEOUT).await.map(drop);
        record(
            &mut swept.instances,
            &mut swept.failures,
            "instance",
            name,
            result,
        );
    }

    // Listed after the instances are gone, so their disks no longer show them as users.
    let disks = compute
        .disks_list(project, zone, None)
        .await
        .with_context(|| format!("listing the disks of project {project} in zone {zone}"))?;
    for disk in disks
        .iter()
        .filter(|d| d.users.is_empty() && made_by_a_build(&d.name, &d.labels))
    {
        let name = &disk.name;
        match is_old(&disk.creation_timestamp, cutoff) {
            Ok(false) => {}
            Ok(true) => {
                let result = compute
                    .delete_disk_when_free(project, zone, name, OP_TIMEOUT, IN_USE)
                    .await;
                record(&mut swept.disks, &mut swept.failures, "disk", name, result);
            }
            Err(e) => swept.failures.push(format!("disk {name}: {e:#}")),
        }
    }

    let images = compute
        .images_list(project, None)
        .await
        .with_context(|| format!("listing the images of project {project}"))?;
    // An image in a family is an output, never a temporary one.
    for image in images
        .iter()
        .filter(|i| i.family.is_none() && made_by_a_build(&i.name, &i.labels))
    {
        let name = &image.name;
        match is_old(&image.creation_timestamp, cutoff) {
            Ok(false) => {}
            Ok(true) => {
                let result = match compute.images_delete(project, name).await {
                    Ok(op) => compute.wait(project, op, OP_TIMEOUT).await.map(drop),
                    Err(e) => Err(e),
                };
                record(
                    &mut swept.images,
                    &mut swept.failures,
                    "image",
                    name,
                    result,
                );
            }
            Err(e) => swept.failures.push(format!("image {name}: {e:#}")),
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::build_labels;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_cutoff_is_older_than_before_now() {
        let now = at("2026-11-30T12:00:00Z");
        assert_eq!(
            cutoff(now, DEFAULT_AGE).unwrap(),
            at("2026-11-29T12:00:00Z")
        );
        assert!(cutoff(Timestamp::MIN, DEFAULT_AGE).is_err());
    }

    #[test]
    fn age_is_read_from_gces_timestamps_in_any_offset() {
        let cutoff = at("2026-11-29T12:00:00Z");
        // GCE writes Pacific time: 04:00:00.5-08:00 is 12:00:00.5Z, just after the cutoff.
        assert!(!is_old("2026-11-29T04:00:00.500-08:00", cutoff).unwrap());
        assert!(is_old("2026-11-29T03:59:59.999-08:00", cutoff).unwrap());
        assert!(
            is_old("2026-11-29T12:00:00Z", cutoff).unwrap(),
            "the cutoff itself"
        );
        assert!(!is_old("2026-11-30T00:00:00+01:00", cutoff).unwrap());
        let e = is_old("yesterday", cutoff).unwrap_err().to_string();
        assert!(e.contains("\"yesterday\" is not RFC 3339"), "{e}");
        assert!(is_old("", cutoff).is_err(), "a missing timestamp is no age");
    }

    #[test]
    fn only_resources_named_and_labelled_by_a_build_are_ours() {
        let ours = build_labels("b4x9q");
        assert!(made_by_a_build("boot-disk-build-image-b4x9q", &ours));
        assert!(made_by_a_build("cidata-build-image-b4x9q", &ours));
        // Another build's name, a user's image that copied the label, no label, an empty id.
        assert!(!made_by_a_build("boot-disk-build-image-zzzzz", &ours));
        assert!(!made_by_a_build("my-image", &ours));
        assert!(!made_by_a_build(
            "boot-disk-build-image-b4x9q",
            &BTreeMap::from([(CLEANUP_LABEL.to_string(), String::new())])
        ));
        assert!(!made_by_a_build(
            "boot-disk-build-image-",
            &BTreeMap::from([(BUILD_LABEL.to_string(), String::new())])
        ));
    }

    #[tokio::test]
    async fn an_age_under_an_hour_is_refused_before_any_call() {
        // Nothing listens on port 9: a call would fail with another error.
        let api = crate::http::Api::new("http://127.0.0.1:9/compute/v1/", crate::auth::Auth::None)
            .unwrap();
        let compute = Compute::new(api);
        let e = sweep_old(
            &compute,
            "p",
            "z",
            Duration::from_secs(600),
            Timestamp::now(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("under 3600s"), "{e}");
    }
}
