//! The Cloud Build builder image (`scripts/build-builder-image.sh`, which `scripts/test.sh`
//! runs and names in `COS_CUSTOMIZER_BUILDER_IMAGE`): it starts, holds the tools the GCE
//! path runs, and the Dockerfile, built by buildah here, gives the same image.
//!
//! Docker Hub cannot be reached from every machine, so the Dockerfile is built with its base
//! images replaced: `debian:12.12-slim` by Debian 12 made here with mmdebstrap (minbase, as
//! the slim image is), and the `binaries` stage's cargo runs by the binaries of the image
//! under test; the stage's COPY lines still run, and the test checks that they bring
//! everything cargo reads. The rest of the file runs as written. `examples/cloudbuild.yaml`
//! run in this image is `e2e_gce`'s.
//!
//! Needs podman, buildah and mmdebstrap (scripts/install-deps.sh), and on some machines
//! `CONTAINERS_CONF` (see tests/common/containers.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

#[allow(dead_code)]
mod common;
use common::containers::{builder_image, ok, output};
use common::repo;

const ENTRYPOINT: &str = "/cos_customizer";
const WORKDIR: &str = "/workspace";
/// What the GCE path runs (core/src/async_cmd.rs, core/src/gce_tar.rs, core/src/scratch.rs).
const RUNTIME_TOOLS: [&str; 4] = ["setpriv", "tar", "gzip", "mkfs.ext4"];
/// The image stays small; what is in it, and why, is in scripts/builder-rootfs.sh.
const MAX_SIZE: u64 = 150 << 20;

/// The image's config: `Entrypoint`, `WorkingDir`, `Env`, `Cmd`, …
fn config(image: &str) -> Value {
    let text = ok(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        image,
    ]));
    serde_json::from_str(&text).unwrap()
}

/// One file of an image, as the comparison sees it.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<String>,
}

/// Every path of `image`'s file system, read from `podman export`.
fn files(image: &str) -> BTreeMap<String, Meta> {
    // Created, never started: the command is only there for images that have none.
    let name = ok(Command::new("podman").args(["create", image, "none"]))
        .trim()
        .to_string();
    let export = output(Command::new("podman").args(["export", &name]));
    ok(Command::new("podman").args(["rm", &name]));
    assert!(
        export.status.success(),
        "podman export {name} ({image}) failed"
    );
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(export.stdout.as_slice());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = format!("/{}", path.trim_start_matches("./").trim_end_matches('/'));
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            other => panic!("{path}: unexpected entry type {other:?}"),
        };
        let meta = Meta {
            kind,
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            link: entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned()),
        };
        out.insert(path, meta);
    }
    out
}

/// Removes the images it names when the test ends, passed or not.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = output(Command::new("podman").args(["rmi", "--force", image]));
        }
    }
}

#[test]
fn the_image_starts_and_holds_what_the_gce_path_runs() {
    let image = builder_image();
    let config = config(&image);
    assert_eq!(config["Entrypoint"], json!([ENTRYPOINT]), "{config}");
    assert_eq!(config["WorkingDir"], WORKDIR, "{config}");
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("PATH=/usr/local/sbin:")),
        "{config}"
    );

    // What Cloud Build does with a step: the entrypoint with the step's args.
    let version = ok(Command::new("podman").args(["run", "--rm", &image, "--version"]));
    assert_eq!(
        version.trim(),
        format!("cos-customizer {}", env!("CARGO_PKG_VERSION"))
    );

    // The tools, used as the GCE path uses them: the CIDATA tarball, install-gpu's SCRATCH
    // file system, and every command started through setpriv.
    let probe = format!(
        "set -e; for t in {}; do command -v \"$t\"; done; \
         cd /tmp; echo data > disk.raw; tar -Sczf disk.tar.gz disk.raw; tar -tzf disk.tar.gz; \
         truncate -s 16M scratch.img; mkfs.ext4 -q -F -L SCRATCH scratch.img; \
         e2fsck -fn scratch.img >/dev/null; setpriv --pdeathsig KILL true; \
         test -x /provisioner_amd64; grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt",
        RUNTIME_TOOLS.join(" ")
    );
    let out = ok(Command::new("podman").args([
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        &image,
        "-c",
        &probe,
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"disk.raw"), "{out}");
    let roots: usize = lines.last().unwrap().parse().unwrap();
    assert!(roots > 100, "only {roots} CA certificates: {out}");

    let size: u64 =
        ok(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &image]))
            .trim()
            .parse()
            .unwrap();
    eprintln!("builder image {image}: {} MiB", size >> 20);
    assert!(
        size < MAX_SIZE,
        "the image grew to {} MiB: keep it under {} MiB",
        size >> 20,
        MAX_SIZE >> 20
    );
}

/// The Dockerfile's stages by name, each its lines; the first line is its FROM.
fn stages(dockerfile: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in dockerfile.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.split_once(" AS ").map_or("", |(_, n)| n.trim());
            out.push((name.to_string(), Vec::new()));
        }
        if let Some((_, lines)) = out.last_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

/// The lines of `stage` without its RUN instructions (continuations included).
fn without_runs(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_run = false;
    for line in lines {
        if line.starts_with("RUN ") {
            in_run = true;
        }
        let ends = !line.trim_end().ends_with('\\');
        if !in_run {
            out.push(line.clone());
        }
        if in_run && ends && !line.trim_start().starts_with('#') {
            in_run = false;
        }
    }
    out
}

/// The Dockerfile as this machine can build it: `debian:12.12-slim` is `debian`, and the
/// `binaries` stage starts from it, keeps its WORKDIR and COPY lines, and takes `/out` from
/// `binaries` instead of running cargo.
fn buildable(dockerfile: &str, debian: &str, binaries: &str) -> String {
    let stages = stages(dockerfile);
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["binaries", "tree", ""],
        "the Dockerfile's stages changed: update this test"
    );
    let mut out = Vec::new();
    for (name, lines) in &stages {
        match name.as_str() {
            "binaries" => {
                out.push(format!("FROM {debian} AS binaries"));
                out.extend(without_runs(&lines[1..]));
                out.push(format!("COPY --from={binaries} /out/ /out/"));
            }
            "tree" => {
                assert_eq!(lines[0], "FROM debian:12.12-slim AS tree");
                out.push(format!("FROM {debian} AS tree"));
                out.extend(lines[1..].iter().cloned());
            }
            _ => out.extend(lines.iter().cloned()),
        }
    }
    out.join("\n") + "\n"
}

/// The files cargo reads to build the two binaries: each workspace member's tracked files
/// (the root package's manifest, `src/` and `tests/`, whose [[test]] targets Cargo checks),
/// the lock file, and the provisioner's build script.
fn cargo_inputs() -> BTreeSet<String> {
    let meta: Value = serde_json::from_str(&ok(Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(repo())))
    .unwrap();
    let root = repo();
    let tracked = ok(Command::new("git").args(["ls-files"]).current_dir(&root));
    let dirs: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().strip_prefix(&root).unwrap();
            dir.to_string_lossy().into_owned()
        })
        .collect();
    let mut out: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "scripts/build-provisioner.sh"]
        .map(String::from)
        .into();
    for file in tracked.lines() {
        let member = dirs.iter().any(|d| {
            if d.is_empty() {
                file.starts_with("src/") || file.starts_with("tests/")
            } else {
                file.starts_with(&format!("{d}/"))
            }
        });
        if member {
            out.insert(file.to_string());
        }
    }
    out
}

#[test]
fn the_dockerfile_gives_the_same_image() {
    let image = builder_image();
    let scratch = tempfile::tempdir().unwrap();
    let id = std::process::id();
    let debian = format!("localhost/cos-customizer-test/debian:{id}");
    let binaries = format!("localhost/cos-customizer-test/binaries:{id}");
    let stage = format!("localhost/cos-customizer-test/binaries-stage:{id}");
    let built = format!("localhost/cos-customizer-test/dockerfile:{id}");
    let _images = Images(vec![
        built.clone(),
        stage.clone(),
        binaries.clone(),
        debian.clone(),
    ]);

    // Debian 12 as the slim image is made: minbase, with apt and the archive's sources.
    let tarball = scratch.path().join("debian.tar");
    let mut mirrors = vec![
        "bookworm".to_string(),
        tarball.to_string_lossy().into_owned(),
    ];
    if let Ok(m) = std::env::var("DEBIAN_MIRROR") {
        mirrors.push(format!("deb {m} bookworm main"));
    }
    ok(Command::new("mmdebstrap")
        .arg("--variant=minbase")
        .args(&mirrors));
    let ctr = ok(Command::new("buildah").args(["from", "scratch"]))
        .trim()
        .to_string();
    ok(Command::new("buildah")
        .args(["add", &ctr])
        .arg(&tarball)
        .arg("/"));
    ok(Command::new("buildah").args([
        "config",
        "--env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        &ctr,
    ]));
    ok(Command::new("buildah").args(["commit", "--quiet", "--rm", &ctr, &debian]));

    // The binaries of the image under test, where the binaries stage installs them.
    let taken = ok(Command::new("podman").args(["create", &image]))
        .trim()
        .to_string();
    for name in ["cos_customizer", "provisioner_amd64"] {
        ok(Command::new("podman")
            .args(["cp", &format!("{taken}:/{name}")])
            .arg(scratch.path().join(name)));
    }
    ok(Command::new("podman").args(["rm", &taken]));
    let ctr = ok(Command::new("buildah").args(["from", "scratch"]))
        .trim()
        .to_string();
    for name in ["cos_customizer", "provisioner_amd64"] {
        ok(Command::new("buildah")
            .args(["copy", "--chmod", "0755", &ctr])
            .arg(scratch.path().join(name))
            .arg(format!("/out/{name}")));
    }
    ok(Command::new("buildah").args(["commit", "--quiet", "--rm", &ctr, &binaries]));

    let dockerfile = scratch.path().join("Dockerfile");
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    std::fs::write(&dockerfile, buildable(&text, &debian, &binaries)).unwrap();
    let bud = |target: Option<&str>, tag: &str| {
        let mut cmd = Command::new("buildah");
        cmd.args(["bud", "--pull=never", "--layers=false", "-f"])
            .arg(&dockerfile)
            .args(["-t", tag]);
        if let Some(t) = target {
            cmd.args(["--target", t]);
        }
        ok(cmd.arg(repo()));
    };
    bud(None, &built);

    let (ours, theirs) = (files(&image), files(&built));
    let only = |a: &BTreeMap<String, Meta>, b: &BTreeMap<String, Meta>| -> Vec<String> {
        a.iter()
            .filter(|(p, m)| b.get(*p) != Some(m))
            .map(|(p, m)| format!("{p} {m:?}"))
            .collect()
    };
    let (a, b) = (only(&ours, &theirs), only(&theirs, &ours));
    assert!(
        a.is_empty() && b.is_empty(),
        "the two recipes differ\nonly or otherwise in the daemonless image:\n{}\n\
         only or otherwise in the Dockerfile's:\n{}",
        a.join("\n"),
        b.join("\n")
    );
    eprintln!("both images hold the same {} paths", ours.len());
    let (ours, theirs) = (config(&image), config(&built));
    for key in ["Entrypoint", "WorkingDir", "Env", "Cmd", "User"] {
        assert_eq!(ours[key], theirs[key], "{key} differs");
    }

    // The binaries stage's COPY lines bring everything cargo reads, scripts executable.
    bud(Some("binaries"), &stage);
    let copied = files(&stage);
    let missing: Vec<String> = cargo_inputs()
        .into_iter()
        .filter(|f| !copied.contains_key(&format!("/src/{f}")))
        .collect();
    assert!(
        missing.is_empty(),
        "the binaries stage does not copy what cargo reads:\n{}",
        missing.join("\n")
    );
    let script = &copied["/src/scripts/build-provisioner.sh"];
    assert!(script.mode & 0o111 != 0, "build-provisioner.sh: {script:?}");
}
