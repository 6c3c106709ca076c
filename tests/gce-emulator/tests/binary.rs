//! The standalone `gce-emulator` binary: `--listen`, `--seed`, `--storage`, the "listening on"
//! line, and a refused argument.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cos_customizer_testkit::fake_gcs::{self, FakeGcs};

#[tokio::test]
async fn serves_the_seed_it_is_given_on_the_printed_base() {
    let dir = std::env::temp_dir().join(format!("gce-emulator-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed.json");
    std::fs::write(
        &seed,
        r#"{"projects": ["only"], "zones": ["z-a"], "diskTypes": [{"name": "pd-standard"}],
            "images": [{"project": "only", "name": "base", "family": "fam", "creationTimestamp": "2025-01-01T00:00:00Z"}]}"#,
    )
    .unwrap();
    let (mut child, addr) = spawn(&["--listen", "127.0.0.1:0", "--seed", seed.to_str().unwrap()]);
    assert!(addr.ip().is_loopback(), "{addr}");
    let c = common::Client::at(addr);
    assert_eq!(
        c.get("projects/only/global/images/family/fam").await["name"],
        "base"
    );
    assert_eq!(
        c.fails("GET", "projects/cos-cloud/global/images", None, 404)
            .await,
        "notFound"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts the binary with `args`; returns it and the address of the base it prints.
fn spawn(args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap();
    let addr = base["http://".len()..base.len() - "/compute/v1/".len()]
        .parse()
        .unwrap();
    (child, addr)
}

#[tokio::test]
async fn reads_raw_disk_sources_from_the_storage_it_is_given() {
    if !fake_gcs::require() {
        return;
    }
    let gcs = FakeGcs::start("raw-disks").await.unwrap();
    let endpoint = gcs.endpoint();
    let (mut child, addr) = spawn(&["--listen", "127.0.0.1:0", "--storage", &endpoint]);
    let c = common::Client::at(addr);
    let op = c
        .post(
            "projects/cos-cloud/global/images",
            serde_json::json!({"name": "gone", "rawDisk": {
                "source": "https://storage.googleapis.com/raw-disks/missing.tar.gz"}}),
        )
        .await;
    let op = c.done(&op).await;
    assert_eq!(
        op["error"]["errors"][0]["code"], "RESOURCE_NOT_FOUND",
        "{op}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn refuses_unknown_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .arg("--mode=boot")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --mode"));
}

#[test]
fn boot_mode_needs_the_storage_it_fetches_cidata_from() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .arg("--boot")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--boot needs --storage"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
