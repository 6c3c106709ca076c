//! dm-verity hash trees, written byte for byte as `veritysetup format --format=0
//! --no-superblock --hash=sha256` writes them, so sealing needs no veritysetup in the image.
//!
//! Format 0 is ChromeOS's: each digest is SHA-256 over a block followed by the salt, and a
//! hash block holds digests packed back to back, zero-padded to its end. Level 0 hashes
//! the data blocks; each level above hashes the blocks of the one below, until one block
//! is left, whose digest is the root hash. On disk the levels start at the hash offset,
//! top level first. With a single data block there is no tree at all: the root hash is
//! that block's digest.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::Path;

use anyhow::{bail, ensure, Context as _, Result};
use sha2::{Digest as _, Sha256};

const DIGEST_SIZE: usize = 32;
/// veritysetup's random salt size.
const RANDOM_SALT_SIZE: usize = 32;
/// The largest salt libcryptsetup accepts.
const MAX_SALT_SIZE: usize = 256;
/// Bytes read from the data area at a time (a multiple of every valid block size).
const READ_SIZE: usize = 4 << 20;
/// Finished hash blocks of one level are written once this many bytes are waiting.
const WRITE_SIZE: usize = 1 << 20;

/// Where the data is, where its hash tree goes, and how it is salted; the fields are
/// veritysetup's options of the same names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Bytes per data block (`--data-block-size`).
    pub data_block_size: u32,
    /// Bytes per hash block (`--hash-block-size`).
    pub hash_block_size: u32,
    /// Data blocks to hash, from the start of the device (`--data-blocks`).
    pub data_blocks: u64,
    /// Byte offset of the hash tree on the same device (`--hash-offset`).
    pub hash_offset: u64,
    /// The salt (`--salt`), or `None` for 32 random bytes, as veritysetup picks.
    pub salt: Option<Vec<u8>>,
}

/// Writes the hash tree of `params.data_blocks` blocks of `dev` (a device or a file) at
/// `params.hash_offset` of the same `dev`, and syncs it. Returns the root hash and the
/// salt in lowercase hex, as `veritysetup format` prints them.
pub fn format(dev: &Path, params: &Params) -> Result<(String, String)> {
    let tree = Layout::new(params)
        .with_context(|| format!("cannot build a dm-verity hash tree over {}", dev.display()))?;
    let salt = match &params.salt {
        Some(salt) => salt.clone(),
        None => random_salt()?,
    };
    if salt.len() > MAX_SALT_SIZE {
        bail!(
            "the dm-verity salt is {} bytes; at most {MAX_SALT_SIZE} are allowed",
            salt.len()
        );
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {} to write its dm-verity hash tree", dev.display()))?;
    check_size(&mut file, dev, &tree)?;

    let mut writer = TreeWriter::new(&file, &tree, &salt);
    let block = params.data_block_size as usize;
    let mut buf = vec![0u8; READ_SIZE];
    let mut offset = 0;
    while offset < tree.data_end {
        let n = READ_SIZE.min((tree.data_end - offset) as usize);
        file.read_exact_at(&mut buf[..n], offset).with_context(|| {
            format!(
                "reading the data blocks of {} at byte {offset}",
                dev.display()
            )
        })?;
        for chunk in buf[..n].chunks_exact(block) {
            writer.push(0, salted_digest(chunk, &salt))?;
        }
        offset += n as u64;
    }
    let root = writer.finish()?;
    file.sync_all()
        .with_context(|| format!("syncing the dm-verity hash tree to {}", dev.display()))?;
    Ok((hex(&root), hex(&salt)))
}

/// The tree's shape: where each level starts and how many blocks it has.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    hash_block_size: usize,
    /// Bytes of data to hash, from offset 0.
    data_end: u64,
    /// `(first block, blocks)` per level in units of hash blocks, bottom level first
    /// (the top level lies first on disk).
    levels: Vec<(u64, u64)>,
}

impl Layout {
    fn new(p: &Params) -> Result<Layout> {
        for (name, size) in [("data", p.data_block_size), ("hash", p.hash_block_size)] {
            ensure!(
                size.is_power_of_two() && (512..=512 * 1024).contains(&size),
                "the {name} block size {size} is not a power of two from 512 to 524288"
            );
        }
        ensure!(p.data_blocks > 0, "there are no data blocks to hash");
        let hash_block_size = u64::from(p.hash_block_size);
        ensure!(
            p.hash_offset.is_multiple_of(hash_block_size),
            "the hash offset {} is not a multiple of the hash block size {hash_block_size}",
            p.hash_offset
        );
        let data_end = p
            .data_blocks
            .checked_mul(u64::from(p.data_block_size))
            .context("the data area's size overflows 64 bits")?;
        ensure!(
            p.hash_offset >= data_end,
            "the hash tree at byte {} would overwrite the data, which ends at byte {data_end}",
            p.hash_offset
        );
        // Digests per hash block, as a power of two.
        let bits = (hash_block_size / DIGEST_SIZE as u64).trailing_zeros();
        let mut count = 0;
        while bits * count < 64 && (p.data_blocks - 1) >> (bits * count) != 0 {
            count += 1;
        }
        let mut levels = vec![(0, 0); count as usize];
        let mut next = p.hash_offset / hash_block_size;
        for (i, level) in levels.iter_mut().enumerate().rev() {
            // Each block of level i covers 2^(bits * (i + 1)) data blocks.
            let shift = bits * (i as u32 + 1);
            let covered = 1u128 << shift;
            let blocks = ((u128::from(p.data_blocks) + covered - 1) >> shift) as u64;
            *level = (next, blocks);
            next = next
                .checked_add(blocks)
                .filter(|end| end.checked_mul(hash_block_size).is_some())
                .context("the hash tree's end overflows 64 bits")?;
        }
        Ok(Layout {
            hash_block_size: hash_block_size as usize,
            data_end,
            levels,
        })
    }

    /// The byte after the hash tree.
    fn hash_end(&self) -> u64 {
        self.levels.first().map_or(0, |&(first, blocks)| {
            (first + blocks) * self.hash_block_size as u64
        })
    }
}

/// The data must all be there, and a block device cannot grow to take the tree (a file
/// can, as with veritysetup).
fn check_size(file: &mut File, dev: &Path, tree: &Layout) -> Result<()> {
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("reading the size of {}", dev.display()))?;
    ensure!(
        size >= tree.data_end,
        "{} is {size} bytes, smaller than the {} bytes of data blocks to hash",
        dev.display(),
        tree.data_end
    );
    let is_block_device = file
        .metadata()
        .with_context(|| format!("reading the file type of {}", dev.display()))?
        .file_type()
        .is_block_device();
    ensure!(
        !is_block_device || size >= tree.hash_end(),
        "{} is {size} bytes, but its dm-verity hash tree ends at byte {}: the partition is too small for the data and its hash tree",
        dev.display(),
        tree.hash_end()
    );
    Ok(())
}

/// Builds all levels at once as the digests of the data blocks arrive in order, writing
/// each level's finished blocks in batches.
struct TreeWriter<'a> {
    file: &'a File,
    block: usize,
    salt: &'a [u8],
    /// Per level, bottom first: the next hash block to write, and the bytes waiting to be
    /// written there (whole blocks, then the one being filled).
    levels: Vec<(u64, Vec<u8>)>,
    /// Per level, the block after its last in the layout, to check the tree came out whole.
    ends: Vec<u64>,
    root: Option<[u8; DIGEST_SIZE]>,
}

impl<'a> TreeWriter<'a> {
    fn new(file: &'a File, tree: &Layout, salt: &'a [u8]) -> TreeWriter<'a> {
        TreeWriter {
            file,
            block: tree.hash_block_size,
            salt,
            levels: tree
                .levels
                .iter()
                .map(|&(first, _)| (first, Vec::with_capacity(WRITE_SIZE + tree.hash_block_size)))
                .collect(),
            ends: tree
                .levels
                .iter()
                .map(|&(first, blocks)| first + blocks)
                .collect(),
            root: None,
        }
    }

    /// Adds the next digest of `level`; a digest above the top level is the root hash.
    fn push(&mut self, mut level: usize, mut digest: [u8; DIGEST_SIZE]) -> Result<()> {
        loop {
            if level == self.levels.len() {
                ensure!(
                    self.root.replace(digest).is_none(),
                    "internal error: the dm-verity hash tree has two roots"
                );
                return Ok(());
            }
            let pending = &mut self.levels[level].1;
            pending.extend_from_slice(&digest);
            if !pending.len().is_multiple_of(self.block) {
                return Ok(());
            }
            digest = self.close_block(level)?;
            level += 1;
        }
    }

    /// The block just filled (or padded) at the end of `level`'s pending bytes: its digest
    /// for the level above, after writing the waiting blocks if there are enough.
    fn close_block(&mut self, level: usize) -> Result<[u8; DIGEST_SIZE]> {
        let (_, pending) = &self.levels[level];
        let digest = salted_digest(&pending[pending.len() - self.block..], self.salt);
        if pending.len() >= WRITE_SIZE {
            self.write(level)?;
        }
        Ok(digest)
    }

    fn write(&mut self, level: usize) -> Result<()> {
        let (next, pending) = &mut self.levels[level];
        let offset = *next * self.block as u64;
        self.file
            .write_all_at(pending, offset)
            .with_context(|| format!("writing dm-verity hash blocks at byte {offset}"))?;
        *next += (pending.len() / self.block) as u64;
        pending.clear();
        Ok(())
    }

    /// Zero-pads each level's last block, bottom up (each padded block adds a digest to
    /// the level above), writes what is left, and returns the root hash.
    fn finish(mut self) -> Result<[u8; DIGEST_SIZE]> {
        for level in 0..self.levels.len() {
            let pending = &mut self.levels[level].1;
            if !pending.len().is_multiple_of(self.block) {
                let padded = pending.len().next_multiple_of(self.block);
                pending.resize(padded, 0);
                let digest = self.close_block(level)?;
                self.push(level + 1, digest)?;
            }
            self.write(level)?;
        }
        for ((next, _), end) in self.levels.iter().zip(&self.ends) {
            ensure!(
                next == end,
                "internal error: a dm-verity tree level ends at block {next}, not {end}"
            );
        }
        self.root
            .context("internal error: the dm-verity hash tree has no root")
    }
}

fn salted_digest(block: &[u8], salt: &[u8]) -> [u8; DIGEST_SIZE] {
    let mut h = Sha256::new();
    h.update(block);
    h.update(salt);
    h.finalize().into()
}

fn random_salt() -> Result<Vec<u8>> {
    let mut salt = vec![0u8; RANDOM_SALT_SIZE];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .context("reading a random dm-verity salt from /dev/urandom")?;
    Ok(salt)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use cos_customizer_common::cmd;
    use std::fs;
    use std::io::Write as _;
    use std::path::PathBuf;
    use std::process::Command;

    /// Whether veritysetup, the oracle, can run. Without it, a loud SKIPPED line, or a
    /// panic when `REQUIRE_VERITYSETUP=1`, so CI cannot pass by skipping.
    pub fn have_veritysetup() -> bool {
        // Probed by running it, not through `crate::tool`: the benchmark compiles this
        // module (and these tests) outside the provisioner crate.
        let runs = Command::new("veritysetup")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if runs {
            return true;
        }
        let why = "veritysetup is not installed: run scripts/install-deps.sh (cryptsetup-bin)";
        if std::env::var("REQUIRE_VERITYSETUP").as_deref() == Ok("1") {
            panic!("{why}; REQUIRE_VERITYSETUP=1 forbids skipping");
        }
        // Straight to stderr, past the test harness's capture.
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
        false
    }

    /// veritysetup's options for the tree `format` writes with `p` and `salt_hex`.
    fn options(p: &Params, salt_hex: &str) -> Vec<String> {
        vec![
            "--no-superblock".into(),
            "--format=0".into(),
            "--hash=sha256".into(),
            format!("--data-block-size={}", p.data_block_size),
            format!("--hash-block-size={}", p.hash_block_size),
            format!("--data-blocks={}", p.data_blocks),
            format!("--hash-offset={}", p.hash_offset),
            format!("--salt={salt_hex}"),
        ]
    }

    fn veritysetup(action: &str, img: &Path, options: &[String], root: &str) -> Result<String> {
        cmd::run_stdout(
            Command::new("veritysetup")
                .arg(action)
                .args(options)
                .arg(img)
                .arg(img)
                .args((!root.is_empty()).then_some(root)),
        )
    }

    /// A file with pseudo-random data blocks, then 0xAA bytes up to 8 KiB past the tree:
    /// the tree's zero padding must overwrite them, and what lies past it keep them.
    fn image(dir: &Path, p: &Params) -> PathBuf {
        let tree = Layout::new(p).unwrap();
        let mut bytes = vec![0xAA; (tree.hash_end().max(p.hash_offset) + 8192) as usize];
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ p.data_blocks;
        for b in &mut bytes[..tree.data_end as usize] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let img = dir.join("ours.img");
        fs::write(&img, bytes).unwrap();
        img
    }

    fn params(data_blocks: u64, data_block_size: u32, hash_block_size: u32) -> Params {
        Params {
            data_block_size,
            hash_block_size,
            data_blocks,
            hash_offset: data_blocks * u64::from(data_block_size),
            salt: None,
        }
    }

    /// `format` and `veritysetup format` with the same salt write identical files with the
    /// same root hash, `veritysetup verify` accepts ours, and rejects it once a data block
    /// is corrupted.
    fn matches_veritysetup(p: &Params) {
        if !have_veritysetup() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let ours = image(d.path(), p);
        let theirs = d.path().join("theirs.img");
        fs::copy(&ours, &theirs).unwrap();

        let (root, salt) = format(&ours, p).unwrap();
        match &p.salt {
            Some(given) => assert_eq!(salt, hex(given)),
            None => assert_eq!(salt.len(), 2 * RANDOM_SALT_SIZE, "{salt}"),
        }
        let opts = options(p, &salt);
        let out = veritysetup("format", &theirs, &opts, "").unwrap();
        let their_root = out
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .map(str::trim);
        assert_eq!(their_root, Some(root.as_str()), "{p:?}\n{out}");
        let (a, b) = (fs::read(&ours).unwrap(), fs::read(&theirs).unwrap());
        assert_eq!(a.len(), b.len());
        if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!("{p:?}: our file differs from veritysetup's at byte {at}");
        }

        veritysetup("verify", &ours, &opts, &root).unwrap();
        let mut bytes = a;
        let last_block = (p.data_blocks - 1) * u64::from(p.data_block_size);
        bytes[last_block as usize + 100] ^= 1;
        fs::write(&ours, bytes).unwrap();
        let err = veritysetup("verify", &ours, &opts, &root).unwrap_err();
        assert!(format!("{err:#}").contains("failed"), "{err:#}");
    }

    #[test]
    fn one_data_block_is_its_own_root() {
        matches_veritysetup(&params(1, 4096, 4096));
        matches_veritysetup(&Params {
            salt: Some(vec![0x5a; 7]),
            ..params(1, 4096, 4096)
        });
    }

    #[test]
    fn one_full_hash_block() {
        matches_veritysetup(&params(128, 4096, 4096));
        matches_veritysetup(&Params {
            salt: Some((0..32).collect()),
            ..params(128, 4096, 4096)
        });
    }

    #[test]
    fn one_hash_more_than_a_block() {
        matches_veritysetup(&params(129, 4096, 4096));
        matches_veritysetup(&Params {
            salt: Some(vec![0xff; MAX_SALT_SIZE]),
            ..params(129, 4096, 4096)
        });
    }

    #[test]
    fn thousands_of_blocks() {
        matches_veritysetup(&params(3000, 4096, 4096));
        // A gap between the data and the tree.
        matches_veritysetup(&Params {
            hash_offset: 3002 * 4096,
            salt: Some(b"cos".to_vec()),
            ..params(3000, 4096, 4096)
        });
    }

    #[test]
    fn three_levels_of_small_hash_blocks() {
        let p = params(3000, 1024, 512);
        assert_eq!(Layout::new(&p).unwrap().levels.len(), 3);
        matches_veritysetup(&p);
    }

    #[test]
    fn random_salts_differ() {
        let d = tempfile::tempdir().unwrap();
        let p = params(2, 4096, 4096);
        let img = image(d.path(), &p);
        let (root1, salt1) = format(&img, &p).unwrap();
        let (root2, salt2) = format(&img, &p).unwrap();
        assert_ne!(salt1, salt2);
        assert_ne!(root1, root2);
    }

    #[test]
    fn known_root_hash() {
        // SHA-256 of 4096 zero bytes: one data block, no salt, no tree.
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("zero.img");
        fs::write(&img, [0u8; 4096]).unwrap();
        let p = Params {
            salt: Some(Vec::new()),
            ..params(1, 4096, 4096)
        };
        let (root, salt) = format(&img, &p).unwrap();
        assert_eq!(
            root,
            "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7"
        );
        assert_eq!(salt, "");
        assert_eq!(fs::metadata(&img).unwrap().len(), 4096, "nothing written");
    }

    #[test]
    fn levels_lie_top_first() {
        let levels = |blocks| Layout::new(&params(blocks, 4096, 4096)).unwrap().levels;
        assert_eq!(levels(1), []);
        assert_eq!(levels(128), [(128, 1)]);
        assert_eq!(levels(129), [(130, 2), (129, 1)]);
        // 129 level-0 blocks, 2 above them, and the top.
        assert_eq!(
            levels(128 * 128 + 1),
            [(16385 + 3, 129), (16385 + 1, 2), (16385, 1)]
        );
        let tree = Layout::new(&params(129, 4096, 4096)).unwrap();
        assert_eq!(tree.hash_end(), (129 + 3) * 4096);
    }

    #[test]
    fn refuses_bad_parameters() {
        let err = |p: Params| format!("{:#}", Layout::new(&p).unwrap_err());
        assert!(err(params(0, 4096, 4096)).contains("no data blocks"));
        assert!(err(params(8, 4096, 3000)).contains("hash block size 3000"));
        assert!(err(params(8, 256, 4096)).contains("data block size 256"));
        let overlap = err(Params {
            hash_offset: 7 * 4096,
            ..params(8, 4096, 4096)
        });
        assert!(overlap.contains("overwrite the data"), "{overlap}");
        let unaligned = err(Params {
            hash_offset: 8 * 4096 + 512,
            ..params(8, 4096, 4096)
        });
        assert!(unaligned.contains("not a multiple"), "{unaligned}");
    }

    #[test]
    fn refuses_missing_data_and_long_salts() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("short.img");
        fs::write(&img, [0u8; 4096]).unwrap();
        let short = format!("{:#}", format(&img, &params(2, 4096, 4096)).unwrap_err());
        assert!(short.contains("smaller than the 8192 bytes"), "{short}");
        let salty = Params {
            salt: Some(vec![0; MAX_SALT_SIZE + 1]),
            ..params(1, 4096, 4096)
        };
        let long = format!("{:#}", format(&img, &salty).unwrap_err());
        assert!(long.contains("257 bytes"), "{long}");
        let missing = format!(
            "{:#}",
            format(&d.path().join("none"), &params(1, 4096, 4096)).unwrap_err()
        );
        assert!(missing.contains("none"), "{missing}");
    }
}
