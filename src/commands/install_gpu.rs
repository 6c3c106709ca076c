//! `install-gpu`: adds a step that installs NVIDIA drivers; it may appear once.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::{InstallGpuArgs, Step};
use cos_customizer_core::state::StateDir;

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
    } else if !o
        .version
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        bail!(
            "-version={:?} is not a driver version such as 535.129.03 (or an installer .run file)",
            o.version
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

pub fn run(state: &StateDir, o: InstallGpuOpts) -> Result<()> {
    if o.get_valid_drivers {
        bail!(
            "-get-valid-drivers lists gs://nvidia-drivers-us-public, which needs the Cloud Storage client of the GCE backend; this build has only the QEMU backend"
        );
    }
    validate(&o)?;
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
        }
    }

    #[test]
    fn versions() {
        validate(&opts("450.51.06", "")).unwrap();
        assert!(validate(&opts("", "")).is_err());
        assert!(validate(&opts("latest", "")).is_err());
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
