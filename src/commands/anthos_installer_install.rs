//! `anthos-installer-install`: adds the step that installs the packages an Anthos package
//! spec names.

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::{InstallPackagesArgs, Step};
use cos_customizer_common::protocol::USER_CONTEXT;
use cos_customizer_core::archive;
use cos_customizer_core::state::StateDir;

use crate::cli::AnthosOpts;

pub fn run(state: &StateDir, o: AnthosOpts) -> Result<()> {
    if o.pkgspec_url.is_empty() {
        bail!("-pkgspec-url is required: a path in the build context, or a gs://, http:// or https:// URL");
    }
    if !InstallPackagesArgs::is_url(&o.pkgspec_url) {
        let members = archive::members(&state.context_archive())
            .context("reading the build context start-image-build archived")?;
        if !in_context(&members, &o.pkgspec_url) {
            bail!(
                "-pkgspec-url={} is not in the build context: give a file or folder of start-image-build's -build-context (relative to it), or a gs://, http:// or https:// URL",
                o.pkgspec_url
            );
        }
    }
    let step = Step::InstallPackages(InstallPackagesArgs {
        build_context: USER_CONTEXT.into(),
        pkg_spec_url: o.pkgspec_url,
        top_work_dir: o.top_workdir,
        anthos_installer_dir: String::new(),
        anthos_installer_version: "anthos_installer-linux-amd64-v0.0.1-bb7e04e.tar.gz".into(),
        anthos_installer_release_bucket: "cos-anthos-builds-us".into(),
    });
    let name = step.type_name();
    let n = state.append_step("anthos-installer-install", step, false)?;
    eprintln!("Added step {n} ({name})");
    Ok(())
}

/// Whether `path` is a member of the build context archive, or a folder holding some.
fn in_context(members: &[String], path: &str) -> bool {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    members.iter().any(|m| {
        let m = m.trim_end_matches('/');
        m == path || m.starts_with(&format!("{path}/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_specs_in_the_build_context() {
        let members: Vec<String> = ["specs/", "specs/a.yaml", "pkg.tar.gz", "specsx"]
            .map(String::from)
            .to_vec();
        for found in ["specs", "specs/", "./specs/a.yaml", "pkg.tar.gz"] {
            assert!(in_context(&members, found), "{found}");
        }
        for missing in ["spec", "specs/b.yaml", "pkg.tar", "specsx/y"] {
            assert!(!in_context(&members, missing), "{missing}");
        }
    }
}
