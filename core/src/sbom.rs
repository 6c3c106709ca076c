//! The output image's SBOM, as the original's `sbomutil`: an SPDX 2.2 JSON document made
//! from the user's SBOM input (a JSON file in the build context) once the image is built.
//!
//! The document has the original's fields, shapes and order (the spdx `tools-golang` v2_2
//! JSON structs): creator `Tool: gcr.io/cos-cloud/cos-customizer` plus the input's creators, a
//! root package named after the output image that the document DESCRIBES, and that CONTAINS
//! the input's `SPDXPackages`, the input's `SBOMPackages` (as external document refs) and, for
//! a `cos-cloud` source, the source image's published SBOM; NOASSERTION fills the mandatory
//! package fields left empty. Where the original's document is not valid SPDX it is fixed, so
//! SPDX validators accept ours:
//! - `documentNamespace` is a unique URI (the original writes NOASSERTION, which is no URI);
//! - an empty `packageVerificationCode` and an empty `licenseInfoFromFiles` are left out, as
//!   `tools-golang` itself does since v0.5.4 (the original's v0.5.3 writes `{"…Value": ""}`,
//!   which validators refuse with `filesAnalyzed` false, and `null`);
//! - a package without a supplier gets NOASSERTION (the original crashes on it);
//! - an SPDX ID made from the image's name keeps only the characters SPDX IDs may hold.
//!
//! The input is checked whole when it is read, before the build, so a mistake in it costs no
//! build: unknown fields (a typo, or a field SPDX 2.2 lacks) are refused rather than dropped.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use cos_customizer_common::config::SourceImage;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::archive;

/// The bucket where Google publishes the SBOM of each `cos-cloud` image.
pub const COS_TOOLS_BUCKET: &str = "cos-tools";
/// The file name of a COS image's SBOM in [`COS_TOOLS_BUCKET`].
const COS_IMAGE_SBOM: &str = "sbom.spdx.json";
/// How the external ref names a COS image's SBOM: its public URL, whatever endpoint read it.
const COS_TOOLS_PUBLIC_URL: &str = "https://storage.googleapis.com/cos-tools";
const COS_CLOUD: &str = "cos-cloud";

const SPDX_VERSION: &str = "SPDX-2.2";
const DATA_LICENSE: &str = "CC0-1.0";
const DOCUMENT_ID: &str = "SPDXRef-DOCUMENT";
const NOASSERTION: &str = "NOASSERTION";
const DOC_NAME_SUFFIX: &str = "sbom.spdx.json";
/// The creator the original names; kept so that consumers see the same tool.
const CREATOR_TOOL: &str = "gcr.io/cos-cloud/cos-customizer";
const DEFAULT_ROOT_VERSION: &str = "0";
/// The namespace prefix, in the form the SPDX spec suggests (`…/spdxdocs/<name>-<UUID>`).
const NAMESPACE_BASE: &str = "https://spdx.org/spdxdocs/cos-customizer";

/// The checksum algorithms SPDX 2.2 names.
const ALGORITHMS: [&str; 17] = [
    "SHA1",
    "SHA224",
    "SHA256",
    "SHA384",
    "SHA512",
    "MD2",
    "MD4",
    "MD5",
    "MD6",
    "SHA3-256",
    "SHA3-384",
    "SHA3-512",
    "BLAKE2b-256",
    "BLAKE2b-384",
    "BLAKE2b-512",
    "BLAKE3",
    "ADLER32",
];

/// The user's SBOM input file, checked.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(rename = "outputImageName", default)]
    output_image_name: String,
    #[serde(rename = "outputImageVersion", default)]
    output_image_version: String,
    #[serde(default, deserialize_with = "de_creators")]
    creators: Vec<String>,
    #[serde(default, deserialize_with = "de_supplier")]
    supplier: Option<String>,
    #[serde(rename = "SPDXPackages", default)]
    spdx_packages: Vec<Package>,
    #[serde(rename = "SBOMPackages", default)]
    sbom_packages: Vec<SbomPackage>,
    #[serde(rename = "hasExtractedLicensingInfos", default)]
    licenses: Vec<OtherLicense>,
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
struct Package {
    name: String,
    #[serde(rename = "SPDXID", deserialize_with = "de_spdx_id")]
    spdx_id: String,
    #[serde(
        rename = "versionInfo",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    version: String,
    #[serde(
        rename = "packageFileName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    file_name: String,
    #[serde(
        default,
        deserialize_with = "de_supplier",
        skip_serializing_if = "Option::is_none"
    )]
    supplier: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_originator",
        skip_serializing_if = "Option::is_none"
    )]
    originator: Option<String>,
    #[serde(rename = "downloadLocation", default)]
    download_location: String,
    /// SPDX's default when left out is true, as `tools-golang` reads it.
    #[serde(rename = "filesAnalyzed", default = "yes")]
    files_analyzed: bool,
    #[serde(
        rename = "packageVerificationCode",
        default,
        skip_serializing_if = "VerificationCode::is_empty"
    )]
    verification_code: VerificationCode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    homepage: String,
    #[serde(
        rename = "sourceInfo",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    source_info: String,
    #[serde(rename = "licenseConcluded", default)]
    license_concluded: String,
    #[serde(
        rename = "licenseInfoFromFiles",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    license_info_from_files: Vec<String>,
    #[serde(rename = "licenseDeclared", default)]
    license_declared: String,
    #[serde(
        rename = "licenseComments",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    license_comments: String,
    #[serde(rename = "copyrightText", default)]
    copyright_text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    summary: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    comment: String,
    #[serde(
        rename = "externalRefs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    external_refs: Vec<PackageExternalRef>,
    #[serde(
        rename = "attributionTexts",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    attribution_texts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<Annotation>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerificationCode {
    #[serde(rename = "packageVerificationCodeValue", default)]
    value: String,
    #[serde(
        rename = "packageVerificationCodeExcludedFiles",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    excluded_files: Vec<String>,
}

impl VerificationCode {
    fn is_empty(&self) -> bool {
        self.value.is_empty() && self.excluded_files.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksum {
    #[serde(deserialize_with = "de_algorithm")]
    algorithm: String,
    #[serde(rename = "checksumValue")]
    value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageExternalRef {
    /// Read with `-` (`PACKAGE-MANAGER`) and written with `_`, which is what the SPDX 2.2
    /// JSON schema's enum has, as `tools-golang` does.
    #[serde(
        rename = "referenceCategory",
        deserialize_with = "de_category",
        serialize_with = "ser_category"
    )]
    category: String,
    #[serde(rename = "referenceType")]
    kind: String,
    #[serde(rename = "referenceLocator")]
    locator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Annotation {
    #[serde(deserialize_with = "de_annotator")]
    annotator: String,
    #[serde(rename = "annotationDate")]
    date: String,
    #[serde(rename = "annotationType")]
    kind: String,
    comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtherLicense {
    #[serde(rename = "licenseId", deserialize_with = "de_license_ref")]
    id: String,
    #[serde(rename = "extractedText")]
    extracted_text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "seeAlsos", default, skip_serializing_if = "Vec::is_empty")]
    see_also: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    comment: String,
}

/// The SPDX 2.2 document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    #[serde(rename = "spdxVersion")]
    spdx_version: String,
    #[serde(rename = "dataLicense")]
    data_license: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(rename = "documentNamespace")]
    namespace: String,
    #[serde(rename = "externalDocumentRefs", skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalDocumentRef>,
    #[serde(rename = "creationInfo")]
    creation_info: CreationInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    packages: Vec<Package>,
    #[serde(
        rename = "hasExtractedLicensingInfos",
        skip_serializing_if = "Vec::is_empty"
    )]
    licenses: Vec<OtherLicense>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    relationships: Vec<Relationship>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ExternalDocumentRef {
    #[serde(rename = "externalDocumentId")]
    id: String,
    #[serde(rename = "spdxDocument")]
    uri: String,
    checksum: Checksum,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct CreationInfo {
    creators: Vec<String>,
    created: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Relationship {
    #[serde(rename = "spdxElementId")]
    element: String,
    #[serde(rename = "relatedSpdxElement")]
    related: String,
    #[serde(rename = "relationshipType")]
    kind: &'static str,
}

impl Relationship {
    fn new(element: &str, kind: &'static str, related: String) -> Relationship {
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

impl Input {
    /// Reads and checks the SBOM input `path`, a file in the build context archive `archive`.
    pub fn from_archive(archive: &Path, path: &str) -> Result<Input> {
        let data = read_member(archive, path)?;
        Input::parse(&format!("SBOM input {path} in the build context"), &data)
    }

    /// Parses and checks an SBOM input; `origin` names it in errors.
    pub fn parse(origin: &str, data: &[u8]) -> Result<Input> {
        let input: Input = serde_json::from_slice(data).map_err(|e| {
            anyhow!(
                "{origin} is not a valid SBOM input: {e}; fix it in the build context and run \
                 start-image-build again (the build context is archived when the build starts)"
            )
        })?;
        for (field, value) in [
            ("outputImageName", &input.output_image_name),
            ("outputImageVersion", &input.output_image_version),
        ] {
            if value.contains(['/', '\0']) || value == "." || value == ".." {
                bail!(
                    "{origin}: {field} {value:?} names the SBOM file, so it may not hold '/': \
                     change it in the build context and run start-image-build again"
                );
            }
        }
        Ok(input)
    }

    /// The document's name and file name: `<name>[-<version>]_sbom.spdx.json`, with the
    /// input's `outputImageName` (and version) or else `output_image`, the image built.
    pub fn document_name(&self, output_image: &str) -> String {
        let (name, version) = self.name_and_version(output_image);
        if version.is_empty() {
            format!("{name}_{DOC_NAME_SUFFIX}")
        } else {
            format!("{name}-{version}_{DOC_NAME_SUFFIX}")
        }
    }

    /// The input's version goes only with the input's name.
    fn name_and_version<'a>(&'a self, output_image: &'a str) -> (&'a str, &'a str) {
        if self.output_image_name.is_empty() {
            (output_image, "")
        } else {
            (&self.output_image_name, &self.output_image_version)
        }
    }
}

/// The regular file `path` in `archive`; the error for a missing one names the closest
/// members.
fn read_member(archive: &Path, path: &str) -> Result<Vec<u8>> {
    let reading = || format!("reading the build context archive {}", archive.display());
    let file = std::fs::File::open(archive).with_context(reading)?;
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().with_context(reading)? {
        let mut entry = entry.with_context(reading)?;
        if entry.path_bytes().as_ref() != path.as_bytes() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            break;
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("reading {path} from {}", archive.display()))?;
        return Ok(data);
    }
    archive::require_member(archive, path).context("checking -sbom-input-path")?;
    bail!(
        "-sbom-input-path {path:?} is a folder or a link in the build context: give the SBOM \
         input JSON file itself"
    )
}

/// Makes the document for the image `output_image` from `input`; `base` is the source image's
/// published SBOM, when it was found.
pub fn generate(
    input: &Input,
    output_image: &str,
    base: Option<&SbomPackage>,
    stamp: &Stamp,
) -> Result<Document> {
    let (name, version) = input.name_and_version(output_image);
    if name.is_empty() {
        bail!(
            "the output image has no name to give its SBOM: set outputImageName in the SBOM input"
        );
    }
    let stem = if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}-{version}")
    };
    let root_id = format!("SPDXRef-{}", idstring(name));
    let mut creators = vec![format!("Tool: {CREATOR_TOOL}")];
    creators.extend(input.creators.iter().cloned());
    let mut doc = Document {
        spdx_version: SPDX_VERSION.to_string(),
        data_license: DATA_LICENSE.to_string(),
        spdx_id: DOCUMENT_ID.to_string(),
        name: input.document_name(output_image),
        namespace: format!("{NAMESPACE_BASE}/{}-{}", idstring(&stem), stamp.uuid),
        external_refs: Vec::new(),
        creation_info: CreationInfo {
            creators,
            created: stamp.created.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
        packages: vec![Package::root(
            name,
            version,
            &root_id,
            input.supplier.clone(),
        )],
        licenses: input.licenses.clone(),
        relationships: vec![Relationship::new(DOCUMENT_ID, "DESCRIBES", root_id.clone())],
    };
    // The original's order: the base image first, then the packages, then the other SBOMs.
    if let Some(base) = base {
        doc.add_external(base, &root_id);
    }
    for p in &input.spdx_packages {
        doc.packages.push(p.clone());
        doc.relationships
            .push(Relationship::new(&root_id, "CONTAINS", p.spdx_id.clone()));
    }
    for p in &input.sbom_packages {
        doc.add_external(p, &root_id);
    }
    for p in &mut doc.packages {
        p.fill_no_assertion();
    }
    doc.check_unique(base)?;
    Ok(doc)
}

impl Document {
    /// The document's name, which is also its file name.
    pub fn file_name(&self) -> &str {
        &self.name
    }

    /// The JSON, indented by two spaces as the original writes it.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).context("encoding the SBOM as JSON")
    }

    fn add_external(&mut self, p: &SbomPackage, root_id: &str) {
        self.external_refs.push(ExternalDocumentRef {
            id: format!("DocumentRef-{}", p.name),
            uri: p.spdx_document.clone(),
            checksum: Checksum {
                algorithm: p.algorithm.clone(),
                value: p.checksum_value.clone(),
            },
        });
        self.relationships.push(Relationship::new(
            root_id,
            "CONTAINS",
            format!("DocumentRef-{}:{DOCUMENT_ID}", p.name),
        ));
    }

    /// Relationships name elements by ID, so two with one ID make the document ambiguous.
    fn check_unique(&self, base: Option<&SbomPackage>) -> Result<()> {
        let mut ids = BTreeSet::from([DOCUMENT_ID]);
        for p in &self.packages {
            if !ids.insert(p.spdx_id.as_str()) {
                let whose = if p.spdx_id == DOCUMENT_ID {
                    "the document's own"
                } else if p.spdx_id == self.packages[0].spdx_id {
                    "the output image's own package (made from the image's name)"
                } else {
                    "another package"
                };
                bail!(
                    "SBOM input: package {:?} has SPDXID {}, which is {whose}: give each \
                     package its own SPDXID",
                    p.name,
                    p.spdx_id
                );
            }
        }
        let mut refs = BTreeSet::new();
        for r in &self.external_refs {
            if !refs.insert(&r.id) {
                let whose = match base {
                    Some(b) if format!("DocumentRef-{}", b.name) == r.id => {
                        "the ref to the source image's published SBOM"
                    }
                    _ => "another SBOMPackages entry",
                };
                bail!(
                    "SBOM input: SBOMPackages name {:?} gives {}, which is {whose}: give each \
                     its own name",
                    r.id.trim_start_matches("DocumentRef-"),
                    r.id
                );
            }
        }
        Ok(())
    }
}

impl Package {
    fn root(name: &str, version: &str, id: &str, supplier: Option<String>) -> Package {
        Package {
            name: name.to_string(),
            spdx_id: id.to_string(),
            version: if version.is_empty() {
                DEFAULT_ROOT_VERSION
            } else {
                version
            }
            .to_string(),
            file_name: String::new(),
            supplier,
            originator: None,
            download_location: String::new(),
            files_analyzed: false,
            verification_code: VerificationCode::default(),
            checksums: Vec::new(),
            homepage: String::new(),
            source_info: String::new(),
            license_concluded: String::new(),
            license_info_from_files: Vec::new(),
            license_declared: String::new(),
            license_comments: String::new(),
            copyright_text: String::new(),
            summary: String::new(),
            description: String::new(),
            comment: String::new(),
            external_refs: Vec::new(),
            attribution_texts: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// NOASSERTION in the mandatory fields left empty.
    fn fill_no_assertion(&mut self) {
        for field in [
            &mut self.download_location,
            &mut self.license_concluded,
            &mut self.license_declared,
        ] {
            if field.is_empty() {
                *field = NOASSERTION.to_string();
            }
        }
        self.supplier.get_or_insert_with(|| NOASSERTION.to_string());
    }
}

/// `s` as an SPDX ID string: letters, digits, `.` and `-`; anything else becomes `-`.
fn idstring(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn is_idstring(s: &str) -> bool {
    !s.is_empty() && idstring(s) == s
}

/// Who an agent field names, and the kinds it may be.
#[derive(Clone, Copy)]
enum Role {
    Creator,
    Supplier,
    Originator,
    Annotator,
}

impl Role {
    fn field(self) -> &'static str {
        match self {
            Role::Creator => "creator",
            Role::Supplier => "supplier",
            Role::Originator => "originator",
            Role::Annotator => "annotator",
        }
    }

    fn kinds(self) -> &'static [&'static str] {
        match self {
            Role::Creator | Role::Annotator => &["Person", "Organization", "Tool"],
            Role::Supplier | Role::Originator => &["Person", "Organization"],
        }
    }
}

/// Checks `Kind: name` and writes it as SPDX does; suppliers and originators may be
/// NOASSERTION.
fn agent(role: Role, s: &str) -> Result<String, String> {
    if matches!(role, Role::Supplier | Role::Originator) && s == NOASSERTION {
        return Ok(s.to_string());
    }
    match s.split_once(':').map(|(k, n)| (k.trim(), n.trim())) {
        Some((kind, name)) if role.kinds().contains(&kind) && !name.is_empty() => {
            Ok(format!("{kind}: {name}"))
        }
        _ => {
            let extra = match role {
                Role::Supplier | Role::Originator => " or NOASSERTION",
                Role::Creator | Role::Annotator => "",
            };
            Err(format!(
                "invalid {} {s:?}: write it as \"{}: name\"{extra}",
                role.field(),
                role.kinds().join("/"),
            ))
        }
    }
}

/// One creator, checked as it is read, so that an error points at it.
struct Creator(String);

impl<'de> Deserialize<'de> for Creator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Creator, D::Error> {
        agent(Role::Creator, &String::deserialize(d)?)
            .map(Creator)
            .map_err(de::Error::custom)
    }
}

fn de_creators<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Creator>::deserialize(d)?
        .into_iter()
        .map(|c| c.0)
        .collect())
}

/// An empty supplier is none, as the original reads the input's.
fn de_supplier<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    agent(Role::Supplier, &s)
        .map(Some)
        .map_err(de::Error::custom)
}

fn de_originator<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    agent(Role::Originator, &String::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

fn de_annotator<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    agent(Role::Annotator, &String::deserialize(d)?).map_err(de::Error::custom)
}

fn de_spdx_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.strip_prefix("SPDXRef-") {
        Some(id) if is_idstring(id) => Ok(s),
        _ => Err(de::Error::custom(format!(
            "invalid SPDXID {s:?}: write \"SPDXRef-\" then letters, digits, '.' and '-'"
        ))),
    }
}

fn de_idstring<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_idstring(&s) {
        return Ok(s);
    }
    Err(de::Error::custom(format!(
        "invalid name {s:?}: it names the ref DocumentRef-<name>, so use only letters, digits, \
         '.' and '-'"
    )))
}

fn de_license_ref<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.strip_prefix("LicenseRef-") {
        Some(id) if is_idstring(id) => Ok(s),
        _ => Err(de::Error::custom(format!(
            "invalid licenseId {s:?}: write \"LicenseRef-\" then letters, digits, '.' and '-'"
        ))),
    }
}

fn de_algorithm<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if ALGORITHMS.contains(&s.as_str()) {
        return Ok(s);
    }
    Err(de::Error::custom(format!(
        "invalid checksum algorithm {s:?}: use one of {}",
        ALGORITHMS.join(", ")
    )))
}

fn de_category<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(String::deserialize(d)?.replace('_', "-"))
}

fn ser_category<S: Serializer>(category: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&category.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original's `TestGenerateSBOM` "ValidInput", as the JSON a user writes.
    const VALID_INPUT: &str = r#"{
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

    /// The original's expected document, written as `tools-golang` writes it, with this
    /// module's fixes: a namespace URI, and no empty verification code or license list.
    const VALID_OUTPUT: &str = r#"{
  "spdxVersion": "SPDX-2.2",
  "dataLicense": "CC0-1.0",
  "SPDXID": "SPDXRef-DOCUMENT",
  "name": "image1-123_sbom.spdx.json",
  "documentNamespace": "https://spdx.org/spdxdocs/cos-customizer/image1-123-67e55044-10b1-426f-9247-bb680e5fe0c8",
  "externalDocumentRefs": [
    {
      "externalDocumentId": "DocumentRef-pkg2",
      "spdxDocument": "doc-url",
      "checksum": {
        "algorithm": "SHA1",
        "checksumValue": "11d7774ac38f40e009dcee453a760750aea11111"
      }
    }
  ],
  "creationInfo": {
    "creators": [
      "Tool: gcr.io/cos-cloud/cos-customizer",
      "Organization: G"
    ],
    "created": "2023-04-27T16:08:32Z"
  },
  "packages": [
    {
      "name": "image1",
      "SPDXID": "SPDXRef-image1",
      "versionInfo": "123",
      "supplier": "Organization: G",
      "downloadLocation": "NOASSERTION",
      "filesAnalyzed": false,
      "licenseConcluded": "NOASSERTION",
      "licenseDeclared": "NOASSERTION",
      "copyrightText": ""
    },
    {
      "name": "pkg1",
      "SPDXID": "SPDXRef-pkg1",
      "versionInfo": "111",
      "supplier": "Organization: K",
      "downloadLocation": "test.com",
      "filesAnalyzed": false,
      "checksums": [
        {
          "algorithm": "SHA1",
          "checksumValue": "11d7774ac38f40e009dcee453a760750aea75bbd"
        }
      ],
      "licenseConcluded": "BSD-3-Clause AND Apache-2.0",
      "licenseDeclared": "BSD-3-Clause AND Apache-2.0",
      "copyrightText": "",
      "externalRefs": [
        {
          "referenceCategory": "SECURITY",
          "referenceType": "cpe23Type",
          "referenceLocator": "cpe:/a:vendor:pkg-1:1.2.3"
        }
      ]
    }
  ],
  "hasExtractedLicensingInfos": [
    {
      "licenseId": "LicenseRef-license1",
      "extractedText": "test license",
      "seeAlsos": [
        "license-url"
      ]
    }
  ],
  "relationships": [
    {
      "spdxElementId": "SPDXRef-DOCUMENT",
      "relatedSpdxElement": "SPDXRef-image1",
      "relationshipType": "DESCRIBES"
    },
    {
      "spdxElementId": "SPDXRef-image1",
      "relatedSpdxElement": "SPDXRef-pkg1",
      "relationshipType": "CONTAINS"
    },
    {
      "spdxElementId": "SPDXRef-image1",
      "relatedSpdxElement": "DocumentRef-pkg2:SPDXRef-DOCUMENT",
      "relationshipType": "CONTAINS"
    }
  ]
}"#;

    fn stamp() -> Stamp {
        Stamp {
            created: "2023-04-27T16:08:32Z".parse().unwrap(),
            uuid: "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap(),
        }
    }

    fn parse(json: &str) -> Result<Input> {
        Input::parse("SBOM input sbom.json", json.as_bytes())
    }

    fn json(doc: &Document) -> String {
        String::from_utf8(doc.to_json().unwrap()).unwrap()
    }

    fn source(project: &str, name: &str) -> SourceImage {
        SourceImage {
            name: name.into(),
            project: project.into(),
            ..SourceImage::default()
        }
    }

    #[test]
    fn the_originals_valid_input_gives_its_document() {
        let doc = generate(&parse(VALID_INPUT).unwrap(), "ignored", None, &stamp()).unwrap();
        assert_eq!(json(&doc), VALID_OUTPUT);
        assert_eq!(doc.file_name(), "image1-123_sbom.spdx.json");
    }

    #[test]
    fn the_originals_invalid_creator_and_supplier_are_refused_with_the_fix_and_place() {
        let e = parse(r#"{"outputImageName": "image2", "creators": ["OrganizationG"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SBOM input sbom.json"), "{e}");
        assert!(e.contains(r#"invalid creator "OrganizationG""#), "{e}");
        assert!(e.contains(r#""Person/Organization/Tool: name""#), "{e}");
        assert!(e.contains("line 1 column"), "{e}");
        let e = parse(
            "{\"outputImageName\": \"image2\",\n \"creators\": [\"Organization: G\"],\n \
             \"supplier\": \"OrganizationG\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(r#"invalid supplier "OrganizationG""#), "{e}");
        assert!(
            e.contains(r#""Person/Organization: name" or NOASSERTION"#),
            "{e}"
        );
        assert!(e.contains("line 3 column"), "{e}");
        // A tool may create the document, but not supply the image.
        assert!(parse(r#"{"supplier": "Tool: x"}"#).is_err());
        assert!(parse(r#"{"creators": ["Tool: "]}"#).is_err());
    }

    /// The original's `TestUploadSBOMToGCS` document, byte for byte.
    #[test]
    fn a_document_is_written_as_the_original_writes_it() {
        let doc = Document {
            spdx_version: "SPDX-2.2".into(),
            data_license: "CC0-1.0".into(),
            spdx_id: "SPDXRef-DOCUMENT".into(),
            name: "image1_sbom.json".into(),
            namespace: "NOASSERTION".into(),
            external_refs: vec![],
            creation_info: CreationInfo {
                creators: vec![
                    "Tool: gcr.io/cos-cloud/cos-customizer".into(),
                    "Organization: G".into(),
                ],
                created: "2023-04-27T16:08:32Z".into(),
            },
            packages: vec![],
            licenses: vec![],
            relationships: vec![],
        };
        let want = r#"{
  "spdxVersion": "SPDX-2.2",
  "dataLicense": "CC0-1.0",
  "SPDXID": "SPDXRef-DOCUMENT",
  "name": "image1_sbom.json",
  "documentNamespace": "NOASSERTION",
  "creationInfo": {
    "creators": [
      "Tool: gcr.io/cos-cloud/cos-customizer",
      "Organization: G"
    ],
    "created": "2023-04-27T16:08:32Z"
  }
}"#;
        assert_eq!(json(&doc), want);
    }

    #[test]
    fn without_an_image_name_the_built_image_names_the_document() {
        let input = parse(r#"{"outputImageVersion": "7", "creators": []}"#).unwrap();
        assert_eq!(input.document_name("my-cos"), "my-cos_sbom.spdx.json");
        let doc = generate(&input, "my-cos", None, &stamp()).unwrap();
        assert_eq!(doc.file_name(), "my-cos_sbom.spdx.json");
        let root = &doc.packages[0];
        assert_eq!((root.name.as_str(), root.version.as_str()), ("my-cos", "0"));
        assert_eq!(root.spdx_id, "SPDXRef-my-cos");
        // The original crashes on a package without a supplier; NOASSERTION is what SPDX
        // has for it.
        assert_eq!(root.supplier.as_deref(), Some("NOASSERTION"));
        assert_eq!(
            doc.namespace,
            "https://spdx.org/spdxdocs/cos-customizer/my-cos-67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!(
            doc.creation_info.creators,
            ["Tool: gcr.io/cos-cloud/cos-customizer"]
        );
        // A local file's name may hold what SPDX IDs may not; the package keeps the name.
        let doc = generate(&input, "my_cos v2", None, &stamp()).unwrap();
        assert_eq!(doc.packages[0].name, "my_cos v2");
        assert_eq!(doc.packages[0].spdx_id, "SPDXRef-my-cos-v2");
        assert_eq!(doc.relationships[0].related, "SPDXRef-my-cos-v2");
        assert!(generate(&input, "", None, &stamp()).is_err());
    }

    #[test]
    fn names_that_would_leave_the_output_folder_are_refused() {
        for bad in [
            r#"{"outputImageName": "a/b"}"#,
            r#"{"outputImageName": ".."}"#,
            r#"{"outputImageName": "a", "outputImageVersion": "1/../../x"}"#,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("may not hold '/'"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_json_and_unknown_fields_are_named_with_line_and_column() {
        let e = parse("{\n  \"creators\": [\"Tool: x\"\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3 column 1"), "{e}");
        assert!(e.contains("start-image-build again"), "{e}");
        let e = parse("{\n  \"outputImageNmae\": \"x\"\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `outputImageNmae`"), "{e}");
        assert!(e.contains("line 2 column"), "{e}");
        // A 2.3-only package field is not silently dropped from a 2.2 document.
        let e = parse(
            r#"{"SPDXPackages": [{"name": "a", "SPDXID": "SPDXRef-a", "primaryPackagePurpose": "OS"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `primaryPackagePurpose`"), "{e}");
    }

    #[test]
    fn identifiers_and_algorithms_are_checked_when_read() {
        for (bad, want) in [
            (
                r#"{"SPDXPackages": [{"name": "a", "SPDXID": "a"}]}"#,
                "invalid SPDXID \"a\"",
            ),
            (
                r#"{"SPDXPackages": [{"name": "a", "SPDXID": "SPDXRef-a_b"}]}"#,
                "invalid SPDXID",
            ),
            (
                r#"{"SPDXPackages": [{"name": "a"}]}"#,
                "missing field `SPDXID`",
            ),
            (
                r#"{"SBOMPackages": [{"name": "a b", "spdxDocument": "u", "algorithm": "SHA1", "checksumValue": "0"}]}"#,
                "invalid name \"a b\"",
            ),
            (
                r#"{"SBOMPackages": [{"name": "a", "spdxDocument": "u", "algorithm": "sha-1", "checksumValue": "0"}]}"#,
                "invalid checksum algorithm \"sha-1\"",
            ),
            (
                r#"{"hasExtractedLicensingInfos": [{"licenseId": "x", "extractedText": "t"}]}"#,
                "invalid licenseId \"x\"",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn packages_get_noassertion_and_spdx_defaults() {
        let input = parse(
            r#"{"SPDXPackages": [{"name": "a", "SPDXID": "SPDXRef-a",
                "originator": "Organization:X",
                "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                  "referenceLocator": "pkg:deb/debian/curl@7.50.3-1"}]}]}"#,
        )
        .unwrap();
        let doc = generate(&input, "img", None, &stamp()).unwrap();
        let text = json(&doc);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let a = &v["packages"][1];
        assert_eq!(a["supplier"], "NOASSERTION");
        assert_eq!(a["downloadLocation"], "NOASSERTION");
        assert_eq!(a["licenseConcluded"], "NOASSERTION");
        assert_eq!(a["licenseDeclared"], "NOASSERTION");
        assert_eq!(a["originator"], "Organization: X");
        // SPDX's default, as tools-golang reads it.
        assert_eq!(a["filesAnalyzed"], true);
        // The SPDX 2.2 JSON schema's spelling.
        assert_eq!(a["externalRefs"][0]["referenceCategory"], "PACKAGE_MANAGER");
        assert!(a.get("packageVerificationCode").is_none(), "{text}");
        assert!(a.get("licenseInfoFromFiles").is_none(), "{text}");
    }

    #[test]
    fn a_verification_code_given_is_kept() {
        let input = parse(
            r#"{"SPDXPackages": [{"name": "a", "SPDXID": "SPDXRef-a",
                "packageVerificationCode": {"packageVerificationCodeValue": "d6a770ba38583ed4bb4525bd96e50461655d2758"},
                "licenseInfoFromFiles": ["MIT"],
                "annotations": [{"annotator": "Person: Jane", "annotationDate": "2023-01-01T00:00:00Z",
                                 "annotationType": "OTHER", "comment": "c"}]}]}"#,
        )
        .unwrap();
        let doc = generate(&input, "img", None, &stamp()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&doc.to_json().unwrap()).unwrap();
        let a = &v["packages"][1];
        assert_eq!(
            a["packageVerificationCode"],
            serde_json::json!({"packageVerificationCodeValue": "d6a770ba38583ed4bb4525bd96e50461655d2758"})
        );
        assert_eq!(a["licenseInfoFromFiles"], serde_json::json!(["MIT"]));
        assert_eq!(a["annotations"][0]["annotator"], "Person: Jane");
    }

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

    #[test]
    fn the_published_sbom_is_referenced_by_url_and_sha256_before_the_packages() {
        let cos = CosImageSbom::for_source(&source("cos-cloud", "cos-stable-109-17800-66-27"))
            .unwrap()
            .unwrap();
        let base = cos.reference(b"abc");
        assert_eq!(
            base.spdx_document,
            "https://storage.googleapis.com/cos-tools/17800.66.27/lakitu/sbom.spdx.json"
        );
        assert_eq!(
            base.checksum_value,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let doc = generate(&parse(VALID_INPUT).unwrap(), "x", Some(&base), &stamp()).unwrap();
        let ids: Vec<&str> = doc.external_refs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["DocumentRef-cos-stable-109-17800-66-27", "DocumentRef-pkg2"]
        );
        assert_eq!(doc.external_refs[0].checksum.algorithm, "SHA256");
        let related: Vec<&str> = doc
            .relationships
            .iter()
            .map(|r| r.related.as_str())
            .collect();
        assert_eq!(
            related,
            [
                "SPDXRef-image1",
                "DocumentRef-cos-stable-109-17800-66-27:SPDXRef-DOCUMENT",
                "SPDXRef-pkg1",
                "DocumentRef-pkg2:SPDXRef-DOCUMENT",
            ]
        );
    }

    #[test]
    fn ids_used_twice_are_refused_by_name() {
        let input = parse(
            r#"{"outputImageName": "img", "SPDXPackages": [{"name": "a", "SPDXID": "SPDXRef-img"}]}"#,
        )
        .unwrap();
        let e = generate(&input, "x", None, &stamp())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SPDXRef-img, which is the output image's own package"),
            "{e}"
        );
        let input = parse(
            r#"{"SBOMPackages": [
                {"name": "cos-stable-109-17800-66-27", "spdxDocument": "u", "algorithm": "SHA1", "checksumValue": "0"}]}"#,
        )
        .unwrap();
        let cos = CosImageSbom::for_source(&source("cos-cloud", "cos-stable-109-17800-66-27"))
            .unwrap()
            .unwrap();
        let e = generate(&input, "x", Some(&cos.reference(b"")), &stamp())
            .unwrap_err()
            .to_string();
        assert!(e.contains("source image's published SBOM"), "{e}");
    }

    fn context_archive(
        files: &[(&str, &str)],
        dirs: &[&str],
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let ctx = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(ctx.path().join(d)).unwrap();
        }
        for (name, text) in files {
            std::fs::write(ctx.path().join(name), text).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        archive::create(ctx.path(), &tar, out.path()).unwrap();
        (out, tar)
    }

    #[test]
    fn the_input_is_read_from_the_build_context_archive() {
        let (_d, tar) = context_archive(
            &[("preload.sh", "x"), ("sbom/input.json", VALID_INPUT)],
            &["sbom"],
        );
        let input = Input::from_archive(&tar, "sbom/input.json").unwrap();
        assert_eq!(input, parse(VALID_INPUT).unwrap());

        let e = format!(
            "{:#}",
            Input::from_archive(&tar, "sbom/inptu.json").unwrap_err()
        );
        assert!(e.contains("-sbom-input-path"), "{e}");
        assert!(e.contains("closest members: sbom/input.json"), "{e}");
        let e = format!("{:#}", Input::from_archive(&tar, "sbom/").unwrap_err());
        assert!(e.contains("is a folder or a link"), "{e}");
        let e = format!("{:#}", Input::from_archive(&tar, "preload.sh").unwrap_err());
        assert!(
            e.contains("SBOM input preload.sh in the build context is not a valid SBOM input"),
            "{e}"
        );
    }
}
