//! The CIDATA disk: a FAT volume labelled `CIDATA` holding the cloud-init NoCloud seed,
//! the provisioner, its config and the user's build context.
//!
//! Built in-process with `fatfs`, so no mkfs or mtools is needed at run time. fatfs 0.3.6
//! writes invalid `.`/`..` entries in subdirectories (rust-fatfs#117), so every file goes
//! in the root directory.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use crate::cloud_config;
use cos_customizer_common::config::ProvisionerConfig;
use cos_customizer_common::fsutil;
use cos_customizer_common::protocol::{
    BUILD_CONTEXT_TAR, CIDATA_LABEL, CONFIG_JSON, PROVISIONER_AMD64,
};

/// File name of the cloud-init NoCloud user data (the cloud-config).
pub const USER_DATA: &str = "user-data";
/// File name of the cloud-init NoCloud meta data (the instance id).
pub const META_DATA: &str = "meta-data";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The smallest image we make (the fixture's seed size; FAT16 with 1 KiB clusters).
const MIN_IMAGE: u64 = 16 * MIB;
/// Room left free, so a slightly larger file at write time still fits.
const SLACK: u64 = 8 * MIB;
/// The largest cluster fatfs picks; rounding each file up to it over-counts safely.
const MAX_CLUSTER: u64 = 32 * KIB;
/// fatfs's own cut-over: below this it formats FAT16, from here on FAT32.
const FAT32_FROM: u64 = 512 * MIB;
/// The largest file a FAT volume holds: a directory entry has a 32-bit size.
pub const MAX_FILE: u64 = u32::MAX as u64;

/// One file in the root of the CIDATA volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidataFile {
    /// The file's name in the volume's root directory.
    pub name: String,
    /// Where the file's contents come from.
    pub source: CidataSource,
}

/// The contents of a [`CidataFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidataSource {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A host file, streamed in (the provisioner and build context can be large).
    Path(PathBuf),
}

impl CidataFile {
    /// A file with these contents.
    pub fn bytes(name: &str, data: impl Into<Vec<u8>>) -> Self {
        CidataFile {
            name: name.to_string(),
            source: CidataSource::Bytes(data.into()),
        }
    }

    /// A file streamed in from `path` on the host.
    pub fn path(name: &str, path: &Path) -> Self {
        CidataFile {
            name: name.to_string(),
            source: CidataSource::Path(path.to_path_buf()),
        }
    }

    fn len(&self) -> Result<u64> {
        match &self.source {
            CidataSource::Bytes(b) => Ok(b.len() as u64),
            CidataSource::Path(p) => Ok(std::fs::metadata(p)
                .with_context(|| format!("reading the size of {}", p.display()))?
                .len()),
        }
    }
}

/// The files the build VM needs, with the names the startup script expects.
/// `user_data` is the same cloud-config the VM gets as instance metadata.
pub fn cidata_files(
    config: &ProvisionerConfig,
    user_data: &str,
    provisioner_bin: &Path,
    build_context_tar: Option<&Path>,
    instance_id: &str,
) -> Result<Vec<CidataFile>> {
    // Compact, like the original's json.Marshal.
    let config_json = serde_json::to_vec(config).context("serializing the provisioner config")?;
    let mut files = vec![
        CidataFile::bytes(USER_DATA, user_data),
        CidataFile::bytes(META_DATA, cloud_config::meta_data(instance_id)),
        CidataFile::bytes(CONFIG_JSON, config_json),
        CidataFile::path(PROVISIONER_AMD64, provisioner_bin),
    ];
    if let Some(tar) = build_context_tar {
        files.push(CidataFile::path(BUILD_CONTEXT_TAR, tar));
    }
    Ok(files)
}

/// Writes a CIDATA image holding `files` to `path`, atomically: on failure `path` is
/// left as it was.
pub fn build_cidata(path: &Path, files: &[CidataFile]) -> Result<()> {
    check_names(files)?;
    let mut sizes = Vec::with_capacity(files.len());
    for f in files {
        let len = f.len()?;
        ensure!(
            len <= MAX_FILE,
            "{} is {len} bytes; a FAT volume cannot hold a file of 4 GiB or more",
            f.name
        );
        sizes.push(len);
    }
    build_with_size(path, files, image_size(&sizes))
}

fn check_names(files: &[CidataFile]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        let bad = f.name.is_empty()
            || f.name.len() > 255
            || f.name == "."
            || f.name == ".."
            || f.name
                .chars()
                .any(|c| c.is_control() || "/\\:*?\"<>|".contains(c));
        if bad {
            bail!("{:?} is not a valid CIDATA file name", f.name);
        }
        // FAT names are case-insensitive.
        if !seen.insert(f.name.to_lowercase()) {
            bail!("{:?} appears twice in the CIDATA files", f.name);
        }
    }
    Ok(())
}

/// Contents plus FAT overhead plus slack, in whole MiB, at least [`MIN_IMAGE`].
fn image_size(sizes: &[u64]) -> u64 {
    let data: u64 = sizes
        .iter()
        .map(|s| s.div_ceil(MAX_CLUSTER) * MAX_CLUSTER)
        .sum();
    // Two FATs cost at most 1/256 of the data (FAT16, 1 KiB clusters); 1 MiB covers the
    // boot sectors and the root directory.
    let total = data + data / 128 + MIB + SLACK;
    (total.div_ceil(MIB) * MIB).max(MIN_IMAGE)
}

fn build_with_size(path: &Path, files: &[CidataFile], size: u64) -> Result<()> {
    let dir = fsutil::parent_dir(path);
    // Dropping the temporary file on any error removes it, so no partial image remains.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-cidata-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let img = tmp.as_file_mut();
    img.set_len(size)
        .with_context(|| format!("sizing the CIDATA image to {size} bytes"))?;
    fatfs::format_volume(&mut *img, format_options(size)).context("formatting the CIDATA image")?;
    img.rewind().context("rewinding the CIDATA image")?;
    {
        let fs = FileSystem::new(&mut *img, FsOptions::new())
            .context("opening the formatted CIDATA image")?;
        // Counting free clusters now makes fatfs keep the FAT32 FSInfo count up to date;
        // left unset, fsck.fat reports "Free cluster summary uninitialized".
        fs.stats()
            .context("counting free clusters on the CIDATA image")?;
        for f in files {
            let mut out = fs
                .root_dir()
                .create_file(&f.name)
                .with_context(|| format!("creating {} on the CIDATA image", f.name))?;
            copy_into(&f.source, &mut out)
                .with_context(|| format!("writing {} to the CIDATA image", f.name))?;
            out.flush()
                .with_context(|| format!("flushing {} on the CIDATA image", f.name))?;
        }
        fs.unmount().context("closing the CIDATA file system")?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming the CIDATA image into {}", path.display()))?;
    fsutil::sync_dir(dir)
}

fn format_options(size: u64) -> FormatVolumeOptions {
    let fat_type = if size < FAT32_FROM {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    let mut label = *b"           ";
    label[..CIDATA_LABEL.len()].copy_from_slice(CIDATA_LABEL.as_bytes());
    FormatVolumeOptions::new()
        .fat_type(fat_type)
        .volume_label(label)
        .volume_id(volume_id())
}

/// A serial number that differs between builds, as mkfs.fat's does.
fn volume_id() -> u32 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_secs() as u32) ^ t.subsec_nanos().rotate_left(16)
}

fn copy_into(source: &CidataSource, out: &mut impl Write) -> Result<()> {
    match source {
        CidataSource::Bytes(b) => out.write_all(b).context("copying bytes"),
        CidataSource::Path(p) => {
            let file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            // Large reads, so fatfs writes whole clusters rather than 8 KiB pieces.
            let mut reader = io::BufReader::with_capacity(MIB as usize, file);
            io::copy(&mut reader, out).with_context(|| format!("copying {}", p.display()))?;
            Ok(())
        }
    }
}

/// Reads a file back from an image; for tests and inspection.
pub fn read_file(image: &Path, name: &str) -> Result<Vec<u8>> {
    let img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let fs = FileSystem::new(img, FsOptions::new())
        .with_context(|| format!("opening the FAT volume in {}", image.display()))?;
    let mut data = Vec::new();
    fs.root_dir()
        .open_file(name)
        .with_context(|| format!("opening {name} in {}", image.display()))?
        .read_to_end(&mut data)
        .with_context(|| format!("reading {name} from {}", image.display()))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use cos_customizer_common::cmd;

    use cos_customizer_common::protocol::{cidata_url, CIDATA_MOUNT};
    /// Deterministic bytes that do not compress or repeat (xorshift64).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// `fsck.fat -n` must pass and print only its banner and the summary line.
    fn assert_fsck_clean(img: &Path) -> String {
        let out = cmd::run_stdout(Command::new("fsck.fat").arg("-n").arg(img)).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2, "unexpected fsck.fat output:\n{out}");
        assert!(lines[0].starts_with("fsck.fat "), "{out}");
        assert!(
            lines[1].starts_with(&format!("{}: ", img.display())) && lines[1].contains(" files, "),
            "{out}"
        );
        out
    }

    fn blkid(img: &Path) -> String {
        cmd::run_stdout(Command::new("blkid").args(["-p", "-o", "export"]).arg(img)).unwrap()
    }

    fn mcopy(img: &Path, name: &str) -> Vec<u8> {
        cmd::run(
            Command::new("mcopy")
                .arg("-i")
                .arg(img)
                .arg(format!("::{name}"))
                .arg("-"),
        )
        .unwrap()
        .stdout
    }

    fn names_in_root(img: &Path) -> String {
        // -a shows long names; -b lists bare paths, one a line.
        cmd::run_stdout(Command::new("mdir").arg("-i").arg(img).args(["-b", "::"])).unwrap()
    }

    #[test]
    fn image_is_fsck_clean_and_readable_with_mtools() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.bin");
        let big_data = noise(1_500_000, 7);
        std::fs::write(&big, &big_data).unwrap();
        let long_name = "a rather long file name, with Mixed Case.and.dots.tar";
        let files = vec![
            CidataFile::bytes(USER_DATA, cloud_config::user_data()),
            CidataFile::bytes(META_DATA, cloud_config::meta_data("i-1")),
            CidataFile::bytes(CONFIG_JSON, "{}"),
            CidataFile::bytes("empty", Vec::new()),
            CidataFile::path(PROVISIONER_AMD64, &big),
            CidataFile::bytes(long_name, noise(5000, 3)),
        ];
        let img = dir.path().join("cidata.img");
        build_cidata(&img, &files).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 * MIB);

        let fsck = assert_fsck_clean(&img);
        eprintln!("{fsck}");
        // fsck.fat counts the volume label entry as a file (mkfs.fat images do the same).
        assert!(fsck.contains(": 7 files, "), "{fsck}");

        let ids = blkid(&img);
        eprintln!("{ids}");
        assert!(ids.lines().any(|l| l == "LABEL=CIDATA"), "{ids}");
        assert!(ids.lines().any(|l| l == "TYPE=vfat"), "{ids}");

        let listing = names_in_root(&img);
        eprintln!("{listing}");
        for f in &files {
            assert!(
                listing.lines().any(|l| l == format!("::/{}", f.name)),
                "{} missing from\n{listing}",
                f.name
            );
            let want = match &f.source {
                CidataSource::Bytes(b) => b.clone(),
                CidataSource::Path(p) => std::fs::read(p).unwrap(),
            };
            assert!(mcopy(&img, &f.name) == want, "{} differs", f.name);
            assert!(
                read_file(&img, &f.name).unwrap() == want,
                "{} differs",
                f.name
            );
        }
        assert!(read_file(&img, PROVISIONER_AMD64).unwrap() == big_data);
    }

    #[test]
    fn large_content_is_fsck_clean() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("context.tar");
        let data = noise(40 * MIB as usize + 12345, 11);
        std::fs::write(&src, &data).unwrap();
        let img = dir.path().join("cidata.img");
        build_cidata(&img, &[CidataFile::path(BUILD_CONTEXT_TAR, &src)]).unwrap();
        assert_fsck_clean(&img);
        assert!(blkid(&img).lines().any(|l| l == "LABEL=CIDATA"));
        assert!(mcopy(&img, BUILD_CONTEXT_TAR) == data);
    }

    #[test]
    fn every_size_class_formats_cleanly() {
        // Around fatfs's cluster-size steps and the FAT16/FAT32 cut-over; the files are
        // sparse, so only the FATs get written.
        let dir = tempfile::tempdir().unwrap();
        for mib in [16, 17, 127, 128, 129, 256, 257, 511, 512, 513, 1100] {
            let img = dir.path().join(format!("{mib}.img"));
            let files = [CidataFile::bytes(META_DATA, "instance-id: x\n")];
            build_with_size(&img, &files, mib * MIB).unwrap();
            assert_fsck_clean(&img);
            let ids = blkid(&img);
            let want = if mib * MIB < FAT32_FROM {
                "FAT16"
            } else {
                "FAT32"
            };
            assert!(
                ids.lines().any(|l| l == format!("VERSION={want}")),
                "{mib} MiB:\n{ids}"
            );
            assert!(
                ids.lines().any(|l| l == "LABEL=CIDATA"),
                "{mib} MiB:\n{ids}"
            );
            assert_eq!(mcopy(&img, META_DATA), b"instance-id: x\n");
            std::fs::remove_file(&img).unwrap();
        }
    }

    #[test]
    fn size_covers_contents() {
        assert_eq!(image_size(&[]), 16 * MIB);
        assert_eq!(image_size(&[100]), 16 * MIB);
        let s = image_size(&[40 * MIB, 3 * MIB, 10]);
        assert!(s >= 40 * MIB + 3 * MIB + SLACK && s / MIB * MIB == s, "{s}");
        assert!(image_size(&[600 * MIB]) >= FAT32_FROM);
    }

    #[test]
    fn failed_build_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cidata.img");
        let missing = dir.path().join("no-such-file");
        let e = build_cidata(&img, &[CidataFile::path(PROVISIONER_AMD64, &missing)]).unwrap_err();
        assert!(format!("{e:#}").contains("no-such-file"), "{e:#}");

        // A folder passes the size check but fails to read mid-build, after formatting.
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let e = build_cidata(
            &img,
            &[
                CidataFile::bytes(META_DATA, "x"),
                CidataFile::path(BUILD_CONTEXT_TAR, &folder),
            ],
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("writing user_build_context.tar to the CIDATA image"),
            "{e:#}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("folder")]);
    }

    #[test]
    fn bad_or_duplicate_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cidata.img");
        for names in [vec!["a/b"], vec!["x", "X"], vec![""]] {
            let files: Vec<_> = names.iter().map(|n| CidataFile::bytes(n, "1")).collect();
            assert!(build_cidata(&img, &files).is_err(), "{names:?}");
        }
        assert!(!img.exists());
    }

    #[test]
    fn cidata_files_match_the_startup_script() {
        let config = ProvisionerConfig::default();
        let bin = Path::new("/bin/provisioner");
        let files = cidata_files(&config, "#cloud-config\n", bin, None, "id-1").unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["user-data", "meta-data", "config.json", "provisioner_amd64"]
        );
        assert_eq!(
            files[2].source,
            CidataSource::Bytes(serde_json::to_vec(&config).unwrap())
        );
        assert_eq!(files[3].source, CidataSource::Path(bin.to_path_buf()));
        let s = cloud_config::startup_script();
        assert!(s.contains(&format!("CIDATA={CIDATA_MOUNT}\n")));
        assert!(s.contains("/provisioner_${ARCH}"));

        let tar = Path::new("/tmp/ctx.tar");
        let files = cidata_files(&config, "#cloud-config\n", bin, Some(tar), "id-1").unwrap();
        assert_eq!(
            files.last().unwrap(),
            &CidataFile::path(BUILD_CONTEXT_TAR, tar)
        );
        assert_eq!(
            cidata_url(BUILD_CONTEXT_TAR),
            "file:///mnt/disks/cidata/user_build_context.tar"
        );
    }
}
