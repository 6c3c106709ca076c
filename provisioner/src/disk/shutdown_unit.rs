//! last-run.service: runs `provisioner handle-disk-layout` at shutdown, after STATE and OEM
//! are unmounted, because partitions in use cannot be moved.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use cos_customizer_common::config::BootDiskConfig;
use cos_customizer_common::fsutil;
use cos_customizer_common::protocol::{STATUS_PREFIX, STATUS_TTY_AARCH64, STATUS_TTY_X86_64};

use super::bootdisk::{OEM, STATE};
use crate::host::Host;

/// The unit's name.
pub const UNIT: &str = "last-run.service";
/// Serial port 3 of the guest this provisioner runs in, which is of its own architecture.
const STATUS_TTY: &str = if cfg!(target_arch = "aarch64") {
    STATUS_TTY_AARCH64
} else {
    STATUS_TTY_X86_64
};
/// A copy of this binary on /tmp, the one file system still mounted when the unit stops.
pub const BIN: &str = "/tmp/cos-customizer-provisioner";

/// The unit. `disk` is the real device path, e.g. `/dev/vda`.
pub fn unit_text(disk: &Path, boot: &BootDiskConfig) -> String {
    format!(
        r#"[Unit]
Description=Run after everything unmounted
DefaultDependencies=false
Conflicts=shutdown.target
Before=mnt-stateful_partition.mount usr-share-oem.mount
After=tmp.mount

[Service]
Type=oneshot
RemainAfterExit=true
ExecStart=/bin/true
ExecStop=/bin/bash -c '{BIN} handle-disk-layout {disk} {STATE} {OEM} "{oem}" "{reclaim}" 2>&1 | sed "s/^/{STATUS_PREFIX}/"'
TimeoutStopSec=600
StandardOutput=tty
StandardError=tty
TTYPath={STATUS_TTY}
"#,
        disk = disk.display(),
        oem = boot.oem_size.as_deref().unwrap_or(""),
        reclaim = boot.reclaim_sda3,
    )
}

/// Installs and starts the unit, and stops journald so STATE can be unmounted at shutdown.
pub fn install(host: &Host, disk_name: &str, boot: &BootDiskConfig) -> Result<()> {
    let tmp = host.path("/tmp");
    // /tmp is noexec on COS; the copy below must run from it.
    host.mount(["-o".as_ref(), "remount,exec".as_ref(), tmp.as_os_str()])
        .with_context(|| format!("remounting {} exec", tmp.display()))?;
    let bin = host.path(BIN);
    fs::copy("/proc/self/exe", &bin)
        .with_context(|| format!("copying this provisioner to {}", bin.display()))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", bin.display()))?;
    let unit = host.path("/etc/systemd/system").join(UNIT);
    let disk = Path::new("/dev").join(disk_name);
    fsutil::write_atomic(&unit, unit_text(&disk, boot).as_bytes())
        .with_context(|| format!("writing {}", unit.display()))?;
    fs::set_permissions(&unit, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", unit.display()))?;
    host.systemctl(&["daemon-reload"])?;
    host.systemctl(&["start", UNIT, "--no-block"])?;
    stop_journald(host)
}

/// journald keeps files open on STATE (/var/log/journal); stopped for good, it lets STATE
/// unmount at shutdown.
fn stop_journald(host: &Host) -> Result<()> {
    let dir = host.path("/etc/systemd/system/systemd-journald.service.d");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("override.conf");
    fsutil::write_atomic(&conf, b"[Service]\nRestart=no\n")
        .with_context(|| format!("writing {}", conf.display()))?;
    host.systemctl(&["daemon-reload"])?;
    for unit in [
        "systemd-journald.socket",
        "systemd-journald-dev-log.socket",
        "systemd-journald-audit.socket",
        "syslog.socket",
        "systemd-journald.service",
    ] {
        host.stop_if_active(unit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_handle_disk_layout_at_shutdown() {
        let boot = BootDiskConfig {
            oem_size: Some("99M".into()),
            oem_fs_size_4k: 12800,
            reclaim_sda3: true,
            wait_for_disk_resize: false,
        };
        let text = unit_text(Path::new("/dev/vda"), &boot);
        assert!(text.contains(
            "\nExecStop=/bin/bash -c '/tmp/cos-customizer-provisioner handle-disk-layout /dev/vda 1 8 \"99M\" \"true\" 2>&1 | sed \"s/^/BuildStatus: /\"'\n"
        ), "{text}");
        for line in [
            "DefaultDependencies=false",
            "Conflicts=shutdown.target",
            "Before=mnt-stateful_partition.mount usr-share-oem.mount",
            "After=tmp.mount",
            "RemainAfterExit=true",
            "TimeoutStopSec=600",
            "TTYPath=/dev/ttyS2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
        let plain = unit_text(Path::new("/dev/sda"), &BootDiskConfig::default());
        assert!(plain.contains("handle-disk-layout /dev/sda 1 8 \"\" \"false\""));
    }

    #[test]
    fn install_writes_the_unit_the_binary_and_the_journald_override() {
        let d = tempfile::tempdir().unwrap();
        let host = crate::host::tests::fake_host(d.path());
        fs::create_dir_all(d.path().join("tmp")).unwrap();
        fs::create_dir_all(d.path().join("etc/systemd/system")).unwrap();
        install(&host, "vda", &BootDiskConfig::default()).unwrap();
        let unit =
            fs::read_to_string(d.path().join("etc/systemd/system/last-run.service")).unwrap();
        assert!(unit.contains("handle-disk-layout /dev/vda 1 8"));
        let bin = d.path().join("tmp/cos-customizer-provisioner");
        assert_eq!(
            fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_to_string(
                d.path()
                    .join("etc/systemd/system/systemd-journald.service.d/override.conf")
            )
            .unwrap(),
            "[Service]\nRestart=no\n"
        );
    }
}
