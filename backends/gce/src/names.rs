//! Names GCE will accept and the ones this builder makes: the build id, Daisy-compatible
//! resource names (so dashboards and alert rules written for upstream keep matching), RFC 1035
//! names and GCE's label rules, checked locally so a bad name fails before any resource exists.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// Daisy's alphabet for workflow ids: lower-case letters without vowels (so an id never spells
/// a word) and digits.
pub const ID_ALPHABET: &str = "bdghjlmnpqrstvwxyz0123456789";

/// The label every resource a build creates carries, so `-enable-cleanup` can find leftovers
/// (upstream's name).
pub const CLEANUP_LABEL: &str = "cos-customizer-cleanup";

/// The label that holds the build id, so one build's leftovers can be told from another's.
pub const BUILD_LABEL: &str = "cos-customizer-build";

/// The most labels GCE allows on one resource.
pub const MAX_LABELS: usize = 64;

/// A new build id: five random characters of [`ID_ALPHABET`], as Daisy makes them.
pub fn build_id() -> String {
    let alphabet = ID_ALPHABET.as_bytes();
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| alphabet[usize::from(*b) % alphabet.len()] as char)
        .collect()
}

/// The Daisy workflow name the original's resources carry, kept so its dashboards and
/// cleanup scripts find ours: `boot-disk-build-image-<id>`.
pub const WORKFLOW: &str = "build-image";

/// Daisy's `genName`: `<role>-<workflow>-<id>`, the prefix cut to 56 bytes if longer than 57,
/// the whole cut to 63 bytes if longer than 64, lower-cased. For this builder the workflow is
/// `build-image`, so the boot disk of build `b4x9q` is `boot-disk-build-image-b4x9q`.
pub fn daisy_name(role: &str, workflow: &str, id: &str) -> String {
    let mut prefix = format!("{role}-{workflow}");
    if prefix.len() > 57 {
        prefix.truncate(56);
    }
    let mut name = format!("{prefix}-{id}");
    if name.len() > 64 {
        name.truncate(63);
    }
    name.to_lowercase()
}

/// The labels of every resource build `id` creates.
pub fn build_labels(id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLEANUP_LABEL.to_string(), String::new()),
        (BUILD_LABEL.to_string(), id.to_string()),
    ])
}

/// Checks `name` against RFC 1035 as GCE applies it: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn check_name(name: &str) -> Result<()> {
    if !cos_customizer_common::names::is_resource_name(name) {
        bail!(
            "{name:?} is not a valid GCE resource name: it must be 1-63 characters of lower-case \
             letters, digits and '-', start with a letter and not end with '-'"
        );
    }
    Ok(())
}

/// Whether `c` may appear in a label: lower-case letters (international ones too), digits,
/// `_` and `-`.
fn label_char(c: char) -> bool {
    c.is_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// Checks one label key: 1-63 characters, starting with a lower-case letter.
pub fn check_label_key(key: &str) -> Result<()> {
    let len = key.chars().count();
    if !(1..=63).contains(&len)
        || !key.starts_with(char::is_lowercase)
        || !key.chars().all(label_char)
    {
        bail!(
            "label key {key:?} is invalid: it must be 1-63 characters of lower-case letters, \
             digits, '_' and '-', starting with a lower-case letter"
        );
    }
    Ok(())
}

/// Checks one label value: 0-63 characters.
pub fn check_label_value(key: &str, value: &str) -> Result<()> {
    if value.chars().count() > 63 || !value.chars().all(label_char) {
        bail!(
            "the value {value:?} of label {key:?} is invalid: it must be at most 63 characters \
             of lower-case letters, digits, '_' and '-'"
        );
    }
    Ok(())
}

/// Checks a resource's labels: every key and value, and at most [`MAX_LABELS`] of them.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        bail!(
            "{} labels given; GCE allows at most {MAX_LABELS} on a resource",
            labels.len()
        );
    }
    for (key, value) in labels {
        check_label_key(key)?;
        check_label_value(key, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_use_daisys_alphabet() {
        for _ in 0..200 {
            let id = build_id();
            assert_eq!(id.len(), 5);
            assert!(id.chars().all(|c| ID_ALPHABET.contains(c)), "{id}");
        }
        let ids: std::collections::BTreeSet<_> = (0..20).map(|_| build_id()).collect();
        assert!(ids.len() > 1, "ids do not vary: {ids:?}");
    }

    #[test]
    fn daisy_names_match_upstream() {
        assert_eq!(
            daisy_name("boot-disk", "build-image", "b4x9q"),
            "boot-disk-build-image-b4x9q"
        );
        assert_eq!(
            daisy_name("preload-vm", "build-image", "b4x9q"),
            "preload-vm-build-image-b4x9q"
        );
        assert_eq!(
            daisy_name("Cidata", "Build-Image", "B4X9Q"),
            "cidata-build-image-b4x9q"
        );
    }

    #[test]
    fn long_daisy_names_are_cut_as_daisy_cuts_them() {
        // Prefix of 58 bytes: cut to 56, then "-" and the id.
        let role = "r".repeat(58 - "-build-image".len());
        let name = daisy_name(&role, "build-image", "b4x9q");
        assert_eq!(name.len(), 56 + 1 + 5);
        assert!(name.ends_with("-b4x9q"));
        // A prefix of exactly 57 bytes is kept: 57 + 1 + 5 = 63.
        let role = "r".repeat(57 - "-build-image".len());
        assert_eq!(daisy_name(&role, "build-image", "b4x9q").len(), 63);
        // A long id makes the whole longer than 64: cut to 63.
        let name = daisy_name("boot-disk", "build-image", &"x".repeat(60));
        assert_eq!(name.len(), 63);
        check_name(&name).unwrap();
    }

    #[test]
    fn rfc1035_names() {
        for ok in ["a", "boot-disk-build-image-b4x9q", &"a".repeat(63), "a1"] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "1a", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn label_rules() {
        let ok = BTreeMap::from([
            ("a".to_string(), String::new()),
            ("cos-customizer-cleanup".to_string(), String::new()),
            ("k_1".to_string(), "v-2_x".to_string()),
            ("é".to_string(), "ü".to_string()),
            ("k".repeat(63), "v".repeat(63)),
        ]);
        check_labels(&ok).unwrap();
        for key in ["", "1a", "_a", "A", "a.b", &"k".repeat(64)] {
            assert!(check_label_key(key).is_err(), "{key:?} accepted");
        }
        for value in ["A", "a b", &"v".repeat(64)] {
            assert!(check_label_value("k", value).is_err(), "{value:?} accepted");
        }
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        let err = check_labels(&many).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn build_labels_are_valid() {
        let labels = build_labels("b4x9q");
        assert_eq!(labels[CLEANUP_LABEL], "");
        assert_eq!(labels[BUILD_LABEL], "b4x9q");
        check_labels(&labels).unwrap();
    }
}
