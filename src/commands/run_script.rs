//! `run-script`: adds a step that runs a script from the build context.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use cos_customizer_common::config::{RunScriptArgs, Step};
use cos_customizer_common::env;
use cos_customizer_common::protocol::USER_CONTEXT;
use cos_customizer_core::archive;
use cos_customizer_core::state::StateDir;

use crate::cli::RunScriptOpts;

pub fn run(state: &StateDir, o: RunScriptOpts) -> Result<()> {
    let _lock = state.lock("run-script", false)?;
    let mut s = state.load()?;
    // The build config is JSON, whose strings are text.
    let script = o.script.to_str().with_context(|| {
        format!(
            "-script {:?} is not valid UTF-8, which the build config cannot record: rename the script in the build context",
            o.script
        )
    })?;
    archive::require_file(&state.context_archive(), script)?;
    let mut vars = BTreeMap::new();
    for v in &o.env {
        env::parse_flag_value(v, &mut vars)?;
    }
    let n = s.add_step(Step::RunScript(RunScriptArgs {
        build_context: USER_CONTEXT.into(),
        path: script.to_string(),
        env: env::encode(&vars),
    }));
    state.save_provisioner(&s.prov)?;
    eprintln!("Added step {n} (RunScript {script})");
    Ok(())
}
