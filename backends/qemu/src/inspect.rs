//! Reading a local source image before anything is made: its format from its content (the
//! one `qemu-img info` reading of a source, so the format is told to every later tool rather
//! than guessed again), its sizes, a GCE `tar.gz` archive's first member, and the disk's
//! first MiB for core's partition check.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cos_customizer_common::cmd;
use cos_customizer_core::backend::SourceFacts;
use cos_customizer_core::gce_tar;
use cos_customizer_core::preflight;

use crate::disk;

/// Reads a local source image: its format from its content, its sizes and its first MiB. A
/// backing file (a host file that would be copied into the output) is refused unless
/// `allow_backing`.
pub fn inspect_file(path: &Path, allow_backing: bool) -> Result<SourceFacts> {
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
    if is_gzip(path)? {
        tar_gz_head(path)
    } else {
        qemu_head(path, allow_backing)
    }
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

/// A GCE image archive: exactly one member, the regular file `disk.raw`, and a gzip stream
/// whole to its end (read through once, so a truncated download is refused now, not while
/// the build unpacks it). A later member, a second `disk.raw` or a link would let an
/// extractor put a host file in the output.
fn tar_gz_head(path: &Path) -> Result<SourceFacts> {
    let what = || {
        format!(
            "reading the source image {} as a GCE image archive (a tar.gz holding disk.raw)",
            path.display()
        )
    };
    let fix = "make it with `tar -czSf image.tar.gz disk.raw`";
    let file = std::fs::File::open(path).with_context(what)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = archive.entries().with_context(what)?;
    let mut entry = match entries.next() {
        Some(e) => e.with_context(what)?,
        None => bail!("{}: the archive is empty", what()),
    };
    let name = entry.path_bytes().into_owned();
    let kind = entry.header().entry_type();
    if name != gce_tar::MEMBER.as_bytes() || !(kind.is_file() || kind.is_gnu_sparse()) {
        bail!(
            "{}: its first member is {:?} ({kind:?}), not the regular file disk.raw; {fix}",
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
        .take(preflight::HEAD)
        .read_to_end(&mut head)
        .with_context(what)?;
    std::io::copy(&mut entry, &mut std::io::sink()).with_context(|| {
        format!(
            "{}: the archive is cut short (a truncated download?)",
            what()
        )
    })?;
    drop(entry);
    if let Some(next) = entries.next() {
        let next = next.with_context(|| format!("{}: the archive is cut short", what()))?;
        bail!(
            "{}: it holds more than disk.raw (also {:?}), which an extractor could take instead; {fix}",
            what(),
            String::from_utf8_lossy(&next.path_bytes())
        );
    }
    // The end-of-archive blocks are read; the gzip stream must end whole after them.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .with_context(|| format!("{}: the gzip stream is cut short or corrupt", what()))?;
    Ok(SourceFacts {
        format: "tar.gz".into(),
        virtual_size,
        data_bytes: stored,
        head,
        files: vec![path.to_path_buf()],
    })
}

/// The image formats a build reads: raw and qcow2 hold their data in the one file (VMDK,
/// VHD and the like can name other host files as extents, which would be read into the
/// output).
const FORMATS: [&str; 2] = ["raw", "qcow2"];

/// Refuses an image that would read host files other than itself into the output: any
/// format but raw and qcow2, and a qcow2 with an external data file (a backing file is
/// checked on its own, since `-allow-backing-file` may allow it). `role` names the file in
/// messages: "the source image", or "the backing file".
pub fn refuse_host_files(role: &str, path: &Path, info: &disk::ImageInfo) -> Result<()> {
    if !FORMATS.contains(&info.format.as_str()) {
        bail!(
            "{role} {} is a {} image (told from its content, whatever its name), which may read other host files into the output: give a raw, qcow2 or GCE tar.gz image (qemu-img convert -O qcow2 {} cos.qcow2)",
            path.display(),
            info.format,
            path.display()
        );
    }
    if let Some(data_file) = info.data_file() {
        bail!(
            "{role} {} is a qcow2 image whose data is in the host file {data_file} (an external data file), which would be read into the output: convert it to a self-contained image (qemu-img convert -O qcow2 {} cos.qcow2)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// `qemu-img check` of a qcow2 source, whole: a file cut short after its header, or
/// corrupt, is refused before anything is made.
fn check_qcow2(path: &Path) -> Result<()> {
    let mut c = Command::new("qemu-img");
    c.args(["check", "-U", "-f", "qcow2", "--output=json"])
        .arg(path);
    let line = cmd::render(c.get_program(), c.get_args());
    let out = c
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    // 0: clean; 3: only leaked clusters, which lose no data. 2 is corruption, 1 no check.
    let report: serde_json::Value = match out.status.code() {
        Some(0 | 2 | 3) => serde_json::from_slice(&out.stdout).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let count = |k: &str| report.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    if matches!(out.status.code(), Some(0 | 3)) && count("corruptions") == 0 {
        return Ok(());
    }
    Err(cmd::failure(&line, &out)).with_context(|| {
        format!(
            "the source image {} is a damaged qcow2 image ({} corruptions, {} check errors: cut short, or written by a crashed program): copy or convert it again",
            path.display(),
            count("corruptions"),
            count("check-errors")
        )
    })
}

/// Any image QEMU reads (raw, qcow2, …): its format as QEMU probes it, and its first MiB.
fn qemu_head(path: &Path, allow_backing: bool) -> Result<SourceFacts> {
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
    let info = disk::parse_info(out.as_bytes(), path)?;
    refuse_host_files("the source image", path, &info)?;
    if info.format == "qcow2" {
        check_qcow2(path)?;
    }
    if let Some(backing) = info.backing_filename.as_ref().filter(|_| !allow_backing) {
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
    Ok(SourceFacts {
        data_bytes: if info.format == "raw" {
            info.actual_size.min(info.virtual_size)
        } else {
            info.actual_size
        },
        files: match info.backing_filename {
            Some(_) => backing_chain(path)?,
            None => vec![path.to_path_buf()],
        },
        format: info.format,
        virtual_size: info.virtual_size,
        head,
    })
}

/// The files of `path`'s backing chain, `path` first, as qemu-img resolves them; each file
/// under `path` is held to the source's rules (raw or a whole qcow2, no external data file),
/// since the build reads it as much as the source.
fn backing_chain(path: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::run_stdout(
        Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain", "--output=json"])
            .arg(path),
    )
    .with_context(|| {
        format!(
            "reading the backing chain of the source image {}",
            path.display()
        )
    })?;
    let chain = disk::parse_chain(out.as_bytes(), path)?;
    for info in chain.iter().skip(1) {
        let file = Path::new(&info.filename);
        let within = || {
            format!(
                "in the backing chain of the source image {}",
                path.display()
            )
        };
        refuse_host_files("the backing file", file, info).with_context(within)?;
        if info.format == "qcow2" {
            check_qcow2(file).with_context(within)?;
        }
    }
    Ok(chain
        .into_iter()
        .map(|info| PathBuf::from(info.filename))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_common::cos_layout::{Partition, ALWAYS, FOR_RECLAIM, OEM};

    const MIB: u64 = 1 << 20;

    /// What core makes of a source: the backend's reading, then the partition check.
    fn check_source(path: &Path, needs: &[Partition], allow_backing: bool) -> Result<SourceFacts> {
        let facts = inspect_file(path, allow_backing)?;
        preflight::check_partitions(path, &facts, needs)?;
        Ok(facts)
    }

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
    fn a_source_reading_other_host_files_or_cut_short_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let host = cos_disk(d.path(), None);
        // A VMDK descriptor named .img whose extent is a host file.
        let vmdk = d.path().join("vmdk.img");
        std::fs::write(
            &vmdk,
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 131072 FLAT \"{}\" 0\n",
                host.display()
            ),
        )
        .unwrap();
        let e = check_source(&vmdk, &ALWAYS, true).unwrap_err().to_string();
        assert!(
            e.contains("is a vmdk image") && e.contains("whatever its name"),
            "{e}"
        );
        // A qcow2 whose data lives in a host file.
        let external = d.path().join("external.qcow2");
        cmd::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-o"])
                .arg(format!("data_file={},data_file_raw=on", host.display()))
                .arg(&external)
                .arg("64M"),
        )
        .unwrap();
        let e = check_source(&external, &ALWAYS, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("external data file") && e.contains(&*host.to_string_lossy()),
            "{e}"
        );
        // The same files lower in an allowed backing chain.
        for (lower, format, why) in [
            (&vmdk, "vmdk", "the backing file"),
            (&external, "qcow2", "external data file"),
        ] {
            let top = d.path().join(format!("over-{format}.qcow2"));
            cmd::run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
                    .arg(lower)
                    .arg(&top),
            )
            .unwrap();
            let e = format!("{:#}", check_source(&top, &ALWAYS, true).unwrap_err());
            assert!(
                e.contains("in the backing chain of the source image")
                    && e.contains(why)
                    && e.contains(&*lower.to_string_lossy()),
                "{e}"
            );
        }
        // A qcow2 cut short after its header.
        let fresh = tempfile::tempdir().unwrap();
        let whole = d.path().join("whole.qcow2");
        cmd::run(
            Command::new("qemu-img")
                .args([
                    "convert",
                    "-q",
                    "-O",
                    "qcow2",
                    "-o",
                    "preallocation=metadata",
                ])
                // A fresh disk: creating the image with a data file rewrote `host`.
                .arg(cos_disk(fresh.path(), None))
                .arg(&whole),
        )
        .unwrap();
        check_source(&whole, &ALWAYS, false).unwrap();
        let len = std::fs::metadata(&whole).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&whole)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let e = format!("{:#}", check_source(&whole, &ALWAYS, false).unwrap_err());
        assert!(e.contains("damaged qcow2 image"), "{e}");
    }

    #[test]
    fn a_tar_gz_must_hold_disk_raw_alone_and_whole() {
        let d = tempfile::tempdir().unwrap();
        let disk = cos_disk(d.path(), None);
        let make = |name: &str, extra: Option<(&str, tar::EntryType)>| {
            let path = d.path().join(name);
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&path).unwrap(),
                flate2::Compression::fast(),
            );
            let mut tar = tar::Builder::new(gz);
            tar.append_path_with_name(&disk, "disk.raw").unwrap();
            if let Some((member, kind)) = extra {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(0);
                h.set_mode(0o644);
                tar.append_link(&mut h, member, "/etc/shadow").unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap();
            path
        };
        check_source(&make("ok.tar.gz", None), &ALWAYS, false).unwrap();
        let two = make("two.tar.gz", Some(("disk.raw", tar::EntryType::Symlink)));
        let e = check_source(&two, &ALWAYS, false).unwrap_err().to_string();
        assert!(e.contains("holds more than disk.raw"), "{e}");
        let ok = make("cut.tar.gz", None);
        let len = std::fs::metadata(&ok).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ok)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let e = format!("{:#}", check_source(&ok, &ALWAYS, false).unwrap_err());
        assert!(e.contains("cut short"), "{e}");
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
        assert_eq!(facts.files, [top.clone(), img.clone()]);
        // Two levels, the lower one named relative to its overlay's folder.
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let upper = sub.join("upper.qcow2");
        cmd::run(
            Command::new("qemu-img")
                .args("create -q -f qcow2 -F qcow2 -b ../top.qcow2".split(' '))
                .arg(&upper),
        )
        .unwrap();
        let facts = check_source(&upper, &ALWAYS, true).unwrap();
        let files: Vec<_> = facts
            .files
            .iter()
            .map(|f| std::fs::canonicalize(f).unwrap())
            .collect();
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(files, [canon(&upper), canon(&top), canon(&img)]);
        assert_eq!(check_source(&img, &ALWAYS, false).unwrap().files, [img]);
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
}
