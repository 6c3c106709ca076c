//! Edits the GPT of a disk or disk image in place: the first and last sector of some entries
//! change, and every other byte of the entry array (type and unique GUIDs, attributes such as
//! ChromeOS's boot priorities, names, unused entries) and of the headers stays as it was,
//! except the CRCs.
//!
//! The provisioner's one model of the partition table: the planning (`layout`), the moves
//! (`relocate`), the partition UUID sealing needs and the backup's move to the end of a grown
//! disk all read and write it through [`Gpt`].
//!
//! Not the `gpt` crate: its `write_inplace` packs the used entries at the start of the array,
//! which renumbers COS's partitions (8 would become 6), and its `update_partitions` cannot
//! keep the array's size. Not `gptman` (coreos-installer's) either, which keeps the numbers
//! but not what a power cut during a move needs: it writes each header before its entry
//! array (a cut between leaves a header whose array CRC fails), looks for the backup only in
//! the disk's last sector (on a grown disk a torn primary then loses the table, where this
//! module follows the LBA the primary names), cannot tell that the two copies disagree (how
//! recovery finds a torn write), rejects headers longer than 92 bytes, and re-encodes names
//! from lossy UTF-16.

use std::io::{Read, Seek, SeekFrom, Write};

use super::le::{put_u32, put_u64, u32_at, u64_at};
use anyhow::{bail, ensure, Context, Result};

/// One partition entry's place, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    /// The first sector of the partition.
    pub first: u64,
    /// The last sector of the partition (inclusive, as GPT stores it).
    pub last: u64,
}

impl Range {
    /// How many sectors it spans.
    pub fn sectors(&self) -> u64 {
        self.last + 1 - self.first
    }
}

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header's size in revision 1.0; a larger header has reserved bytes after it.
const MIN_HEADER_SIZE: usize = 92;
/// The smallest entry; the fields this module reads all lie in it.
const MIN_ENTRY_SIZE: usize = 128;
/// COS uses 16 KiB; the bound stops a damaged but CRC-valid header from asking for gigabytes.
const MAX_ARRAY_BYTES: u64 = 16 << 20;

// Header fields (UEFI spec, "GPT Header").
const H_SIZE: usize = 12;
const H_CRC: usize = 16;
const H_MY_LBA: usize = 24;
const H_ALT_LBA: usize = 32;
const H_FIRST_USABLE: usize = 40;
const H_LAST_USABLE: usize = 48;
const H_DISK_GUID: usize = 56;
const H_ENTRIES_LBA: usize = 72;
const H_NUM_ENTRIES: usize = 80;
const H_ENTRY_SIZE: usize = 84;
const H_ENTRIES_CRC: usize = 88;

// Entry fields (UEFI spec, "GPT Partition Entry").
const E_FIRST: usize = 32;
const E_LAST: usize = 40;
const E_NAME: usize = 56;
const E_NAME_LEN: usize = 72;

/// Where the primary entry array goes when it is rebuilt from the backup, as every
/// partitioning tool puts it.
const PRIMARY_ENTRIES_LBA: u64 = 2;

/// A GPT GUID as text, upper case as sfdisk prints it: the first three fields are stored
/// little-endian.
pub fn guid_text(g: [u8; 16]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    let rev = |b: &[u8]| hex(&b.iter().rev().copied().collect::<Vec<_>>());
    format!(
        "{}-{}-{}-{}-{}",
        rev(&g[..4]),
        rev(&g[4..6]),
        rev(&g[6..8]),
        hex(&g[8..10]),
        hex(&g[10..])
    )
}

/// The header CRC: over the whole header with its own CRC field read as zero.
fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..H_CRC]);
    h.update(&[0; 4]);
    h.update(&header[H_CRC + 4..]);
    h.finalize()
}

fn seal(header: &mut [u8]) {
    let crc = header_crc(header);
    put_u32(header, H_CRC, crc);
}

fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, len: usize) -> Result<Vec<u8>> {
    dev.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking to byte {offset}"))?;
    let mut buf = vec![0; len];
    dev.read_exact(&mut buf)
        .with_context(|| format!("reading {len} bytes at byte {offset}"))?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(dev: &mut D, offset: u64, data: &[u8], what: &str) -> Result<()> {
    dev.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking to {what} at byte {offset}"))?;
    dev.write_all(data)
        .with_context(|| format!("writing {what} ({} bytes at byte {offset})", data.len()))
}

/// One copy of the table, checked.
struct TableCopy {
    header: Vec<u8>,
    entries: Vec<u8>,
}

/// Sectors an entry array of `bytes` takes.
fn array_sectors(bytes: u64, sector_size: u64) -> u64 {
    bytes.div_ceil(sector_size)
}

/// Reads and checks the header at `lba` and its entry array.
fn read_copy<D: Read + Seek>(dev: &mut D, sector_size: u64, lba: u64) -> Result<TableCopy> {
    let sector = read_at(dev, lba * sector_size, sector_size as usize)?;
    if &sector[..8] != SIGNATURE {
        bail!("no \"EFI PART\" signature (not a GPT header)");
    }
    let size = u32_at(&sector, H_SIZE) as usize;
    if !(MIN_HEADER_SIZE..=sector.len()).contains(&size) {
        bail!(
            "header size {size} is outside {MIN_HEADER_SIZE}..={}",
            sector.len()
        );
    }
    let header = sector[..size].to_vec();
    let (stored, computed) = (u32_at(&header, H_CRC), header_crc(&header));
    if stored != computed {
        bail!("header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})");
    }
    let my_lba = u64_at(&header, H_MY_LBA);
    if my_lba != lba {
        bail!("the header says it is at LBA {my_lba}");
    }
    let entry_size = u32_at(&header, H_ENTRY_SIZE) as usize;
    if entry_size < MIN_ENTRY_SIZE || !entry_size.is_power_of_two() {
        bail!("entry size {entry_size} is not 128 × 2^n");
    }
    let bytes = u64::from(u32_at(&header, H_NUM_ENTRIES)) * entry_size as u64;
    if bytes == 0 || bytes > MAX_ARRAY_BYTES {
        bail!("an entry array of {bytes} bytes is outside 1..={MAX_ARRAY_BYTES}");
    }
    let (first_usable, last_usable) = (
        u64_at(&header, H_FIRST_USABLE),
        u64_at(&header, H_LAST_USABLE),
    );
    if first_usable > last_usable {
        bail!("first usable LBA {first_usable} is after last usable LBA {last_usable}");
    }
    let outside_usable = |first: u64, last: u64| last < first_usable || first > last_usable;
    let entries_lba = u64_at(&header, H_ENTRIES_LBA);
    let entries_last = entries_lba + array_sectors(bytes, sector_size) - 1;
    if !outside_usable(entries_lba, entries_last) || (entries_lba..=entries_last).contains(&lba) {
        bail!(
            "the entry array (LBA {entries_lba}..={entries_last}) overlaps the header or the \
             usable LBAs {first_usable}..={last_usable}"
        );
    }
    let alt_lba = u64_at(&header, H_ALT_LBA);
    if alt_lba == lba || !outside_usable(alt_lba, alt_lba) {
        bail!(
            "the other header's LBA {alt_lba} is this header's or inside the usable LBAs \
             {first_usable}..={last_usable}"
        );
    }
    let entries = read_at(dev, entries_lba * sector_size, bytes as usize)
        .with_context(|| format!("reading the entry array at LBA {entries_lba}"))?;
    let (stored, computed) = (u32_at(&header, H_ENTRIES_CRC), crc32fast::hash(&entries));
    if stored != computed {
        bail!(
            "entry array CRC mismatch (stored {stored:#010x}, computed {computed:#010x}, \
             array at LBA {entries_lba})"
        );
    }
    Ok(TableCopy { header, entries })
}

/// `header` moved to `my_lba`, naming the other copy at `alt_lba` and its entry array at
/// `entries_lba`, with a fresh header CRC.
fn relocated(header: &[u8], my_lba: u64, alt_lba: u64, entries_lba: u64) -> Vec<u8> {
    let mut h = header.to_vec();
    put_u64(&mut h, H_MY_LBA, my_lba);
    put_u64(&mut h, H_ALT_LBA, alt_lba);
    put_u64(&mut h, H_ENTRIES_LBA, entries_lba);
    seal(&mut h);
    h
}

/// A GPT read from a disk, with its entries changed in memory until [`Gpt::write`].
#[derive(Debug, Clone)]
pub struct Gpt {
    sector_size: u64,
    /// The primary header as read, or rebuilt from the backup when the primary was damaged.
    header: Vec<u8>,
    entries: Vec<u8>,
    /// Where the backup's entry array is (or goes, when the backup was damaged).
    backup_entries_lba: u64,
    copies_agree: bool,
}

impl Gpt {
    /// Reads and checks the table: the primary (header at LBA 1) if it and its entry array are
    /// intact, else the backup. Errors say what is wrong with each copy (no signature, CRC
    /// mismatch, entry size not 128 × 2^n, …); the caller names the device.
    pub fn read<D: Read + Seek>(dev: &mut D, sector_size: u64) -> Result<Gpt> {
        ensure!(
            sector_size >= 512 && sector_size.is_power_of_two(),
            "sector size {sector_size} is not a power of two of at least 512"
        );
        let disk_bytes = dev
            .seek(SeekFrom::End(0))
            .context("finding the size of the disk")?;
        let last_lba = (disk_bytes / sector_size).checked_sub(1);
        let primary = read_copy(dev, sector_size, 1);
        let primary_err = match primary {
            Ok(p) => return Self::from_primary(dev, sector_size, last_lba, p),
            Err(e) => e,
        };
        // A damaged primary may still name the backup's place (the disk may have grown since
        // the table was written, so the backup is not at its end).
        let named = read_at(dev, sector_size, sector_size as usize)
            .ok()
            .filter(|s| &s[..8] == SIGNATURE)
            .map(|s| u64_at(&s, H_ALT_LBA))
            .filter(|&alt| alt > 1 && Some(alt) <= last_lba);
        let mut candidates: Vec<u64> = named.into_iter().collect();
        candidates.extend(last_lba.filter(|&l| l > 1 && Some(l) != named));
        let mut errors = vec![format!("primary header at LBA 1: {primary_err:#}")];
        for lba in candidates {
            match read_copy(dev, sector_size, lba) {
                Ok(b) => return Self::from_backup(sector_size, lba, b),
                Err(e) => errors.push(format!("backup header at LBA {lba}: {e:#}")),
            }
        }
        if errors.len() == 1 {
            errors.push(format!(
                "no backup header to try on a disk of {disk_bytes} bytes"
            ));
        }
        bail!(
            "no valid GPT (not a GPT disk, or both copies are damaged): {}",
            errors.join("; ")
        )
    }

    fn from_primary<D: Read + Seek>(
        dev: &mut D,
        sector_size: u64,
        last_lba: Option<u64>,
        p: TableCopy,
    ) -> Result<Gpt> {
        let backup_lba = u64_at(&p.header, H_ALT_LBA);
        // Writing past the end would grow an image file instead of failing like a disk.
        ensure!(
            Some(backup_lba) <= last_lba,
            "the primary GPT puts the backup at LBA {backup_lba}, past the end of the disk \
             (last LBA {}): the disk is smaller than the table",
            last_lba.unwrap_or(0)
        );
        let (backup_entries_lba, copies_agree) = match read_copy(dev, sector_size, backup_lba) {
            Ok(b) => {
                let entries_lba = u64_at(&b.header, H_ENTRIES_LBA);
                let expected = relocated(&p.header, backup_lba, 1, entries_lba);
                (entries_lba, b.header == expected && b.entries == p.entries)
            }
            Err(_) => {
                // The backup array goes right before the backup header, as the spec lays it out.
                let sectors = array_sectors(p.entries.len() as u64, sector_size);
                let entries_lba = backup_lba
                    .checked_sub(sectors)
                    .filter(|&l| l > u64_at(&p.header, H_LAST_USABLE))
                    .with_context(|| {
                        format!(
                            "the backup header at LBA {backup_lba} is damaged and its entry array \
                             ({sectors} sectors) does not fit between it and the usable LBAs"
                        )
                    })?;
                (entries_lba, false)
            }
        };
        Ok(Gpt {
            sector_size,
            header: p.header,
            entries: p.entries,
            backup_entries_lba,
            copies_agree,
        })
    }

    fn from_backup(sector_size: u64, backup_lba: u64, b: TableCopy) -> Result<Gpt> {
        let sectors = array_sectors(b.entries.len() as u64, sector_size);
        let first_usable = u64_at(&b.header, H_FIRST_USABLE);
        ensure!(
            PRIMARY_ENTRIES_LBA + sectors <= first_usable,
            "the primary GPT is damaged and its entry array ({sectors} sectors from LBA \
             {PRIMARY_ENTRIES_LBA}) would not fit before the first usable LBA {first_usable}"
        );
        Ok(Gpt {
            sector_size,
            header: relocated(&b.header, 1, backup_lba, PRIMARY_ENTRIES_LBA),
            backup_entries_lba: u64_at(&b.header, H_ENTRIES_LBA),
            entries: b.entries,
            copies_agree: false,
        })
    }

    /// The disk's GUID, as stored (mixed-endian, like every GUID in a GPT).
    pub fn disk_guid(&self) -> [u8; 16] {
        self.header[H_DISK_GUID..H_DISK_GUID + 16]
            .try_into()
            .expect("16 bytes")
    }

    /// The first sector partitions may use.
    pub fn first_usable(&self) -> u64 {
        u64_at(&self.header, H_FIRST_USABLE)
    }

    /// The last sector partitions may use.
    pub fn last_usable(&self) -> u64 {
        u64_at(&self.header, H_LAST_USABLE)
    }

    /// Bytes per sector, as the table was read.
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    /// Partition `part`'s unique GUID, lower case, as `/dev/disk/by-partuuid` and the
    /// kernel's `PARTUUID=` spell it.
    pub fn unique_guid(&self, part: u32) -> Result<String> {
        let e = self.used_entry(part)?;
        let g: [u8; 16] = e[16..32].try_into().expect("16 bytes");
        Ok(guid_text(g).to_ascii_lowercase())
    }

    /// Whether the backup header lies before the last sector of a disk of `disk_bytes` (the
    /// disk grew, or the image was written to a larger one), leaving the space after it unusable.
    pub fn backup_misplaced(&self, disk_bytes: u64) -> bool {
        u64_at(&self.header, H_ALT_LBA) < (disk_bytes / self.sector_size).saturating_sub(1)
    }

    /// Puts the backup at the end of a disk of `disk_bytes` (its header in the last sector,
    /// its entry array right before) and makes every sector before that usable, as
    /// `sfdisk --relocate gpt-bak-std` does; [`Gpt::write`] then writes it there.
    pub fn move_backup_to_end(&mut self, disk_bytes: u64) -> Result<()> {
        let last_lba = (disk_bytes / self.sector_size)
            .checked_sub(1)
            .context("the disk is empty")?;
        let sectors = array_sectors(self.entries.len() as u64, self.sector_size);
        let entries_lba = last_lba
            .checked_sub(sectors)
            .filter(|&l| l > self.last_usable())
            .with_context(|| {
                format!(
                    "a disk of {disk_bytes} bytes is no larger than the table's usable sectors                      (last {}): the backup cannot move to its end",
                    self.last_usable()
                )
            })?;
        put_u64(&mut self.header, H_ALT_LBA, last_lba);
        put_u64(&mut self.header, H_LAST_USABLE, entries_lba - 1);
        self.backup_entries_lba = entries_lba;
        Ok(())
    }

    fn entry_size(&self) -> usize {
        u32_at(&self.header, H_ENTRY_SIZE) as usize
    }

    fn num_entries(&self) -> u32 {
        u32_at(&self.header, H_NUM_ENTRIES)
    }

    /// Entry `part` (1-based), used or not.
    fn entry(&self, part: u32) -> Option<&[u8]> {
        let size = self.entry_size();
        let i = (part as usize).checked_sub(1)?;
        self.entries.get(i * size..(i + 1) * size)
    }

    /// Entry `part` if it is used (a non-zero type GUID), else an error saying why not.
    fn used_entry(&self, part: u32) -> Result<&[u8]> {
        let e = self.entry(part).with_context(|| {
            format!(
                "no partition {part}: the table's entries are numbered 1..={}",
                self.num_entries()
            )
        })?;
        ensure!(
            e[..16].iter().any(|&b| b != 0),
            "no partition {part}: its entry is unused"
        );
        Ok(e)
    }

    /// Used entries by partition number (1-based array index), in number order.
    pub fn partitions(&self) -> Vec<(u32, Range)> {
        (1..=self.num_entries())
            .filter_map(|n| Some((n, self.range(n).ok()?)))
            .collect()
    }

    /// Where partition `part` is; an error if its entry is unused or past the array.
    pub fn range(&self, part: u32) -> Result<Range> {
        let e = self.used_entry(part)?;
        Ok(Range {
            first: u64_at(e, E_FIRST),
            last: u64_at(e, E_LAST),
        })
    }

    /// Partition `part` for messages: its number, name and sectors.
    fn describe(&self, part: u32, r: Range) -> String {
        let name = self.entry(part).map_or_else(String::new, |e| {
            let units = e[E_NAME..E_NAME + E_NAME_LEN]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0);
            char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        });
        format!(
            "partition {part} ({name:?}, sectors {}..={})",
            r.first, r.last
        )
    }

    /// Checks one range against the usable sectors.
    fn check_usable(&self, part: u32, r: Range) -> Result<()> {
        ensure!(
            r.first <= r.last,
            "{} would end before it starts",
            self.describe(part, r)
        );
        let (first, last) = (self.first_usable(), self.last_usable());
        ensure!(
            r.first >= first && r.last <= last,
            "{} would lie outside the usable sectors {first}..={last}",
            self.describe(part, r)
        );
        Ok(())
    }

    /// Changes one entry's first and last sector. Overlaps with other partitions are checked
    /// by [`Gpt::validate`] and [`Gpt::write`], so several entries can move in any order.
    pub fn set_range(&mut self, part: u32, r: Range) -> Result<()> {
        self.used_entry(part)?;
        self.check_usable(part, r)?;
        let size = self.entry_size();
        let e = &mut self.entries[(part as usize - 1) * size..part as usize * size];
        put_u64(e, E_FIRST, r.first);
        put_u64(e, E_LAST, r.last);
        Ok(())
    }

    /// Checks that every used entry lies inside the usable sectors and that no two overlap.
    pub fn validate(&self) -> Result<()> {
        let parts = self.partitions();
        for &(n, r) in &parts {
            self.check_usable(n, r)?;
        }
        for (i, &(a, ra)) in parts.iter().enumerate() {
            for &(b, rb) in &parts[i + 1..] {
                ensure!(
                    ra.first > rb.last || rb.first > ra.last,
                    "{} and {} overlap",
                    self.describe(a, ra),
                    self.describe(b, rb)
                );
            }
        }
        Ok(())
    }

    /// Whether the table as read came from a valid primary and a valid backup with the same
    /// entries and matching header: false means a previous write was torn, or one copy is
    /// damaged, and [`Gpt::write`] will make both whole again.
    pub fn copies_agree(&self) -> bool {
        self.copies_agree
    }

    /// Validates, then writes the primary entry array and header, then the backup's (at the
    /// LBA the primary header names), with fresh CRCs, and flushes the writer. Header fields
    /// other than the CRCs are kept; the backup header is the primary's with its own LBA, the
    /// primary's and its entry array's.
    pub fn write<D: Write + Seek>(&self, dev: &mut D) -> Result<()> {
        self.validate()
            .context("refusing to write an invalid partition table")?;
        let ss = self.sector_size;
        let mut primary = self.header.clone();
        put_u32(&mut primary, H_ENTRIES_CRC, crc32fast::hash(&self.entries));
        seal(&mut primary);
        let backup_lba = u64_at(&primary, H_ALT_LBA);
        let backup = relocated(&primary, backup_lba, 1, self.backup_entries_lba);
        let primary_entries = u64_at(&primary, H_ENTRIES_LBA);
        write_at(
            dev,
            primary_entries * ss,
            &self.entries,
            "the primary GPT entry array",
        )?;
        write_at(dev, ss, &primary, "the primary GPT header")?;
        write_at(
            dev,
            self.backup_entries_lba * ss,
            &self.entries,
            "the backup GPT entry array",
        )?;
        write_at(dev, backup_lba * ss, &backup, "the backup GPT header")?;
        dev.flush().context("flushing the partition table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use cos_customizer_common::cmd;
    use serde_json::Value;

    const MIB: u64 = 1 << 20;
    /// The last LBA of the 64 MiB image, where sfdisk puts the backup header.
    const BACKUP_LBA: u64 = (64 * MIB / 512) - 1;
    /// The backup entry array: 128 entries of 128 bytes right before the backup header.
    const BACKUP_ENTRIES_LBA: u64 = BACKUP_LBA - 32;

    /// A COS layout scaled down to 64 MiB, numbered with COS's gaps (no 6, 7, 9, 10); STATE
    /// after ROOT-A as on a COS disk, boot priorities on KERN-A.
    const COS_SCRIPT: &str = r#"label: gpt
first-lba: 34
d11 : start=64, size=64, type=21686148-6449-6E6F-744E-656564454649, name="RWFW"
d2 : start=2048, size=2048, type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, name="KERN-A", attrs="GUID:48,56"
d4 : start=4096, size=2048, type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, name="KERN-B"
d8 : start=6144, size=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="OEM"
d12 : start=8192, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI-SYSTEM"
d5 : start=12288, size=16384, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, name="ROOT-B"
d3 : start=28672, size=16384, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, name="ROOT-A"
d1 : start=45056, size=81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="STATE"
"#;

    /// The COS reclaim: ROOT-A shrinks to 8 sectors, OEM grows into the rest of ROOT-A's old
    /// place, STATE moves down after it.
    const RECLAIM: [(u32, Range); 3] = [
        (
            1,
            Range {
                first: 36872,
                last: 36872 + 81920 - 1,
            },
        ),
        (
            8,
            Range {
                first: 28680,
                last: 36871,
            },
        ),
        (
            3,
            Range {
                first: 28672,
                last: 28679,
            },
        ),
    ];

    fn cos_image(dir: &Path) -> PathBuf {
        assert!(
            crate::tool::on_path("sfdisk") && crate::tool::on_path("sgdisk"),
            "sfdisk or sgdisk is missing: run scripts/install-deps.sh"
        );
        let img = dir.join("disk.img");
        File::create(&img).unwrap().set_len(64 * MIB).unwrap();
        cmd::run_with_input(Command::new("sfdisk").arg("-q").arg(&img), COS_SCRIPT).unwrap();
        img
    }

    fn open(img: &Path) -> File {
        File::options().read(true).write(true).open(img).unwrap()
    }

    fn read(img: &Path) -> Result<Gpt> {
        Gpt::read(&mut open(img), 512)
    }

    fn flip_byte(img: &Path, offset: u64) {
        use std::os::unix::fs::FileExt;
        let f = open(img);
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
    }

    /// `sfdisk -J`: the table's id and its partitions by number.
    fn sfdisk_json(img: &Path) -> (String, BTreeMap<u32, Value>) {
        let out = cmd::run_stdout(Command::new("sfdisk").arg("-J").arg(img)).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let table = &v["partitiontable"];
        let parts = table["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let node = p["node"].as_str().unwrap();
                let stem = node.trim_end_matches(|c: char| c.is_ascii_digit());
                (node[stem.len()..].parse().unwrap(), p.clone())
            })
            .collect();
        (table["id"].as_str().unwrap().to_string(), parts)
    }

    /// Byte offsets where two images differ.
    fn diff(a: &[u8], b: &[u8]) -> Vec<u64> {
        assert_eq!(a.len(), b.len());
        (0..a.len())
            .filter(|&i| a[i] != b[i])
            .map(|i| i as u64)
            .collect()
    }

    #[test]
    fn cos_reclaim_keeps_numbers_and_every_other_byte() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_image(d.path());
        let before = std::fs::read(&img).unwrap();
        let (id, json_before) = sfdisk_json(&img);
        let dump_before = cmd::run_stdout(Command::new("sfdisk").arg("-d").arg(&img)).unwrap();

        let mut gpt = read(&img).unwrap();
        assert!(gpt.copies_agree());
        assert_eq!(guid_text(gpt.disk_guid()), id);
        assert_eq!(
            (gpt.first_usable(), gpt.last_usable()),
            (34, BACKUP_ENTRIES_LBA - 1)
        );
        let numbers: Vec<u32> = gpt.partitions().iter().map(|p| p.0).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 8, 11, 12]);
        for (n, p) in &json_before {
            let start = p["start"].as_u64().unwrap();
            let size = p["size"].as_u64().unwrap();
            assert_eq!(
                gpt.range(*n).unwrap(),
                Range {
                    first: start,
                    last: start + size - 1
                },
                "partition {n}"
            );
            assert_eq!(
                gpt.unique_guid(*n).unwrap(),
                p["uuid"].as_str().unwrap().to_ascii_lowercase(),
                "partition {n}"
            );
        }
        assert!(gpt.unique_guid(6).is_err(), "an unused entry has no GUID");

        // STATE first: until ROOT-A shrinks it overlaps ROOT-A, which only `write` refuses.
        for (n, r) in RECLAIM {
            gpt.set_range(n, r).unwrap();
        }
        gpt.write(&mut open(&img)).unwrap();

        let verify = cmd::run_stdout(Command::new("sgdisk").arg("-v").arg(&img)).unwrap();
        assert!(verify.contains("No problems found"), "{verify}");
        let (id_after, json_after) = sfdisk_json(&img);
        assert_eq!(id_after, id);
        assert_eq!(
            json_after.keys().collect::<Vec<_>>(),
            json_before.keys().collect::<Vec<_>>()
        );
        for (n, a) in &json_after {
            let b = &json_before[n];
            for key in ["type", "uuid", "name", "attrs"] {
                assert_eq!(a.get(key), b.get(key), "{key} of partition {n}");
            }
            let (start, size) = match RECLAIM.iter().find(|c| c.0 == *n) {
                Some((_, r)) => (r.first, r.last - r.first + 1),
                None => (b["start"].as_u64().unwrap(), b["size"].as_u64().unwrap()),
            };
            assert_eq!(a["start"], start, "start of partition {n}");
            assert_eq!(a["size"], size, "size of partition {n}");
        }
        assert_eq!(json_after[&2]["attrs"], "GUID:48,56");
        let dump_after = cmd::run_stdout(Command::new("sfdisk").arg("-d").arg(&img)).unwrap();
        let untouched = |dump: &str| -> Vec<String> {
            dump.lines()
                .map(|l| l.replace(&*img.to_string_lossy(), "IMG"))
                .filter(|l| !["IMG1 ", "IMG3 ", "IMG8 "].iter().any(|p| l.starts_with(p)))
                .collect()
        };
        assert_eq!(untouched(&dump_after), untouched(&dump_before));

        // Only the changed LBAs and the CRCs differ, in both copies.
        let after = std::fs::read(&img).unwrap();
        let allowed = |off: u64| {
            let in_header = |lba: u64| {
                let o = off.wrapping_sub(lba * 512) as usize;
                (H_CRC..H_CRC + 4).contains(&o) || (H_ENTRIES_CRC..H_ENTRIES_CRC + 4).contains(&o)
            };
            let in_entries = |lba: u64| {
                RECLAIM.iter().any(|(n, _)| {
                    let o = off.wrapping_sub(lba * 512 + u64::from(n - 1) * 128) as usize;
                    (E_FIRST..E_LAST + 8).contains(&o)
                })
            };
            in_header(1) || in_header(BACKUP_LBA) || in_entries(2) || in_entries(BACKUP_ENTRIES_LBA)
        };
        let changed = diff(&before, &after);
        let stray: Vec<_> = changed.iter().filter(|&&o| !allowed(o)).collect();
        assert!(
            stray.is_empty(),
            "bytes changed outside LBAs and CRCs: {stray:?}"
        );
        assert!(!changed.is_empty());

        let again = read(&img).unwrap();
        assert!(again.copies_agree());
        for (n, r) in RECLAIM {
            assert_eq!(again.range(n).unwrap(), r);
        }

        // A write torn after the primary: the backup still has the old table.
        let backup_start = (BACKUP_ENTRIES_LBA * 512) as usize;
        let mut torn = after.clone();
        torn[backup_start..].copy_from_slice(&before[backup_start..]);
        std::fs::write(&img, &torn).unwrap();
        let gpt = read(&img).unwrap();
        assert!(!gpt.copies_agree());
        assert_eq!(gpt.range(8).unwrap(), RECLAIM[1].1);
        gpt.write(&mut open(&img)).unwrap();
        assert_eq!(std::fs::read(&img).unwrap(), after);
    }

    #[test]
    fn backup_where_the_primary_says_on_a_grown_disk() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_image(d.path());
        open(&img).set_len(96 * MIB).unwrap();
        let mut gpt = read(&img).unwrap();
        assert!(gpt.copies_agree());
        let oem = Range {
            first: 6144,
            last: 7167,
        };
        gpt.set_range(8, oem).unwrap();
        gpt.write(&mut open(&img)).unwrap();

        let img_bytes = std::fs::read(&img).unwrap();
        assert!(
            img_bytes[(64 * MIB) as usize..].iter().all(|&b| b == 0),
            "nothing may be written past the old end"
        );
        let backup = read_copy(&mut open(&img), 512, BACKUP_LBA).unwrap();
        assert_eq!(u64_at(&backup.header, H_ALT_LBA), 1);
        assert_eq!(u64_at(&backup.header, H_ENTRIES_LBA), BACKUP_ENTRIES_LBA);
        let again = read(&img).unwrap();
        assert!(again.copies_agree());
        assert_eq!(again.range(8).unwrap(), oem);
        assert_eq!(sfdisk_json(&img).1[&8]["size"], 1024);
        // sgdisk's only complaint is the one the grown disk causes.
        let verify = cmd::run_stdout(Command::new("sgdisk").arg("-v").arg(&img)).unwrap();
        assert!(
            verify.contains("Identified 1 problems") && verify.contains("self-pointer"),
            "{verify}"
        );

        // A damaged primary still names the backup's place, which is not the disk's end.
        flip_byte(&img, 512 + H_DISK_GUID as u64);
        let gpt = read(&img).unwrap();
        assert!(!gpt.copies_agree());
        assert_eq!(gpt.range(8).unwrap(), oem);
        gpt.write(&mut open(&img)).unwrap();
        assert_eq!(std::fs::read(&img).unwrap(), img_bytes);
    }

    #[test]
    fn damaged_primary_is_read_from_the_backup_and_repaired() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_image(d.path());
        let good = std::fs::read(&img).unwrap();
        let partitions = read(&img).unwrap().partitions();
        let damages: [(&str, &dyn Fn()); 3] = [
            ("a header byte", &|| {
                flip_byte(&img, 512 + H_DISK_GUID as u64)
            }),
            // In entry 12's name, so only the array's CRC notices.
            ("an entry byte", &|| {
                flip_byte(&img, 2 * 512 + 11 * 128 + E_NAME as u64)
            }),
            // No signature: the backup is looked for at the disk's end.
            ("the whole header", &|| {
                use std::os::unix::fs::FileExt;
                open(&img).write_all_at(&[0; 512], 512).unwrap();
            }),
        ];
        for (what, damage) in damages {
            damage();
            let gpt = read(&img).unwrap();
            assert!(!gpt.copies_agree(), "{what}");
            assert_eq!(gpt.partitions(), partitions, "{what}");
            gpt.write(&mut open(&img)).unwrap();
            assert!(
                std::fs::read(&img).unwrap() == good,
                "{what}: the repaired image differs from the original"
            );
            assert!(read(&img).unwrap().copies_agree(), "{what}");
        }
        // A damaged backup is rewritten from the primary.
        flip_byte(&img, BACKUP_LBA * 512 + H_FIRST_USABLE as u64);
        let gpt = read(&img).unwrap();
        assert!(!gpt.copies_agree());
        gpt.write(&mut open(&img)).unwrap();
        assert!(std::fs::read(&img).unwrap() == good);
        // Both damaged: nothing to trust.
        flip_byte(&img, 512 + H_DISK_GUID as u64);
        flip_byte(&img, BACKUP_LBA * 512 + H_DISK_GUID as u64);
        let e = format!("{:#}", read(&img).unwrap_err());
        assert!(
            e.contains("primary header at LBA 1: header CRC mismatch")
                && e.contains(&format!(
                    "backup header at LBA {BACKUP_LBA}: header CRC mismatch"
                )),
            "{e}"
        );
    }

    #[test]
    fn refuses_overlaps_and_ranges_outside_the_usable_sectors() {
        let d = tempfile::tempdir().unwrap();
        let img = cos_image(d.path());
        let good = std::fs::read(&img).unwrap();
        let mut gpt = read(&img).unwrap();
        let err = |r: Result<()>| format!("{:#}", r.unwrap_err());

        let e = err(gpt.set_range(
            1,
            Range {
                first: 33,
                last: 100,
            },
        ));
        assert!(
            e.contains("partition 1 (\"STATE\", sectors 33..=100)")
                && e.contains("outside the usable sectors 34..="),
            "{e}"
        );
        let past_end = gpt.last_usable() + 1;
        let e = err(gpt.set_range(
            1,
            Range {
                first: 45056,
                last: past_end,
            },
        ));
        assert!(e.contains("outside the usable sectors"), "{e}");
        let e = err(gpt.set_range(
            1,
            Range {
                first: 50000,
                last: 49999,
            },
        ));
        assert!(
            e.contains("partition 1") && e.contains("end before it starts"),
            "{e}"
        );
        let e = format!("{:#}", gpt.range(6).unwrap_err());
        assert!(e.contains("no partition 6: its entry is unused"), "{e}");
        let e = format!("{:#}", gpt.range(129).unwrap_err());
        assert!(e.contains("numbered 1..=128"), "{e}");
        let e = err(gpt.set_range(
            7,
            Range {
                first: 100,
                last: 200,
            },
        ));
        assert!(e.contains("no partition 7"), "{e}");
        let e = err(gpt.set_range(
            0,
            Range {
                first: 100,
                last: 200,
            },
        ));
        assert!(e.contains("no partition 0"), "{e}");
        assert_eq!(
            gpt.range(1).unwrap().first,
            45056,
            "refused changes leave no trace"
        );

        gpt.set_range(
            8,
            Range {
                first: 28000,
                last: 29000,
            },
        )
        .unwrap();
        let e = err(gpt.validate());
        assert!(
            e.contains("partition 3 (\"ROOT-A\", sectors 28672..=45055) and partition 8 (\"OEM\", sectors 28000..=29000) overlap"),
            "{e}"
        );
        let e = err(gpt.write(&mut open(&img)));
        assert!(
            e.contains("refusing to write") && e.contains("overlap"),
            "{e}"
        );
        assert!(
            std::fs::read(&img).unwrap() == good,
            "a refused write wrote"
        );
    }

    #[test]
    fn not_a_gpt() {
        let d = tempfile::tempdir().unwrap();
        let zeros = d.path().join("zeros.img");
        File::create(&zeros).unwrap().set_len(MIB).unwrap();
        let e = format!("{:#}", read(&zeros).unwrap_err());
        assert!(
            e.contains("not a GPT disk")
                && e.contains("primary header at LBA 1: no \"EFI PART\" signature")
                && e.contains("backup header at LBA 2047: no \"EFI PART\" signature"),
            "{e}"
        );

        let dos = d.path().join("dos.img");
        File::create(&dos).unwrap().set_len(8 * MIB).unwrap();
        cmd::run_with_input(
            Command::new("sfdisk").arg("-q").arg(&dos),
            "label: dos\nstart=2048, size=4096\n",
        )
        .unwrap();
        let e = format!("{:#}", read(&dos).unwrap_err());
        assert!(e.contains("no \"EFI PART\" signature"), "{e}");

        // The header survives but the file ends inside the entry array.
        let img = cos_image(d.path());
        let truncated = d.path().join("truncated.img");
        std::fs::write(&truncated, &std::fs::read(&img).unwrap()[..10 << 10]).unwrap();
        let e = format!("{:#}", read(&truncated).unwrap_err());
        assert!(
            e.contains("primary header at LBA 1: reading the entry array at LBA 2"),
            "{e}"
        );

        let tiny = d.path().join("tiny.img");
        std::fs::write(&tiny, [0u8; 100]).unwrap();
        let e = format!("{:#}", read(&tiny).unwrap_err());
        assert!(
            e.contains("reading 512 bytes at byte 512") && e.contains("no backup header to try"),
            "{e}"
        );

        // The sector size is the caller's: this table is not at byte 4096.
        let e = format!("{:#}", Gpt::read(&mut open(&img), 4096).unwrap_err());
        assert!(e.contains("no \"EFI PART\" signature"), "{e}");
        let e = format!("{:#}", Gpt::read(&mut open(&img), 1000).unwrap_err());
        assert!(e.contains("sector size 1000"), "{e}");
    }
}
