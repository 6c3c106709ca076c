//! InstallGPU: writes `setup_gpu.sh` into the install folder and runs it, as the original
//! does. The script runs cos-gpu-installer's container with the original's mounts,
//! privileges and variables, then checks the driver with `nvidia-smi` and starts
//! `nvidia-persistenced`; it stays in the image, to be run at every boot of a GPU VM.
//!
//! A build that preloads without a GPU (`NoVerify`) runs the container's `install
//! -no-verify` instead, which neither loads nor checks the driver, and skips the checks.

use std::process::Command;

use anyhow::{bail, Result};
use cos_customizer_common::cmd::shell_quote;
use cos_customizer_common::config::InstallGpuArgs;

use super::script_file::write_script;
use crate::child::run_forwarded;
use crate::context::Context;
use crate::gcs;

const DEFAULT_INSTALL_DIR: &str = "/var/lib/nvidia";
/// Set in the script's environment by a build that preloads without a GPU; unset when the
/// image runs the script at boot.
const PRELOAD_VAR: &str = "COS_CUSTOMIZER_PRELOAD_WITHOUT_GPU";

/// Installs the driver; `storage_endpoint` is the build's (empty for Cloud Storage).
pub fn run(ctx: &Context, args: &InstallGpuArgs, storage_endpoint: &str) -> Result<()> {
    if args.nvidia_driver_version.is_empty() {
        bail!("invalid args: NvidiaDriverVersion is required in InstallGPU");
    }
    if args.nvidia_installer_container.is_empty() {
        bail!("invalid args: NvidiaInstallerContainer is required in InstallGPU");
    }
    let version = driver_version(&args.nvidia_driver_version)?;
    let install_dir = match args.nvidia_install_dir_host.as_str() {
        "" => DEFAULT_INSTALL_DIR,
        d => d,
    };
    println!("Installing GPU drivers...");
    let script = ctx.host.path(install_dir).join("setup_gpu.sh");
    write_script(&script, &setup_script(args, &version, install_dir))?;
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(&script)
        .env("PATH", ctx.child_path())
        .envs(download_env(args, storage_endpoint));
    if args.no_verify {
        println!(
            "Preloading without a GPU (-no-verify): the driver is neither loaded nor checked in this build"
        );
        cmd.env(PRELOAD_VAR, "1");
    } else {
        cmd.env_remove(PRELOAD_VAR);
    }
    let ended = run_forwarded(&mut cmd, &format!("/bin/bash {}", script.display()))?;
    if let Some(how) = ended.failure() {
        println!("Installing GPU drivers failed");
        bail!(
            "installing the GPU drivers with {}: {} {how}; its last lines:\n{}",
            args.nvidia_installer_container,
            script.display(),
            ended.tail.join("\n")
        );
    }
    println!("Done installing GPU drivers");
    Ok(())
}

/// The driver version: an installer's file name `NVIDIA-Linux-x86_64-450.51.06.run` gives
/// `450.51.06`; anything else is a version already.
fn driver_version(given: &str) -> Result<String> {
    let Some(stem) = given.strip_suffix(".run") else {
        return Ok(given.to_string());
    };
    let fields: Vec<&str> = stem.split('-').filter(|f| !f.is_empty()).collect();
    match fields[..] {
        [_, _, _, version] => Ok(version.to_string()),
        _ => bail!(
            "malformed nvidia installer: {given:?}: expected a name like NVIDIA-Linux-x86_64-450.51.06.run"
        ),
    }
}

/// `COS_DOWNLOAD_GCS` (the dependencies' folder over HTTP) and `GPU_INSTALLER_DOWNLOAD_URL`
/// (the `.run` installer in it), empty without dependencies, as the original sets them.
fn download_env(args: &InstallGpuArgs, storage_endpoint: &str) -> [(&'static str, String); 2] {
    let folder = match args.gcs_deps_prefix.as_str() {
        "" => String::new(),
        prefix => {
            let base = match storage_endpoint {
                "" => gcs::ENDPOINT,
                e => e.trim_end_matches('/'),
            };
            format!("{base}/{}", prefix.trim_start_matches("gs://"))
        }
    };
    let installer = if args.nvidia_driver_version.ends_with(".run") && !folder.is_empty() {
        format!("{folder}/{}", args.nvidia_driver_version)
    } else {
        String::new()
    };
    [
        ("COS_DOWNLOAD_GCS", folder),
        ("GPU_INSTALLER_DOWNLOAD_URL", installer),
    ]
}

/// The original's `setup_gpu.sh`, with the preload switch.
fn setup_script(args: &InstallGpuArgs, version: &str, install_dir: &str) -> String {
    format!(
        r#"#!/bin/bash
# Installs the NVIDIA GPU driver with cos-gpu-installer (written by cos-customizer's
# install-gpu). Run it at every boot of a VM with a GPU to load the driver.

set -o errexit
set -x

export NVIDIA_DRIVER_VERSION={version}
export NVIDIA_DRIVER_MD5SUM={md5}
export NVIDIA_INSTALL_DIR_HOST={dir}
export COS_NVIDIA_INSTALLER_CONTAINER={container}
export NVIDIA_INSTALL_DIR_CONTAINER=/usr/local/nvidia
export ROOT_MOUNT_DIR=/root
export TOOLCHAIN_PKG_DIR="/toolchain"
export SCRATCH_DISK_LOCATION="/mnt/disks/scratch/gpu"

pull_installer() {{
  local docker_code
  local i=1
  while [[ $i -le 10 ]]; do
    echo "Pulling cos-gpu-installer container image... [${{i}}/10]"
    docker pull "${{COS_NVIDIA_INSTALLER_CONTAINER}}" && break || docker_code="$?"
    i=$((i+1))
    sleep 2
  done
  if [[ $i -eq 11 ]]; then
    echo "Pulling cos-gpu-installer failed."
    echo "Docker journal logs:"
    journalctl -u docker.service --no-pager
    exit "${{docker_code}}"
  fi
  echo "Successfully pulled cos-gpu-installer container image."
}}

main() {{
  # Set by a build that preloads the driver on a VM with no GPU: the installer neither
  # loads nor checks it, so there is nothing to check after.
  local installer_args=()
  if [[ -n "${{{PRELOAD_VAR}:-}}" ]]; then
    installer_args=(install -no-verify)
  fi
  mkdir -p "${{NVIDIA_INSTALL_DIR_HOST}}"
  mount --bind "${{NVIDIA_INSTALL_DIR_HOST}}" "${{NVIDIA_INSTALL_DIR_HOST}}"
  mount -o remount,exec "${{NVIDIA_INSTALL_DIR_HOST}}"
  pull_installer
  if ! docker run \
    --rm \
    --privileged \
    --net=host \
    --pid=host \
    --volume "${{NVIDIA_INSTALL_DIR_HOST}}:${{NVIDIA_INSTALL_DIR_CONTAINER}}" \
    --volume /dev:/dev \
    --volume "/:${{ROOT_MOUNT_DIR}}" \
    --volume "${{SCRATCH_DISK_LOCATION}}:/toolchain" \
    -e TOOLCHAIN_PKG_DIR \
    -e NVIDIA_DRIVER_VERSION \
    -e NVIDIA_DRIVER_MD5SUM \
    -e NVIDIA_INSTALL_DIR_HOST \
    -e COS_NVIDIA_INSTALLER_CONTAINER \
    -e NVIDIA_INSTALL_DIR_CONTAINER \
    -e ROOT_MOUNT_DIR \
    -e COS_DOWNLOAD_GCS \
    -e GPU_INSTALLER_DOWNLOAD_URL \
    "${{COS_NVIDIA_INSTALLER_CONTAINER}}" "${{installer_args[@]}}"; then
    echo "GPU install failed."
    if [[ -f "${{NVIDIA_INSTALL_DIR_HOST}}/nvidia-installer.log" ]]; then
      echo "Nvidia installer debug logs:"
      cat "${{NVIDIA_INSTALL_DIR_HOST}}/nvidia-installer.log"
    fi
    return 1
  fi
  if [[ -n "${{installer_args[*]}}" ]]; then
    echo "Preloaded without a GPU: the driver is loaded and checked when this image first boots on a GPU VM and runs ${{NVIDIA_INSTALL_DIR_HOST}}/setup_gpu.sh."
    return 0
  fi
  "${{NVIDIA_INSTALL_DIR_HOST}}/bin/nvidia-smi"

  # Start nvidia-persistenced
  if ! pgrep -f nvidia-persistenced > /dev/null; then
    "${{NVIDIA_INSTALL_DIR_HOST}}/bin/nvidia-persistenced" --verbose
  fi

  # Set softlockup_panic
  echo 1 > /proc/sys/kernel/softlockup_panic
}}

main
"#,
        version = shell_quote(version),
        md5 = shell_quote(&args.nvidia_driver_md5sum),
        dir = shell_quote(install_dir),
        container = shell_quote(&args.nvidia_installer_container),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::test_context;

    fn args(version: &str, deps: &str) -> InstallGpuArgs {
        InstallGpuArgs {
            nvidia_driver_version: version.into(),
            nvidia_installer_container: "gcr.io/cos-cloud/cos-gpu-installer:v20230815".into(),
            gcs_deps_prefix: deps.into(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_from_installer_names() {
        assert_eq!(
            driver_version("NVIDIA-Linux-x86_64-450.51.06.run").unwrap(),
            "450.51.06"
        );
        assert_eq!(driver_version("535.129.03").unwrap(), "535.129.03");
        for bad in ["NVIDIA-Linux-450.51.06.run", "a-b-c-d-e.run", "x.run"] {
            let e = driver_version(bad).unwrap_err().to_string();
            assert!(
                e.contains("malformed nvidia installer") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[test]
    fn download_urls_follow_the_builds_endpoint() {
        let run = args(
            "NVIDIA-Linux-x86_64-450.51.06.run",
            "gs://b/w/cos-customizer/gcs_files",
        );
        assert_eq!(
            download_env(&run, ""),
            [
                (
                    "COS_DOWNLOAD_GCS",
                    "https://storage.googleapis.com/b/w/cos-customizer/gcs_files".into()
                ),
                (
                    "GPU_INSTALLER_DOWNLOAD_URL",
                    "https://storage.googleapis.com/b/w/cos-customizer/gcs_files/NVIDIA-Linux-x86_64-450.51.06.run".into()
                ),
            ]
        );
        let [(_, folder), (_, installer)] = download_env(&run, "http://169.254.169.2:4443/");
        assert_eq!(
            folder,
            "http://169.254.169.2:4443/b/w/cos-customizer/gcs_files"
        );
        assert!(installer.ends_with("gcs_files/NVIDIA-Linux-x86_64-450.51.06.run"));
        let plain = args("535.129.03", "gs://b/d");
        assert_eq!(download_env(&plain, "")[1].1, "");
        assert_eq!(download_env(&args("535.129.03", ""), "")[0].1, "");
    }

    #[test]
    fn the_script_quotes_what_it_is_given() {
        let mut a = args("535.129.03", "");
        a.nvidia_driver_md5sum = "a b'c".into();
        let text = setup_script(&a, "535.129.03", "/var/lib/my nvidia");
        assert!(
            text.contains("export NVIDIA_DRIVER_VERSION=535.129.03\n"),
            "{text}"
        );
        assert!(
            text.contains(r"export NVIDIA_DRIVER_MD5SUM='a b'\''c'"),
            "{text}"
        );
        assert!(text.contains("export NVIDIA_INSTALL_DIR_HOST='/var/lib/my nvidia'\n"));
        assert!(text.contains(
            "export COS_NVIDIA_INSTALLER_CONTAINER=gcr.io/cos-cloud/cos-gpu-installer:v20230815\n"
        ));
        let empty = setup_script(&args("1", ""), "1", DEFAULT_INSTALL_DIR);
        assert!(empty.contains("export NVIDIA_DRIVER_MD5SUM=''\n"));
        let out = Command::new("bash")
            .args(["-n", "-c", &text])
            .output()
            .unwrap();
        assert!(out.status.success(), "bash -n: {out:?}");
    }

    #[test]
    fn bad_args_are_refused_before_anything_is_written() {
        let d = tempfile::tempdir().unwrap();
        let ctx = test_context(d.path());
        let e = run(&ctx, &InstallGpuArgs::default(), "").unwrap_err();
        assert!(
            e.to_string().contains("NvidiaDriverVersion is required"),
            "{e}"
        );
        let mut a = args("NVIDIA-450.51.06.run", "");
        let e = run(&ctx, &a, "").unwrap_err();
        assert!(e.to_string().contains("malformed nvidia installer"), "{e}");
        a.nvidia_installer_container.clear();
        let e = run(&ctx, &a, "").unwrap_err();
        assert!(
            e.to_string()
                .contains("NvidiaInstallerContainer is required"),
            "{e}"
        );
        assert!(!d.path().join("var").exists());
    }
}
