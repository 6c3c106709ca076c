//! `scripts/cloudbuild-local --dry-run`: the checks and substitutions of a cloudbuild.yaml and
//! the container commands planned from it, without running a container (the tool is named
//! through `CONTAINER_TOOL`, so it need not be installed). The real runs are in
//! `tests/cloudbuild_runner.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The script under test.
fn script() -> PathBuf {
    repo().join("scripts/cloudbuild-local")
}

/// What one dry run printed.
struct Plan {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Plan {
    /// The command line planned for step `n` (its `Step #n...: ` prefix removed).
    fn step(&self, n: usize) -> &str {
        let prefix = format!("Step #{n}");
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{prefix}:")) || l.starts_with(&format!("{prefix} -")))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{}", self.stdout));
        &line[line.find(": ").unwrap() + 2..]
    }

    /// The build id of the `build "<id>"` line.
    fn build_id(&self) -> &str {
        let rest = self.stdout.strip_prefix("build \"").expect(&self.stdout);
        &rest[..rest.find('"').unwrap()]
    }

    /// Asserts a config error (exit 2) whose message holds every one of `words`.
    fn refused(&self, words: &[&str]) {
        assert_eq!(
            self.code, 2,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        for w in words {
            assert!(self.stderr.contains(w), "`{w}` not in:\n{}", self.stderr);
        }
    }

    /// Asserts success and returns self.
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Writes `yaml` as `cloudbuild.yaml` in a fresh source folder and dry-runs it with `args`.
fn dry_run(yaml: &str, args: &[&str]) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cloudbuild.yaml"), yaml).unwrap();
    let mut full = vec!["--dry-run", dir.path().to_str().unwrap()];
    full.extend_from_slice(args);
    run(&full)
}

/// Runs the script with `args`, podman named as the tool, and no project in the environment.
fn run(args: &[&str]) -> Plan {
    let out: Output = Command::new(script())
        .args(args)
        .env("CONTAINER_TOOL", "podman")
        .env_remove("CLOUDSDK_CORE_PROJECT")
        .output()
        .unwrap();
    Plan {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_example_is_planned_as_three_steps_of_the_builder_image() {
    let config = repo().join("examples/cloudbuild.yaml");
    let plan = run(&[
        "--dry-run",
        "--project=test-project",
        &format!("--config={}", config.display()),
        repo().to_str().unwrap(),
    ]);
    plan.ok();
    let id = plan.build_id().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let image = "us-docker.pkg.dev/test-project/tools/cos-customizer";
    let common = format!(
        "podman run --rm --name cloudbuild-{short}-N --network=host --pull=missing \
         -v '<workspace>:/workspace' -v '<home>:/builder/home' -e HOME=/builder/home \
         -w /workspace {image} ",
        short = &id[..8]
    );
    let expect = [
        format!(
            "start-image-build -image-family=cos-stable -image-project=cos-cloud \
             -gcs-bucket=test-project_cloudbuild -gcs-workdir=image-build-{id}"
        ),
        "run-script -script=preload.sh -env=REGION=eu".to_owned(),
        format!(
            "finish-image-build -zone=us-west1-b -project=test-project -image-name=my-cos-{id} \
             -image-project=test-project -image-family=my-cos -deprecate-old-images \
             -enable-cleanup"
        ),
    ];
    for (n, args) in expect.iter().enumerate() {
        let want = common.replace("-N ", &format!("-{n} ")) + args;
        assert_eq!(plan.step(n), want);
    }
    assert!(!plan.stdout.contains("Step #3"), "{}", plan.stdout);
}

#[test]
fn the_readme_shows_the_example_verbatim() {
    let example = std::fs::read_to_string(repo().join("examples/cloudbuild.yaml")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{example}```\n")),
        "README.md's yaml block in \"Building on GCE\" must be examples/cloudbuild.yaml"
    );
    let steps = &example[example.find("steps:").unwrap()..];
    assert!(readme.contains(steps));
}

#[test]
fn a_missing_project_names_the_flag() {
    let plan = dry_run("steps:\n- name: 'gcr.io/$PROJECT_ID/x'\n", &[]);
    plan.refused(&["PROJECT_ID", "--project"]);
    // Said once, not once per use.
    let plan = dry_run(
        "steps:\n- name: 'gcr.io/$PROJECT_ID/x'\n  args: ['$PROJECT_ID']\n",
        &[],
    );
    assert_eq!(
        plan.stderr.matches("--project").count(),
        1,
        "{}",
        plan.stderr
    );
}

#[test]
fn built_in_and_user_substitutions_are_applied() {
    let yaml = r#"
steps:
- name: 'gcr.io/${PROJECT_ID}/img'
  args: ['$BUILD_ID', '${LOCATION}', '$_A-${_B}', 'price: $$5', '$$HOME', '[$BRANCH_NAME]']
substitutions:
  _A: from-file
  _B: b-from-file
"#;
    let plan = dry_run(
        yaml,
        &["--project=p1", "--substitutions=_B=b-flag,BRANCH_NAME=main"],
    );
    plan.ok();
    let id = plan.build_id().to_owned();
    let step = plan.step(0);
    assert!(
        step.ends_with(&format!(
            "gcr.io/p1/img {id} global from-file-b-flag 'price: $5' '$HOME' '[main]'"
        )),
        "{step}"
    );
}

#[test]
fn trigger_substitutions_default_to_empty() {
    let plan = dry_run(
        "steps:\n- name: img\n  args: ['[$COMMIT_SHA]', '[${TAG_NAME}]']\n",
        &[],
    );
    assert!(
        plan.ok()
            .step(0)
            .ends_with("docker.io/library/img '[]' '[]'"),
        "{}",
        plan.stdout
    );
}

#[test]
fn an_undefined_substitution_fails_unless_loose() {
    let yaml = "steps:\n- name: img\n  args: ['$_NOPE', '${ALSO_NOT}']\n";
    let plan = dry_run(yaml, &[]);
    plan.refused(&["_NOPE", "ALSO_NOT", "ALLOW_LOOSE", "$$"]);
    let loose = format!("{yaml}options:\n  substitutionOption: ALLOW_LOOSE\n");
    assert!(dry_run(&loose, &[]).ok().step(0).ends_with("img '' ''"));
    // The snake_case spelling too.
    let snake = format!("{yaml}options:\n  substitution_option: ALLOW_LOOSE\n");
    dry_run(&snake, &[]).ok();
}

#[test]
fn an_unused_user_substitution_fails_unless_loose() {
    let yaml = "steps:\n- name: img\nsubstitutions:\n  _UNUSED: x\n";
    dry_run(yaml, &[]).refused(&["_UNUSED", "never used"]);
    dry_run("steps:\n- name: img\n", &["--substitutions=_FLAG=1"]).refused(&["_FLAG"]);
    let loose = format!("{yaml}options:\n  substitutionOption: ALLOW_LOOSE\n");
    dry_run(&loose, &[]).ok();
}

#[test]
fn bad_substitution_names_and_bash_style_forms_are_refused() {
    dry_run("steps:\n- name: img\n", &["--substitutions=lower=1"]).refused(&["`lower`", "_"]);
    dry_run(
        "steps:\n- name: img\n  args: ['${_X/a/b}']\nsubstitutions:\n  _X: a\n",
        &[],
    )
    .refused(&["_X/a/b", "bash-style"]);
    dry_run(
        "steps:\n- name: img\n  args: ['$_X']\nsubstitutions:\n  _X: 'gcr.io/$PROJECT_ID'\n",
        &["--project=p"],
    )
    .refused(&["_X", "dynamic"]);
}

#[test]
fn automap_exports_every_substitution() {
    let yaml =
        "steps:\n- name: img\nsubstitutions:\n  _U: v\noptions:\n  automapSubstitutions: true\n";
    let plan = dry_run(yaml, &["--project=p"]);
    let step = plan.ok().step(0);
    for env in [
        "-e _U=v ",
        "-e PROJECT_ID=p ",
        "-e LOCATION=global ",
        "-e BUILD_ID=",
    ] {
        assert!(step.contains(env), "{env} not in {step}");
    }
    // A step's own automapSubstitutions maps them into that step only.
    let yaml =
        "steps:\n- name: img\n  automapSubstitutions: true\n- name: img\nsubstitutions:\n  _U: v\n";
    let plan = dry_run(yaml, &[]);
    assert!(plan.ok().step(0).contains("-e _U=v "));
    assert!(!plan.step(1).contains("_U=v"), "{}", plan.step(1));
}

#[test]
fn dir_env_entrypoint_and_volumes_are_planned() {
    let yaml = r#"
steps:
- name: localhost/tools:1
  id: build
  dir: sub/dir
  entrypoint: bash
  env: ['STEP=$_V']
  volumes: [{name: cache, path: /cache}]
  args: ['-c', 'echo hi']
- name: ubuntu
  dir: /abs
  waitFor: ['build']
options:
  env: ['OPT=1', 'STEP=from-options']
  volumes: [{name: shared, path: /shared}]
substitutions:
  _V: v
"#;
    let plan = dry_run(yaml, &["--env=CLI=2", "--env", "STEP=from-flag"]);
    plan.ok();
    let s0 = plan.step(0);
    assert!(
        plan.stdout.contains("Step #0 - \"build\": podman run"),
        "{}",
        plan.stdout
    );
    assert!(
        s0.contains(
            "-v '<volume:shared>:/shared' -v '<volume:cache>:/cache' -e OPT=1 \
             -e STEP=from-options -e STEP=v -e CLI=2 -e STEP=from-flag \
             -w /workspace/sub/dir --entrypoint bash localhost/tools:1 -c 'echo hi'"
        ),
        "{s0}"
    );
    let s1 = plan.step(1);
    assert!(s1.contains("-w /abs docker.io/library/ubuntu"), "{s1}");
    assert!(!s1.contains("cache"), "{s1}");
    // docker reads short names itself.
    let plan = dry_run(yaml, &["--tool=docker"]);
    assert!(
        plan.ok().step(1).starts_with("docker run "),
        "{}",
        plan.step(1)
    );
    assert!(plan.step(1).ends_with(" ubuntu"), "{}", plan.step(1));
}

#[test]
fn config_errors_name_the_field() {
    dry_run("steps:\n- name: img\nbogus: 1\n", &[]).refused(&["`bogus`"]);
    dry_run("steps:\n- name: img\n  argz: []\n", &[]).refused(&["steps[0]", "`argz`"]);
    dry_run("steps:\n- name: img\noptions:\n  fast: true\n", &[]).refused(&["options", "`fast`"]);
    dry_run("steps:\n- args: ['x']\n", &[]).refused(&["steps[0]", "`name`"]);
    dry_run("steps:\n- name: img\n  args: [1]\n", &[]).refused(&["steps[0].args", "strings"]);
    dry_run(
        "steps:\n- name: img\n  waitFor: ['later']\n- name: img\n  id: later\n",
        &[],
    )
    .refused(&["steps[0].waitFor", "`later`"]);
    dry_run("steps:\n- name: img\n  id: a\n- name: img\n  id: a\n", &[])
        .refused(&["steps[1].id", "`a`"]);
    dry_run("steps:\n- name: img\ntimeout: 10m\n", &[]).refused(&["timeout", "600s"]);
    dry_run("steps:\n- name: img\n  timeout: soon\n", &[]).refused(&["steps[0].timeout"]);
    dry_run("steps:\n- name: img\n  secretEnv: ['K']\n", &[]).refused(&["secretEnv", "--env"]);
    dry_run("steps:\n- name: img\navailableSecrets: {}\n", &[]).refused(&["availableSecrets"]);
    dry_run("steps:\n- name: img\n  script: echo hi\n", &[]).refused(&["script", "entrypoint"]);
}

#[test]
fn keys_that_change_nothing_locally_are_accepted() {
    let yaml = r#"
steps:
- name: img
  wait_for: ['-']
  allow_failure: true
  allowExitCodes: [1, '2']
timeout: 3600s
queueTtl: 60s
tags: [a]
logsBucket: gs://b
serviceAccount: projects/p/serviceAccounts/x
images: ['gcr.io/p/img']
options:
  machineType: E2_HIGHCPU_8
  logging: CLOUD_LOGGING_ONLY
  diskSizeGb: '100'
  dynamicSubstitutions: true
  requestedVerifyOption: VERIFIED
"#;
    let plan = dry_run(yaml, &[]);
    assert!(
        plan.ok().stdout.contains("`images` were not pushed"),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_missing_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = run(&["--dry-run", dir.path().to_str().unwrap()]);
    plan.refused(&["cloudbuild.yaml", "--config"]);
}
