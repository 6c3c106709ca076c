//! Copying a large sparse image in seconds: a reflink where the file system shares blocks
//! (btrfs, XFS), else only its data extents (`copy_file_range`, in the kernel), so the
//! holes of a 10 GB disk that holds 1 GB stay holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// Copies `src` into the empty file `dst`, keeping its holes.
pub fn copy_sparse(src: &Path, dst: &File) -> Result<()> {
    let from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    if rustix::fs::ioctl_ficlone(dst, &from).is_ok() {
        return Ok(());
    }
    let len = from
        .metadata()
        .with_context(|| format!("reading the size of {}", src.display()))?
        .len();
    dst.set_len(len)
        .with_context(|| format!("sizing the copy of {}", src.display()))?;
    for (start, end) in data_extents(&from, len)
        .with_context(|| format!("finding the data in {}", src.display()))?
    {
        copy_range(&from, dst, start, end)
            .with_context(|| format!("copying bytes {start}..{end} of {}", src.display()))?;
    }
    Ok(())
}

/// The ranges of `f` (`len` bytes long) that hold data, in order; a file system that does
/// not know holes reports the whole file.
pub fn data_extents(f: &File, len: u64) -> Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            // No data after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e).context("seeking to the next data"),
        };
        let end = rustix::fs::seek(f, SeekFrom::Hole(start))
            .context("seeking to the next hole")?
            .min(len);
        extents.push((start, end));
        pos = end;
    }
    Ok(extents)
}

/// Copies bytes `start..end` of `from` to the same place in `to`.
fn copy_range(from: &File, to: &File, start: u64, end: u64) -> Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            Ok(0) => bail!("the file ended at byte {off_in} while it was copied"),
            Ok(_) => {}
            // Across file systems on older kernels, or where the kernel cannot: by hand.
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_by_hand(from, to, off_in, end)
            }
            Err(e) => return Err(e).context("copy_file_range"),
        }
    }
    Ok(())
}

/// Copies bytes `start..end` through a buffer, leaving zero chunks unwritten (the
/// destination is already that long, so they read as zeros and stay holes).
fn copy_by_hand(from: &File, to: &File, start: u64, end: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = start;
    while off < end {
        let n = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        from.read_exact_at(&mut buf[..n], off)
            .with_context(|| format!("reading at byte {off}"))?;
        if buf[..n].iter().any(|&b| b != 0) {
            to.write_all_at(&buf[..n], off)
                .with_context(|| format!("writing at byte {off}"))?;
        }
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_copy_keeps_the_bytes_and_the_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 8192], 40 << 20).unwrap();
        drop(f);
        let dst = File::create(d.path().join("dst")).unwrap();
        copy_sparse(&src, &dst).unwrap();
        drop(dst);
        let (a, b) = (
            std::fs::read(&src).unwrap(),
            std::fs::read(d.path().join("dst")).unwrap(),
        );
        assert!(a == b, "the copy differs");
        let allocated = std::fs::metadata(d.path().join("dst")).unwrap().blocks() * 512;
        assert!(
            allocated < 4 << 20,
            "the holes were filled: {allocated} bytes"
        );
        let by_hand = File::create(d.path().join("by-hand")).unwrap();
        by_hand.set_len(64 << 20).unwrap();
        copy_by_hand(&File::open(&src).unwrap(), &by_hand, 0, 64 << 20).unwrap();
        assert!(std::fs::read(d.path().join("by-hand")).unwrap() == a);
        assert!(by_hand.metadata().unwrap().blocks() * 512 < 4 << 20);
    }
}
