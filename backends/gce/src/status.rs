//! What each status of the resources a build touches means to the build: every value the v1
//! discovery document lists for `Instance.status`, `Disk.status` and `Image.status` (a test
//! checks the tables against it), each "still going", "settled" or "failed". A value GCE adds
//! later is not a failure: it counts as still going, so the build waits for a status it knows
//! until its timeout, and says which value it met.

/// Where a resource is, as far as the build is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// In a passing state: look again later.
    Going,
    /// Where the build wants it: an instance stopped, a disk or image ready.
    Settled,
    /// It will not get there.
    Failed,
}

/// One documented status and what it means to the build.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// The API's value.
    pub value: &'static str,
    /// What the build makes of it.
    pub phase: Phase,
}

const fn s(value: &'static str, phase: Phase) -> Status {
    Status { value, phase }
}

/// `Instance.status`, for a build VM the build waits on to power off. GCE has no failed
/// instance: a guest that panics stays RUNNING (the watch's timeout catches it) or reboots,
/// and an instance deleted under the build is "not found", not a status.
pub const INSTANCE: &[Status] = &[
    // Resources are being allocated, then the instance is being started.
    s("PROVISIONING", Phase::Going),
    s("STAGING", Phase::Going),
    s("RUNNING", Phase::Going),
    // Flex-start VMs wait for capacity; a build VM may meet it on a reservation-only zone.
    s("PENDING", Phase::Going),
    s("REPAIRING", Phase::Going),
    // The guest powered off: these come on the way to TERMINATED.
    s("PENDING_STOP", Phase::Going),
    s("STOPPING", Phase::Going),
    s("DEPROVISIONING", Phase::Going),
    s("SUSPENDING", Phase::Going),
    // Stopped: the boot disk is no longer written and can become the image.
    s("TERMINATED", Phase::Settled),
    s("STOPPED", Phase::Settled),
    s("SUSPENDED", Phase::Settled),
];

/// `Disk.status`, for a disk the build created and is about to attach.
pub const DISK: &[Status] = &[
    s("CREATING", Phase::Going),
    // The source image's data is still being copied in.
    s("RESTORING", Phase::Going),
    // "Cannot be accessed, attached or detached" for now: GCE's own passing state.
    s("UNAVAILABLE", Phase::Going),
    s("READY", Phase::Settled),
    s("FAILED", Phase::Failed),
    // Someone else is deleting the build's disk.
    s("DELETING", Phase::Failed),
];

/// `Image.status`, for the output image (and an image of the same name found before the
/// build).
pub const IMAGE: &[Status] = &[
    s("PENDING", Phase::Going),
    s("READY", Phase::Settled),
    s("FAILED", Phase::Failed),
    s("DELETING", Phase::Failed),
];

/// [`IMAGE`] for a wait on whatever image holds a name: one being deleted is about to be
/// none, so it is waited out rather than failed.
pub const IMAGE_UNDER_NAME: &[Status] = &[
    s("PENDING", Phase::Going),
    s("READY", Phase::Settled),
    s("FAILED", Phase::Failed),
    s("DELETING", Phase::Going),
];

/// The phase of `value` in `table`, or `None` for a value this version does not know (which
/// callers treat as [`Phase::Going`], after saying so).
pub fn phase(table: &[Status], value: &str) -> Option<Phase> {
    table.iter().find(|s| s.value == value).map(|s| s.phase)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn documented(schema: &str) -> BTreeSet<String> {
        let text = include_str!("../tests/fixtures/compute.v1.trimmed.json");
        let doc: Value = serde_json::from_str(text).unwrap();
        doc["schemas"][schema]["properties"]["status"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.status has no enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn every_documented_status_is_in_its_table_and_nothing_else() {
        for (schema, table) in [("Instance", INSTANCE), ("Disk", DISK), ("Image", IMAGE)] {
            let ours: BTreeSet<String> = table.iter().map(|s| s.value.to_string()).collect();
            assert_eq!(ours.len(), table.len(), "{schema}: a value twice");
            assert_eq!(ours, documented(schema), "{schema}");
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase(INSTANCE, "DEPROVISIONING"), Some(Phase::Going));
        assert_eq!(phase(INSTANCE, "TERMINATED"), Some(Phase::Settled));
        assert_eq!(phase(DISK, "FAILED"), Some(Phase::Failed));
        assert_eq!(phase(IMAGE, "PENDING"), Some(Phase::Going));
        assert_eq!(phase(INSTANCE, "SOMETHING_NEW"), None);
    }
}
