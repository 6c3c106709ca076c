//! Which blocks of an ext2/3/4 file system are in use, read from the file system's own
//! metadata (superblock, group descriptors, block bitmaps), so that a partition can be moved
//! by copying only those blocks, as `e2image -ra` does, where no e2fsprogs is installed.
//!
//! The file system sits on a raw device at a byte offset (a partition of the whole disk).
//! Anything this reader cannot account for exactly is refused, or counted whole as in use;
//! it never returns a set that may miss a used block.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{ensure, Context, Result};

use super::ext4::{INCOMPAT_64BIT, MAGIC, MAGIC_AT, SUPERBLOCK};
use super::le::{u16_at, u32_at};

/// A run of file-system blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The first block.
    pub start: u64,
    /// The number of blocks.
    pub len: u64,
}

/// The blocks in use in one file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedBlocks {
    /// Bytes per block.
    pub block_size: u64,
    /// The file system's size in blocks.
    pub blocks_count: u64,
    /// The blocks in use: sorted, neither overlapping nor touching.
    pub extents: Vec<Extent>,
}

const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
/// The incompatible features this reader understands: meta_bg and 64bit, which it handles,
/// and those that change nothing about where metadata lies or what the bitmaps mean
/// (filetype, extents, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir, inline_data,
/// encrypt, casefold).
const INCOMPAT_UNDERSTOOD: u32 = 0x2
    | INCOMPAT_META_BG
    | 0x40
    | INCOMPAT_64BIT
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_BLOCK_UNINIT: u16 = 0x2;
/// The largest single read: bitmaps that lie side by side (flex_bg) come in one request.
const MAX_READ: u64 = 4 << 20;

/// The blocks in use in the ext2/3/4 file system that starts `offset` bytes into `dev`.
///
/// In use: every block its block bitmaps mark; in groups whose bitmap is not initialized
/// (`BLOCK_UNINIT`), the superblock backup and descriptor blocks the kernel would mark
/// there (the whole group with meta_bg); every group's bitmaps and inode table; and the
/// blocks up to and including the superblock's.
pub fn read_used<R: Read + Seek>(dev: &mut R, offset: u64) -> Result<UsedBlocks> {
    used(dev, offset).with_context(|| {
        format!("finding the used blocks of the ext2/3/4 file system at byte offset {offset}")
    })
}

impl UsedBlocks {
    /// Blocks in use (sum of extent lengths).
    pub fn used_blocks(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// Merges the extents separated by the smallest gaps until at most `max` remain
/// (copying a few free blocks is harmless; the journal that records extents has fixed
/// room). `max` 0 is taken as 1.
pub fn coalesce(extents: &mut Vec<Extent>, max: usize) {
    let max = max.max(1);
    let n = extents.len();
    if n <= max {
        return;
    }
    let mut gaps: Vec<(u64, usize)> = extents
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].start - (w[0].start + w[0].len), i))
        .collect();
    gaps.sort_unstable();
    let mut join = vec![false; n - 1];
    for &(_, i) in &gaps[..n - max] {
        join[i] = true;
    }
    let mut out = Vec::with_capacity(max);
    let mut cur = extents[0];
    for (e, joined) in extents[1..].iter().zip(join) {
        if joined {
            cur.len = e.start + e.len - cur.start;
        } else {
            out.push(cur);
            cur = *e;
        }
    }
    out.push(cur);
    *extents = out;
}

/// What the superblock says about where things are.
struct Geometry {
    block_size: u64,
    blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    groups: u64,
    desc_size: u64,
    desc_blocks: u64,
    reserved_gdt: u64,
    inode_table_blocks: u64,
    sparse_super: bool,
    /// The two backup groups of sparse_super2.
    sparse_super2: Option<[u64; 2]>,
    /// meta_bg's first meta group.
    first_meta_bg: Option<u64>,
    wide_desc: bool,
    /// Whether BLOCK_UNINIT is honoured (uninit_bg or metadata_csum).
    group_csum: bool,
}

impl Geometry {
    fn parse(sb: &[u8]) -> Result<Self> {
        let magic = u16_at(sb, MAGIC_AT);
        ensure!(
            magic == MAGIC,
            "bad magic 0x{magic:04x} in the superblock (ext2/3/4 has 0xef53): no ext2/3/4 \
             file system starts at this offset"
        );
        let rev = u32_at(sb, 0x4c);
        // Revision 0 has no feature fields.
        let (compat, incompat, ro_compat) = if rev >= 1 {
            (u32_at(sb, 0x5c), u32_at(sb, 0x60), u32_at(sb, 0x64))
        } else {
            (0, 0, 0)
        };
        ensure!(
            incompat & INCOMPAT_JOURNAL_DEV == 0,
            "this is an external journal device, not a file system"
        );
        ensure!(
            incompat & INCOMPAT_RECOVER == 0,
            "its journal needs recovery (it is mounted, or was not unmounted cleanly), so its \
             bitmaps may be stale: unmount it and run `e2fsck -f` on it first"
        );
        let unknown = incompat & !INCOMPAT_UNDERSTOOD;
        ensure!(
            unknown == 0,
            "it has incompatible features this reader does not know (0x{unknown:x})"
        );
        ensure!(
            ro_compat & RO_COMPAT_BIGALLOC == 0,
            "it uses bigalloc (bitmaps of clusters, not blocks), which this reader does not \
             support"
        );
        let log = u32_at(sb, 0x18);
        ensure!(
            log <= 2,
            "its block size is 2^{} bytes; only 1, 2 and 4 KiB are supported",
            u64::from(log) + 10
        );
        let block_size = 1024u64 << log;
        let bit64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = u64::from(u32_at(sb, 0x4));
        if bit64 {
            blocks_count |= u64::from(u32_at(sb, 0x150)) << 32;
        }
        let first_data_block = u64::from(u32_at(sb, 0x14));
        ensure!(
            first_data_block < blocks_count,
            "its first data block ({first_data_block}) is not below its block count \
             ({blocks_count})"
        );
        let blocks_per_group = u64::from(u32_at(sb, 0x20));
        ensure!(
            blocks_per_group > 0 && blocks_per_group <= 8 * block_size,
            "implausible blocks per group: {blocks_per_group} (a {block_size}-byte bitmap \
             holds at most {})",
            8 * block_size
        );
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        let desc_size = if bit64 {
            let s = u64::from(u16_at(sb, 0xfe));
            ensure!(
                (64..=block_size).contains(&s) && s.is_power_of_two(),
                "implausible group descriptor size {s} for a 64bit file system"
            );
            s
        } else {
            32
        };
        let desc_blocks = groups.div_ceil(block_size / desc_size);
        let inode_size = if rev >= 1 {
            u64::from(u16_at(sb, 0x58))
        } else {
            128
        };
        ensure!(
            (128..=block_size).contains(&inode_size) && inode_size.is_power_of_two(),
            "implausible inode size {inode_size}"
        );
        let inodes_per_group = u64::from(u32_at(sb, 0x28));
        ensure!(inodes_per_group > 0, "its groups have no inodes");
        let first_meta_bg =
            (incompat & INCOMPAT_META_BG != 0).then(|| u64::from(u32_at(sb, 0x104)));
        if let Some(f) = first_meta_bg {
            ensure!(
                f <= desc_blocks,
                "its first meta group ({f}) is past its {desc_blocks} descriptor blocks"
            );
        }
        let g = Geometry {
            block_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            groups,
            desc_size,
            desc_blocks,
            reserved_gdt: u64::from(u16_at(sb, 0xce)),
            inode_table_blocks: (inodes_per_group * inode_size).div_ceil(block_size),
            sparse_super: ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
            sparse_super2: (compat & COMPAT_SPARSE_SUPER2 != 0)
                .then(|| [0x24c, 0x250].map(|o| u64::from(u32_at(sb, o)))),
            first_meta_bg,
            wide_desc: bit64,
            group_csum: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
        };
        if g.first_meta_bg.is_none() {
            ensure!(
                g.base_meta_blocks() <= g.group_len(0),
                "its superblock and {} descriptor blocks and {} reserved ones do not fit in a \
                 group of {} blocks",
                g.desc_blocks,
                g.reserved_gdt,
                g.group_len(0)
            );
        }
        Ok(g)
    }

    fn group_first(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    /// The last group ends with the file system, and may be short.
    fn group_len(&self, g: u64) -> u64 {
        (self.blocks_count - self.group_first(g)).min(self.blocks_per_group)
    }

    /// Whether group `g` carries the superblock or a backup of it (ext2fs_bg_has_super).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(backups) = self.sparse_super2 {
            return backups.contains(&g);
        }
        if g == 1 || !self.sparse_super {
            return true;
        }
        [3, 5, 7].iter().any(|&b| is_power_of(g, b))
    }

    /// The superblock, the descriptor table and its reserved growth, without meta_bg.
    fn base_meta_blocks(&self) -> u64 {
        1 + self.desc_blocks + self.reserved_gdt
    }

    /// Where descriptor block `i` lies (ext2fs_descriptor_block_loc2): after the primary
    /// superblock, or with meta_bg at the start of the meta group it describes.
    fn desc_block(&self, i: u64) -> u64 {
        match self.first_meta_bg {
            Some(first) if i >= first => {
                let g = i * (self.block_size / self.desc_size);
                self.group_first(g) + u64::from(self.has_super(g))
            }
            _ => self.first_data_block + 1 + i,
        }
    }

    /// What ext4_init_block_bitmap marks in group `g` besides the group tables (which
    /// `used` counts for every group): the superblock backup and descriptor blocks.
    /// With meta_bg the whole group, as its descriptor placement is not modelled here.
    fn uninit_group_base(&self, g: u64) -> Result<Option<Extent>> {
        let start = self.group_first(g);
        let len = self.group_len(g);
        if self.first_meta_bg.is_some() {
            return Ok(Some(Extent { start, len }));
        }
        if !self.has_super(g) {
            return Ok(None);
        }
        ensure!(
            self.base_meta_blocks() <= len,
            "group {g} has no initialized bitmap and is too short ({len} blocks) for its \
             superblock backup and descriptor tables"
        );
        Ok(Some(Extent {
            start,
            len: self.base_meta_blocks(),
        }))
    }

    fn inside(&self, start: u64, len: u64) -> bool {
        start >= self.first_data_block
            && start
                .checked_add(len)
                .is_some_and(|end| end <= self.blocks_count)
    }
}

/// Whether `n` is a power of `base` (`base` > 1).
fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// The fields of one group descriptor that say where things are.
struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free_blocks: u64,
    flags: u16,
}

impl Desc {
    fn parse(d: &[u8], wide: bool) -> Self {
        let lo = |o: usize| u64::from(u32_at(d, o));
        let hi = |o: usize| if wide { lo(o) << 32 } else { 0 };
        let free_hi = if wide {
            u64::from(u16_at(d, 0x2c)) << 16
        } else {
            0
        };
        Desc {
            block_bitmap: lo(0x0) | hi(0x20),
            inode_bitmap: lo(0x4) | hi(0x24),
            inode_table: lo(0x8) | hi(0x28),
            free_blocks: u64::from(u16_at(d, 0xc)) | free_hi,
            flags: u16_at(d, 0x12),
        }
    }
}

fn used<R: Read + Seek>(dev: &mut R, offset: u64) -> Result<UsedBlocks> {
    let mut sb = [0u8; 1024];
    read_at(dev, offset, SUPERBLOCK, &mut sb).context("reading the superblock")?;
    let g = Geometry::parse(&sb)?;
    // A file system that runs past the device is truncated or its superblock is wrong;
    // this also keeps every byte position below within 64 bits.
    let device = dev
        .seek(SeekFrom::End(0))
        .context("finding the size of the device")?;
    let fs_bytes = g.blocks_count.checked_mul(g.block_size);
    ensure!(
        fs_bytes
            .and_then(|b| b.checked_add(offset))
            .is_some_and(|end| end <= device),
        "the file system ({} blocks of {} bytes) runs past the end of the device ({device} \
         bytes)",
        g.blocks_count,
        g.block_size
    );
    let descs = read_descriptors(dev, offset, &g)?;

    let mut extents = vec![Extent {
        start: 0,
        len: g.first_data_block + 1,
    }];
    // (bitmap block, group) for the groups whose bitmap is to be read.
    let mut bitmaps = Vec::new();
    for (i, d) in (0u64..).zip(&descs) {
        for (what, start, len) in [
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, g.inode_table_blocks),
        ] {
            ensure!(
                g.inside(start, len),
                "group {i}'s {what} (blocks {start}..{}) lies outside the file system (blocks \
                 {}..{}): the descriptor is corrupt",
                start.saturating_add(len),
                g.first_data_block,
                g.blocks_count
            );
            // In use wherever they lie: with flex_bg in another group, whose bitmap may be
            // uninitialized; an initialized bitmap marks them too.
            extents.push(Extent { start, len });
        }
        if g.group_csum && d.flags & BG_BLOCK_UNINIT != 0 {
            extents.extend(g.uninit_group_base(i)?);
        } else {
            bitmaps.push((d.block_bitmap, i));
        }
    }

    // Sorted by location, so that bitmaps side by side are read together.
    bitmaps.sort_unstable();
    let blocks: Vec<u64> = bitmaps.iter().map(|b| b.0).collect();
    read_blocks(dev, offset, g.block_size, &blocks, |k, bitmap| {
        let group = bitmaps[k].1;
        let len = g.group_len(group);
        let before = extents.len();
        bitmap_runs(bitmap, len, g.group_first(group), &mut extents);
        let marked: u64 = extents[before..].iter().map(|e| e.len).sum();
        let free = descs[usize::try_from(group).expect("group index fits usize")].free_blocks;
        // A bitmap that disagrees with its own descriptor was misread or is corrupt:
        // copying by it could lose data.
        ensure!(
            marked + free == len,
            "group {group}'s block bitmap (block {}) marks {marked} of its {len} blocks in use, \
             but its descriptor counts {free} free: the file system is inconsistent; run \
             `e2fsck -f` on it first",
            bitmaps[k].0
        );
        Ok(())
    })
    .context("reading the block bitmaps")?;

    Ok(UsedBlocks {
        block_size: g.block_size,
        blocks_count: g.blocks_count,
        extents: merge(extents),
    })
}

fn read_descriptors<R: Read + Seek>(dev: &mut R, offset: u64, g: &Geometry) -> Result<Vec<Desc>> {
    let mut locations = Vec::new();
    for i in 0..g.desc_blocks {
        let b = g.desc_block(i);
        ensure!(
            g.inside(b, 1),
            "group descriptor block {i} would be at block {b}, outside the file system"
        );
        locations.push(b);
    }
    // Descriptor k sits at k * desc_size in the table: the size divides the block size.
    let mut table = Vec::new();
    read_blocks(dev, offset, g.block_size, &locations, |_, block| {
        table.extend_from_slice(block);
        Ok(())
    })
    .context("reading the group descriptors")?;
    let size = usize::try_from(g.desc_size).expect("descriptor size fits usize");
    Ok(table
        .chunks_exact(size)
        .take(usize::try_from(g.groups).context("too many groups for this machine")?)
        .map(|d| Desc::parse(d, g.wide_desc))
        .collect())
}

/// Reads `len` bytes at byte `pos` of the file system at `offset`.
fn read_at<R: Read + Seek>(dev: &mut R, offset: u64, pos: u64, buf: &mut [u8]) -> Result<()> {
    let at = offset
        .checked_add(pos)
        .context("the position overflows 64 bits")?;
    dev.seek(SeekFrom::Start(at))
        .with_context(|| format!("seeking to byte {at}"))?;
    dev.read_exact(buf)
        .with_context(|| format!("reading {} bytes at byte {at}", buf.len()))
}

/// Reads `blocks` in their order, one request per run of consecutive blocks (up to
/// `MAX_READ`), and hands each block with its index in `blocks` to `each`.
fn read_blocks<R: Read + Seek>(
    dev: &mut R,
    offset: u64,
    block_size: u64,
    blocks: &[u64],
    mut each: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let per_read = usize::try_from(MAX_READ / block_size).expect("small");
    let bs = usize::try_from(block_size).expect("small");
    let mut buf = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i + 1;
        while j < blocks.len() && j - i < per_read && blocks[j] == blocks[j - 1] + 1 {
            j += 1;
        }
        buf.resize((j - i) * bs, 0);
        read_at(dev, offset, blocks[i] * block_size, &mut buf)
            .with_context(|| format!("reading blocks {}..{}", blocks[i], blocks[j - 1] + 1))?;
        for (k, block) in buf.chunks_exact(bs).enumerate() {
            each(i + k, block)?;
        }
        i = j;
    }
    Ok(())
}

/// Appends the runs of set bits among the first `len` bits of `bitmap` (little-endian bit
/// order, as ext2 has it), as blocks counted from `first`.
fn bitmap_runs(bitmap: &[u8], len: u64, first: u64, out: &mut Vec<Extent>) {
    let mut i = 0;
    while i < len {
        let start = next_bit(bitmap, i, len, true);
        if start >= len {
            break;
        }
        let end = next_bit(bitmap, start, len, false);
        out.push(Extent {
            start: first + start,
            len: end - start,
        });
        i = end;
    }
}

/// The first bit at or after `from` (below `len`) that is `set`, or `len`.
fn next_bit(bitmap: &[u8], from: u64, len: u64, set: bool) -> u64 {
    let skip = if set { 0x00 } else { 0xff };
    let mut i = from;
    while i < len {
        let byte = bitmap[usize::try_from(i / 8).expect("bitmap index fits usize")];
        // Whole bytes of the other kind go by at once.
        if i.is_multiple_of(8) && byte == skip {
            i += 8;
            continue;
        }
        if (byte >> (i % 8)) & 1 == u8::from(set) {
            return i;
        }
        i += 1;
    }
    len
}

/// Sorts and merges overlapping or touching extents.
fn merge(mut v: Vec<Extent>) -> Vec<Extent> {
    v.retain(|e| e.len > 0);
    v.sort_unstable_by_key(|e| e.start);
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if e.start <= l.start + l.len => {
                l.len = l.len.max(e.start + e.len - l.start);
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_common::cmd;
    use std::fs::{File, OpenOptions};
    use std::io::Cursor;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    fn extents(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter()
            .map(|&(start, len)| Extent { start, len })
            .collect()
    }

    fn used_of(v: &[(u64, u64)]) -> UsedBlocks {
        UsedBlocks {
            block_size: 4096,
            blocks_count: 1 << 20,
            extents: extents(v),
        }
    }

    /// Whether every block of `inner` is in `outer` (both merged and sorted).
    fn covers(outer: &[Extent], inner: &[Extent]) -> bool {
        inner.iter().all(|i| {
            outer
                .iter()
                .any(|o| o.start <= i.start && i.start + i.len <= o.start + o.len)
        })
    }

    /// A small deterministic generator (xorshift64*), for test data without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            let mut v = Vec::with_capacity(n + 8);
            while v.len() < n {
                v.extend_from_slice(&self.next().to_le_bytes());
            }
            v.truncate(n);
            v
        }
    }

    #[test]
    fn bitmap_runs_and_merge() {
        // Bits 0-2, 9, 16-23 and 30-31 set; only the first 31 bits count.
        let bitmap = [0b0000_0111, 0b0000_0010, 0xff, 0b1100_0000];
        let mut out = Vec::new();
        bitmap_runs(&bitmap, 31, 100, &mut out);
        assert_eq!(out, extents(&[(100, 3), (109, 1), (116, 8), (130, 1)]));
        assert_eq!(
            merge(extents(&[
                (10, 5),
                (0, 1),
                (15, 2),
                (12, 1),
                (30, 0),
                (1, 2)
            ])),
            extents(&[(0, 3), (10, 7)])
        );
        assert!(is_power_of(243, 3) && is_power_of(49, 7) && !is_power_of(15, 3));
    }

    #[test]
    fn coalesce_merges_the_smallest_gaps_first() {
        // Gaps of 5, 1, 10 and 2 blocks.
        let mut u = used_of(&[(0, 2), (7, 1), (9, 3), (22, 1), (25, 4)]);
        let before = u.clone();
        coalesce(&mut u.extents, 5);
        assert_eq!(u, before);
        coalesce(&mut u.extents, 3);
        assert_eq!(u.extents, extents(&[(0, 2), (7, 5), (22, 7)]));
        coalesce(&mut u.extents, 0);
        assert_eq!(u.extents, extents(&[(0, 29)]));
        assert_eq!(before.used_blocks(), 11);

        // Random sets: the bound holds, everything stays covered, and every gap kept is
        // at least as wide as every gap closed.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..50 {
            let mut v = Vec::new();
            let mut at = rng.next() % 4;
            for _ in 0..(1 + rng.next() % 40) {
                let len = 1 + rng.next() % 9;
                v.push((at, len));
                at += len + 1 + rng.next() % 30;
            }
            let orig = used_of(&v);
            for max in 1..=v.len() + 1 {
                let mut c = orig.clone();
                coalesce(&mut c.extents, max);
                assert_eq!(c.extents.len(), max.min(v.len()));
                assert!(covers(&c.extents, &orig.extents));
                // Every extent starts and ends where an original one does.
                for e in &c.extents {
                    assert!(orig.extents.iter().any(|o| o.start == e.start));
                    assert!(orig
                        .extents
                        .iter()
                        .any(|o| o.start + o.len == e.start + e.len));
                }
                let gap = |w: &[Extent]| w[1].start - w[0].start - w[0].len;
                let kept: Vec<u64> = c.extents.windows(2).map(gap).collect();
                let closed: Vec<u64> = orig
                    .extents
                    .windows(2)
                    .filter(|w| !c.extents.iter().any(|e| e.start == w[1].start))
                    .map(gap)
                    .collect();
                if let (Some(k), Some(x)) = (kept.iter().min(), closed.iter().max()) {
                    assert!(k >= x, "kept a gap of {k} but closed one of {x}: {c:?}");
                }
            }
        }
    }

    #[test]
    fn high_halves_of_64bit_fields() {
        let mut sb = vec![0u8; 1024];
        let put32 = crate::disk::le::put_u32;
        put32(&mut sb, 0x4, 5);
        put32(&mut sb, 0x150, 1);
        put32(&mut sb, 0x18, 2);
        put32(&mut sb, 0x20, 32768);
        put32(&mut sb, 0x28, 8192);
        put32(&mut sb, 0x4c, 1);
        put32(&mut sb, 0x60, INCOMPAT_64BIT);
        sb[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x58..0x5a].copy_from_slice(&256u16.to_le_bytes());
        sb[0xfe..0x100].copy_from_slice(&64u16.to_le_bytes());
        let g = Geometry::parse(&sb).unwrap();
        assert_eq!(
            (g.blocks_count, g.groups, g.desc_blocks),
            ((1 << 32) + 5, 131_073, 2049)
        );
        assert_eq!(g.inode_table_blocks, 512);
        // Without 64bit the high half is not part of the count.
        put32(&mut sb, 0x60, 0);
        put32(&mut sb, 0x4, 40000);
        assert_eq!(Geometry::parse(&sb).unwrap().blocks_count, 40000);

        let mut d = vec![0u8; 64];
        for (o, v) in [
            (0x0, 10),
            (0x4, 11),
            (0x8, 12),
            (0x20, 1),
            (0x24, 2),
            (0x28, 3),
        ] {
            put32(&mut d, o, v);
        }
        d[0xc..0xe].copy_from_slice(&7u16.to_le_bytes());
        d[0x2c..0x2e].copy_from_slice(&1u16.to_le_bytes());
        d[0x12..0x14].copy_from_slice(&BG_BLOCK_UNINIT.to_le_bytes());
        let wide = Desc::parse(&d, true);
        assert_eq!(
            (
                wide.block_bitmap,
                wide.inode_bitmap,
                wide.inode_table,
                wide.free_blocks
            ),
            (
                (1 << 32) + 10,
                (2 << 32) + 11,
                (3 << 32) + 12,
                (1 << 16) + 7
            )
        );
        assert_eq!(wide.flags, BG_BLOCK_UNINIT);
        let narrow = Desc::parse(&d[..32], false);
        assert_eq!(
            (narrow.block_bitmap, narrow.inode_table, narrow.free_blocks),
            (10, 12, 7)
        );
    }

    /// A file system image made by mke2fs, placed `at` bytes into a buffer.
    fn small_image(at: usize, args: &[&str]) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        cmd::run(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4"])
                .args(args)
                .arg(&img)
                .arg("8M"),
        )
        .unwrap();
        let mut buf = vec![0x5a; at];
        buf.extend(std::fs::read(&img).unwrap());
        buf
    }

    fn error_of(image: Vec<u8>, at: u64) -> String {
        format!("{:#}", read_used(&mut Cursor::new(image), at).unwrap_err())
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        const AT: usize = 3 * 512;
        let sb = AT + 1024;
        // Eight groups of 1024 blocks.
        let good = small_image(AT, &["-b", "1024", "-g", "1024"]);
        let u = read_used(&mut Cursor::new(good.clone()), AT as u64).unwrap();
        assert_eq!((u.block_size, u.blocks_count), (1024, 8192));

        let e = error_of(vec![0; 1 << 16], 4096);
        assert!(
            e.contains("byte offset 4096") && e.contains("bad magic"),
            "{e}"
        );

        let mut img = good.clone();
        img[sb + 0x60] |= INCOMPAT_RECOVER as u8;
        let e = error_of(img, AT as u64);
        assert!(
            e.contains("byte offset 1536") && e.contains("needs recovery"),
            "{e}"
        );

        let mut img = good.clone();
        img[sb + 0x65] |= (RO_COMPAT_BIGALLOC >> 8) as u8;
        assert!(error_of(img, AT as u64).contains("bigalloc"));

        let mut img = good.clone();
        img[sb + 0x18] = 3;
        assert!(error_of(img, AT as u64).contains("2^13 bytes"));

        // Group 1's block bitmap moved past the end: descriptors are at block 2 with 1 KiB
        // blocks.
        let mut img = good.clone();
        let desc_size = usize::from(u16_at(&img, sb + 0xfe));
        let d1 = AT + 2 * 1024 + desc_size;
        img[d1..d1 + 4].copy_from_slice(&9000u32.to_le_bytes());
        let e = error_of(img, AT as u64);
        assert!(
            e.contains("group 1's block bitmap (blocks 9000..9001) lies outside"),
            "{e}"
        );

        // A bitmap that contradicts its descriptor: one more block of group 0 marked.
        let mut img = good.clone();
        let bitmap = AT + 1024 * usize::try_from(u32_at(&img, AT + 2 * 1024)).unwrap();
        let free = (0..1024).find(|i| img[bitmap + i / 8] & (1 << (i % 8)) == 0);
        let free = free.expect("group 0 has a free block");
        img[bitmap + free / 8] |= 1 << (free % 8);
        let e = error_of(img, AT as u64);
        assert!(
            e.contains("group 0's block bitmap") && e.contains("e2fsck -f"),
            "{e}"
        );

        // A device that ends early is an error, never a shorter set.
        let mut img = good;
        img.truncate(img.len() - 1);
        let e = error_of(img, AT as u64);
        assert!(e.contains("runs past the end of the device"), "{e}");
    }

    /// One file-system layout to prove.
    struct Layout {
        name: &'static str,
        /// mke2fs arguments, without `-E`.
        mkfs: &'static [&'static str],
        /// `-E` options besides the offset.
        extended: &'static str,
        size_mib: u64,
        /// Features dumpe2fs must list; with a leading `^`, must not.
        features: &'static [&'static str],
        /// Whether some group has an uninitialized block bitmap.
        uninit: bool,
        /// Whether the set must equal e2fsprogs' (otherwise a superset: meta_bg counts its
        /// uninitialized groups whole).
        exact: bool,
    }

    /// Some large pseudo-random files, many small ones, nested directories and symlinks.
    fn populate(dir: &Path, seed: u64) {
        let mut rng = Rng(seed);
        std::fs::create_dir_all(dir.join("big")).unwrap();
        for (i, size) in [(0, 2 << 20), (1, (1 << 20) + 123), (2, 300_001)] {
            std::fs::write(dir.join(format!("big/{i}.bin")), rng.bytes(size)).unwrap();
        }
        for d in 0..6 {
            let sub = dir.join(format!("d{d}/inner"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..50 {
                let size = usize::try_from(rng.next() % 6000).unwrap();
                std::fs::write(sub.join(format!("f{f}")), rng.bytes(size)).unwrap();
            }
        }
        std::os::unix::fs::symlink("big/0.bin", dir.join("short-link")).unwrap();
        std::os::unix::fs::symlink("x".repeat(200), dir.join("long-link")).unwrap();
    }

    /// Whether `got` holds the same tree as `want` (besides lost+found).
    fn assert_same_tree(want: &Path, got: &Path) {
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n != "lost+found")
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(want), names(got), "{}", got.display());
        for n in names(want) {
            let (w, g) = (want.join(&n), got.join(&n));
            let t = std::fs::symlink_metadata(&w).unwrap().file_type();
            if t.is_symlink() {
                assert_eq!(
                    std::fs::read_link(&w).unwrap(),
                    std::fs::read_link(&g).unwrap()
                );
            } else if t.is_dir() {
                assert_same_tree(&w, &g);
            } else {
                assert!(
                    std::fs::read(&w).unwrap() == std::fs::read(&g).unwrap(),
                    "{} differs",
                    g.display()
                );
            }
        }
    }

    /// The used blocks by dumpe2fs: the complement of its groups' "Free blocks:" lines.
    fn dumpe2fs_used(text: &str, blocks_count: u64) -> Vec<Extent> {
        let mut free = Vec::new();
        for line in text.lines() {
            // Indented: per group; the superblock's own "Free blocks:" is a count.
            let Some(list) = line.strip_prefix("  Free blocks: ") else {
                continue;
            };
            for item in list.split(", ").filter(|s| !s.is_empty()) {
                let (a, b) = item.split_once('-').unwrap_or((item, item));
                let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
                free.push(Extent {
                    start: a,
                    len: b - a + 1,
                });
            }
        }
        let free = merge(free);
        let mut used = Vec::new();
        let mut at = 0;
        for f in free.iter().chain([&Extent {
            start: blocks_count,
            len: 0,
        }]) {
            if f.start > at {
                used.push(Extent {
                    start: at,
                    len: f.start - at,
                });
            }
            at = f.start + f.len;
        }
        used
    }

    /// A device file of `len` bytes of garbage (nothing of it may look like a file system).
    fn garbage_file(path: &Path, len: u64) -> File {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let chunk = Rng(7).bytes(1 << 20);
        let mut at = 0;
        while at < len {
            let n = usize::try_from((len - at).min(1 << 20)).unwrap();
            f.write_all_at(&chunk[..n], at).unwrap();
            at += n as u64;
        }
        f
    }

    /// Copies only `used` from the file system at `from` in `src` to `to` in `dst`.
    fn copy_used(src: &File, from: u64, dst: &File, to: u64, used: &UsedBlocks) {
        let mut buf = Vec::new();
        for e in &used.extents {
            let (mut block, end) = (e.start, e.start + e.len);
            while block < end {
                let n = (end - block).min((4 << 20) / used.block_size);
                buf.resize(usize::try_from(n * used.block_size).unwrap(), 0);
                src.read_exact_at(&mut buf, from + block * used.block_size)
                    .unwrap();
                dst.write_all_at(&buf, to + block * used.block_size)
                    .unwrap();
                block += n;
            }
        }
    }

    fn at_offset(path: &Path, offset: u64) -> String {
        format!("{}?offset={offset}", path.display())
    }

    /// Makes the layout at one offset, checks the set against dumpe2fs, copies only the
    /// used blocks to another offset of a garbage-filled file, and checks the copy with
    /// e2fsck and by reading every file back with debugfs.
    fn prove(l: &Layout) {
        for tool in ["mke2fs", "dumpe2fs", "e2fsck", "debugfs"] {
            assert!(
                crate::tool::on_path(tool),
                "{tool} is missing: run scripts/install-deps.sh"
            );
        }
        // Offsets that are sector- but not block-aligned, as partitions may be.
        const FROM: u64 = (1 << 20) + 7 * 512;
        const TO: u64 = (3 << 20) + 3 * 512;
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        populate(&tree, 0x1234_5678 + l.size_mib);
        let fs_bytes = l.size_mib << 20;

        let src_path = d.path().join("src.img");
        File::create(&src_path)
            .unwrap()
            .set_len(FROM + fs_bytes + (1 << 20))
            .unwrap();
        let mut extended = format!("offset={FROM}");
        if !l.extended.is_empty() {
            extended = format!("{extended},{}", l.extended);
        }
        cmd::run(
            Command::new("mke2fs")
                .args(["-q", "-F"])
                .args(l.mkfs)
                .arg("-E")
                .arg(&extended)
                .arg("-d")
                .arg(&tree)
                .arg(&src_path)
                .arg(format!("{}M", l.size_mib)),
        )
        .unwrap();

        let dump =
            cmd::run_stdout(Command::new("dumpe2fs").arg(at_offset(&src_path, FROM))).unwrap();
        let features = dump
            .lines()
            .find_map(|l| l.strip_prefix("Filesystem features:"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>();
        for f in l.features {
            match f.strip_prefix('^') {
                Some(absent) => assert!(!features.contains(&absent), "{}: {f}", l.name),
                None => assert!(features.contains(f), "{}: {f} in {features:?}", l.name),
            }
        }
        assert_eq!(dump.contains("BLOCK_UNINIT"), l.uninit, "{}", l.name);

        let src = File::open(&src_path).unwrap();
        let used = read_used(&mut &src, FROM).unwrap();
        assert_eq!(used.blocks_count * used.block_size, fs_bytes);
        let theirs = dumpe2fs_used(&dump, used.blocks_count);
        let their_count: u64 = theirs.iter().map(|e| e.len).sum();
        println!(
            "{}: {} of {} blocks of {} bytes in use in {} extents; dumpe2fs: {} in {} extents",
            l.name,
            used.used_blocks(),
            used.blocks_count,
            used.block_size,
            used.extents.len(),
            their_count,
            theirs.len()
        );
        assert!(
            covers(&used.extents, &theirs),
            "{}: misses used blocks",
            l.name
        );
        if l.exact {
            // mke2fs turns meta_bg on by itself where the descriptors outgrow a group.
            assert!(!features.contains(&"meta_bg"), "{}", l.name);
            assert_eq!(used.extents, theirs, "{}", l.name);
        }

        let dst_path = d.path().join("dst.img");
        let dst = garbage_file(&dst_path, TO + fs_bytes + (1 << 20));
        copy_used(&src, FROM, &dst, TO, &used);
        dst.sync_data().unwrap();
        cmd::run(
            Command::new("e2fsck")
                .arg("-fn")
                .arg(at_offset(&dst_path, TO)),
        )
        .unwrap();
        assert_eq!(read_used(&mut &dst, TO).unwrap(), used, "{}", l.name);
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        cmd::run(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump / {}", out.display()))
                .arg(at_offset(&dst_path, TO)),
        )
        .unwrap();
        assert_same_tree(&tree, &out);
    }

    fn prove_all(layouts: &[Layout]) {
        for l in layouts {
            prove(l);
        }
    }

    #[test]
    fn default_ext4() {
        prove(&Layout {
            name: "default ext4, 700 MiB, 6 groups",
            mkfs: &["-t", "ext4"],
            extended: "",
            size_mib: 700,
            features: &[
                "flex_bg",
                "metadata_csum",
                "64bit",
                "sparse_super",
                "resize_inode",
            ],
            uninit: true,
            exact: true,
        });
    }

    #[test]
    fn small_blocks_and_32bit_descriptors() {
        prove_all(&[
            Layout {
                name: "1 KiB blocks, 32-bit descriptors, 8 groups",
                mkfs: &["-t", "ext4", "-b", "1024", "-O", "^64bit"],
                extended: "",
                size_mib: 64,
                features: &["^64bit", "flex_bg", "metadata_csum"],
                uninit: true,
                exact: true,
            },
            Layout {
                name: "ext2, 2 KiB blocks, 24 groups",
                mkfs: &["-t", "ext2", "-b", "2048", "-g", "2048"],
                extended: "",
                size_mib: 96,
                features: &["^has_journal", "^flex_bg", "^64bit", "^metadata_csum"],
                uninit: false,
                exact: true,
            },
        ]);
    }

    #[test]
    fn without_flex_bg_or_sparse_super() {
        prove_all(&[
            Layout {
                name: "no flex_bg, 50 groups",
                mkfs: &["-t", "ext4", "-b", "4096", "-g", "2048", "-O", "^flex_bg"],
                extended: "",
                size_mib: 400,
                features: &["^flex_bg", "sparse_super"],
                uninit: true,
                exact: true,
            },
            Layout {
                name: "no sparse_super, 8 groups",
                mkfs: &[
                    "-t",
                    "ext4",
                    "-b",
                    "4096",
                    "-g",
                    "4096",
                    "-O",
                    "^sparse_super,^resize_inode",
                ],
                extended: "",
                size_mib: 128,
                features: &["^sparse_super", "flex_bg"],
                uninit: true,
                exact: true,
            },
        ]);
    }

    #[test]
    fn wide_descriptors_sparse_super2_and_meta_bg() {
        prove_all(&[
            Layout {
                name: "64bit, 128-byte descriptors, uninit_bg (crc16), 2 KiB blocks, 16 groups",
                mkfs: &[
                    "-t",
                    "ext4",
                    "-b",
                    "2048",
                    "-g",
                    "4096",
                    "-O",
                    "64bit,^metadata_csum,uninit_bg",
                ],
                extended: "desc_size=128",
                size_mib: 128,
                features: &["64bit", "uninit_bg", "^metadata_csum"],
                uninit: true,
                exact: true,
            },
            Layout {
                name: "sparse_super2, 8 groups",
                mkfs: &[
                    "-t",
                    "ext4",
                    "-b",
                    "4096",
                    "-g",
                    "4096",
                    "-O",
                    "sparse_super2",
                ],
                extended: "",
                size_mib: 128,
                features: &["sparse_super2"],
                uninit: true,
                exact: true,
            },
            Layout {
                name: "meta_bg, 1 KiB blocks, 20 groups",
                mkfs: &["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"],
                extended: "",
                size_mib: 160,
                features: &["meta_bg", "64bit"],
                uninit: true,
                exact: false,
            },
        ]);
    }
}
