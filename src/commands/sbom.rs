//! `finish-image-build -sbom-input-path/-sbom-output-path`: the output image's SPDX SBOM.
//!
//! Everything is read and checked before the build ([`Sbom::prepare`]), since the state
//! folder, whose build context archive holds the input, goes once the build has run, and a
//! mistake in the input should not cost a build. Once the image is built, [`Sbom::write`]
//! makes the document and writes it to a `gs://` folder (as the original) or a local folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cos_customizer_common::fsutil::write_atomic;
use cos_customizer_core::finish::{FinishOptions, ImageName, ImageOptions};
use cos_customizer_core::preload::LogLine;
use cos_customizer_core::sbom::{self, CosImageSbom, Input, SbomPackage, Stamp, COS_TOOLS_BUCKET};
use cos_customizer_core::state::StateDir;
use cos_customizer_gce::connect;

use crate::cli::FinishOpts;

/// The SBOM asked for, checked and waiting for the image.
pub struct Sbom {
    input: Input,
    input_path: String,
    /// The source image's published SBOM when the source is a `cos-cloud` image; an error
    /// for one whose name has no build number, reported when the SBOM is written.
    cos: Result<Option<CosImageSbom>>,
    output_image: String,
    destination: Destination,
    storage_endpoint: String,
}

/// Where the document goes.
#[derive(Debug, PartialEq)]
enum Destination {
    Gcs { bucket: String, folder: String },
    Local(PathBuf),
}

impl Destination {
    fn parse(path: &str) -> Result<Destination> {
        if let Some(rest) = path.strip_prefix("gs://") {
            let (bucket, folder) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("-sbom-output-path {path:?} names no bucket: give gs://BUCKET/FOLDER");
            }
            return Ok(Destination::Gcs {
                bucket: bucket.to_string(),
                folder: folder.trim_matches('/').to_string(),
            });
        }
        if path.contains("://") {
            bail!("-sbom-output-path {path:?}: give gs://BUCKET/FOLDER or a local folder");
        }
        let dir = std::fs::canonicalize(path)
            .ok()
            .filter(|d| d.is_dir())
            .with_context(|| {
                format!(
                    "-sbom-output-path {path:?} is not a folder: create it, or give \
                     gs://BUCKET/FOLDER"
                )
            })?;
        Ok(Destination::Local(dir))
    }

    /// Where the document named `file` goes, as the user writes it.
    fn describe(&self, file: &str) -> String {
        match self {
            Destination::Gcs { bucket, .. } => format!("gs://{bucket}/{}", self.object(file)),
            Destination::Local(dir) => dir.join(file).display().to_string(),
        }
    }

    fn object(&self, file: &str) -> String {
        match self {
            Destination::Gcs { folder, .. } if !folder.is_empty() => format!("{folder}/{file}"),
            _ => file.to_string(),
        }
    }
}

/// The name the image gets: `-image-name`, the source's name with `-image-suffix`, or for a
/// local build without either, the output file's name without its image extension.
fn output_image_name(image: &ImageOptions, source_name: &str) -> String {
    match &image.name {
        ImageName::Unnamed => image
            .local_file
            .as_ref()
            .map(|(path, _)| file_image_name(path))
            .unwrap_or_default(),
        named => named.resolve(source_name),
    }
}

fn file_image_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    [".tar.gz", ".tgz", ".qcow2", ".img", ".raw"]
        .iter()
        .find(|ext| lower.len() > ext.len() && lower.ends_with(*ext))
        .map_or(name.clone(), |ext| {
            name[..name.len() - ext.len()].to_string()
        })
}

impl Sbom {
    /// Reads and checks the input in the build context and the output folder, and checks that
    /// the document can be made; `None` when no SBOM is asked for.
    pub fn prepare(
        state: &StateDir,
        o: &FinishOpts,
        opts: &FinishOptions,
        storage_endpoint: &str,
    ) -> Result<Option<Sbom>> {
        if o.sbom_input_path.is_empty() {
            return Ok(None);
        }
        let source = state.load()?.source;
        let input = Input::from_archive(&state.context_archive(), &o.sbom_input_path)?;
        let destination = Destination::parse(&o.sbom_output_path)?;
        let output_image = output_image_name(&opts.image, &source.name);
        let cos = CosImageSbom::for_source(&source);
        // The same document as after the build, but for the base SBOM's checksum, so that
        // clashing IDs are found now.
        let base = cos.as_ref().ok().and_then(Option::as_ref);
        sbom::generate(
            &input,
            &output_image,
            base.map(|b| b.reference(b"")).as_ref(),
            &Stamp::now(),
        )
        .with_context(|| format!("checking -sbom-input-path {}", o.sbom_input_path))?;
        Ok(Some(Sbom {
            input,
            input_path: o.sbom_input_path.clone(),
            cos,
            output_image,
            destination,
            storage_endpoint: storage_endpoint.to_string(),
        }))
    }

    /// One line for `-dry-run`.
    pub fn plan(&self) -> String {
        format!(
            "SBOM: {} from {} in the build context",
            self.destination
                .describe(&self.input.document_name(&self.output_image)),
            self.input_path
        )
    }

    /// Makes the document for the built image and writes it.
    pub async fn write(&self, log: &mut dyn FnMut(LogLine)) -> Result<()> {
        let base = self.base(log).await;
        let doc = sbom::generate(
            &self.input,
            &self.output_image,
            base.as_ref(),
            &Stamp::now(),
        )?;
        let json = doc.to_json()?;
        let target = self.destination.describe(doc.file_name());
        let written = async {
            match &self.destination {
                Destination::Gcs { bucket, .. } => {
                    let gcs = connect::storage(&self.storage_endpoint)?;
                    gcs.upload_bytes(bucket, &self.destination.object(doc.file_name()), json)
                        .await
                }
                Destination::Local(dir) => write_atomic(&dir.join(doc.file_name()), &json),
            }
        }
        .await;
        written.with_context(|| {
            format!(
                "the image {} is built, but its SBOM could not be written to {target}",
                self.output_image
            )
        })?;
        log(LogLine::Note(&format!("SBOM written to {target}")));
        Ok(())
    }

    /// The ref to the source image's published SBOM; as the original, a source without one
    /// is noted and the SBOM goes on without it.
    async fn base(&self, log: &mut dyn FnMut(LogLine)) -> Option<SbomPackage> {
        let without = "the SBOM goes on without it: add the base image to the SBOM input's \
                       SBOMPackages if it should be there";
        let cos = match &self.cos {
            Ok(None) => return None,
            Ok(Some(cos)) => cos,
            Err(e) => {
                log(LogLine::Note(&format!("warning: {e:#}; {without}")));
                return None;
            }
        };
        let url = format!("gs://{COS_TOOLS_BUCKET}/{}", cos.object());
        log(LogLine::Note(&format!(
            "The source is a cos-cloud image: reading its SBOM {url}"
        )));
        let read = async {
            connect::public_storage(&self.storage_endpoint)?
                .download(COS_TOOLS_BUCKET, cos.object())
                .await
        };
        match read.await {
            Ok(data) => Some(cos.reference(&data)),
            Err(e) => {
                log(LogLine::Note(&format!(
                    "warning: could not read the source image's SBOM: {e:#}; {without}"
                )));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_core::backend::ImageFormat;

    #[test]
    fn destinations_are_gcs_folders_or_local_folders() {
        assert_eq!(
            Destination::parse("gs://b/f/g/").unwrap(),
            Destination::Gcs {
                bucket: "b".into(),
                folder: "f/g".into()
            }
        );
        let bare = Destination::parse("gs://b").unwrap();
        assert_eq!(bare.describe("x.json"), "gs://b/x.json");
        assert_eq!(
            Destination::parse("gs://b/f").unwrap().describe("x.json"),
            "gs://b/f/x.json"
        );
        let dir = tempfile::tempdir().unwrap();
        let local = Destination::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(
            local.describe("x.json"),
            dir.path()
                .canonicalize()
                .unwrap()
                .join("x.json")
                .display()
                .to_string()
        );
        for bad in ["gs://", "gs:///f", "https://x/y", "/nonexistent/folder"] {
            let e = Destination::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("gs://BUCKET/FOLDER"), "{e}");
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(Destination::parse(file.to_str().unwrap()).is_err());
    }

    #[test]
    fn a_local_build_names_its_image_after_the_output_file() {
        let image = |name: ImageName, file: Option<&str>| ImageOptions {
            name,
            project: String::new(),
            family: String::new(),
            labels: Default::default(),
            inherit_labels: false,
            licenses: vec![],
            local_file: file.map(|f| (PathBuf::from(f), ImageFormat::Raw)),
            overwrite: false,
        };
        let name = |i: ImageOptions| output_image_name(&i, "cos-dev");
        assert_eq!(name(image(ImageName::Name("n".into()), None)), "n");
        assert_eq!(
            name(image(ImageName::Suffix("-x".into()), None)),
            "cos-dev-x"
        );
        for (file, want) in [
            ("/o/my-cos.img", "my-cos"),
            ("/o/my-cos.QCOW2", "my-cos"),
            ("/o/my-cos.tar.gz", "my-cos"),
            ("/o/my.cos", "my.cos"),
            ("/o/.img", ".img"),
        ] {
            assert_eq!(name(image(ImageName::Unnamed, Some(file))), want, "{file}");
        }
    }
}
