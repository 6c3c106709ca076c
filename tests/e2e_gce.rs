//! GCE builds end to end on this machine: `cos-customizer` runs a `-backend=gce` build
//! against the Compute emulator in boot mode, whose instances are QEMU VMs of the fixture,
//! and against fake-gcs-server. Two builds are the README's `examples/cloudbuild.yaml`, run
//! by `scripts/cloudbuild-local` in the builder image as Cloud Build would run it; the
//! others run the built binary. The backend's real HTTP calls make the disks (the
//! boot disk from the fixture's image, CIDATA through a `rawDisk` import from Cloud Storage),
//! boot the build VM, stream its serial port, grow its disk, acknowledge through
//! `setMetadata` and make the image, whose file the test then reads.
//!
//! Needs the fixture, the static provisioner, fake-gcs-server and the builder image
//! (`COS_CUSTOMIZER_BUILDER_IMAGE`, run with podman); `scripts/test.sh` makes them.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cos_customizer_gce_emulator::{BootOptions, Emulator, Handle, Options, RequestRecord, Seed};
use cos_customizer_qemu::QemuOptions;
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
use serde_json::{json, Map, Value};

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::containers::{build_id, builder_image, containers_named, ok};
use common::registry::{Image, Registry, HOST_FROM_GUEST};
use common::{fixture, partitions, provisioner, read_file, repo, vm_slots, Build};

/// examples/cloudbuild.yaml's bucket, `${PROJECT_ID}_cloudbuild`.
const BUCKET: &str = "test-project_cloudbuild";
const PROJECT: &str = "test-project";
/// The image family the source is resolved from, in `cos-cloud`: examples/cloudbuild.yaml's.
const SOURCE_FAMILY: &str = "cos-stable";
/// The output's family, which holds an older image to deprecate.
const FAMILY: &str = "my-cos";
const OLD_IMAGE: &str = "projects/test-project/global/images/my-cos-old";

/// The emulator (boot mode) and fake-gcs-server, and a user's home with a build context.
struct Env {
    emu: Handle,
    gcs: FakeGcs,
    build: Build,
    boot_dir: tempfile::TempDir,
}

/// The fixture as `cos-cloud/cos-fixture-1`, the newest of family `cos-stable`; an older
/// image of the output's family in the build's project; examples/cloudbuild.yaml's zone.
fn seed() -> Seed {
    let mut seed = Seed::default();
    seed.zones.push("us-west1-b".into());
    let image = |v: Value| -> Map<String, Value> { v.as_object().unwrap().clone() };
    seed.images.push(image(json!({
        "project": "cos-cloud", "name": "cos-fixture-1", "family": SOURCE_FAMILY,
        "architecture": "X86_64", "diskSizeGb": "4",
        "creationTimestamp": "2026-01-01T10:00:00.000-08:00",
        "licenses": ["projects/cos-cloud/global/licenses/cos"],
        "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}],
        "file": fixture().to_string_lossy(),
    })));
    seed.images.push(image(json!({
        "project": PROJECT, "name": "my-cos-old", "family": FAMILY,
        "architecture": "X86_64", "diskSizeGb": "10",
        "creationTimestamp": "2026-01-01T10:00:00.000-08:00",
    })));
    seed
}

impl Env {
    /// `serial_window`: the bytes of serial output the emulator keeps per port (GCE: 1 MiB).
    async fn start(scripts: &[(&str, &str)], serial_window: usize) -> Option<Env> {
        if !fake_gcs::require() {
            return None;
        }
        let gcs = FakeGcs::start(BUCKET).await.unwrap();
        let boot_dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(Options {
            seed: seed(),
            storage: Some(gcs.endpoint()),
            // GCE answers a `/wait` after up to about 2 minutes; fewer calls than the 2 s default.
            wait_deadline: Duration::from_secs(20),
            serial_window,
            boot: Some(BootOptions {
                qemu: QemuOptions {
                    parent_dir: boot_dir.path().to_path_buf(),
                    metadata_proxy: vec![
                        env!("CARGO_BIN_EXE_cos-customizer").into(),
                        "__metadata-proxy".into(),
                    ],
                    ..Default::default()
                },
                images_dir: boot_dir.path().join("images"),
            }),
            // Every stop passes DEPROVISIONING, as GCE's sometimes do.
            deprovisioning_every: 1,
            ..Options::default()
        })
        .await
        .unwrap();
        Some(Env {
            emu,
            gcs,
            build: Build::new(scripts),
            boot_dir,
        })
    }

    async fn cli(&self, args: &[&str]) -> Output {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .arg(format!("-compute-endpoint={}", self.emu.compute_base()))
            .arg(format!("-storage-endpoint={}", self.gcs.endpoint()))
            .args(args)
            .env("HOME", self.build.home.path())
            .env("TMPDIR", self.build.tmp.path())
            .env("COS_CUSTOMIZER_PROVISIONER", provisioner())
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .current_dir(self.build.home.path())
            .output()
            .await
            .unwrap();
        eprintln!(
            "$ cos-customizer {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(out.status.success(), "{args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Env::start`], then `start-image-build` from the source family (resolved through the
    /// API) and `run-script` of `preload.sh`, which holds `script`.
    async fn with_preload(script: &str, serial_window: usize) -> Option<Env> {
        let env = Env::start(&[("preload.sh", script)], serial_window).await?;
        env.start_with_script("preload.sh").await;
        Some(env)
    }

    /// `start-image-build` from the source family (resolved through the API), then
    /// `run-script` of `script` from the build context.
    async fn start_with_script(&self, script: &str) {
        self.ok(&[
            "start-image-build",
            "-build-context=ctx",
            "-image-project=cos-cloud",
            &format!("-image-family={SOURCE_FAMILY}"),
            &format!("-gcs-bucket={BUCKET}"),
            "-gcs-workdir=w",
        ])
        .await;
        self.ok(&["run-script", &format!("-script={script}")]).await;
    }

    async fn finish(&self, name: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "finish-image-build".to_string(),
            "-backend=gce".into(),
            format!("-project={PROJECT}"),
            "-zone=us-central1-a".into(),
            format!("-image-name={name}"),
            format!("-image-project={PROJECT}"),
            "-timeout=20m".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // One TCG VM per core; waiting for a slot blocks, so not on a runtime worker.
        let _vm = tokio::task::block_in_place(|| vm_slots(1));
        let started = Instant::now();
        let out = self.cli(&args).await;
        eprintln!(
            "finish-image-build took {:.1} s and made {} API calls: {}",
            started.elapsed().as_secs_f64(),
            self.emu.requests().len(),
            call_counts(&self.emu.requests())
        );
        out
    }

    /// `examples/cloudbuild.yaml` run by `scripts/cloudbuild-local` in the builder image,
    /// with the build context (`ctx`, holding preload.sh) as its source and this emulator
    /// and fake-gcs-server given to every step through gcloud's and the Cloud Storage
    /// libraries' variables.
    async fn cloudbuild(&self) -> CloudBuild {
        let _tag = StepImage::tag();
        let mut cmd = tokio::process::Command::new(repo().join("scripts/cloudbuild-local"));
        cmd.arg(self.build.home.path().join("ctx"))
            .arg(format!(
                "--config={}",
                repo().join("examples/cloudbuild.yaml").display()
            ))
            .args(["--project", PROJECT, "--tool=podman", "--pull=never"])
            .arg(format!(
                "--env=CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE={}",
                self.emu.compute_base()
            ))
            .arg(format!(
                "--env=STORAGE_EMULATOR_HOST={}",
                self.gcs.endpoint()
            ))
            .env("TMPDIR", self.build.tmp.path());
        // One TCG VM per core; waiting for a slot blocks, so not on a runtime worker.
        let _vm = tokio::task::block_in_place(|| vm_slots(1));
        let started = Instant::now();
        let out = cmd.output().await.unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "$ scripts/cloudbuild-local ({:.1} s, {} API calls: {})\n{log}{}",
            started.elapsed().as_secs_f64(),
            self.emu.requests().len(),
            call_counts(&self.emu.requests()),
            String::from_utf8_lossy(&out.stderr)
        );
        let id = build_id(&log);
        let left = containers_named(&format!("cloudbuild-{}", &id[..8]));
        assert_eq!(left, Vec::<String>::new(), "containers left");
        CloudBuild {
            success: out.status.success(),
            log,
            id,
        }
    }

    /// The output image's file as a raw image the test can read.
    fn raw_image(&self, path: &str) -> PathBuf {
        let file = self
            .emu
            .image_file(path)
            .unwrap_or_else(|| panic!("{path} has no file"));
        let raw = self.build.home.path().join("out.raw");
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&file)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(status.success(), "qemu-img convert {}", file.display());
        raw
    }

    /// Nothing of the build is left: in Compute only `keep` (and the seed), no object in
    /// Cloud Storage, no QEMU disk or VM file, no image file but `keep`'s, no temporary file.
    fn assert_nothing_left(&self, keep: Option<&str>) {
        let left = self.emu.resources();
        assert!(
            left.instances.is_empty() && left.disks.is_empty(),
            "{left:?}"
        );
        assert_eq!(
            left.images,
            keep.into_iter().map(String::from).collect::<Vec<_>>()
        );
        assert_eq!(self.gcs.objects(BUCKET), Vec::<String>::new());
        assert_eq!(self.emu.boot_files(), Vec::<PathBuf>::new());
        let files: Vec<PathBuf> = std::fs::read_dir(self.boot_dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let kept: Vec<PathBuf> = keep
            .and_then(|k| self.emu.image_file(k))
            .into_iter()
            .collect();
        assert_eq!(files, kept, "image files");
        let tmp: Vec<_> = std::fs::read_dir(self.build.tmp.path()).unwrap().collect();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    }

    fn requests(&self, method: &str, suffix: &str) -> Vec<RequestRecord> {
        self.emu
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .collect()
    }
}

/// What a `scripts/cloudbuild-local` run printed.
struct CloudBuild {
    success: bool,
    /// Its stdout: Cloud Build's log, each step's lines prefixed `Step #N: `.
    log: String,
    /// The build's `$BUILD_ID`.
    id: String,
}

impl CloudBuild {
    /// The lines step `n` printed, without their prefix.
    fn step(&self, n: usize) -> String {
        let prefix = format!("Step #{n}: ");
        self.log
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// examples/cloudbuild.yaml's step image in this project, tagged onto the builder image
/// while a test runs it (the runner never pulls it: `--pull=never`).
const STEP_IMAGE: &str = "us-docker.pkg.dev/test-project/tools/cos-customizer";

/// The tests of this process that hold [`STEP_IMAGE`]: the last one out removes the tag.
static STEP_IMAGE_USERS: Mutex<usize> = Mutex::new(0);

struct StepImage;

impl StepImage {
    fn tag() -> StepImage {
        let mut users = STEP_IMAGE_USERS.lock().unwrap();
        if *users == 0 {
            ok(std::process::Command::new("podman").args(["tag", &builder_image(), STEP_IMAGE]));
        }
        *users += 1;
        StepImage
    }
}

impl Drop for StepImage {
    fn drop(&mut self) {
        let mut users = STEP_IMAGE_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            let _ = std::process::Command::new("podman")
                .args(["untag", &builder_image(), STEP_IMAGE])
                .status();
        }
    }
}

/// Calls per route kind, for the log: `GET instances: 12, …`.
fn call_counts(log: &[RequestRecord]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in log {
        let parts: Vec<&str> = r.path.split('/').collect();
        // projects/P/{zones/Z|global}/KIND[/NAME[/VERB]]
        let kind = parts.get(4).copied().unwrap_or("?");
        let verb = match (parts.len(), parts.last()) {
            (7, Some(v)) => format!("/{v}"),
            _ => String::new(),
        };
        let kind = if parts.get(2) == Some(&"global") {
            format!("{}{}", parts.get(3).unwrap_or(&"?"), verb)
        } else {
            format!("{kind}{verb}")
        };
        *counts.entry(format!("{} {kind}", r.method)).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn image_path(name: &str) -> String {
    format!("projects/{PROJECT}/global/images/{name}")
}

/// The boot disk came from the fixture's image, through the API.
fn assert_booted_from_the_fixture(env: &Env) {
    let inserts = env.requests("POST", "/disks");
    assert!(
        inserts
            .iter()
            .any(|r| r.body.as_ref().unwrap()["sourceImage"]
                .as_str()
                .is_some_and(|s| s.ends_with("projects/cos-cloud/global/images/cos-fixture-1"))),
        "no disk from the fixture image: {inserts:?}"
    );
    let imports = env.requests("POST", "global/images");
    assert!(
        imports
            .iter()
            .any(|r| r.body.as_ref().unwrap().get("rawDisk").is_some()),
        "CIDATA did not go through a rawDisk import: {imports:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_cloudbuild_yaml_makes_the_image_in_the_builder_image() {
    let preload =
        "#!/bin/bash\nset -e\necho \"from-gce $REGION\" > /var/lib/hello\necho wrote the file\n";
    let Some(env) = Env::start(&[("preload.sh", preload)], 1 << 20).await else {
        return;
    };
    let build = env.cloudbuild().await;
    assert!(build.success, "the build failed");
    for n in 0..3 {
        assert!(
            build.log.contains(&format!("Finished Step #{n}\n")),
            "step {n}"
        );
    }
    assert!(build.log.trim_end().ends_with("DONE"));
    let finish = build.step(2);
    assert!(finish.contains("BuildStatus: wrote the file"), "{finish}");
    assert!(finish.contains("BuildSucceeded:"), "{finish}");
    assert_booted_from_the_fixture(&env);

    // Streamed: the serial port was read many times while the VM ran.
    let reads = env.requests("GET", "/serialPort");
    assert!(
        reads.len() > 5
            && reads
                .iter()
                .all(|r| r.query.contains(&("port".into(), "3".into()))),
        "{} serial reads",
        reads.len()
    );
    // Acknowledged through setMetadata, keeping the other items.
    let acks: Vec<Value> = env
        .requests("POST", "/setMetadata")
        .into_iter()
        .filter_map(|r| r.body)
        .filter(|b| {
            b["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["key"] == "DaisyEnd")
        })
        .collect();
    assert_eq!(acks.len(), 1, "one acknowledgement");
    assert!(
        acks[0]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["key"] == "user-data"),
        "the acknowledgement kept user-data: {}",
        acks[0]
    );
    // The VM ran in the step's zone, the workdir was the step's.
    assert!(
        env.requests("POST", "/instances")
            .iter()
            .all(|r| r.path.contains("/zones/us-west1-b/")),
        "the VM is not in us-west1-b"
    );

    let path = image_path(&format!("my-cos-{}", build.id));
    let image = env.emu.image(&path).expect("the output image exists");
    assert_eq!(image["status"], "READY");
    assert_eq!(image["family"], FAMILY);
    assert_eq!(
        image["licenses"],
        json!(["https://www.googleapis.com/compute/v1/projects/cos-cloud/global/licenses/cos"])
    );
    assert_eq!(
        image["guestOsFeatures"],
        json!([{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}])
    );
    let old = env.emu.image(OLD_IMAGE).unwrap();
    assert_eq!(old["deprecated"]["state"], "DEPRECATED", "{old}");

    // run-script's -env=REGION=eu reached the script.
    let raw = env.raw_image(&path);
    assert_eq!(
        read_file(&raw, "STATE", "/var_overlay/lib/hello").as_deref(),
        Some("from-gce eu\n")
    );
    assert!(read_file(&raw, "STATE", "/var_overlay/lib/.cos-customizer/state.json").is_none());
    std::fs::remove_file(&raw).unwrap();
    env.assert_nothing_left(Some(&path));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_grows_over_the_api_while_the_vm_runs() {
    let Some(env) = Env::with_preload(
        "#!/bin/bash\nset -e\necho grown > /var/lib/hello\n",
        1 << 20,
    )
    .await
    else {
        return;
    };
    let out = env
        .finish("my-cos-2", &["-oem-size=50M", "-disk-size-gb=11"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the build failed");
    assert!(
        stdout.contains("Resizing the boot disk to 11 GB"),
        "{stdout}"
    );
    let resizes = env.requests("POST", "/resize");
    assert_eq!(resizes.len(), 1, "{resizes:?}");
    assert_eq!(resizes[0].body.as_ref().unwrap()["sizeGb"], "11");
    assert_booted_from_the_fixture(&env);

    let path = image_path("my-cos-2");
    let image = env.emu.image(&path).unwrap();
    assert_eq!(image["diskSizeGb"], "11");
    let raw = env.raw_image(&path);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 11 << 30);
    let parts = partitions(&raw);
    // As the original: OEMSize is the asked size less 1 MiB, which absorbs rounding.
    assert_eq!(parts[&8].0.size, 49 * 2048, "OEM grew to 49 MiB");
    assert_eq!(
        read_file(&raw, "STATE", "/var_overlay/lib/hello").as_deref(),
        Some("grown\n")
    );
    std::fs::remove_file(&raw).unwrap();
    env.assert_nothing_left(Some(&path));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_script_stops_the_cloudbuild_at_its_step_and_leaves_nothing() {
    // 40 KiB of output at once against a 2 KiB window: GCE's `start` moves past what was
    // dropped, and the build says how much it lost, yet still sees the verdict.
    let script = "#!/bin/bash\nfor i in $(seq 400); do printf '%099d\\n' \"$i\"; done\n\
                  echo about to fail\nexit 3\n";
    let Some(env) = Env::start(&[("preload.sh", script)], 2048).await else {
        return;
    };
    let build = env.cloudbuild().await;
    assert!(!build.success);
    let finish = build.step(2);
    assert!(finish.contains("BuildStatus: about to fail"), "{finish}");
    assert!(finish.contains("BuildFailed:"), "{finish}");
    assert!(
        finish.contains("bytes of serial port 3 output were lost"),
        "the small window dropped output: {finish}"
    );
    assert!(
        build.log.contains(&format!(
            "ERROR: build step 2 \"{STEP_IMAGE}\" failed: step exited with non-zero status: 1"
        )),
        "{}",
        build.log
    );
    assert!(!build.log.contains("DONE"));
    assert!(env
        .emu
        .image(&image_path(&format!("my-cos-{}", build.id)))
        .is_none());
    env.assert_nothing_left(None);
}

/// The stand-in cos-gpu-installer for a build on a GPU VM: run with no arguments (its
/// `install`), it checks the original's mounts, privileges and variables, with `-deps-dir`'s
/// installer handed over as uploaded, and installs stand-in `nvidia-smi` and
/// `nvidia-persistenced`, which setup_gpu.sh then runs.
const GPU_INSTALLER: &str = r#"#!/bin/sh
fail() { echo "fake-installer: $*"; exit 1; }
val() { eval "printf %s \"\${$1}\""; }
[ "$*" = install ] || fail "arguments '$*', expected the image's own 'install'"
for kv in NVIDIA_DRIVER_VERSION=535.129.03 NVIDIA_INSTALL_DIR_HOST=/var/lib/nvidia \
    NVIDIA_INSTALL_DIR_CONTAINER=/usr/local/nvidia ROOT_MOUNT_DIR=/root TOOLCHAIN_PKG_DIR=/toolchain; do
  env | grep -qx "$kv" || fail "${kv%%=*} is '$(val "${kv%%=*}")', expected '${kv#*=}'"
done
# -deps-dir's files are staged under the build's own folder, named by its build id.
case "$COS_DOWNLOAD_GCS" in
  @DEPS@/*/gcs_files) ;;
  *) fail "COS_DOWNLOAD_GCS is '$COS_DOWNLOAD_GCS', expected '@DEPS@/<build id>/gcs_files'" ;;
esac
[ "$GPU_INSTALLER_DOWNLOAD_URL" = "$COS_DOWNLOAD_GCS/NVIDIA-Linux-x86_64-535.129.03.run" ] ||
  fail "GPU_INSTALLER_DOWNLOAD_URL is '$GPU_INSTALLER_DOWNLOAD_URL', expected the installer in '$COS_DOWNLOAD_GCS'"
grep -q ' /sys sysfs rw' /proc/mounts || fail "/sys is read-only: not --privileged"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm): not --pid=host"
[ "$(readlink /proc/1/ns/net)" = "$(readlink /proc/self/ns/net)" ] || fail "not --net=host"
grep -q ' /root/mnt/disks/scratch ' /proc/mounts || fail "SCRATCH is not mounted"
grep -q ' /toolchain ' /proc/mounts || fail "nothing at /toolchain"
mkdir -p /usr/local/nvidia/bin
for b in nvidia-smi nvidia-persistenced; do
  printf '#!/bin/sh\necho "%s stand-in ran"\n' "$b" > /usr/local/nvidia/bin/$b
  chmod 755 /usr/local/nvidia/bin/$b
done
echo "fake-installer: installed 535.129.03"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_build_gets_its_gpu_scratch_disk_and_dependencies() {
    let registry = tokio::task::block_in_place(Registry::start);
    let trust = format!(
        "#!/bin/bash\nset -euo pipefail\ncerts=/etc/docker/certs.d/{HOST_FROM_GUEST}:{port}\nmkdir -p \"$certs\"\ncp registry-ca.crt \"$certs/ca.crt\"\n",
        port = registry.port
    );
    let ca = registry.ca_pem();
    let Some(env) = Env::start(&[("trust.sh", &trust), ("registry-ca.crt", &ca)], 1 << 20).await
    else {
        return;
    };
    let deps_url = format!("{}/{BUCKET}/w/cos-customizer", env.gcs.endpoint());
    let script = GPU_INSTALLER.replace("@DEPS@", &deps_url);
    let files = [("cos-gpu-installer", script.as_str())];
    let image = tokio::task::block_in_place(|| {
        registry.push(
            "gpu-installer",
            &Image {
                files: &files,
                entrypoint: &["/cos-gpu-installer"],
                cmd: &["install"],
            },
        )
    });
    let deps = env.build.home.path().join("deps");
    std::fs::create_dir(&deps).unwrap();
    std::fs::write(deps.join("NVIDIA-Linux-x86_64-535.129.03.run"), "stand-in").unwrap();
    env.start_with_script("trust.sh").await;
    env.ok(&[
        "install-gpu",
        "-version=NVIDIA-Linux-x86_64-535.129.03.run",
        "-deps-dir=deps",
        &format!("-installer-container={image}"),
        "-gpu-type=nvidia-tesla-t4",
    ])
    .await;
    let out = env.finish("my-cos-gpu", &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the build failed; registry log:\n{}",
        registry.log()
    );
    for line in [
        "fake-installer: installed 535.129.03",
        "nvidia-smi stand-in ran",
        "nvidia-persistenced stand-in ran",
        "Done installing GPU drivers",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("BuildStatus:") && l.contains(line)),
            "no {line:?} in the build log: {stdout}"
        );
    }
    let inserts: Vec<Value> = env
        .requests("POST", "/instances")
        .into_iter()
        .filter_map(|r| r.body)
        .collect();
    assert_eq!(inserts.len(), 1, "{inserts:?}");
    let vm = &inserts[0];
    assert!(
        vm["guestAccelerators"][0]["acceleratorType"]
            .as_str()
            .is_some_and(|t| t.ends_with("/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"))
            && vm["guestAccelerators"][0]["acceleratorCount"] == 1,
        "{vm}"
    );
    assert_eq!(vm["scheduling"]["onHostMaintenance"], "TERMINATE", "{vm}");
    assert_eq!(
        vm["disks"].as_array().map(Vec::len),
        Some(3),
        "boot, SCRATCH, CIDATA: {vm}"
    );

    let path = image_path("my-cos-gpu");
    let raw = env.raw_image(&path);
    for f in ["bin/nvidia-smi", "bin/nvidia-persistenced", "setup_gpu.sh"] {
        assert!(
            read_file(&raw, "STATE", &format!("/var_overlay/lib/nvidia/{f}")).is_some(),
            "no /var/lib/nvidia/{f} in the image"
        );
    }
    std::fs::remove_file(&raw).unwrap();
    env.assert_nothing_left(Some(&path));
}
