//! `start-image-build`: resolves and records the source image and archives the build context.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::{BuildConfig, SourceImage};
use cos_customizer_core::state::StateDir;
use cos_customizer_gce::compute::model::Image;
use cos_customizer_gce::connect;
use cos_customizer_gce::source::{self, Arch, SourceQuery};
use serde_json::Value;

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

/// The source image of a local build, as recorded in `config/source_image`.
fn local_source(o: &StartOpts, file: &Path) -> Result<SourceImage> {
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
    std::fs::File::open(&abs).with_context(|| format!("opening -image-file {}", abs.display()))?;
    // `validate` lets no -image-name come with a file: the stem names it for -image-suffix.
    Ok(SourceImage {
        name: image_stem(&abs),
        project: o.image_project.clone(),
        local_file: abs.to_string_lossy().into_owned(),
        ..Default::default()
    })
}

/// What the GCE source flags ask for (checked by `validate`: exactly one is given).
fn gce_query(o: &StartOpts) -> Result<SourceQuery> {
    Ok(if o.image_milestone != 0 {
        SourceQuery::Milestone(u32::try_from(o.image_milestone).with_context(|| {
            format!(
                "-image-milestone {} is not a COS milestone: give one such as 113",
                o.image_milestone
            )
        })?)
    } else if !o.image_family.is_empty() {
        SourceQuery::Family(o.image_family.clone())
    } else {
        SourceQuery::Name(o.image_name.clone())
    })
}

/// Resolves the GCE source image now, as the original does, so a family or milestone means
/// the image it named when the build started, and the name the original's
/// `finish-image-build` reads is set.
fn gce_source(compute_endpoint: &str, o: &StartOpts) -> Result<SourceImage> {
    let query = gce_query(o)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let image = rt.block_on(async {
        let compute = connect::compute(compute_endpoint)?;
        // The machine type is only chosen at finish-image-build: x86, as its default is.
        source::resolve(&compute, &o.image_project, &query, Arch::default()).await
    })?;
    match &query {
        SourceQuery::Milestone(m) => eprintln!("Using image {} from milestone {m}", image.name),
        SourceQuery::Family(f) => eprintln!("Using image {} from family {f}", image.name),
        SourceQuery::Name(_) => {}
    }
    if let Some(d) = image
        .deprecated
        .as_ref()
        .filter(|d| !d.state.is_empty() && d.state != "ACTIVE")
    {
        let replacement = d
            .replacement
            .as_deref()
            .map(|r| format!(" (replacement: {r})"))
            .unwrap_or_default();
        eprintln!(
            "Warning: source image {} is {}{replacement}",
            image.name, d.state
        );
    }
    recorded(&o.image_project, &image)
}

/// The resolved image as the original records it: a `compute.Image` as JSON plus `Project`.
/// The original keeps only the name; the rest of what was read (labels, licenses, family, ...)
/// goes under the resource's own field names, which the original's reader takes as the same
/// `compute.Image` fields, so `-inherit-labels` needs no second call. Empty fields are left out,
/// as Go's `omitempty` does.
fn recorded(project: &str, image: &Image) -> Result<SourceImage> {
    let Value::Object(mut fields) =
        serde_json::to_value(image).context("encoding the source image")?
    else {
        bail!(
            "the source image {} did not encode as a JSON object",
            image.name
        );
    };
    // `shift_remove` keeps the resource's field order (`remove` would swap the last one in).
    fields.shift_remove("name");
    fields.retain(|_, v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    });
    Ok(SourceImage {
        name: image.name.clone(),
        project: project.to_string(),
        local_file: String::new(),
        extra: fields,
    })
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
    // Resolved before the state folder is touched: a wrong flag leaves nothing behind.
    let source = match &o.image_file {
        Some(file) => local_source(&o, file)?,
        None => gce_source(compute_endpoint, &o)?,
    };
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
        let s = local_source(&o, f.path()).unwrap();
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
        let e = format!(
            "{:#}",
            local_source(&o, Path::new("/nonexistent/cos.img")).unwrap_err()
        );
        assert!(e.contains("/nonexistent/cos.img"), "{e}");
    }

    #[test]
    fn milestones_beyond_u32_are_refused_by_name() {
        let o = StartOpts {
            image_milestone: 1 << 40,
            ..opts()
        };
        let e = format!("{:#}", gce_query(&o).unwrap_err());
        assert!(e.contains("-image-milestone 1099511627776"), "{e}");
        let o = StartOpts {
            image_family: "cos-stable".into(),
            ..opts()
        };
        assert_eq!(
            gce_query(&o).unwrap(),
            SourceQuery::Family("cos-stable".into())
        );
    }

    #[test]
    fn the_record_is_the_image_resource_plus_project() {
        let image: Image = serde_json::from_value(serde_json::json!({
            "name": "cos-dev-125-19100-0-0", "family": "cos-dev", "labels": {"channel": "dev"},
            "licenses": [], "diskSizeGb": "10", "status": "READY", "architecture": "X86_64",
            "creationTimestamp": "2025-09-01T10:00:00.000-07:00"
        }))
        .unwrap();
        let s = recorded("cos-cloud", &image).unwrap();
        assert_eq!(
            s.url(),
            "projects/cos-cloud/global/images/cos-dev-125-19100-0-0"
        );
        assert_eq!(s.labels()["channel"], "dev");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"name":"cos-dev-125-19100-0-0","Project":"cos-cloud","family":"cos-dev","labels":{"channel":"dev"},"creationTimestamp":"2025-09-01T10:00:00.000-07:00","architecture":"X86_64","diskSizeGb":"10","status":"READY"}"#
        );
    }

    #[test]
    fn a_source_image_written_by_the_original_reads() {
        // Byte for byte what the original's `saveImage` writes: Go sorts the map's keys and
        // `omitempty` drops the empty labels.
        let go = br#"{"Project":"cos-cloud","name":"cos-stable-109-17800-66-27"}"#;
        let s: SourceImage =
            cos_customizer_common::config::parse_json(Path::new("config/source_image"), go)
                .unwrap();
        assert_eq!(s.name, "cos-stable-109-17800-66-27");
        assert_eq!(s.project, "cos-cloud");
        assert!(s.local_file.is_empty() && s.extra.is_empty() && s.labels().is_empty());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"cos-stable-109-17800-66-27","Project":"cos-cloud"}"#
        );
    }

    #[test]
    fn stems() {
        assert_eq!(image_stem(Path::new("/a/cos-dev.tar.gz")), "cos-dev");
        assert_eq!(image_stem(Path::new("x.qcow2")), "x");
        assert_eq!(image_stem(Path::new("plain")), "plain");
    }
}
