//! The recorded build steps, run in order from where the last boot stopped.

mod disable_auto_update;
mod run_script;
mod seal_oem;

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::Step;

use crate::provision::Provisioner;
use crate::state::State;

/// Runs the steps from `state.current_step` on, saving progress after each.
pub fn execute(p: &Provisioner, state: &mut State) -> Result<()> {
    let steps = state.config.steps.clone();
    for (i, step) in steps.iter().enumerate().skip(state.current_step) {
        println!("Running step {i} ({})", step.type_name());
        run_step(p, state, step)
            .with_context(|| format!("error in step {i} ({})", step.type_name()))?;
        state.current_step = i + 1;
        state.save(&p.state_dir)?;
    }
    Ok(())
}

fn run_step(p: &Provisioner, state: &State, step: &Step) -> Result<()> {
    match step {
        Step::RunScript(args) => run_script::run(p, args),
        Step::DisableAutoUpdate => disable_auto_update::run(&p.host),
        Step::SealOem => seal_oem::run(p, state.config.boot_disk.oem_fs_size_4k),
        Step::InstallGpu(_) | Step::InstallPackages(_) => {
            bail!(
                "step {} is not supported by this provisioner yet",
                step.type_name()
            )
        }
    }
}
