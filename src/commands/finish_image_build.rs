//! `finish-image-build`: checks the flags against the recorded build, then runs the
//! preloader on the chosen backend and makes the output image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::Step;
use cos_customizer_common::{duration, env, protocol, sizing};
use cos_customizer_core::backend::{Backend, ImageFormat, OutputImage};
use cos_customizer_core::preload::{self, Preloader, Request};
use cos_customizer_core::state::{BuildState, StateDir};
use cos_customizer_core::{cidata, cloud_config};

use crate::cli::{AccelKind, BackendKind, FinishOpts};
use crate::commands::provisioner_bin;

const LICENSE_PREFIX: &str = "https://www.googleapis.com/compute/v1/";

/// Flag checks that need no state, as the original's `validate`.
fn validate(o: &FinishOpts, kind: BackendKind) -> Result<Duration> {
    let timeout = duration::parse(&o.timeout).context("checking -timeout")?;
    if timeout.is_zero() {
        bail!("-timeout must be longer than 0, e.g. -timeout=1h");
    }
    if !o.image_name.is_empty() && !o.image_suffix.is_empty() {
        bail!("only one of -image-name and -image-suffix may be given");
    }
    if kind == BackendKind::Gce {
        if o.image_name.is_empty() && o.image_suffix.is_empty() {
            bail!("one of -image-name or -image-suffix must be given");
        }
        for (flag, v) in [("-zone", &o.zone), ("-project", &o.project)] {
            if v.is_empty() {
                bail!("{flag} is required for a GCE build");
            }
        }
        if o.output_file.is_some() {
            bail!("-output-file is for QEMU builds; a GCE build makes the image -image-project/-image-name");
        }
    } else if o.output_file.is_none() {
        bail!("-output-file is required for a QEMU build: the output image file to write");
    }
    if o.deprecate_old_images && o.image_family.is_empty() {
        bail!("-deprecate-old-images needs -image-family");
    }
    if o.old_image_ttl != 0 && !o.deprecate_old_images {
        bail!("-old-image-ttl needs -deprecate-old-images");
    }
    if o.old_image_ttl < 0 {
        bail!("-old-image-ttl must not be negative");
    }
    if o.sbom_input_path.is_empty() != o.sbom_output_path.is_empty() {
        bail!("-sbom-input-path and -sbom-output-path must be given together");
    }
    if o.disk_size_gb < 0 {
        bail!("-disk-size-gb must not be negative");
    }
    Ok(timeout)
}

fn backend_kind(o: &FinishOpts, s: &BuildState) -> BackendKind {
    o.backend.unwrap_or(
        if !s.source.local_file.is_empty() || o.output_file.is_some() {
            BackendKind::Qemu
        } else {
            BackendKind::Gce
        },
    )
}

/// The original's licenses sanitising: comma lists, empties dropped, API prefix trimmed.
fn licenses(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix(LICENSE_PREFIX).unwrap_or(l).to_string())
        .collect()
}

fn labels(o: &FinishOpts, s: &BuildState) -> Result<BTreeMap<String, String>> {
    let mut out = if o.inherit_labels {
        s.source.labels()
    } else {
        BTreeMap::new()
    };
    let mut given = BTreeMap::new();
    for v in &o.labels {
        env::parse_flag_value(v, &mut given).context("checking -labels")?;
    }
    out.extend(given);
    Ok(out)
}

fn output_image(o: &FinishOpts, s: &BuildState) -> Result<OutputImage> {
    let name = if o.image_suffix.is_empty() {
        o.image_name.clone()
    } else {
        format!("{}{}", s.source.name, o.image_suffix)
    };
    let local_file = match &o.output_file {
        Some(p) => {
            let format = match &o.output_format {
                Some(f) => f.parse().context("checking -output-format")?,
                None => ImageFormat::from_path(p),
            };
            Some((absolute(p)?, format))
        }
        None => None,
    };
    Ok(OutputImage {
        name,
        project: o.image_project.clone(),
        family: o.image_family.clone(),
        labels: labels(o, s)?,
        licenses: licenses(&o.licenses),
        description: format!("Derivative of {}.", s.source.url()),
        local_file,
    })
}

/// An absolute path whose folder exists, so the output can be renamed into place.
fn absolute(p: &Path) -> Result<PathBuf> {
    let dir = cos_customizer_common::fsutil::parent_dir(p);
    let dir = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "checking -output-file {}: its folder {} must exist",
            p.display(),
            dir.display()
        )
    })?;
    let name = p
        .file_name()
        .with_context(|| format!("-output-file {} must name a file", p.display()))?;
    Ok(dir.join(name))
}

/// Copies the flags into the recorded build, as the original does before validateOEM.
fn apply(o: &FinishOpts, s: &mut BuildState, kind: BackendKind, timeout: Duration) -> Result<()> {
    let b = &mut s.build;
    b.project = o.project.clone();
    b.zone = o.zone.clone();
    b.machine_type = o.machine_type.clone();
    b.service_account = o.service_account.clone();
    b.disk_type = o.disk_type.clone();
    b.disk_size_gb = u64::try_from(o.disk_size_gb).ok().filter(|&gb| gb > 0);
    b.timeout = duration::format(timeout);
    b.network = Some(o.network.clone()).filter(|n| !n.is_empty());
    b.subnet = Some(o.subnet.clone()).filter(|n| !n.is_empty());
    if !o.gpu_type.is_empty() {
        b.gpu_type = Some(o.gpu_type.clone());
    }
    let has_gpu_step = s
        .prov
        .steps
        .iter()
        .any(|st| matches!(st, Step::InstallGpu(_)));
    match kind {
        BackendKind::Qemu if has_gpu_step => bail!(
            "install-gpu needs a GPU in the build VM, which the QEMU backend cannot attach: build on GCE (-backend=gce)"
        ),
        BackendKind::Gce if has_gpu_step && b.gpu_type.is_none() => bail!(
            "the build has an install-gpu step but no GPU type: give -gpu-type (e.g. -gpu-type=nvidia-tesla-t4)"
        ),
        _ => {}
    }
    s.prov.boot_disk.oem_size = Some(o.oem_size.clone()).filter(|o| !o.is_empty());
    sizing::validate_oem(s.build.disk_size_gb, &mut s.prov)?;
    s.prov.boot_disk.wait_for_disk_resize = sizing::resize_to_gb(&s.build, &s.prov).is_some();
    let context_url = match kind {
        BackendKind::Qemu => protocol::cidata_url(protocol::BUILD_CONTEXT_TAR),
        BackendKind::Gce => format!(
            "gs://{}/{}/cos-customizer/user_build_context.tar",
            s.build.gcs_bucket,
            s.build.gcs_dir.trim_matches('/')
        ),
    };
    s.prov.build_contexts = BTreeMap::from([("user".to_string(), context_url)]);
    Ok(())
}

pub fn run(state: &StateDir, o: FinishOpts) -> Result<()> {
    let mut s = state.load()?;
    let kind = backend_kind(&o, &s);
    // Bad flags keep the recorded steps: fix the flag and run finish again.
    let timeout = validate(&o, kind)?;
    apply(&o, &mut s, kind, timeout)?;
    let output = output_image(&o, &s)?;
    let workdir = tempfile::Builder::new()
        .prefix("cos-customizer-")
        .tempdir()
        .context("creating a temporary folder")?;
    let req = Request {
        user_data: cloud_config::user_data(),
        cidata: workdir.path().join("cidata.img"),
        source: s.source.clone(),
        build: s.build.clone(),
        prov: s.prov.clone(),
        output,
        timeout,
    };
    let backend_name = match kind {
        BackendKind::Qemu => "qemu",
        BackendKind::Gce => "gce",
    };
    if o.dry_run {
        print!("{}", preload::plan(&req, backend_name)?);
        return Ok(());
    }
    if kind == BackendKind::Gce {
        bail!(
            "this build of cos-customizer has only the QEMU backend; build locally with start-image-build -image-file and finish-image-build -output-file (your build state is kept)"
        );
    }
    // A missing provisioner is a set-up mistake: say so and keep the state.
    let provisioner = provisioner_bin::locate(o.provisioner.as_deref())?;
    let result = build(state, &req, &provisioner, o.accel);
    // As the original: once a build has run, its state is gone whatever the outcome.
    let removed = state.remove();
    result?;
    removed
}

fn build(state: &StateDir, req: &Request, provisioner: &Path, accel: AccelKind) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(crate::commands::qemu::open(accel)?);
        if backend.image_exists(&req.output).await? {
            eprintln!(
                "Result image {} already exists. Exiting.",
                req.output.display_name()
            );
            return Ok(());
        }
        let started = std::time::Instant::now();
        let files = cidata::cidata_files(
            &req.prov,
            provisioner,
            Some(&state.context_archive()),
            &format!("cos-customizer-{}", std::process::id()),
        )?;
        cidata::build_cidata(&req.cidata, &files).context("building the CIDATA disk")?;
        eprintln!(
            "Built the CIDATA disk in {:.2}s; provisioner config: {}",
            started.elapsed().as_secs_f64(),
            serde_json::to_string(&req.prov).context("encoding the provisioner config")?
        );
        let preloader = Preloader::new(backend.clone());
        let mut log = |line: &str| println!("{line}");
        let result = tokio::select! {
            r = preloader.run(req, &mut log) => r,
            s = interrupted() => Err(s),
        };
        let leftovers = preloader.cleanup().await;
        for l in &leftovers {
            eprintln!("warning: {l}");
        }
        match result {
            Ok(()) => {
                eprintln!(
                    "Image {} created in {}s",
                    req.output.display_name(),
                    started.elapsed().as_secs()
                );
                Ok(())
            }
            Err(e) => Err(e.context("the image build failed; no output image was made")),
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM, so the build's resources are removed before exiting.
async fn interrupted() -> anyhow::Error {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => return anyhow::Error::new(e).context("listening for SIGTERM"),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => anyhow::anyhow!("interrupted (Ctrl-C)"),
        _ = term.recv() => anyhow::anyhow!("terminated (SIGTERM)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn opts(args: &[&str]) -> FinishOpts {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            o: FinishOpts,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv).unwrap().o
    }

    #[test]
    fn validate_failures() {
        let gce = |a: &[&str]| validate(&opts(a), BackendKind::Gce);
        gce(&["--image-name=x", "--zone=z", "--project=p"]).unwrap();
        assert!(gce(&["--image-name=x", "--zone=z", "--project=p", "--timeout=abc"]).is_err());
        assert!(gce(&[
            "--image-name=x",
            "--image-suffix=-s",
            "--zone=z",
            "--project=p"
        ])
        .is_err());
        assert!(gce(&["--zone=z", "--project=p"]).is_err());
        assert!(gce(&["--image-name=x", "--project=p"]).is_err());
        assert!(gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--deprecate-old-images=true"
        ])
        .is_err());
        assert!(gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--old-image-ttl=5"
        ])
        .is_err());
        assert!(gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--sbom-input-path=a"
        ])
        .is_err());
        let e = validate(&opts(&[]), BackendKind::Qemu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("-output-file"), "{e}");
        validate(&opts(&["--output-file=o.img"]), BackendKind::Qemu).unwrap();
    }

    #[test]
    fn licenses_are_sanitised() {
        let l = licenses(&[
            "https://www.googleapis.com/compute/v1/projects/p/global/licenses/a,".into(),
            "projects/p/global/licenses/b".into(),
        ]);
        assert_eq!(
            l,
            [
                "projects/p/global/licenses/a",
                "projects/p/global/licenses/b"
            ]
        );
    }
}
