//! The whole preload flow of a GCE build against the Compute emulator (scripted instances) and a
//! real fake-gcs-server: success, a failing script, a timeout, a resize, lost serial output, the
//! injected faults and an interrupted build. After every test the emulator holds no instance,
//! disk or temporary image and the bucket holds no object of the build.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use cos_customizer_common::config::{
    BuildConfig, InstallGpuArgs, ProvisionerConfig, SourceImage, Step,
};
use cos_customizer_core::backend::{Backend, OutputImage};
use cos_customizer_core::preload::{LogLine, Preloader, Request};
use cos_customizer_gce::auth::Auth;
use cos_customizer_gce::backend::{GceBackend, GceOptions};
use cos_customizer_gce::compute::Compute;
use cos_customizer_gce::http::{Api, RetryPolicy};
use cos_customizer_gce::storage::Gcs;
use cos_customizer_gce_emulator::{Emulator, Fault, Handle, Options, Route, Script};
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};

const PROJECT: &str = "test-project";
const ZONE: &str = "us-central1-a";
const BUCKET: &str = "builds";
const MACHINE: &str = "n1-standard-1";
const SUCCESS: &str = "BuildStatus: step 1 done\nBuildSucceeded: Build completed with no errors.\n";

struct Env {
    emu: Handle,
    gcs: FakeGcs,
    backend: Arc<GceBackend>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(opts: Options) -> Option<Env> {
        Self::with_poll(opts, Duration::from_millis(50)).await
    }

    async fn with_poll(mut opts: Options, poll: Duration) -> Option<Env> {
        if !fake_gcs::require() {
            return None;
        }
        let gcs = FakeGcs::start(BUCKET)
            .await
            .expect("fake-gcs-server starts");
        opts.storage = Some(gcs.endpoint());
        let emu = Emulator::start(opts).await.expect("emulator starts");
        let retry = RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        let api = Api::new(&emu.compute_base(), Auth::None)
            .unwrap()
            .with_retry(retry);
        let compute = Compute::new(api).with_poll_interval(Duration::from_millis(20));
        let storage = Gcs::new(&gcs.endpoint(), Auth::None).unwrap();
        let backend = GceBackend::new(
            compute,
            storage,
            GceOptions {
                project: PROJECT.into(),
                zone: ZONE.into(),
                gcs_bucket: BUCKET.into(),
                gcs_dir: "work".into(),
                build_id: "b4x9q".into(),
                external_ip: true,
                op_timeout: Duration::from_secs(20),
                poll_interval: poll,
                in_use_backoff: Duration::from_millis(20),
            },
        );
        Some(Env {
            emu,
            gcs,
            backend: Arc::new(backend),
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn request(&self, timeout: Duration) -> Request {
        let dir = self.dir.path();
        let provisioner = dir.join("provisioner");
        let context_tar = dir.join("context.tar");
        std::fs::write(&provisioner, "\x7fELF").unwrap();
        std::fs::write(&context_tar, "").unwrap();
        Request {
            source: SourceImage {
                name: "cos-stable-109-17800-66-27".into(),
                project: "cos-cloud".into(),
                ..Default::default()
            },
            build: BuildConfig {
                project: PROJECT.into(),
                zone: ZONE.into(),
                machine_type: MACHINE.into(),
                disk_type: "pd-standard".into(),
                ..Default::default()
            },
            prov: ProvisionerConfig::default(),
            user_data: "#cloud-config\n{}".into(),
            provisioner,
            context_tar,
            log_dir: dir.join("logs"),
            output: OutputImage {
                name: "my-cos".into(),
                project: PROJECT.into(),
                family: "my-family".into(),
                labels: BTreeMap::from([("team".to_string(), "os".to_string())]),
                licenses: vec!["projects/test-project/global/licenses/extra".into()],
                description:
                    "Derivative of projects/cos-cloud/global/images/cos-stable-109-17800-66-27."
                        .into(),
                local_file: None,
            },
            timeout,
        }
    }

    /// Runs the flow and its cleanup; returns the outcome and the log.
    async fn build(&self, req: &Request) -> (anyhow::Result<()>, Vec<String>) {
        let preloader = Preloader::new(self.backend.clone()).unwrap();
        let mut lines = Vec::new();
        let r = preloader
            .run(req, &mut |l: LogLine| lines.push(l.text().to_string()))
            .await;
        let failures = preloader.cleanup().await;
        assert!(failures.is_empty(), "cleanup failed: {failures:?}");
        (r, lines)
    }

    /// The invariant: nothing of the build is left but the output image.
    fn assert_clean(&self, output: Option<&str>) {
        let left = self.emu.resources();
        assert!(left.instances.is_empty(), "instances left: {left:?}");
        assert!(left.disks.is_empty(), "disks left: {left:?}");
        let expected: Vec<String> = output
            .map(|o| format!("projects/{PROJECT}/global/images/{o}"))
            .into_iter()
            .collect();
        assert_eq!(left.images, expected, "images left");
        assert_eq!(
            self.gcs.objects(BUCKET),
            Vec::<String>::new(),
            "objects left"
        );
    }

    fn bodies(&self, method: &str, path_suffix: &str) -> Vec<Value> {
        self.emu
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(path_suffix))
            .filter_map(|r| r.body)
            .collect()
    }

    fn count(&self, method: &str, path_contains: &str) -> usize {
        self.emu
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }
}

fn success_script() -> Script {
    Script::new().serial_after(1, SUCCESS).stop_on_daisy_end(2)
}

#[tokio::test]
async fn a_build_makes_the_image_and_leaves_nothing_else() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", success_script());
    let (r, lines) = env.build(&env.request(Duration::from_secs(30))).await;
    r.unwrap();
    assert!(
        lines.iter().any(|l| l == "BuildStatus: step 1 done"),
        "{lines:?}"
    );
    env.assert_clean(Some("my-cos"));

    // The CIDATA disk came from a temporary image imported from the bucket.
    let images = env.bodies("POST", "global/images");
    let raw = &images[0];
    assert_eq!(raw["name"], "cidata-build-image-b4x9q");
    assert_eq!(
        raw["rawDisk"]["source"],
        "https://storage.googleapis.com/builds/work/cos-customizer/b4x9q/cidata-disk.tar.gz"
    );
    let disks = env.bodies("POST", "/disks");
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(disks[0]["name"], "cidata-disk-build-image-b4x9q");
    assert_eq!(
        disks[1]["sourceImage"],
        "projects/cos-cloud/global/images/cos-stable-109-17800-66-27"
    );
    assert_eq!(disks[1]["sizeGb"], "10");
    for d in &disks {
        assert_eq!(d["labels"]["cos-customizer-build"], "b4x9q");
        assert_eq!(
            d["type"],
            format!("projects/{PROJECT}/zones/{ZONE}/diskTypes/pd-standard")
        );
    }
    let vm = &env.bodies("POST", "/instances")[0];
    assert_eq!(vm["name"], "preload-vm-build-image-b4x9q");
    assert_eq!(vm["labels"]["cos-customizer-cleanup"], "");
    assert_eq!(vm["scheduling"]["instanceTerminationAction"], "DELETE");
    let keys: Vec<&str> = vm["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["block-project-ssh-keys", "cos-update-strategy", "user-data"]
    );

    // The acknowledgement kept every item and sent the fingerprint it read.
    let set = &env.bodies("POST", "/setMetadata")[0];
    assert!(set["fingerprint"].is_string(), "{set}");
    let items = set["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{set}");
    assert!(items
        .iter()
        .any(|i| i["key"] == "DaisyEnd" && i["value"] == "ack"));

    // The output image: family, labels, the source's licenses and the added one.
    let image: Value = get(&env, &format!("projects/{PROJECT}/global/images/my-cos")).await;
    assert_eq!(image["family"], "my-family");
    assert_eq!(image["labels"]["team"], "os");
    assert!(
        image["labels"].get("cos-customizer-build").is_none(),
        "{image}"
    );
    let licenses: Vec<&str> = image["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for l in [
        "cos-cloud/global/licenses/cos",
        "shielded-cos",
        "test-project/global/licenses/extra",
    ] {
        assert!(licenses.iter().any(|x| x.contains(l)), "{licenses:?}");
    }
    assert!(env
        .backend
        .image_exists(&env.request(Duration::ZERO).output)
        .await
        .unwrap());
}

/// A resource from the emulator, as a client sees it.
async fn get(env: &Env, path: &str) -> Value {
    let url = format!("{}{path}", env.emu.compute_base());
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

/// Starts an emulator with `opts`, lets `prepare` script it, and runs a build that must
/// succeed and leave only the output image; `None` without fake-gcs-server.
async fn successful_build(opts: Options, prepare: impl FnOnce(&Handle)) -> Option<Env> {
    let env = Env::start(opts).await?;
    prepare(&env.emu);
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    r.unwrap();
    env.assert_clean(Some("my-cos"));
    Some(env)
}

#[tokio::test]
async fn a_refused_time_limit_is_dropped_and_the_build_goes_on() {
    let opts = Options {
        refuse_time_limits: true,
        ..Default::default()
    };
    let Some(env) = successful_build(opts, |emu| emu.script("preload-vm-", success_script())).await
    else {
        return;
    };
    let inserts: Vec<(u16, Value)> = env
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/instances"))
        .map(|r| (r.status, r.body.unwrap()["scheduling"].clone()))
        .collect();
    assert_eq!(inserts.len(), 2, "{inserts:?}");
    assert_eq!(inserts[0].0, 400);
    assert_eq!(inserts[0].1["instanceTerminationAction"], "DELETE");
    assert_eq!(
        inserts[1],
        (
            200,
            serde_json::json!({"onHostMaintenance": "MIGRATE", "provisioningModel": "STANDARD"})
        )
    );
}

const VM: &str = "projects/test-project/zones/us-central1-a/instances/preload-vm-build-image-b4x9q";

/// Each value of `Instance.status` in the v1 discovery document that means the VM is still
/// going, and one GCE may add later.
const STILL_GOING: [&str; 10] = [
    "PROVISIONING",
    "STAGING",
    "RUNNING",
    "STOPPING",
    "SUSPENDING",
    "REPAIRING",
    "DEPROVISIONING",
    "PENDING",
    "PENDING_STOP",
    "SOMETHING_NEW",
];

#[tokio::test]
async fn every_still_going_status_keeps_the_build_going() {
    // The watch reads the status every 5 polls: the marker comes after every status was read.
    let reads = 5 * (STILL_GOING.len() as u32 + 2);
    let script = Script::new()
        .shows(&STILL_GOING)
        .serial_after(reads, SUCCESS)
        .stop_on_daisy_end(1);
    let Some(env) =
        successful_build(Options::default(), |emu| emu.script("preload-vm-", script)).await
    else {
        return;
    };
    assert_eq!(env.emu.statuses_left(VM), Vec::<String>::new());
}

#[tokio::test]
async fn every_stopped_status_ends_the_shutdown() {
    for stopped in ["TERMINATED", "STOPPED", "SUSPENDED"] {
        let stop = [
            "STOPPING",
            "PENDING_STOP",
            "DEPROVISIONING",
            "SOMETHING_NEW",
            stopped,
        ];
        let script = Script::new().serial_after(1, SUCCESS).stop_showing(&stop);
        let Some(env) =
            successful_build(Options::default(), |emu| emu.script("preload-vm-", script)).await
        else {
            return;
        };
        assert_eq!(env.emu.statuses_left(VM), Vec::<String>::new(), "{stopped}");
    }
}

#[tokio::test]
async fn a_stop_through_deprovisioning_succeeds() {
    let opts = Options {
        deprovisioning_every: 1,
        ..Default::default()
    };
    successful_build(opts, |emu| emu.script("preload-vm-", success_script())).await;
}

#[tokio::test]
async fn disks_and_images_on_their_way_to_ready_do_not_stop_the_build() {
    let opts = Options {
        op_running_polls: 2,
        ..Default::default()
    };
    let disk = |d: &str| format!("projects/{PROJECT}/zones/{ZONE}/disks/{d}-build-image-b4x9q");
    let image = format!("projects/{PROJECT}/global/images/cidata-build-image-b4x9q");
    let Some(env) = successful_build(opts, |emu| {
        emu.script("preload-vm-", success_script());
        emu.show_statuses(&disk("boot-disk"), &["CREATING", "RESTORING"]);
        emu.show_statuses(&disk("cidata-disk"), &["CREATING", "UNAVAILABLE"]);
        emu.show_statuses(&image, &["PENDING"]);
    })
    .await
    else {
        return;
    };
    // The backend read each of them on its way to READY.
    for path in [disk("boot-disk"), disk("cidata-disk"), image] {
        assert_eq!(env.emu.statuses_left(&path), Vec::<String>::new(), "{path}");
    }
}

#[tokio::test]
async fn a_failed_disk_fails_the_build_and_leaves_nothing() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", success_script());
    env.emu.show_statuses(
        &format!("projects/{PROJECT}/zones/{ZONE}/disks/boot-disk-build-image-b4x9q"),
        &["CREATING", "FAILED"],
    );
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("boot-disk-build-image-b4x9q is FAILED"), "{e}");
    env.assert_clean(None);
}

#[tokio::test]
async fn a_failing_script_makes_no_image() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script(
        "preload-vm-",
        Script::new().serial_after(
            1,
            "BuildStatus: error in step 1 (RunScript): exit status 1\nBuildFailed: exiting due to errors\n",
        ),
    );
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("BuildFailed: exiting due to errors"), "{e}");
    assert!(e.contains("Last lines of serial port 3"), "{e}");
    env.assert_clean(None);
    assert_eq!(env.count("POST", "/setMetadata"), 0);
}

#[tokio::test]
async fn a_silent_vm_times_out() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", Script::new());
    let (r, _) = env.build(&env.request(Duration::from_secs(2))).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("did not complete within the specified timeout of 2s"),
        "{e}"
    );
    env.assert_clean(None);
}

#[tokio::test]
async fn the_boot_disk_grows_on_the_trigger_line() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script(
        "preload-vm-",
        Script::new()
            .serial_after(
                1,
                "BuildStatus: WaitForDiskResize is set; waiting for the boot disk size to change. Timeout is 3 minutes\n",
            )
            .on_resize(SUCCESS)
            .stop_on_daisy_end(1),
    );
    let mut req = env.request(Duration::from_secs(30));
    req.build.disk_size_gb = Some(14);
    req.prov.boot_disk.reclaim_sda3 = true;
    let (r, lines) = env.build(&req).await;
    r.unwrap();
    assert!(
        lines.iter().any(|l| l == "Resizing the boot disk to 14 GB"),
        "{lines:?}"
    );
    let resize = env.bodies("POST", "boot-disk-build-image-b4x9q/resize");
    assert_eq!(resize.len(), 1);
    assert_eq!(resize[0]["sizeGb"], "14");
    env.assert_clean(Some("my-cos"));
}

#[tokio::test]
async fn a_gpu_build_attaches_a_gpu_and_a_scratch_disk() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", success_script());
    let mut req = env.request(Duration::from_secs(30));
    req.build.gpu_type = Some("nvidia-tesla-t4".into());
    req.prov
        .steps
        .push(Step::InstallGpu(InstallGpuArgs::default()));
    let (r, _) = env.build(&req).await;
    r.unwrap();
    env.assert_clean(Some("my-cos"));

    let sources: Vec<String> = env
        .bodies("POST", "global/images")
        .iter()
        .filter_map(|i| i["rawDisk"]["source"].as_str().map(str::to_string))
        .collect();
    assert!(
        sources
            .iter()
            .any(|s| s.ends_with("/b4x9q/scratch-disk.tar.gz")),
        "{sources:?}"
    );
    let disks = env.bodies("POST", "/disks");
    let scratch = disks
        .iter()
        .find(|d| d["name"] == "scratch-disk-build-image-b4x9q")
        .unwrap_or_else(|| panic!("no scratch disk in {disks:?}"));
    assert_eq!(scratch["sizeGb"], "10");
    let vm = &env.bodies("POST", "/instances")[0];
    let attached: Vec<&str> = vm["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        attached,
        [
            "boot-disk-build-image-b4x9q",
            "scratch-disk-build-image-b4x9q",
            "cidata-disk-build-image-b4x9q"
        ]
    );
    assert_eq!(vm["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert!(vm["guestAccelerators"][0]["acceleratorType"]
        .as_str()
        .unwrap()
        .ends_with("/acceleratorTypes/nvidia-tesla-t4"));
}

#[tokio::test]
async fn a_context_too_large_for_cidata_goes_through_the_bucket() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", success_script());
    let req = env.request(Duration::from_secs(30));
    std::fs::write(&req.context_tar, vec![7u8; 4096]).unwrap();
    let preloader = Preloader::new(env.backend.clone())
        .unwrap()
        .with_cidata_file_limit(1024);
    let mut lines = Vec::new();
    preloader
        .run(&req, &mut |l: LogLine| lines.push(l.text().to_string()))
        .await
        .unwrap();
    let object = "work/cos-customizer/b4x9q/user_build_context.tar";
    assert_eq!(env.gcs.object(BUCKET, object), Some(vec![7u8; 4096]));
    let url = format!("gs://{BUCKET}/{object}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&url) && l.contains("4096 bytes")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("\"BuildContexts\":{{\"user\":\"{url}\"}}"))),
        "{lines:?}"
    );
    assert!(preloader.cleanup().await.is_empty());
    env.assert_clean(Some("my-cos"));
}

#[tokio::test]
async fn output_the_serial_buffer_dropped_is_reported() {
    let Some(env) = Env::start(Options {
        serial_window: 4096,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let noise = "BuildStatus: noise\n".repeat(1000);
    env.emu.script(
        "preload-vm-",
        Script::new()
            .serial_after(1, noise)
            .serial_after(1, SUCCESS)
            .stop_on_daisy_end(1),
    );
    let (r, lines) = env.build(&env.request(Duration::from_secs(30))).await;
    r.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bytes of serial port 3 output were lost")),
        "{lines:?}"
    );
    env.assert_clean(Some("my-cos"));
}

#[tokio::test]
async fn transient_errors_and_slow_operations_are_waited_out() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", success_script());
    env.emu
        .inject(Route::InstanceSerialPort, Fault::rate_limited());
    env.emu.inject(Route::DiskInsert, Fault::unavailable());
    env.emu
        .inject(Route::InstanceInsert, Fault::OpStaysRunning(3));
    env.emu
        .inject(Route::ZoneOperationWait, Fault::WaitReturnsEarly);
    env.emu
        .inject(Route::InstanceSetMetadata, Fault::precondition_failed());
    env.emu
        .inject(Route::InstanceSetMetadata, Fault::ConcurrentMetadataChange);
    env.emu
        .inject(Route::InstanceSetMetadata, Fault::op_fingerprint_mismatch());
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    r.unwrap();
    env.assert_clean(Some("my-cos"));
    assert_eq!(
        env.count("POST", "/setMetadata"),
        4,
        "three races, then success"
    );
}

#[tokio::test]
async fn a_stockout_names_zone_and_machine_type_and_cleans_up() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu
        .inject(Route::InstanceInsert, Fault::op_stockout(ZONE, MACHINE));
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains(&format!(
            "zone {ZONE} has no capacity for machine type {MACHINE}"
        )),
        "{e}"
    );
    assert!(e.contains("try another -zone or -machine-type"), "{e}");
    env.assert_clean(None);
}

#[tokio::test]
async fn a_quota_error_is_reported_and_cleans_up() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu
        .inject(Route::InstanceInsert, Fault::op_quota_exceeded());
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("Quota 'CPUS' exceeded"), "{e}");
    assert!(e.contains(MACHINE), "{e}");
    env.assert_clean(None);
}

#[tokio::test]
async fn a_disk_still_in_use_is_deleted_on_retry() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    env.emu.script("preload-vm-", success_script());
    for _ in 0..3 {
        env.emu.inject(Route::DiskDelete, Fault::disk_in_use());
    }
    let (r, _) = env.build(&env.request(Duration::from_secs(30))).await;
    r.unwrap();
    env.assert_clean(Some("my-cos"));
}

#[tokio::test]
async fn an_interrupted_build_leaves_nothing() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    // The VM never reports: the build is cut off while it runs, as Ctrl-C does.
    env.emu.script("preload-vm-", Script::new());
    let req = env.request(Duration::from_secs(60));
    let preloader = Preloader::new(env.backend.clone()).unwrap();
    let cut = tokio::time::timeout(
        Duration::from_secs(2),
        preloader.run(&req, &mut |_: LogLine| {}),
    )
    .await;
    assert!(cut.is_err(), "the build was still running");
    assert!(
        !env.emu.resources().instances.is_empty(),
        "the VM was running"
    );
    assert!(preloader.cleanup().await.is_empty());
    env.assert_clean(None);
}

#[tokio::test]
async fn a_build_cut_off_while_importing_cidata_leaves_nothing() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    // The import never finishes: the cut comes after the upload and the image insert, before
    // any disk exists, so only the backend knows what to delete.
    env.emu
        .inject(Route::ImageInsert, Fault::OpStaysRunning(100_000));
    let req = env.request(Duration::from_secs(60));
    let preloader = Preloader::new(env.backend.clone()).unwrap();
    let cut = tokio::time::timeout(
        Duration::from_secs(2),
        preloader.run(&req, &mut |_: LogLine| {}),
    )
    .await;
    assert!(cut.is_err(), "the import was still running");
    assert_eq!(
        env.gcs.objects(BUCKET).len(),
        1,
        "the CIDATA archive was uploaded"
    );
    assert!(preloader.cleanup().await.is_empty());
    env.assert_clean(None);
}

#[tokio::test]
async fn an_existing_output_image_is_found() {
    let Some(env) = Env::start(Options::default()).await else {
        return;
    };
    let mut out = env.request(Duration::ZERO).output;
    out.project = "cos-cloud".into();
    out.name = "cos-stable-109-17800-66-27".into();
    assert!(env.backend.image_exists(&out).await.unwrap());
    out.name = "nope".into();
    assert!(!env.backend.image_exists(&out).await.unwrap());
}

/// The API calls an idle watch makes per minute at the production poll interval (2 s), and how
/// soon it sees a marker. Prints both figures.
#[tokio::test]
async fn polling_is_prompt_and_sparing() {
    let Some(env) = Env::with_poll(Options::default(), Duration::from_secs(2)).await else {
        return;
    };
    env.emu
        .script("preload-vm-", Script::new().stop_on_daisy_end(1));
    let req = env.request(Duration::from_secs(60));
    let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
    let appended: Arc<Mutex<Option<Instant>>> = Arc::default();
    let watch_started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let preloader = Preloader::new(env.backend.clone()).unwrap();
    let vm = "projects/test-project/zones/us-central1-a/instances/preload-vm-build-image-b4x9q";
    let idle = Duration::from_secs(20);
    let appender = {
        let (appended, watch_started) = (appended.clone(), watch_started.clone());
        let emu = &env.emu;
        async move {
            loop {
                let started = *watch_started.lock().unwrap();
                if let Some(t) = started {
                    tokio::time::sleep_until((t + idle).into()).await;
                    assert!(emu.append_serial(vm, SUCCESS.as_bytes()));
                    *appended.lock().unwrap() = Some(Instant::now());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // The watch's calls: serial reads and instance GETs, from its start to the marker.
    let watch_calls = || {
        env.emu
            .requests()
            .iter()
            .filter(|r| {
                r.path.ends_with("/serialPort") || r.path.ends_with("preload-vm-build-image-b4x9q")
            })
            .count()
    };
    let mut calls_while_idle = 0;
    let run = async {
        let mut log = |l: LogLine| {
            if l.text().starts_with("Started preload-vm") {
                env.emu.clear_requests();
                *watch_started.lock().unwrap() = Some(Instant::now());
            }
            if l.text().starts_with("BuildSucceeded") {
                seen.lock().unwrap().get_or_insert(Instant::now());
                calls_while_idle = watch_calls();
            }
        };
        preloader.run(&req, &mut log).await
    };
    let (r, ()) = tokio::join!(run, appender);
    r.unwrap();
    assert!(preloader.cleanup().await.is_empty());
    let latency = seen.lock().unwrap().unwrap() - appended.lock().unwrap().unwrap();
    let per_minute = calls_while_idle as f64 * 60.0 / idle.as_secs_f64();
    println!(
        "idle watch: {calls_while_idle} calls in {}s = {per_minute:.0} calls/min; marker seen {:.2}s after it appeared",
        idle.as_secs(),
        latency.as_secs_f64()
    );
    assert!(
        latency <= Duration::from_millis(2500),
        "marker seen after {latency:?}"
    );
    assert!(per_minute <= 45.0, "{per_minute} calls per minute");
    env.assert_clean(Some("my-cos"));
}
