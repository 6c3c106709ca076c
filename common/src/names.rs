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

#[cfg(test)]
mod tests {
    use super::*;

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
