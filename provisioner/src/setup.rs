//! Prepares the VM before the steps run; done again after every reboot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use anyhow::{Context as _, Result};
use cos_customizer_common::cmd;

use crate::context::Context;

/// Stops update-engine, puts /root on a tmpfs and installs docker-credential-gcr.
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
    let Some(src) = &ctx.docker_credential_gcr else {
        return Ok(());
    };
    let helper = bin.join("docker-credential-gcr");
    fs::copy(src, &helper)
        .with_context(|| format!("copying {} to {}", src.display(), helper.display()))?;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", helper.display()))?;
    // /var is noexec on COS: a bind mount of the folder can be remounted exec on its own.
    if host.mounted_fs_type(&bin)?.is_none() {
        host.mount(["--bind".as_ref(), bin.as_os_str(), bin.as_os_str()])
            .with_context(|| format!("bind-mounting {}", bin.display()))?;
        host.mount(["-o".as_ref(), "remount,bind,exec".as_ref(), bin.as_os_str()])
            .with_context(|| format!("remounting {} exec", bin.display()))?;
    }
    println!("Configuring docker-credential-gcr");
    cmd::run(
        Command::new(&helper)
            .arg("configure-docker")
            .env("PATH", ctx.child_path()),
    )
    .context("configuring docker to use docker-credential-gcr")?;
    Ok(())
}
