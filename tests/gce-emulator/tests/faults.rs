//! Each injectable fault, on the routes the preloader will meet it on.

mod common;

use common::{fast, instance_body, start, P, Z};
use cos_customizer_gce_emulator::{Fault, Options, Route, Script};
use serde_json::json;

#[tokio::test]
async fn http_faults_answer_once_then_the_route_works() {
    let (emu, c) = start(Options::default()).await;
    c.disk("boot").await;
    c.instance("vm", "boot", true).await;
    let serial = format!("projects/{P}/zones/{Z}/instances/vm/serialPort?port=3");
    emu.inject(Route::InstanceSerialPort, Fault::rate_limited());
    emu.inject(Route::InstanceSerialPort, Fault::unavailable());
    emu.inject(Route::InstanceSerialPort, Fault::quota_exceeded());
    assert_eq!(
        c.fails("GET", &serial, None, 429).await,
        "rateLimitExceeded"
    );
    assert_eq!(c.fails("GET", &serial, None, 503).await, "backendError");
    assert_eq!(c.fails("GET", &serial, None, 403).await, "quotaExceeded");
    c.get(&serial).await;
    let log = emu.requests();
    let statuses: Vec<u16> = log.iter().rev().take(4).map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 503, 429]);
}

#[tokio::test]
async fn quota_and_stockout_arrive_on_the_insert_operation() {
    let (emu, c) = start(Options::default()).await;
    c.disk("boot").await;
    let instances = format!("projects/{P}/zones/{Z}/instances");
    for (fault, code, http) in [
        (Fault::op_quota_exceeded(), "QUOTA_EXCEEDED", 403),
        (
            Fault::op_stockout(Z, "n1-standard-1"),
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            503,
        ),
    ] {
        emu.inject(Route::InstanceInsert, fault);
        let op = c.post(&instances, instance_body("vm", "boot", true)).await;
        let done = c.done(&op).await;
        assert_eq!(done["error"]["errors"][0]["code"], code);
        assert!(
            done["error"]["errors"][0]["message"]
                .as_str()
                .unwrap()
                .len()
                > 10
        );
        assert_eq!(done["httpErrorStatusCode"], http);
        assert!(
            emu.resources().instances.is_empty(),
            "a failed insert leaves nothing"
        );
    }
    assert_eq!(emu.resources().disks.len(), 1, "the disk stays");
    c.instance("vm", "boot", true).await;
}

#[tokio::test]
async fn fingerprint_faults_as_412_as_a_race_and_on_the_operation() {
    let (emu, c) = start(fast()).await;
    c.disk("boot").await;
    c.instance("vm", "boot", true).await;
    let vm = format!("projects/{P}/zones/{Z}/instances/vm");
    let set = |fp: &serde_json::Value| json!({"fingerprint": fp, "items": [{"key": "DaisyEnd", "value": "ack"}]});

    emu.inject(Route::InstanceSetMetadata, Fault::precondition_failed());
    let fp = c.get(&vm).await["metadata"]["fingerprint"].clone();
    assert_eq!(
        c.fails("POST", &format!("{vm}/setMetadata"), Some(set(&fp)), 412)
            .await,
        "conditionNotMet"
    );

    emu.inject(Route::InstanceSetMetadata, Fault::ConcurrentMetadataChange);
    assert_eq!(
        c.fails("POST", &format!("{vm}/setMetadata"), Some(set(&fp)), 412)
            .await,
        "conditionNotMet"
    );
    let moved = c.get(&vm).await["metadata"]["fingerprint"].clone();
    assert_ne!(moved, fp, "the other writer moved the fingerprint");

    emu.inject(Route::InstanceSetMetadata, Fault::op_fingerprint_mismatch());
    let op = c.post(&format!("{vm}/setMetadata"), set(&moved)).await;
    let done = c.done(&op).await;
    assert_eq!(done["httpErrorStatusCode"], 412);
    assert_eq!(done["error"]["errors"][0]["code"], "CONDITION_NOT_MET");
    let after = c.get(&vm).await;
    assert_eq!(after["metadata"]["fingerprint"], moved, "nothing changed");
    assert_eq!(after["metadata"]["items"].as_array().unwrap().len(), 2);

    c.done(&c.post(&format!("{vm}/setMetadata"), set(&moved)).await)
        .await;
    assert_eq!(c.get(&vm).await["metadata"]["items"][0]["key"], "DaisyEnd");
}

#[tokio::test]
async fn operations_that_stay_running_and_waits_that_return_early() {
    let (emu, c) = start(fast()).await;
    let disks = format!("projects/{P}/zones/{Z}/disks");
    emu.inject(Route::DiskInsert, Fault::OpStaysRunning(2));
    let op = c.post(&disks, json!({"name": "slow"})).await;
    let path = format!(
        "projects/{P}/zones/{Z}/operations/{}",
        op["name"].as_str().unwrap()
    );
    let statuses = [
        c.get(&path).await,
        c.get(&path).await,
        c.get(&path).await,
        c.get(&path).await,
    ]
    .map(|o| o["status"].as_str().unwrap().to_string());
    assert_eq!(statuses, ["RUNNING", "RUNNING", "RUNNING", "DONE"]);

    emu.inject(Route::DiskInsert, Fault::OpStaysRunning(1));
    let op = c.post(&disks, json!({"name": "held"})).await;
    let path = format!(
        "projects/{P}/zones/{Z}/operations/{}",
        op["name"].as_str().unwrap()
    );
    let started = std::time::Instant::now();
    let first = c.post(&format!("{path}/wait"), json!({})).await;
    assert_eq!(
        first["status"], "RUNNING",
        "the wait gave up at its deadline"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(50));
    assert_eq!(
        c.post(&format!("{path}/wait"), json!({})).await["status"],
        "DONE"
    );

    emu.inject(Route::ZoneOperationWait, Fault::WaitReturnsEarly);
    let op = c.post(&disks, json!({"name": "early"})).await;
    let path = format!(
        "projects/{P}/zones/{Z}/operations/{}",
        op["name"].as_str().unwrap()
    );
    assert_eq!(
        c.post(&format!("{path}/wait"), json!({})).await["status"],
        "RUNNING"
    );
    assert_eq!(
        c.post(&format!("{path}/wait"), json!({})).await["status"],
        "DONE"
    );

    let image = c
        .post(
            &format!("projects/{P}/global/images"),
            json!({"name": "img", "sourceDisk": format!("projects/{P}/zones/{Z}/disks/slow")}),
        )
        .await;
    emu.inject(Route::GlobalOperationWait, Fault::WaitReturnsEarly);
    let gpath = format!(
        "projects/{P}/global/operations/{}",
        image["name"].as_str().unwrap()
    );
    assert_eq!(
        c.post(&format!("{gpath}/wait"), json!({})).await["status"],
        "RUNNING"
    );
    assert_eq!(c.get(&gpath).await["status"], "DONE");
    let missing = format!("projects/{P}/zones/{Z}/operations/operation-0-000000000000");
    assert_eq!(c.fails("GET", &missing, None, 404).await, "notFound");
    let wrong_scope = format!(
        "projects/{P}/global/operations/{}",
        op["name"].as_str().unwrap()
    );
    assert_eq!(c.fails("GET", &wrong_scope, None, 404).await, "notFound");
}

#[tokio::test]
async fn disk_delete_in_use_n_times_then_real_in_use() {
    let (emu, c) = start(Options::default()).await;
    emu.script("vm", Script::new());
    c.disk("boot").await;
    let disk = format!("projects/{P}/zones/{Z}/disks/boot");
    emu.inject(Route::DiskDelete, Fault::disk_in_use());
    emu.inject(Route::DiskDelete, Fault::disk_in_use());
    for _ in 0..2 {
        assert_eq!(
            c.fails("DELETE", &disk, None, 400).await,
            "resourceInUseByAnotherResource"
        );
    }
    c.done(&c.delete(&disk).await).await;
    c.disk("boot").await;
    c.instance("vm", "boot", false).await;
    assert_eq!(
        c.fails("DELETE", &disk, None, 400).await,
        "resourceInUseByAnotherResource"
    );
    c.done(
        &c.delete(&format!("projects/{P}/zones/{Z}/instances/vm"))
            .await,
    )
    .await;
    c.done(&c.delete(&disk).await).await;
    assert!(emu.resources().is_empty());
}

#[tokio::test]
#[should_panic(expected = "cannot happen on DiskGet")]
async fn an_operation_fault_on_a_read_is_refused() {
    let (emu, _c) = start(Options::default()).await;
    emu.inject(Route::DiskGet, Fault::op_quota_exceeded());
}
