//! The two GCE-only steps around a build, against the Compute emulator: `-deprecate-old-images`
//! (`deprecate_in_family`: what is deprecated, the bodies sent, paging, a timeout) and
//! `-enable-cleanup` (`sweep_old`: only old resources of earlier builds go, instances first).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use cos_customizer_gce::auth::Auth;
use cos_customizer_gce::compute::body::{self, DiskSpec, InstanceSpec};
use cos_customizer_gce::compute::Compute;
use cos_customizer_gce::deprecate::deprecate_in_family;
use cos_customizer_gce::http::Api;
use cos_customizer_gce::names::build_labels;
use cos_customizer_gce::sweep::{sweep_old, Swept, DEFAULT_AGE};
use cos_customizer_gce_emulator::{Emulator, Fault, Handle, Options, RequestRecord, Route};

const P: &str = "test-project";
const Z: &str = "us-central1-a";
const SOURCE: &str = "projects/cos-cloud/global/images/cos-109-17800-147-54";
const FAMILY: &str = "cos-custom";
const TIMEOUT: Duration = Duration::from_secs(30);
const TWO_DAYS: Duration = Duration::from_secs(2 * 86_400);

/// An emulator seeded with `images` (Image fields; the project is `P`) and a client for it.
async fn start(images: Vec<Value>, mut opts: Options) -> (Handle, Compute) {
    for image in images {
        let Value::Object(mut map) = image else {
            panic!("a seeded image is an object");
        };
        map.insert("project".into(), P.into());
        opts.seed.images.push(map);
    }
    let emu = Emulator::start(opts).await.expect("emulator starts");
    let api = Api::new(&emu.compute_base(), Auth::None).unwrap();
    let compute = Compute::new(api).with_poll_interval(Duration::from_millis(20));
    (emu, compute)
}

fn image(name: &str, family: Option<&str>) -> Value {
    let mut v = json!({"name": name});
    if let Some(family) = family {
        v["family"] = family.into();
    }
    v
}

fn deprecated(mut image: Value, state: &str) -> Value {
    image["deprecated"] =
        json!({"state": state, "replacement": format!("projects/{P}/global/images/elsewhere")});
    image
}

/// The requests of `route`.
fn on(emu: &Handle, route: Route) -> Vec<RequestRecord> {
    emu.requests()
        .into_iter()
        .filter(|r| Route::of(&r.method, &r.path) == Some(route))
        .collect()
}

fn query<'a>(r: &'a RequestRecord, key: &str) -> Option<&'a str> {
    r.query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn family_images() -> Vec<Value> {
    vec![
        image("old-active", Some(FAMILY)),
        deprecated(image("old-deprecated", Some(FAMILY)), "DEPRECATED"),
        deprecated(image("old-obsolete", Some(FAMILY)), "OBSOLETE"),
        image("older-active", Some(FAMILY)),
        image("new", Some(FAMILY)),
        image("other-family", Some("cos-other")),
        image("no-family", None),
    ]
}

#[tokio::test]
async fn deprecation_with_a_ttl_sets_deleted_and_leaves_deprecated_images_alone() {
    let (emu, compute) = start(family_images(), Options::default()).await;
    let before = jiff::Timestamp::now();
    let names = deprecate_in_family(&compute, P, FAMILY, "new", Some(TWO_DAYS), TIMEOUT)
        .await
        .unwrap();
    let after = jiff::Timestamp::now();
    assert_eq!(names, ["old-active", "older-active"]);

    let lists = on(&emu, Route::ImageList);
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].path, format!("projects/{P}/global/images"));
    assert_eq!(
        query(&lists[0], "filter"),
        Some("(family = cos-custom) (name != new)")
    );
    let sent = on(&emu, Route::ImageDeprecate);
    let paths: Vec<_> = sent.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("projects/{P}/global/images/old-active/deprecate"),
            format!("projects/{P}/global/images/older-active/deprecate"),
        ]
    );
    for r in &sent {
        assert_eq!(r.status, 200);
        assert!(query(r, "requestId").is_some(), "{r:?}");
        let body = r.body.as_ref().unwrap();
        assert_eq!(body["state"], "DEPRECATED");
        assert_eq!(
            body["replacement"],
            format!("projects/{P}/global/images/new")
        );
        let deleted: jiff::Timestamp = body["deleted"].as_str().unwrap().parse().unwrap();
        let ttl = jiff::SignedDuration::try_from(TWO_DAYS).unwrap();
        // The body carries whole seconds.
        assert!(
            deleted
                >= (before + ttl)
                    .checked_sub(jiff::SignedDuration::from_secs(1))
                    .unwrap()
        );
        assert!(
            deleted <= after + ttl,
            "{deleted} is after {after} + 2 days"
        );
        assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    }
    assert!(
        !on(&emu, Route::GlobalOperationWait).is_empty(),
        "the operations were waited on"
    );

    let status = |name: &'static str| {
        let compute = &compute;
        async move { compute.images_get(P, name).await.unwrap().deprecated }
    };
    for name in ["old-active", "older-active"] {
        let d = status(name).await.expect("deprecated");
        assert_eq!(d.state, "DEPRECATED");
        assert!(
            d.replacement
                .as_deref()
                .unwrap()
                .ends_with(&format!("projects/{P}/global/images/new")),
            "{d:?}"
        );
    }
    let kept = status("old-deprecated").await.unwrap();
    assert!(kept.replacement.unwrap().ends_with("/images/elsewhere"));
    assert_eq!(status("old-obsolete").await.unwrap().state, "OBSOLETE");
    for name in ["new", "other-family", "no-family"] {
        assert_eq!(status(name).await, None, "{name}");
    }
}

#[tokio::test]
async fn deprecation_without_a_ttl_sends_no_deleted_time() {
    for ttl in [None, Some(Duration::ZERO)] {
        let (emu, compute) = start(family_images(), Options::default()).await;
        let names = deprecate_in_family(&compute, P, FAMILY, "new", ttl, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(names, ["old-active", "older-active"], "{ttl:?}");
        for r in on(&emu, Route::ImageDeprecate) {
            assert_eq!(
                r.body,
                Some(
                    json!({"state": "DEPRECATED", "replacement": format!("projects/{P}/global/images/new")})
                ),
                "{ttl:?}"
            );
        }
        // Again: everything is deprecated now, so nothing more is sent.
        emu.clear_requests();
        let again = deprecate_in_family(&compute, P, FAMILY, "new", ttl, TIMEOUT)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert!(on(&emu, Route::ImageDeprecate).is_empty());
    }
}

#[tokio::test]
async fn deprecation_reads_every_page_of_the_family() {
    // The emulator pages at 500 images: one active image on each of two pages.
    let images = (0..=500)
        .map(|i| {
            let img = image(&format!("img-{i:03}"), Some("big"));
            if i == 0 || i == 500 {
                img
            } else {
                deprecated(img, "DEPRECATED")
            }
        })
        .chain([image("big-new", Some("big"))])
        .collect();
    let (emu, compute) = start(images, Options::default()).await;
    let names = deprecate_in_family(&compute, P, "big", "big-new", None, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(names, ["img-000", "img-500"]);
    let lists = on(&emu, Route::ImageList);
    assert_eq!(lists.len(), 2);
    assert_eq!(query(&lists[0], "pageToken"), None);
    assert!(query(&lists[1], "pageToken").is_some());
    assert_eq!(query(&lists[1], "filter"), query(&lists[0], "filter"));
}

#[tokio::test]
async fn deprecation_that_never_finishes_times_out_naming_the_image() {
    let opts = Options {
        wait_deadline: Duration::from_millis(20),
        ..Options::default()
    };
    let (emu, compute) = start(family_images(), opts).await;
    emu.inject(Route::ImageDeprecate, Fault::OpStaysRunning(10_000));
    let err = deprecate_in_family(&compute, P, FAMILY, "new", None, Duration::from_millis(300))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("deprecating image old-active"), "{text}");
    assert!(text.contains("still"), "{text}");
}

#[tokio::test]
async fn deprecation_needs_a_family_and_valid_names() {
    let (emu, compute) = start(vec![], Options::default()).await;
    let err = deprecate_in_family(&compute, P, "", "new", None, TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("-image-family"), "{err}");
    let err = deprecate_in_family(&compute, P, "f) OR (name = x", "new", None, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a valid GCE resource name"),
        "{err:#}"
    );
    assert!(emu.requests().is_empty());
}

async fn done(compute: &Compute, op: cos_customizer_gce::compute::model::Operation) {
    compute.wait(P, op, TIMEOUT).await.unwrap();
}

/// Creates a disk from the seeded COS image.
async fn disk(compute: &Compute, name: &str, labels: &BTreeMap<String, String>) {
    let body = body::disk(
        P,
        Z,
        &DiskSpec {
            name,
            source_image: Some(SOURCE),
            disk_type: "pd-balanced",
            size_gb: None,
            labels,
        },
    );
    done(compute, compute.disks_insert(P, Z, &body).await.unwrap()).await;
}

/// Creates an instance booting from `boot` as this builder does (`autoDelete` disks, the
/// build's labels).
async fn our_instance(compute: &Compute, name: &str, boot: &str, id: &str) {
    let body = body::instance(
        P,
        Z,
        &InstanceSpec {
            name,
            description: "a build VM",
            machine_type: "n1-standard-1",
            disks: &[boot],
            labels: &build_labels(id),
            metadata: &[],
            service_account: "default",
            gpu: None,
            network: None,
            subnetwork: None,
            external_ip: false,
            max_run_duration: Some(Duration::from_secs(3600)),
        },
    );
    done(
        compute,
        compute.instances_insert(P, Z, &body).await.unwrap(),
    )
    .await;
}

/// Creates an instance booting from `boot` that keeps its disk when deleted, with `labels`
/// only (upstream's VMs carry just `cos-customizer-cleanup`).
async fn plain_instance(compute: &Compute, name: &str, boot: &str, labels: Value) {
    let body = json!({
        "name": name,
        "machineType": format!("projects/{P}/zones/{Z}/machineTypes/n1-standard-1"),
        "disks": [{"source": format!("projects/{P}/zones/{Z}/disks/{boot}"), "boot": true, "autoDelete": false}],
        "networkInterfaces": [{"network": format!("projects/{P}/global/networks/default")}],
        "labels": labels,
    });
    done(
        compute,
        compute.instances_insert(P, Z, &body).await.unwrap(),
    )
    .await;
}

fn disk_path(name: &str) -> String {
    format!("projects/{P}/zones/{Z}/disks/{name}")
}

fn instance_path(name: &str) -> String {
    format!("projects/{P}/zones/{Z}/instances/{name}")
}

fn names(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// An image seeded `age` ago with `labels`.
fn aged_image(name: &str, family: Option<&str>, labels: Value, age: Duration) -> Value {
    let created = jiff::Timestamp::now() - jiff::SignedDuration::try_from(age).unwrap();
    let mut v = image(name, family);
    v["labels"] = labels;
    v["creationTimestamp"] = created.to_string().into();
    v
}

#[tokio::test]
async fn the_sweep_deletes_only_old_resources_of_earlier_builds() {
    let ours = |id: &str| json!({"cos-customizer-cleanup": "", "cos-customizer-build": id});
    let images = vec![
        aged_image("cidata-build-image-old01", None, ours("old01"), TWO_DAYS),
        aged_image(
            "cidata-build-image-new01",
            None,
            ours("new01"),
            Duration::ZERO,
        ),
        // An output image in a family, an image whose name is not a build's, a user's image.
        aged_image("boot-build-image-old01", Some("f"), ours("old01"), TWO_DAYS),
        aged_image("release", None, ours("old01"), TWO_DAYS),
        aged_image("user-image", None, json!({}), TWO_DAYS),
    ];
    let (emu, compute) = start(images, Options::default()).await;

    // An old build whose VM was made upstream's way (cleanup label only, disk kept).
    disk(
        &compute,
        "boot-disk-build-image-old01",
        &build_labels("old01"),
    )
    .await;
    plain_instance(
        &compute,
        "preload-vm-build-image-old01",
        "boot-disk-build-image-old01",
        json!({"cos-customizer-cleanup": ""}),
    )
    .await;
    // A leftover disk of another old build, attached to nothing.
    disk(
        &compute,
        "cidata-disk-build-image-old02",
        &build_labels("old02"),
    )
    .await;
    // An old build disk that an old VM of someone else still uses.
    disk(
        &compute,
        "boot-disk-build-image-old03",
        &build_labels("old03"),
    )
    .await;
    plain_instance(
        &compute,
        "someone-vm",
        "boot-disk-build-image-old03",
        json!({"team": "x"}),
    )
    .await;
    // An old disk without our labels.
    disk(&compute, "data", &BTreeMap::new()).await;
    // A build running now.
    disk(
        &compute,
        "boot-disk-build-image-new01",
        &build_labels("new01"),
    )
    .await;
    our_instance(
        &compute,
        "preload-vm-build-image-new01",
        "boot-disk-build-image-new01",
        "new01",
    )
    .await;
    for path in [
        disk_path("boot-disk-build-image-old01"),
        instance_path("preload-vm-build-image-old01"),
        disk_path("cidata-disk-build-image-old02"),
        disk_path("boot-disk-build-image-old03"),
        instance_path("someone-vm"),
        disk_path("data"),
    ] {
        assert!(emu.backdate(&path, TWO_DAYS), "{path}");
    }
    emu.clear_requests();

    let swept = sweep_old(&compute, P, Z, DEFAULT_AGE, jiff::Timestamp::now())
        .await
        .unwrap();
    assert_eq!(
        swept,
        Swept {
            instances: names(&["preload-vm-build-image-old01"]),
            disks: names(&[
                "boot-disk-build-image-old01",
                "cidata-disk-build-image-old02"
            ]),
            images: names(&["cidata-build-image-old01"]),
            failures: vec![],
        }
    );

    // The old VM went first, and its disk only once it was gone.
    let deletes: Vec<String> = emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        deletes,
        [
            instance_path("preload-vm-build-image-old01"),
            disk_path("boot-disk-build-image-old01"),
            disk_path("cidata-disk-build-image-old02"),
            format!("projects/{P}/global/images/cidata-build-image-old01"),
        ]
    );
    let left = emu.resources();
    assert_eq!(
        left.instances,
        [
            instance_path("preload-vm-build-image-new01"),
            instance_path("someone-vm"),
        ]
    );
    assert_eq!(
        left.disks,
        [
            disk_path("boot-disk-build-image-new01"),
            disk_path("boot-disk-build-image-old03"),
            disk_path("data"),
        ]
    );
    for image in [
        "cidata-build-image-new01",
        "boot-build-image-old01",
        "release",
        "user-image",
    ] {
        compute
            .images_get(P, image)
            .await
            .unwrap_or_else(|e| panic!("{image} was deleted: {e:#}"));
    }

    // Nothing is old enough at a week.
    emu.clear_requests();
    let week = Duration::from_secs(7 * 86_400);
    let swept = sweep_old(&compute, P, Z, week, jiff::Timestamp::now())
        .await
        .unwrap();
    assert_eq!(swept, Swept::default());
    assert!(emu.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn a_disk_still_in_use_is_retried_then_reported_and_swept_next_time() {
    let (emu, compute) = start(vec![], Options::default()).await;
    disk(
        &compute,
        "boot-disk-build-image-old01",
        &build_labels("old01"),
    )
    .await;
    assert!(emu.backdate(&disk_path("boot-disk-build-image-old01"), TWO_DAYS));
    for _ in 0..4 {
        emu.inject(Route::DiskDelete, Fault::disk_in_use());
    }
    let swept = sweep_old(&compute, P, Z, DEFAULT_AGE, jiff::Timestamp::now())
        .await
        .unwrap();
    assert!(swept.disks.is_empty(), "{swept:?}");
    assert_eq!(swept.failures.len(), 1, "{swept:?}");
    let failure = &swept.failures[0];
    assert!(
        failure.starts_with(
            "disk boot-disk-build-image-old01: still in use: gave up after 4 attempts"
        ),
        "{failure}"
    );
    assert!(
        failure.contains("resourceInUseByAnotherResource"),
        "{failure}"
    );
    assert_eq!(on(&emu, Route::DiskDelete).len(), 4);

    let swept = sweep_old(&compute, P, Z, DEFAULT_AGE, jiff::Timestamp::now())
        .await
        .unwrap();
    assert_eq!(swept.disks, names(&["boot-disk-build-image-old01"]));
    assert!(emu.resources().is_empty());
}

#[tokio::test]
async fn a_failed_list_fails_the_sweep() {
    let (emu, compute) = start(vec![], Options::default()).await;
    emu.inject(Route::InstanceList, Fault::quota_exceeded());
    let err = sweep_old(&compute, P, Z, DEFAULT_AGE, jiff::Timestamp::now())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("listing the instances of project {P} in zone {Z}")),
        "{text}"
    );
    assert!(text.contains("quotaExceeded"), "{text}");
}
