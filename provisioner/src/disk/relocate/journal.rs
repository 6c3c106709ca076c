//! The relocation journal: what a relocation changes, the bytes it must copy, the first
//! 4 KiB of each moved partition, and how far the copy got. It lives in the unpartitioned
//! sectors between the GPT's first usable LBA and the first partition (LBA 34..63 on COS),
//! which no move touches and which the next boot finds from the GPT alone.
//!
//! Two header sectors alternate (the valid one with the higher sequence number wins), so a
//! torn header write loses at most the last checkpoint, never the journal.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{bail, ensure, Context, Result};

use super::power;
use crate::disk::gpt_edit::Range;

const MAGIC: &[u8; 8] = b"COSRELOC";
/// The body starts with its own mark, so a body whose header was never written (a cut
/// between the two writes) is known to be ours and may be overwritten.
const BODY_MAGIC: &[u8; 8] = b"COSRBODY";
const VERSION: u32 = 2;
/// Header slots at the start of the area; the body follows them.
const SLOTS: u64 = 2;
/// The size of each header record (one 512-byte sector; GCE disks have 512-byte sectors).
const HEADER: usize = 512;
/// What each moved partition keeps in the journal: its first 4 KiB (the ext4 superblock),
/// written to the destination last, so a half-moved partition never looks like a file system.
pub const HEAD_BYTES: u64 = 4096;
/// Bytes a change takes in the header.
const CHANGE_BYTES: usize = 4 + 4 * 8 + 1;
/// Bytes one extent takes in the body.
const EXTENT_BYTES: u64 = 16;

/// How far a relocation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The journal is written; nothing else has changed.
    Prepared = 1,
    /// The old table is in place; the chunks that overwrite no source (and so leave every
    /// old file system whole) before `Progress` are copied.
    Staging = 4,
    /// The new table is written; the chunks that overwrite old blocks before `Progress`
    /// are copied.
    Copying = 2,
    /// All data is copied; the heads are being written (before the new table when no
    /// chunk overwrites old blocks, after it otherwise).
    Heads = 3,
}

/// The next chunk to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Index into the phase's chunks ([`super::plan`]).
    pub chunk: u64,
}

/// One partition's new place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Partition number.
    pub part: u32,
    /// Where it is before the relocation.
    pub from: Range,
    /// Where it is after.
    pub to: Range,
    /// Whether its data moves (false: the entry only shrinks or grows in place).
    pub moves_data: bool,
}

/// What a moving partition carries over: byte ranges relative to its start (the head
/// excluded), and the head itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveData {
    /// Sorted `(offset, len)` byte ranges to copy, none below [`HEAD_BYTES`].
    pub extents: Vec<(u64, u64)>,
    /// The partition's first [`HEAD_BYTES`] bytes as they were.
    pub head: Vec<u8>,
}

/// The whole journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// The GPT's disk GUID, so a journal is never applied to another disk.
    pub disk_guid: [u8; 16],
    /// In the order they are carried out.
    pub changes: Vec<Change>,
    /// One per change that moves data, in the same order.
    pub data: Vec<MoveData>,
    /// How far it got.
    pub phase: Phase,
    /// Valid in [`Phase::Staging`] and [`Phase::Copying`].
    pub progress: Progress,
    /// The header's sequence number (the next write uses the other slot).
    pub seq: u64,
}

/// The sectors the journal may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// First sector.
    pub first: u64,
    /// Number of sectors.
    pub sectors: u64,
    /// Bytes per sector.
    pub sector_size: u64,
}

impl Area {
    /// The gap between `first_usable` and the first partition.
    pub fn before_first_partition(
        first_usable: u64,
        starts: impl IntoIterator<Item = u64>,
        sector_size: u64,
    ) -> Result<Area> {
        let lowest = starts
            .into_iter()
            .min()
            .context("the partition table has no partitions")?;
        ensure!(
            lowest > first_usable,
            "the first partition starts at the first usable sector {first_usable}, leaving no room for the relocation journal"
        );
        Ok(Area {
            first: first_usable,
            sectors: lowest - first_usable,
            sector_size,
        })
    }

    fn bytes(&self) -> u64 {
        self.sectors * self.sector_size
    }

    fn offset(&self) -> u64 {
        self.first * self.sector_size
    }

    /// Room for the body: the area less the header slots.
    fn body_capacity(&self) -> u64 {
        self.bytes().saturating_sub(SLOTS * self.sector_size)
    }

    /// How many extents fit next to `moves` heads.
    pub fn extent_capacity(&self, moves: usize) -> u64 {
        let fixed = BODY_MAGIC.len() as u64 + moves as u64 * (HEAD_BYTES + 8);
        self.body_capacity().saturating_sub(fixed) / EXTENT_BYTES
    }

    /// Whether the area is free for a new journal: all zero, or holding only the body of
    /// one of ours whose header was never written. (Call when [`Journal::read`] found none.)
    pub fn is_free(&self, dev: &File) -> Result<bool> {
        let mut buf = vec![0u8; self.bytes() as usize];
        dev.read_exact_at(&mut buf, self.offset())
            .context("reading the relocation journal area")?;
        let body = &buf[(SLOTS * self.sector_size) as usize..];
        Ok(buf.iter().all(|&b| b == 0) || body.starts_with(BODY_MAGIC))
    }

    /// Zeroes the area (the journal is gone) and flushes: the headers first, so a cut in
    /// between leaves a body without a header, which [`Area::is_free`] accepts.
    pub fn erase(&self, dev: &File) -> Result<()> {
        let slots = SLOTS * self.sector_size;
        power::check()?;
        dev.write_all_at(&vec![0u8; slots as usize], self.offset())
            .context("erasing the relocation journal")?;
        dev.sync_data().context("flushing the boot disk")?;
        power::check()?;
        dev.write_all_at(
            &vec![0u8; (self.bytes() - slots) as usize],
            self.offset() + slots,
        )
        .context("erasing the relocation journal")?;
        dev.sync_data().context("flushing the boot disk")
    }
}

fn put_range(out: &mut Vec<u8>, r: Range) {
    out.extend_from_slice(&r.first.to_le_bytes());
    out.extend_from_slice(&r.last.to_le_bytes());
}

/// A little-endian reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        ensure!(self.0.len() >= n, "the relocation journal is truncated");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn range(&mut self) -> Result<Range> {
        Ok(Range {
            first: self.u64()?,
            last: self.u64()?,
        })
    }
}

impl Journal {
    fn body(&self) -> Vec<u8> {
        let mut out = BODY_MAGIC.to_vec();
        for d in &self.data {
            out.extend_from_slice(&d.head);
            out.extend_from_slice(&(d.extents.len() as u64).to_le_bytes());
            for (off, len) in &d.extents {
                out.extend_from_slice(&off.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        out
    }

    fn header(&self, body: &[u8]) -> Result<Vec<u8>> {
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&self.seq.to_le_bytes());
        h.push(self.phase as u8);
        h.extend_from_slice(&self.progress.chunk.to_le_bytes());
        h.extend_from_slice(&self.disk_guid);
        h.extend_from_slice(&(body.len() as u64).to_le_bytes());
        h.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        h.extend_from_slice(&(self.changes.len() as u32).to_le_bytes());
        for c in &self.changes {
            h.extend_from_slice(&c.part.to_le_bytes());
            put_range(&mut h, c.from);
            put_range(&mut h, c.to);
            h.push(u8::from(c.moves_data));
        }
        ensure!(
            h.len() + 4 <= HEADER,
            "{} partition changes do not fit in the relocation journal's header",
            self.changes.len()
        );
        h.resize(HEADER - 4, 0);
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        Ok(h)
    }

    /// Writes the body and a first header, flushed, after checking that they fit.
    pub fn create(&mut self, dev: &File, area: &Area) -> Result<()> {
        let body = self.body();
        if body.len() as u64 > area.body_capacity() {
            bail!(
                "the relocation journal needs {} bytes but sectors {}..{} hold {}",
                body.len(),
                area.first,
                area.first + area.sectors,
                area.body_capacity()
            );
        }
        power::check()?;
        dev.write_all_at(&body, area.offset() + SLOTS * area.sector_size)
            .context("writing the relocation journal")?;
        self.seq = 0;
        // The other slot may hold a header from an earlier journal: clear it first.
        power::check()?;
        dev.write_all_at(
            &vec![0u8; area.sector_size as usize],
            area.offset() + area.sector_size,
        )
        .context("writing the relocation journal")?;
        self.checkpoint(dev, area)
    }

    /// Writes the header (phase and progress) into the next slot and flushes.
    pub fn checkpoint(&mut self, dev: &File, area: &Area) -> Result<()> {
        self.seq += 1;
        let header = self.header(&self.body())?;
        let slot = self.seq % SLOTS;
        power::check()?;
        dev.write_all_at(&header, area.offset() + slot * area.sector_size)
            .context("writing the relocation journal's header")?;
        dev.sync_data().context("flushing the boot disk")
    }

    fn parse_header(sector: &[u8]) -> Option<(Journal, u64, u32)> {
        let h = sector.get(..HEADER)?;
        if &h[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(h[HEADER - 4..].try_into().ok()?);
        if crc32fast::hash(&h[..HEADER - 4]) != crc {
            return None;
        }
        let mut r = Reader(&h[8..HEADER - 4]);
        let parse = |r: &mut Reader| -> Result<(Journal, u64, u32)> {
            ensure!(r.u32()? == VERSION, "unknown relocation journal version");
            let seq = r.u64()?;
            let phase = match r.u8()? {
                1 => Phase::Prepared,
                2 => Phase::Copying,
                3 => Phase::Heads,
                4 => Phase::Staging,
                p => bail!("unknown relocation phase {p}"),
            };
            let progress = Progress { chunk: r.u64()? };
            let disk_guid: [u8; 16] = r.take(16)?.try_into()?;
            let body_len = r.u64()?;
            let body_crc = r.u32()?;
            let n = r.u32()? as usize;
            ensure!(n * CHANGE_BYTES <= HEADER, "too many changes");
            let mut changes = Vec::with_capacity(n);
            for _ in 0..n {
                changes.push(Change {
                    part: r.u32()?,
                    from: r.range()?,
                    to: r.range()?,
                    moves_data: r.u8()? != 0,
                });
            }
            let j = Journal {
                disk_guid,
                changes,
                data: Vec::new(),
                phase,
                progress,
                seq,
            };
            Ok((j, body_len, body_crc))
        };
        parse(&mut r).ok()
    }

    /// Reads the journal, or `None` when the area holds none. A valid header whose body
    /// does not match its checksum is an error: the journal was damaged.
    pub fn read(dev: &File, area: &Area) -> Result<Option<Journal>> {
        let mut slots = vec![0u8; (SLOTS * area.sector_size) as usize];
        dev.read_exact_at(&mut slots, area.offset())
            .context("reading the relocation journal")?;
        let best = slots
            .chunks(area.sector_size as usize)
            .filter_map(Journal::parse_header)
            .max_by_key(|(j, _, _)| j.seq);
        let Some((mut j, body_len, body_crc)) = best else {
            return Ok(None);
        };
        ensure!(
            body_len <= area.body_capacity(),
            "the relocation journal's body ({body_len} bytes) is larger than its area"
        );
        let mut body = vec![0u8; body_len as usize];
        dev.read_exact_at(&mut body, area.offset() + SLOTS * area.sector_size)
            .context("reading the relocation journal")?;
        ensure!(
            crc32fast::hash(&body) == body_crc,
            "the relocation journal's body is damaged (checksum mismatch)"
        );
        let mut r = Reader(&body);
        ensure!(
            r.take(BODY_MAGIC.len())? == BODY_MAGIC,
            "the relocation journal is damaged"
        );
        for _ in j.changes.iter().filter(|c| c.moves_data) {
            let head = r.take(HEAD_BYTES as usize)?.to_vec();
            let n = r.u64()?;
            ensure!(
                n <= body_len / EXTENT_BYTES,
                "the relocation journal is damaged"
            );
            let extents = (0..n)
                .map(|_| Ok((r.u64()?, r.u64()?)))
                .collect::<Result<Vec<_>>>()?;
            j.data.push(MoveData { extents, head });
        }
        Ok(Some(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn area() -> Area {
        Area {
            first: 34,
            sectors: 30,
            sector_size: 512,
        }
    }

    fn disk() -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0u8; 64 * 512]).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (f, file)
    }

    fn journal() -> Journal {
        let r = |first, last| Range { first, last };
        Journal {
            disk_guid: [7; 16],
            changes: vec![
                Change {
                    part: 3,
                    from: r(100, 199),
                    to: r(100, 107),
                    moves_data: false,
                },
                Change {
                    part: 1,
                    from: r(200, 299),
                    to: r(120, 219),
                    moves_data: true,
                },
            ],
            data: vec![MoveData {
                extents: vec![(4096, 8192), (65536, 4096)],
                head: (0..HEAD_BYTES).map(|i| i as u8).collect(),
            }],
            phase: Phase::Prepared,
            progress: Progress::default(),
            seq: 0,
        }
    }

    #[test]
    fn round_trips_and_the_newest_header_wins() {
        let (_f, dev) = disk();
        let a = area();
        assert!(a.is_free(&dev).unwrap());
        assert_eq!(Journal::read(&dev, &a).unwrap(), None);
        let mut j = journal();
        j.create(&dev, &a).unwrap();
        assert_eq!(Journal::read(&dev, &a).unwrap().unwrap(), j);
        j.phase = Phase::Copying;
        j.progress = Progress { chunk: 5 };
        j.checkpoint(&dev, &a).unwrap();
        let back = Journal::read(&dev, &a).unwrap().unwrap();
        assert_eq!(
            (back.phase, back.progress, back.seq),
            (Phase::Copying, j.progress, 2)
        );
        // A torn write of the newest header falls back to the older one.
        dev.write_all_at(&[0xff; 100], (34 + 2 % SLOTS) * 512 + 50)
            .unwrap();
        let older = Journal::read(&dev, &a).unwrap().unwrap();
        assert_eq!((older.phase, older.seq), (Phase::Prepared, 1));
        a.erase(&dev).unwrap();
        assert_eq!(Journal::read(&dev, &a).unwrap(), None);
        assert!(a.is_free(&dev).unwrap());
        dev.write_all_at(b"foreign", 40 * 512).unwrap();
        assert!(!a.is_free(&dev).unwrap(), "someone else's data");
    }

    #[test]
    fn a_damaged_body_is_an_error_and_a_too_large_one_is_refused() {
        let (_f, dev) = disk();
        let a = area();
        let mut j = journal();
        j.create(&dev, &a).unwrap();
        dev.write_all_at(&[1, 2, 3], (34 + 2) * 512 + 10).unwrap();
        let e = Journal::read(&dev, &a).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        j.data[0].extents = vec![(4096, 1); 1000];
        let e = j.create(&dev, &a).unwrap_err().to_string();
        assert!(e.contains("needs") && e.contains("sectors 34..64"), "{e}");
    }

    #[test]
    fn area_is_the_gap_before_the_first_partition() {
        let a = Area::before_first_partition(34, [20480, 64, 86016], 512).unwrap();
        assert_eq!((a.first, a.sectors), (34, 30));
        // COS: 28 body sectors less two heads leave room for 382 extents.
        assert_eq!(a.extent_capacity(2), 382);
        assert!(Area::before_first_partition(34, [34, 64], 512).is_err());
    }
}
