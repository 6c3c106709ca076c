//! Relocating partitions while nothing has them mounted: at shutdown from the exit
//! ramdisk ([`super::exitrd`]), or at the next boot after a power cut stopped it.
//!
//! The copy moves only the blocks the ext4 file system uses, and it is crash-safe. The
//! journal ([`journal`]) is written first. Then, with the old partition table still in
//! place, every piece whose destination holds no source byte is copied: that leaves each
//! old file system whole. When nothing else is left (a move far enough), the saved first
//! 4 KiB of each partition go to their destinations and writing the new table switches
//! from the old file systems to the new, whole ones at once. Otherwise the destination
//! superblocks are cleared, the new table is written, the pieces that land on old blocks
//! are copied, and the heads come last: in that window no moved partition mounts, so a
//! half-moved STATE is never mounted with files missing.
//!
//! After a power cut, [`recover`] drops a relocation whose table had not changed (the old
//! file systems are whole, and may have been mounted since) and finishes one whose table
//! had, from its last checkpoint.

mod chunks;
pub mod journal;
mod power;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rustix::fs::{Mode, OFlags};

use super::ext4::{MAGIC, MAGIC_AT, SUPERBLOCK};
use super::ext4_used;
use super::gpt_edit::{Gpt, Range};
use chunks::{plan, Chunk};
pub use journal::Change;

/// Where progress messages go (stdout, or the serial port at shutdown).
pub type Log<'a> = &'a mut dyn FnMut(&str);
use journal::{Area, Journal, MoveData, Phase, Progress, HEAD_BYTES};

pub use super::table::SECTOR;

/// A partition number and the device node the kernel gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// The partition number.
    pub part: u32,
    /// e.g. `/dev/sda1`.
    pub path: PathBuf,
}

/// What a relocation moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The partition number.
    pub part: u32,
    /// Bytes copied (used blocks and the head).
    pub bytes: u64,
    /// The partition's size before the move.
    pub size: u64,
}

/// What [`recover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No relocation was under way.
    Nothing,
    /// One had not switched the partition table: it was undone, so it can run again.
    Undone,
    /// One was interrupted and is now complete.
    Completed(Vec<Moved>),
}

/// The boot disk opened for a relocation.
struct Disk {
    path: PathBuf,
    file: File,
    gpt: Gpt,
    area: Area,
}

impl Disk {
    fn open(path: &Path) -> Result<Disk> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // The whole disk's page cache is not the partitions': a superblock read through it
        // earlier in this boot (say, by a recovery while STATE was mounted) would still
        // show the file system as it was then. Drop it (the clean pages) and read anew.
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .with_context(|| format!("dropping the cached pages of {}", path.display()))?;
        let gpt = Gpt::read(&mut &file, SECTOR)
            .with_context(|| format!("reading the partition table of {}", path.display()))?;
        let area = Area::before_first_partition(
            gpt.first_usable(),
            gpt.partitions().into_iter().map(|(_, r)| r.first),
            SECTOR,
        )
        .with_context(|| {
            format!(
                "finding room for the relocation journal on {}",
                path.display()
            )
        })?;
        Ok(Disk {
            path: path.to_path_buf(),
            file,
            gpt,
            area,
        })
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset).with_context(|| {
            format!(
                "reading {} bytes at {offset} of {}",
                len,
                self.path.display()
            )
        })?;
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        power::check()?;
        self.file.write_all_at(data, offset).with_context(|| {
            format!(
                "writing {} bytes at {offset} of {}",
                data.len(),
                self.path.display()
            )
        })
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("flushing {}", self.path.display()))
    }

    /// Whether every change's partition is at `pick(change)` in the table.
    fn table_is(&self, changes: &[Change], pick: fn(&Change) -> Range) -> bool {
        changes
            .iter()
            .all(|c| self.gpt.range(c.part).ok() == Some(pick(c)))
    }

    /// [`Disk::table_is`], also when the disk's last partition starts there but ends later:
    /// COS grows STATE to the end of a disk at boot, so the boot after a power cut may have
    /// grown it (and its file system, which only mounts whole) before the recovery runs.
    fn table_was(&self, changes: &[Change], pick: fn(&Change) -> Range) -> bool {
        let parts = self.gpt.partitions();
        changes.iter().all(|c| {
            let want = pick(c);
            match self.gpt.range(c.part) {
                Ok(r) if r == want => true,
                Ok(r) => {
                    r.first == want.first
                        && r.last > want.last
                        && parts.iter().all(|(p, o)| *p == c.part || o.first < r.first)
                }
                Err(_) => false,
            }
        })
    }
}

/// Fails if a partition is in use: a mounted file system holds its device exclusively.
fn ensure_unused(node: &Node) -> Result<()> {
    if in_use(node)? {
        bail!(
            "partition {} ({}) is in use (mounted?); it cannot be moved",
            node.part,
            node.path.display()
        );
    }
    Ok(())
}

fn in_use(node: &Node) -> Result<bool> {
    match rustix::fs::open(
        &node.path,
        OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_) => Ok(false),
        Err(rustix::io::Errno::BUSY) => Ok(true),
        // The node of a partition the kernel does not know (yet) cannot be mounted.
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NXIO) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("opening {} exclusively", node.path.display())),
    }
}

/// The byte ranges (relative to the partition) a move must copy, the head excluded.
fn used_ranges(disk: &Disk, from: Range, log: Log) -> Result<Vec<(u64, u64)>> {
    let start = from.first * SECTOR;
    let size = (from.last - from.first + 1) * SECTOR;
    let ranges = if has_superblock(disk, from.first)? {
        let used = ext4_used::read_used(&mut &disk.file, start).with_context(|| {
            format!("reading the used blocks of the ext4 file system at byte {start}")
        })?;
        log(&format!(
            "Partition at sector {}: {} MiB of its ext4 file system's {} MiB are in use",
            from.first,
            (used.used_blocks() * used.block_size) >> 20,
            (used.blocks_count * used.block_size) >> 20
        ));
        used.extents
            .iter()
            .map(|e| (e.start * used.block_size, e.len * used.block_size))
            .collect()
    } else {
        log(&format!(
            "The partition at sector {} holds no ext4 file system; copying all of it",
            from.first
        ));
        vec![(0, size)]
    };
    Ok(ranges
        .into_iter()
        .filter_map(|(off, len)| {
            let lo = off.max(HEAD_BYTES);
            let hi = (off + len).min(size);
            (lo < hi).then_some((lo, hi - lo))
        })
        .collect())
}

/// Merges each move's extents so that all fit in the journal.
fn fit(data: &mut [MoveData], capacity: u64) {
    let total: u64 = data.iter().map(|d| d.extents.len() as u64).sum();
    if total <= capacity {
        return;
    }
    for d in data.iter_mut() {
        let share = (capacity * d.extents.len() as u64 / total).max(1) as usize;
        let mut extents: Vec<ext4_used::Extent> = d
            .extents
            .iter()
            .map(|&(start, len)| ext4_used::Extent { start, len })
            .collect();
        ext4_used::coalesce(&mut extents, share);
        d.extents = extents.iter().map(|e| (e.start, e.len)).collect();
    }
}

/// Moves and resizes partitions as `changes` say, crash-safely. Every moved partition's
/// node in `nodes` must be unused.
pub fn relocate(
    disk_path: &Path,
    nodes: &[Node],
    changes: &[Change],
    log: Log,
) -> Result<Vec<Moved>> {
    let disk = Disk::open(disk_path)?;
    if let Some(j) = Journal::read(&disk.file, &disk.area)? {
        bail!(
            "{} already has a relocation journal (phase {:?}); the provisioner recovers it at boot",
            disk_path.display(),
            j.phase
        );
    }
    if disk.table_is(changes, |c| c.to) {
        log("The partitions are already in place");
        return Ok(Vec::new());
    }
    ensure!(
        disk.table_is(changes, |c| c.from),
        "the partition table of {} is neither as the relocation expects before nor after it",
        disk_path.display()
    );
    ensure!(
        disk.area.is_free(&disk.file)?,
        "sectors {}..{} of {} (between the GPT and the first partition) hold data that is not ours; they are needed for the relocation journal",
        disk.area.first,
        disk.area.first + disk.area.sectors,
        disk_path.display()
    );
    let moving: Vec<&Change> = changes.iter().filter(|c| c.moves_data).collect();
    for c in &moving {
        if let Some(n) = nodes.iter().find(|n| n.part == c.part) {
            ensure_unused(n)?;
        }
    }
    let mut data = Vec::new();
    for c in &moving {
        data.push(MoveData {
            extents: used_ranges(&disk, c.from, log)?,
            head: disk.read(c.from.first * SECTOR, HEAD_BYTES)?,
        });
    }
    fit(&mut data, disk.area.extent_capacity(moving.len()));
    let mut j = Journal {
        disk_guid: disk.gpt.disk_guid(),
        changes: changes.to_vec(),
        data,
        phase: Phase::Prepared,
        progress: Progress::default(),
        seq: 0,
    };
    check_order(&j)?;
    j.create(&disk.file, &disk.area)?;
    finish(disk, j, nodes, log)
}

/// Fails when a move would write over a later move's source before that is copied.
fn check_order(j: &Journal) -> Result<()> {
    let moves: Vec<(&Change, &MoveData)> = j
        .changes
        .iter()
        .filter(|c| c.moves_data)
        .zip(&j.data)
        .collect();
    for (i, (a, _)) in moves.iter().enumerate() {
        for (b, bd) in &moves[i + 1..] {
            let dst = (a.to.first * SECTOR, (a.to.last + 1) * SECTOR);
            for &(off, len) in &bd.extents {
                let src = b.from.first * SECTOR + off;
                ensure!(
                    src + len <= dst.0 || dst.1 <= src,
                    "moving partition {} first would overwrite data of partition {} before it moves",
                    a.part,
                    b.part
                );
            }
        }
    }
    Ok(())
}

/// The destination superblock sectors to clear before the new table is written, so that a
/// half-moved partition does not mount. A sector that still holds source data to copy is
/// left alone, unless it looks like a superblock, which would be unsafe.
fn superblocks_to_clear(disk: &Disk, j: &Journal) -> Result<Vec<u64>> {
    let sources: Vec<(u64, u64)> = j
        .changes
        .iter()
        .filter(|c| c.moves_data)
        .zip(&j.data)
        .flat_map(|(c, d)| {
            let base = c.from.first * SECTOR;
            d.extents.iter().map(move |&(off, len)| (base + off, len))
        })
        .collect();
    let mut clear = Vec::new();
    for c in j.changes.iter().filter(|c| c.moves_data) {
        let sb = c.to.first * SECTOR + SUPERBLOCK;
        let live = sources
            .iter()
            .any(|&(s, l)| s < sb + SUPERBLOCK && sb < s + l);
        if !live {
            clear.push(sb);
        } else if superblock_at(disk, sb)? {
            bail!(
                "partition {}'s new start (sector {}) holds an ext4 superblock of data still to be moved; this layout cannot be relocated safely",
                c.part,
                c.to.first
            );
        }
    }
    Ok(clear)
}

/// The moves of a journal, each with its data.
fn moves(j: &Journal) -> Vec<(Change, MoveData)> {
    j.changes
        .iter()
        .filter(|c| c.moves_data)
        .copied()
        .zip(j.data.iter().cloned())
        .collect()
}

/// Whether the ext4 superblock magic is at the start of a partition at `sector`.
fn has_superblock(disk: &Disk, sector: u64) -> Result<bool> {
    superblock_at(disk, sector * SECTOR + SUPERBLOCK)
}

/// Whether the bytes at `byte` look like an ext4 superblock (its magic).
fn superblock_at(disk: &Disk, byte: u64) -> Result<bool> {
    Ok(disk.read(byte + MAGIC_AT as u64, 2)? == MAGIC.to_le_bytes())
}

/// Copies `pieces` from the journal's progress on, with a checkpoint after each.
fn copy(disk: &Disk, j: &mut Journal, pieces: &[Chunk], what: &str, log: Log) -> Result<()> {
    let first = j.progress.chunk as usize;
    let total: u64 = pieces.iter().map(|k| k.len).sum();
    log(&format!(
        "{what}: {:.1} MiB in {} pieces (from piece {first})",
        total as f64 / (1 << 20) as f64,
        pieces.len()
    ));
    for (n, k) in pieces.iter().enumerate().skip(first) {
        let buf = disk.read(k.src, k.len)?;
        disk.write(k.dst, &buf)?;
        disk.flush()?;
        j.progress = Progress {
            chunk: n as u64 + 1,
        };
        j.checkpoint(&disk.file, &disk.area)?;
    }
    Ok(())
}

/// Writes the saved heads at the destinations; with `only_missing`, only where no
/// superblock is yet (a head already written may belong to a file system mounted since).
fn write_heads(
    disk: &Disk,
    moves: &[(Change, MoveData)],
    nodes: &[Node],
    only_missing: bool,
) -> Result<()> {
    for (c, d) in moves {
        let mounted = match nodes.iter().find(|n| n.part == c.part) {
            Some(n) => in_use(n)?,
            None => false,
        };
        if mounted || (only_missing && has_superblock(disk, c.to.first)?) {
            continue;
        }
        disk.write(c.to.first * SECTOR, &d.head)?;
    }
    disk.flush()
}

fn write_table(disk: &mut Disk, changes: &[Change], log: Log) -> Result<()> {
    for c in changes {
        disk.gpt.set_range(c.part, c.to)?;
    }
    disk.gpt
        .write(&mut power::Checked(&disk.file))
        .with_context(|| format!("writing the new partition table of {}", disk.path.display()))?;
    disk.flush()?;
    log("Wrote the new partition table");
    Ok(())
}

/// Carries a journaled relocation through to the end: from its start (the old table in
/// place, nothing mounted), or, with the new table in place, from wherever it stopped.
fn finish(mut disk: Disk, mut j: Journal, nodes: &[Node], log: Log) -> Result<Vec<Moved>> {
    let moves = moves(&j);
    let refs: Vec<(&Change, &MoveData)> = moves.iter().map(|(c, d)| (c, d)).collect();
    let plan = plan(&refs, SECTOR);
    // Whether the heads are written (and must not be written again).
    let mut heads = false;
    if disk.table_is(&j.changes, |c| c.from) {
        if j.phase == Phase::Prepared {
            j.phase = Phase::Staging;
            j.progress = Progress::default();
        }
        copy(
            &disk,
            &mut j,
            &plan.staging,
            "Copying the blocks that land on free space",
            log,
        )?;
        if plan.overwriting.is_empty() && !plan.heads_overwrite {
            // Every new file system is whole before the table names it: writing the
            // table switches from the old ones to the new ones at once.
            log("Switching to the new partition table: every moved file system is whole");
            j.phase = Phase::Heads;
            j.checkpoint(&disk.file, &disk.area)?;
            write_heads(&disk, &moves, nodes, false)?;
            heads = true;
            write_table(&mut disk, &j.changes, log)?;
        } else {
            for sb in superblocks_to_clear(&disk, &j)? {
                disk.write(sb, &[0u8; SUPERBLOCK as usize])?;
            }
            disk.flush()?;
            write_table(&mut disk, &j.changes, log)?;
            j.phase = Phase::Copying;
            j.progress = Progress::default();
            j.checkpoint(&disk.file, &disk.area)?;
        }
    } else if matches!(j.phase, Phase::Prepared | Phase::Staging) {
        // The new table was written, the checkpoint after it was not.
        j.phase = Phase::Copying;
        j.progress = Progress::default();
    }
    if j.phase == Phase::Copying {
        copy(
            &disk,
            &mut j,
            &plan.overwriting,
            "Copying the blocks that land on old blocks (the moved partitions do not mount until this ends)",
            log,
        )?;
        j.phase = Phase::Heads;
        j.checkpoint(&disk.file, &disk.area)?;
    }
    if !heads {
        write_heads(&disk, &moves, nodes, true)?;
    }
    let mut moved = Vec::new();
    for (c, d) in &moves {
        let bytes = HEAD_BYTES + d.extents.iter().map(|e| e.1).sum::<u64>();
        let size = (c.from.last - c.from.first + 1) * SECTOR;
        log(&format!(
            "Relocation moved {bytes} bytes of partition {} ({size} bytes, {:.1}%)",
            c.part,
            bytes as f64 * 100.0 / size as f64
        ));
        moved.push(Moved {
            part: c.part,
            bytes,
            size,
        });
    }
    disk.area.erase(&disk.file)?;
    Ok(moved)
}

/// Finishes or undoes a relocation that a power cut interrupted; `nodes` are the
/// partitions' device nodes as this boot's kernel sees them.
pub fn recover(disk_path: &Path, nodes: &[Node], log: Log) -> Result<Recovery> {
    let disk = Disk::open(disk_path)?;
    let Some(j) = Journal::read(&disk.file, &disk.area)
        .with_context(|| format!("reading the relocation journal of {}", disk_path.display()))?
    else {
        return Ok(Recovery::Nothing);
    };
    let what = j
        .changes
        .iter()
        .map(|c| {
            format!(
                "partition {} (sectors {}.. to {}..)",
                c.part, c.from.first, c.to.first
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    ensure!(
        j.disk_guid == disk.gpt.disk_guid(),
        "{} holds a relocation journal of another disk; clear sectors {}..{} if this disk is yours",
        disk_path.display(),
        disk.area.first,
        disk.area.first + disk.area.sectors
    );
    if !disk.gpt.copies_agree() {
        log("The two copies of the partition table differ: a table write was cut short");
    }
    log(&format!(
        "Found an interrupted relocation of {what} (phase {:?}, piece {})",
        j.phase, j.progress.chunk
    ));
    if disk.table_was(&j.changes, |c| c.from) {
        // The table was never switched, so every old file system is whole: the copy wrote
        // only free space and cleared superblocks that only a moved partition's head can
        // bring back. This boot may have mounted and changed them since: the copies are
        // stale, so drop the relocation and let it run again.
        for (c, d) in moves(&j) {
            if !has_superblock(&disk, c.from.first)? {
                disk.write(c.from.first * SECTOR, &d.head)?;
            }
        }
        if !disk.gpt.copies_agree() {
            disk.gpt
                .write(&mut power::Checked(&disk.file))
                .context("rewriting the old partition table")?;
        }
        disk.flush()?;
        disk.area.erase(&disk.file)?;
        log("The partition table had not changed, so the partitions are as they were; the relocation is undone and will run again");
        return Ok(Recovery::Undone);
    }
    ensure!(
        disk.table_was(&j.changes, |c| c.to),
        "the relocation of {what} on {} was interrupted (phase {:?}), and the partition table is neither the old one nor the new one; the disk cannot be recovered",
        disk_path.display(),
        j.phase
    );
    if !disk.gpt.copies_agree() {
        disk.gpt
            .write(&mut power::Checked(&disk.file))
            .context("rewriting the new partition table")?;
        disk.flush()?;
    }
    if j.phase != Phase::Heads {
        for c in j.changes.iter().filter(|c| c.moves_data) {
            if let Some(n) = nodes.iter().find(|n| n.part == c.part) {
                ensure_unused(n)
                    .with_context(|| format!("finishing the interrupted relocation of {what}"))?;
            }
        }
    }
    let moved = finish(disk, j, nodes, log)
        .with_context(|| format!("finishing the interrupted relocation of {what}"))?;
    Ok(Recovery::Completed(moved))
}
