//! Input rules GCE enforces: resource names (RFC 1035), labels, `requestId` UUIDs, and the
//! URL forms of references: `projects/P/…`, the full link under `https://www.googleapis.com/
//! compute/v1/` or `https://compute.googleapis.com/compute/v1/`, and, where the discovery
//! document's field says GCE takes one, a partial `zones/Z/…`, `regions/R/…` or `global/…`
//! in the request's project ([`reference_in`]); nothing else (a bare name is refused).

use serde_json::{Map, Value};

use crate::links::API_ROOT;
use crate::reply::ApiError;

/// Checks a resource name: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub(crate) fn name(field: &str, name: &str) -> Result<(), ApiError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "Invalid value for field '{field}': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
        )))
    }
}

/// Checks a `labels` map: at most 64 entries, keys 1–63 characters starting with a lower-case
/// letter, keys and values of lower-case letters, digits, `_` and `-`, values up to 63.
pub(crate) fn labels(labels: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let Some(labels) = labels else {
        return Ok(Map::new());
    };
    let map = labels
        .as_object()
        .ok_or_else(|| ApiError::invalid("Invalid value for field 'labels'"))?;
    if map.len() > 64 {
        return Err(ApiError::invalid("Too many labels: at most 64 are allowed"));
    }
    let allowed = |c: char| c.is_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    for (key, value) in map {
        let value = value.as_str().unwrap_or("\u{0}");
        let key_ok = key.chars().count() <= 63
            && key.chars().next().is_some_and(char::is_lowercase)
            && key.chars().all(allowed);
        let value_ok = value.chars().count() <= 63 && value.chars().all(allowed);
        if !key_ok || !value_ok {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'labels': label '{key}' = '{value}' does not follow GCE's label rules"
            )));
        }
    }
    Ok(map.clone())
}

/// Checks a `requestId`: a UUID other than all zeros.
pub(crate) fn request_id(id: &str) -> Result<(), ApiError> {
    let groups: Vec<&str> = id.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    let hex = groups
        .iter()
        .all(|g| g.bytes().all(|c| c.is_ascii_hexdigit()));
    let zero = id.bytes().all(|c| c == b'0' || c == b'-');
    if shape && hex && !zero {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "Invalid value for field 'requestId': '{id}'. Must be a valid UUID other than zero"
        )))
    }
}

/// Parses a reference in one of GCE's two documented forms against `shape`, where `*` marks a
/// captured segment: `["projects","*","zones","*","disks","*"]` accepts
/// `projects/P/zones/Z/disks/D` and the same under `https://www.googleapis.com/compute/v1/`.
/// Returns the captured segments.
pub(crate) fn reference(field: &str, value: &str, shape: &[&str]) -> Result<Vec<String>, ApiError> {
    try_reference(value, shape).ok_or_else(|| {
        let form = shape.join("/").replace('*', "…");
        ApiError::invalid(format!(
            "Invalid value for field '{field}': '{value}'. Expected '{form}' or '{API_ROOT}{form}'"
        ))
    })
}

/// [`reference`] that also takes a partial URL without its project (`zones/Z/machineTypes/M`,
/// `global/networks/default`, `regions/R/subnetworks/S`, `global/images/I`), which GCE
/// completes with the request's `project`: the discovery document documents these forms for
/// `machineType`, `disks[].source`, `sourceImage`, `sourceDisk`, `network` and `subnetwork`.
pub(crate) fn reference_in(
    field: &str,
    value: &str,
    shape: &[&str],
    project: &str,
) -> Result<Vec<String>, ApiError> {
    match project_less(value, project) {
        Some(full) => reference(field, &full, shape).map_err(|_| {
            ApiError::invalid(format!("Invalid value for field '{field}': '{value}'."))
        }),
        None => reference(field, value, shape),
    }
}

/// `projects/{project}/{value}` for a partial URL that starts below the project.
pub(crate) fn project_less(value: &str, project: &str) -> Option<String> {
    ["zones/", "regions/", "global/"]
        .iter()
        .any(|p| value.starts_with(p))
        .then(|| format!("projects/{project}/{value}"))
}

/// [`reference`] without the error: `None` if `value` has another form.
pub(crate) fn try_reference(value: &str, shape: &[&str]) -> Option<Vec<String>> {
    let path = crate::links::unlink(value);
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() != shape.len() {
        return None;
    }
    let mut captured = Vec::new();
    for (part, want) in parts.iter().zip(shape) {
        match *want {
            "*" if !part.is_empty() => captured.push((*part).to_string()),
            "*" => return None,
            literal if literal == *part => {}
            _ => return None,
        }
    }
    Some(captured)
}

/// Refuses fields of `body` outside `allowed`: the emulator models only those, and silently
/// ignoring one would hide what a client meant.
pub(crate) fn only_fields(body: &Value, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    for key in body.as_object().into_iter().flatten().map(|f| f.0) {
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::invalid(format!(
                "gce-emulator does not model field '{key}' of {what}"
            )));
        }
    }
    Ok(())
}

/// The common checks of an insert body: only `allowed` fields, a valid `name`, valid
/// `labels`. Returns the name and the labels.
pub(crate) fn insert_body<'a>(
    body: &'a Value,
    allowed: &[&str],
    what: &str,
) -> Result<(&'a str, Map<String, Value>), ApiError> {
    only_fields(body, allowed, what)?;
    let name = required(body, "name")?;
    self::name("resource.name", name)?;
    Ok((name, labels(body.get("labels"))?))
}

/// A required string field.
pub(crate) fn required<'a>(body: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    body[field]
        .as_str()
        .ok_or_else(|| ApiError::invalid(format!("Required field '{field}' not specified")))
}

/// The shape of an image reference by name.
pub(crate) const IMAGE: &[&str] = &["projects", "*", "global", "images", "*"];
/// The shape of an image reference by family.
pub(crate) const IMAGE_FAMILY: &[&str] = &["projects", "*", "global", "images", "family", "*"];
/// The shape of a disk reference.
pub(crate) const DISK: &[&str] = &["projects", "*", "zones", "*", "disks", "*"];
/// The shape of a disk type reference.
pub(crate) const DISK_TYPE: &[&str] = &["projects", "*", "zones", "*", "diskTypes", "*"];
/// The shape of a machine type reference.
pub(crate) const MACHINE_TYPE: &[&str] = &["projects", "*", "zones", "*", "machineTypes", "*"];
/// The shape of a network reference.
pub(crate) const NETWORK: &[&str] = &["projects", "*", "global", "networks", "*"];
/// The shape of a subnetwork reference.
pub(crate) const SUBNETWORK: &[&str] = &["projects", "*", "regions", "*", "subnetworks", "*"];
/// The shape of a license reference.
pub(crate) const LICENSE: &[&str] = &["projects", "*", "global", "licenses", "*"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1035() {
        for good in ["a", "boot-disk-build-image-x1y2z", &"a".repeat(63)] {
            assert!(name("name", good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "A", "a-", "a_b", &"a".repeat(64)] {
            assert!(name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_follow_gce_rules() {
        let ok = serde_json::json!({"cos-customizer-cleanup": "", "b_1": "x-y", "ключ": "v"});
        assert!(labels(Some(&ok)).is_ok());
        for bad in [
            serde_json::json!({"A": "b"}),
            serde_json::json!({"1a": "b"}),
            serde_json::json!({"a": "B"}),
            serde_json::json!({"a": 1}),
            serde_json::json!({"a": "x".repeat(64)}),
        ] {
            assert!(labels(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_are_uuids() {
        assert!(request_id("123e4567-e89b-12d3-a456-426614174000").is_ok());
        assert!(request_id("00000000-0000-0000-0000-000000000000").is_err());
        assert!(request_id("retry-1").is_err());
    }

    #[test]
    fn references_take_the_partial_and_full_forms_only() {
        let full = format!("{API_ROOT}projects/p/zones/z/disks/d");
        let other_root = "https://compute.googleapis.com/compute/v1/projects/p/zones/z/disks/d";
        for ok in ["projects/p/zones/z/disks/d", full.as_str(), other_root] {
            assert_eq!(reference("source", ok, DISK).unwrap(), ["p", "z", "d"]);
        }
        // Without its project only where the field takes that form, in the request's project.
        assert!(reference("source", "zones/z/disks/d", DISK).is_err());
        assert_eq!(
            reference_in("source", "zones/z/disks/d", DISK, "q").unwrap(),
            ["q", "z", "d"]
        );
        for bad in [
            "d",
            "disks/d",
            "http://www.googleapis.com/compute/v1/projects/p/zones/z/disks/d",
            "projects/p/zones/z/disks/",
            "projects/p/regions/z/disks/d",
            "zones/z/disks",
        ] {
            assert!(reference_in("source", bad, DISK, "q").is_err(), "{bad}");
        }
    }
}
