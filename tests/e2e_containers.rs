//! End-to-end: containers preloaded, as the original's smoke test. A preload script pulls
//! an image with `sudo docker pull` from a real registry (Debian's `docker-registry`,
//! on the host's loopback, with TLS from a certificate the test makes), and the booted
//! output lists that image in `docker images` and runs it.
//!
//! Needs the fixture (`scripts/make-fixture.sh`), the static provisioner
//! (`scripts/build-provisioner.sh`), and `docker-registry`, `skopeo`, `openssl` and a
//! static `/bin/busybox` on the host (`scripts/install-deps.sh`); `scripts/test.sh`
//! makes and installs them all.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::{boot_and_check, read_file, vm_slots, Build};

/// The guest's address for the host's loopback in the QEMU backend's user network.
const HOST_FROM_GUEST: &str = "169.254.169.2";

/// Runs `cmd` and panics with its output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/install-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `docker-registry` serving HTTPS on a free port of 127.0.0.1, with filesystem
/// storage in its own temporary folder; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Self-signed, so the certificate is its own CA: the host's skopeo and the
        // guest's docker both trust exactly this file, under either address.
        run(Command::new("openssl").current_dir(d).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=cos-customizer e2e registry",
            "-addext",
            &format!("subjectAltName=IP:{HOST_FROM_GUEST},IP:127.0.0.1"),
        ]));
        // A port free a moment ago; the registry takes it right away.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
            d.join("storage").display(),
            d.join("ca.crt").display(),
            d.join("key.pem").display(),
        );
        std::fs::write(d.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("docker-registry: {e} (scripts/install-deps.sh installs it)")
            });
        let mut registry = Registry { child, port, dir };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = registry.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on 127.0.0.1:{port} ({exited:?}):\n{}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// The folder holding only the registry's certificate, as `ca.crt`: skopeo's
    /// `--dest-cert-dir` layout, and docker's `certs.d/HOST:PORT` layout.
    fn cert_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("certs");
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            std::fs::copy(self.dir.path().join("ca.crt"), dir.join("ca.crt")).unwrap();
        }
        dir
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `data` as a blob of the OCI layout at `layout`; returns its descriptor's
/// digest and size.
fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = format!("{:x}", Sha256::digest(data));
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// Builds an OCI image layout at `layout` with one image, tagged `tag`: one layer holding
/// the host's static busybox as `/bin/busybox` and `/bin/sh`.
fn write_busybox_layout(layout: &Path, tag: &str) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox: install busybox-static (scripts/install-deps.sh)");

    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, "bin/", std::io::empty()).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    tar.append_data(&mut file, "bin/busybox", busybox.as_slice())
        .unwrap();
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    tar.append_link(&mut link, "bin/sh", "busybox").unwrap();
    let layer = tar.into_inner().unwrap();
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).unwrap();
    let (layer_digest, layer_size) = put_blob(layout, &gz.finish().unwrap());

    let config = serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = put_blob(layout, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) =
        put_blob(layout, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

/// Starts a registry holding `test/hello:1`, pushed there by skopeo from an OCI archive
/// built here; returns the registry.
fn registry_with_hello() -> Registry {
    let registry = Registry::start();
    let layout = registry.dir.path().join("oci");
    write_busybox_layout(&layout, "hello");
    run(Command::new("skopeo").args([
        // Signature policy is about the source; the test's own archive has none.
        "--insecure-policy",
        "copy",
        &format!("--dest-cert-dir={}", registry.cert_dir().display()),
        &format!("oci:{}:hello", layout.display()),
        &format!("docker://127.0.0.1:{}/test/hello:1", registry.port),
    ]));
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
