//! Where the SBOM of a `cos-cloud` source image is published, and the ref to it.

use anyhow::{bail, Result};
use cos_customizer_common::config::SourceImage;
use sha2::{Digest, Sha256};

use super::types::SbomPackage;

/// The bucket where Google publishes the SBOM of each `cos-cloud` image.
pub const COS_TOOLS_BUCKET: &str = "cos-tools";
/// The file name of a COS image's SBOM in [`COS_TOOLS_BUCKET`].
const COS_IMAGE_SBOM: &str = "sbom.spdx.json";
/// How the external ref names a COS image's SBOM: its public URL, whatever endpoint read it.
const COS_TOOLS_PUBLIC_URL: &str = "https://storage.googleapis.com/cos-tools";
const COS_CLOUD: &str = "cos-cloud";

/// Where the SBOM of a `cos-cloud` source image is published:
/// `gs://cos-tools/<build>/lakitu[-arm64]/sbom.spdx.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct CosImageSbom {
    image: String,
    object: String,
}

impl CosImageSbom {
    /// The published SBOM of `source` when it is a `cos-cloud` image, else `None`. Fails for a
    /// `cos-cloud` image whose name does not end in a build number.
    pub fn for_source(source: &SourceImage) -> Result<Option<CosImageSbom>> {
        if source.project != COS_CLOUD || !source.local_file.is_empty() {
            return Ok(None);
        }
        let parts: Vec<&str> = source.name.split('-').collect();
        let build = match parts.len().checked_sub(3).map(|i| &parts[i..]) {
            Some(b)
                if b.iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())) =>
            {
                b.join(".")
            }
            _ => bail!(
                "cannot tell the build number of cos-cloud image {:?}: a COS image's name ends \
                 in it, as cos-stable-109-17800-66-27 (build 17800.66.27)",
                source.name
            ),
        };
        let board = if source.name.contains("arm64") {
            "lakitu-arm64"
        } else {
            "lakitu"
        };
        Ok(Some(CosImageSbom {
            image: source.name.clone(),
            object: format!("{build}/{board}/{COS_IMAGE_SBOM}"),
        }))
    }

    /// The object in [`COS_TOOLS_BUCKET`].
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The external ref to the published SBOM whose content is `sbom`.
    pub fn reference(&self, sbom: &[u8]) -> SbomPackage {
        SbomPackage {
            name: self.image.clone(),
            spdx_document: format!("{COS_TOOLS_PUBLIC_URL}/{}", self.object),
            algorithm: "SHA256".to_string(),
            checksum_value: hex(&Sha256::digest(sbom)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::testdata::source;

    #[test]
    fn a_cos_cloud_source_has_its_published_sbom_found() {
        let find = |project: &str, name: &str| {
            CosImageSbom::for_source(&source(project, name))
                .unwrap()
                .map(|s| s.object().to_string())
        };
        assert_eq!(
            find("cos-cloud", "cos-stable-109-17800-66-27").as_deref(),
            Some("17800.66.27/lakitu/sbom.spdx.json")
        );
        assert_eq!(
            find("cos-cloud", "cos-arm64-beta-121-18867-0-94").as_deref(),
            Some("18867.0.94/lakitu-arm64/sbom.spdx.json")
        );
        assert_eq!(find("my-project", "cos-stable-109-17800-66-27"), None);
        let local = SourceImage {
            local_file: "/x/cos-stable-109-17800-66-27.img".into(),
            ..source("cos-cloud", "cos-stable-109-17800-66-27")
        };
        assert_eq!(CosImageSbom::for_source(&local).unwrap(), None);
        for bad in ["cos-stable", "my-image-1-2", "1-2"] {
            let e = CosImageSbom::for_source(&source("cos-cloud", bad)).unwrap_err();
            assert!(e.to_string().contains("build number"), "{bad}: {e}");
        }
    }
}
