//! Prepares the VM before the steps run; done again after every reboot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};
use cos_customizer_common::cmd;

use crate::context::Context;
use crate::{docker_auth, tool};

/// The credential helper's program name.
const HELPER: &str = "docker-credential-gcr";

/// Stops update-engine, puts /root on a tmpfs, installs docker-credential-gcr and points
/// docker at it for Google's registries.
pub fn setup(ctx: &Context) -> Result<()> {
    let host = &ctx.host;
    // It would otherwise download a payload and swap the inactive root mid-build.
    host.stop_if_active("update-engine.service")?;

    // Tools write credentials under /root (docker's config.json); a tmpfs keeps them out of the image.
    let root_home = host.path("/root");
    if host.mounted_fs_type(&root_home)?.as_deref() != Some("tmpfs") {
        host.mount([
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "tmpfs".as_ref(),
            root_home.as_os_str(),
        ])
        .with_context(|| format!("mounting a tmpfs on {}", root_home.display()))?;
    }

    let bin = ctx.bin_dir();
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    if let Some(src) = &ctx.docker_credential_gcr {
        install_helper(ctx, src, &bin)?;
    }
    // The helper given on CIDATA, or the image's own (COS ships one in /usr/bin).
    if ctx.docker_credential_gcr.is_some() || tool::on_path(HELPER) {
        println!("Configuring docker to use {HELPER} for gcr.io and *-docker.pkg.dev");
        docker_auth::configure(&host.path("/root/.docker/config.json"))
            .context("configuring docker's credential helpers")?;
    }
    Ok(())
}

/// Installs the helper given on CIDATA where scripts find it, and runs its own
/// `configure-docker`, as the original does.
fn install_helper(ctx: &Context, src: &Path, bin: &Path) -> Result<()> {
    let host = &ctx.host;
    let helper = bin.join(HELPER);
    fs::copy(src, &helper)
        .with_context(|| format!("copying {} to {}", src.display(), helper.display()))?;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", helper.display()))?;
    // /var is noexec on COS: a bind mount of the folder can be remounted exec on its own.
    if host.mounted_fs_type(bin)?.is_none() {
        host.mount(["--bind".as_ref(), bin.as_os_str(), bin.as_os_str()])
            .with_context(|| format!("bind-mounting {}", bin.display()))?;
        host.mount(["-o".as_ref(), "remount,bind,exec".as_ref(), bin.as_os_str()])
            .with_context(|| format!("remounting {} exec", bin.display()))?;
    }
    println!("Configuring {HELPER}");
    cmd::run(
        Command::new(&helper)
            .arg("configure-docker")
            .env("PATH", ctx.child_path()),
    )
    .context("configuring docker to use docker-credential-gcr")?;
    Ok(())
}
