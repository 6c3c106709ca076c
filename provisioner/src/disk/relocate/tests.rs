//! Relocations on disk images with real ext4 file systems, stopped by a simulated power cut
//! at every write in turn: each cut leaves a disk on which no moved partition mounts with
//! files missing, and from which [`recover`] (or a fresh [`relocate`] after an undo)
//! reaches the same final disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cos_customizer_common::cmd;

use super::power::sim;
use super::*;
use crate::disk::layout;
use crate::disk::table;

struct Fixture {
    _dir: tempfile::TempDir,
    template: PathBuf,
    work: PathBuf,
    files: Vec<(u32, String, Vec<u8>)>,
}

fn run(c: &mut Command) -> String {
    cmd::run_stdout(c).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Pseudo-random bytes, so a misplaced block shows.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A disk of `mib` MiB with KERN-A, OEM, ROOT-A and STATE in COS order (OEM at the front,
/// ROOT-A right before STATE), ext4 with files on OEM and STATE.
fn fixture(mib: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.img");
    fs::File::create(&template)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let table = "label: gpt\n\
        first-lba: 34\n\
        start=64, size=1984, name=\"KERN-A\", type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, attrs=\"GUID:48,56\"\n\
        start=2048, size=2048, name=\"OEM\"\n\
        start=4096, size=16384, name=\"ROOT-A\"\n\
        start=20480, size=40960, name=\"STATE\"\n";
    // sfdisk numbers them 1..4; COS's numbers come from a second pass that renumbers.
    sfdisk_write(&template, table);
    // KERN-A=1 OEM=2 ROOT-A=3 STATE=4 -> STATE=1, KERN-A=2, ROOT-A=3, OEM=8.
    let dump = run(Command::new("sfdisk").arg("--dump").arg(&template));
    let img = template.display().to_string();
    let renumbered = dump
        .lines()
        .map(|l| {
            for (from, to) in [("1 :", "2 :"), ("2 :", "8 :"), ("4 :", "1 :")] {
                if let Some(rest) = l.strip_prefix(&format!("{img}{from}")) {
                    return format!("{img}{to}{rest}");
                }
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    sfdisk_write(&template, &renumbered);
    let mut files = Vec::new();
    for (part, start, size, n) in [(8u32, 2048u64, 2048u64, 3usize), (1, 20480, 40960, 40)] {
        let content = dir.path().join(format!("content{part}"));
        fs::create_dir_all(content.join("dir")).unwrap();
        for i in 0..n {
            let data = noise(part as u64 * 1000 + i as u64, 1000 + i * 5_000);
            let name = format!("dir/f{i}");
            fs::write(content.join(&name), &data).unwrap();
            files.push((part, name, data));
        }
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-E"])
            .arg(format!("offset={}", start * 512))
            .arg("-d")
            .arg(&content)
            .arg(&template)
            .arg(format!("{}k", size / 2)));
    }
    // Old ROOT-A data in the space STATE and OEM move into.
    let f = fs::OpenOptions::new().write(true).open(&template).unwrap();
    f.write_all_at(&noise(99, 16384 * 512), 4096 * 512).unwrap();
    Fixture {
        work: dir.path().join("work.img"),
        _dir: dir,
        template,
        files,
    }
}

fn sfdisk_write(img: &Path, table: &str) {
    cmd::run_with_input(
        Command::new("sfdisk").args(["-q", "--no-reread"]).arg(img),
        table,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

impl Fixture {
    fn fresh(&self) {
        fs::copy(&self.template, &self.work).unwrap();
    }

    fn changes(&self, oem_bytes: u64, reclaim: bool) -> Vec<Change> {
        let t = table::read(&self.template).unwrap();
        layout::changes(&t, 1, 8, oem_bytes, reclaim).unwrap()
    }

    /// Grows STATE's table entry to the end of the work disk, as COS does at boot.
    fn grow_state(&self) {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.work)
            .unwrap();
        let mut gpt = Gpt::read(&mut f, SECTOR).unwrap();
        let r = gpt.range(1).unwrap();
        gpt.set_range(
            1,
            Range {
                first: r.first,
                last: gpt.last_usable(),
            },
        )
        .unwrap();
        gpt.write(&mut f).unwrap();
    }

    /// Where the table on the work disk puts partition `part`.
    fn range(&self, part: u32) -> Range {
        let mut f = fs::File::open(&self.work).unwrap();
        Gpt::read(&mut f, SECTOR).unwrap().range(part).unwrap()
    }

    fn extract(&self, r: Range, name: &str) -> PathBuf {
        let out = self.work.with_file_name(name);
        let data = fs::read(&self.work).unwrap();
        fs::write(
            &out,
            &data[(r.first * 512) as usize..((r.last + 1) * 512) as usize],
        )
        .unwrap();
        out
    }

    /// Partition `part` as the table says now: `None` when it holds no superblock (it
    /// does not mount), else checks that it is clean and holds every file.
    fn mountable(&self, part: u32) -> Option<()> {
        let r = self.range(part);
        let f = fs::File::open(&self.work).unwrap();
        let mut magic = [0u8; 2];
        f.read_exact_at(&mut magic, r.first * 512 + SUPERBLOCK + MAGIC_AT as u64)
            .unwrap();
        if magic != MAGIC.to_le_bytes() {
            return None;
        }
        let fs_img = self.extract(r, &format!("p{part}.img"));
        run(Command::new("e2fsck").arg("-fn").arg(&fs_img));
        for (p, name, data) in &self.files {
            if *p == part {
                let got = Command::new("debugfs")
                    .arg("-R")
                    .arg(format!("cat /{name}"))
                    .arg(&fs_img)
                    .output()
                    .unwrap()
                    .stdout;
                assert!(got == *data, "partition {part}: /{name} differs");
            }
        }
        Some(())
    }

    fn relocate(&self, changes: &[Change]) -> Result<Vec<Moved>> {
        relocate(&self.work, &[], changes, &mut |_| {})
    }

    fn recover(&self) -> Result<Recovery> {
        recover(&self.work, &[], &mut |_| {})
    }

    fn assert_final(&self, changes: &[Change]) {
        for c in changes {
            let r = self.range(c.part);
            // STATE may have been grown at the end since.
            assert!(
                r == c.to || (c.part == 1 && r.first == c.to.first && r.last > c.to.last),
                "partition {}: {r:?}, not {:?}",
                c.part,
                c.to
            );
        }
        let out = run(Command::new("sgdisk").arg("-v").arg(&self.work));
        assert!(out.contains("No problems found"), "{out}");
        assert_eq!(self.mountable(1), Some(()), "STATE mounts");
        assert_eq!(self.mountable(8), Some(()), "OEM mounts");
    }

    /// Writes a file into partition `part` as the table says now, as a boot that mounted
    /// it would.
    fn touch(&self, part: u32, name: &str, data: &[u8]) {
        let r = self.range(part);
        let fs_img = self.extract(r, &format!("p{part}.img"));
        let src = self.work.with_file_name("touched");
        fs::write(&src, data).unwrap();
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} {name}", src.display()))
            .arg(&fs_img));
        let f = fs::OpenOptions::new().write(true).open(&self.work).unwrap();
        f.write_all_at(&fs::read(&fs_img).unwrap(), r.first * 512)
            .unwrap();
    }

    fn file(&self, part: u32, name: &str) -> Vec<u8> {
        let fs_img = self.extract(self.range(part), &format!("p{part}.img"));
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat /{name}"))
            .arg(&fs_img)
            .output()
            .unwrap()
            .stdout
    }

    /// Cuts the power after each write in turn and recovers. Returns how many cuts left
    /// STATE unmountable until the recovery. With `grow` (the `-oem-size` bytes and whether
    /// ROOT-A is reclaimed, which `changes` were planned with), the boot after the cut grows
    /// a STATE that mounts to the end of the disk, as COS does, before the recovery runs,
    /// and a relocation that is undone is planned again from the table then.
    fn every_cut(&self, changes: &[Change], grow: Option<(u64, bool)>) -> usize {
        self.fresh();
        sim::cut_after(None);
        let moved = self.relocate(changes).unwrap();
        let writes = sim::writes();
        self.assert_final(changes);
        assert!(moved.iter().all(|m| m.bytes < m.size / 2), "{moved:?}");
        let mut dark = 0;
        for n in 0..writes {
            self.fresh();
            sim::cut_after(Some(n));
            let e = self.relocate(changes).unwrap_err();
            assert!(format!("{e:#}").contains("simulated power cut"), "{e:#}");
            sim::cut_after(None);
            // The next boot: a moved partition either does not mount or is whole.
            let state = self.mountable(1);
            let _ = self.mountable(8);
            if state.is_none() {
                dark += 1;
            }
            let old_table = changes.iter().all(|c| self.range(c.part) == c.from);
            // With the old table, the old file systems mount whole (STATE only misses its
            // superblock while OEM's new one, on STATE's old head, is cleared before the
            // table is written), and this boot writes to STATE before the provisioner
            // recovers.
            let touched = old_table && state.is_some();
            if touched {
                self.touch(1, "after-cut", b"written by the boot after the cut");
            }
            if grow.is_some() && state.is_some() {
                self.grow_state();
            }
            // The flow plans again from the table it finds.
            let again = || match grow {
                Some((oem_bytes, reclaim)) => {
                    let t = table::read(&self.work).unwrap();
                    layout::changes(&t, 1, 8, oem_bytes, reclaim).unwrap()
                }
                None => changes.to_vec(),
            };
            match self.recover().unwrap() {
                Recovery::Undone => {
                    assert!(old_table, "cut {n}: undone with the new table in place");
                    self.relocate(&again()).unwrap();
                }
                // Cut before the journal was written, or while a finished one was erased.
                Recovery::Nothing if old_table => {
                    self.relocate(&again()).unwrap();
                }
                Recovery::Nothing => {}
                Recovery::Completed(_) => assert!(!old_table, "cut {n}: completed the old table"),
            }
            self.assert_final(changes);
            if touched {
                assert_eq!(
                    self.file(1, "after-cut"),
                    b"written by the boot after the cut"
                );
            }
            assert_eq!(self.recover().unwrap(), Recovery::Nothing);
        }
        println!("checked {writes} power cuts; {dark} left STATE unmountable until recovered");
        dark
    }
}

#[test]
fn reclaim_and_grow_oem_survives_a_power_cut_at_every_write() {
    let f = fixture(32);
    let changes = f.changes(2 << 20, true);
    assert_eq!(changes.len(), 3, "{changes:?}");
    f.every_cut(&changes, None);
}

#[test]
fn a_state_grown_at_the_boot_after_a_cut_is_recovered() {
    let f = fixture(32);
    let changes = f.changes(2 << 20, true);
    f.every_cut(&changes, Some((2 << 20, true)));
}

#[test]
fn grow_oem_without_reclaim_moves_state_up_over_itself() {
    let f = fixture(40);
    let changes = f.changes(3 << 20, false);
    assert_eq!(changes[0].part, 1);
    assert!(changes[0].to.first > changes[0].from.first);
    assert_eq!(
        changes[1].to.first, changes[0].from.first,
        "OEM takes STATE's old start"
    );
    f.every_cut(&changes, None);
}

#[test]
fn refuses_mounted_tables_it_does_not_expect_and_busy_partitions() {
    let f = fixture(32);
    f.fresh();
    let mut changes = f.changes(0, true);
    changes[0].from.last += 8;
    let e = f.relocate(&changes).unwrap_err().to_string();
    assert!(e.contains("neither as the relocation expects"), "{e}");
    let changes = f.changes(0, true);
    let e = relocate(
        &f.work,
        &[Node {
            part: 1,
            path: PathBuf::from("/dev/null"),
        }],
        &changes,
        &mut |_| {},
    );
    // /dev/null cannot be opened exclusively as a block device is; what counts is that the
    // check runs: it either passes (not busy) or names the node.
    if let Err(e) = e {
        assert!(format!("{e:#}").contains("/dev/null"), "{e:#}");
    }
    let _ = Path::new("/");
}
