//! `finish-image-build -backend=gce` end to end through the CLI against the Compute emulator
//! (scripted build VM) and fake-gcs-server: the image is made, the older image of its family is
//! deprecated, and nothing of the build is left in Compute or Cloud Storage, on success and on
//! a failed build. Against Compute endpoints that are not what they should be (nothing
//! listening, a silent server, 404 or 503 to everything, answers that are not JSON) the build
//! fails before it makes anything, within a minute, naming the endpoint, and keeps the
//! recorded steps; `-dry-run` names the same problems.

use std::process::Output;
use std::time::{Duration, Instant};

use cos_customizer_gce_emulator::{Emulator, Handle, Options, Script};
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
use cos_customizer_testkit::testserver::{Reply, TestServer};
use serde_json::json;

const BUCKET: &str = "builds";

struct Env {
    emu: Handle,
    gcs: FakeGcs,
    home: tempfile::TempDir,
}

impl Env {
    async fn start() -> Option<Env> {
        if !fake_gcs::require() {
            return None;
        }
        let gcs = FakeGcs::start(BUCKET).await.unwrap();
        let emu = Emulator::start(Options {
            storage: Some(gcs.endpoint()),
            // Every stop passes DEPROVISIONING, as GCE's sometimes do.
            deprovisioning_every: 1,
            ..Options::default()
        })
        .await
        .unwrap();
        let home = tempfile::tempdir().unwrap();
        let ctx = home.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("preload.sh"), "echo hi\n").unwrap();
        Some(Env { emu, gcs, home })
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_at(&self.emu.compute_base(), args).await
    }

    /// The program with `args`, sent to the Compute API at `compute`.
    async fn run_at(&self, compute: &str, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .arg(format!("-compute-endpoint={compute}"))
            .arg(format!("-storage-endpoint={}", self.gcs.endpoint()))
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .current_dir(self.home.path())
            .output()
            .await
            .unwrap()
    }

    async fn steps(&self) {
        for args in [
            &[
                "start-image-build",
                "-image-project=cos-cloud",
                "-image-family=cos-stable",
                "-gcs-bucket=builds",
                "-gcs-workdir=w",
                "-build-context=ctx",
            ][..],
            &["run-script", "-script=preload.sh"],
        ] {
            let out = self.run(args).await;
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    async fn finish(&self, extra: &[&str]) -> Output {
        self.finish_at(&self.emu.compute_base(), extra).await
    }

    async fn finish_at(&self, compute: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "finish-image-build",
            "-backend=gce",
            "-project=test-project",
            "-zone=us-central1-a",
            "-image-name=my-cos",
            "-image-project=cos-cloud",
            "-image-family=cos-stable",
            "-timeout=30s",
            "-provisioner=/bin/busybox",
        ];
        args.extend_from_slice(extra);
        self.run_at(compute, &args).await
    }

    fn assert_clean(&self) {
        let left = self.emu.resources();
        assert!(
            left.instances.is_empty() && left.disks.is_empty(),
            "{left:?}"
        );
        assert!(
            left.images.iter().all(|i| i.ends_with("/my-cos")),
            "{left:?}"
        );
        assert_eq!(self.gcs.objects(BUCKET), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gce_build_makes_the_image_and_deprecates_the_family() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    env.emu.script(
        "preload-vm-",
        Script::new()
            .serial_after(
                1,
                "BuildStatus: ran\nBuildSucceeded: Build completed with no errors.\n",
            )
            .stop_on_daisy_end(1),
    );
    let out = env
        .finish(&[
            "-deprecate-old-images",
            "-labels=team=infra,stage=test",
            "-licenses=projects/test-project/global/licenses/custom",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = env
        .emu
        .image("projects/cos-cloud/global/images/my-cos")
        .expect("the output image exists");
    assert_eq!(image["labels"]["team"], "infra");
    assert_eq!(image["labels"]["stage"], "test");
    // The source's licences, then -licenses's.
    let licenses = image["licenses"].as_array().unwrap();
    assert_eq!(
        licenses.last().unwrap(),
        "https://www.googleapis.com/compute/v1/projects/test-project/global/licenses/custom",
        "{image}"
    );
    assert!(licenses.len() >= 2, "{image}");
    assert!(stdout.contains("BuildStatus: ran"), "{stdout}");
    assert!(
        stdout.contains("Deprecated cos-stable-109-17800-66-27 in favour of my-cos"),
        "{stdout}"
    );
    let deprecations: Vec<_> = env
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/deprecate"))
        .collect();
    assert_eq!(deprecations.len(), 1, "{deprecations:?}");
    assert!(deprecations[0]
        .path
        .ends_with("cos-stable-109-17800-66-27/deprecate"));
    env.assert_clean();
    assert_eq!(env.emu.resources().images.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_gce_build_leaves_nothing() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    env.emu.script(
        "preload-vm-",
        Script::new().serial_after(1, "BuildFailed: exiting due to errors\n"),
    );
    let out = env.finish(&[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BuildFailed: exiting due to errors"),
        "{stderr}"
    );
    env.assert_clean();
    assert!(env.emu.resources().images.is_empty());
}

/// An SBOM input with every kind of field, all valid SPDX 2.2.
const SBOM_INPUT: &str = r#"{
  "outputImageName": "my-os",
  "outputImageVersion": "1.0",
  "creators": ["Organization: Example", "Tool: build.sh"],
  "supplier": "Organization: Example",
  "SPDXPackages": [
    {
      "name": "curl",
      "SPDXID": "SPDXRef-curl",
      "versionInfo": "7.50.3",
      "supplier": "Organization: curl",
      "originator": "Person: Daniel",
      "downloadLocation": "https://curl.se/download/curl-7.50.3.tar.gz",
      "filesAnalyzed": false,
      "checksums": [
        {"algorithm": "SHA256", "checksumValue": "fd16282b009e91777307951286c49ba684ca35b6e35368eca2235516fe98d2a2"}
      ],
      "homepage": "https://curl.se",
      "licenseConcluded": "curl",
      "licenseDeclared": "curl AND LicenseRef-extra",
      "copyrightText": "Copyright (c) Daniel",
      "summary": "A URL tool",
      "externalRefs": [
        {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": "pkg:generic/curl@7.50.3"},
        {"referenceCategory": "SECURITY", "referenceType": "cpe23Type", "referenceLocator": "cpe:2.3:a:haxx:curl:7.50.3:*:*:*:*:*:*:*"}
      ],
      "annotations": [
        {"annotator": "Person: Jane", "annotationDate": "2023-04-27T16:08:32Z", "annotationType": "REVIEW", "comment": "checked"}
      ]
    },
    {"name": "bare", "SPDXID": "SPDXRef-bare", "filesAnalyzed": false}
  ],
  "SBOMPackages": [
    {"name": "toolbox", "spdxDocument": "https://example.com/toolbox.spdx.json", "algorithm": "SHA1", "checksumValue": "11d7774ac38f40e009dcee453a760750aea11111"}
  ],
  "hasExtractedLicensingInfos": [
    {"licenseId": "LicenseRef-extra", "extractedText": "Some terms", "name": "Extra", "seeAlsos": ["https://example.com/extra"]}
  ]
}"#;

/// What the source image's published SBOM holds in these tests, and its SHA-256.
const BASE_SBOM: &str = r#"{"spdxVersion": "SPDX-2.2", "name": "cos-stable-109-17800-66-27"}"#;
const BASE_SBOM_SHA256: &str = "fd16282b009e91777307951286c49ba684ca35b6e35368eca2235516fe98d2a2";

impl Env {
    fn add_to_context(&self, name: &str, text: &str) {
        std::fs::write(self.home.path().join("ctx").join(name), text).unwrap();
    }

    fn script_success(&self) {
        self.emu.script(
            "preload-vm-",
            Script::new()
                .serial_after(
                    1,
                    "BuildStatus: ran\nBuildSucceeded: Build completed with no errors.\n",
                )
                .stop_on_daisy_end(1),
        );
    }
}

/// Checks `doc` with the SPDX project's own validator (PyPI `spdx-tools`, installed into
/// `.venv-gcs` by scripts/install-deps.sh); skips loudly without it, unless REQUIRE_FAKE_GCS=1.
fn assert_valid_spdx(doc: &[u8]) {
    let bin = match std::env::var_os("PYSPDXTOOLS") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-gcs/bin/pyspdxtools"),
    };
    if !bin.is_file() {
        let why = format!(
            "{} not installed, run scripts/install-deps.sh (or point PYSPDXTOOLS at it)",
            bin.display()
        );
        if std::env::var("REQUIRE_FAKE_GCS").as_deref() == Ok("1") {
            panic!("{why}; REQUIRE_FAKE_GCS=1 forbids skipping");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED SPDX validation: {why} ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sbom.spdx.json");
    std::fs::write(&file, doc).unwrap();
    let out = std::process::Command::new(&bin)
        .arg("-i")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools refused the SBOM:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(doc)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gce_build_writes_a_valid_sbom_that_refers_to_the_cos_images_own() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.add_to_context("sbom.json", SBOM_INPUT);
    env.gcs.put(
        "cos-tools",
        "17800.66.27/lakitu/sbom.spdx.json",
        BASE_SBOM.as_bytes(),
    );
    env.steps().await;
    env.script_success();
    let out = env
        .finish(&[
            "-sbom-input-path=sbom.json",
            "-sbom-output-path=gs://builds/sboms/",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let object = "sboms/my-os-1.0_sbom.spdx.json";
    assert!(
        stderr.contains(&format!("SBOM written to gs://builds/{object}")),
        "{stderr}"
    );
    // The build's own folder is gone; the SBOM stays.
    assert_eq!(env.gcs.objects(BUCKET), [object]);
    let data = env.gcs.object(BUCKET, object).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(doc["name"], "my-os-1.0_sbom.spdx.json");
    assert_eq!(
        doc["creationInfo"]["creators"],
        serde_json::json!([
            "Tool: gcr.io/cos-cloud/cos-customizer",
            "Organization: Example",
            "Tool: build.sh"
        ])
    );
    assert_eq!(
        doc["externalDocumentRefs"][0],
        serde_json::json!({
            "externalDocumentId": "DocumentRef-cos-stable-109-17800-66-27",
            "spdxDocument": "https://storage.googleapis.com/cos-tools/17800.66.27/lakitu/sbom.spdx.json",
            "checksum": {"algorithm": "SHA256", "checksumValue": BASE_SBOM_SHA256}
        })
    );
    assert_eq!(doc["packages"][0]["name"], "my-os");
    assert_eq!(doc["packages"][0]["versionInfo"], "1.0");
    let related: Vec<&str> = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["relatedSpdxElement"].as_str().unwrap())
        .collect();
    assert_eq!(
        related,
        [
            "SPDXRef-my-os",
            "DocumentRef-cos-stable-109-17800-66-27:SPDXRef-DOCUMENT",
            "SPDXRef-curl",
            "SPDXRef-bare",
            "DocumentRef-toolbox:SPDXRef-DOCUMENT"
        ]
    );
    assert_valid_spdx(&data);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_cos_images_sbom_the_build_goes_on_and_writes_to_a_local_folder() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.add_to_context("sbom.json", r#"{"creators": ["Person: Jane"]}"#);
    std::fs::create_dir(env.home.path().join("out")).unwrap();
    env.steps().await;
    let plan = env
        .finish(&[
            "-sbom-input-path=sbom.json",
            "-sbom-output-path=out",
            "-dry-run",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{stdout}");
    assert!(
        stdout.contains("/out/my-cos_sbom.spdx.json from sbom.json in the build context"),
        "{stdout}"
    );
    env.script_success();
    let out = env
        .finish(&["-sbom-input-path=sbom.json", "-sbom-output-path=out"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not read the source image's SBOM")
            && stderr.contains("gs://cos-tools/17800.66.27/lakitu/sbom.spdx.json"),
        "{stderr}"
    );
    // Named after the image built, as the input names none.
    let data = std::fs::read(env.home.path().join("out/my-cos_sbom.spdx.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert!(doc.get("externalDocumentRefs").is_none(), "{doc}");
    assert_eq!(doc["packages"][0]["name"], "my-cos");
    assert_eq!(doc["packages"][0]["supplier"], "NOASSERTION");
    assert_valid_spdx(&data);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_sbom_input_is_named_before_the_build_and_keeps_the_state() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.add_to_context("sbom.json", "{\n  \"creators\": [\"Organization G\"]\n}");
    env.steps().await;
    for (extra, want) in [
        (
            "-sbom-input-path=sbom.jsn",
            "\"sbom.jsn\" is not in the build context",
        ),
        (
            "-sbom-input-path=sbom.json",
            "invalid creator \"Organization G\"",
        ),
    ] {
        let out = env
            .finish(&[extra, "-sbom-output-path=gs://builds/s"])
            .await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{stderr}");
        assert!(
            stderr.contains("closest members: sbom.json") || stderr.contains("line 2 column"),
            "{stderr}"
        );
    }
    // Nothing was built, and the build can still be finished once the input is fixed.
    assert!(env.emu.resources().images.is_empty());
    assert!(!env
        .emu
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path.ends_with("/instances")));
    assert!(env
        .home
        .path()
        .join(".cos-customizer-workdir/user_build_context.tar")
        .exists());
}

impl Env {
    /// The recorded build is still there: a dry run against the emulator plans it, and
    /// nothing was made.
    async fn assert_state_kept(&self) {
        let out = self.finish(&["-dry-run"]).await;
        assert!(out.status.success(), "the state is gone: {}", text(&out));
        self.assert_clean();
        assert!(self.emu.resources().images.is_empty());
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A finish against `compute` fails within `within`, its message holding each of `says`,
/// and the state is kept.
async fn fails_and_keeps(env: &Env, compute: &str, within: Duration, says: &[&str]) {
    let start = Instant::now();
    let out = env.finish_at(compute, &[]).await;
    let took = start.elapsed();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < within, "took {took:?}: {all}");
    for s in says.iter().chain(&["the build state is kept", compute]) {
        assert!(all.contains(s), "no {s:?} in: {all}");
    }
    env.assert_state_kept().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_listening_fails_fast_and_keeps_the_state() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let compute = format!("http://127.0.0.1:{port}/compute/v1/");
    fails_and_keeps(&env, &compute, Duration::from_secs(45), &["gave up after"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_fails_within_a_minute() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    let server = TestServer::answering_all(|| Reply::Silent).await;
    let compute = format!("{}/compute/v1/", server.origin);
    fails_and_keeps(
        &env,
        &compute,
        Duration::from_secs(60),
        &["no answer within"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_for_everything_is_not_read_as_a_missing_image() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    let server =
        TestServer::answering_all(|| Reply::Text(404, "<html>Not Found</html>".into())).await;
    let compute = format!("{}/compute/v1/", server.origin);
    fails_and_keeps(
        &env,
        &compute,
        Duration::from_secs(20),
        &["without Compute's error body"],
    )
    .await;
    // Nothing was sent that would create anything.
    assert!(server.seen().iter().all(|s| s.method == "GET"));
    let out = env.finish_at(&compute, &["-dry-run"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("a real run would be refused"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_garbage_keep_the_state() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    let busy = TestServer::answering_all(|| {
        Reply::Json(
            503,
            json!({"error": {"code": 503, "message": "backendError", "errors": [{"reason": "backendError"}]}}),
        )
    })
    .await;
    let compute = format!("{}/compute/v1/", busy.origin);
    fails_and_keeps(&env, &compute, Duration::from_secs(50), &["gave up after"]).await;

    let garbage = TestServer::answering_all(|| Reply::Text(200, "hello".into())).await;
    let compute = format!("{}/compute/v1/", garbage.origin);
    fails_and_keeps(
        &env,
        &compute,
        Duration::from_secs(20),
        &["is the endpoint the Compute API?"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gce_build_finished_locally_is_refused_before_anything() {
    let Some(env) = Env::start().await else {
        return;
    };
    env.steps().await;
    for extra in [
        &["-output-file=out.img"][..],
        &["-output-file=out.img", "-dry-run"],
    ] {
        let out = env
            .run(
                &[
                    &["finish-image-build", "-provisioner=/bin/busybox"][..],
                    extra,
                ]
                .concat(),
            )
            .await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("start-image-build -image-file=PATH"),
            "{}",
            text(&out)
        );
        assert!(!env.home.path().join("out.img").exists());
    }
    env.assert_state_kept().await;
}
