//! Checks made before any disk or VM exists and before the build state is consumed, so
//! that a mistake costs seconds and keeps the recorded steps: the local source image (once
//! its backend has read it: a GPT with the COS partitions the steps need), the output file,
//! and the free space.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cos_customizer_common::cos_layout::Partition;

use crate::backend::SourceFacts;
#[cfg(doc)]
use cos_customizer_common::sizing;

/// How much of a source disk its backend reads for the partition table
/// ([`SourceFacts::head`]): the GPT header and its entries fit in the first 34 sectors; a
/// MiB covers 4 KiB sectors too.
pub const HEAD: u64 = 1 << 20;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The local source image `path`, which its backend found to be `facts`, has in its GPT
/// every partition in `needs`, with its label, inside the disk.
pub fn check_partitions(path: &Path, facts: &SourceFacts, needs: &[Partition]) -> Result<()> {
    let (head, disk_bytes) = (&facts.head, facts.virtual_size);
    let not_cos =
        "not a COS disk image (COS has STATE=1, ROOT-A=3, ROOT-B=5, OEM=8 and EFI-SYSTEM=12)";
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(false)
        .open_from_device(std::io::Cursor::new(head.to_vec()))
        .map_err(|e| {
            anyhow::anyhow!(
                "the source image {} has no valid GPT partition table ({e}): {not_cos}",
                path.display()
            )
        })?;
    let block = u64::from(*gpt.logical_block_size());
    for need in needs {
        let Some(p) = gpt.partitions().get(&need.number) else {
            bail!(
                "the source image {} has no partition {} ({}) in its GPT: {not_cos}",
                path.display(),
                need.number,
                need.label
            );
        };
        if p.name != need.label {
            bail!(
                "partition {} of the source image {} is named {:?}, not {:?}: {not_cos}",
                need.number,
                path.display(),
                p.name,
                need.label
            );
        }
        let end = (p.last_lba + 1).saturating_mul(block);
        if end > disk_bytes {
            bail!(
                "the source image {} is truncated: partition {} ({}) ends at byte {end}, but the image has {disk_bytes} bytes",
                path.display(),
                need.number,
                need.label
            );
        }
    }
    Ok(())
}

/// The local output file: not a folder, not inside the state folder, absent unless
/// `overwrite`, and in a folder this process can write; never one of `source_files`, the
/// source and its backing chain (compared by device and inode, so neither a hard link, a
/// symlinked folder nor another spelling of the path gets through).
pub fn check_output(
    out: &Path,
    source_files: &[PathBuf],
    state_root: &Path,
    overwrite: bool,
) -> Result<()> {
    let fix = "choose another -output-file";
    if out.starts_with(state_root) {
        bail!(
            "-output-file {} is inside the state folder {}, which the build removes: {fix}",
            out.display(),
            state_root.display()
        );
    }
    if let Ok(link) = std::fs::symlink_metadata(out) {
        // The rename into place would replace the link itself, never what it points to.
        if link.is_symlink() {
            bail!(
                "-output-file {} is a symlink{}: give the path of the file itself, or remove the link",
                out.display(),
                std::fs::read_link(out)
                    .map(|t| format!(" to {}", t.display()))
                    .unwrap_or_default()
            );
        }
    }
    if let Ok(meta) = std::fs::metadata(out) {
        if meta.is_dir() {
            bail!("-output-file {} is a folder: {fix}", out.display());
        }
        if !meta.is_file() {
            bail!(
                "-output-file {} is not a regular file (a device, pipe or socket), which -overwrite never replaces: {fix}",
                out.display()
            );
        }
        // Resolved as QEMU opens them, so any spelling of the same file matches.
        let read = source_files.iter().position(|f| {
            std::fs::metadata(f).is_ok_and(|s| s.dev() == meta.dev() && s.ino() == meta.ino())
        });
        match read {
            Some(0) => bail!(
                "-output-file {} is the source image, which is never written: {fix}",
                out.display()
            ),
            Some(i) => bail!(
                "-output-file {} is {}, a backing file of the source image {} (-allow-backing-file), which is never written: {fix}",
                out.display(),
                source_files[i].display(),
                source_files[0].display()
            ),
            None => {}
        }
        if !overwrite {
            bail!(
                "-output-file {} already exists: pass -overwrite to replace it, or {fix}",
                out.display()
            );
        }
    }
    let dir = cos_customizer_common::fsutil::parent_dir(out);
    tempfile::Builder::new()
        .prefix(".cos-customizer-check-")
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "-output-file {}: cannot write in its folder {}",
                out.display(),
                dir.display()
            )
        })?;
    Ok(())
}

/// `dir` has at least `need` bytes free; the error says how much is missing and why.
pub fn check_space(dir: &Path, need: u64, purpose: &str) -> Result<()> {
    let st = rustix::fs::statvfs(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < need {
        bail!(
            "{} has {} MiB free, but {purpose} needs about {} MiB: free {} MiB there, or point {} elsewhere",
            dir.display(),
            free / MIB,
            need.div_ceil(MIB),
            (need - free).div_ceil(MIB),
            if purpose.contains("output") {
                "-output-file"
            } else {
                "TMPDIR"
            }
        );
    }
    Ok(())
}

/// The build's boot disk holds the source image `source` of `source_bytes`: `-disk-size-gb`
/// (`requested_gb`) is no smaller than the source, and neither is the disk the build first
/// makes (`initial_gb`, [`sizing::initial_disk_gb`]). Without this a smaller request
/// silently became 10 GB, or failed once the state was gone.
pub fn check_disk_size(
    source: &Path,
    source_bytes: u64,
    requested_gb: Option<u64>,
    initial_gb: u64,
) -> Result<()> {
    let least = source_bytes.div_ceil(GIB);
    let size = format!(
        "the source image {} is {source_bytes} bytes ({least} GB)",
        source.display()
    );
    if let Some(gb) = requested_gb.filter(|gb| gb.saturating_mul(GIB) < source_bytes) {
        bail!("-disk-size-gb={gb} is smaller than the source image: {size}; give -disk-size-gb={least} or more");
    }
    if initial_gb.saturating_mul(GIB) < source_bytes {
        match requested_gb {
            None => bail!(
                "{size}, more than the {initial_gb} GB disk a build makes without -disk-size-gb: give -disk-size-gb={least} or more"
            ),
            Some(_) => bail!(
                "{size}, more than the {initial_gb} GB disk (a COS image's size, as the original) on which the build moves partitions (-oem-size, disable-auto-update, seal-oem) before growing it: build from a source of at most {initial_gb} GB, or without those steps"
            ),
        }
    }
    Ok(())
}

/// The file system of `dir` takes a file of `bytes` (its largest file size, and this
/// process's RLIMIT_FSIZE), so that a raw disk of that size can be written there. Probed
/// with a sparse file stretched to `bytes` and removed, which is instant where sparse files
/// are; `purpose` says what is written there, `fix` what the user can do instead.
pub fn check_file_size(dir: &Path, bytes: u64, purpose: &str, fix: &str) -> Result<()> {
    let too_large = |why: String| {
        anyhow::anyhow!(
            "{purpose} is a file of {bytes} bytes in {}, but {why}: {fix}",
            dir.display()
        )
    };
    let limit = rustix::process::getrlimit(rustix::process::Resource::Fsize).current;
    if let Some(limit) = limit.filter(|&l| l < bytes) {
        return Err(too_large(format!(
            "this process may write files of at most {limit} bytes (ulimit -f)"
        )));
    }
    let probe = tempfile::Builder::new()
        .prefix(".cos-customizer-check-")
        .tempfile_in(dir)
        .with_context(|| format!("{purpose}: cannot write in {}", dir.display()))?;
    match probe.as_file().set_len(bytes) {
        Ok(()) => Ok(()),
        // EFBIG from the file system; InvalidInput for a size no off_t holds.
        Err(e)
            if e.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error())
                || e.kind() == std::io::ErrorKind::InvalidInput =>
        {
            Err(too_large(format!(
                "its file system takes no file that large ({e})"
            )))
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "{purpose}: making a file of {bytes} bytes in {}",
                dir.display()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_holds_the_source() {
        let src = Path::new("/i/src.img");
        let ten = 10 * GIB;
        check_disk_size(src, 64 * MIB, Some(1), 10).unwrap();
        check_disk_size(src, 64 * MIB, None, 10).unwrap();
        check_disk_size(src, ten, Some(10), 10).unwrap();
        let e = check_disk_size(src, ten + 1, Some(10), 11)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("-disk-size-gb=10 is smaller")
                && e.contains("/i/src.img is 10737418241 bytes (11 GB)")
                && e.contains("give -disk-size-gb=11 or more"),
            "{e}"
        );
        // Below the 10 GB the build would make anyway: no longer silently 10 GB.
        let e = check_disk_size(src, 9 * GIB + 1, Some(5), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("give -disk-size-gb=10 or more"), "{e}");
        let e = check_disk_size(src, 20 * GIB, None, 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without -disk-size-gb: give -disk-size-gb=20"),
            "{e}"
        );
        let e = check_disk_size(src, 20 * GIB, Some(30), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("moves partitions"), "{e}");
    }

    #[test]
    fn a_file_larger_than_the_file_system_takes_is_refused() {
        let d = tempfile::tempdir().unwrap();
        check_file_size(d.path(), 10 * GIB, "the output image", "fix").unwrap();
        // Beyond what any file size (off_t) holds.
        let e = check_file_size(d.path(), u64::MAX, "the output image", "do this")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the output image is a file of") && e.ends_with(": do this"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no probe left"
        );
    }

    /// A sparse raw disk with a COS-like GPT, made by sgdisk; `skip` leaves out a partition.
    #[test]
    fn output_rules() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let src = d.path().join("src.img");
        std::fs::write(&src, "x").unwrap();
        let out = d.path().join("out.img");
        let src = [src];
        check_output(&out, &src, &state, false).unwrap();
        std::fs::write(&out, "old").unwrap();
        let e = check_output(&out, &src, &state, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists: pass -overwrite"), "{e}");
        check_output(&out, &src, &state, true).unwrap();
        let e = check_output(&src[0], &src, &state, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the source image"), "{e}");
        // A backing file of the source, however it is reached.
        let base = d.path().join("base.raw");
        std::fs::write(&base, "b").unwrap();
        let chain = [src[0].clone(), d.path().join("sub/../base.raw")];
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let linked = d.path().join("linked.img");
        std::fs::hard_link(&base, &linked).unwrap();
        for out in [&base, &linked] {
            let e = check_output(out, &chain, &state, true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("a backing file of the source image"), "{e}");
        }
        let e = check_output(d.path(), &[], &state, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = check_output(&state.join("o.img"), &[], &state, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the state folder"), "{e}");
        let e = format!(
            "{:#}",
            check_output(Path::new("/proc/o.img"), &[], &state, false).unwrap_err()
        );
        assert!(e.contains("cannot write in its folder /proc"), "{e}");
        // Only a regular file is ever replaced, and never through a link.
        let e = check_output(Path::new("/dev/null"), &[], &state, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        for (link, to) in [
            ("dangling.img", d.path().join("gone")),
            ("l.img", out.clone()),
        ] {
            std::os::unix::fs::symlink(&to, d.path().join(link)).unwrap();
            for overwrite in [false, true] {
                let e = check_output(&d.path().join(link), &[], &state, overwrite)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("is a symlink to"), "{link}: {e}");
            }
        }
    }

    #[test]
    fn space_shortfall_says_how_much() {
        let d = tempfile::tempdir().unwrap();
        check_space(d.path(), 1, "the build's disks").unwrap();
        let e = check_space(d.path(), u64::MAX / 2, "the output image")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MiB free") && e.contains("-output-file"), "{e}");
    }
}
