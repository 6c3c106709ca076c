//! Checks this crate's Compute calls and request bodies against Google's own schema: a trimmed
//! copy of the Compute v1 discovery document (`tests/fixtures/compute.v1.trimmed.json`, its
//! source version recorded in its `source` field). Every path and method called must exist
//! with the query parameters sent, and every field of every body built must exist in the
//! schema with the right JSON type.

use std::collections::BTreeMap;
use std::time::Duration;

use cos_customizer_gce::compute::body::{self, DiskSpec, Gpu, ImageSpec, InstanceSpec};
use cos_customizer_gce::compute::model::{Metadata, MetadataItem};
use cos_customizer_gce::compute::CALLS;
use cos_customizer_gce::names::build_labels;
use serde_json::Value;

fn discovery() -> Value {
    let text = include_str!("fixtures/compute.v1.trimmed.json");
    serde_json::from_str(text).expect("the vendored discovery document is JSON")
}

#[test]
fn every_call_exists_in_the_discovery_document() {
    let doc = discovery();
    for call in CALLS {
        let method = &doc["methods"][call.id];
        assert!(method.is_object(), "{} is not a Compute v1 method", call.id);
        assert_eq!(method["httpMethod"], call.method, "{}", call.id);
        assert_eq!(method["path"], call.path, "{}", call.id);
        for param in call.query {
            assert_eq!(
                method["parameters"][param]["location"], "query",
                "{} takes no query parameter {param}",
                call.id
            );
        }
    }
    // Every mutation that can take a requestId sends one.
    for call in CALLS {
        let takes_id = doc["methods"][call.id]["parameters"]
            .get("requestId")
            .is_some();
        assert_eq!(takes_id, call.query.contains(&"requestId"), "{}", call.id);
    }
}

/// Checks `value` against `schema`, a discovery schema object, naming the field in errors.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(name) = schema["$ref"].as_str() {
        let target = &doc["schemas"][name];
        assert!(target.is_object(), "{at}: schema {name} is not vendored");
        return check(doc, target, value, at);
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object"));
            for (key, field) in object {
                let at = format!("{at}.{key}");
                let field_schema = schema["properties"]
                    .get(key)
                    .or_else(|| schema.get("additionalProperties"))
                    .unwrap_or_else(|| panic!("{at}: no such field in the schema"));
                check(doc, field_schema, field, &at);
            }
        }
        Some("array") => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"));
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        // int64 and uint64 are strings in Google's JSON, like every other string.
        Some("string") => {
            assert!(value.is_string(), "{at}: {value} is not a string");
            if let Some(allowed) = schema["enum"].as_array() {
                assert!(
                    allowed.contains(value),
                    "{at}: {value} is not one of {allowed:?}"
                );
            }
            if matches!(schema["format"].as_str(), Some("int64" | "uint64")) {
                let text = value.as_str().unwrap_or_default();
                assert!(text.parse::<i64>().is_ok(), "{at}: {value} is not an int64");
            }
        }
        Some("integer") => assert!(
            value.is_i64() || value.is_u64(),
            "{at}: {value} is not an integer"
        ),
        Some("boolean") => assert!(value.is_boolean(), "{at}: {value} is not a boolean"),
        other => panic!("{at}: schema type {other:?} not handled"),
    }
}

fn check_request(call_id: &str, body: &Value) {
    let doc = discovery();
    let request = doc["methods"][call_id]["request"]
        .as_str()
        .unwrap_or_else(|| panic!("{call_id} takes no body"));
    check(&doc, &doc["schemas"][request], body, request);
}

#[test]
fn instance_bodies_fit_the_schema() {
    let labels = build_labels("b4x9q");
    let metadata = [MetadataItem {
        key: "user-data".into(),
        value: "#cloud-config".into(),
    }];
    let spec = InstanceSpec {
        name: "preload-vm-build-image-b4x9q",
        description: "d",
        machine_type: "n1-standard-1",
        disks: &[
            "boot-disk-build-image-b4x9q",
            "cidata-disk-build-image-b4x9q",
        ],
        labels: &labels,
        metadata: &metadata,
        service_account: "default",
        gpu: Some(Gpu {
            accelerator_type: "nvidia-tesla-t4",
            count: 1,
        }),
        network: Some("projects/host/global/networks/n"),
        subnetwork: Some("projects/host/regions/us-west1/subnetworks/s"),
        external_ip: true,
        max_run_duration: Some(Duration::from_secs(3600)),
    };
    check_request(
        "compute.instances.insert",
        &body::instance("p", "us-west1-b", &spec),
    );
    let plain = InstanceSpec {
        gpu: None,
        network: None,
        subnetwork: None,
        external_ip: false,
        ..spec
    };
    check_request(
        "compute.instances.insert",
        &body::instance("p", "us-west1-b", &plain),
    );
}

#[test]
fn disk_and_image_bodies_fit_the_schema() {
    let labels = build_labels("b4x9q");
    let disk = DiskSpec {
        name: "boot-disk-build-image-b4x9q",
        source_image: Some("projects/cos-cloud/global/images/family/cos-stable"),
        disk_type: "pd-standard",
        size_gb: Some(10),
        labels: &labels,
    };
    check_request("compute.disks.insert", &body::disk("p", "z", &disk));
    check_request("compute.disks.resize", &body::resize(20));
    let licenses = vec!["projects/p/global/licenses/l".to_string()];
    let image = ImageSpec {
        name: "out",
        source_disk: "projects/p/zones/z/disks/boot-disk-build-image-b4x9q",
        family: Some("f"),
        labels: &BTreeMap::new(),
        licenses: &licenses,
        description: "Derivative of projects/cos-cloud/global/images/x.",
    };
    check_request("compute.images.insert", &body::image(&image));
    check_request(
        "compute.images.insert",
        &body::raw_image(
            "cidata-build-image-b4x9q",
            "https://storage.googleapis.com/b/o",
            &labels,
        ),
    );
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    check_request(
        "compute.images.deprecate",
        &body::deprecate(
            "projects/p/global/images/out",
            now,
            Some(Duration::from_secs(60)),
        ),
    );
    let metadata = body::merge_metadata(
        &Metadata {
            fingerprint: Some("fp=".into()),
            items: vec![],
        },
        "DaisyEnd",
        "ack",
    );
    check_request(
        "compute.instances.setMetadata",
        &serde_json::to_value(&metadata).unwrap(),
    );
}

#[test]
fn the_checker_catches_unknown_fields_and_wrong_types() {
    let bad = [
        serde_json::json!({"name": "d", "sizeGb": 10}),
        serde_json::json!({"name": "d", "noSuchField": "x"}),
        serde_json::json!({"name": "d", "labels": {"k": 1}}),
    ];
    for body in bad {
        let result = std::panic::catch_unwind(|| check_request("compute.disks.insert", &body));
        assert!(result.is_err(), "{body} passed");
    }
}
