//! The inputs the SBOM tests share.

use anyhow::Result;
use cos_customizer_common::config::SourceImage;

use super::Input;

/// The original's `TestGenerateSBOM` "ValidInput", as the JSON a user writes.
pub const VALID_INPUT: &str = r#"{
  "outputImageName": "image1",
  "outputImageVersion": "123",
  "creators": ["Organization: G"],
  "supplier": "Organization: G",
  "SPDXPackages": [
{
  "name": "pkg1",
  "SPDXID": "SPDXRef-pkg1",
  "versionInfo": "111",
  "supplier": "Organization: K",
  "filesAnalyzed": false,
  "licenseDeclared": "BSD-3-Clause AND Apache-2.0",
  "licenseConcluded": "BSD-3-Clause AND Apache-2.0",
  "downloadLocation": "test.com",
  "externalRefs": [
    {
      "referenceCategory": "SECURITY",
      "referenceType": "cpe23Type",
      "referenceLocator": "cpe:/a:vendor:pkg-1:1.2.3"
    }
  ],
  "checksums": [
    {"algorithm": "SHA1", "checksumValue": "11d7774ac38f40e009dcee453a760750aea75bbd"}
  ]
}
  ],
  "SBOMPackages": [
{
  "name": "pkg2",
  "spdxDocument": "doc-url",
  "algorithm": "SHA1",
  "checksumValue": "11d7774ac38f40e009dcee453a760750aea11111"
}
  ],
  "hasExtractedLicensingInfos": [
{"licenseId": "LicenseRef-license1", "extractedText": "test license", "seeAlsos": ["license-url"]}
  ]
}"#;

pub fn parse(json: &str) -> Result<Input> {
    Input::parse("SBOM input sbom.json", json.as_bytes())
}

pub fn source(project: &str, name: &str) -> SourceImage {
    SourceImage {
        name: name.into(),
        project: project.into(),
        ..SourceImage::default()
    }
}
