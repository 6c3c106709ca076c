//! The machine the provisioner changes: a root folder and the system tools it calls.
//!
//! Everything goes through here so the tests can aim a whole run at a temporary root with
//! `systemctl`, `mount` and `umount` replaced by `/bin/true` (the original's `Deps`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use cos_customizer_common::cmd;

/// The machine: its root folder and the programs that change its services and mounts.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/` in the VM; a temporary folder in tests.
    pub root: PathBuf,
    /// The `systemctl` program.
    pub systemctl: PathBuf,
    /// The `mount` program.
    pub mount: PathBuf,
    /// The `umount` program.
    pub umount: PathBuf,
}

impl Host {
    /// The real machine.
    pub fn system() -> Self {
        Host {
            root: PathBuf::from("/"),
            systemctl: PathBuf::from("systemctl"),
            mount: PathBuf::from("mount"),
            umount: PathBuf::from("umount"),
        }
    }

    /// An absolute system path (`/var/log`) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Stops a unit if `systemctl is-active` says it runs (stopping an absent unit fails).
    /// Returns whether it was running.
    pub fn stop_if_active(&self, unit: &str) -> Result<bool> {
        Ok(!self.stop_active(&[unit])?.is_empty())
    }

    /// Stops those of `units` that `systemctl is-active` says run, in one `systemctl stop`
    /// (systemd orders the jobs by the units' dependencies); each `systemctl` call costs
    /// about half a second under emulation. Returns the units it stopped.
    pub fn stop_active<'a>(&self, units: &[&'a str]) -> Result<Vec<&'a str>> {
        // One line per unit, in order; the exit status only says whether all are active.
        let out = Command::new(&self.systemctl)
            .arg("is-active")
            .args(units)
            .output()
            .with_context(|| format!("checking whether {} are active", units.join(", ")))?;
        let states = String::from_utf8_lossy(&out.stdout);
        let active: Vec<&str> = units
            .iter()
            .zip(states.lines())
            .filter(|(_, state)| state.trim() == "active")
            .map(|(unit, _)| *unit)
            .collect();
        if !active.is_empty() {
            println!("Stopping {}", active.join(", "));
            cmd::run(Command::new(&self.systemctl).arg("stop").args(&active))
                .with_context(|| format!("stopping {}", active.join(", ")))?;
        }
        Ok(active)
    }

    /// Runs `systemctl` with the given arguments.
    pub fn systemctl(&self, args: &[&str]) -> Result<()> {
        cmd::run(Command::new(&self.systemctl).args(args))
            .with_context(|| format!("running systemctl {}", args.join(" ")))?;
        Ok(())
    }

    /// Runs `mount` with the given arguments.
    pub fn mount<I, S>(&self, args: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::run(Command::new(&self.mount).args(args))?;
        Ok(())
    }

    /// Runs `umount <target>`.
    pub fn umount(&self, target: &Path) -> Result<()> {
        cmd::run(Command::new(&self.umount).arg(target))?;
        Ok(())
    }

    /// The file system type mounted on top at `target`, from `/proc/self/mountinfo`.
    pub fn mounted_fs_type(&self, target: &Path) -> Result<Option<String>> {
        Ok(self.mount_at(target)?.map(|m| m.fs_type))
    }

    /// The topmost mount at `target`, from `/proc/self/mountinfo`.
    pub fn mount_at(&self, target: &Path) -> Result<Option<MountEntry>> {
        Ok(mount_at(&self.mountinfo()?, target))
    }

    /// Where the device `major:minor` is mounted, from `/proc/self/mountinfo`.
    pub fn mount_points_of(&self, device: &str) -> Result<Vec<PathBuf>> {
        Ok(mount_points_of(&self.mountinfo()?, device))
    }

    /// `/proc/self/mountinfo`; empty when there is none (a test root).
    fn mountinfo(&self) -> Result<String> {
        let file = self.path("/proc/self/mountinfo");
        match std::fs::read_to_string(&file) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }
}

/// Every mount point of the device `major:minor` in mountinfo text.
fn mount_points_of(mountinfo: &str, device: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let mount_point = fields.nth(1)?;
            (dev == device).then(|| PathBuf::from(unescape_octal(mount_point)))
        })
        .collect()
}

/// One line of mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub device: String,
    /// The file system type, e.g. `tmpfs`.
    pub fs_type: String,
}

/// The last (topmost) mount on `target` in mountinfo text.
fn mount_at(mountinfo: &str, target: &Path) -> Option<MountEntry> {
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = left.split(' ');
        let device = fields.nth(2)?;
        let mount_point = fields.nth(1)?;
        let fs_type = right.split(' ').next()?;
        (Path::new(&unescape_octal(mount_point)) == target).then(|| MountEntry {
            device: device.to_string(),
            fs_type: fs_type.to_string(),
        })
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A host rooted at `root` whose `systemctl` says the `active` units run and logs its
    /// calls to `root/systemctl.log`; mount and umount do nothing.
    pub fn recording_host(root: &Path, active: &[&str]) -> Host {
        use std::os::unix::fs::PermissionsExt;
        let script = root.join("systemctl");
        let log = root.join("systemctl.log");
        let cases: String = active
            .iter()
            .map(|u| format!("{u}) echo active;; "))
            .collect();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n\
                 if [ \"$1\" = is-active ]; then shift; for u; do\n\
                 case $u in {cases}*) echo inactive;; esac; done; exit 3; fi\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Host {
            systemctl: script,
            ..fake_host(root)
        }
    }

    #[test]
    fn stops_the_active_units_in_one_call() {
        let d = tempfile::tempdir().unwrap();
        let host = recording_host(d.path(), &["b.socket", "d.service"]);
        let stopped = host
            .stop_active(&["a.service", "b.socket", "c.socket", "d.service"])
            .unwrap();
        assert_eq!(stopped, ["b.socket", "d.service"]);
        assert!(!host.stop_if_active("a.service").unwrap());
        assert_eq!(
            std::fs::read_to_string(d.path().join("systemctl.log")).unwrap(),
            "is-active a.service b.socket c.socket d.service\nstop b.socket d.service\nis-active a.service\n"
        );
    }

    /// A host rooted at `root` whose systemctl, mount and umount do nothing.
    pub fn fake_host(root: &Path) -> Host {
        Host {
            root: root.into(),
            systemctl: "/bin/true".into(),
            mount: "/bin/true".into(),
            umount: "/bin/true".into(),
        }
    }

    fn fs_type_at(mountinfo: &str, target: &Path) -> Option<String> {
        mount_at(mountinfo, target).map(|m| m.fs_type)
    }

    const MOUNTINFO: &str = "\
22 1 254:0 / / ro,relatime shared:1 - ext2 /dev/dm-0 ro
30 22 0:25 / /root rw,relatime shared:9 - ext4 /dev/sda1 rw
31 30 0:26 / /root rw,nosuid shared:10 - tmpfs tmpfs rw
40 22 8:1 /var/lib/.cos-customizer/bin /var/lib/.cos-customizer/bin rw,nosuid,nodev - ext4 /dev/sda1 rw
41 22 0:27 / /mnt/my\\040disk rw - vfat /dev/sdb rw
";

    #[test]
    fn topmost_mount_wins() {
        assert_eq!(
            fs_type_at(MOUNTINFO, Path::new("/root")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type_at(MOUNTINFO, Path::new("/")).as_deref(),
            Some("ext2")
        );
        assert_eq!(fs_type_at(MOUNTINFO, Path::new("/var")), None);
    }

    #[test]
    fn device_of_a_mount() {
        assert_eq!(
            mount_at(MOUNTINFO, Path::new("/")).unwrap(),
            MountEntry {
                device: "254:0".into(),
                fs_type: "ext2".into()
            }
        );
    }

    #[test]
    fn mount_points_of_a_device() {
        assert_eq!(
            mount_points_of(MOUNTINFO, "8:1"),
            vec![PathBuf::from("/var/lib/.cos-customizer/bin")]
        );
        assert_eq!(
            mount_points_of(MOUNTINFO, "0:27"),
            vec![PathBuf::from("/mnt/my disk")]
        );
        assert!(mount_points_of(MOUNTINFO, "9:9").is_empty());
    }

    #[test]
    fn escaped_mount_points() {
        assert_eq!(
            fs_type_at(MOUNTINFO, Path::new("/mnt/my disk")).as_deref(),
            Some("vfat")
        );
        assert_eq!(unescape_octal(r"a\134b\011"), "a\\b\t");
    }

    #[test]
    fn missing_mountinfo_means_nothing_mounted() {
        let d = tempfile::tempdir().unwrap();
        let host = fake_host(d.path());
        assert_eq!(host.mounted_fs_type(Path::new("/root")).unwrap(), None);
        assert_eq!(host.path("/var/log"), d.path().join("var/log"));
    }
}
