//! The build cache (`finish-image-build -cache-dir`): local output images kept under the
//! digest of everything that decides them ([`key()`]), so a build of unchanged inputs
//! writes the kept image in seconds instead of booting a VM.
//!
//! Layout of the cache folder:
//! - `entries/<key>/image`: a finished entry, and `entries/<key>/used`, whose modification
//!   time is the entry's last use (least recently used goes first);
//! - `tmp/<key>/`: an entry being written; renamed to `entries/<key>` only when whole (and
//!   an evicted entry is renamed back here before it is deleted), so a crash never leaves a
//!   partial entry under `entries/`;
//! - `locks/<key>`: the key's lock (`flock`), held by a build from its lookup to its store,
//!   so two builds of one key build once: the second waits for it, then hits. A `tmp/<key>` whose
//!   lock is free belongs to a build that died, and is swept.

mod copy;
mod key;

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use cos_customizer_common::fsutil;
use tempfile::TempPath;

use crate::output_lock;

pub use key::{key, Key};

/// `finish-image-build`'s cache flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// The cache folder (`-cache-dir`), made if missing.
    pub dir: PathBuf,
    /// The most the entries may take on disk, in allocated bytes (`-cache-size-gb`).
    pub limit_bytes: u64,
    /// Goes into the key (`-cache-salt`): a new salt rebuilds what the inputs cannot show.
    pub salt: String,
    /// The backend's VM settings that scripts can see (`-hermetic`, `-disk-interface`).
    pub vm_shape: Vec<String>,
}

/// An open cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    limit_bytes: u64,
}

/// What storing an image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The image is kept.
    Kept {
        /// What the entry takes on disk.
        bytes: u64,
        /// The entries evicted to make room.
        evicted: Vec<Key>,
    },
    /// The image alone takes more than the limit: not kept.
    TooLarge {
        /// What the image takes on disk.
        bytes: u64,
    },
}

impl Cache {
    /// Opens (making it if missing) the cache folder of `o`, and sweeps the entries that
    /// builds which died left unfinished; returns a note for each.
    pub fn open(o: &CacheOptions) -> Result<(Cache, Vec<String>)> {
        for sub in ["entries", "tmp", "locks"] {
            let d = o.dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("making the cache folder {}", d.display()))?;
        }
        let cache = Cache {
            dir: o.dir.clone(),
            limit_bytes: o.limit_bytes,
        };
        let mut notes = Vec::new();
        for key in cache.keys_in("tmp")? {
            if let Some(_lock) = cache.try_lock(&key)? {
                let d = cache.tmp(&key);
                std::fs::remove_dir_all(&d)
                    .with_context(|| format!("removing the unfinished entry {}", d.display()))?;
                notes.push(format!(
                    "Cache: removed the unfinished entry {} a build left when it died",
                    d.display()
                ));
            }
        }
        Ok((cache, notes))
    }

    /// `key`'s lock, unless another build holds it (then wait and try again: its build
    /// ends with a hit or a failure).
    pub fn try_hold(&self, key: &Key) -> Result<Option<Held>> {
        Ok(self.try_lock(key)?.map(|file| Held {
            cache: self.clone(),
            key: key.clone(),
            _lock: file,
        }))
    }

    /// `key`'s lock if no one holds it.
    fn try_lock(&self, key: &Key) -> Result<Option<File>> {
        let path = self.lock_path(key);
        let file = fsutil::open_lock(&path, "the cache lock")?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    fn lock_path(&self, key: &Key) -> PathBuf {
        self.dir.join("locks").join(key.as_str())
    }

    fn entry(&self, key: &Key) -> PathBuf {
        self.dir.join("entries").join(key.as_str())
    }

    fn tmp(&self, key: &Key) -> PathBuf {
        self.dir.join("tmp").join(key.as_str())
    }

    /// The keys of the folders in `sub` (anything else there is not the cache's).
    fn keys_in(&self, sub: &str) -> Result<Vec<Key>> {
        let d = self.dir.join(sub);
        let mut keys = Vec::new();
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e.with_context(|| format!("listing {}", d.display()))?;
            if let Some(k) = e.file_name().to_str().and_then(Key::from_name) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// Evicts the least recently used entries whose keys no build holds until the entries
    /// take at most `room` bytes (or only held ones are left, in use by other builds: the
    /// next store evicts them); returns the evicted keys.
    fn evict(&self, room: u64) -> Result<Vec<Key>> {
        let mut entries = Vec::new();
        for key in self.keys_in("entries")? {
            let d = self.entry(&key);
            let used = std::fs::metadata(d.join("used"))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, allocated(&d)?, key));
        }
        let mut total: u64 = entries.iter().map(|(_, bytes, _)| bytes).sum();
        entries.sort();
        let mut evicted = Vec::new();
        for (_, bytes, key) in entries {
            if total <= room {
                break;
            }
            // An entry being read by a hit, or stored, is not evicted under it.
            let Some(_lock) = self.try_lock(&key)? else {
                continue;
            };
            let (from, to) = (self.entry(&key), self.tmp(&key));
            remove_if_there(&to)?;
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} out of the cache", from.display()))?;
            std::fs::remove_dir_all(&to).with_context(|| format!("removing {}", to.display()))?;
            total -= bytes;
            evicted.push(key);
        }
        Ok(evicted)
    }
}

/// A key's lock, held: its entry can be read or written.
#[derive(Debug)]
pub struct Held {
    cache: Cache,
    key: Key,
    _lock: File,
}

impl Held {
    /// The key held.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Writes the entry's image to `out` atomically (a temporary file beside it, renamed
    /// into place) and records the use, if the entry is there; says whether it was.
    pub fn restore(&self, out: &Path) -> Result<bool> {
        let entry = self.cache.entry(&self.key);
        let image = entry.join("image");
        if !image.exists() {
            return Ok(false);
        }
        // The output lock's sweep removes this name if the build dies before the rename.
        let tmp = fsutil::parent_dir(out).join(format!(
            "{}{}-cache",
            output_lock::temp_prefix(out),
            std::process::id()
        ));
        let tmp = TempPath::try_from_path(&tmp)
            .with_context(|| format!("resolving {}", tmp.display()))?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        copy::copy_sparse(&image, &file)
            .with_context(|| format!("copying the cached image to {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        tmp.persist(out)
            .with_context(|| format!("renaming the cached image into {}", out.display()))?;
        fsutil::sync_dir(fsutil::parent_dir(out))?;
        touch(&entry.join("used"))?;
        Ok(true)
    }

    /// Keeps a copy of the output image `image` as the entry, evicting the least recently
    /// used entries to stay within the limit.
    pub fn store(&self, image: &Path) -> Result<Stored> {
        let tmp = self.cache.tmp(&self.key);
        // Held, so a folder there is a dead build's.
        remove_if_there(&tmp)?;
        std::fs::create_dir(&tmp).with_context(|| format!("making {}", tmp.display()))?;
        let file = File::create_new(tmp.join("image"))
            .with_context(|| format!("creating {}", tmp.join("image").display()))?;
        copy::copy_sparse(image, &file)
            .with_context(|| format!("copying {} into the cache", image.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.join("image").display()))?;
        File::create_new(tmp.join("used"))
            .with_context(|| format!("creating {}", tmp.join("used").display()))?;
        fsutil::sync_dir(&tmp)?;
        let bytes = allocated(&tmp)?;
        if bytes > self.cache.limit_bytes {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
            return Ok(Stored::TooLarge { bytes });
        }
        let evicted = self.cache.evict(self.cache.limit_bytes - bytes)?;
        let entry = self.cache.entry(&self.key);
        std::fs::rename(&tmp, &entry)
            .with_context(|| format!("renaming {} into {}", tmp.display(), entry.display()))?;
        fsutil::sync_dir(&self.cache.dir.join("entries"))?;
        Ok(Stored::Kept { bytes, evicted })
    }
}

fn remove_if_there(d: &Path) -> Result<()> {
    match std::fs::remove_dir_all(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", d.display()))
        }
        _ => Ok(()),
    }
}

/// The bytes the files of folder `d` take on disk (holes are free).
fn allocated(d: &Path) -> Result<u64> {
    let mut bytes = 0;
    for e in std::fs::read_dir(d).with_context(|| format!("listing {}", d.display()))? {
        let e = e.with_context(|| format!("listing {}", d.display()))?;
        let m = e
            .metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        bytes += m.blocks() * 512;
    }
    Ok(bytes)
}

fn touch(path: &Path) -> Result<()> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .with_context(|| format!("recording the use of {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    pub(crate) fn options(dir: &Path) -> CacheOptions {
        CacheOptions {
            dir: dir.to_path_buf(),
            limit_bytes: 50 << 30,
            salt: String::new(),
            vm_shape: vec!["hermetic=false".into()],
        }
    }

    fn k(c: char) -> Key {
        Key::from_name(&c.to_string().repeat(64)).unwrap()
    }

    /// A sparse 8 MiB image holding `data` MiB of data.
    fn image(dir: &Path, name: &str, data: usize) -> PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&vec![b'x'; data << 20], 0).unwrap();
        f.sync_all().unwrap();
        p
    }

    #[test]
    fn a_stored_image_is_restored_whole_and_sparse() {
        let d = tempfile::tempdir().unwrap();
        let (cache, notes) = Cache::open(&options(&d.path().join("c"))).unwrap();
        assert!(notes.is_empty());
        let img = image(d.path(), "built.img", 1);
        let held = cache.try_hold(&k('a')).unwrap().unwrap();
        let out = d.path().join("out.img");
        assert!(!held.restore(&out).unwrap(), "an empty cache misses");
        assert!(!out.exists());
        let Stored::Kept { bytes, evicted } = held.store(&img).unwrap() else {
            panic!("not kept");
        };
        assert!((1 << 20..2 << 20).contains(&bytes), "{bytes}");
        assert!(evicted.is_empty());
        assert!(held.restore(&out).unwrap());
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
        assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < 2 << 20);
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(
            left.len(),
            3,
            "no temporary file beside the output: {left:?}"
        );
        // Another key misses.
        let other = cache.try_hold(&k('b')).unwrap().unwrap();
        assert!(!other.restore(&d.path().join("x.img")).unwrap());
    }

    #[test]
    fn an_unfinished_entry_is_never_returned_and_is_swept() {
        let d = tempfile::tempdir().unwrap();
        let o = options(&d.path().join("c"));
        let (cache, _) = Cache::open(&o).unwrap();
        // A build that died while it stored: a partial image under tmp/, its lock free.
        let partial = cache.tmp(&k('a'));
        std::fs::create_dir(&partial).unwrap();
        std::fs::write(partial.join("image"), b"half").unwrap();
        let held = cache.try_hold(&k('a')).unwrap().unwrap();
        assert!(!held.restore(&d.path().join("out.img")).unwrap());
        // While its key is held (a live build storing it), the sweep leaves it.
        let (_, notes) = Cache::open(&o).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert!(partial.exists());
        drop(held);
        let (_, notes) = Cache::open(&o).unwrap();
        assert!(notes[0].contains("unfinished entry"), "{notes:?}");
        assert!(!partial.exists());
    }

    #[test]
    fn the_least_recently_used_entries_go_first() {
        let d = tempfile::tempdir().unwrap();
        let mut o = options(&d.path().join("c"));
        // Room for two 1 MiB entries, not three.
        o.limit_bytes = (5 << 20) / 2;
        let (cache, _) = Cache::open(&o).unwrap();
        let img = image(d.path(), "built.img", 1);
        for key in ['a', 'b'] {
            let held = cache.try_hold(&k(key)).unwrap().unwrap();
            held.store(&img).unwrap();
        }
        // 'a' is used after 'b' was stored, so 'b' is now the least recently used.
        let past = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(cache.entry(&k('b')).join("used"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        let a = cache.try_hold(&k('a')).unwrap().unwrap();
        assert!(a.restore(&d.path().join("out.img")).unwrap());
        drop(a);
        let c = cache.try_hold(&k('c')).unwrap().unwrap();
        assert_eq!(
            c.store(&img).unwrap(),
            Stored::Kept {
                bytes: 1 << 20,
                evicted: vec![k('b')]
            }
        );
        let mut keys = cache.keys_in("entries").unwrap();
        keys.sort();
        assert_eq!(keys, [k('a'), k('c')]);
        assert!(cache.keys_in("tmp").unwrap().is_empty());
        drop(c);
        // An entry whose key a build holds is not evicted; one larger than the limit is
        // not kept.
        let _held_a = cache.try_hold(&k('a')).unwrap().unwrap();
        let d2 = cache.try_hold(&k('d')).unwrap().unwrap();
        let Stored::Kept { evicted, .. } = d2.store(&img).unwrap() else {
            panic!("not kept");
        };
        assert_eq!(evicted, [k('c')]);
        let big = image(d.path(), "big.img", 3);
        let e = cache.try_hold(&k('e')).unwrap().unwrap();
        assert_eq!(e.store(&big).unwrap(), Stored::TooLarge { bytes: 3 << 20 });
        assert!(!cache.entry(&k('e')).exists());
    }

    #[test]
    fn two_builds_of_one_key_build_once() {
        let d = tempfile::tempdir().unwrap();
        let o = options(&d.path().join("c"));
        let builds = AtomicUsize::new(0);
        let waits = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for n in 0..2 {
                let (o, builds, waits, dir) = (&o, &builds, &waits, d.path());
                s.spawn(move || {
                    let (cache, _) = Cache::open(o).unwrap();
                    // As finish-image-build waits: trying again until the holder is done.
                    let held = loop {
                        if let Some(h) = cache.try_hold(&k('a')).unwrap() {
                            break h;
                        }
                        waits.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                    };
                    let out = dir.join(format!("out-{n}.img"));
                    if !held.restore(&out).unwrap() {
                        builds.fetch_add(1, Ordering::SeqCst);
                        // A slow build, so that the other thread comes while it runs.
                        std::thread::sleep(Duration::from_millis(300));
                        let img = image(dir, &format!("built-{n}.img"), 1);
                        held.store(&img).unwrap();
                        std::fs::rename(img, out).unwrap();
                    }
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1, "one build");
        assert!(waits.load(Ordering::SeqCst) > 0, "the other waited");
        assert!(
            std::fs::read(d.path().join("out-0.img")).unwrap()
                == std::fs::read(d.path().join("out-1.img")).unwrap()
        );
    }
}
