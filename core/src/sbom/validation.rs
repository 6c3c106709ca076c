//! The checks made on the input's fields as they are read: agents, SPDX IDs, license
//! refs and checksum algorithms, each refused with the field and the fix.

use serde::{de, Deserialize, Deserializer, Serializer};

/// What SPDX writes for a value that is not asserted; the generation fills mandatory fields
/// with it too.
pub(super) const NOASSERTION: &str = "NOASSERTION";

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

/// `s` as an SPDX ID string: letters, digits, `.` and `-`; anything else becomes `-`.
pub(super) fn idstring(s: &str) -> String {
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

pub(super) fn de_creators<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Creator>::deserialize(d)?
        .into_iter()
        .map(|c| c.0)
        .collect())
}

/// An empty supplier is none, as the original reads the input's.
pub(super) fn de_supplier<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    agent(Role::Supplier, &s)
        .map(Some)
        .map_err(de::Error::custom)
}

pub(super) fn de_originator<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    agent(Role::Originator, &String::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

pub(super) fn de_annotator<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    agent(Role::Annotator, &String::deserialize(d)?).map_err(de::Error::custom)
}

pub(super) fn de_spdx_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.strip_prefix("SPDXRef-") {
        Some(id) if is_idstring(id) => Ok(s),
        _ => Err(de::Error::custom(format!(
            "invalid SPDXID {s:?}: write \"SPDXRef-\" then letters, digits, '.' and '-'"
        ))),
    }
}

pub(super) fn de_idstring<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_idstring(&s) {
        return Ok(s);
    }
    Err(de::Error::custom(format!(
        "invalid name {s:?}: it names the ref DocumentRef-<name>, so use only letters, digits, \
         '.' and '-'"
    )))
}

pub(super) fn de_license_ref<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.strip_prefix("LicenseRef-") {
        Some(id) if is_idstring(id) => Ok(s),
        _ => Err(de::Error::custom(format!(
            "invalid licenseId {s:?}: write \"LicenseRef-\" then letters, digits, '.' and '-'"
        ))),
    }
}

pub(super) fn de_algorithm<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if ALGORITHMS.contains(&s.as_str()) {
        return Ok(s);
    }
    Err(de::Error::custom(format!(
        "invalid checksum algorithm {s:?}: use one of {}",
        ALGORITHMS.join(", ")
    )))
}

pub(super) fn de_category<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(String::deserialize(d)?.replace('_', "-"))
}

pub(super) fn ser_category<S: Serializer>(category: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&category.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use crate::sbom::testdata::parse;

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
}
