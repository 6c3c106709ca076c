//! `run-script`: adds a step that runs a script from the build context.

use std::collections::BTreeMap;

use anyhow::Result;
use cos_customizer_common::config::{RunScriptArgs, Step};
use cos_customizer_common::env;
use cos_customizer_common::protocol::USER_CONTEXT;
use cos_customizer_core::archive;
use cos_customizer_core::state::StateDir;

use crate::cli::RunScriptOpts;

pub fn run(state: &StateDir, o: RunScriptOpts) -> Result<()> {
    let _lock = state.lock("run-script", false)?;
    let mut s = state.load()?;
    archive::require_member(&state.context_archive(), &o.script)?;
    let mut vars = BTreeMap::new();
    for v in &o.env {
        env::parse_flag_value(v, &mut vars)?;
    }
    let n = s.add_step(Step::RunScript(RunScriptArgs {
        build_context: USER_CONTEXT.into(),
        path: o.script.clone(),
        env: env::encode(&vars),
    }));
    state.save_provisioner(&s.prov)?;
    eprintln!("Added step {n} (RunScript {})", o.script);
    Ok(())
}
