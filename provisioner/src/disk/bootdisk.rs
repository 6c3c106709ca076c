//! The boot disk and its partitions, found through sysfs: the boot disk is the disk holding
//! the partition labelled STATE, and partition N is the child whose `partition` file says N.
//! Nothing assumes `/dev/sda` (QEMU gives `/dev/vda`, newer GCE machines `/dev/nvme0n1`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cos_customizer_common::cos_layout;

use crate::host::Host;

/// The GPT label of the stateful partition, which marks the boot disk.
pub const STATE_LABEL: &str = cos_layout::STATE.label;
// COS partition numbers (`common::cos_layout`, which the host's preflight checks too):
// stable across milestones, unlike their offsets.
/// The stateful partition (`/mnt/stateful_partition`).
pub const STATE: u32 = cos_layout::STATE.number;
/// The kernel of slot A.
pub const KERN_A: u32 = cos_layout::KERN_A.number;
/// The root file system of slot A.
pub const ROOT_A: u32 = cos_layout::ROOT_A.number;
/// The kernel of slot B.
pub const KERN_B: u32 = cos_layout::KERN_B.number;
/// The root file system of slot B.
pub const ROOT_B: u32 = cos_layout::ROOT_B.number;
/// The OEM partition (`/usr/share/oem`).
pub const OEM: u32 = cos_layout::OEM.number;

/// The disk the VM booted from.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// `/dev/<name>` (under the host's root).
    pub dev: PathBuf,
    /// `/sys/class/block/<name>`.
    sys: PathBuf,
    /// The host's `/dev`, where partition nodes are.
    host_dev: PathBuf,
}

/// `KEY=value` from a sysfs uevent file.
fn uevent_field<'a>(uevent: &'a str, key: &str) -> Option<&'a str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The kernel name of the disk a partition (given by its sysfs entry) belongs to.
fn parent_disk(part_sys: &Path) -> Result<String> {
    let real =
        fs::canonicalize(part_sys).with_context(|| format!("resolving {}", part_sys.display()))?;
    real.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("finding the disk of {}", real.display()))
}

/// The sysfs entry of the first partition (by kernel name) with GPT label `label`.
pub fn find_labelled(host: &Host, label: &str) -> Result<Option<PathBuf>> {
    let class = host.path("/sys/class/block");
    let mut names: Vec<_> = fs::read_dir(&class)
        .with_context(|| format!("listing {}", class.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| class.join(n)).find(|entry| {
        fs::read_to_string(entry.join("uevent")).is_ok_and(|uevent| {
            uevent_field(&uevent, "DEVTYPE") == Some("partition")
                && uevent_field(&uevent, "PARTNAME") == Some(label)
        })
    }))
}

/// The node in `dev_dir` (the host's `/dev`) of a block device's sysfs entry.
pub fn dev_node(dev_dir: &Path, sys: &Path) -> Result<PathBuf> {
    let uevent = read_trimmed(&sys.join("uevent"))?;
    let devname = uevent_field(&uevent, "DEVNAME")
        .with_context(|| format!("no DEVNAME in {}/uevent", sys.display()))?;
    Ok(dev_dir.join(devname))
}

impl BootDisk {
    /// The disk holding the partition labelled STATE.
    pub fn find(host: &Host) -> Result<BootDisk> {
        match find_labelled(host, STATE_LABEL)? {
            Some(entry) => BootDisk::named(host, &parent_disk(&entry)?),
            None => bail!(
                "no partition labelled {STATE_LABEL} found in {}; is this a COS disk?",
                host.path("/sys/class/block").display()
            ),
        }
    }

    fn named(host: &Host, name: &str) -> Result<BootDisk> {
        let sys = host.path("/sys/class/block").join(name);
        if !sys.join("size").exists() {
            bail!("{} is not a block device known to sysfs", sys.display());
        }
        Ok(BootDisk {
            name: name.to_string(),
            dev: host.path("/dev").join(name),
            sys,
            host_dev: host.path("/dev"),
        })
    }

    /// The sysfs entry of partition `number`.
    fn partition_sys(&self, number: u32) -> Result<PathBuf> {
        let entries =
            fs::read_dir(&self.sys).with_context(|| format!("listing {}", self.sys.display()))?;
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let Ok(n) = fs::read_to_string(p.join("partition")) else {
                continue;
            };
            if n.trim() == number.to_string() {
                return Ok(p);
            }
        }
        bail!("{} has no partition {number}", self.dev.display())
    }

    /// The device of partition `number`, e.g. `/dev/vda8` or `/dev/nvme0n1p8`.
    pub fn partition(&self, number: u32) -> Result<PathBuf> {
        dev_node(&self.host_dev, &self.partition_sys(number)?)
    }

    /// `major:minor` of partition `number`, as mountinfo names devices.
    pub fn partition_devnum(&self, number: u32) -> Result<String> {
        read_trimmed(&self.partition_sys(number)?.join("dev"))
    }

    /// The sysfs file with the disk's size in 512-byte sectors (whatever its sector size).
    pub fn size_file(&self) -> PathBuf {
        self.sys.join("size")
    }

    /// The partition number the root file system is read from: the partition under the
    /// device-mapper root (dm-verity) or the root's own device.
    pub fn root_partition(&self, host: &Host) -> Result<u32> {
        let mount = host
            .mount_at(Path::new("/"))?
            .context("no / in /proc/self/mountinfo")?;
        let dev = host.path("/sys/dev/block").join(&mount.device);
        let slaves = dev.join("slaves");
        let leaf = match fs::read_dir(&slaves) {
            Ok(entries) => {
                let mut names: Vec<_> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .collect();
                names.sort();
                match names.as_slice() {
                    [] => dev.clone(),
                    [one] => host.path("/sys/class/block").join(one),
                    many => bail!(
                        "the root device {} sits on several devices: {many:?}",
                        mount.device
                    ),
                }
            }
            Err(_) => dev.clone(),
        };
        let number = read_trimmed(&leaf.join("partition")).with_context(|| {
            format!(
                "the root file system ({}) is not on a partition",
                mount.device
            )
        })?;
        let disk = parent_disk(&leaf)?;
        if disk != self.name {
            bail!(
                "the root file system is on {disk}, not on the boot disk {}",
                self.name
            );
        }
        number
            .parse()
            .with_context(|| format!("reading the partition number of the root ({number:?})"))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::host::tests::fake_host;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: disk `disk` with the given (number, label) partitions, a dm-0 over
    /// partition `root`, and `/` mounted from dm-0.
    pub fn fake_sysfs(root: &Path, disk: &str, parts: &[(u32, &str)], root_part: u32) {
        let devices = root.join("sys/devices/pci0000:00/virtio1/block").join(disk);
        let class = root.join("sys/class/block");
        fs::create_dir_all(&class).unwrap();
        fs::create_dir_all(&devices).unwrap();
        fs::write(devices.join("size"), "20971520\n").unwrap();
        fs::write(
            devices.join("uevent"),
            format!("DEVNAME={disk}\nDEVTYPE=disk\n"),
        )
        .unwrap();
        symlink(&devices, class.join(disk)).unwrap();
        let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        for (n, label) in parts {
            let name = format!("{disk}{sep}{n}");
            let p = devices.join(&name);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            fs::write(p.join("size"), "8\n").unwrap();
            fs::write(p.join("dev"), format!("254:{n}\n")).unwrap();
            fs::write(
                p.join("uevent"),
                format!("MAJOR=254\nMINOR={n}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            )
            .unwrap();
            symlink(&p, class.join(&name)).unwrap();
        }
        let dm = root.join("sys/devices/virtual/block/dm-0");
        fs::create_dir_all(dm.join("slaves")).unwrap();
        fs::write(dm.join("size"), "8\n").unwrap();
        symlink(
            devices.join(format!("{disk}{sep}{root_part}")),
            dm.join("slaves").join(format!("{disk}{sep}{root_part}")),
        )
        .unwrap();
        symlink(&dm, class.join("dm-0")).unwrap();
        fs::create_dir_all(root.join("sys/dev/block")).unwrap();
        symlink(&dm, root.join("sys/dev/block/253:0")).unwrap();
        fs::create_dir_all(root.join("proc/self")).unwrap();
        fs::write(
            root.join("proc/self/mountinfo"),
            "22 1 253:0 / / ro,relatime shared:1 - ext4 /dev/dm-0 ro\n",
        )
        .unwrap();
    }

    const COS: &[(u32, &str)] = &[
        (1, "STATE"),
        (3, "ROOT-A"),
        (5, "ROOT-B"),
        (8, "OEM"),
        (12, "EFI-SYSTEM"),
    ];

    #[test]
    fn finds_the_disk_with_state_and_its_partitions() {
        let d = tempfile::tempdir().unwrap();
        fake_sysfs(d.path(), "vda", COS, 3);
        let h = fake_host(d.path());
        let disk = BootDisk::find(&h).unwrap();
        assert_eq!(disk.name, "vda");
        assert_eq!(disk.dev, d.path().join("dev/vda"));
        assert_eq!(disk.partition(8).unwrap(), d.path().join("dev/vda8"));
        assert_eq!(disk.partition(12).unwrap(), d.path().join("dev/vda12"));
        assert!(disk.partition(2).is_err());
        assert_eq!(disk.partition_devnum(8).unwrap(), "254:8");
        assert_eq!(disk.root_partition(&h).unwrap(), 3);
    }

    #[test]
    fn nvme_names_and_root_b() {
        let d = tempfile::tempdir().unwrap();
        fake_sysfs(d.path(), "nvme0n1", COS, 5);
        let h = fake_host(d.path());
        let disk = BootDisk::find(&h).unwrap();
        assert_eq!(disk.partition(3).unwrap(), d.path().join("dev/nvme0n1p3"));
        assert_eq!(disk.root_partition(&h).unwrap(), 5);
    }

    #[test]
    fn no_state_partition() {
        let d = tempfile::tempdir().unwrap();
        fake_sysfs(d.path(), "vda", &[(3, "ROOT-A")], 3);
        let e = BootDisk::find(&fake_host(d.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no partition labelled STATE"), "{e}");
    }
}
