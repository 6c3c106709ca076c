//! The Compute resources as this crate reads and writes them: serde structs with only the
//! fields the build uses (unknown fields are ignored), in GCE's camelCase.
//!
//! GCE writes int64 fields (`sizeGb`, `start`, `next`, `id`) as JSON strings; [`int64`] reads
//! either form and writes strings, as GCE's own clients do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// int64 fields: read from a JSON string or number, written as a string.
pub mod int64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(i64),
    }

    fn parse<E: de::Error>(value: StringOrNumber) -> Result<i64, E> {
        match value {
            StringOrNumber::Number(n) => Ok(n),
            StringOrNumber::String(s) => s
                .parse()
                .map_err(|_| E::custom(format!("{s:?} is not an int64"))),
        }
    }

    /// Writes `value` as a JSON string.
    pub fn serialize<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    /// Reads a JSON string or number.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        parse(StringOrNumber::deserialize(deserializer)?)
    }

    /// The same for an optional field (use with `#[serde(default)]`).
    pub mod option {
        use super::*;

        /// Writes `Some(value)` as a JSON string and `None` as null.
        pub fn serialize<S: Serializer>(
            value: &Option<i64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => serializer.collect_str(v),
                None => serializer.serialize_none(),
            }
        }

        /// Reads a JSON string, number or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<i64>, D::Error> {
            Option::<StringOrNumber>::deserialize(deserializer)?
                .map(parse)
                .transpose()
        }
    }
}

/// Where a long-running operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    /// Accepted, not started.
    Pending,
    /// Under way.
    Running,
    /// Finished, successfully or not: see [`Operation::error`].
    Done,
}

/// A long-running operation, returned by every mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The operation's name, used to poll it.
    pub name: String,
    /// The zone's URL for a zonal operation; `None` for a global one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Where it is.
    pub status: OperationStatus,
    /// The resource it acts on.
    #[serde(default)]
    pub target_link: String,
    /// Why it failed, once DONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    /// The HTTP status the failure corresponds to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_status_code: Option<i64>,
}

/// The `error` of a failed operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationError {
    /// One entry per problem.
    #[serde(default)]
    pub errors: Vec<OperationErrorItem>,
}

/// One problem of a failed operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationErrorItem {
    /// The reason, such as `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS`.
    #[serde(default)]
    pub code: String,
    /// What GCE says about it.
    #[serde(default)]
    pub message: String,
}

/// A persistent disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Its name.
    pub name: String,
    /// Its size in GB.
    #[serde(with = "int64")]
    pub size_gb: i64,
    /// `CREATING`, `READY`, `DELETING`, ...
    #[serde(default)]
    pub status: String,
    /// The instances it is attached to (full URLs).
    #[serde(default)]
    pub users: Vec<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub creation_timestamp: String,
}

/// A VM instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Its name.
    pub name: String,
    /// `PROVISIONING`, `STAGING`, `RUNNING`, `STOPPING`, `STOPPED`, `TERMINATED`, ...
    pub status: String,
    /// Why it is in that status, when GCE says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its metadata, with the fingerprint a `setMetadata` must send back.
    #[serde(default)]
    pub metadata: Metadata,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub creation_timestamp: String,
}

/// An instance's metadata: what `instances.get` returns and `setMetadata` sends (which replaces
/// every item, so callers send the merged whole).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The fingerprint of the items this was read with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The key/value pairs.
    #[serde(default)]
    pub items: Vec<MetadataItem>,
}

/// One metadata key and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetadataItem {
    /// The key.
    pub key: String,
    /// The value (GCE omits it for an empty value).
    #[serde(default)]
    pub value: String,
}

/// What `instances.getSerialPortOutput` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SerialPortOutput {
    /// The bytes from `start`, as text (invalid UTF-8 replaced).
    #[serde(default)]
    pub contents: String,
    /// The byte offset the contents start at: larger than asked when GCE's buffer dropped output.
    #[serde(with = "int64")]
    pub start: i64,
    /// The byte offset to ask for next time. Authoritative: never derived from `contents`.
    #[serde(with = "int64")]
    pub next: i64,
}

/// A disk image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Its name.
    pub name: String,
    /// Its family, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its licenses (full URLs).
    #[serde(default)]
    pub licenses: Vec<String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub creation_timestamp: String,
    /// Its deprecation, if it was ever deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Deprecation>,
    /// `X86_64` or `ARM64`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// The size of a disk made from it, in GB.
    #[serde(
        default,
        with = "int64::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_gb: Option<i64>,
    /// `PENDING`, `READY`, `FAILED`, ...
    #[serde(default)]
    pub status: String,
}

/// An image's deprecation status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deprecation {
    /// `ACTIVE`, `DEPRECATED`, `OBSOLETE` or `DELETED`.
    #[serde(default)]
    pub state: String,
    /// The image that replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// One page of a list call.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The resources on this page (GCE omits the field when there are none).
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    /// The token of the next page, if there is one.
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn int64_reads_strings_and_numbers_and_writes_strings() {
        let a: SerialPortOutput =
            serde_json::from_value(json!({"contents": "x", "start": "0", "next": "1"})).unwrap();
        let b: SerialPortOutput =
            serde_json::from_value(json!({"contents": "x", "start": 0, "next": 1})).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({"contents": "x", "start": "0", "next": "1"})
        );
        assert!(
            serde_json::from_value::<SerialPortOutput>(json!({"start": "zero", "next": "1"}))
                .is_err()
        );
    }

    #[test]
    fn optional_int64() {
        let image: Image =
            serde_json::from_value(json!({"name": "i", "diskSizeGb": "10"})).unwrap();
        assert_eq!(image.disk_size_gb, Some(10));
        let value = serde_json::to_value(&image).unwrap();
        assert_eq!(value["diskSizeGb"], "10");
        let image: Image =
            serde_json::from_value(json!({"name": "i", "diskSizeGb": null})).unwrap();
        assert_eq!(image.disk_size_gb, None);
        assert!(serde_json::to_value(&image)
            .unwrap()
            .get("diskSizeGb")
            .is_none());
    }

    #[test]
    fn gce_resources_read_with_fields_left_out_and_unknown_fields_ignored() {
        let instance: Instance = serde_json::from_value(json!({
            "kind": "compute#instance", "id": "123", "name": "vm", "status": "RUNNING",
            "metadata": {"kind": "compute#metadata", "fingerprint": "abc=",
                         "items": [{"key": "user-data", "value": "#cloud-config"}, {"key": "k"}]}
        }))
        .unwrap();
        assert_eq!(instance.metadata.fingerprint.as_deref(), Some("abc="));
        assert_eq!(instance.metadata.items[1].value, "");
        let disk: Disk = serde_json::from_value(json!({
            "name": "d", "sizeGb": "10", "users": ["https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/vm"]
        }))
        .unwrap();
        assert_eq!(disk.size_gb, 10);
        let page: Page<Image> =
            serde_json::from_value(json!({"kind": "compute#imageList"})).unwrap();
        assert!(page.items.is_empty() && page.next_page_token.is_none());
    }
}
