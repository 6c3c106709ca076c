//! `start-image-build` with a GCE source: the built `cos-customizer` resolves the image against
//! the Compute emulator (`-compute-endpoint=http://127.0.0.1:P/compute/v1/`) with a temporary
//! `$HOME`, and writes `config/source_image` in the original's format: a `compute.Image` as
//! JSON plus `Project`, which the original's Go `finish-image-build` decodes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use cos_customizer_gce_emulator::{Emulator, Handle, Options, Seed};
use serde::Deserialize;
use serde_json::{json, Map, Value};

const WORKDIR: &str = ".cos-customizer-workdir";

/// The emulator, with the built-in seed plus `extra` cos-cloud images.
async fn emulator(extra: &[Value]) -> Handle {
    let mut seed = Seed::default();
    for e in extra {
        let mut image = e.as_object().unwrap().clone();
        image.insert("project".into(), "cos-cloud".into());
        seed.images.push(image);
    }
    Emulator::start(Options {
        seed,
        ..Options::default()
    })
    .await
    .unwrap()
}

struct Home {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Home {
    fn new(emu: &Handle) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join("lib")).unwrap();
        std::fs::write(ctx.join("preload.sh"), "echo hi\n").unwrap();
        std::fs::write(ctx.join("lib/x.sh"), "x\n").unwrap();
        Home {
            dir,
            endpoint: emu.compute_base(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join(WORKDIR)
    }

    fn state(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir().join("config").join(name)).unwrap()
    }

    /// Runs `cos-customizer -compute-endpoint=<emulator> args...`.
    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .arg(format!("-compute-endpoint={}", self.endpoint))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .current_dir(self.dir.path())
            .output()
            .await
            .unwrap()
    }

    /// Runs a command that must succeed and returns its stderr.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stderr
    }

    /// `start-image-build` of a cos-cloud image chosen by `flag`; returns its stderr.
    async fn start(&self, flag: &str) -> String {
        self.ok(&start_args(flag)).await
    }
}

fn start_args(flag: &str) -> Vec<&str> {
    vec![
        "start-image-build",
        "-build-context=ctx",
        "-gcs-bucket=b",
        "-gcs-workdir=w",
        "-image-project=cos-cloud",
        flag,
    ]
}

/// The `Image` schema of Compute's discovery document (trimmed, descriptions dropped), whose
/// property names and types are those of Go's generated `compute.Image`.
fn discovery_schemas() -> Map<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("backends/gce/tests/fixtures/compute.v1.trimmed.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["schemas"].as_object().unwrap().clone()
}

/// Checks `value` against `schema` as Go's `encoding/json` would decode it into the generated
/// struct: every key a property (Go ignores unknown keys, so a typo would silently drop a
/// field), strings where the property is a string (int64 fields carry `,string`, so a JSON
/// number would fail), objects and arrays where expected, recursively through `$ref`.
fn decodes_as(schemas: &Map<String, Value>, schema: &Value, value: &Value, at: &str) {
    let schema = match schema["$ref"].as_str() {
        Some(name) => match schemas.get(name) {
            Some(s) => s,
            None => return assert!(value.is_object(), "{at}: {value} is not an object"),
        },
        None => schema,
    };
    match schema["type"].as_str() {
        Some("string") => assert!(value.is_string(), "{at}: {value} is not a string"),
        Some("boolean") => assert!(value.is_boolean(), "{at}: {value} is not a boolean"),
        Some("integer") | Some("number") => {
            assert!(value.is_number(), "{at}: {value} is not a number")
        }
        Some("array") => {
            for (i, item) in value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"))
                .iter()
                .enumerate()
            {
                decodes_as(schemas, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object"));
            for (key, v) in object {
                let property = match (&schema["properties"], &schema["additionalProperties"]) {
                    (Value::Object(p), _) if p.contains_key(key) => &p[key],
                    (_, extra @ Value::Object(_)) => extra,
                    _ => panic!("{at}: {key} is not a field of the Go struct"),
                };
                decodes_as(schemas, property, v, &format!("{at}.{key}"));
            }
        }
        other => panic!("{at}: schema type {other:?}"),
    }
}

/// What the original's `finish-image-build` reads from `config/source_image`: its `config.Image`
/// (`*compute.Image` plus `Project`), of which it uses the name and project.
#[derive(Deserialize)]
struct GoImage {
    #[serde(rename = "Project")]
    project: String,
    name: String,
}

/// Checks that `text`, a `config/source_image`, is what the original's Go decodes, and returns
/// it parsed.
fn check_go_format(text: &str) -> Map<String, Value> {
    let value: Value = serde_json::from_str(text).unwrap();
    let mut fields = value.as_object().unwrap().clone();
    let go: GoImage = serde_json::from_value(value).unwrap();
    assert!(!go.name.is_empty() && go.project == "cos-cloud", "{text}");
    fields.remove("Project");
    let schemas = discovery_schemas();
    decodes_as(
        &schemas,
        &json!({"$ref": "Image"}),
        &Value::Object(fields.clone()),
        "source_image",
    );
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_checked_and_recorded_with_its_resource_in_the_originals_format() {
    let emu = emulator(&[]).await;
    let h = Home::new(&emu);
    h.start("-image-name=cos-dev-125-19100-0-0").await;
    let text = h.state("source_image");
    let fields = check_go_format(&text);
    let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "name",
            "family",
            "labels",
            "licenses",
            "creationTimestamp",
            "architecture",
            "diskSizeGb",
            "status"
        ]),
        "{text}"
    );
    // The labels are there for -inherit-labels, offline.
    assert_eq!(fields["labels"], json!({"channel": "dev"}));
    assert_eq!(fields["diskSizeGb"], "10");
    let requests: Vec<String> = emu.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        requests,
        ["projects/cos-cloud/global/images/cos-dev-125-19100-0-0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cloudbuild_args_parse_and_record_steps() {
    let emu = emulator(&[]).await;
    let h = Home::new(&emu);
    h.ok(&[
        "-local-state-workdir=.w",
        "start-image-build",
        "-build-context=ctx",
        "-gcs-bucket=b",
        "-gcs-workdir=customizer",
        "-image-project=cos-cloud",
        "-image-name=cos-stable-109-17800-66-27",
    ])
    .await;
    let config = h.dir.path().join(".w/config");
    let source = std::fs::read_to_string(config.join("source_image")).unwrap();
    assert!(
        source.starts_with(r#"{"name":"cos-stable-109-17800-66-27","Project":"cos-cloud","#),
        "{source}"
    );
    let build = std::fs::read_to_string(config.join("build")).unwrap();
    assert!(
        build.starts_with(r#"{"GCSBucket":"b","GCSDir":"customizer","Project":"""#),
        "{build}"
    );
    h.ok(&[
        "-local-state-workdir",
        ".w",
        "run-script",
        "-script=preload.sh",
        "-env=B=2,A=1",
    ])
    .await;
    h.ok(&[
        "--local-state-workdir=.w",
        "run-script",
        "--script",
        "lib/x.sh",
    ])
    .await;
    h.ok(&["-local-state-workdir=.w", "seal-oem"]).await;
    h.ok(&["-local-state-workdir=.w", "disable-auto-update"])
        .await;
    assert_eq!(
        std::fs::read_to_string(config.join("provisioner")).unwrap(),
        r#"{"BuildContexts":null,"BootDisk":{"OEMSize":"","OEMFSSize4K":0,"ReclaimSDA3":true,"WaitForDiskResize":false},"Steps":[{"Type":"RunScript","Args":{"BuildContext":"user","Path":"preload.sh","Env":"A=1,B=2"}},{"Type":"RunScript","Args":{"BuildContext":"user","Path":"lib/x.sh","Env":""}},{"Type":"SealOEM","Args":null},{"Type":"DisableAutoUpdate","Args":null}]}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_is_resolved_to_its_current_image() {
    let emu = emulator(&[]).await;
    let h = Home::new(&emu);
    let stderr = h.start("-image-family=cos-stable").await;
    assert!(
        stderr.contains("Using image cos-stable-109-17800-66-27 from family cos-stable"),
        "{stderr}"
    );
    let fields = check_go_format(&h.state("source_image"));
    assert_eq!(fields["name"], "cos-stable-109-17800-66-27");
    assert_eq!(fields["family"], "cos-stable");
    // What was asked is not recorded: the original's format has no place for it.
    assert!(!fields.contains_key("Milestone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milestones_take_the_newest_x86_image_of_either_name_style() {
    let emu = emulator(&[
        // Numerically above every x86 image of 109 and 125; never the pick for an x86 build.
        json!({"name": "cos-arm64-109-17800-999-0", "family": "cos-arm64-109-lts",
               "architecture": "ARM64", "creationTimestamp": "2025-02-01T10:00:00.000-08:00"}),
        json!({"name": "cos-125-19100-9-0", "architecture": "ARM64",
               "creationTimestamp": "2025-10-01T10:00:00.000-07:00"}),
    ])
    .await;
    for (milestone, want) in [
        // New-style name, above the old-style cos-stable-109-17800-66-27.
        ("109", "cos-109-17800-147-54"),
        // Old-style names.
        ("121", "cos-beta-121-18867-0-79"),
        ("125", "cos-dev-125-19100-0-0"),
    ] {
        let h = Home::new(&emu);
        let stderr = h.start(&format!("-image-milestone={milestone}")).await;
        assert!(
            stderr.contains(&format!("Using image {want} from milestone {milestone}")),
            "{stderr}"
        );
        let fields = check_go_format(&h.state("source_image"));
        assert_eq!(fields["name"], want);
        assert_eq!(fields["architecture"], "X86_64");
    }
    // A milestone with only a deprecated image still builds, with a warning.
    let h = Home::new(&emu);
    let stderr = h.start("-image-milestone=105").await;
    assert!(
        stderr.contains("Warning: source image cos-stable-105-17412-101-24 is DEPRECATED"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_found_fails_by_name_and_leaves_no_state() {
    let emu = emulator(&[]).await;
    for (flag, message) in [
        (
            "-image-name=cos-nope",
            "could not find source image projects/cos-cloud/global/images/cos-nope: \
             check -image-name and -image-project",
        ),
        (
            "-image-family=cos-nope",
            "family cos-nope in project cos-cloud",
        ),
        (
            "-image-milestone=99",
            "no usable X86_64 image of milestone 99 in cos-cloud; milestones with X86_64 \
             images: 105, 109, 121, 125: check -image-milestone",
        ),
    ] {
        let h = Home::new(&emu);
        let out = h.run(&start_args(flag)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains(message), "{flag}: {stderr}");
        assert!(!h.state_dir().exists(), "{flag} left a state folder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_written_by_the_original_is_read() {
    let emu = emulator(&[]).await;
    let h = Home::new(&emu);
    h.start("-image-name=cos-dev-125-19100-0-0").await;
    // Byte for byte what the original's start-image-build writes for the same flags.
    let config = h.state_dir().join("config");
    for (name, text) in [
        (
            "source_image",
            r#"{"Project":"cos-cloud","name":"cos-stable-109-17800-66-27"}"#,
        ),
        (
            "build",
            r#"{"GCSBucket":"b","GCSDir":"w","Project":"","Zone":"","MachineType":"","ServiceAccount":"","DiskType":"","DiskSize":0,"GPUType":"","Timeout":"","GCSFiles":null,"GCEEndpoint":"","Network":"","Subnet":""}"#,
        ),
        (
            "provisioner",
            r#"{"BuildContexts":null,"BootDisk":{"OEMSize":"","OEMFSSize4K":0,"ReclaimSDA3":false,"WaitForDiskResize":false},"Steps":null}"#,
        ),
    ] {
        std::fs::write(config.join(name), text).unwrap();
    }
    h.ok(&["run-script", "-script=preload.sh"]).await;
    let out = h
        .run(&[
            "finish-image-build",
            "-image-name=out",
            "-zone=z",
            "-project=p",
            "-dry-run",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("from projects/cos-cloud/global/images/cos-stable-109-17800-66-27"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.state("source_image"),
        r#"{"Project":"cos-cloud","name":"cos-stable-109-17800-66-27"}"#,
        "reading the state rewrote the source image"
    );
}
