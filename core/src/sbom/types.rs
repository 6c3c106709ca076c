//! The SPDX 2.2 document's parts and the SBOM input's, as `tools-golang` v2_2 reads and
//! writes them.

use serde::{Deserialize, Serialize};

use super::validation::{
    de_algorithm, de_annotator, de_category, de_creators, de_idstring, de_license_ref,
    de_originator, de_spdx_id, de_supplier, ser_category,
};

/// The user's SBOM input file, checked.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(rename = "outputImageName", default)]
    pub(super) output_image_name: String,
    #[serde(rename = "outputImageVersion", default)]
    pub(super) output_image_version: String,
    #[serde(default, deserialize_with = "de_creators")]
    pub(super) creators: Vec<String>,
    #[serde(default, deserialize_with = "de_supplier")]
    pub(super) supplier: Option<String>,
    #[serde(rename = "SPDXPackages", default)]
    pub(super) spdx_packages: Vec<Package>,
    #[serde(rename = "SBOMPackages", default)]
    pub(super) sbom_packages: Vec<SbomPackage>,
    #[serde(rename = "hasExtractedLicensingInfos", default)]
    pub(super) licenses: Vec<OtherLicense>,
}

/// Another SPDX document the image contains (the input's `SBOMPackages`, and a `cos-cloud`
/// source image's SBOM): an external document ref and a CONTAINS relationship.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbomPackage {
    /// Names the ref: `DocumentRef-<name>`.
    #[serde(deserialize_with = "de_idstring")]
    pub name: String,
    /// The document's URI.
    #[serde(rename = "spdxDocument")]
    pub spdx_document: String,
    /// The checksum's algorithm, such as `SHA256`.
    #[serde(deserialize_with = "de_algorithm")]
    pub algorithm: String,
    /// The document's checksum, in hex.
    #[serde(rename = "checksumValue")]
    pub checksum_value: String,
}

/// An SPDX 2.2 package, as `tools-golang` v2_2 reads and writes it (without `files`, which an
/// SBOM input has no way to use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Package {
    pub(super) name: String,
    #[serde(rename = "SPDXID", deserialize_with = "de_spdx_id")]
    pub(super) spdx_id: String,
    #[serde(
        rename = "versionInfo",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub(super) version: String,
    #[serde(
        rename = "packageFileName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub(super) file_name: String,
    #[serde(
        default,
        deserialize_with = "de_supplier",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) supplier: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_originator",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) originator: Option<String>,
    #[serde(rename = "downloadLocation", default)]
    pub(super) download_location: String,
    /// SPDX's default when left out is true, as `tools-golang` reads it.
    #[serde(rename = "filesAnalyzed", default = "yes")]
    pub(super) files_analyzed: bool,
    #[serde(
        rename = "packageVerificationCode",
        default,
        skip_serializing_if = "VerificationCode::is_empty"
    )]
    pub(super) verification_code: VerificationCode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) checksums: Vec<Checksum>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) homepage: String,
    #[serde(
        rename = "sourceInfo",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub(super) source_info: String,
    #[serde(rename = "licenseConcluded", default)]
    pub(super) license_concluded: String,
    #[serde(
        rename = "licenseInfoFromFiles",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(super) license_info_from_files: Vec<String>,
    #[serde(rename = "licenseDeclared", default)]
    pub(super) license_declared: String,
    #[serde(
        rename = "licenseComments",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub(super) license_comments: String,
    #[serde(rename = "copyrightText", default)]
    pub(super) copyright_text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) summary: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) comment: String,
    #[serde(
        rename = "externalRefs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(super) external_refs: Vec<PackageExternalRef>,
    #[serde(
        rename = "attributionTexts",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(super) attribution_texts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) annotations: Vec<Annotation>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerificationCode {
    #[serde(rename = "packageVerificationCodeValue", default)]
    pub(super) value: String,
    #[serde(
        rename = "packageVerificationCodeExcludedFiles",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(super) excluded_files: Vec<String>,
}

impl VerificationCode {
    fn is_empty(&self) -> bool {
        self.value.is_empty() && self.excluded_files.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Checksum {
    #[serde(deserialize_with = "de_algorithm")]
    pub(super) algorithm: String,
    #[serde(rename = "checksumValue")]
    pub(super) value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PackageExternalRef {
    /// Read with `-` (`PACKAGE-MANAGER`) and written with `_`, which is what the SPDX 2.2
    /// JSON schema's enum has, as `tools-golang` does.
    #[serde(
        rename = "referenceCategory",
        deserialize_with = "de_category",
        serialize_with = "ser_category"
    )]
    pub(super) category: String,
    #[serde(rename = "referenceType")]
    pub(super) kind: String,
    #[serde(rename = "referenceLocator")]
    pub(super) locator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Annotation {
    #[serde(deserialize_with = "de_annotator")]
    pub(super) annotator: String,
    #[serde(rename = "annotationDate")]
    pub(super) date: String,
    #[serde(rename = "annotationType")]
    pub(super) kind: String,
    pub(super) comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OtherLicense {
    #[serde(rename = "licenseId", deserialize_with = "de_license_ref")]
    pub(super) id: String,
    #[serde(rename = "extractedText")]
    pub(super) extracted_text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) name: String,
    #[serde(rename = "seeAlsos", default, skip_serializing_if = "Vec::is_empty")]
    pub(super) see_also: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) comment: String,
}

/// The SPDX 2.2 document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    #[serde(rename = "spdxVersion")]
    pub(super) spdx_version: String,
    #[serde(rename = "dataLicense")]
    pub(super) data_license: String,
    #[serde(rename = "SPDXID")]
    pub(super) spdx_id: String,
    pub(super) name: String,
    #[serde(rename = "documentNamespace")]
    pub(super) namespace: String,
    #[serde(rename = "externalDocumentRefs", skip_serializing_if = "Vec::is_empty")]
    pub(super) external_refs: Vec<ExternalDocumentRef>,
    #[serde(rename = "creationInfo")]
    pub(super) creation_info: CreationInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) packages: Vec<Package>,
    #[serde(
        rename = "hasExtractedLicensingInfos",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(super) licenses: Vec<OtherLicense>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) relationships: Vec<Relationship>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct ExternalDocumentRef {
    #[serde(rename = "externalDocumentId")]
    pub(super) id: String,
    #[serde(rename = "spdxDocument")]
    pub(super) uri: String,
    pub(super) checksum: Checksum,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct CreationInfo {
    pub(super) creators: Vec<String>,
    pub(super) created: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Relationship {
    #[serde(rename = "spdxElementId")]
    pub(super) element: String,
    #[serde(rename = "relatedSpdxElement")]
    pub(super) related: String,
    #[serde(rename = "relationshipType")]
    pub(super) kind: &'static str,
}

impl Relationship {
    pub(super) fn new(element: &str, kind: &'static str, related: String) -> Relationship {
        Relationship {
            element: element.to_string(),
            related,
            kind,
        }
    }
}

/// When the document was made, and the UUID that makes its namespace unique.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stamp {
    /// The document's `created` time.
    pub created: jiff::Timestamp,
    /// The last part of `documentNamespace`.
    pub uuid: uuid::Uuid,
}

impl Stamp {
    /// Now, with a new random UUID.
    pub fn now() -> Stamp {
        Stamp {
            created: jiff::Timestamp::now(),
            uuid: uuid::Uuid::new_v4(),
        }
    }
}
