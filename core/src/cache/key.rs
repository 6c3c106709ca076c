//! The cache key: a SHA-256 digest of everything that decides the output image, so that any
//! change in them misses and nothing else does.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::copy::data_extents;
use super::CacheOptions;
use crate::preload::Request;

/// Bumped whenever an entry's layout or the key's inputs change, so old entries miss.
const FORMAT_VERSION: &str = "1";
/// Files are hashed as the list of their non-zero blocks of this size with their index, so
/// a file's key does not depend on which of its zeros are holes.
const BLOCK: u64 = 64 << 10;
static ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// A cache key: 64 lowercase hex digits, also the entry's folder name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The key as its folder name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key named by folder `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Key> {
        (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Key(name.to_string()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of the build `req`, whose source image is read from `source_files` (the image and
/// its backing chain, in the order the build reads them). Not in it: the timeout, the
/// accelerator, the output's path and the image's name, labels and licenses, which do not
/// change the bytes of a local output.
pub fn key(req: &Request, source_files: &[PathBuf], o: &CacheOptions) -> Result<Key> {
    // Without the source's files the key could not tell two source images apart.
    anyhow::ensure!(
        !source_files.is_empty(),
        "the build cache needs a local source image (start-image-build -image-file)"
    );
    let mut k = Fields(Sha256::new());
    k.field("cache-format", FORMAT_VERSION.as_bytes());
    // The cloud-config and the export belong to this program.
    k.field("cos-customizer", env!("CARGO_PKG_VERSION").as_bytes());
    for f in source_files {
        k.field("source-image", &file_digest(f)?);
    }
    k.field("build-context", &file_digest(&req.context_tar)?);
    k.field("provisioner", &file_digest(&req.provisioner)?);
    // The recorded steps with their flags, the boot disk's (-oem-size, the reclaim of
    // ROOT-A) and the storage endpoint: the provisioner's whole config.
    let prov = serde_json::to_vec(&req.prov).context("encoding the provisioner config")?;
    k.field("provisioner-config", &prov);
    k.field("user-data", req.user_data.as_bytes());
    let disk = req
        .build
        .disk_size_gb
        .map(|gb| gb.to_string())
        .unwrap_or_default();
    k.field("disk-size-gb", disk.as_bytes());
    k.field("machine-type", req.build.machine_type.as_bytes());
    let format = req
        .output
        .local_file
        .as_ref()
        .map_or("", |(_, f)| f.as_str());
    k.field("output-format", format.as_bytes());
    for v in &o.vm_shape {
        k.field("vm", v.as_bytes());
    }
    k.field("salt", o.salt.as_bytes());
    Ok(Key(hex(&k.0.finalize())))
}

/// A digest fed named fields, each name and value preceded by its length so that no two
/// different lists of fields hash alike.
struct Fields(Sha256);

impl Fields {
    fn field(&mut self, name: &str, value: &[u8]) {
        for part in [name.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }
}

/// The digest of the contents of file `path`: its length and its non-zero blocks with their
/// index. Holes are skipped without reading them.
fn file_digest(path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening {} to hash it", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; BLOCK as usize];
    let mut next = 0;
    let extents =
        data_extents(&f, len).with_context(|| format!("finding the data in {}", path.display()))?;
    for (start, end) in extents {
        for block in (start / BLOCK).max(next)..end.div_ceil(BLOCK) {
            let off = block * BLOCK;
            let n = BLOCK.min(len - off) as usize;
            f.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {} at byte {off}", path.display()))?;
            // A slice comparison is a memcmp, fast in debug builds too.
            if buf[..n] != ZEROS[..n] {
                h.update(block.to_le_bytes());
                h.update(&buf[..n]);
            }
        }
        next = next.max(end.div_ceil(BLOCK));
    }
    Ok(h.finalize().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ImageFormat, OutputImage};
    use crate::cache::tests::options;
    use cos_customizer_common::config::{RunScriptArgs, Step};
    use std::time::Duration;

    struct Inputs {
        _dir: tempfile::TempDir,
        req: Request,
        source: PathBuf,
    }

    fn write(path: &Path, data: &[u8]) {
        std::fs::write(path, data).unwrap();
    }

    fn inputs() -> Inputs {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        write(&p("source.img"), b"source");
        write(&p("context.tar"), b"context");
        write(&p("provisioner"), b"provisioner");
        let req = Request {
            source: Default::default(),
            build: Default::default(),
            prov: Default::default(),
            user_data: "#cloud-config\n".into(),
            provisioner: p("provisioner"),
            context_tar: p("context.tar"),
            log_dir: p("logs"),
            output: OutputImage {
                name: "out".into(),
                project: String::new(),
                family: String::new(),
                labels: Default::default(),
                licenses: vec![],
                description: String::new(),
                local_file: Some((p("out.img"), ImageFormat::Raw)),
            },
            timeout: Duration::from_secs(60),
        };
        Inputs {
            source: p("source.img"),
            req,
            _dir: dir,
        }
    }

    /// One change to the key's inputs.
    type Change = Box<dyn Fn(&mut Inputs, &mut CacheOptions)>;

    fn key_of(i: &Inputs, o: &CacheOptions) -> Key {
        key(&i.req, std::slice::from_ref(&i.source), o).unwrap()
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = inputs();
        let o = options(Path::new("/c"));
        let k0 = key_of(&base, &o);
        assert_eq!(k0, key_of(&base, &o), "the key is stable");
        assert!(Key::from_name(k0.as_str()).is_some());
        assert!(key(&base.req, &[], &o).is_err(), "a key without the source");
        let changes: Vec<(&str, Change)> = vec![
            ("source", Box::new(|i, _| write(&i.source, b"sourcf"))),
            (
                "context",
                Box::new(|i, _| write(&i.req.context_tar, b"contexu")),
            ),
            (
                "provisioner",
                Box::new(|i, _| write(&i.req.provisioner, b"provisionet")),
            ),
            (
                "a step",
                Box::new(|i, _| {
                    i.req.prov.steps.push(Step::RunScript(RunScriptArgs {
                        build_context: "user".into(),
                        path: "a.sh".into(),
                        env: String::new(),
                    }))
                }),
            ),
            (
                "oem size",
                Box::new(|i, _| i.req.prov.boot_disk.oem_size = Some("1G".into())),
            ),
            (
                "reclaim",
                Box::new(|i, _| i.req.prov.boot_disk.reclaim_sda3 = true),
            ),
            (
                "endpoint",
                Box::new(|i, _| i.req.prov.storage_endpoint = "http://x".into()),
            ),
            ("user-data", Box::new(|i, _| i.req.user_data.push('\n'))),
            (
                "disk size",
                Box::new(|i, _| i.req.build.disk_size_gb = Some(20)),
            ),
            (
                "machine type",
                Box::new(|i, _| i.req.build.machine_type = "e2-small".into()),
            ),
            (
                "format",
                Box::new(|i, _| {
                    if let Some((_, f)) = &mut i.req.output.local_file {
                        *f = ImageFormat::Qcow2;
                    }
                }),
            ),
            (
                "vm shape",
                Box::new(|_, o| o.vm_shape.push("hermetic".into())),
            ),
            ("salt", Box::new(|_, o| o.salt = "2026-12-06".into())),
        ];
        for (what, change) in changes {
            let mut i = inputs();
            let mut o = options(Path::new("/c"));
            change(&mut i, &mut o);
            assert_ne!(key_of(&i, &o), k0, "{what} does not change the key");
        }
    }

    #[test]
    fn what_does_not_shape_the_output_keeps_the_key() {
        let base = inputs();
        let k0 = key_of(&base, &options(Path::new("/c")));
        let mut i = inputs();
        i.req.timeout = Duration::from_secs(3600);
        i.req.build.timeout = "1h0m0s".into();
        i.req.output.name = "other".into();
        i.req.output.labels.insert("a".into(), "b".into());
        i.req.output.local_file = Some(("/elsewhere/x.img".into(), ImageFormat::Raw));
        i.req.log_dir = "/logs".into();
        assert_eq!(key_of(&i, &options(Path::new("/other-cache"))), k0);
    }

    #[test]
    fn a_file_hashes_alike_with_or_without_holes() {
        let d = tempfile::tempdir().unwrap();
        let (sparse, dense) = (d.path().join("sparse"), d.path().join("dense"));
        let f = File::create(&sparse).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"data", 5 << 20).unwrap();
        let mut bytes = vec![0u8; 10 << 20];
        bytes[5 << 20..(5 << 20) + 4].copy_from_slice(b"data");
        write(&dense, &bytes);
        assert_eq!(file_digest(&sparse).unwrap(), file_digest(&dense).unwrap());
        bytes[0] = 1;
        write(&dense, &bytes);
        assert_ne!(file_digest(&sparse).unwrap(), file_digest(&dense).unwrap());
        // Zeros at the end are content too: a longer file differs.
        f.set_len(11 << 20).unwrap();
        bytes[0] = 0;
        write(&dense, &bytes);
        assert_ne!(file_digest(&sparse).unwrap(), file_digest(&dense).unwrap());
    }
}
