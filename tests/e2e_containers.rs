//! End-to-end: containers preloaded, as the original's smoke test. A preload script pulls
//! an image with `sudo docker pull` from a real registry (Debian's `docker-registry`,
//! on the host's loopback, with TLS from a certificate the test makes), and the booted
//! output lists that image in `docker images` and runs it.
//!
//! Needs the fixture (`scripts/make-fixture.sh`), the static provisioner
//! (`scripts/build-provisioner.sh`), and `docker-registry`, `skopeo`, `openssl` and a
//! static `/bin/busybox` on the host (`scripts/install-deps.sh`); `scripts/test.sh`
//! makes and installs them all.

use std::process::Command;

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::registry::{Image, Registry, HOST_FROM_GUEST};
use common::{boot_and_check, read_file, vm_slots, Build};

/// Starts a registry holding `test/hello:1`, pushed there by skopeo from an OCI archive
/// built here; returns the registry.
fn registry_with_hello() -> Registry {
    let registry = Registry::start();
    registry.push("hello", &Image::SHELL);
    registry
}

#[test]
fn the_registry_serves_the_pushed_image_over_tls() {
    let registry = registry_with_hello();
    // Verified against the test's CA, as the guest's docker will: no TLS exemption.
    let out = Command::new("skopeo")
        .args([
            "inspect",
            &format!("--cert-dir={}", registry.cert_dir().display()),
            &format!("docker://127.0.0.1:{}/test/hello:1", registry.port),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}\nregistry log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log()
    );
    let inspect: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(inspect["Architecture"], "amd64", "{inspect}");
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspect}"
    );
}

#[test]
fn a_preloaded_container_is_in_the_image_and_runs() {
    let _vm = vm_slots(1);
    let registry = registry_with_hello();
    let image = format!("{HOST_FROM_GUEST}:{}/test/hello:1", registry.port);
    let repository = image.strip_suffix(":1").unwrap();
    // As the original's smoke test: docker from a script, the daemon's journal on failure.
    // The CA travels in the build context (the script's working folder); certs.d is
    // docker's per-registry trust, read at each pull, so the daemon needs no restart.
    let preload = format!(
        r#"#!/bin/bash
set -euo pipefail
certs=/etc/docker/certs.d/{HOST_FROM_GUEST}:{port}
sudo mkdir -p "$certs"
sudo cp registry-ca.crt "$certs/ca.crt"
if ! sudo docker pull {image}; then
  echo "Pulling {image} failed. Docker journal logs:"
  journalctl -u docker.service --no-pager | tail -n 40
  exit 1
fi
sudo docker images
"#,
        port = registry.port,
    );
    let b = Build::new(&[
        ("preload.sh", &preload),
        ("registry-ca.crt", &registry.ca_pem()),
    ]);
    b.start(".w");
    b.ok(&[
        "-local-state-workdir=.w",
        "run-script",
        "-script=preload.sh",
    ]);
    let out = b.cli(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=20m",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}\nregistry log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log()
    );
    assert!(
        text.contains(&format!("Downloaded newer image for {image}")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("BuildStatus:") && l.contains(repository) && l.contains(" 1 ")),
        "`docker images` in the build lists no {image}: {text}"
    );
    let img = b.output("out.img");
    // Docker's data is on STATE (COS mounts /var/lib/docker from there), so the image
    // outlives the build VM.
    let repos = read_file(
        &img,
        "STATE",
        "/var_lib_docker/image/overlay2/repositories.json",
    );
    assert!(
        repos.as_deref().is_some_and(|r| r.contains(&image)),
        "STATE's docker repositories: {repos:?}"
    );
    b.assert_nothing_left();
    drop(registry);
    // The booted output has the image without any registry (it is gone now) and runs it.
    let checks = r#"images=$(docker images --format '{{.Repository}}:{{.Tag}}' 2>&1) || fail "docker images: $images"
grep -qx 'IMAGE' <<<"$images" || fail "docker images lists: $images"
ran=$(docker run --rm IMAGE /bin/busybox echo preloaded 2>&1) || fail "docker run: $ran; dockerd: $(journalctl -u docker.service --no-pager | grep -E 'level=(error|fatal)' | tail -n 5)"
[ "$ran" = preloaded ] || fail "docker run printed: $ran"
"#
    .replace("IMAGE", &image);
    let verdict = boot_and_check(&img, &checks);
    assert!(verdict.contains("TestPass:"), "{verdict}");
}
