//! Boot disk repartitioning (the original's `repartitionBootDisk`), run at the start of every
//! boot's provisioning. Each stage decides from the disk as it is now. Where the original
//! reboots three times (into ROOT-B, after shrinking ROOT-A, after moving STATE and OEM),
//! this reboots once: the root switch is prepared now and everything else happens at the
//! shutdown in between.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::BootDiskConfig;
use cos_customizer_common::protocol::RESIZE_WAIT_LINE;
use cos_customizer_common::{cmd, sizing};
use rustix::fs::{FallocateFlags, OFlags};

use super::bootdisk::{BootDisk, KERN_A, KERN_B, OEM, ROOT_A, ROOT_B, STATE};
use super::relocate::{self, Change, Node, Recovery};
use super::{exitrd, ext4, layout, table};
use crate::host::Host;
use crate::outcome::Outcome;
use crate::state::State;

/// How long the host has to grow the boot disk; [`RESIZE_WAIT_LINE`] says the same.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(180);

/// How many shutdowns may try the relocation before the build gives up on it.
const MAX_RELOCATION_ATTEMPTS: u32 = 2;

/// Repartitions the boot disk as the config asks. Everything that can happen with the
/// partitions in use happens now; the moves happen at this boot's shutdown (the exit
/// ramdisk), so the build needs one reboot, after which this finds the layout final.
pub fn repartition(host: &Host, state: &mut State, state_dir: &Path) -> Result<Outcome> {
    let boot = state.config.boot_disk.clone();
    if !boot.reclaim_sda3 && boot.oem_size.is_none() && !boot.wait_for_disk_resize {
        println!("No repartitioning requested");
        return Ok(Outcome::Done);
    }
    let disk = BootDisk::find(host)?;
    println!("Boot disk: {}", disk.dev.display());
    table::move_backup_to_end(&disk.dev)?;
    if boot.reclaim_sda3 {
        switch_root(host, &disk)?;
    }
    if boot.wait_for_disk_resize && !state.disk_resize_complete {
        wait_for_disk_resize(&disk, RESIZE_TIMEOUT, Duration::from_secs(1))?;
        state.disk_resize_complete = true;
        state.save(state_dir)?;
        table::move_backup_to_end(&disk.dev)?;
    }
    if !sizing::moves_partitions(&boot) {
        return Ok(Outcome::Done);
    }
    let changes = planned_changes(&disk, &boot)?;
    if changes.is_empty() {
        println!("The partitions are in place");
        resize_oem_fs(host, &disk, &boot)?;
        return Ok(Outcome::Done);
    }
    if state.relocation_attempts >= MAX_RELOCATION_ATTEMPTS {
        bail!(
            "the partitions were to move at each of the last {} shutdowns but have not; the exit ramdisk's messages (BuildStatus lines before this boot) say why",
            state.relocation_attempts
        );
    }
    state.relocation_attempts += 1;
    state.save(state_dir)?;
    for c in &changes {
        println!(
            "Partition {}: sectors {}-{} will become {}-{}{}",
            c.part,
            c.from.first,
            c.from.last,
            c.to.first,
            c.to.last,
            if c.moves_data {
                " (its data moves)"
            } else {
                ""
            }
        );
    }
    exitrd::install(host, &disk, &changes)?;
    println!("The partitions move at this shutdown, once nothing has them mounted");
    Ok(Outcome::Reboot)
}

/// The changes still to make to reach the layout `boot` asks for.
fn planned_changes(disk: &BootDisk, boot: &BootDiskConfig) -> Result<Vec<Change>> {
    // Done exactly when the layout would change nothing: an -oem-size no larger than OEM
    // leaves OEM where it is.
    let oem_bytes = match &boot.oem_size {
        Some(s) => sizing::parse_size(s).with_context(|| format!("reading the OEM size {s:?}"))?,
        None => 0,
    };
    layout::changes(
        &table::read(&disk.dev)?,
        STATE,
        OEM,
        oem_bytes,
        boot.reclaim_sda3,
    )
}

/// Finishes or undoes a relocation that a power cut interrupted, before anything needs the
/// state file. Returns whether it finished one (then the VM must reboot to mount the moved
/// partitions); an undone one runs again at this boot's shutdown.
pub fn recover_relocation(host: &Host, boot: &BootDiskConfig) -> Result<bool> {
    if !sizing::moves_partitions(boot) {
        return Ok(false);
    }
    let disk = BootDisk::find(host)?;
    let nodes = [STATE, OEM, ROOT_A]
        .into_iter()
        .map(|part| {
            Ok(Node {
                part,
                path: disk.partition(part)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let outcome = relocate::recover(&disk.dev, &nodes, &mut |m| println!("{m}"))?;
    Ok(matches!(outcome, Recovery::Completed(_)))
}

/// ROOT-A is about to be reclaimed, so the next boot must run from ROOT-B: copy A to B and
/// give KERN-B the top priority.
fn switch_root(host: &Host, disk: &BootDisk) -> Result<()> {
    let root = disk.root_partition(host)?;
    match root {
        ROOT_B => {
            println!("The root file system is on ROOT-B (partition {ROOT_B}); not switching");
            return Ok(());
        }
        ROOT_A => {}
        other => bail!("the root file system is on partition {other}, neither ROOT-A ({ROOT_A}) nor ROOT-B ({ROOT_B})"),
    }
    let table = table::read(&disk.dev)?;
    let (a, b) = (table.range(ROOT_A)?, table.range(ROOT_B)?);
    if b.sectors() < a.sectors() {
        bail!(
            "ROOT-B ({} sectors) is smaller than ROOT-A ({} sectors); cannot copy the root to it",
            b.sectors(),
            a.sectors()
        );
    }
    let (src, dst) = (disk.partition(ROOT_A)?, disk.partition(ROOT_B)?);
    println!(
        "Copying ROOT-A ({}) to ROOT-B ({})",
        src.display(),
        dst.display()
    );
    copy_device(&src, &dst)?;
    cmd::run(
        Command::new("cgpt")
            .args(["prioritize", "-P", "5", "-i", &KERN_B.to_string()])
            .arg(&disk.dev),
    )
    .with_context(|| {
        format!(
            "giving KERN-B the top boot priority on {}",
            disk.dev.display()
        )
    })?;
    // cgpt can report an error and still exit 0 (for example on a damaged backup GPT).
    let (pa, pb) = (priority(disk, KERN_A)?, priority(disk, KERN_B)?);
    if pb <= pa {
        bail!("cgpt prioritize left KERN-B at priority {pb} and KERN-A at {pa}; the next boot would not use ROOT-B");
    }
    println!("KERN-B has boot priority {pb} (KERN-A {pa}); the next boot runs from ROOT-B");
    Ok(())
}

fn priority(disk: &BootDisk, part: u32) -> Result<u32> {
    let out = cmd::run_stdout(
        Command::new("cgpt")
            .args(["show", "-i", &part.to_string(), "-P"])
            .arg(&disk.dev),
    )
    .with_context(|| format!("reading the boot priority of partition {part}"))?;
    out.trim().parse().with_context(|| {
        format!(
            "reading the boot priority of partition {part} ({:?})",
            out.trim()
        )
    })
}

/// How much [`copy_device`] reads at a time, and the stretch it checks for zeroes.
const COPY_CHUNK: usize = 1 << 20;
/// The alignment `O_DIRECT` needs of buffers, offsets and lengths.
const DIRECT_ALIGN: usize = 4096;

/// A byte-for-byte copy of one partition onto another, flushed to the disk. All-zero
/// stretches become write-zeroes requests (`fallocate` `ZERO_RANGE`), which QEMU and GCE
/// disks serve without moving the data (the kernel writes zero pages for a device that
/// cannot): a COS root file system leaves much of its partition empty.
///
/// Both sides bypass the page cache (`O_DIRECT`) when the size allows it: under emulation
/// the guest's copies through the cache cost as much as the disk.
fn copy_device(src: &Path, dst: &Path) -> Result<()> {
    let size = (&File::open(src).with_context(|| format!("opening {}", src.display()))?)
        .seek(SeekFrom::End(0))
        .with_context(|| format!("finding the size of {}", src.display()))?;
    let direct = size % DIRECT_ALIGN as u64 == 0;
    let open = |path: &Path, write: bool, direct: bool| {
        let mut o = OpenOptions::new();
        o.read(!write).write(write);
        if direct {
            o.custom_flags(OFlags::DIRECT.bits() as i32);
        }
        o.open(path)
    };
    let (input, output) = match (open(src, false, direct), open(dst, true, direct)) {
        (Ok(i), Ok(o)) => (i, o),
        // A file system without O_DIRECT (tmpfs) says EINVAL: go through the cache.
        _ => (
            open(src, false, false).with_context(|| format!("opening {}", src.display()))?,
            open(dst, true, false).with_context(|| format!("opening {}", dst.display()))?,
        ),
    };
    let mut storage = vec![0u8; COPY_CHUNK + DIRECT_ALIGN];
    let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut storage[start..start + COPY_CHUNK];
    let (mut off, mut zeroed) = (0u64, 0u64);
    let mut zero_range = true;
    while off < size {
        let n = (size - off).min(COPY_CHUNK as u64);
        let chunk = &mut buf[..n as usize];
        input
            .read_exact_at(chunk, off)
            .with_context(|| format!("reading {n} bytes at {off} of {}", src.display()))?;
        if zero_range && chunk.iter().all(|&b| b == 0) {
            match rustix::fs::fallocate(
                &output,
                FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                off,
                n,
            ) {
                Ok(()) => {
                    zeroed += n;
                    off += n;
                    continue;
                }
                // Not on this device (or file system): write the zeroes.
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => zero_range = false,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("zeroing {n} bytes at {off} of {}", dst.display())
                    })
                }
            }
        }
        output
            .write_all_at(chunk, off)
            .with_context(|| format!("writing {n} bytes at {off} of {}", dst.display()))?;
        off += n;
    }
    output
        .sync_all()
        .with_context(|| format!("syncing {}", dst.display()))?;
    println!("Copied {size} bytes ({zeroed} of them zeroes, written as such)");
    Ok(())
}

/// Waits for the host to grow the disk; the message is the host's cue to do it.
fn wait_for_disk_resize(disk: &BootDisk, timeout: Duration, interval: Duration) -> Result<()> {
    let file = disk.size_file();
    let read = || fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()));
    let start_size = read()?;
    println!("{RESIZE_WAIT_LINE}");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let size = read()?;
        if size != start_size {
            println!(
                "Boot disk size has changed: start {}, end {} sectors",
                start_size.trim(),
                size.trim()
            );
            return Ok(());
        }
        thread::sleep(interval);
    }
    bail!(
        "timed out waiting for disk resize: {} stayed {} sectors",
        disk.dev.display(),
        start_size.trim()
    )
}

/// After OEM moved behind ROOT-A, grows its file system (to OEMFSSize4K blocks when sealing,
/// so the hash tree fits after it; otherwise to the whole partition).
fn resize_oem_fs(host: &Host, disk: &BootDisk, boot: &BootDiskConfig) -> Result<()> {
    let t = table::read(&disk.dev)?;
    let oem = t.range(OEM)?;
    if oem.first < t.range(ROOT_A)?.last {
        println!("OEM was not moved; its file system keeps its size");
        return Ok(());
    }
    let dev = disk.partition(OEM)?;
    let (blocks, block_size) = ext4::size(&dev)?;
    let want = match boot.oem_fs_size_4k {
        0 => oem.sectors() * t.sector_size() / block_size,
        n => n * 4096 / block_size,
    };
    if blocks == want {
        println!("The OEM file system already has {blocks} blocks");
        return Ok(());
    }
    println!("Resizing the OEM file system from {blocks} to {want} blocks of {block_size} bytes");
    let unit = "usr-share-oem.mount";
    let was_active = host.stop_if_active(unit)?;
    ext4::e2fsck(&dev)?;
    let mut resize = Command::new("resize2fs");
    resize.arg(&dev);
    if boot.oem_fs_size_4k != 0 {
        // In KiB: a bare number counts file system blocks, which need not be 4 KiB.
        resize.arg(format!("{}K", boot.oem_fs_size_4k * 4));
    }
    cmd::run(&mut resize)
        .with_context(|| format!("resizing the file system on {}", dev.display()))?;
    if was_active {
        host.systemctl(&["start", unit])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_device_copies_data_and_zeroes_over_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        // Data, a zero stretch, data again, and a short tail with zeroes.
        let mut data = vec![0u8; 5 * COPY_CHUNK + 1000];
        for (i, b) in data[..COPY_CHUNK + 7].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        data[4 * COPY_CHUNK + 3] = 9;
        // Through the page cache (a size O_DIRECT cannot take), then direct.
        for len in [data.len(), 5 * COPY_CHUNK + 8192] {
            data.resize(len, 0);
            fs::write(&src, &data).unwrap();
            fs::write(&dst, vec![0xffu8; data.len()]).unwrap();
            copy_device(&src, &dst).unwrap();
            assert!(
                fs::read(&dst).unwrap() == data,
                "the copy of {len} bytes differs"
            );
        }
    }
    use crate::disk::bootdisk::tests::fake_sysfs;
    use crate::host::tests::fake_host;

    #[test]
    fn disk_resize_is_seen_or_times_out() {
        let d = tempfile::tempdir().unwrap();
        fake_sysfs(d.path(), "vda", &[(1, "STATE")], 1);
        let disk = BootDisk::find(&fake_host(d.path())).unwrap();
        let e = wait_for_disk_resize(&disk, Duration::from_millis(50), Duration::from_millis(10))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("timed out waiting for disk resize"), "{e}");
        let file = disk.size_file();
        let grow = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            fs::write(file, "25165824\n").unwrap();
        });
        wait_for_disk_resize(&disk, Duration::from_secs(10), Duration::from_millis(10)).unwrap();
        grow.join().unwrap();
    }

    #[test]
    fn copies_a_partition_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&a, &data).unwrap();
        fs::write(&b, vec![0xffu8; 10_000_000]).unwrap();
        copy_device(&a, &b).unwrap();
        let out = fs::read(&b).unwrap();
        assert_eq!(&out[..data.len()], &data[..]);
        assert!(
            out[data.len()..].iter().all(|&x| x == 0xff),
            "the rest of ROOT-B is untouched"
        );
    }
}
