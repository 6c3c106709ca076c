//! The provisioning flow shared by `run` and `resume`. Every stage is re-entrant: after a
//! reboot the whole flow runs again from the saved state.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cos_customizer_common::config::ProvisionerConfig;

use crate::cleanup::{cleanup, stop_services};
use crate::contexts::unpack_all;
use crate::host::Host;
use crate::repartition::repartition;
use crate::setup::setup;
use crate::state::State;
use crate::steps;

pub struct Provisioner {
    pub host: Host,
    pub state_dir: PathBuf,
    pub docker_credential_gcr: Option<PathBuf>,
    /// The veritysetup container image, for seal-oem where veritysetup is not installed.
    pub veritysetup_image: Option<PathBuf>,
}

impl Provisioner {
    /// `run`: records the config, unpacks the build contexts, then provisions.
    pub fn start(&self, config_path: &Path) -> Result<()> {
        let data = fs::read(config_path)
            .with_context(|| format!("reading config {}", config_path.display()))?;
        let config: ProvisionerConfig = serde_json::from_slice(&data)
            .with_context(|| format!("parsing config {}", config_path.display()))?;
        let state = State::create(&self.state_dir, config)?;
        unpack_all(&self.state_dir, &state.config.build_contexts)?;
        self.provision(state)
    }

    /// `resume`: continues from the saved state.
    pub fn resume(&self) -> Result<()> {
        self.provision(State::load(&self.state_dir)?)
    }

    fn provision(&self, mut state: State) -> Result<()> {
        repartition(&self.host, &mut state, &self.state_dir)
            .context("repartitioning the boot disk")?;
        setup(self).context("setting up the build VM")?;
        steps::execute(self, &mut state)?;
        stop_services(&self.host).context("stopping services")?;
        cleanup(self).context("cleaning up the image")?;
        println!("Provisioning complete");
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::contexts::tests::make_context_tar;
    use crate::state::state_file;
    use cos_customizer_common::config::{RunScriptArgs, Step};
    use std::collections::BTreeMap;

    /// A provisioner aimed at `root`, with systemctl, mount and umount doing nothing.
    pub fn test_provisioner(root: &Path) -> Provisioner {
        Provisioner {
            host: Host {
                root: root.into(),
                systemctl: "/bin/true".into(),
                mount: "/bin/true".into(),
                umount: "/bin/true".into(),
            },
            state_dir: root.join("state"),
            docker_credential_gcr: Some("/bin/true".into()),
            veritysetup_image: None,
        }
    }

    const SCRIPTS: &[(&str, &str, u32)] = &[
        // The original's fixtures: run.sh checks its cwd, run_env.sh needs TEST=t.
        (
            "run.sh",
            "set -e; test -f run.sh; command -v docker-credential-gcr; echo ran >> \"$OUT\"\n",
            0o755,
        ),
        (
            "run_env.sh",
            "echo \"TEST is '$TEST'\"; test \"$TEST\" = t\n",
            0o644,
        ),
        ("check.sh", "test -e \"$OK\"\n", 0o644),
    ];

    fn script(path: &str, env: &str) -> Step {
        Step::RunScript(RunScriptArgs {
            build_context: "user".into(),
            path: path.into(),
            env: env.into(),
        })
    }

    struct Fixture {
        dir: tempfile::TempDir,
        p: Provisioner,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            Fixture {
                p: test_provisioner(&root),
                dir,
            }
        }

        fn out(&self) -> PathBuf {
            self.dir.path().join("out")
        }

        fn config(&self, steps: Vec<Step>) -> PathBuf {
            let tar = make_context_tar(self.dir.path(), SCRIPTS);
            let config = ProvisionerConfig {
                build_contexts: BTreeMap::from([(
                    "user".into(),
                    format!("file://{}", tar.display()),
                )]),
                steps,
                ..Default::default()
            };
            let path = self.dir.path().join("config.json");
            fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
            path
        }

        fn run(&self, steps: Vec<Step>) -> Result<()> {
            let config = self.config(steps);
            self.p.start(&config)
        }
    }

    #[test]
    fn state_exists() {
        let f = Fixture::new();
        fs::create_dir_all(&f.p.state_dir).unwrap();
        fs::write(state_file(&f.p.state_dir), "{}").unwrap();
        let e = f.run(vec![]).unwrap_err().to_string();
        assert!(
            e.contains("already exists") && e.contains("'resume'"),
            "{e}"
        );
    }

    #[test]
    fn resume_without_state() {
        let f = Fixture::new();
        let e = f.p.resume().unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("'run'"), "{e}");
    }

    #[test]
    fn run_invalid_args() {
        let f = Fixture::new();
        let e = format!(
            "{:#}",
            f.run(vec![Step::RunScript(RunScriptArgs::default())])
                .unwrap_err()
        );
        assert!(
            e.starts_with("error in step 0 (RunScript): RunScript needs BuildContext and Path"),
            "{e}"
        );
    }

    #[test]
    fn run_failure() {
        let f = Fixture::new();
        let e = format!("{:#}", f.run(vec![script("run_env.sh", "")]).unwrap_err());
        assert_eq!(
            e,
            "error in step 0 (RunScript): script run_env.sh exited with status 1"
        );
        assert_eq!(State::load(&f.p.state_dir).unwrap().current_step, 0);
    }

    #[test]
    fn run_success() {
        let f = Fixture::new();
        let out = format!("OUT={}", f.out().display());
        f.run(vec![script("run.sh", &out), script("run_env.sh", "TEST=t")])
            .unwrap();
        assert_eq!(fs::read_to_string(f.out()).unwrap(), "ran\n");
        assert!(!f.p.state_dir.exists(), "cleanup removes the state folder");
    }

    #[test]
    fn empty_config_succeeds() {
        let f = Fixture::new();
        f.run(vec![]).unwrap();
    }

    #[test]
    fn resume_skips_finished_steps() {
        let f = Fixture::new();
        let ok = f.dir.path().join("ok");
        let steps = vec![
            script("run.sh", &format!("OUT={}", f.out().display())),
            script("check.sh", &format!("OK={}", ok.display())),
        ];
        let e = format!("{:#}", f.run(steps).unwrap_err());
        assert!(e.starts_with("error in step 1 (RunScript)"), "{e}");
        assert_eq!(State::load(&f.p.state_dir).unwrap().current_step, 1);
        fs::write(&ok, "").unwrap();
        f.p.resume().unwrap();
        assert_eq!(
            fs::read_to_string(f.out()).unwrap(),
            "ran\n",
            "step 0 ran once"
        );
    }

    #[test]
    fn unsupported_steps_say_so() {
        let f = Fixture::new();
        let e = format!(
            "{:#}",
            f.run(vec![Step::InstallGpu(Default::default())])
                .unwrap_err()
        );
        assert_eq!(
            e,
            "error in step 0 (InstallGPU): step InstallGPU is not supported by this provisioner yet"
        );
    }

    #[test]
    fn repartitioning_needs_a_cos_disk_and_runs_before_any_step() {
        let f = Fixture::new();
        let mut config: ProvisionerConfig = serde_json::from_slice(
            &fs::read(f.config(vec![script("run.sh", "OUT=/nonexistent/x")])).unwrap(),
        )
        .unwrap();
        config.boot_disk.reclaim_sda3 = true;
        let path = f.dir.path().join("config2.json");
        fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let e = format!("{:#}", f.p.start(&path).unwrap_err());
        assert!(
            e.starts_with("repartitioning the boot disk: listing "),
            "{e}"
        );
        assert_eq!(State::load(&f.p.state_dir).unwrap().current_step, 0);
    }
}
