//! One build at a time writes a local output image: a lock file beside the output, held
//! (with `flock`) from the checks to the rename, so a second build naming the same
//! `-output-file` fails at once instead of silently replacing the first one's image.
//!
//! Holding the lock also means that no other build is writing a temporary output beside
//! this one, so every temporary output of the same name found then was left by a build
//! that died (SIGKILL, power cut) and is removed, and said so.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use cos_customizer_common::fsutil;

/// The prefix of the temporary outputs written beside `-output-file` `NAME`: the exporter
/// writes `.NAME.tmp-<pid>-<n>` and renames it into place.
pub fn temp_prefix(out: &Path) -> String {
    format!(".{}.tmp-", file_name(out))
}

fn file_name(out: &Path) -> String {
    out.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The lock on one output path; dropping it removes the lock file and lets the next build in.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    _file: File,
}

impl OutputLock {
    /// Takes the lock on `out` for the build in `state` (named in the message a second build
    /// gets), then removes the temporary outputs that dead builds left beside it.
    pub fn acquire(out: &Path, state: &Path) -> Result<Self> {
        let dir = fsutil::parent_dir(out);
        let path = dir.join(format!(".{}.cos-customizer-lock", file_name(out)));
        // A build that took the lock file just before its holder removed it holds a lock on
        // a file no longer at `path`: it must open the path again.
        for _ in 0..10 {
            let mut file = fsutil::open_lock(&path, "the output lock")?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    bail!(
                        "-output-file {} is being written by another build ({}): wait for it to end, or choose another -output-file",
                        out.display(),
                        Some(holder.trim())
                            .filter(|h| !h.is_empty())
                            .unwrap_or("holder unknown")
                    );
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
            let same = std::fs::metadata(&path).is_ok_and(|m| {
                file.metadata()
                    .is_ok_and(|f| f.ino() == m.ino() && f.dev() == m.dev())
            });
            if !same {
                continue;
            }
            file.set_len(0)
                .and_then(|()| {
                    writeln!(
                        file,
                        "pid {}, state folder {}",
                        std::process::id(),
                        state.display()
                    )
                })
                .with_context(|| format!("writing {}", path.display()))?;
            sweep_temporaries(out)?;
            return Ok(OutputLock { path, _file: file });
        }
        bail!(
            "could not lock {}: it kept being replaced; is another build starting with the same -output-file?",
            path.display()
        )
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still held, so no build can lock this file after it is gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes `.NAME.tmp-*` beside `out`; only called with the output's lock held.
fn sweep_temporaries(out: &Path) -> Result<()> {
    let dir = fsutil::parent_dir(out);
    let prefix = temp_prefix(out);
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let stale = e.path();
        std::fs::remove_file(&stale)
            .with_context(|| format!("removing the stale temporary output {}", stale.display()))?;
        eprintln!(
            "Removed {}: a temporary output of a build of {} that ended before writing it",
            stale.display(),
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_build_of_one_output_fails_at_once_and_the_lock_goes_with_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.img");
        let first = OutputLock::acquire(&out, Path::new("/home/u/one")).unwrap();
        let e = OutputLock::acquire(&out, Path::new("/home/u/two"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("being written by another build") && e.contains("/home/u/one"),
            "{e}"
        );
        drop(first);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "the lock file is removed: {names:?}");
        OutputLock::acquire(&out, Path::new("/home/u/two")).unwrap();
    }

    #[test]
    fn temporaries_of_dead_builds_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.img");
        for n in [".out.img.tmp-4242-0", ".out.img.tmp-17-3"] {
            std::fs::write(dir.path().join(n), "half").unwrap();
        }
        for keep in [".other.img.tmp-4242-0", "out.img.tmp-1-0", "out.img"] {
            std::fs::write(dir.path().join(keep), "keep").unwrap();
        }
        let _lock = OutputLock::acquire(&out, Path::new("/s")).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".other.img.tmp-4242-0",
                ".out.img.cos-customizer-lock",
                "out.img",
                "out.img.tmp-1-0"
            ]
        );
    }
}
