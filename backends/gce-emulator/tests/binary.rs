//! The standalone `gce-emulator` binary: `--listen`, `--seed`, the "listening on" line, and a
//! refused argument.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .args(["--listen", "127.0.0.1:0", "--seed"])
        .arg(&seed)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/compute/v1/"),
        "{base}"
    );
    let addr: std::net::SocketAddr = base["http://".len()..base.len() - "/compute/v1/".len()]
        .parse()
        .unwrap();
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

#[test]
fn refuses_unknown_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .arg("--mode=boot")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --mode"));
}
