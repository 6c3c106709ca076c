//! Checks made before any disk or VM exists and before the build state is consumed, so
//! that a mistake costs seconds and keeps the recorded steps: the local source image
//! (readable, its format told from its content, a GPT with the COS partitions the steps
//! need, no host file behind it), the output file, and the free space.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use cos_customizer_common::cmd;
use cos_customizer_common::cos_layout::Partition;
use serde::Deserialize;

/// How much of the disk is read for the partition table: the GPT header and its entries
/// fit in the first 34 sectors; a MiB covers 4 KiB sectors too.
const HEAD: u64 = 1 << 20;
const MIB: u64 = 1 << 20;

/// What a local source image turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFacts {
    /// `raw`, `qcow2`, … as QEMU names it, or `tar.gz` for a GCE image archive.
    pub format: String,
    /// The disk's size in bytes.
    pub virtual_size: u64,
    /// Roughly how many bytes of data it holds (what an unpacked or converted copy needs).
    pub data_bytes: u64,
}

/// What `qemu-img info --output=json` says of an image.
#[derive(Debug, Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    actual_size: u64,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
}

/// Checks a local source image and reports what it is. `needs` are the partitions the
/// recorded steps need; a backing file (a host file that would be copied into the
/// output) is refused unless `allow_backing`.
pub fn check_source(path: &Path, needs: &[Partition], allow_backing: bool) -> Result<SourceFacts> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "reading the source image {}; was it moved or removed after start-image-build? Put it back, or start the build again",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!("the source image {} is not a regular file", path.display());
    }
    if meta.len() == 0 {
        bail!(
            "the source image {} is empty: give a COS disk image (raw, qcow2 or a GCE tar.gz)",
            path.display()
        );
    }
    let (facts, head) = if is_gzip(path)? {
        tar_gz_head(path)?
    } else {
        qemu_head(path, allow_backing)?
    };
    check_gpt(path, &head, facts.virtual_size, needs)?;
    Ok(facts)
}

/// Whether the file starts with the gzip magic (a GCE `tar.gz` image); a two-byte read.
pub fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("opening the source image {}", path.display()))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == [0x1f, 0x8b]),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading the source image {}", path.display())),
    }
}

/// A GCE image archive: the first member must be the regular file `disk.raw`.
fn tar_gz_head(path: &Path) -> Result<(SourceFacts, Vec<u8>)> {
    let what = || {
        format!(
            "reading the source image {} as a GCE image archive (a tar.gz holding disk.raw)",
            path.display()
        )
    };
    let file = std::fs::File::open(path).with_context(what)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = archive.entries().with_context(what)?;
    let mut entry = match entries.next() {
        Some(e) => e.with_context(what)?,
        None => bail!("{}: the archive is empty", what()),
    };
    let name = entry.path_bytes().into_owned();
    let kind = entry.header().entry_type();
    if name != b"disk.raw" || !(kind.is_file() || kind.is_gnu_sparse()) {
        bail!(
            "{}: its first member is {:?} ({kind:?}), not the regular file disk.raw; make it with `tar -czSf image.tar.gz disk.raw`",
            what(),
            String::from_utf8_lossy(&name)
        );
    }
    let stored = entry.header().size().with_context(what)?;
    let virtual_size = entry
        .header()
        .as_gnu()
        .filter(|_| kind.is_gnu_sparse())
        .map(|g| g.real_size())
        .transpose()
        .with_context(what)?
        .unwrap_or(stored);
    let mut head = Vec::new();
    (&mut entry)
        .take(HEAD)
        .read_to_end(&mut head)
        .with_context(what)?;
    Ok((
        SourceFacts {
            format: "tar.gz".into(),
            virtual_size,
            data_bytes: stored,
        },
        head,
    ))
}

/// Any image QEMU reads (raw, qcow2, …): its format as QEMU probes it, and its first MiB.
fn qemu_head(path: &Path, allow_backing: bool) -> Result<(SourceFacts, Vec<u8>)> {
    let out = cmd::run_stdout(
        Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(path),
    )
    .with_context(|| {
        format!(
            "reading the source image {}: QEMU cannot open it (a broken or truncated image?)",
            path.display()
        )
    })?;
    let info: QemuImgInfo = serde_json::from_str(&out)
        .with_context(|| format!("parsing qemu-img info of {}", path.display()))?;
    if let Some(backing) = info.backing_filename.filter(|_| !allow_backing) {
        bail!(
            "the source image {} is a {} image on top of the host file {backing}, which would be copied into the output: flatten it first (qemu-img convert -O qcow2 {} flat.qcow2) or pass -allow-backing-file",
            path.display(),
            info.format,
            path.display()
        );
    }
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let head_file = dir.path().join("head.raw");
    let mut dd = Command::new("qemu-img");
    dd.args([
        "dd",
        "-U",
        "-f",
        &info.format,
        "-O",
        "raw",
        "bs=1M",
        "count=1",
    ])
    .arg(format!("if={}", path.display()))
    .arg(format!("of={}", head_file.display()));
    cmd::run(&mut dd)
        .with_context(|| format!("reading the start of the source image {}", path.display()))?;
    let head =
        std::fs::read(&head_file).with_context(|| format!("reading {}", head_file.display()))?;
    Ok((
        SourceFacts {
            data_bytes: if info.format == "raw" {
                info.actual_size.min(info.virtual_size)
            } else {
                info.actual_size
            },
            format: info.format,
            virtual_size: info.virtual_size,
        },
        head,
    ))
}

/// The GPT in `head` has every partition in `needs`, with its label, inside the disk.
fn check_gpt(path: &Path, head: &[u8], disk_bytes: u64, needs: &[Partition]) -> Result<()> {
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

/// The local output file: not a folder, not the source, not inside the state folder,
/// absent unless `overwrite`, and in a folder this process can write.
pub fn check_output(
    out: &Path,
    source: Option<&Path>,
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
        let is_source = source
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|s| s.dev() == meta.dev() && s.ino() == meta.ino());
        if is_source {
            bail!(
                "-output-file {} is the source image, which is never written: {fix}",
                out.display()
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_common::cos_layout::{ALWAYS, FOR_RECLAIM, OEM};

    /// A sparse raw disk with a COS-like GPT, made by sgdisk; `skip` leaves out a partition.
    fn cos_disk(dir: &Path, skip: Option<u32>) -> std::path::PathBuf {
        let img = dir.join("cos.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let mut c = Command::new("sgdisk");
        for (n, label, mib) in [
            (1, "STATE", 8),
            (2, "KERN-A", 1),
            (3, "ROOT-A", 8),
            (4, "KERN-B", 1),
            (5, "ROOT-B", 8),
            (8, "OEM", 4),
            (12, "EFI-SYSTEM", 4),
        ] {
            if Some(n) != skip {
                c.arg(format!("--new={n}:0:+{mib}M"))
                    .arg(format!("--change-name={n}:{label}"));
            }
        }
        cmd::run(c.arg(&img)).unwrap();
        img
    }

    #[test]
    fn a_cos_shaped_raw_disk_passes() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_disk(d.path(), None);
        let facts = check_source(&img, &[&ALWAYS[..], &FOR_RECLAIM[..]].concat(), false).unwrap();
        assert_eq!(
            (facts.format.as_str(), facts.virtual_size),
            ("raw", 64 * MIB)
        );
    }

    #[test]
    fn missing_partitions_empty_and_plain_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_disk(d.path(), Some(12));
        let e = check_source(&img, &ALWAYS, false).unwrap_err().to_string();
        assert!(e.contains("no partition 12 (EFI-SYSTEM)"), "{e}");
        let empty = d.path().join("empty.img");
        std::fs::write(&empty, "").unwrap();
        let e = check_source(&empty, &ALWAYS, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        let plain = d.path().join("plain.img");
        std::fs::write(&plain, vec![0u8; 4 * MIB as usize]).unwrap();
        let e = check_source(&plain, &ALWAYS, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no valid GPT"), "{e}");
        let gone = d.path().join("gone.img");
        let e = format!("{:#}", check_source(&gone, &ALWAYS, false).unwrap_err());
        assert!(
            e.contains("moved or removed after start-image-build"),
            "{e}"
        );
    }

    #[test]
    fn a_truncated_disk_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_disk(d.path(), None);
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(20 * MIB).unwrap();
        let e = check_source(&img, &[OEM], false).unwrap_err().to_string();
        assert!(e.contains("is truncated: partition 8 (OEM)"), "{e}");
    }

    #[test]
    fn a_qcow2_backing_file_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_disk(d.path(), None);
        let top = d.path().join("top.qcow2");
        cmd::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&img)
                .arg(&top),
        )
        .unwrap();
        let e = check_source(&top, &ALWAYS, false).unwrap_err().to_string();
        assert!(
            e.contains("host file") && e.contains("-allow-backing-file"),
            "{e}"
        );
        let facts = check_source(&top, &ALWAYS, true).unwrap();
        assert_eq!(facts.format, "qcow2");
    }

    #[test]
    fn a_tar_gz_must_start_with_a_regular_disk_raw() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_disk(d.path(), None);
        std::fs::rename(&img, d.path().join("disk.raw")).unwrap();
        let good = d.path().join("good.tar.gz");
        cmd::run(
            Command::new("tar")
                .arg("-czSf")
                .arg(&good)
                .arg("-C")
                .arg(d.path())
                .arg("disk.raw"),
        )
        .unwrap();
        let facts = check_source(&good, &ALWAYS, false).unwrap();
        assert_eq!(
            (facts.format.as_str(), facts.virtual_size),
            ("tar.gz", 64 * MIB)
        );
        let link_dir = d.path().join("link");
        std::fs::create_dir(&link_dir).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", link_dir.join("disk.raw")).unwrap();
        let bad = d.path().join("bad.tar.gz");
        cmd::run(
            Command::new("tar")
                .arg("-czf")
                .arg(&bad)
                .arg("-C")
                .arg(&link_dir)
                .arg("disk.raw"),
        )
        .unwrap();
        let e = check_source(&bad, &ALWAYS, false).unwrap_err().to_string();
        assert!(e.contains("not the regular file disk.raw"), "{e}");
        let garbage = d.path().join("garbage.tar.gz");
        std::fs::write(&garbage, [0x1f, 0x8b, 0, 1, 2, 3]).unwrap();
        assert!(check_source(&garbage, &ALWAYS, false).is_err());
    }

    #[test]
    fn gzip_magic() {
        let d = tempfile::tempdir().unwrap();
        let gz = d.path().join("a.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0]).unwrap();
        let one = d.path().join("one");
        std::fs::write(&one, [0x1f]).unwrap();
        assert!(is_gzip(&gz).unwrap());
        assert!(!is_gzip(&one).unwrap());
        assert!(is_gzip(&d.path().join("missing")).is_err());
    }

    #[test]
    fn output_rules() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let src = d.path().join("src.img");
        std::fs::write(&src, "x").unwrap();
        let out = d.path().join("out.img");
        check_output(&out, Some(&src), &state, false).unwrap();
        std::fs::write(&out, "old").unwrap();
        let e = check_output(&out, Some(&src), &state, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists: pass -overwrite"), "{e}");
        check_output(&out, Some(&src), &state, true).unwrap();
        let e = check_output(&src, Some(&src), &state, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the source image"), "{e}");
        let e = check_output(d.path(), None, &state, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = check_output(&state.join("o.img"), None, &state, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the state folder"), "{e}");
        let e = format!(
            "{:#}",
            check_output(Path::new("/proc/o.img"), None, &state, false).unwrap_err()
        );
        assert!(e.contains("cannot write in its folder /proc"), "{e}");
        // Only a regular file is ever replaced, and never through a link.
        let e = check_output(Path::new("/dev/null"), None, &state, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        for (link, to) in [
            ("dangling.img", d.path().join("gone")),
            ("l.img", out.clone()),
        ] {
            std::os::unix::fs::symlink(&to, d.path().join(link)).unwrap();
            for overwrite in [false, true] {
                let e = check_output(&d.path().join(link), None, &state, overwrite)
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
