//! Resource names as GCE takes them (RFC 1035), which the QEMU backend keeps too, so a
//! build that works locally has names GCE accepts.

/// Whether `name` is `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn is_resource_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `value` could name a GCE machine type: a resource name, or a path or URL whose
/// last segments are `machineTypes/NAME` (`zones/Z/machineTypes/N`, `projects/P/...`).
pub fn is_machine_type(value: &str) -> bool {
    let value = ["https://", "http://"]
        .iter()
        .find_map(|scheme| value.strip_prefix(scheme))
        .unwrap_or(value);
    match value.rsplit_once('/') {
        None => is_resource_name(value),
        Some((path, name)) => {
            is_resource_name(name)
                && (path == "machineTypes" || path.ends_with("/machineTypes"))
                && !path.split('/').any(str::is_empty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_types_as_gce_takes_them() {
        for ok in [
            "n1-standard-1",
            "e2-custom-2-4096-ext",
            "zones/us-west1-b/machineTypes/n2-highmem-4",
            "projects/p/zones/z/machineTypes/custom-2-5120",
            "https://www.googleapis.com/compute/v1/projects/p/zones/z/machineTypes/c3-standard-4",
        ] {
            assert!(is_machine_type(ok), "{ok}");
        }
        for bad in [
            "",
            "garbage!",
            "N1-STANDARD-1",
            "n1 standard 1",
            "zones/z/disks/n1-standard-1",
            "zones//machineTypes/n1-standard-1",
            "machineTypes/",
        ] {
            assert!(!is_machine_type(bad), "{bad}");
        }
    }

    #[test]
    fn rfc1035() {
        for ok in [
            "a",
            "preload-vm",
            "boot-disk-build-image-x7b2q",
            &"a".repeat(63),
        ] {
            assert!(is_resource_name(ok), "{ok}");
        }
        for bad in ["", "1a", "A", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_resource_name(bad), "{bad}");
        }
    }
}
