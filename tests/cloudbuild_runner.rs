//! `scripts/cloudbuild-local` running real containers with podman: the log's step prefixes,
//! `/builder/home` kept across steps, `/workspace` a copy of the source, env, `dir`, the
//! stop at the first failing step, allowFailure, a step timeout and Ctrl-C. Every run gets
//! a `TMPDIR` of its own, which must be empty afterwards, and must leave no container.
//!
//! Not part of `cargo test`: it needs podman and a step image without Google's services,
//! named by `COS_CUSTOMIZER_BUILDER_IMAGE` (the builder image from
//! `scripts/build-builder-image.sh`, or any image with bash, coreutils and sleep); the
//! steps set `entrypoint: bash`. Where podman needs settings of its own (see
//! tests/containers.conf), set `CONTAINERS_CONF` for the run: the runner's podman calls
//! inherit it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

// Shared with the VM suites; this one uses the container helpers.
#[allow(dead_code)]
mod common;
use common::containers::{build_id, builder_image, containers_named};

/// One build at a time: the machine is small, and the container checks stay exact.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The script under test.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cloudbuild-local")
}

/// A build's source folder, config, and the runner's own TMPDIR; while it lives, no other
/// build of this suite runs.
struct Build {
    _one: MutexGuard<'static, ()>,
    source: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

/// What a finished run printed.
struct Outcome {
    code: i32,
    out: String,
    err: String,
    id: String,
}

impl Outcome {
    /// Asserts `line` is one of the output's lines.
    fn has_line(&self, line: &str) {
        assert!(
            self.out.lines().any(|l| l == line),
            "no line `{line}` in:\n{self}"
        );
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.out, self.err
        )
    }
}

impl Build {
    /// A source folder holding `a.txt`, a `.git` folder and `cloudbuild.yaml` = `yaml`
    /// (`IMAGE` replaced by the step image).
    fn new(yaml: &str) -> Build {
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("a.txt"), "from the source\n").unwrap();
        std::fs::create_dir(source.path().join(".git")).unwrap();
        std::fs::write(source.path().join(".git/HEAD"), "ref: x\n").unwrap();
        let yaml = yaml.replace("IMAGE", &builder_image());
        std::fs::write(source.path().join("cloudbuild.yaml"), yaml).unwrap();
        Build {
            _one: one,
            source,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// The runner's command, with `args` after SOURCE.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(script());
        c.arg(self.source.path())
            .args(args)
            .arg("--tool=podman")
            .env("TMPDIR", self.tmp.path())
            .env_remove("CLOUDSDK_CORE_PROJECT");
        c
    }

    /// Runs the build to its end, then checks that it left no container and no temporary
    /// folder.
    fn run(&self, args: &[&str]) -> Outcome {
        let out = self.command(args).output().unwrap();
        let outcome = Outcome {
            code: out.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
            id: build_id(&String::from_utf8_lossy(&out.stdout)),
        };
        self.assert_clean(&outcome.id);
        outcome
    }

    /// No container of the build is left, and the runner's TMPDIR is empty.
    fn assert_clean(&self, id: &str) {
        assert_eq!(
            containers_named(&format!("cloudbuild-{}", &id[..8])),
            Vec::<String>::new()
        );
        let left: Vec<_> = std::fs::read_dir(self.tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "temporary folders left: {left:?}");
    }

    /// The source folder's entries (names), sorted.
    fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.source.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn steps_share_home_and_a_copy_of_the_source_with_prefixed_output() {
    let build = Build::new(
        r#"
steps:
- name: IMAGE
  entrypoint: bash
  env: ['FROM_STEP=step-env']
  args:
  - -c
  - |
    echo "to stdout"
    echo "to stderr" >&2
    cat /workspace/a.txt
    test -e /workspace/.git && echo ".git was copied"
    echo "home is $$HOME"
    echo kept > $$HOME/kept.txt
    mkdir /workspace/sub && echo made > /workspace/made.txt
    echo "env: $$FROM_OPTIONS $$FROM_STEP $$FROM_FLAG $_GREETING"
- name: IMAGE
  id: second
  entrypoint: bash
  dir: sub
  args: ['-c', 'echo "pwd: $$(pwd)"; cat $$HOME/kept.txt ../made.txt; echo "[$$FROM_STEP]"']
options:
  env: ['FROM_OPTIONS=options-env']
substitutions:
  _GREETING: hello
"#,
    );
    let before = build.source_names();
    let run = build.run(&["--env=FROM_FLAG=flag-env"]);
    assert_eq!(run.code, 0, "{run}");
    for line in [
        "Starting Step #0",
        "Step #0: to stdout",
        "Step #0: to stderr",
        "Step #0: from the source",
        "Step #0: home is /builder/home",
        "Step #0: env: options-env step-env flag-env hello",
        "Finished Step #0",
        "Starting Step #1 - \"second\"",
        "Step #1 - \"second\": pwd: /workspace/sub",
        "Step #1 - \"second\": kept",
        "Step #1 - \"second\": made",
        "Step #1 - \"second\": []",
        "Finished Step #1 - \"second\"",
        "DONE",
    ] {
        run.has_line(line);
    }
    assert!(!run.out.contains(".git was copied"), "{run}");
    // The steps wrote into the copy only.
    assert_eq!(build.source_names(), before);
}

#[test]
fn the_first_failing_step_stops_the_build() {
    let build = Build::new(
        r#"
steps:
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'echo first']
- name: IMAGE
  id: breaks
  entrypoint: bash
  args: ['-c', 'echo failing; exit 7']
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'echo never']
"#,
    );
    let run = build.run(&[]);
    assert_eq!(run.code, 1, "{run}");
    run.has_line("Step #1 - \"breaks\": failing");
    run.has_line(&format!(
        "ERROR: build step 1 \"{}\" failed: step exited with non-zero status: 7",
        builder_image()
    ));
    run.has_line("ERROR");
    assert!(!run.out.contains("Step #2"), "{run}");
    assert!(
        !run.out.contains("never") && !run.out.contains("DONE"),
        "{run}"
    );
}

#[test]
fn allowed_failures_let_the_build_go_on() {
    let build = Build::new(
        r#"
steps:
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'exit 3']
  allowFailure: true
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'exit 4']
  allow_exit_codes: [4]
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'echo last']
"#,
    );
    let run = build.run(&[]);
    assert_eq!(run.code, 0, "{run}");
    run.has_line("Step #2: last");
    run.has_line("DONE");
    drop(build); // Its lock, for the next build.
                 // allowExitCodes takes precedence over allowFailure, as in Cloud Build.
    let build = Build::new(
        "steps:\n- name: IMAGE\n  entrypoint: bash\n  args: ['-c', 'exit 6']\n  \
         allowFailure: true\n  allowExitCodes: [5]\n",
    );
    let run = build.run(&[]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.out.contains("non-zero status: 6"), "{run}");
}

#[test]
fn a_step_timeout_kills_its_container() {
    let build = Build::new(
        r#"
steps:
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'echo started; sleep 300']
  timeout: 3s
- name: IMAGE
  entrypoint: bash
  args: ['-c', 'echo never']
"#,
    );
    let start = Instant::now();
    let run = build.run(&[]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    run.has_line("Step #0: started");
    assert!(run.out.contains("TIMEOUT"), "{run}");
    assert!(!run.out.contains("never"), "{run}");
    assert_eq!(containers_named("cloudbuild-"), Vec::<String>::new());
}

#[test]
fn the_build_timeout_stops_the_build() {
    let build = Build::new(
        "steps:\n- name: IMAGE\n  entrypoint: bash\n  args: ['-c', 'sleep 300']\ntimeout: 3s\n",
    );
    let run = build.run(&[]);
    assert_eq!(run.code, 1, "{run}");
    run.has_line("TIMEOUT");
    assert!(run.out.contains("build timed out after 3s"), "{run}");
}

#[test]
fn sigint_mid_step_removes_the_container_and_the_temporary_folders() {
    let build = Build::new(
        "steps:\n- name: IMAGE\n  entrypoint: bash\n  args: ['-c', 'echo ready; sleep 300']\n",
    );
    let mut child = build
        .command(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        out += &line;
        out.push('\n');
        if line == "Step #0: ready" {
            break;
        }
    }
    let id = build_id(&out);
    assert_eq!(
        containers_named(&format!("cloudbuild-{}", &id[..8])).len(),
        1
    );
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for line in lines {
        out += &line.unwrap();
        out.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.lines().any(|l| l == "ERROR: interrupted"), "{out}");
    build.assert_clean(&id);
}
