//! The provisioning flow shared by `run` and `resume`. Every stage is re-entrant: after a
//! reboot the whole flow runs again from the saved state.
//!
//! Only repartitioning can need a reboot (and the recovery of a relocation a power cut
//! interrupted); then the flow stops there with [`Outcome::Reboot`].

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};
use cos_customizer_common::config::ProvisionerConfig;

use crate::build_contexts::unpack_all;
use crate::cleanup::{cleanup, stop_services};
use crate::context::Context;
use crate::disk::repartition::{recover_relocation, repartition};
use crate::outcome::Outcome;
use crate::setup::setup;
use crate::state::State;
use crate::steps;

/// `run`: records the config, unpacks the build contexts, then provisions.
pub fn run(ctx: &Context, config_path: &Path) -> Result<Outcome> {
    let data = fs::read(config_path)
        .with_context(|| format!("reading config {}", config_path.display()))?;
    let config: ProvisionerConfig = serde_json::from_slice(&data)
        .with_context(|| format!("parsing config {}", config_path.display()))?;
    // A relocation cut short leaves STATE unmountable, and so the state file unreachable.
    if recover_relocation(&ctx.host, &config.boot_disk)
        .context("recovering an interrupted relocation")?
    {
        return Ok(Outcome::Reboot);
    }
    let state = State::create(&ctx.state_dir, config)?;
    unpack_all(
        &ctx.state_dir,
        &state.config.build_contexts,
        &state.config.storage_endpoint,
    )?;
    provision(ctx, state)
}

/// `resume`: continues from the saved state.
pub fn resume(ctx: &Context) -> Result<Outcome> {
    let state = State::load(&ctx.state_dir)?;
    if recover_relocation(&ctx.host, &state.config.boot_disk)
        .context("recovering an interrupted relocation")?
    {
        return Ok(Outcome::Reboot);
    }
    provision(ctx, state)
}

/// Repartitions, sets up, runs the steps and cleans up; stops after repartitioning when
/// that needs a reboot first.
fn provision(ctx: &Context, mut state: State) -> Result<Outcome> {
    let repartitioned = repartition(&ctx.host, &mut state, &ctx.state_dir)
        .context("repartitioning the boot disk")?;
    if repartitioned == Outcome::Reboot {
        return Ok(Outcome::Reboot);
    }
    setup(ctx).context("setting up the build VM")?;
    steps::execute(ctx, &mut state)?;
    stop_services(&ctx.host).context("stopping services")?;
    cleanup(ctx).context("cleaning up the image")?;
    println!("Provisioning complete");
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_contexts::tests::make_context_tar;
    use crate::context::tests::test_context;
    use crate::state::state_file;
    use cos_customizer_common::config::{RunScriptArgs, Step};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

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
        ctx: Context,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            Fixture {
                ctx: test_context(&root),
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

        fn run(&self, steps: Vec<Step>) -> Result<Outcome> {
            run(&self.ctx, &self.config(steps))
        }
    }

    #[test]
    fn state_exists() {
        let f = Fixture::new();
        fs::create_dir_all(&f.ctx.state_dir).unwrap();
        fs::write(state_file(&f.ctx.state_dir), "{}").unwrap();
        let e = f.run(vec![]).unwrap_err().to_string();
        assert!(
            e.contains("already exists") && e.contains("'resume'"),
            "{e}"
        );
    }

    #[test]
    fn resume_without_state() {
        let f = Fixture::new();
        let e = resume(&f.ctx).unwrap_err().to_string();
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
        assert_eq!(State::load(&f.ctx.state_dir).unwrap().current_step, 0);
    }

    #[test]
    fn run_success() {
        let f = Fixture::new();
        let out = format!("OUT={}", f.out().display());
        let outcome = f.run(vec![script("run.sh", &out), script("run_env.sh", "TEST=t")]);
        assert_eq!(outcome.unwrap(), Outcome::Done);
        assert_eq!(fs::read_to_string(f.out()).unwrap(), "ran\n");
        assert!(
            !f.ctx.state_dir.exists(),
            "cleanup removes the state folder"
        );
    }

    #[test]
    fn empty_config_succeeds() {
        let f = Fixture::new();
        assert_eq!(f.run(vec![]).unwrap(), Outcome::Done);
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
        assert_eq!(State::load(&f.ctx.state_dir).unwrap().current_step, 1);
        fs::write(&ok, "").unwrap();
        assert_eq!(resume(&f.ctx).unwrap(), Outcome::Done);
        assert_eq!(
            fs::read_to_string(f.out()).unwrap(),
            "ran\n",
            "step 0 ran once"
        );
    }

    #[test]
    fn gpu_steps_check_their_args_in_order() {
        let f = Fixture::new();
        let e = format!(
            "{:#}",
            f.run(vec![Step::InstallGpu(Default::default())])
                .unwrap_err()
        );
        assert_eq!(
            e,
            "error in step 0 (InstallGPU): invalid args: NvidiaDriverVersion is required in InstallGPU"
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
        let e = format!("{:#}", run(&f.ctx, &path).unwrap_err());
        // The first thing a repartitioning build looks at is the boot disk's relocation
        // journal; here there is no boot disk.
        assert!(
            e.starts_with("recovering an interrupted relocation: listing "),
            "{e}"
        );
        assert!(
            State::load(&f.ctx.state_dir).is_err(),
            "no state before the disk is known"
        );
    }
}
