//! Whether this machine can make a build's disk of a given size, asked before anything is
//! made: QEMU's qcow2 overlay (`qemu-img measure`, which creates nothing), and the raw file
//! of that size an export writes (a raw output, or the `disk.raw` a `tar.gz` output is
//! packed from, in TMPDIR).

use std::process::Command;

use anyhow::{Context, Result};
use cos_customizer_common::{cmd, fsutil};
use cos_customizer_core::backend::{ImageFormat, OutputImage};
use cos_customizer_core::preflight;

use crate::disk::GB;

/// The build's disk of `gb` GB at its largest, and the output image `out` made from it.
pub fn check(gb: u64, out: &OutputImage) -> Result<()> {
    let what = format!("the build's disk of {gb} GB (-disk-size-gb)");
    let bytes = gb
        .checked_mul(GB)
        .with_context(|| format!("{what} is too large for a size in bytes"))?;
    cmd::run(
        Command::new("qemu-img")
            .args(["measure", "-O", "qcow2", "--size"])
            .arg(bytes.to_string()),
    )
    .with_context(|| format!("QEMU cannot make {what}: give a smaller -disk-size-gb"))?;
    let smaller = "give a smaller -disk-size-gb, -output-format=qcow2";
    match &out.local_file {
        Some((path, ImageFormat::Raw)) => preflight::check_file_size(
            fsutil::parent_dir(path),
            bytes,
            &format!("a raw output image of {what}"),
            &format!("{smaller}, or an -output-file on another file system"),
        ),
        Some((_, ImageFormat::TarGz)) => preflight::check_file_size(
            &std::env::temp_dir(),
            bytes,
            &format!("the disk.raw a tar.gz output of {what} is packed from"),
            &format!("{smaller}, or point TMPDIR at another file system"),
        ),
        Some((_, ImageFormat::Qcow2)) | None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn output(path: PathBuf, format: ImageFormat) -> OutputImage {
        OutputImage {
            name: "out".into(),
            project: String::new(),
            family: String::new(),
            labels: Default::default(),
            licenses: Vec::new(),
            description: String::new(),
            local_file: Some((path, format)),
        }
    }

    #[test]
    fn sizes_qemu_cannot_make_are_named() {
        let d = tempfile::tempdir().unwrap();
        let out = output(d.path().join("out.qcow2"), ImageFormat::Qcow2);
        check(20, &out).unwrap();
        // qcow2 with 64 KiB clusters ends at 2 PiB; qemu-img takes no size beyond i64.
        for gb in [3 << 20, 9_999_999_999] {
            let e = format!("{:#}", check(gb, &out).unwrap_err());
            assert!(
                e.contains(&format!("QEMU cannot make the build's disk of {gb} GB")),
                "{e}"
            );
        }
        let e = format!("{:#}", check(u64::MAX, &out).unwrap_err());
        assert!(e.contains("too large"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
