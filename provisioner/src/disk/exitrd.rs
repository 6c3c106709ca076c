//! The exit ramdisk. systemd-shutdown, once it has stopped every service and unmounted
//! what it can, switches into `/run/initramfs` and runs `/run/initramfs/shutdown` (a copy
//! of this binary) as PID 1, with the old root at `/oldroot`. Only there can ROOT-A's space
//! be reclaimed in the same shutdown that leaves ROOT-A: the root is unmounted, and so are
//! STATE and OEM. The relocation therefore costs no reboot of its own.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use cos_customizer_common::fsutil;
use cos_customizer_common::protocol::{
    RELOCATION_END, RELOCATION_FAILED, RELOCATION_START, STATUS_PREFIX, STATUS_TTY_AARCH64,
    STATUS_TTY_X86_64,
};
use serde::{Deserialize, Serialize};

use super::bootdisk::BootDisk;
use super::relocate::{self, Change, Node};
use crate::host::Host;

/// Where systemd-shutdown looks for the exit ramdisk.
pub const DIR: &str = "/run/initramfs";
/// The program systemd-shutdown runs there, as `argv[0]`.
pub const PROGRAM: &str = "/shutdown";
/// The relocation to carry out, inside [`DIR`].
const PLAN: &str = "relocation.json";
/// Serial port 3 of the guest this provisioner runs in, which is of its own architecture.
const STATUS_TTY: &str = if cfg!(target_arch = "aarch64") {
    STATUS_TTY_AARCH64
} else {
    STATUS_TTY_X86_64
};

/// What the exit ramdisk does: the disk, its partitions' nodes and the changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Plan {
    disk: PathBuf,
    nodes: Vec<Node>,
    changes: Vec<Change>,
}

/// The plan for `changes` on `disk`.
fn plan(disk: &BootDisk, changes: &[Change]) -> Result<Plan> {
    let nodes = changes
        .iter()
        .map(|c| {
            Ok(Node {
                part: c.part,
                path: disk.partition(c.part)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Plan {
        disk: disk.dev.clone(),
        nodes,
        changes: changes.to_vec(),
    })
}

/// Prepares the exit ramdisk to carry out `changes` at the coming shutdown, and stops
/// journald so that STATE can be unmounted by then.
pub fn install(host: &Host, disk: &BootDisk, changes: &[Change]) -> Result<()> {
    // systemd-shutdown cannot run the program from a noexec /run.
    let run = host.path("/run");
    host.mount(["-o".as_ref(), "remount,exec".as_ref(), run.as_os_str()])
        .with_context(|| format!("remounting {} exec", run.display()))?;
    let dir = host.path(DIR);
    // switch_root moves /dev, /proc, /sys and /run onto these, and the old root to /oldroot.
    for sub in ["dev", "proc", "sys", "run", "oldroot"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let program = dir.join(PROGRAM.trim_start_matches('/'));
    let tmp = program.with_extension("new");
    fs::copy("/proc/self/exe", &tmp)
        .with_context(|| format!("copying this provisioner to {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    fs::rename(&tmp, &program)
        .with_context(|| format!("renaming {} to {}", tmp.display(), program.display()))?;
    let plan = serde_json::to_vec_pretty(&plan(disk, changes)?).context("encoding the plan")?;
    let plan_file = dir.join(PLAN);
    fsutil::write_atomic(&plan_file, &plan)
        .with_context(|| format!("writing {}", plan_file.display()))?;
    stop_journald(host)
}

/// journald keeps files open on STATE (/var/log/journal); stopped with its sockets (so
/// nothing activates it again; an explicit stop is not a failure that `Restart=` acts
/// on), it lets STATE unmount at shutdown.
fn stop_journald(host: &Host) -> Result<()> {
    host.stop_active(&[
        "systemd-journald.socket",
        "systemd-journald-dev-log.socket",
        "systemd-journald-audit.socket",
        "syslog.socket",
        "systemd-journald.service",
    ])?;
    Ok(())
}

/// Status lines to serial port 3 (as `BuildStatus:` lines, which the preloader logs) and
/// to the console.
struct StatusLog {
    tty: Option<File>,
}

impl StatusLog {
    fn open() -> StatusLog {
        let open = || OpenOptions::new().write(true).open(STATUS_TTY).ok();
        let mut tty = open();
        if tty.is_none() {
            // switch_root moved /dev along unless the folder was missing; mount our own.
            let _ = rustix::mount::mount(
                "devtmpfs",
                "/dev",
                "devtmpfs",
                rustix::mount::MountFlags::empty(),
                None,
            );
            tty = open();
        }
        StatusLog { tty }
    }

    fn say(&mut self, msg: &str) {
        for line in msg.lines() {
            if let Some(tty) = &mut self.tty {
                let _ = writeln!(tty, "{STATUS_PREFIX}{line}");
            }
            println!("{line}");
        }
    }
}

/// Runs as `/shutdown <verb> ...` in the exit ramdisk: relocates, then ends the shutdown
/// as asked. Never returns (PID 1 must not exit).
pub fn shutdown(args: &[String]) -> ! {
    let mut log = StatusLog::open();
    let verb = args.get(1).map(String::as_str).unwrap_or("reboot");
    log.say(&format!("{RELOCATION_START} (then {verb})"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        relocate_from(Path::new("/"), &mut |m| log.say(m))
    }));
    let mut log = StatusLog::open();
    match result {
        Ok(Ok(())) => log.say(RELOCATION_END),
        Ok(Err(e)) => log.say(&format!("{RELOCATION_FAILED}: {e:#}")),
        Err(_) => log.say(&format!("{RELOCATION_FAILED}: the relocation panicked")),
    }
    rustix::fs::sync();
    let cmd = match verb {
        "poweroff" => rustix::system::RebootCommand::PowerOff,
        "halt" => rustix::system::RebootCommand::Halt,
        _ => rustix::system::RebootCommand::Restart,
    };
    if let Err(e) = rustix::system::reboot(cmd) {
        log.say(&format!("{verb} failed: {e}"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Unmounts the old root and carries out the plan found in `root`.
fn relocate_from(root: &Path, log: relocate::Log) -> Result<()> {
    let oldroot = root.join("oldroot");
    if let Err(e) = rustix::mount::unmount(&oldroot, rustix::mount::UnmountFlags::DETACH) {
        log(&format!("Unmounting {}: {e}", oldroot.display()));
    }
    let file = root.join(PLAN);
    let data = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let plan: Plan =
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", file.display()))?;
    relocate::relocate(&plan.disk, &plan.nodes, &plan.changes, log)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::bootdisk::tests::fake_sysfs;
    use crate::disk::gpt_edit::Range;
    use crate::host::tests::recording_host;

    #[test]
    fn install_writes_the_program_and_the_plan_and_stops_journald() {
        let d = tempfile::tempdir().unwrap();
        fake_sysfs(d.path(), "sda", &[(1, "STATE"), (3, "ROOT-A")], 3);
        let host = recording_host(
            d.path(),
            &["systemd-journald.socket", "systemd-journald.service"],
        );
        fs::create_dir_all(d.path().join("etc/systemd/system")).unwrap();
        let disk = BootDisk::find(&host).unwrap();
        let changes = [Change {
            part: 1,
            from: Range {
                first: 100,
                last: 199,
            },
            to: Range {
                first: 50,
                last: 149,
            },
            moves_data: true,
        }];
        install(&host, &disk, &changes).unwrap();
        let program = d.path().join("run/initramfs/shutdown");
        assert_eq!(
            fs::metadata(&program).unwrap().permissions().mode() & 0o777,
            0o755
        );
        for sub in ["dev", "proc", "sys", "run", "oldroot"] {
            assert!(d.path().join("run/initramfs").join(sub).is_dir(), "{sub}");
        }
        let plan: Plan = serde_json::from_slice(
            &fs::read(d.path().join("run/initramfs/relocation.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(plan.changes, changes);
        assert_eq!(plan.nodes[0].part, 1);
        assert!(plan.nodes[0].path.ends_with("dev/sda1"), "{:?}", plan.nodes);
        let calls = fs::read_to_string(d.path().join("systemctl.log")).unwrap();
        assert!(
            calls.ends_with("\nstop systemd-journald.socket systemd-journald.service\n"),
            "{calls}"
        );
    }
}
