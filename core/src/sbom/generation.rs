//! Making the SPDX document for the built image from the input.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use super::types::Checksum;
use super::types::{
    CreationInfo, Document, ExternalDocumentRef, Input, Package, Relationship, SbomPackage, Stamp,
    VerificationCode,
};
use super::validation::{idstring, NOASSERTION};

const SPDX_VERSION: &str = "SPDX-2.2";
const DATA_LICENSE: &str = "CC0-1.0";
const DOCUMENT_ID: &str = "SPDXRef-DOCUMENT";
pub(super) const DOC_NAME_SUFFIX: &str = "sbom.spdx.json";
/// The creator the original names; kept so that consumers see the same tool.
const CREATOR_TOOL: &str = "gcr.io/cos-cloud/cos-customizer";
const DEFAULT_ROOT_VERSION: &str = "0";
/// The namespace prefix, in the form the SPDX spec suggests (`…/spdxdocs/<name>-<UUID>`).
const NAMESPACE_BASE: &str = "https://spdx.org/spdxdocs/cos-customizer";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::testdata::{parse, source, VALID_INPUT};
    use crate::sbom::CosImageSbom;

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
    fn json(doc: &Document) -> String {
        String::from_utf8(doc.to_json().unwrap()).unwrap()
    }

    #[test]
    fn the_originals_valid_input_gives_its_document() {
        let doc = generate(&parse(VALID_INPUT).unwrap(), "ignored", None, &stamp()).unwrap();
        assert_eq!(json(&doc), VALID_OUTPUT);
        assert_eq!(doc.file_name(), "image1-123_sbom.spdx.json");
    }

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
}
