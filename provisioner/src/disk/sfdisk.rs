//! The partition table as `sfdisk --dump` prints it: parsed and edited as text (pure), and
//! the few sfdisk calls that read or change it.
//!
//! A dump looks like
//! ```text
//! label: gpt
//! last-lba: 20971486
//! sector-size: 512
//!
//! /dev/vda1 : start=     4444160, size=     3944415, type=0FC63DAF-…, uuid=1EC2BD9A-…, name="STATE"
//! ```
//! The node is the disk plus an optional `p` plus the number (`/dev/sda3`, `/dev/nvme0n1p3`,
//! `/dev/loop0p3`), so the number is the node's trailing digits.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use cos_customizer_common::cmd;

/// One partition of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Its number, as in `/dev/sda3`.
    pub number: u32,
    /// In sectors of the dump's `sector-size`.
    pub start: u64,
    /// In sectors of the dump's `sector-size`.
    pub size: u64,
}

impl Partition {
    /// The last sector of the partition.
    pub fn end(&self) -> u64 {
        self.start + self.size.max(1) - 1
    }
}

/// A GPT partition table, kept as sfdisk's dump so a rewrite changes only what it must.
#[derive(Debug, Clone)]
pub struct Table {
    text: String,
}

/// The number, start and size on a partition line, or `None` for a header line.
fn parse_line(line: &str) -> Result<Option<Partition>> {
    let Some((node, fields)) = line.split_once(" : ") else {
        return Ok(None);
    };
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number = node[node.len() - digits..]
        .parse()
        .with_context(|| format!("reading the partition number of {line:?}"))?;
    let field = |name: &str| -> Result<u64> {
        fields
            .split(',')
            .find_map(|f| f.trim().strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}= in {line:?}"))?
            .trim()
            .parse()
            .with_context(|| format!("reading {name}= in {line:?}"))
    };
    Ok(Some(Partition {
        number,
        start: field("start")?,
        size: field("size")?,
    }))
}

impl Table {
    /// Reads a dump; fails on a table that is not GPT or a partition line it cannot read.
    pub fn parse(text: &str) -> Result<Table> {
        for line in text.lines() {
            parse_line(line)?;
        }
        let t = Table { text: text.into() };
        if t.header("label") != Some("gpt") {
            bail!("the partition table is not GPT:\n{text}");
        }
        Ok(t)
    }

    /// The dump, as sfdisk takes it back.
    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    fn header(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    }

    fn header_u64(&self, key: &str) -> Result<u64> {
        self.header(key)
            .with_context(|| format!("no {key}: in the partition table"))?
            .parse()
            .with_context(|| format!("reading {key}: of the partition table"))
    }

    /// The last sector partitions may use.
    pub fn last_lba(&self) -> Result<u64> {
        self.header_u64("last-lba")
    }

    /// Bytes per sector; old sfdisk versions do not print it, and they only knew 512.
    pub fn sector_size(&self) -> Result<u64> {
        match self.header("sector-size") {
            Some(_) => self.header_u64("sector-size"),
            None => Ok(512),
        }
    }

    /// The dump line of partition `number` and what it says.
    fn line_of(&self, number: u32) -> Result<(&str, Partition)> {
        self.text
            .lines()
            .find_map(|l| {
                parse_line(l)
                    .ok()
                    .flatten()
                    .filter(|p| p.number == number)
                    .map(|p| (l, p))
            })
            .with_context(|| format!("no partition {number} in the partition table"))
    }

    /// Partition `number`; an error if the table has none.
    pub fn get(&self, number: u32) -> Result<Partition> {
        Ok(self.line_of(number)?.1)
    }

    /// The partition's unique GUID, lower case (as blkid prints PARTUUID).
    pub fn uuid(&self, number: u32) -> Result<String> {
        let (line, _) = self.line_of(number)?;
        let fields = line.split_once(" : ").map_or("", |(_, f)| f);
        Ok(fields
            .split(',')
            .find_map(|f| f.trim().strip_prefix("uuid="))
            .with_context(|| format!("no uuid= in {line:?}"))?
            .trim()
            .to_ascii_lowercase())
    }

    /// The same table with one partition's size changed; everything else is kept as dumped.
    pub fn with_size(&self, number: u32, size: u64) -> Result<Table> {
        let mut found = false;
        let mut out = String::with_capacity(self.text.len());
        for line in self.text.split_inclusive('\n') {
            match parse_line(line.trim_end_matches('\n'))? {
                Some(p) if p.number == number => {
                    found = true;
                    out.push_str(&replace_field(line, "size", size));
                }
                _ => out.push_str(line),
            }
        }
        if !found {
            bail!("no partition {number} in the partition table");
        }
        Ok(Table { text: out })
    }
}

/// Replaces the value of `name=` in one dump line.
fn replace_field(line: &str, name: &str, value: u64) -> String {
    let (node, fields) = line.split_once(" : ").expect("a partition line");
    let fields: Vec<String> = fields
        .split(',')
        .map(|f| {
            let trimmed = f.trim_start();
            match trimmed.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                Some(_) => format!("{}{name}={value:>12}", &f[..f.len() - trimmed.len()]),
                None => f.to_string(),
            }
        })
        .collect();
    format!("{node} : {}", fields.join(","))
}

/// Whether the backup GPT is not at the end of the disk, so partitions cannot use the
/// end of it (the disk grew, or the image was made smaller than the disk).
pub fn backup_gpt_misplaced(table: &Table, disk_bytes: u64) -> Result<bool> {
    let ss = table.sector_size()?;
    // Backup header + a 16 KiB entry array (128 entries of 128 bytes), in sectors.
    let backup = 1 + (128 * 128u64).div_ceil(ss);
    let want = (disk_bytes / ss).saturating_sub(1 + backup);
    Ok(table.last_lba()? < want)
}

/// `sfdisk --dump` of `disk`.
pub fn read(disk: &Path) -> Result<Table> {
    let text = cmd::run_stdout(Command::new("sfdisk").arg("--dump").arg(disk))
        .with_context(|| format!("dumping the partition table of {}", disk.display()))?;
    Table::parse(&text)
        .with_context(|| format!("parsing the partition table of {}", disk.display()))
}

/// Moves the backup GPT to the end of the disk, so the space after the old end is usable.
pub fn relocate_backup_gpt(disk: &Path) -> Result<()> {
    println!(
        "Moving the backup GPT of {} to the end of the disk",
        disk.display()
    );
    cmd::run(
        Command::new("sfdisk")
            .args(["--no-reread", "--relocate", "gpt-bak-std"])
            .arg(disk),
    )
    .with_context(|| {
        format!(
            "moving the backup GPT of {} to the end of the disk",
            disk.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A COS disk's dump: STATE after ROOT-A, OEM 16 MiB at sector 86016.
    pub const DUMP: &str = "label: gpt
label-id: 12864CDD-8CD0-4D18-ADB3-9A85A126CC11
device: /dev/vda
unit: sectors
first-lba: 34
last-lba: 8388574
sector-size: 512

/dev/vda1 : start=     4444160, size=     3944415, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=1EC2BD9A-2860-45D3-8C31-7FEAF338600D, name=\"STATE\"
/dev/vda2 : start=       20480, size=       32768, type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, uuid=EA1ECCB8-1645-43A5-B5CA-EE4736CA6F81, name=\"KERN-A\", attrs=\"GUID:48,56\"
/dev/vda3 : start=     2347008, size=     2097152, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, uuid=8ED1946A-34D6-4D29-B5DE-F021865107E7, name=\"ROOT-A\"
/dev/vda4 : start=       53248, size=       32768, type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, uuid=A68ADB5A-6F5A-4D38-BF23-346C9F841640, name=\"KERN-B\"
/dev/vda5 : start=      249856, size=     2097152, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, uuid=3E0D0DE1-12DF-4CC0-A04F-A4505E1F7623, name=\"ROOT-B\"
/dev/vda8 : start=       86016, size=       32768, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=40C5544F-5C78-4F56-8C0F-D105859FA36D, name=\"OEM\"
/dev/vda11 : start=          64, size=       16384, type=21686148-6449-6E6F-744E-656564454649, uuid=EF1F5A30-435C-4C86-BA34-119BC336B1F9, name=\"RWFW\"
/dev/vda12 : start=      118784, size=      131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=B63DB121-878C-4BED-92BE-966619EF8967, name=\"EFI-SYSTEM\"
";

    #[test]
    fn reads_partitions_by_number() {
        let t = Table::parse(DUMP).unwrap();
        assert_eq!(
            t.get(1).unwrap(),
            Partition {
                number: 1,
                start: 4444160,
                size: 3944415
            }
        );
        // vda1 must not match vda11 or vda12.
        assert_eq!(t.get(11).unwrap().start, 64);
        assert_eq!(t.get(3).unwrap().end(), 2347008 + 2097152 - 1);
        assert!(t.get(6).is_err());
        assert_eq!(t.last_lba().unwrap(), 8388574);
        assert_eq!(t.sector_size().unwrap(), 512);
        assert_eq!(t.uuid(8).unwrap(), "40c5544f-5c78-4f56-8c0f-d105859fa36d");
    }

    #[test]
    fn other_node_names() {
        for (node, n) in [
            ("/dev/nvme0n1p3", 3),
            ("/dev/loop0p12", 12),
            ("disk.img3", 3),
            ("/dev/sda10", 10),
        ] {
            let line = format!("{node} : start=  5, size= 8, type=X");
            assert_eq!(parse_line(&line).unwrap().unwrap().number, n, "{node}");
        }
        assert!(parse_line("label: gpt").unwrap().is_none());
        assert!(parse_line("/dev/sda : start=x, size=1").is_err());
        assert!(Table::parse("label: dos\n").is_err());
    }

    #[test]
    fn changes_one_size_and_keeps_the_rest() {
        let t = Table::parse(DUMP).unwrap().with_size(3, 8).unwrap();
        assert_eq!(
            t.get(3).unwrap(),
            Partition {
                number: 3,
                start: 2347008,
                size: 8
            }
        );
        assert_eq!(t.get(1).unwrap().size, 3944415);
        let line = t
            .text()
            .lines()
            .find(|l| l.starts_with("/dev/vda3 "))
            .unwrap();
        assert_eq!(
            line,
            "/dev/vda3 : start=     2347008, size=           8, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, uuid=8ED1946A-34D6-4D29-B5DE-F021865107E7, name=\"ROOT-A\""
        );
        let changed: Vec<_> = DUMP
            .lines()
            .zip(t.text().lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 1);
        assert!(t.text().ends_with("name=\"EFI-SYSTEM\"\n"));
        // Attributes (the ChromeOS boot priorities) survive.
        assert!(t.text().contains("name=\"KERN-A\", attrs=\"GUID:48,56\""));
        assert!(Table::parse(DUMP).unwrap().with_size(7, 8).is_err());
    }

    #[test]
    fn backup_gpt_position() {
        let t = Table::parse(DUMP).unwrap();
        // The fixture: a 4 GiB table on a 4 GiB disk, then on a 10 GiB one.
        assert!(!backup_gpt_misplaced(&t, 4 << 30).unwrap());
        assert!(backup_gpt_misplaced(&t, 10 << 30).unwrap());
    }

    fn have_sfdisk() -> bool {
        crate::tool::on_path("sfdisk")
    }

    /// A sparse disk file with three partitions, the first with a pattern to move.
    fn disk_file(dir: &Path) -> std::path::PathBuf {
        let img = dir.join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        cmd::run_with_input(
            Command::new("sfdisk").arg("-q").arg(&img),
            "label: gpt\nstart=2048, size=2048, name=A\nstart=8192, size=8, name=B\nstart=16384, size=4096, name=C\n",
        )
        .unwrap();
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(b"payload of C", 16384 * 512).unwrap();
        img
    }

    #[test]
    fn sfdisk_on_a_disk_file() {
        assert!(
            have_sfdisk(),
            "sfdisk is missing: run scripts/install-deps.sh"
        );
        let d = tempfile::tempdir().unwrap();
        let img = disk_file(d.path());
        let t = read(&img).unwrap();
        assert_eq!(
            t.get(3).unwrap(),
            Partition {
                number: 3,
                start: 16384,
                size: 4096
            }
        );
        // The disk grows: the backup GPT moves to the new end.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        assert!(backup_gpt_misplaced(&read(&img).unwrap(), 128 << 20).unwrap());
        relocate_backup_gpt(&img).unwrap();
        assert!(!backup_gpt_misplaced(&read(&img).unwrap(), 128 << 20).unwrap());
        let e = format!("{:#}", read(&d.path().join("missing")).unwrap_err());
        assert!(e.contains("sfdisk --dump"), "{e}");
    }
}
