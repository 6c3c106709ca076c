//! RunScript: `/bin/bash <state>/<context>/<path>` in the build context, output streamed.

use std::process::Command;

use anyhow::{bail, Result};
use cos_customizer_common::config::RunScriptArgs;

use crate::child::run_forwarded;
use crate::context::Context;

/// Runs the script with the step's environment; fails unless it exits 0.
pub fn run(ctx: &Context, args: &RunScriptArgs) -> Result<()> {
    if args.build_context.is_empty() || args.path.is_empty() {
        bail!(
            "RunScript needs BuildContext and Path (got BuildContext={:?}, Path={:?})",
            args.build_context,
            args.path
        );
    }
    let env = cos_customizer_common::env::decode(&args.env)?;
    let dir = ctx.state_dir.join(&args.build_context);
    let script = dir.join(&args.path);
    let ended = run_forwarded(
        Command::new("/bin/bash")
            .arg(&script)
            .current_dir(&dir)
            .env("PATH", ctx.child_path())
            .envs(env),
        &format!("/bin/bash {} in {}", script.display(), dir.display()),
    )?;
    match ended.failure() {
        None => Ok(()),
        Some(how) => bail!("script {} {how}", args.path),
    }
}
