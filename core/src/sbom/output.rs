//! The SBOM `finish-image-build` was asked for (`-sbom-input-path`/`-sbom-output-path`):
//! read and checked before the build ([`Sbom::prepare`]), since the state folder, whose build
//! context archive holds the input, goes once the build has run, and a mistake in the input
//! should not cost a build. Once the image is built, [`Sbom::write`] makes the document and
//! writes it to a `gs://` folder (as the original) or a local folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use cos_customizer_common::config::SourceImage;
use cos_customizer_common::fsutil::write_atomic;

use super::generation::generate;
use super::lookup::{CosImageSbom, COS_TOOLS_BUCKET};
use super::types::{Input, SbomPackage, Stamp};
use crate::preload::LogLine;

/// Cloud Storage as the SBOM uses it.
#[async_trait]
pub trait Storage: Send + Sync {
    /// An object of a public bucket (`cos-tools`), read without credentials.
    async fn read_public(&self, bucket: &str, object: &str) -> Result<Vec<u8>>;
    /// Writes an object with the user's credentials.
    async fn write(&self, bucket: &str, object: &str, data: Vec<u8>) -> Result<()>;
}

/// The SBOM asked for, checked and waiting for the image.
#[derive(Debug)]
pub struct Sbom {
    input: Input,
    input_path: String,
    /// The source image's published SBOM when the source is a `cos-cloud` image; an error
    /// for one whose name has no build number, reported when the SBOM is written.
    cos: Result<Option<CosImageSbom>>,
    output_image: String,
    destination: Destination,
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

impl Sbom {
    /// Reads and checks the input `input_path` in the build context archive `archive` and
    /// the output folder `output_path`, and checks that the document for `output_image`,
    /// built from `source`, can be made.
    pub fn prepare(
        archive: &Path,
        input_path: &str,
        output_path: &str,
        source: &SourceImage,
        output_image: &str,
    ) -> Result<Sbom> {
        let input = Input::from_archive(archive, input_path)?;
        let destination = Destination::parse(output_path)?;
        let cos = CosImageSbom::for_source(source);
        // The same document as after the build, but for the base SBOM's checksum, so that
        // clashing IDs are found now.
        let base = cos.as_ref().ok().and_then(Option::as_ref);
        generate(
            &input,
            output_image,
            base.map(|b| b.reference(b"")).as_ref(),
            &Stamp::now(),
        )
        .with_context(|| format!("checking -sbom-input-path {input_path}"))?;
        Ok(Sbom {
            input,
            input_path: input_path.to_string(),
            cos,
            output_image: output_image.to_string(),
            destination,
        })
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
    pub async fn write(&self, storage: &dyn Storage, log: &mut dyn FnMut(LogLine)) -> Result<()> {
        let base = self.base(storage, log).await;
        let doc = generate(
            &self.input,
            &self.output_image,
            base.as_ref(),
            &Stamp::now(),
        )?;
        let json = doc.to_json()?;
        let target = self.destination.describe(doc.file_name());
        let written = match &self.destination {
            Destination::Gcs { bucket, .. } => {
                storage
                    .write(bucket, &self.destination.object(doc.file_name()), json)
                    .await
            }
            Destination::Local(dir) => write_atomic(&dir.join(doc.file_name()), &json),
        };
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
    async fn base(
        &self,
        storage: &dyn Storage,
        log: &mut dyn FnMut(LogLine),
    ) -> Option<SbomPackage> {
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
        match storage.read_public(COS_TOOLS_BUCKET, cos.object()).await {
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
}
