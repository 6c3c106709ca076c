//! The local state folder, `$HOME/<-local-state-workdir>`, with the original's layout:
//! `user_build_context.tar` and `config/{source_image,build,provisioner}`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

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

impl StateDir {
    /// `$HOME/<workdir>`; an absolute `workdir` is used as it is.
    pub fn new(home: &Path, workdir: &str) -> Self {
        StateDir {
            root: home.join(workdir),
        }
    }

    /// The folder from `$HOME` and the `-local-state-workdir` flag.
    pub fn from_env(workdir: &str) -> Result<Self> {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
            "HOME is not set: set it, since the build state lives in $HOME/<-local-state-workdir>",
        )?;
        Ok(Self::new(Path::new(&home), workdir))
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The archived build context, `user_build_context.tar`; it exists once a build has started.
    pub fn context_archive(&self) -> PathBuf {
        self.root.join(BUILD_CONTEXT_TAR)
    }

    fn config_file(&self, name: &str) -> PathBuf {
        self.root.join("config").join(name)
    }

    /// Records a new build: archives the build context and writes the three configs.
    pub fn start(&self, context: &Path, source: &SourceImage, build: &BuildConfig) -> Result<()> {
        if self.context_archive().exists() {
            bail!(
                "a build is already in progress in {}: run finish-image-build first, or remove that folder to start over",
                self.root.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o774)
            .create(self.root.join("config"))
            .with_context(|| format!("creating state folder {}", self.root.display()))?;
        archive::create(context, &self.context_archive(), &self.root)?;
        self.save("source_image", source)?;
        self.save("build", build)?;
        self.save("provisioner", &ProvisionerConfig::default())
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

    /// Removes the whole folder (the original does this at the end of every finish).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing state folder {}", self.root.display()))
            }
            _ => Ok(()),
        }
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
        let dir = StateDir::new(home.path(), DEFAULT_WORKDIR);
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
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("run start-image-build first"), "{e}");
    }

    #[test]
    fn corrupt_state_is_reported() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let dir = StateDir::new(home.path(), "w");
        dir.start(ctx.path(), &SourceImage::default(), &BuildConfig::default())
            .unwrap();
        std::fs::write(home.path().join("w/config/build"), "{\"GCSBucket\":").unwrap();
        let e = format!("{:#}", dir.load().unwrap_err());
        assert!(e.contains("w/config/build") && e.contains("corrupt"), "{e}");
    }
}
