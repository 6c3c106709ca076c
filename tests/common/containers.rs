//! The builder image that `scripts/test.sh` builds, and running the tools the container
//! tests use. Where podman needs settings of its own (tests/containers.conf says why),
//! `scripts/test.sh` names them in `CONTAINERS_CONF`, which every podman and buildah reads.

use std::process::{Command, Output};

/// Names the builder image under test; `scripts/test.sh` builds it and sets this.
pub const IMAGE_ENV: &str = "COS_CUSTOMIZER_BUILDER_IMAGE";

/// The builder image's tag in containers-storage.
pub fn builder_image() -> String {
    std::env::var(IMAGE_ENV).unwrap_or_else(|_| {
        panic!(
            "{IMAGE_ENV} is not set: build the image with \
             `scripts/build-builder-image.sh localhost/cos-customizer:dev` and set \
             {IMAGE_ENV}=localhost/cos-customizer:dev (scripts/test.sh does both)"
        )
    })
}

/// Runs `cmd`, panicking with its command line and output when it fails; its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion, panicking only when it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// The build id in `scripts/cloudbuild-local`'s `starting build "<id>"` line.
pub fn build_id(log: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix("starting build \""))
        .unwrap_or_else(|| panic!("no `starting build` line in:\n{log}"))
        .trim_end_matches('"')
        .to_string()
}

/// The containers, running or not, whose name starts with `prefix`.
pub fn containers_named(prefix: &str) -> Vec<String> {
    ok(Command::new("podman").args([
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name=^{prefix}"),
    ]))
    .lines()
    .map(String::from)
    .collect()
}
