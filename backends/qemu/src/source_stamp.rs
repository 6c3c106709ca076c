//! What a source image file was when a disk's overlay was put on it. The overlay holds only
//! the blocks the guest wrote and reads every other block from the source by path, so a
//! source replaced or rewritten during a build would give an output that mixes two images.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Identity and version of a file: where it is, which inode, its size and change time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn nanos(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

impl SourceStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> Result<SourceStamp> {
        let m = std::fs::metadata(path)
            .with_context(|| format!("reading the metadata of {}", path.display()))?;
        Ok(SourceStamp {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: nanos(m.mtime(), m.mtime_nsec()),
            ctime_ns: nanos(m.ctime(), m.ctime_nsec()),
        })
    }

    /// Fails, naming the file and what to do, if it is no longer the file it was.
    pub fn check(&self) -> Result<()> {
        let now = SourceStamp::of(&self.path);
        if now.as_ref().ok() == Some(self) {
            return Ok(());
        }
        let what = match now {
            Err(_) => "was removed",
            Ok(n) if (n.dev, n.ino) != (self.dev, self.ino) => "was replaced by another file",
            Ok(_) => "was written to",
        };
        bail!(
            "the source image {} {what} while the build ran, so the build's disk no longer \
             matches it and no image was made: leave the source untouched until the build ends \
             (copy it first to keep working on it)",
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untouched_file_passes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("src.img");
        std::fs::write(&p, b"image").unwrap();
        let stamp = SourceStamp::of(&p).unwrap();
        let _ = std::fs::read(&p).unwrap();
        stamp.check().unwrap();
    }

    #[test]
    fn a_rewritten_replaced_or_removed_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("src.img");
        std::fs::write(&p, b"image").unwrap();

        let stamp = SourceStamp::of(&p).unwrap();
        std::fs::write(&p, b"other").unwrap();
        let e = stamp.check().unwrap_err().to_string();
        assert!(e.contains("was written to") && e.contains("src.img"), "{e}");

        let stamp = SourceStamp::of(&p).unwrap();
        let new = d.path().join("new.img");
        std::fs::write(&new, b"image").unwrap();
        std::fs::rename(&new, &p).unwrap();
        let e = stamp.check().unwrap_err().to_string();
        assert!(e.contains("was replaced by another file"), "{e}");

        let stamp = SourceStamp::of(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let e = stamp.check().unwrap_err().to_string();
        assert!(e.contains("was removed"), "{e}");
    }
}
