//! A real container registry on the host's loopback for the VM suites: Debian's
//! `docker-registry` with TLS from a certificate made here, and busybox images built here
//! and pushed with skopeo, which the build VM's docker pulls.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The guest's address for the host's loopback in the QEMU backend's user network.
pub const HOST_FROM_GUEST: &str = "169.254.169.2";

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) {
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
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
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
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("certs");
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            std::fs::copy(self.dir.path().join("ca.crt"), dir.join("ca.crt")).unwrap();
        }
        dir
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).unwrap()
    }

    pub fn log(&self) -> String {
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

/// What a busybox image holds beyond busybox, and how it starts.
pub struct Image<'a> {
    /// Executable files (`path` without the leading `/`, content).
    pub files: &'a [(&'a str, &'a str)],
    /// The image's `Entrypoint` (empty: none).
    pub entrypoint: &'a [&'a str],
    /// The image's `Cmd`.
    pub cmd: &'a [&'a str],
}

impl Image<'_> {
    /// Busybox alone, running a shell.
    pub const SHELL: Image<'static> = Image {
        files: &[],
        entrypoint: &[],
        cmd: &["/bin/sh"],
    };
}

impl Registry {
    /// Pushes `image` as `test/<name>:1`; returns its reference as the guest pulls it.
    pub fn push(&self, name: &str, image: &Image) -> String {
        let layout = self.dir.path().join(format!("oci-{name}"));
        write_busybox_layout(&layout, name, image);
        run(Command::new("skopeo").args([
            // Signature policy is about the source; the test's own archive has none.
            "--insecure-policy",
            "copy",
            &format!("--dest-cert-dir={}", self.cert_dir().display()),
            &format!("oci:{}:{name}", layout.display()),
            &format!("docker://127.0.0.1:{}/test/{name}:1", self.port),
        ]));
        format!("{HOST_FROM_GUEST}:{}/test/{name}:1", self.port)
    }
}

/// Builds an OCI image layout at `layout` with one image, tagged `tag`: one layer holding
/// the host's static busybox as `/bin/busybox` and `/bin/sh`, and `image`'s files.
fn write_busybox_layout(layout: &Path, tag: &str, image: &Image) {
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
    for (path, content) in image.files {
        let mut file = tar::Header::new_ustar();
        file.set_mode(0o755);
        file.set_size(content.len() as u64);
        tar.append_data(&mut file, path, content.as_bytes())
            .unwrap();
    }
    let layer = tar.into_inner().unwrap();
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).unwrap();
    let (layer_digest, layer_size) = put_blob(layout, &gz.finish().unwrap());

    let config = serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": if image.entrypoint.is_empty() {
            serde_json::json!({"Cmd": image.cmd})
        } else {
            serde_json::json!({"Entrypoint": image.entrypoint, "Cmd": image.cmd})
        },
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
