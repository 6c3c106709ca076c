//! Finds the provisioner binary that goes on the CIDATA disk, and checks it is static:
//! it runs on COS, whose C library is not the build machine's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cos_customizer_common::protocol::PROVISIONER_AMD64;

/// The environment variable that names the provisioner when no flag does.
pub const ENV: &str = "COS_CUSTOMIZER_PROVISIONER";

/// Finds the provisioner: the flag's path, else `$COS_CUSTOMIZER_PROVISIONER`, else
/// `provisioner_amd64` or `provisioner` next to this program; fails unless it is static.
pub fn locate(flag: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match flag {
        Some(p) => vec![p.to_path_buf()],
        None => match std::env::var_os(ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => {
                let exe = std::env::current_exe().context("finding this program")?;
                let dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
                vec![dir.join(PROVISIONER_AMD64), dir.join("provisioner")]
            }
        },
    };
    for c in &candidates {
        if c.is_file() {
            check_static(c)?;
            return Ok(c.clone());
        }
    }
    bail!(
        "no provisioner binary found (looked at {}): build it with scripts/build-provisioner.sh and pass -provisioner=PATH or set {ENV}",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// A dynamically linked ELF has a PT_INTERP program header.
pub fn check_static(path: &Path) -> Result<()> {
    let data =
        std::fs::read(path).with_context(|| format!("reading provisioner {}", path.display()))?;
    let not_elf = || {
        anyhow::anyhow!(
            "provisioner {} is not a 64-bit ELF executable",
            path.display()
        )
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(not_elf());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type = data
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(not_elf)?;
        const PT_INTERP: u32 = 3;
        if p_type == PT_INTERP {
            bail!(
                "provisioner {} is dynamically linked, so it would not run on COS: build it with scripts/build-provisioner.sh",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_refused() {
        let e = check_static(Path::new("/bin/sh")).unwrap_err().to_string();
        assert!(e.contains("dynamically linked"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "#!/bin/sh\n").unwrap();
        assert!(check_static(f.path())
            .unwrap_err()
            .to_string()
            .contains("not a 64-bit ELF"));
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let e = locate(Some(Path::new("/nonexistent/provisioner")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scripts/build-provisioner.sh"), "{e}");
    }
}
