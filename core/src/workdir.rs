//! Work folders that a later build can clean up when the build that made them could
//! not (SIGKILL, OOM killer, power cut): each holds an owner file naming the process
//! that made it, and [`sweep`] removes the folders whose process is gone.
//!
//! A pid alone would not do, because pids are reused: the owner file also records the
//! process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`), the
//! boot it ran in and its pid namespace. A folder made in another pid namespace (say,
//! another container sharing `/tmp`) is left alone: its pid means nothing here.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The file in each work folder that names the process owning it.
pub const OWNER_FILE: &str = ".owner";

/// Who made a work folder, as written in its [`OWNER_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pid: u32,
    /// Clock ticks after boot at which the process started.
    start: u64,
    /// `/proc/sys/kernel/random/boot_id`: a new boot means every old process is gone.
    boot: String,
    /// The `/proc/self/ns/pid` link, such as `pid:[4026531836]`.
    pid_ns: String,
}

impl Owner {
    /// This process.
    fn current() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
        let Some(start) = start_time(&stat) else {
            bail!("no start time in /proc/self/stat: {stat:?}");
        };
        let (boot, pid_ns) = machine_ids()?;
        Ok(Owner {
            pid: std::process::id(),
            start,
            boot,
            pid_ns,
        })
    }

    fn render(&self) -> String {
        format!(
            "pid={}\nstart={}\nboot={}\npid_ns={}\n",
            self.pid, self.start, self.boot, self.pid_ns
        )
    }

    /// `None` for anything but a whole owner file (one cut short by a crash included):
    /// such a folder is left alone.
    fn parse(text: &str) -> Option<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
        };
        Some(Owner {
            pid: field("pid")?.parse().ok()?,
            start: field("start")?.parse().ok()?,
            boot: field("boot")?.to_string(),
            pid_ns: field("pid_ns")?.to_string(),
        })
    }

    /// Whether the owner is certainly gone: an earlier boot, or no process with its pid
    /// and start time. `start_of(pid)` is that pid's start time now, if it runs.
    fn is_gone(&self, boot: &str, pid_ns: &str, start_of: impl Fn(u32) -> Option<u64>) -> bool {
        if self.boot != boot {
            return true;
        }
        if self.pid_ns != pid_ns {
            return false;
        }
        start_of(self.pid) != Some(self.start)
    }
}

/// This boot's id and this process's pid namespace.
fn machine_ids() -> Result<(String, String)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?;
    let ns = std::fs::read_link("/proc/self/ns/pid").context("reading /proc/self/ns/pid")?;
    Ok((boot.trim().to_string(), ns.to_string_lossy().into_owned()))
}

/// The start time in a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its last `)`: the state is field
/// 3, the start time field 22.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The start time of the running process `pid`, if there is one.
fn start_time_of(pid: u32) -> Option<u64> {
    start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Creates a folder named `prefix` plus random characters in `parent`, with an owner
/// file naming this process; it is removed when the returned value is dropped.
pub fn create_in(parent: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    let owner = Owner::current().context("describing this process for its work folder")?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .with_context(|| format!("creating a work folder in {}", parent.display()))?;
    let file = dir.path().join(OWNER_FILE);
    std::fs::write(&file, owner.render()).with_context(|| format!("writing {}", file.display()))?;
    Ok(dir)
}

/// A work folder [`sweep`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The folder.
    pub path: PathBuf,
    /// The pid of the process that made it, which is gone.
    pub pid: u32,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed the work folder {} of a build whose process (pid {}) is gone",
            self.path.display(),
            self.pid
        )
    }
}

/// Removes the folders in `parent` whose names start with `prefix` and whose owner file
/// names a process that is gone; returns them. Folders without an owner file, or
/// whose owner may still run, are left alone; so is anything that cannot be read or
/// removed (best effort: a later sweep tries again).
pub fn sweep(parent: &Path, prefix: &str) -> Vec<Removed> {
    let Ok((boot, pid_ns)) = machine_ids() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        // Not followed: a symlink is not a folder we made.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        let Some(owner) = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|t| Owner::parse(&t))
        else {
            continue;
        };
        if owner.is_gone(&boot, &pid_ns, start_time_of) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(Removed {
                path,
                pid: owner.pid,
            });
        }
    }
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32, start: u64) -> Owner {
        Owner {
            pid,
            start,
            boot: "b1".into(),
            pid_ns: "pid:[1]".into(),
        }
    }

    #[test]
    fn start_time_counts_fields_after_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 131967 3133440 391";
        assert_eq!(start_time(stat), Some(131967));
        assert_eq!(start_time("4242 (x) S 1 2"), None);
        assert!(start_time_of(std::process::id()).is_some());
    }

    #[test]
    fn owner_file_round_trips_and_partial_files_are_refused() {
        let o = owner(12, 345);
        assert_eq!(Owner::parse(&o.render()), Some(o.clone()));
        let text = o.render();
        assert_eq!(Owner::parse(&text[..text.len() - 12]), None);
        assert_eq!(Owner::parse("pid=x\nstart=1\nboot=b\npid_ns=n\n"), None);
        assert_eq!(Owner::parse(""), None);
    }

    #[test]
    fn gone_means_another_boot_or_no_process_with_that_start() {
        let o = owner(12, 345);
        let running = |pid| (pid == 12).then_some(345);
        assert!(!o.is_gone("b1", "pid:[1]", running));
        assert!(o.is_gone("b1", "pid:[1]", |_| None), "no such pid");
        assert!(o.is_gone("b1", "pid:[1]", |_| Some(999)), "pid reused");
        assert!(o.is_gone("b2", "pid:[1]", running), "rebooted since");
        assert!(
            !o.is_gone("b1", "pid:[2]", |_| None),
            "another pid namespace: cannot tell"
        );
    }

    #[test]
    fn sweep_removes_only_folders_of_gone_processes() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let mine = create_in(p, "w-").unwrap();
        let me =
            Owner::parse(&std::fs::read_to_string(mine.path().join(OWNER_FILE)).unwrap()).unwrap();
        assert_eq!(me.pid, std::process::id());

        let folder = |name: &str, owner: Option<&Owner>| {
            let d = p.join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("disk.qcow2"), "x").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o.render()).unwrap();
            }
            d
        };
        // A process that has ended and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = folder(
            "w-dead",
            Some(&Owner {
                pid: dead_pid,
                ..me.clone()
            }),
        );
        let reused = folder(
            "w-reused",
            Some(&Owner {
                start: me.start + 1,
                ..me.clone()
            }),
        );
        let old_boot = folder(
            "w-old-boot",
            Some(&Owner {
                boot: "another boot".into(),
                ..me.clone()
            }),
        );
        let other_ns = folder(
            "w-other-ns",
            Some(&Owner {
                pid: dead_pid,
                pid_ns: "pid:[0]".into(),
                ..me.clone()
            }),
        );
        let unowned = folder("w-unowned", None);
        let other_prefix = folder(
            "x-dead",
            Some(&Owner {
                pid: dead_pid,
                ..me.clone()
            }),
        );
        std::fs::write(p.join("w-file"), "not a folder").unwrap();

        let removed = sweep(p, "w-");
        let want = |path: &PathBuf, pid| Removed {
            path: path.clone(),
            pid,
        };
        assert_eq!(
            removed,
            [
                want(&dead, dead_pid),
                want(&old_boot, me.pid),
                want(&reused, me.pid)
            ]
        );
        assert_eq!(
            removed[0].to_string(),
            format!(
                "removed the work folder {} of a build whose process (pid {dead_pid}) is gone",
                dead.display()
            )
        );
        for kept in [mine.path(), &other_ns, &unowned, &other_prefix] {
            assert!(kept.exists(), "{kept:?}");
        }
        assert!(p.join("w-file").is_file());
        assert!(sweep(p, "w-").is_empty(), "nothing more to remove");
        assert!(sweep(&p.join("missing"), "w-").is_empty());
    }
}
