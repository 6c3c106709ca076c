//! Boot mode without booting anything: disks are QEMU disks of the image's file that grow on
//! `disks.resize`, an image made from a disk is a qcow2 file that goes with the image, and
//! what QEMU cannot do is refused with a 400. (The end-to-end suite `e2e_gce` boots VMs.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Client, P, Z};
use cos_customizer_gce_emulator::{BootOptions, Handle, Options, Seed};
use cos_customizer_qemu::QemuOptions;
use serde_json::{json, Value};

/// A seed whose `cos-cloud/tiny` image is a 1 MiB raw file in `dir`, given relative to the
/// seed file as a user would write it.
fn seed_in(dir: &Path) -> Seed {
    std::fs::write(dir.join("tiny.raw"), vec![0u8; 1 << 20]).unwrap();
    let mut doc: Value = serde_json::from_str(include_str!("../seed.json")).unwrap();
    doc["images"].as_array_mut().unwrap().push(json!({
        "project": "cos-cloud", "name": "tiny", "family": "tiny", "diskSizeGb": "1",
        "file": "tiny.raw",
    }));
    let seed_file = dir.join("seed.json");
    std::fs::write(&seed_file, doc.to_string()).unwrap();
    Seed::from_file(&seed_file).unwrap()
}

async fn start(dir: &Path) -> (Handle, Client) {
    common::start(Options {
        seed: seed_in(dir),
        wait_deadline: Duration::from_secs(2),
        boot: Some(BootOptions {
            qemu: QemuOptions {
                parent_dir: dir.to_path_buf(),
                ..Default::default()
            },
            images_dir: dir.join("images"),
        }),
        ..Options::default()
    })
    .await
}

fn virtual_size(file: &Path) -> u64 {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(file)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn disks_are_qemu_disks_and_images_are_files() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, c) = start(dir.path()).await;
    let seeded = emu
        .image_file("projects/cos-cloud/global/images/tiny")
        .unwrap();
    assert_eq!(seeded, dir.path().join("tiny.raw"), "relative to the seed");

    let op = c
        .post(
            &format!("projects/{P}/zones/{Z}/disks"),
            json!({"name": "d1", "sourceImage": "projects/cos-cloud/global/images/family/tiny"}),
        )
        .await;
    assert!(c.done(&op).await.get("error").is_none());
    let files = emu.boot_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let overlay: PathBuf = files[0].clone();
    assert!(overlay.ends_with("d1.qcow2"), "{overlay:?}");
    assert_eq!(virtual_size(&overlay), 1 << 30, "the disk's sizeGb");

    let op = c
        .post(
            &format!("projects/{P}/zones/{Z}/disks/d1/resize"),
            json!({"sizeGb": "2"}),
        )
        .await;
    assert!(c.done(&op).await.get("error").is_none());
    assert_eq!(virtual_size(&overlay), 2 << 30, "resized");

    let op = c
        .post(
            &format!("projects/{P}/global/images"),
            json!({"name": "from-d1", "sourceDisk": format!("projects/{P}/zones/{Z}/disks/d1")}),
        )
        .await;
    assert!(c.done(&op).await.get("error").is_none());
    let path = format!("projects/{P}/global/images/from-d1");
    let file = emu
        .image_file(&path)
        .expect("an image made from a disk has a file");
    assert_eq!(file, dir.path().join("images/from-d1.qcow2"));
    assert_eq!(virtual_size(&file), 2 << 30);
    assert_eq!(emu.image(&path).unwrap()["diskSizeGb"], "2");

    let op = c.delete(&format!("projects/{P}/zones/{Z}/disks/d1")).await;
    assert!(c.done(&op).await.get("error").is_none());
    assert_eq!(emu.boot_files(), Vec::<PathBuf>::new());
    let op = c.delete(&path).await;
    assert!(c.done(&op).await.get("error").is_none());
    assert!(!file.exists(), "the image's file goes with it");
    assert!(seeded.exists(), "a seeded file is never removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_qemu_cannot_do_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_emu, c) = start(dir.path()).await;
    let disks = format!("projects/{P}/zones/{Z}/disks");
    let (status, body) = c
        .call(
            "POST",
            &disks,
            Some(json!({"name": "nofile", "sourceImage": common::IMAGE})),
        )
        .await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"file\" in the seed"), "{message}");
    let (status, _) = c
        .call(
            "POST",
            &disks,
            Some(json!({"name": "blank", "sizeGb": "1"})),
        )
        .await;
    assert_eq!(status, 400, "a blank disk has nothing to boot");
}

#[test]
fn a_seed_image_whose_file_is_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = seed_in(dir.path());
    std::fs::remove_file(dir.path().join("tiny.raw")).unwrap();
    seed.images.retain(|i| i["name"] == "tiny");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(cos_customizer_gce_emulator::Emulator::start(Options {
            seed,
            ..Options::default()
        }))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("tiny.raw"), "{err:#}");
}
