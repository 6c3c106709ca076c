//! InstallPackages (`anthos-installer-install`): downloads the anthos_installer release
//! archive from its bucket with the VM's credentials, unpacks it into the installer folder
//! and runs `anthos_installer install` on the package spec, as the original does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use cos_customizer_common::cmd::shell_quote;
use cos_customizer_common::config::InstallPackagesArgs;

use super::script_file::write_script;
use crate::child::run_forwarded;
use crate::context::Context;
use crate::gcs::Gcs;

/// Installs the packages; `storage_endpoint` is the build's (empty for Cloud Storage).
pub fn run(ctx: &Context, args: &InstallPackagesArgs, storage_endpoint: &str) -> Result<()> {
    let gcs = Gcs::for_build(storage_endpoint);
    install(ctx, args, &gcs, !storage_endpoint.is_empty())
}

/// [`run`] with `gcs`; `own_endpoint` says the build gave it, so the installer gets it too.
fn install(ctx: &Context, args: &InstallPackagesArgs, gcs: &Gcs, own_endpoint: bool) -> Result<()> {
    for (field, value) in [
        ("BuildContext", &args.build_context),
        ("PkgSpecURL", &args.pkg_spec_url),
        ("AnthosInstallerVersion", &args.anthos_installer_version),
        (
            "AnthosInstallerReleaseBucket",
            &args.anthos_installer_release_bucket,
        ),
    ] {
        if value.is_empty() {
            bail!("invalid args: {field} is required in InstallPackages");
        }
    }
    println!("Installing Packages from the {}...", args.pkg_spec_url);
    let context_dir = ctx.state_dir.join(&args.build_context);
    let pkgspec = pkgspec_location(&args.pkg_spec_url, &context_dir)?;
    let dir = match args.anthos_installer_dir.as_str() {
        "" => ctx.state_dir.clone(),
        d => ctx.host.path(d),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let url = format!(
        "gs://{}/{}",
        args.anthos_installer_release_bucket, args.anthos_installer_version
    );
    gcs.download(&url, &dir.join(&args.anthos_installer_version))
        .with_context(|| {
            format!(
                "downloading the Anthos installer {:?} from bucket {:?}",
                args.anthos_installer_version, args.anthos_installer_release_bucket
            )
        })?;
    let script = dir.join("anthos_installer_install.sh");
    write_script(&script, &install_script(&pkgspec, &dir, &context_dir, args))?;
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(&script).env("PATH", ctx.child_path());
    // Google's storage clients honour it, so the installer reads a gs:// package spec from
    // the same storage as the build.
    if own_endpoint {
        cmd.env("STORAGE_EMULATOR_HOST", gcs.endpoint());
    }
    let ended = run_forwarded(&mut cmd, &format!("/bin/bash {}", script.display()))?;
    if let Some(how) = ended.failure() {
        bail!(
            "installing the packages of {} with anthos_installer: {} {how}; its last lines:\n{}",
            args.pkg_spec_url,
            script.display(),
            ended.tail.join("\n")
        );
    }
    println!("Done Installing the Packages from {}", args.pkg_spec_url);
    Ok(())
}

/// A URL as it is; a path in the build context as its place there, which must exist.
fn pkgspec_location(spec: &str, context_dir: &Path) -> Result<String> {
    if InstallPackagesArgs::is_url(spec) {
        return Ok(spec.to_string());
    }
    let path: PathBuf = context_dir.join(spec.trim_start_matches('/'));
    if !path.exists() {
        bail!(
            "the package spec {spec:?} is not in the build context (looked for {}): -pkgspec-url must name a file or folder in start-image-build's -build-context, or a gs://, http:// or https:// URL",
            path.display()
        );
    }
    Ok(path.to_string_lossy().into_owned())
}

/// The original's `anthos_installer_install.sh`. Unlike it, the build context folder is
/// passed (the original's template left it empty), `bin` is made before the copy, and the
/// installer runs from an exec mount when its folder is noexec.
fn install_script(
    pkgspec: &str,
    dir: &Path,
    context_dir: &Path,
    a: &InstallPackagesArgs,
) -> String {
    format!(
        r#"#!/bin/bash
# Installs packages with anthos_installer (written by cos-customizer's anthos-installer-install).

set -o errexit

export PACKAGE_SPEC_DIR={pkgspec}
export ANTHOS_INSTALLER_DIR={dir}
export ANTHOS_INSTALLER_VERSION={version}
export BUILD_CONTEXT_DIR={context}
export BIN_DIR="${{ANTHOS_INSTALLER_DIR}}/bin"
export TOP_WORKDIR={top}

install_anthos_installer() {{
  tar -xvf "${{ANTHOS_INSTALLER_DIR}}/${{ANTHOS_INSTALLER_VERSION}}" -C "${{ANTHOS_INSTALLER_DIR}}"
  mkdir -p "${{BIN_DIR}}"
  cp "${{ANTHOS_INSTALLER_DIR}}/anthos_installer" "${{BIN_DIR}}/anthos_installer"
}}

install_packages() {{
  echo "${{TOP_WORKDIR}}"
  "${{BIN_DIR}}/anthos_installer" install -pkgspec-url="${{PACKAGE_SPEC_DIR}}" \
    -build-contextdir="${{BUILD_CONTEXT_DIR}}" \
    -top-workdir="${{TOP_WORKDIR}}"
  echo "Successfully installed the packages"
}}

main() {{
  # The installer folder is the state folder by default, on /var, which COS mounts
  # noexec: run the installer from an exec bind mount of it, as setup_gpu.sh does.
  if findmnt -n -o OPTIONS --target "${{ANTHOS_INSTALLER_DIR}}" | grep -qw noexec; then
    mount --bind "${{ANTHOS_INSTALLER_DIR}}" "${{ANTHOS_INSTALLER_DIR}}"
    trap 'umount "${{ANTHOS_INSTALLER_DIR}}"' EXIT
    mount -o remount,exec "${{ANTHOS_INSTALLER_DIR}}"
  fi
  install_anthos_installer
  install_packages
}}

main
"#,
        pkgspec = shell_quote(pkgspec),
        dir = shell_quote(&dir.to_string_lossy()),
        version = shell_quote(&a.anthos_installer_version),
        context = shell_quote(&context_dir.to_string_lossy()),
        top = shell_quote(&a.top_work_dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::test_context;

    #[test]
    fn urls_stay_and_paths_are_in_the_build_context() {
        let d = tempfile::tempdir().unwrap();
        for url in ["gs://b/spec.tar.gz", "https://x/spec", "http://x/s"] {
            assert!(InstallPackagesArgs::is_url(url));
            assert_eq!(pkgspec_location(url, d.path()).unwrap(), url);
        }
        fs::create_dir(d.path().join("specs")).unwrap();
        assert_eq!(
            pkgspec_location("specs", d.path()).unwrap(),
            d.path().join("specs").to_string_lossy()
        );
        let e = pkgspec_location("missing.tar.gz", d.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"missing.tar.gz\" is not in the build context")
                && e.contains("-pkgspec-url"),
            "{e}"
        );
        assert!(!InstallPackagesArgs::is_url("file:///x") && !InstallPackagesArgs::is_url("gs:/x"));
    }

    #[test]
    fn the_script_runs_the_installer_on_the_spec() {
        let a = InstallPackagesArgs {
            anthos_installer_version: "anthos_installer-linux-amd64-v0.0.1-bb7e04e.tar.gz".into(),
            top_work_dir: "/var/lib/top work".into(),
            ..Default::default()
        };
        let text = install_script("gs://b/s", Path::new("/s"), Path::new("/s/user"), &a);
        assert!(
            text.contains("export PACKAGE_SPEC_DIR=gs://b/s\n"),
            "{text}"
        );
        assert!(text.contains("export BUILD_CONTEXT_DIR=/s/user\n"));
        assert!(text.contains("export TOP_WORKDIR='/var/lib/top work'\n"));
        assert!(text.contains(
            "export ANTHOS_INSTALLER_VERSION=anthos_installer-linux-amd64-v0.0.1-bb7e04e.tar.gz\n"
        ));
        let out = Command::new("bash")
            .args(["-n", "-c", &text])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// The whole step against fake-gcs-server: the release archive's anthos_installer (a
    /// script here) runs with the original's flags and the build's storage endpoint.
    #[tokio::test]
    async fn downloads_unpacks_and_runs_the_installer() {
        use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
        if !fake_gcs::require() {
            return;
        }
        let fake = FakeGcs::start("releases").await.unwrap();
        let d = tempfile::tempdir().unwrap();
        let ctx = test_context(d.path());
        let installer = "#!/bin/bash\necho \"$@\" \"$STORAGE_EMULATOR_HOST\" > \"$OUT\"\n";
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(installer.len() as u64);
        h.set_mode(0o755);
        tar.append_data(&mut h, "anthos_installer", installer.as_bytes())
            .unwrap();
        fake.put("releases", "ai.tar", &tar.into_inner().unwrap());
        fs::create_dir_all(ctx.state_dir.join("user/spec")).unwrap();
        let out = d.path().join("out");
        std::env::set_var("OUT", &out);
        let mut a = InstallPackagesArgs {
            build_context: "user".into(),
            pkg_spec_url: "spec".into(),
            top_work_dir: "/top".into(),
            anthos_installer_version: "ai.tar".into(),
            anthos_installer_release_bucket: "releases".into(),
            ..Default::default()
        };
        install(&ctx, &a, &Gcs::emulator(&fake.endpoint()), true).unwrap();
        let state = ctx.state_dir.display();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!(
                "install -pkgspec-url={state}/user/spec -build-contextdir={state}/user -top-workdir=/top {}\n",
                fake.endpoint()
            )
        );
        assert!(ctx.bin_dir().join("anthos_installer").exists());
        a.anthos_installer_version = "gone.tar".into();
        let e = format!(
            "{:#}",
            install(&ctx, &a, &Gcs::emulator(&fake.endpoint()), true).unwrap_err()
        );
        assert!(
            e.contains("\"gone.tar\" from bucket \"releases\"") && e.contains("404"),
            "{e}"
        );
    }

    #[test]
    fn bad_args_and_missing_specs_fail_before_any_download() {
        let d = tempfile::tempdir().unwrap();
        let ctx = test_context(d.path());
        let e = run(&ctx, &InstallPackagesArgs::default(), "").unwrap_err();
        assert!(e.to_string().contains("BuildContext is required"), "{e}");
        let a = InstallPackagesArgs {
            build_context: "user".into(),
            pkg_spec_url: "spec".into(),
            anthos_installer_version: "v.tar.gz".into(),
            anthos_installer_release_bucket: "bkt".into(),
            ..Default::default()
        };
        // No metadata server or storage answers here: the spec is checked first.
        let e = run(&ctx, &a, "http://127.0.0.1:9").unwrap_err().to_string();
        assert!(e.contains("\"spec\" is not in the build context"), "{e}");
    }
}
