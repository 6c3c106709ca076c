//! The emulator against Google's discovery document: every route exists there with the same
//! HTTP method and path, and one run touching every route answers each with a body that fits
//! the route's response schema (the client in `common` checks every body it sends and gets).

mod common;

use std::collections::BTreeSet;

use common::{fast, start, P, Z};
use cos_customizer_gce_emulator::{Discovery, Route, Script};
use serde_json::json;

#[test]
fn every_route_is_a_discovery_method_with_the_same_http_method_and_path() {
    let d = Discovery::compute_v1();
    assert!(
        d.revision().len() == 8,
        "the vendored document names its revision"
    );
    for route in Route::all() {
        let (resource, name) = route.discovery();
        let m = d
            .method(resource, name)
            .unwrap_or_else(|| panic!("{route:?}: no {resource}.{name}"));
        assert_eq!(m.http_method, route.http_method(), "{route:?}");
        assert_eq!(m.path, route.template(), "{route:?}");
        assert!(m.response.is_some(), "{route:?}");
    }
    assert_eq!(
        Route::all().count(),
        d.methods().len(),
        "the trimmed document holds exactly the served methods"
    );
}

#[tokio::test]
async fn every_route_answers_in_the_discovery_shape() {
    let (emu, c) = start(fast()).await;
    emu.script(
        "vm",
        Script::new()
            .serial_after(0, "BuildStatus: x\n")
            .stop_on_daisy_end(0),
    );
    let zone = format!("projects/{P}/zones/{Z}");
    let images = format!("projects/{P}/global/images");
    c.disk("boot").await;
    c.get(&format!("{zone}/disks/boot")).await;
    c.get(&format!("{zone}/disks?filter=labels.a%20%3D%20b"))
        .await;
    c.done(
        &c.post(&format!("{zone}/disks/boot/resize"), json!({"sizeGb": 11}))
            .await,
    )
    .await;
    c.instance("vm", "boot", true).await;
    let vm = c.get(&format!("{zone}/instances/vm")).await;
    c.get(&format!(
        "{zone}/instances?filter=labels.cos-customizer-cleanup%20%3D%20%22%22"
    ))
    .await;
    c.get(&format!("{zone}/instances/vm/serialPort?port=3&start=0"))
        .await;
    let set = json!({"fingerprint": vm["metadata"]["fingerprint"], "items": [{"key": "DaisyEnd", "value": "ack"}]});
    let op = c
        .post(&format!("{zone}/instances/vm/setMetadata"), set)
        .await;
    c.get(&format!(
        "{zone}/operations/{}",
        op["name"].as_str().unwrap()
    ))
    .await;
    c.done(&op).await;
    c.done(
        &c.post(&format!("{zone}/instances/vm/stop"), json!({}))
            .await,
    )
    .await;
    c.get(&format!("{zone}/instances/vm")).await;
    let img = c.post(&images, json!({"name": "out", "family": "f", "sourceDisk": format!("{zone}/disks/boot"), "labels": {"a": "b"}})).await;
    c.get(&format!(
        "projects/{P}/global/operations/{}",
        img["name"].as_str().unwrap()
    ))
    .await;
    c.done(&img).await;
    c.get(&format!("{images}/out")).await;
    c.get(&format!("{images}?filter=(family%20%3D%20f)&maxResults=1"))
        .await;
    c.get(&format!("{images}/family/f")).await;
    c.done(
        &c.post(
            &format!("{images}/out/deprecate"),
            json!({"state": "DEPRECATED"}),
        )
        .await,
    )
    .await;
    c.done(&c.delete(&format!("{images}/out")).await).await;
    c.get("projects/cos-cloud/global/images").await;
    c.done(&c.delete(&format!("{zone}/instances/vm")).await)
        .await;
    c.disk("last").await;
    c.done(&c.delete(&format!("{zone}/disks/last")).await).await;
    assert!(emu.resources().is_empty());

    let served: BTreeSet<String> = emu
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| Route::of(&r.method, &r.path))
        .map(|r| format!("{r:?}"))
        .collect();
    let all: BTreeSet<String> = Route::all().map(|r| format!("{r:?}")).collect();
    assert_eq!(
        served, all,
        "every route answered 200 and was checked against its schema"
    );
}
