//! Each route against a plain HTTP client: shapes, GCE's rules, the 501 rule, `requestId`,
//! strict URL forms, fingerprints and serial port offsets.

mod common;

use common::{fast, instance_body, start, IMAGE, P, Z};
use cos_customizer_gce_emulator::{Options, Script};
use serde_json::json;

#[tokio::test]
async fn disks_insert_get_resize_delete() {
    let (emu, c) = start(Options::default()).await;
    let body = json!({"name": "d1", "sourceImage": "projects/cos-cloud/global/images/family/cos-109-lts", "sizeGb": 12, "type": format!("projects/{P}/zones/{Z}/diskTypes/pd-ssd"), "labels": {"a": "b"}});
    let op = c.post(&format!("projects/{P}/zones/{Z}/disks"), body).await;
    assert_eq!(op["status"], "PENDING");
    assert_eq!(op["operationType"], "insert");
    assert!(op["zone"]
        .as_str()
        .unwrap()
        .ends_with(&format!("projects/{P}/zones/{Z}")));
    let op_path = format!(
        "projects/{P}/zones/{Z}/operations/{}",
        op["name"].as_str().unwrap()
    );
    assert_eq!(
        c.get(&format!("projects/{P}/zones/{Z}/disks/d1")).await["status"],
        "CREATING"
    );
    assert_eq!(c.get(&op_path).await["status"], "RUNNING");
    let done = c.get(&op_path).await;
    assert_eq!(done["status"], "DONE");
    assert!(done.get("error").is_none());
    let disk = c.get(&format!("projects/{P}/zones/{Z}/disks/d1")).await;
    assert_eq!(disk["kind"], "compute#disk");
    assert_eq!(disk["sizeGb"], "12");
    assert!(disk["id"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(
        disk["selfLink"],
        format!("https://www.googleapis.com/compute/v1/projects/{P}/zones/{Z}/disks/d1")
    );
    assert_eq!(
        disk["sourceImage"],
        format!("https://www.googleapis.com/compute/v1/{IMAGE}")
    );
    assert!(disk["type"]
        .as_str()
        .unwrap()
        .ends_with("/diskTypes/pd-ssd"));
    assert_eq!(disk["licenses"].as_array().unwrap().len(), 2);
    assert!(disk["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with("-07:00"));

    let resize = c
        .post(
            &format!("projects/{P}/zones/{Z}/disks/d1/resize"),
            json!({"sizeGb": "20"}),
        )
        .await;
    c.done(&resize).await;
    assert_eq!(
        c.get(&format!("projects/{P}/zones/{Z}/disks/d1")).await["sizeGb"],
        "20"
    );
    for same_or_smaller in ["20", "15"] {
        let r = c
            .fails(
                "POST",
                &format!("projects/{P}/zones/{Z}/disks/d1/resize"),
                Some(json!({"sizeGb": same_or_smaller})),
                400,
            )
            .await;
        assert_eq!(r, "invalid", "{same_or_smaller} GB");
    }

    c.done(&c.delete(&format!("projects/{P}/zones/{Z}/disks/d1")).await)
        .await;
    assert_eq!(
        c.fails(
            "GET",
            &format!("projects/{P}/zones/{Z}/disks/d1"),
            None,
            404
        )
        .await,
        "notFound"
    );
    assert!(emu.resources().is_empty());
}

#[tokio::test]
async fn disk_insert_enforces_gce_rules() {
    let (_emu, c) = start(Options::default()).await;
    let disks = format!("projects/{P}/zones/{Z}/disks");
    let small = json!({"name": "d", "sourceImage": IMAGE, "sizeGb": "5"});
    assert_eq!(c.fails("POST", &disks, Some(small), 400).await, "invalid");
    let bad_type =
        json!({"name": "d", "type": format!("projects/{P}/zones/{Z}/diskTypes/pd-fast")});
    assert_eq!(
        c.fails("POST", &disks, Some(bad_type), 404).await,
        "notFound"
    );
    let missing = json!({"name": "d", "sourceImage": "projects/cos-cloud/global/images/nope"});
    assert_eq!(
        c.fails("POST", &disks, Some(missing), 404).await,
        "notFound"
    );
    let bad_name = json!({"name": "Disk_1"});
    assert_eq!(
        c.fails("POST", &disks, Some(bad_name), 400).await,
        "invalid"
    );
    let bad_label = json!({"name": "d", "labels": {"Upper": "x"}});
    assert_eq!(
        c.fails("POST", &disks, Some(bad_label), 400).await,
        "invalid"
    );
    let blank = c.post(&disks, json!({"name": "blank"})).await;
    c.done(&blank).await;
    let d = c.get(&format!("{disks}/blank")).await;
    assert_eq!(d["sizeGb"], "500", "pd-standard's default size");
    assert_eq!(
        c.fails("POST", &disks, Some(json!({"name": "blank"})), 409)
            .await,
        "alreadyExists"
    );
    assert_eq!(
        c.fails(
            "GET",
            &format!("projects/{P}/zones/mars-1a/disks/blank"),
            None,
            404
        )
        .await,
        "notFound"
    );
    assert_eq!(
        c.fails(
            "GET",
            &format!("projects/nobody/zones/{Z}/disks/blank"),
            None,
            404
        )
        .await,
        "notFound"
    );
}

#[tokio::test]
async fn the_url_forms_gce_takes() {
    let (_emu, c) = start(Options::default()).await;
    let disks = format!("projects/{P}/zones/{Z}/disks");
    for bad in [
        "cos-109-17800-147-54",
        "http://example.com/compute/v1/projects/cos-cloud/global/images/cos-109-17800-147-54",
    ] {
        let r = c
            .fails(
                "POST",
                &disks,
                Some(json!({"name": "d", "sourceImage": bad})),
                400,
            )
            .await;
        assert_eq!(r, "invalid", "{bad}");
    }
    // A partial `global/images/…` is in the request's project, which has no such image.
    let here = json!({"name": "d", "sourceImage": "global/images/cos-109-17800-147-54"});
    assert_eq!(c.fails("POST", &disks, Some(here), 404).await, "notFound");
    for (name, image) in [
        (
            "full",
            format!("https://www.googleapis.com/compute/v1/{IMAGE}"),
        ),
        (
            "root",
            format!("https://compute.googleapis.com/compute/v1/{IMAGE}"),
        ),
    ] {
        c.done(&c.post(&disks, json!({"name": name, "sourceImage": image, "type": format!("https://www.googleapis.com/compute/v1/projects/{P}/zones/{Z}/diskTypes/pd-standard")})).await).await;
    }
    let short_type = json!({"name": "d", "type": "pd-standard"});
    assert_eq!(
        c.fails("POST", &disks, Some(short_type), 400).await,
        "invalid"
    );
    c.disk("boot").await;

    let instances = format!("projects/{P}/zones/{Z}/instances");
    let refused = [
        ("machineType", json!("n1-standard-1")),
        ("disks", json!([{"source": "boot", "boot": true}])),
        (
            "networkInterfaces",
            json!([{"network": "networks/default"}]),
        ),
        (
            "networkInterfaces",
            json!([{"subnetwork": "projects/host/regions/europe-west1/subnetworks/s"}]),
        ),
        (
            "disks",
            json!([{"initializeParams": {"sourceImage": IMAGE}, "boot": true}]),
        ),
    ];
    for (field, value) in refused {
        let mut body = instance_body("vm", "boot", false);
        body[field] = value.clone();
        assert_eq!(
            c.fails("POST", &instances, Some(body), 400).await,
            "invalid",
            "{field} = {value}"
        );
    }
    // The partial forms the discovery document gives for these fields, in the request's
    // project, and the full links under the API's other root.
    let partial = json!({
        "machineType": format!("zones/{Z}/machineTypes/n1-standard-1"),
        "disks": [{"source": format!("zones/{Z}/disks/boot"), "boot": true, "autoDelete": true}],
        "networkInterfaces": [{"network": "global/networks/default", "subnetwork": "regions/us-central1/subnetworks/s"}],
    });
    let full = json!({
        "machineType": format!("https://compute.googleapis.com/compute/v1/projects/{P}/zones/{Z}/machineTypes/n1-standard-1"),
        "disks": [{"source": format!("https://compute.googleapis.com/compute/v1/projects/{P}/zones/{Z}/disks/root"), "boot": true, "autoDelete": true}],
        "networkInterfaces": [{"network": format!("https://compute.googleapis.com/compute/v1/projects/{P}/global/networks/default")}],
    });
    for (name, forms) in [("partial", partial), ("full", full)] {
        let mut body = instance_body(name, "boot", true);
        for (k, v) in forms.as_object().unwrap() {
            body[k] = v.clone();
        }
        c.done(&c.post(&instances, body).await).await;
        let vm = c.get(&format!("{instances}/{name}")).await;
        assert_eq!(
            vm["machineType"],
            format!("https://www.googleapis.com/compute/v1/projects/{P}/zones/{Z}/machineTypes/n1-standard-1")
        );
        assert_eq!(
            vm["networkInterfaces"][0]["network"],
            format!("https://www.googleapis.com/compute/v1/projects/{P}/global/networks/default")
        );
        c.done(&c.delete(&format!("{instances}/{name}")).await)
            .await;
    }
    c.disk("boot").await;
    let mut shared_vpc = instance_body("vm", "boot", false);
    shared_vpc["networkInterfaces"] = json!([{"subnetwork": "https://www.googleapis.com/compute/v1/projects/host/regions/us-central1/subnetworks/s"}]);
    c.done(&c.post(&instances, shared_vpc).await).await;
    let vm = c.get(&format!("{instances}/vm")).await;
    let nic = &vm["networkInterfaces"][0];
    assert!(nic["subnetwork"]
        .as_str()
        .unwrap()
        .ends_with("projects/host/regions/us-central1/subnetworks/s"));
    assert!(nic.get("network").is_none() && nic.get("accessConfigs").is_none());
}

#[tokio::test]
async fn unknown_routes_answer_501_naming_the_route() {
    let (emu, c) = start(Options::default()).await;
    for (method, path) in [
        ("GET", format!("projects/{P}/zones/{Z}/machineTypes")),
        ("GET", format!("projects/{P}/global/snapshots")),
        ("PATCH", format!("projects/{P}/zones/{Z}/disks/d")),
        ("POST", format!("projects/{P}/zones/{Z}/instances/vm/start")),
        (
            "GET",
            format!("projects/{P}/regions/us-central1/operations/op"),
        ),
    ] {
        let (s, v) = c.call(method, &path, None).await;
        assert_eq!(s, 501, "{method} {path}");
        assert_eq!(v["error"]["errors"][0]["reason"], "notImplemented");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{method} /compute/v1/{path}")),
            "{msg}"
        );
    }
    let log = emu.requests();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|r| r.status == 501));
}

#[tokio::test]
async fn bodies_and_queries_are_checked_against_the_discovery_document() {
    let (_emu, c) = start(Options::default()).await;
    let disks = format!("projects/{P}/zones/{Z}/disks");
    let (s, v) = c.call("POST", &disks, None).await;
    assert_eq!(
        (s, v["error"]["errors"][0]["reason"].as_str()),
        (400, Some("parseError"))
    );
    let reason = c
        .fails("GET", &format!("{disks}/d?verbose=1"), None, 400)
        .await;
    assert_eq!(reason, "invalid");
    // A field GCE knows but the emulator does not model is refused loudly too.
    let r = c
        .fails(
            "POST",
            &disks,
            Some(json!({"name": "d", "physicalBlockSizeBytes": "4096"})),
            400,
        )
        .await;
    assert_eq!(r, "invalid");
    // int64 fields are accepted as numbers and as strings.
    c.done(&c.post(&disks, json!({"name": "n", "sizeGb": 11})).await)
        .await;
    c.done(&c.post(&disks, json!({"name": "s", "sizeGb": "11"})).await)
        .await;
}

#[tokio::test]
async fn request_ids_make_retried_inserts_return_the_same_operation() {
    let (emu, c) = start(Options::default()).await;
    let path =
        format!("projects/{P}/zones/{Z}/disks?requestId=123e4567-e89b-12d3-a456-426614174000");
    let body = json!({"name": "d", "sourceImage": IMAGE});
    let first = c.post(&path, body.clone()).await;
    let again = c.post(&path, body.clone()).await;
    assert_eq!(first["name"], again["name"]);
    assert_eq!(emu.resources().disks.len(), 1);
    let plain = format!("projects/{P}/zones/{Z}/disks");
    assert_eq!(
        c.fails("POST", &plain, Some(body.clone()), 409).await,
        "alreadyExists"
    );
    let bad = format!("{plain}?requestId=retry-1");
    assert_eq!(c.fails("POST", &bad, Some(body), 400).await, "invalid");
    let log = emu.requests();
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, plain);
    assert_eq!(
        log[0].query,
        [(
            "requestId".to_string(),
            "123e4567-e89b-12d3-a456-426614174000".to_string()
        )]
    );
    assert_eq!(log[0].body.as_ref().unwrap()["name"], "d");
    assert_eq!(log[0].status, 200);
}

#[tokio::test]
async fn instances_insert_get_list_stop_delete() {
    let (emu, c) = start(Options {
        stop_polls: 1,
        ..Options::default()
    })
    .await;
    c.disk("boot").await;
    c.disk("keep").await;
    let instances = format!("projects/{P}/zones/{Z}/instances");
    let op = c.post(&instances, instance_body("vm", "boot", true)).await;
    assert_eq!(
        c.get(&format!("{instances}/vm")).await["status"],
        "PROVISIONING"
    );
    c.done(&op).await;
    assert_eq!(c.get(&format!("{instances}/vm")).await["status"], "STAGING");
    let vm = c.get(&format!("{instances}/vm")).await;
    assert_eq!(vm["status"], "RUNNING");
    assert_eq!(vm["kind"], "compute#instance");
    assert_eq!(vm["disks"][0]["deviceName"], "boot");
    assert_eq!(vm["disks"][0]["diskSizeGb"], "10");
    assert_eq!(vm["scheduling"]["maxRunDuration"]["seconds"], "3600");
    assert_eq!(vm["metadata"]["items"][0]["key"], "user-data");
    let boot = c.get(&format!("projects/{P}/zones/{Z}/disks/boot")).await;
    assert_eq!(boot["users"][0], vm["selfLink"]);
    let mut second = instance_body("vm2", "boot", false);
    second["labels"] = json!({"other": "x"});
    assert_eq!(
        c.fails("POST", &instances, Some(second.clone()), 400).await,
        "resourceInUseByAnotherResource"
    );
    second["disks"][0]["source"] = json!(format!("projects/{P}/zones/{Z}/disks/keep"));
    c.done(&c.post(&instances, second).await).await;

    let all = c.get(&instances).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let labelled = c
        .get(&format!(
            "{instances}?filter=labels.cos-customizer-cleanup%20%3D%20%22%22"
        ))
        .await;
    assert_eq!(labelled["items"].as_array().unwrap().len(), 1);
    let by_build = c
        .get(&format!(
            "{instances}?filter=(labels.cos-customizer-build+%3D+abcde)+AND+(status+%3D+RUNNING)"
        ))
        .await;
    assert_eq!(by_build["items"][0]["name"], "vm");
    let none = c
        .get(&format!("{instances}?filter=(labels.other+%3D+y)"))
        .await;
    assert!(none.get("items").is_none());
    let paged = c.get(&format!("{instances}?maxResults=1")).await;
    assert_eq!(paged["nextPageToken"], "page-1");
    let has_other = c.get(&format!("{instances}?filter=labels.other%3A*")).await;
    assert_eq!(has_other["items"].as_array().unwrap().len(), 1);
    assert_eq!(has_other["items"][0]["name"], "vm2");
    let either = c
        .get(&format!(
            "{instances}?filter=(name+%3D+%22vm%22)+OR+(labels.other+%3D+x)"
        ))
        .await;
    assert_eq!(either["items"].as_array().unwrap().len(), 2);
    let bad = c
        .fails(
            "GET",
            &format!("{instances}?filter=labels.a+%3E+b"),
            None,
            400,
        )
        .await;
    assert_eq!(bad, "invalid");

    c.done(&c.post(&format!("{instances}/vm2/stop"), json!({})).await)
        .await;
    assert_eq!(
        c.get(&format!("{instances}/vm2")).await["status"],
        "STOPPING"
    );
    assert_eq!(
        c.get(&format!("{instances}/vm2")).await["status"],
        "TERMINATED"
    );

    c.done(&c.delete(&format!("{instances}/vm")).await).await;
    assert_eq!(
        emu.resources().disks,
        [format!("projects/{P}/zones/{Z}/disks/keep")],
        "autoDelete took the boot disk"
    );
    c.done(&c.delete(&format!("{instances}/vm2")).await).await;
    c.done(
        &c.delete(&format!("projects/{P}/zones/{Z}/disks/keep"))
            .await,
    )
    .await;
    assert!(emu.resources().is_empty());
}

#[tokio::test]
async fn stops_deprovision_as_often_as_asked_and_statuses_can_be_scripted() {
    let (emu, c) = start(Options {
        stop_polls: 0,
        deprovisioning_every: 2,
        ..Options::default()
    })
    .await;
    let instances = format!("projects/{P}/zones/{Z}/instances");
    let status = |name: &str| {
        let (c, path) = (&c, format!("{instances}/{name}"));
        async move { c.get(&path).await["status"].as_str().unwrap().to_string() }
    };
    let mut seen = Vec::new();
    for name in ["a", "b"] {
        c.disk(name).await;
        c.instance(name, name, true).await;
        assert_eq!(status(name).await, "STAGING");
        c.done(&c.post(&format!("{instances}/{name}/stop"), json!({})).await)
            .await;
        let mut statuses = vec![status(name).await];
        while statuses.last().unwrap() != "TERMINATED" {
            statuses.push(status(name).await);
        }
        seen.push(statuses);
    }
    assert_eq!(
        seen,
        [vec!["TERMINATED"], vec!["DEPROVISIONING", "TERMINATED"]],
        "the second of two stops deprovisions"
    );

    // A test's script: any values (this client checks them against the discovery document;
    // the contract tests send values it does not know yet), then the resource's own again.
    emu.show_statuses(&format!("{instances}/a"), &["REPAIRING", "PENDING_STOP"]);
    let disk = format!("projects/{P}/zones/{Z}/disks/later");
    emu.show_statuses(&disk, &["RESTORING", "FAILED"]);
    assert_eq!(status("a").await, "REPAIRING");
    assert_eq!(status("a").await, "PENDING_STOP");
    assert_eq!(status("a").await, "TERMINATED");
    c.disk("later").await;
    for expected in ["RESTORING", "FAILED", "READY"] {
        assert_eq!(c.get(&disk).await["status"], expected);
    }
    emu.show_statuses(IMAGE, &["PENDING", "DELETING"]);
    for expected in ["PENDING", "DELETING", "READY"] {
        assert_eq!(c.get(IMAGE).await["status"], expected);
    }
}

#[tokio::test]
async fn serial_port_offsets_truncation_and_readiness() {
    let (emu, c) = start(Options {
        serial_window: 16,
        ..Options::default()
    })
    .await;
    emu.script(
        "preload-",
        Script::new()
            .serial_after(0, "BuildStatus: a\n")
            .serial_after(2, "BuildStatus: 0123456789\n"),
    );
    c.disk("boot").await;
    let instances = format!("projects/{P}/zones/{Z}/instances");
    let op = c
        .post(&instances, instance_body("preload-vm", "boot", true))
        .await;
    let serial = format!("{instances}/preload-vm/serialPort");
    let r = c.fails("GET", &format!("{serial}?port=3"), None, 400).await;
    assert_eq!(r, "resourceNotReady", "no output before RUNNING");
    c.done(&op).await;
    let first = c.get(&format!("{serial}?port=3&start=0")).await;
    assert_eq!(first["kind"], "compute#serialPortOutput");
    assert_eq!(
        (
            first["contents"].as_str(),
            first["start"].as_str(),
            first["next"].as_str()
        ),
        (Some("BuildStatus: a\n"), Some("0"), Some("15"))
    );
    let second = c.get(&format!("{serial}?port=3&start=15")).await;
    assert_eq!(
        (second["contents"].as_str(), second["next"].as_str()),
        (Some(""), Some("15"))
    );
    // The third read brings 24 more bytes; the 16-byte window keeps only the last 16.
    let third = c.get(&format!("{serial}?port=3&start=15")).await;
    assert_eq!(third["start"], "23", "start moves past the dropped output");
    assert_eq!(third["next"], "39");
    assert_eq!(third["contents"], "tus: 0123456789\n");
    let tail = c.get(&format!("{serial}?port=3&start=-4")).await;
    assert_eq!(
        (tail["contents"].as_str(), tail["start"].as_str()),
        (Some("789\n"), Some("35"))
    );
    let other = c.get(&format!("{serial}?port=1")).await;
    assert_eq!(
        (other["contents"].as_str(), other["next"].as_str()),
        (Some(""), Some("0"))
    );
    assert_eq!(
        c.fails("GET", &format!("{serial}?port=5"), None, 400).await,
        "invalid"
    );
    assert!(emu.append_serial(&format!("{instances}/preload-vm"), b"\xffraw"));
    let raw = c.get(&format!("{serial}?port=3&start=39")).await;
    assert_eq!(
        (raw["contents"].as_str(), raw["next"].as_str()),
        (Some("\u{fffd}raw"), Some("43")),
        "next counts bytes"
    );
}

#[tokio::test]
async fn metadata_fingerprints_and_daisy_end() {
    let (emu, c) = start(fast()).await;
    emu.script(
        "",
        Script::new().on_resize("resized\n").stop_on_daisy_end(2),
    );
    c.disk("boot").await;
    c.instance("vm", "boot", true).await;
    let vm_path = format!("projects/{P}/zones/{Z}/instances/vm");
    let vm = c.get(&vm_path).await;
    let fp = vm["metadata"]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 12, "base64 of 8 bytes");

    c.done(
        &c.post(
            &format!("projects/{P}/zones/{Z}/disks/boot/resize"),
            json!({"sizeGb": "12"}),
        )
        .await,
    )
    .await;
    let out = c.get(&format!("{vm_path}/serialPort?port=3")).await;
    assert_eq!(out["contents"], "resized\n");

    let mut items = vm["metadata"]["items"].as_array().unwrap().clone();
    items.push(json!({"key": "DaisyEnd", "value": "ack"}));
    let stale = json!({"fingerprint": "AAAAAAAAAAA=", "items": items});
    assert_eq!(
        c.fails("POST", &format!("{vm_path}/setMetadata"), Some(stale), 412)
            .await,
        "conditionNotMet"
    );
    let no_fp = json!({"items": items});
    assert_eq!(
        c.fails("POST", &format!("{vm_path}/setMetadata"), Some(no_fp), 412)
            .await,
        "conditionNotMet"
    );
    let big =
        json!({"fingerprint": fp, "items": [{"key": "k", "value": "x".repeat(256 * 1024 + 1)}]});
    assert_eq!(
        c.fails("POST", &format!("{vm_path}/setMetadata"), Some(big), 400)
            .await,
        "invalid"
    );
    let set = json!({"fingerprint": fp, "items": items});
    let op = c.post(&format!("{vm_path}/setMetadata"), set).await;
    assert_eq!(op["operationType"], "setMetadata");
    c.done(&op).await;
    let after = c.get(&vm_path).await;
    assert_ne!(
        after["metadata"]["fingerprint"],
        fp.as_str(),
        "the fingerprint changes on every set"
    );
    assert_eq!(after["metadata"]["items"].as_array().unwrap().len(), 3);
    assert_eq!(after["status"], "STOPPING");
    assert_eq!(c.get(&vm_path).await["status"], "STOPPING");
    assert_eq!(c.get(&vm_path).await["status"], "TERMINATED");
    let r = c
        .fails("GET", &format!("{vm_path}/serialPort?port=3"), None, 400)
        .await;
    assert_eq!(r, "resourceNotReady");
}

#[tokio::test]
async fn images_insert_get_list_family_deprecate_delete() {
    let (emu, c) = start(Options {
        stop_polls: 0,
        ..fast()
    })
    .await;
    c.disk("boot").await;
    c.instance("vm", "boot", false).await;
    let images = format!("projects/{P}/global/images");
    let body = json!({
        "name": "out-1", "family": "mine", "labels": {"a": "b"},
        "licenses": ["projects/p/global/licenses/x", "https://www.googleapis.com/compute/v1/projects/cos-cloud/global/licenses/cos"],
        "sourceDisk": format!("projects/{P}/zones/{Z}/disks/boot"),
        "description": "Derivative of projects/cos-cloud/global/images/cos-109-17800-147-54.",
    });
    let r = c.fails("POST", &images, Some(body.clone()), 400).await;
    assert_eq!(
        r, "resourceInUseByAnotherResource",
        "the disk is attached to a RUNNING VM"
    );
    let forced = c
        .post(
            &format!("{images}?forceCreate=true"),
            json!({"name": "forced", "sourceDisk": format!("projects/{P}/zones/{Z}/disks/boot")}),
        )
        .await;
    assert!(
        forced.get("zone").is_none(),
        "images answer with global operations"
    );
    c.done(&forced).await;
    c.post(
        &format!("projects/{P}/zones/{Z}/instances/vm/stop"),
        json!({}),
    )
    .await;
    assert_eq!(
        c.get(&format!("projects/{P}/zones/{Z}/instances/vm")).await["status"],
        "TERMINATED"
    );
    let op = c.post(&images, body).await;
    assert_eq!(c.get(&format!("{images}/out-1")).await["status"], "PENDING");
    let op_path = format!(
        "projects/{P}/global/operations/{}",
        op["name"].as_str().unwrap()
    );
    c.get(&op_path).await;
    assert_eq!(c.get(&op_path).await["status"], "DONE");
    let image = c.get(&format!("{images}/out-1")).await;
    assert_eq!(image["status"], "READY");
    assert_eq!(image["diskSizeGb"], "10");
    assert_eq!(image["architecture"], "X86_64");
    let licenses: Vec<&str> = image["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        licenses.len(),
        3,
        "inherited cos and shielded-cos plus x, without the duplicate: {licenses:?}"
    );
    assert!(licenses
        .iter()
        .all(|l| l.starts_with("https://www.googleapis.com/compute/v1/projects/")));
    assert_eq!(
        image["sourceDisk"],
        format!("https://www.googleapis.com/compute/v1/projects/{P}/zones/{Z}/disks/boot")
    );

    let raw_ok = json!({"name": "cidata", "rawDisk": {"source": "https://storage.cloud.google.com/b/w/cidata.tar.gz"}});
    c.done(&c.post(&images, raw_ok).await).await;
    let raw_bad = json!({"name": "cidata2", "rawDisk": {"source": "gs://b/w/cidata.tar.gz"}});
    assert_eq!(
        c.fails("POST", &images, Some(raw_bad), 400).await,
        "invalid"
    );
    let two = json!({"name": "two", "rawDisk": {"source": "https://storage.googleapis.com/b/o"}, "sourceDisk": format!("projects/{P}/zones/{Z}/disks/boot")});
    assert_eq!(c.fails("POST", &images, Some(two), 400).await, "invalid");

    let family = c.get(&format!("{images}/family/mine")).await;
    assert_eq!(family["name"], "out-1");
    let dep = json!({"state": "DEPRECATED", "replacement": format!("projects/{P}/global/images/forced"), "deleted": "2030-01-01T00:00:00Z"});
    let op = c.post(&format!("{images}/out-1/deprecate"), dep).await;
    assert_eq!(op["operationType"], "deprecate");
    c.done(&op).await;
    let deprecated = c.get(&format!("{images}/out-1")).await;
    assert_eq!(deprecated["deprecated"]["state"], "DEPRECATED");
    assert!(deprecated["deprecated"]["replacement"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    assert_eq!(
        c.fails("GET", &format!("{images}/family/mine"), None, 404)
            .await,
        "notFound"
    );
    c.done(
        &c.post(
            &format!("{images}/out-1/deprecate"),
            json!({"state": "ACTIVE"}),
        )
        .await,
    )
    .await;
    assert!(c
        .get(&format!("{images}/out-1"))
        .await
        .get("deprecated")
        .is_none());
    let bad_time = json!({"state": "DEPRECATED", "deleted": "tomorrow"});
    assert_eq!(
        c.fails(
            "POST",
            &format!("{images}/out-1/deprecate"),
            Some(bad_time),
            400
        )
        .await,
        "invalid"
    );

    let filtered = c
        .get(&format!(
            "{images}?filter=(family+%3D+mine)+(name+!%3D+forced)"
        ))
        .await;
    let names: Vec<&str> = filtered["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["out-1"]);
    for name in ["out-1", "forced", "cidata"] {
        c.done(&c.delete(&format!("{images}/{name}")).await).await;
    }
    assert_eq!(
        c.fails("DELETE", &format!("{images}/out-1"), None, 404)
            .await,
        "notFound"
    );
    c.done(
        &c.delete(&format!("projects/{P}/zones/{Z}/instances/vm"))
            .await,
    )
    .await;
    c.done(
        &c.delete(&format!("projects/{P}/zones/{Z}/disks/boot"))
            .await,
    )
    .await;
    assert!(emu.resources().is_empty());
}

#[tokio::test]
async fn seeded_images_support_family_and_milestone_lookups() {
    let (_emu, c) = start(Options::default()).await;
    let images = "projects/cos-cloud/global/images";
    let lts = c.get(&format!("{images}/family/cos-109-lts")).await;
    assert_eq!(lts["name"], "cos-109-17800-147-54", "newest non-deprecated");
    let stable = c.get(&format!("{images}/family/cos-stable")).await;
    assert_eq!(
        stable["name"], "cos-stable-109-17800-66-27",
        "the deprecated one is skipped"
    );
    let all = c.get(images).await;
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        7,
        "list returns deprecated images too"
    );
    let x86 = c
        .get(&format!(
            "{images}?filter=name+eq+%22cos-.*%22+architecture+eq+X86_64"
        ))
        .await;
    assert_eq!(x86["items"].as_array().unwrap().len(), 6);
    let m109 = c
        .get(&format!(
            "{images}?filter=name%20eq%20%22cos-(%5Ba-z%5D%2B-)%3F109-.*%22"
        ))
        .await;
    let names: Vec<&str> = m109["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cos-109-17800-147-15",
            "cos-109-17800-147-54",
            "cos-stable-109-17800-66-27"
        ],
        "old and new name styles, arm64 left out"
    );
    let page1 = c.get(&format!("{images}?maxResults=4")).await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 4);
    let token = page1["nextPageToken"].as_str().unwrap();
    let page2 = c
        .get(&format!("{images}?maxResults=4&pageToken={token}"))
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 3);
    assert!(page2.get("nextPageToken").is_none());
    assert_eq!(
        c.fails("GET", &format!("{images}?pageToken=zzz"), None, 400)
            .await,
        "invalid"
    );
    let either = c
        .get(&format!(
            "{images}?filter=(labels.channel+%3D+dev)+OR+(family+%3D+nope)"
        ))
        .await;
    assert_eq!(either["items"][0]["name"], "cos-dev-125-19100-0-0");
    assert_eq!(
        c.fails(
            "GET",
            &format!("{images}?filter=(family+%3D+a)+OR"),
            None,
            400
        )
        .await,
        "invalid"
    );
    let labelled = c
        .get(&format!("{images}?filter=(labels.channel+%3D+dev)"))
        .await;
    assert_eq!(labelled["items"][0]["name"], "cos-dev-125-19100-0-0");
}

#[tokio::test]
async fn disks_list_shows_users_and_backdate_ages_resources() {
    let (emu, c) = start(Options::default()).await;
    c.disk("a-boot").await;
    c.disk("b-spare").await;
    c.instance("vm", "a-boot", false).await;
    let disks = format!("projects/{P}/zones/{Z}/disks");
    let all = c.get(&disks).await;
    assert_eq!(all["kind"], "compute#diskList");
    let items = all["items"].as_array().unwrap();
    let names: Vec<_> = items.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-boot", "b-spare"]);
    assert!(items[0]["users"][0]
        .as_str()
        .unwrap()
        .ends_with(&format!("projects/{P}/zones/{Z}/instances/vm")));
    assert!(items[1].get("users").is_none());
    let page = c.get(&format!("{disks}?maxResults=1")).await;
    assert_eq!(page["items"][0]["name"], "a-boot");
    assert_eq!(page["nextPageToken"], "page-1");
    let named = c.get(&format!("{disks}?filter=(name+%3D+b-spare)")).await;
    assert_eq!(named["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        c.get(&format!("projects/{P}/zones/us-central1-b/disks"))
            .await["items"],
        serde_json::Value::Null,
        "another zone's list is empty"
    );

    let day = std::time::Duration::from_secs(86_400);
    let created = |v: &serde_json::Value| v["creationTimestamp"].as_str().unwrap().to_string();
    let before = created(&c.get(&format!("{disks}/b-spare")).await);
    assert!(emu.backdate(&format!("{disks}/b-spare"), day));
    let after = created(&c.get(&format!("{disks}/b-spare")).await);
    assert!(after < before, "{after} is not before {before}");
    assert_eq!(
        after[10..],
        before[10..],
        "one day earlier, same time of day"
    );
    let vm = format!("projects/{P}/zones/{Z}/instances/vm");
    let vm_before = created(&c.get(&vm).await);
    assert!(emu.backdate(&vm, day));
    assert_ne!(created(&c.get(&vm).await), vm_before);
    assert!(emu.backdate(IMAGE, day), "seeded images too");
    assert!(!emu.backdate(&format!("{disks}/missing"), day));
}
