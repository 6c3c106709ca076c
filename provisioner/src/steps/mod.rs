//! The recorded build steps, run in order from where the last boot stopped.

mod disable_auto_update;
mod install_gpu;
mod install_packages;
mod run_script;
mod script_file;
mod seal_oem;

use anyhow::{Context as _, Result};
use cos_customizer_common::config::Step;

use crate::context::Context;
use crate::state::State;

/// Runs the steps from `state.current_step` on, saving progress after each.
pub fn execute(ctx: &Context, state: &mut State) -> Result<()> {
    let steps = state.config.steps.clone();
    for (i, step) in steps.iter().enumerate().skip(state.current_step) {
        println!("Running step {i} ({})", step.type_name());
        run_step(ctx, state, step)
            .with_context(|| format!("error in step {i} ({})", step.type_name()))?;
        state.current_step = i + 1;
        state.save(&ctx.state_dir)?;
    }
    Ok(())
}

fn run_step(ctx: &Context, state: &State, step: &Step) -> Result<()> {
    match step {
        Step::RunScript(args) => run_script::run(ctx, args),
        Step::DisableAutoUpdate => disable_auto_update::run(&ctx.host),
        Step::SealOem => seal_oem::run(ctx, state.config.boot_disk.oem_fs_size_4k),
        Step::InstallGpu(args) => install_gpu::run(ctx, args, &state.config.storage_endpoint),
        Step::InstallPackages(args) => {
            install_packages::run(ctx, args, &state.config.storage_endpoint)
        }
    }
}
