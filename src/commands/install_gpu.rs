//! `install-gpu`: adds a step that installs NVIDIA drivers; it may appear once. A driver
//! version (not an installer file) must be one of NVIDIA's, which are listed online.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::{InstallGpuArgs, Step};
use cos_customizer_core::state::StateDir;
use cos_customizer_gce::{connect, drivers};

use crate::cli::InstallGpuOpts;

fn validate(o: &InstallGpuOpts) -> Result<()> {
    if o.version.is_empty() {
        bail!("-version is required: a driver version such as 535.129.03, or an installer .run file in -deps-dir");
    }
    if o.version.ends_with(".run") {
        if o.deps_dir.is_empty() {
            bail!(
                "-version={} names an installer file, so -deps-dir must name the folder holding it",
                o.version
            );
        }
        let path = Path::new(&o.deps_dir).join(&o.version);
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "reading the installer {}: put it in -deps-dir",
                path.display()
            )
        })?;
        if !meta.is_file() {
            bail!("the installer {} is not a regular file", path.display());
        }
        let fields: Vec<_> = o.version.trim_end_matches(".run").split('-').collect();
        if fields.len() != 4 {
            bail!(
                "malformed nvidia installer {:?}: expected a name like NVIDIA-Linux-x86_64-450.51.06.run",
                o.version
            );
        }
    }
    Ok(())
}

/// NVIDIA's driver versions, from the public bucket at `storage_endpoint` (anonymously).
fn valid_versions(storage_endpoint: &str) -> Result<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let gcs = connect::public_storage(storage_endpoint)?;
        drivers::valid_versions(&gcs).await
    })
}

/// Go's `%v` of a string slice, as the original prints the versions: `[a b c]`.
fn go_list(versions: &[String]) -> String {
    format!("[{}]", versions.join(" "))
}

/// Refuses a driver version NVIDIA does not publish, as the original does.
fn check_version(version: &str, storage_endpoint: &str) -> Result<()> {
    let versions = valid_versions(storage_endpoint)
        .with_context(|| format!("checking -version={version} against NVIDIA's drivers"))?;
    if !versions.iter().any(|v| v == version) {
        bail!(
            "driver version {version} is not valid; valid driver versions are: {}",
            go_list(&versions)
        );
    }
    Ok(())
}

/// Every regular file in `-deps-dir`, uploaded for the VM by the GCE backend.
fn deps_files(dir: &str) -> Result<Vec<String>> {
    if dir.is_empty() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing -deps-dir {dir}"))? {
        let e = e.with_context(|| format!("listing -deps-dir {dir}"))?;
        if e.file_type()
            .with_context(|| format!("reading {}", e.path().display()))?
            .is_file()
        {
            let abs = std::fs::canonicalize(e.path())
                .with_context(|| format!("resolving {}", e.path().display()))?;
            files.push(abs.to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(files)
}

/// Runs `install-gpu`. `state` opens the state folder, which `-get-valid-drivers` does not
/// need; `storage_endpoint` is `-storage-endpoint`, where NVIDIA's bucket is listed.
pub fn run(
    state: impl FnOnce() -> Result<StateDir>,
    storage_endpoint: &str,
    o: InstallGpuOpts,
) -> Result<()> {
    if o.get_valid_drivers {
        let versions = valid_versions(storage_endpoint)?;
        println!("Valid driver versions are: {}", go_list(&versions));
        return Ok(());
    }
    validate(&o)?;
    if !o.version.ends_with(".run") {
        // Before the lock, so no other command waits on the network.
        check_version(&o.version, storage_endpoint)?;
    }
    let state = state()?;
    let _lock = state.lock("install-gpu", false)?;
    let mut s = state.load()?;
    if s.prov
        .steps
        .iter()
        .any(|st| matches!(st, Step::InstallGpu(_)))
    {
        bail!("install-gpu can only be invoked once in an image build process");
    }
    if !o.gpu_type.is_empty() {
        s.build.gpu_type = Some(o.gpu_type.clone());
    }
    s.build.gcs_files.extend(deps_files(&o.deps_dir)?);
    let n = s.add_step(Step::InstallGpu(InstallGpuArgs {
        nvidia_driver_version: o.version.clone(),
        nvidia_driver_md5sum: o.md5sum.clone(),
        nvidia_install_dir_host: o.install_dir.clone(),
        nvidia_installer_container: o.installer_container.clone(),
        gcs_deps_prefix: o.deps_dir.clone(),
        no_verify: o.no_verify,
    }));
    state.save_build(&s.build)?;
    state.save_provisioner(&s.prov)?;
    eprintln!("Added step {n} (InstallGPU {})", o.version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(version: &str, deps: &str) -> InstallGpuOpts {
        InstallGpuOpts {
            version: version.into(),
            md5sum: String::new(),
            install_dir: "/var/lib/nvidia".into(),
            gpu_type: String::new(),
            get_valid_drivers: false,
            deps_dir: deps.into(),
            installer_container: "c".into(),
            no_verify: false,
        }
    }

    #[test]
    fn a_version_is_required_and_checked_online_only() {
        let e = validate(&opts("", "")).unwrap_err();
        assert!(e.to_string().contains("-version is required"), "{e}");
        validate(&opts("450.51.06", "")).unwrap();
        validate(&opts("latest", "")).unwrap();
    }

    #[test]
    fn versions_print_as_go_prints_a_slice() {
        assert_eq!(go_list(&[]), "[]");
        assert_eq!(
            go_list(&["390.46".to_string(), "450.51.06".to_string()]),
            "[390.46 450.51.06]"
        );
    }

    #[test]
    fn installer_without_deps_dir() {
        let e = validate(&opts("NVIDIA-Linux-x86_64-450.51.06.run", "")).unwrap_err();
        assert!(e.to_string().contains("-deps-dir"), "{e}");
    }

    #[test]
    fn installer_in_deps_dir() {
        let d = tempfile::tempdir().unwrap();
        let name = "NVIDIA-Linux-x86_64-450.51.06.run";
        assert!(validate(&opts(name, d.path().to_str().unwrap())).is_err());
        std::fs::write(d.path().join(name), "x").unwrap();
        std::fs::write(d.path().join("dep"), "y").unwrap();
        validate(&opts(name, d.path().to_str().unwrap())).unwrap();
        assert_eq!(deps_files(d.path().to_str().unwrap()).unwrap().len(), 2);
        std::fs::write(d.path().join("bad.run"), "x").unwrap();
        assert!(validate(&opts("bad.run", d.path().to_str().unwrap())).is_err());
    }
}
