//! Google's Compute v1 discovery document (trimmed to what the emulator serves) and a checker
//! of JSON values against its schemas: field names and types, enums, int64-as-string.

use std::sync::OnceLock;

use serde_json::Value;

/// The vendored, trimmed `compute.v1.json` (its `note` field names the source version).
const DOCUMENT: &str = include_str!("../tests/fixtures/compute.v1.trimmed.json");

/// Which side of the API a value comes from: requests may carry int64 fields as JSON numbers,
/// responses must carry them as strings, as GCE does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A request body sent by a client.
    Request,
    /// A response body sent by the emulator.
    Response,
}

/// One method of the discovery document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Method {
    /// The resource collection (`disks`, `zoneOperations` …).
    pub resource: String,
    /// The method name (`insert`, `getSerialPortOutput` …).
    pub name: String,
    /// The HTTP method.
    pub http_method: String,
    /// The path template relative to the service path (`projects/{project}/…`).
    pub path: String,
    /// The schema of the request body, if the method takes one.
    pub request: Option<String>,
    /// The schema of the response body.
    pub response: Option<String>,
    /// The query and path parameters the method accepts.
    pub parameters: Vec<String>,
}

/// The parsed discovery document.
#[derive(Debug)]
pub struct Discovery {
    doc: Value,
}

impl Discovery {
    /// The vendored Compute v1 document, parsed once.
    pub fn compute_v1() -> &'static Discovery {
        static DOC: OnceLock<Discovery> = OnceLock::new();
        DOC.get_or_init(|| Discovery {
            doc: serde_json::from_str(DOCUMENT).expect("the vendored discovery document is JSON"),
        })
    }

    /// The discovery revision of the vendored document.
    pub fn revision(&self) -> &str {
        self.doc["revision"].as_str().unwrap_or_default()
    }

    /// The method `resource.name`, if the document has it.
    pub fn method(&self, resource: &str, name: &str) -> Option<Method> {
        let m = self.doc["resources"][resource]["methods"].get(name)?;
        let schema = |key: &str| m[key]["$ref"].as_str().map(str::to_string);
        Some(Method {
            resource: resource.to_string(),
            name: name.to_string(),
            http_method: m["httpMethod"].as_str()?.to_string(),
            path: m["path"].as_str()?.to_string(),
            request: schema("request"),
            response: schema("response"),
            parameters: m["parameters"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
        })
    }

    /// Every method in the document.
    pub fn methods(&self) -> Vec<Method> {
        let mut out = Vec::new();
        for (resource, body) in self.doc["resources"].as_object().into_iter().flatten() {
            for name in body["methods"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|m| m.0)
            {
                out.extend(self.method(resource, name));
            }
        }
        out
    }

    /// Checks `value` against the named schema: every field must be declared with a matching
    /// type. Returns the first mismatch as `path: problem`.
    pub fn check(&self, schema: &str, value: &Value, side: Side) -> Result<(), String> {
        let node = self.doc["schemas"]
            .get(schema)
            .ok_or_else(|| format!("schema {schema} is not in the document"))?;
        self.check_node(node, value, side, schema)
    }

    fn check_node(&self, node: &Value, value: &Value, side: Side, at: &str) -> Result<(), String> {
        if let Some(name) = node["$ref"].as_str() {
            return self
                .check(name, value, side)
                .map_err(|e| format!("{at}.{e}"));
        }
        let kind = node["type"].as_str().unwrap_or("any");
        let format = node["format"].as_str().unwrap_or("");
        let wrong = || Err(format!("{at}: expected {kind} {format}, found {value}"));
        match kind {
            "object" => {
                let Some(fields) = value.as_object() else {
                    return wrong();
                };
                for (key, field) in fields {
                    let inner = format!("{at}.{key}");
                    if let Some(prop) = node["properties"].get(key) {
                        self.check_node(prop, field, side, &inner)?;
                    } else if let Some(extra) = node.get("additionalProperties") {
                        self.check_node(extra, field, side, &inner)?;
                    } else {
                        return Err(format!("{inner}: unknown field"));
                    }
                }
                Ok(())
            }
            "array" => {
                let Some(items) = value.as_array() else {
                    return wrong();
                };
                for (i, item) in items.iter().enumerate() {
                    self.check_node(&node["items"], item, side, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            "string" => {
                let int64 = matches!(format, "int64" | "uint64");
                match value {
                    Value::String(s) if int64 && s.parse::<i128>().is_err() => wrong(),
                    Value::String(s) => match node["enum"].as_array() {
                        Some(allowed) if !allowed.iter().any(|a| a == s) => {
                            Err(format!("{at}: {s:?} is not one of {}", node["enum"]))
                        }
                        _ => Ok(()),
                    },
                    Value::Number(n) if int64 && side == Side::Request && n.is_i64() => Ok(()),
                    Value::Number(n) if int64 && side == Side::Request && n.is_u64() => Ok(()),
                    _ => wrong(),
                }
            }
            "integer" => {
                if value.is_i64() || value.is_u64() {
                    Ok(())
                } else {
                    wrong()
                }
            }
            "number" if value.is_number() => Ok(()),
            "boolean" if value.is_boolean() => Ok(()),
            "any" => Ok(()),
            _ => wrong(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn int64_is_a_string_in_responses_and_either_in_requests() {
        let d = Discovery::compute_v1();
        let body = json!({"sizeGb": 10});
        assert!(d.check("DisksResizeRequest", &body, Side::Request).is_ok());
        assert!(d
            .check("DisksResizeRequest", &body, Side::Response)
            .is_err());
        let text = json!({"sizeGb": "ten"});
        assert!(d.check("DisksResizeRequest", &text, Side::Request).is_err());
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_named() {
        let d = Discovery::compute_v1();
        let e = d
            .check("Disk", &json!({"name": "d", "sizeGB": "1"}), Side::Request)
            .unwrap_err();
        assert!(e.contains("Disk.sizeGB: unknown field"), "{e}");
        let e = d
            .check(
                "DeprecationStatus",
                &json!({"state": "GONE"}),
                Side::Request,
            )
            .unwrap_err();
        assert!(e.contains("is not one of"), "{e}");
        let labels = json!({"labels": {"a": "b"}, "guestOsFeatures": [{"type": "GVNIC"}]});
        assert!(d.check("Image", &labels, Side::Response).is_ok());
    }
}
