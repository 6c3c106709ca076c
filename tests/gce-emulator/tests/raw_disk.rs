//! `images.insert` with `rawDisk` against a real fake-gcs-server: the emulator reads the source
//! and fails the operation, as GCE does, when it is missing or not an image.

mod common;

use common::{start, Client, P};
use cos_customizer_gce_emulator::Options;
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
use serde_json::{json, Value};

const BUCKET: &str = "raw-bucket";

/// An emulator reading rawDisk sources from a fresh fake-gcs-server, or `None` when the test
/// is skipped.
async fn setup() -> Option<(FakeGcs, cos_customizer_gce_emulator::Handle, Client)> {
    if !fake_gcs::require() {
        return None;
    }
    let gcs = FakeGcs::start(BUCKET)
        .await
        .expect("fake-gcs-server starts");
    let (emu, client) = start(Options {
        storage: Some(gcs.endpoint()),
        ..common::fast()
    })
    .await;
    Some((gcs, emu, client))
}

/// A `tar --format=oldgnu -Sczf` archive of a sparse `disk.raw` of `size` bytes, as the GCE
/// backend packs one.
fn sparse_disk_archive(size: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let file = std::fs::File::create(&raw).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    let archive = dir.path().join("disk.tar.gz");
    let status = std::process::Command::new("tar")
        .args(["--format=oldgnu", "-Sczf"])
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .arg("disk.raw")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(&archive).unwrap()
}

/// Inserts image `name` from `source` and returns the finished operation.
async fn insert(c: &Client, name: &str, source: &str) -> Value {
    let op = c
        .post(
            &format!("projects/{P}/global/images"),
            json!({"name": name, "rawDisk": {"source": source}}),
        )
        .await;
    c.done(&op).await
}

#[tokio::test]
async fn an_image_is_made_from_a_disk_raw_archive_and_sized_by_it() {
    let Some((gcs, emu, c)) = setup().await else {
        return;
    };
    // 1.5 GiB, sparse: the archive is tiny, the image is 2 GB.
    gcs.put(
        BUCKET,
        "w/build 1/cidata.tar.gz",
        &sparse_disk_archive(3 << 29),
    );
    let source = format!("https://storage.googleapis.com/{BUCKET}/w/build%201/cidata.tar.gz");
    let op = insert(&c, "cidata", &source).await;
    assert!(op.get("error").is_none(), "{op}");
    let image = c.get(&format!("projects/{P}/global/images/cidata")).await;
    assert_eq!(image["status"], "READY");
    assert_eq!(image["diskSizeGb"], "2");
    assert_eq!(image["rawDisk"]["source"], source.as_str());

    // Daisy's host for the same object.
    gcs.put(BUCKET, "w/small.tar.gz", &sparse_disk_archive(1 << 20));
    let op = insert(
        &c,
        "small",
        &format!("https://storage.cloud.google.com/{BUCKET}/w/small.tar.gz"),
    )
    .await;
    assert!(op.get("error").is_none(), "{op}");
    let image = c.get(&format!("projects/{P}/global/images/small")).await;
    assert_eq!(image["diskSizeGb"], "1");
    assert_eq!(emu.resources().images.len(), 2);
}

#[tokio::test]
async fn a_missing_object_or_bucket_fails_the_operation() {
    let Some((_gcs, emu, c)) = setup().await else {
        return;
    };
    let op = insert(
        &c,
        "gone",
        &format!("https://storage.googleapis.com/{BUCKET}/w/missing.tar.gz"),
    )
    .await;
    assert_eq!(op["status"], "DONE");
    assert_eq!(
        op["error"]["errors"][0]["code"], "RESOURCE_NOT_FOUND",
        "{op}"
    );
    let message = op["error"]["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("w%2Fmissing.tar.gz"), "{message}");
    assert!(message.contains("Google Cloud Storage object"), "{message}");
    assert_eq!(op["httpErrorStatusCode"], 404);
    c.fails(
        "GET",
        &format!("projects/{P}/global/images/gone"),
        None,
        404,
    )
    .await;

    let op = insert(
        &c,
        "nobucket",
        "https://storage.googleapis.com/no-such-bucket/w/a.tar.gz",
    )
    .await;
    let message = op["error"]["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("bucket 'no-such-bucket' is not found"),
        "{message}"
    );
    assert!(emu.resources().is_empty(), "{:?}", emu.resources());
}

#[tokio::test]
async fn content_that_is_not_a_disk_raw_archive_fails_the_operation() {
    let Some((gcs, emu, c)) = setup().await else {
        return;
    };
    gcs.put(BUCKET, "w/plain.txt", b"not an archive");
    // A gzipped tar whose first member is not disk.raw.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_cksum();
    tar.append_data(&mut header, "image.qcow2", &b"QFI\xfb"[..])
        .unwrap();
    gcs.put(
        BUCKET,
        "w/wrong.tar.gz",
        &tar.into_inner().unwrap().finish().unwrap(),
    );

    for (name, object) in [("plain", "w/plain.txt"), ("wrong", "w/wrong.tar.gz")] {
        let op = insert(
            &c,
            name,
            &format!("https://storage.googleapis.com/{BUCKET}/{object}"),
        )
        .await;
        assert_eq!(
            op["error"]["errors"][0]["code"], "INVALID_IMAGE_FILE",
            "{op}"
        );
        let message = op["error"]["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("not a valid image"), "{message}");
        assert_eq!(op["httpErrorStatusCode"], 400);
    }
    assert!(emu.resources().is_empty(), "{:?}", emu.resources());
}
