//! `disable-auto-update`: adds the step that turns off the image's automatic updates.

use anyhow::Result;
use cos_customizer_common::config::Step;
use cos_customizer_core::state::StateDir;

pub fn run(state: &StateDir) -> Result<()> {
    // ROOT-A's space is reclaimed too, as upstream.
    let n = state.append_step("disable-auto-update", Step::DisableAutoUpdate, true)?;
    eprintln!("Added step {n} ({})", Step::DisableAutoUpdate.type_name());
    Ok(())
}
