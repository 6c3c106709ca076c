//! The local state folder, `$HOME/<-local-state-workdir>`, with the original's layout:
//! `user_build_context.tar` and `config/{source_image,build,provisioner}`.
//!
//! The folder is only ever one this tool made: the workdir is a relative path under
//! `$HOME` without `..`, a folder made here carries a marker file, and removal deletes
//! only the files this tool writes, in a folder that is marked (or holds nothing but the
//! original's whole state, each file parsing as the original wrote it). A workdir that is
//! a symlink is resolved once, and the folder it names is held to the same rules. Every
//! subcommand holds a lock on the folder while it runs, so two commands never interleave
//! on one build; a folder it refuses gets no lock file.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::archive;
use cos_customizer_common::config::{
    parse_json, BuildConfig, ProvisionerConfig, SourceImage, Step,
};
use cos_customizer_common::fsutil::write_atomic;
use cos_customizer_common::protocol::BUILD_CONTEXT_TAR;

/// The original's default `-local-state-workdir`.
pub const DEFAULT_WORKDIR: &str = ".cos-customizer-workdir";
/// Marks a folder this tool made, so that it never removes anything else.
const MARKER: &str = ".cos-customizer-state";
/// The lock file each subcommand holds (with `flock`) while it runs.
const LOCK: &str = ".lock";
/// The config files, as the original names them.
const CONFIGS: [&str; 3] = ["source_image", "build", "provisioner"];
/// The prefix of the temporary files of atomic writes, removed with the folder.
const TMP_PREFIX: &str = ".tmp-";

/// Everything the steps have recorded so far.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildState {
    /// The source image (`config/source_image`).
    pub source: SourceImage,
    /// The build VM settings (`config/build`).
    pub build: BuildConfig,
    /// The provisioner config and its steps (`config/provisioner`).
    pub prov: ProvisionerConfig,
}

impl BuildState {
    /// Appends a step and returns its number, counted from 0 as in every message.
    pub fn add_step(&mut self, step: Step) -> usize {
        self.prov.steps.push(step);
        self.prov.steps.len() - 1
    }
}

/// The state folder one build's steps share.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Holds a state folder's lock; dropping it lets the next command in.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    /// `$HOME/<workdir>`; `workdir` must be a relative path without `..`, so the state
    /// folder is always a folder of its own under `home`.
    pub fn new(home: &Path, workdir: &str) -> Result<Self> {
        let rel = Path::new(workdir);
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if workdir.is_empty() || !plain {
            bail!(
                "-local-state-workdir {workdir:?} must name a folder under $HOME by a relative path without '.' or '..', e.g. -local-state-workdir={DEFAULT_WORKDIR}"
            );
        }
        Ok(StateDir {
            root: resolve(&home.join(rel))?,
        })
    }

    /// The folder from `$HOME` and the `-local-state-workdir` flag.
    pub fn from_env(workdir: &str) -> Result<Self> {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
            "HOME is not set: set it, since the build state lives in $HOME/<-local-state-workdir>",
        )?;
        Self::new(Path::new(&home), workdir)
    }

    /// Takes the folder's lock for `command` (named in the message another command gets
    /// meanwhile). `create` makes the folder first (marked as this tool's); otherwise a
    /// missing folder means no build was started.
    pub fn lock(&self, command: &str, create: bool) -> Result<StateLock> {
        if create {
            self.create()?;
        } else if !self.root.is_dir() || self.is_empty()? {
            bail!(
                "no build in progress in {}: run start-image-build first (with the same -local-state-workdir)",
                self.root.display()
            );
        } else if !self.is_ours()? {
            bail!(
                "{} was not made by cos-customizer: give the -local-state-workdir that start-image-build was given (the tool only ever writes into, and removes, folders it made)",
                self.root.display()
            );
        }
        let path = self.root.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "the build in {} is in use by {}: wait for it to end, or use another -local-state-workdir",
                    self.root.display(),
                    Some(holder.trim()).filter(|h| !h.is_empty()).unwrap_or("another cos-customizer command")
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        // Who holds it, for the message a second command gets.
        let holder = format!("`cos-customizer {command}` (pid {})\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(StateLock { _file: file })
    }

    /// Makes the folder, or adopts an empty one; refuses a folder this tool did not make.
    fn create(&self) -> Result<()> {
        if self.root.exists() && !self.is_ours()? {
            bail!(
                "{} exists and was not made by cos-customizer: choose another -local-state-workdir (the tool only ever writes into, and removes, folders it made)",
                self.root.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o774)
            .create(self.root.join("config"))
            .with_context(|| format!("creating state folder {}", self.root.display()))?;
        let marker = self.root.join(MARKER);
        if !marker.exists() {
            std::fs::write(
                &marker,
                "A cos-customizer state folder; finish-image-build removes it.\n",
            )
            .with_context(|| format!("writing {}", marker.display()))?;
        }
        Ok(())
    }

    /// Whether the folder is one this tool may write into and remove: marked, empty, or
    /// holding the original's whole state and nothing else (state written by the
    /// original: the context archive and the three configs, each parsing as the original
    /// writes it). A user's folder that merely looks alike, say one holding only
    /// `config/build`, is not.
    fn is_ours(&self) -> Result<bool> {
        if !self.root.is_dir() {
            return Ok(false);
        }
        if self.root.join(MARKER).is_file() || self.is_empty()? {
            return Ok(true);
        }
        let mut top = names(&self.root)?;
        top.retain(|n| n != LOCK);
        top.sort();
        if top != ["config", BUILD_CONTEXT_TAR] || !self.context_archive().is_file() {
            return Ok(false);
        }
        let config = self.root.join("config");
        let mut configs = names(&config)?;
        configs.sort();
        let mut expected = CONFIGS.to_vec();
        expected.sort();
        if configs != expected {
            return Ok(false);
        }
        let parses = |name: &str, check: fn(&Path, &[u8]) -> bool| {
            let path = config.join(name);
            path.is_file() && std::fs::read(&path).is_ok_and(|d| check(&path, &d))
        };
        Ok(parses("source_image", |p, d| {
            parse_json::<SourceImage>(p, d).is_ok()
        }) && parses("build", |p, d| parse_json::<BuildConfig>(p, d).is_ok())
            && parses("provisioner", |p, d| {
                parse_json::<ProvisionerConfig>(p, d).is_ok()
            }))
    }

    /// Whether the folder holds nothing at all.
    fn is_empty(&self) -> Result<bool> {
        Ok(names(&self.root)?.is_empty())
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the serial logs of failed builds are kept: `$HOME/<workdir>-logs`, beside
    /// the state folder, since the state folder goes when a build has run.
    pub fn log_dir(&self) -> PathBuf {
        let mut name = self.root.file_name().unwrap_or_default().to_os_string();
        name.push("-logs");
        self.root.with_file_name(name)
    }

    /// The archived build context, `user_build_context.tar`; it exists once a build has started.
    pub fn context_archive(&self) -> PathBuf {
        self.root.join(BUILD_CONTEXT_TAR)
    }

    fn config_file(&self, name: &str) -> PathBuf {
        self.root.join("config").join(name)
    }

    /// Records a new build: archives the build context and writes the three configs.
    /// Needs the lock taken with `create`; on failure nothing of the new build is left.
    pub fn start(&self, context: &Path, source: &SourceImage, build: &BuildConfig) -> Result<()> {
        if self.context_archive().exists() {
            bail!(
                "a build is already in progress in {}: run finish-image-build first, or remove that folder to start over",
                self.root.display()
            );
        }
        let written = archive::create(context, &self.context_archive(), &self.root)
            .and_then(|()| self.save("source_image", source))
            .and_then(|()| self.save("build", build))
            .and_then(|()| self.save("provisioner", &ProvisionerConfig::default()));
        if written.is_err() {
            let _ = self.remove();
        }
        written
    }

    /// Reads the recorded build; fails clearly when no build was started.
    pub fn load(&self) -> Result<BuildState> {
        if !self.context_archive().exists() {
            bail!(
                "no build in progress in {}: run start-image-build first (with the same -local-state-workdir)",
                self.root.display()
            );
        }
        Ok(BuildState {
            source: self.read("source_image")?,
            build: self.read("build")?,
            prov: self.read("provisioner")?,
        })
    }

    fn read<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.config_file(name);
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "reading {}; the build state is incomplete: remove {} and run start-image-build again",
                path.display(),
                self.root.display()
            )
        })?;
        parse_json(&path, &data)
    }

    fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.config_file(name);
        let data = serde_json::to_vec(value).context("encoding build state")?;
        write_atomic(&path, &data).with_context(|| format!("saving {}", path.display()))
    }

    /// Writes `config/build`.
    pub fn save_build(&self, build: &BuildConfig) -> Result<()> {
        self.save("build", build)
    }

    /// Writes `config/provisioner`.
    pub fn save_provisioner(&self, prov: &ProvisionerConfig) -> Result<()> {
        self.save("provisioner", prov)
    }

    /// Appends `step` under the state lock (`command` names the subcommand in the lock);
    /// `reclaim` marks ROOT-A's space for reclaiming, as both `seal-oem` and
    /// `disable-auto-update` do upstream. Returns the step's number.
    pub fn append_step(&self, command: &str, step: Step, reclaim: bool) -> Result<usize> {
        let _lock = self.lock(command, false)?;
        let mut s = self.load()?;
        if reclaim {
            s.prov.boot_disk.reclaim_sda3 = true;
        }
        let n = s.add_step(step);
        self.save_provisioner(&s.prov)?;
        Ok(n)
    }

    /// Removes the build state (the original does this at the end of every finish): the
    /// files this tool writes, then the folder if nothing else is in it. A folder this
    /// tool did not make is left alone.
    pub fn remove(&self) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        if !self.is_ours()? {
            bail!(
                "not removing {}: it was not made by cos-customizer",
                self.root.display()
            );
        }
        let config = self.root.join("config");
        let mut files: Vec<PathBuf> = CONFIGS.iter().map(|n| config.join(n)).collect();
        for dir in [&self.root, &config] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                files.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
                        .map(|e| e.path()),
                );
            }
        }
        files.extend([BUILD_CONTEXT_TAR, MARKER, LOCK].map(|n| self.root.join(n)));
        for f in &files {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", f.display()))
                }
                _ => {}
            }
        }
        for dir in [&config, &self.root] {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => eprintln!(
                    "Kept {}: it holds files cos-customizer did not write",
                    dir.display()
                ),
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", dir.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The names in a folder.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    Ok(v)
}

/// The folder a workdir names, symlinks resolved, so that every later check, write and
/// removal acts on the folder itself (removing a symlink as a folder fails half-way, after
/// the state is gone). A path that does not exist yet is kept as given; a symlink to
/// nothing is refused, since creating through it would put the state where the link points.
fn resolve(root: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A symlinked folder above the workdir: resolve the part that exists.
            match root.parent().zip(root.file_name()) {
                Some((parent, name)) if parent.exists() => Ok(std::fs::canonicalize(parent)
                    .with_context(|| format!("resolving {}", parent.display()))?
                    .join(name)),
                Some((parent, name)) => Ok(resolve(parent)?.join(name)),
                None => Ok(root.to_path_buf()),
            }
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", root.display())),
        Ok(_) => match std::fs::canonicalize(root) {
            Ok(real) if real.is_dir() => Ok(real),
            Ok(real) => bail!(
                "-local-state-workdir {} is {}, which is not a folder: choose another -local-state-workdir",
                root.display(),
                real.display()
            ),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "-local-state-workdir {} is a symlink to nothing: remove it or choose another -local-state-workdir",
                    root.display()
                )
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_common::config::RunScriptArgs;

    #[test]
    fn start_load_save_round_trip() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("a.sh"), "true").unwrap();
        let dir = StateDir::new(home.path(), DEFAULT_WORKDIR).unwrap();
        let _lock = dir.lock("start-image-build", true).unwrap();
        let source = SourceImage {
            name: "cos-1".into(),
            project: "cos-cloud".into(),
            ..Default::default()
        };
        let build = BuildConfig {
            gcs_bucket: "b".into(),
            gcs_dir: "d".into(),
            ..Default::default()
        };
        dir.start(ctx.path(), &source, &build).unwrap();
        assert_eq!(
            std::fs::read_to_string(
                home.path()
                    .join(".cos-customizer-workdir/config/source_image")
            )
            .unwrap(),
            r#"{"name":"cos-1","Project":"cos-cloud"}"#
        );
        let mut state = dir.load().unwrap();
        assert_eq!(state.source, source);
        let n = state.add_step(Step::RunScript(RunScriptArgs {
            build_context: "user".into(),
            path: "a.sh".into(),
            env: String::new(),
        }));
        assert_eq!(n, 0);
        dir.save_provisioner(&state.prov).unwrap();
        assert_eq!(dir.load().unwrap().prov.steps.len(), 1);
        let e = dir
            .start(ctx.path(), &source, &build)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already in progress"), "{e}");
        dir.remove().unwrap();
        assert!(!dir.root().exists());
        dir.remove().unwrap();
    }

    #[test]
    fn load_without_start_says_what_to_do() {
        let home = tempfile::tempdir().unwrap();
        let e = StateDir::new(home.path(), "w")
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("run start-image-build first"), "{e}");
    }

    #[test]
    fn corrupt_state_is_reported() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let dir = StateDir::new(home.path(), "w").unwrap();
        let _lock = dir.lock("start-image-build", true).unwrap();
        dir.start(ctx.path(), &SourceImage::default(), &BuildConfig::default())
            .unwrap();
        std::fs::write(home.path().join("w/config/build"), "{\"GCSBucket\":").unwrap();
        let e = format!("{:#}", dir.load().unwrap_err());
        assert!(e.contains("w/config/build") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn workdir_must_stay_under_home() {
        let home = Path::new("/home/u");
        for bad in ["", ".", "..", "../x", "a/../../b", "/etc", "./"] {
            let e = StateDir::new(home, bad).unwrap_err().to_string();
            assert!(e.contains("-local-state-workdir"), "{bad:?}: {e}");
        }
        let d = StateDir::new(home, "builds/one").unwrap();
        assert_eq!(d.root(), Path::new("/home/u/builds/one"));
    }

    #[test]
    fn a_foreign_folder_is_never_used_or_removed() {
        let home = tempfile::tempdir().unwrap();
        let project = home.path().join("project");
        std::fs::create_dir_all(project.join("config")).unwrap();
        std::fs::write(project.join("config/build"), "mine").unwrap();
        std::fs::write(project.join("notes.txt"), "mine").unwrap();
        let dir = StateDir::new(home.path(), "project").unwrap();
        let e = dir.lock("start-image-build", true).unwrap_err().to_string();
        assert!(e.contains("not made by cos-customizer"), "{e}");
        assert!(dir.remove().is_err());
        assert_eq!(
            std::fs::read(project.join("config/build")).unwrap(),
            b"mine"
        );
        assert!(project.join("notes.txt").exists());
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v = names(dir).unwrap();
        v.sort();
        v
    }

    #[test]
    fn a_folder_that_only_looks_like_the_originals_state_is_refused_untouched() {
        let home = tempfile::tempdir().unwrap();
        let project = home.path().join("project");
        std::fs::create_dir_all(project.join("config")).unwrap();
        // Valid JSON of the right shape, but not the original's whole state.
        std::fs::write(project.join("config/build"), "{}").unwrap();
        let dir = StateDir::new(home.path(), "project").unwrap();
        for create in [true, false] {
            let e = dir
                .lock("start-image-build", create)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not made by cos-customizer"), "{e}");
        }
        assert!(dir.remove().is_err());
        assert_eq!(entries(&project), ["config"]);
        assert_eq!(entries(&project.join("config")), ["build"]);
        assert_eq!(std::fs::read(project.join("config/build")).unwrap(), b"{}");
        // The original's layout whose files do not parse as its state is not ours either.
        std::fs::write(project.join("user_build_context.tar"), "").unwrap();
        std::fs::write(project.join("config/source_image"), "{}").unwrap();
        std::fs::write(project.join("config/provisioner"), "my notes").unwrap();
        let e = dir
            .lock("finish-image-build", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not made by cos-customizer"), "{e}");
        assert!(!project.join(LOCK).exists());
    }

    #[test]
    fn an_empty_folder_is_adopted_by_start_only() {
        let home = tempfile::tempdir().unwrap();
        let empty = home.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let dir = StateDir::new(home.path(), "empty").unwrap();
        let e = dir.lock("run-script", false).unwrap_err().to_string();
        assert!(e.contains("no build in progress"), "{e}");
        assert!(
            entries(&empty).is_empty(),
            "a refused folder got {:?}",
            entries(&empty)
        );
        let _lock = dir.lock("start-image-build", true).unwrap();
        assert!(empty.join(MARKER).is_file());
    }

    #[test]
    fn a_symlinked_workdir_is_resolved_and_held_to_the_same_rules() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("state");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, home.path().join("w")).unwrap();
        let dir = StateDir::new(home.path(), "w").unwrap();
        assert_eq!(dir.root(), std::fs::canonicalize(&target).unwrap());
        let ctx = tempfile::tempdir().unwrap();
        let lock = dir.lock("start-image-build", true).unwrap();
        dir.start(ctx.path(), &SourceImage::default(), &BuildConfig::default())
            .unwrap();
        drop(lock);
        let again = StateDir::new(home.path(), "w").unwrap();
        let _lock = again.lock("finish-image-build", false).unwrap();
        again.load().unwrap();
        again.remove().unwrap();
        assert!(!target.exists());
        // The user's link is theirs: it stays, dangling, and is then refused.
        assert!(home.path().join("w").symlink_metadata().is_ok());
        let e = format!("{:#}", StateDir::new(home.path(), "w").unwrap_err());
        assert!(e.contains("symlink to nothing"), "{e}");

        // A link to a user's folder is that folder: refused, untouched.
        let theirs = elsewhere.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("notes"), "mine").unwrap();
        std::os::unix::fs::symlink(&theirs, home.path().join("t")).unwrap();
        let dir = StateDir::new(home.path(), "t").unwrap();
        assert!(dir.lock("start-image-build", true).is_err());
        assert_eq!(entries(&theirs), ["notes"]);

        // A link to a file is no folder.
        std::fs::write(elsewhere.path().join("f"), "").unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("f"), home.path().join("f")).unwrap();
        let e = StateDir::new(home.path(), "f").unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
    }

    #[test]
    fn removal_keeps_files_the_tool_did_not_write() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let dir = StateDir::new(home.path(), "w").unwrap();
        let lock = dir.lock("start-image-build", true).unwrap();
        dir.start(ctx.path(), &SourceImage::default(), &BuildConfig::default())
            .unwrap();
        std::fs::write(home.path().join("w/user-file"), "keep").unwrap();
        dir.remove().unwrap();
        drop(lock);
        let left: Vec<_> = std::fs::read_dir(dir.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["user-file"]);
    }

    #[test]
    fn state_written_by_the_original_is_ours() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join("w");
        std::fs::create_dir_all(root.join("config")).unwrap();
        for f in ["config/source_image", "config/build", "config/provisioner"] {
            std::fs::write(root.join(f), "{}").unwrap();
        }
        std::fs::write(root.join("user_build_context.tar"), "").unwrap();
        let dir = StateDir::new(home.path(), "w").unwrap();
        let _lock = dir.lock("finish-image-build", false).unwrap();
        dir.remove().unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn a_second_command_is_refused_while_one_holds_the_lock() {
        let home = tempfile::tempdir().unwrap();
        let dir = StateDir::new(home.path(), "w").unwrap();
        let lock = dir.lock("finish-image-build", true).unwrap();
        let e = dir.lock("run-script", false).unwrap_err().to_string();
        assert!(
            e.contains("in use by `cos-customizer finish-image-build` (pid"),
            "{e}"
        );
        drop(lock);
        dir.lock("run-script", false).unwrap();
        let other = StateDir::new(home.path(), "other").unwrap();
        let e = other.lock("run-script", false).unwrap_err().to_string();
        assert!(e.contains("run start-image-build first"), "{e}");
    }
}
