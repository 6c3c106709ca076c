//! `<state-dir>/state.json`: the config and how far provisioning got, kept across reboots.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::ProvisionerConfig;
use cos_customizer_common::fsutil;
use serde::{Deserialize, Serialize};

/// The original's `stateData`, with its Go field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The config `run` was given.
    #[serde(rename = "Config")]
    pub config: ProvisionerConfig,
    /// The first step not finished yet.
    #[serde(rename = "CurrentStep")]
    pub current_step: usize,
    /// Whether the boot disk has grown, so a later boot does not wait for it again.
    #[serde(rename = "DiskResizeComplete")]
    pub disk_resize_complete: bool,
    /// How many shutdowns were asked to relocate partitions (not in the original, which
    /// reboots until the layout is right); bounds the retries.
    #[serde(rename = "RelocationAttempts", default)]
    pub relocation_attempts: u32,
}

/// `<dir>/state.json`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl State {
    /// Creates the state folder and the first state file; fails if a build already started.
    pub fn create(dir: &Path, config: ProvisionerConfig) -> Result<State> {
        let file = state_file(dir);
        if file.exists() {
            bail!(
                "{} already exists: provisioning has already started; use the 'resume' subcommand to continue it",
                file.display()
            );
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o770)
            .create(dir)
            .with_context(|| format!("creating state folder {}", dir.display()))?;
        // The umask would otherwise narrow the mode.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o770))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
        let state = State {
            config,
            ..State::default()
        };
        state.save(dir)?;
        Ok(state)
    }

    /// Reads the state file; fails if there is none, as nothing has started.
    pub fn load(dir: &Path) -> Result<State> {
        let file = state_file(dir);
        let data = match fs::read(&file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} does not exist: nothing to resume; start provisioning with the 'run' subcommand",
                file.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", file.display()))
    }

    /// Writes the state atomically, so a crash or reboot leaves the old or the new one.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let file = state_file(dir);
        let data = serde_json::to_vec(self).context("serializing the provisioner state")?;
        fsutil::write_atomic(&file, &data)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_common::config::{RunScriptArgs, Step};

    #[test]
    fn round_trip_with_go_field_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let config = ProvisionerConfig {
            steps: vec![Step::RunScript(RunScriptArgs {
                build_context: "user".into(),
                path: "a.sh".into(),
                env: "A=1".into(),
            })],
            ..Default::default()
        };
        let mut state = State::create(&dir, config).unwrap();
        state.current_step = 1;
        state.disk_resize_complete = true;
        state.save(&dir).unwrap();
        let text = fs::read_to_string(state_file(&dir)).unwrap();
        assert!(
            text.starts_with(r#"{"Config":{"BuildContexts":null,"#)
                && text.ends_with(
                    r#""CurrentStep":1,"DiskResizeComplete":true,"RelocationAttempts":0}"#
                ),
            "{text}"
        );
        assert_eq!(State::load(&dir).unwrap(), state);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_file(&dir)), 0o660);
        assert_eq!(mode(&dir), 0o770);
    }

    #[test]
    fn reads_the_originals_state() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            state_file(d.path()),
            r#"{"Config":{"BuildContexts":{"user":"gs://b/o.tar"},"BootDisk":{"OEMSize":"","OEMFSSize4K":0,"ReclaimSDA3":false,"WaitForDiskResize":false},"Steps":[{"Type":"DisableAutoUpdate","Args":null}]},"CurrentStep":1,"DiskResizeComplete":false}"#,
        )
        .unwrap();
        let s = State::load(d.path()).unwrap();
        assert_eq!(s.current_step, 1);
        assert_eq!(s.config.steps, vec![Step::DisableAutoUpdate]);
    }

    #[test]
    fn create_refuses_an_existing_state_and_load_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        let e = State::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("'run'"), "{e}");
        State::create(d.path(), ProvisionerConfig::default()).unwrap();
        let e = State::create(d.path(), ProvisionerConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'resume'"), "{e}");
    }
}
