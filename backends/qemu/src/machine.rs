//! vCPUs and memory for a GCE machine type.
//!
//! `<family>-<class>-<N>` (n1, n2, n2d, e2, c2, c3, …) gives N vCPUs and the class's
//! memory per vCPU: standard 3.75 GiB on n1 and 4 GiB elsewhere, highmem 6.5/8 GiB,
//! highcpu 0.9/1 GiB. The shared-core types (e2-micro/small/medium, f1-micro, g1-small)
//! are listed, and GCE's custom types (`custom-N-MIB` on N1, `<family>-custom-N-MIB`
//! elsewhere, `-ext` for extended memory) give what they name. vCPUs are capped at the host's CPUs (TCG gains nothing beyond them) and
//! memory at [`MAX_MEMORY_MIB`] (the build needs little; the host is shared). Anything
//! else is an error naming the forms above: a typo must not become some other VM.

use anyhow::{bail, Result};

pub const MAX_MEMORY_MIB: u64 = 8192;
/// COS needs about this much to boot.
pub const MIN_MEMORY_MIB: u64 = 1024;

/// `(vCPUs, memory in MiB)` for `machine_type` on a host with `host_cpus` CPUs; a type
/// not of the forms above is an error that names them.
pub fn resources(machine_type: &str, host_cpus: u32) -> Result<(u32, u64)> {
    let Some((cpus, mib)) = gce_shape(machine_type) else {
        bail!(
            "-machine-type={machine_type:?} is not a machine type the QEMU backend knows: give \
             one of GCE's predefined types, <family>-standard-N, <family>-highmem-N or \
             <family>-highcpu-N (n1, n2, n2d, e2, c2, c3, ...), the shared-core e2-micro, \
             e2-small, e2-medium, f1-micro or g1-small, or a custom type, custom-N-MIB (N1) or \
             <family>-custom-N-MIB, either with -ext; e.g. -machine-type=n1-standard-1"
        );
    };
    Ok((
        cpus.clamp(1, host_cpus.max(1)),
        mib.clamp(MIN_MEMORY_MIB, MAX_MEMORY_MIB),
    ))
}

/// GCE's own vCPU count and memory for a machine type it knows.
fn gce_shape(machine_type: &str) -> Option<(u32, u64)> {
    // Shared-core types.
    match machine_type {
        "f1-micro" => return Some((1, 614)),
        "g1-small" => return Some((1, 1740)),
        "e2-micro" => return Some((2, 1024)),
        "e2-small" => return Some((2, 2048)),
        "e2-medium" => return Some((2, 4096)),
        _ => {}
    }
    if let Some(shape) = custom_shape(machine_type) {
        return Some(shape);
    }
    let mut parts = machine_type.split('-');
    let family = parts.next()?;
    let class = parts.next()?;
    let cpus: u32 = parts.next()?.parse().ok().filter(|&n| n > 0)?;
    if parts.next().is_some() {
        return None;
    }
    let n1 = family == "n1";
    // MiB per vCPU.
    let per_cpu: u64 = match (class, n1) {
        ("standard", true) => 3840,
        ("standard", false) => 4096,
        ("highmem", true) => 6656,
        ("highmem", false) => 8192,
        ("highcpu", true) => 922,
        ("highcpu", false) => 1024,
        _ => return None,
    };
    Some((cpus, per_cpu * u64::from(cpus)))
}

/// A custom machine type's vCPUs and memory: `custom-2-4096` (N1), `n2-custom-2-4096`,
/// either with `-ext`.
fn custom_shape(machine_type: &str) -> Option<(u32, u64)> {
    let name = machine_type.strip_suffix("-ext").unwrap_or(machine_type);
    let rest = match name.strip_prefix("custom-") {
        Some(rest) => rest,
        None => {
            let (family, rest) = name.split_once("-custom-")?;
            if family.is_empty() || family == "n1" || family.contains('-') {
                return None;
            }
            rest
        }
    };
    let (cpus, mib) = rest.split_once('-')?;
    let cpus: u32 = cpus.parse().ok().filter(|&n| n > 0)?;
    let mib: u64 = mib.parse().ok().filter(|&m| m > 0)?;
    Some((cpus, mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n1_standard_scales_and_caps() {
        assert_eq!(resources("n1-standard-1", 2).unwrap(), (1, 3840));
        assert_eq!(resources("n1-standard-2", 2).unwrap(), (2, 7680));
        assert_eq!(resources("n1-standard-8", 2).unwrap(), (2, MAX_MEMORY_MIB));
        assert_eq!(resources("n1-standard-8", 16).unwrap(), (8, MAX_MEMORY_MIB));
    }

    #[test]
    fn other_families() {
        assert_eq!(resources("n2-standard-2", 4).unwrap(), (2, 8192));
        assert_eq!(resources("e2-highcpu-4", 4).unwrap(), (4, 4096));
        assert_eq!(resources("n1-highcpu-2", 4).unwrap(), (2, 1844));
        assert_eq!(resources("e2-medium", 4).unwrap(), (2, 4096));
        assert_eq!(resources("f1-micro", 4).unwrap(), (1, MIN_MEMORY_MIB));
    }

    #[test]
    fn custom_types_give_what_they_name() {
        assert_eq!(resources("custom-2-5120", 4).unwrap(), (2, 5120));
        assert_eq!(resources("n2-custom-1-2048", 4).unwrap(), (1, 2048));
        assert_eq!(resources("e2-custom-2-4096-ext", 4).unwrap(), (2, 4096));
        assert_eq!(resources("custom-8-65536", 2).unwrap(), (2, MAX_MEMORY_MIB));
    }

    #[test]
    fn unknown_types_are_refused_naming_the_forms() {
        for t in [
            "",
            "custom",
            "n1-custom-4-5120",
            "custom-0-1024",
            "custom-2",
            "n2-custom-x-1024",
            "n1-standard-0",
            "a2-megagpu-x",
            "garbage",
        ] {
            let e = resources(t, 8).unwrap_err().to_string();
            assert!(
                e.contains(&format!("-machine-type={t:?}")) && e.contains("custom-N-MIB"),
                "{t}: {e}"
            );
        }
    }
}
