//! `seal-oem`: adds the step that seals the OEM partition read-only with dm-verity.

use anyhow::Result;
use cos_customizer_common::config::Step;
use cos_customizer_core::state::StateDir;

pub fn run(state: &StateDir) -> Result<()> {
    // ROOT-A's space is reclaimed too, as upstream.
    let n = state.append_step("seal-oem", Step::SealOem, true)?;
    eprintln!("Added step {n} ({})", Step::SealOem.type_name());
    Ok(())
}
