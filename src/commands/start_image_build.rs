//! `start-image-build`: records the source image and archives the build context.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::{BuildConfig, SourceImage};
use cos_customizer_core::state::StateDir;

use crate::cli::StartOpts;

fn validate(o: &StartOpts) -> Result<()> {
    let given = [
        !o.image_name.is_empty(),
        o.image_milestone != 0,
        !o.image_family.is_empty(),
        o.image_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        bail!(
            "exactly one of -image-name, -image-milestone, -image-family or -image-file must be given"
        );
    }
    if o.image_file.is_some() {
        return Ok(());
    }
    for (flag, value) in [
        ("-gcs-bucket", &o.gcs_bucket),
        ("-gcs-workdir", &o.gcs_workdir),
        ("-image-project", &o.image_project),
    ] {
        if value.is_empty() {
            bail!(
                "{flag} is required for a GCE source image (or give -image-file for a local build)"
            );
        }
    }
    if o.image_milestone != 0 && o.image_project != "cos-cloud" {
        bail!(
            "-image-milestone can only be used with -image-project=cos-cloud, not {:?}",
            o.image_project
        );
    }
    if o.image_milestone < 0 {
        bail!(
            "-image-milestone must be a positive milestone number, not {}",
            o.image_milestone
        );
    }
    Ok(())
}

/// The source image as recorded in `config/source_image`.
///
/// A GCE family or milestone is recorded as asked and resolved by the GCE backend
/// when the build runs.
fn source_image(o: &StartOpts) -> Result<SourceImage> {
    let mut s = SourceImage {
        name: o.image_name.clone(),
        project: o.image_project.clone(),
        ..Default::default()
    };
    if let Some(file) = &o.image_file {
        let abs = std::fs::canonicalize(file).with_context(|| {
            format!(
                "reading -image-file {}: give an existing raw, qcow2 or tar.gz image",
                file.display()
            )
        })?;
        if !abs.is_file() {
            bail!(
                "-image-file {} is not a file: give a raw, qcow2 or tar.gz image",
                file.display()
            );
        }
        std::fs::File::open(&abs)
            .with_context(|| format!("opening -image-file {}", abs.display()))?;
        s.local_file = abs.to_string_lossy().into_owned();
        if s.name.is_empty() {
            s.name = image_stem(&abs);
        }
    }
    if !o.image_family.is_empty() {
        s.extra
            .insert("family".into(), o.image_family.clone().into());
    }
    if o.image_milestone != 0 {
        s.extra.insert("Milestone".into(), o.image_milestone.into());
    }
    Ok(s)
}

/// `cos-dev.img` → `cos-dev`, `disk.tar.gz` → `disk`: the name for `-image-suffix`.
pub fn image_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".tar.gz", ".tgz", ".qcow2", ".img", ".raw"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

pub fn run(state: &StateDir, compute_endpoint: &str, o: StartOpts) -> Result<()> {
    validate(&o)?;
    let source = source_image(&o)?;
    let build = BuildConfig {
        gcs_bucket: o.gcs_bucket.clone(),
        gcs_dir: o.gcs_workdir.clone(),
        gce_endpoint: compute_endpoint.to_string(),
        ..Default::default()
    };
    let _lock = state.lock("start-image-build", true)?;
    state
        .start(&o.build_context, &source, &build)
        .context("starting the image build")?;
    eprintln!(
        "Started a build of {} in {}",
        source.url(),
        state.root().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StartOpts {
        StartOpts {
            build_context: ".".into(),
            gcs_bucket: "b".into(),
            gcs_workdir: "w".into(),
            image_project: "cos-cloud".into(),
            image_name: String::new(),
            image_milestone: 0,
            image_family: String::new(),
            image_file: None,
        }
    }

    #[test]
    fn no_image_name() {
        let e = validate(&opts()).unwrap_err().to_string();
        assert!(e.contains("exactly one of"), "{e}");
    }

    #[test]
    fn duplicate_image_name() {
        let mut o = opts();
        o.image_name = "a".into();
        o.image_family = "f".into();
        assert!(validate(&o).is_err());
        o.image_family.clear();
        validate(&o).unwrap();
    }

    #[test]
    fn resolve_milestone_no_cos_cloud() {
        let mut o = opts();
        o.image_milestone = 69;
        validate(&o).unwrap();
        o.image_project = "other".into();
        let e = validate(&o).unwrap_err().to_string();
        assert!(e.contains("cos-cloud"), "{e}");
    }

    #[test]
    fn gce_source_needs_bucket_workdir_project() {
        let mut o = opts();
        o.image_name = "a".into();
        o.gcs_bucket.clear();
        assert!(validate(&o)
            .unwrap_err()
            .to_string()
            .contains("-gcs-bucket"));
    }

    #[test]
    fn local_file_needs_no_gcp_flag() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let o = StartOpts {
            image_file: Some(f.path().into()),
            gcs_bucket: String::new(),
            gcs_workdir: String::new(),
            image_project: String::new(),
            ..opts()
        };
        validate(&o).unwrap();
        let s = source_image(&o).unwrap();
        assert_eq!(
            s.local_file,
            f.path().canonicalize().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn missing_local_file_is_named() {
        let o = StartOpts {
            image_file: Some("/nonexistent/cos.img".into()),
            ..opts()
        };
        let e = format!("{:#}", source_image(&o).unwrap_err());
        assert!(e.contains("/nonexistent/cos.img"), "{e}");
    }

    #[test]
    fn stems() {
        assert_eq!(image_stem(Path::new("/a/cos-dev.tar.gz")), "cos-dev");
        assert_eq!(image_stem(Path::new("x.qcow2")), "x");
        assert_eq!(image_stem(Path::new("plain")), "plain");
    }
}
