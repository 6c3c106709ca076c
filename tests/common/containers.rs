//! The builder image that `scripts/test.sh` builds, and podman and buildah as the tests run
//! them.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::repo;

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

/// The containers.conf for this machine's quirks (the file says which); podman and
/// buildah read it through `CONTAINERS_CONF`.
pub fn containers_conf() -> PathBuf {
    repo().join("tests/containers.conf")
}

/// `tool` (podman, buildah, or the runner that calls them) with the tests' containers.conf.
pub fn tool(tool: impl Into<PathBuf>) -> Command {
    let mut cmd = Command::new(tool.into());
    cmd.env("CONTAINERS_CONF", containers_conf());
    cmd
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

/// The containers whose name starts with `prefix`, running or not.
pub fn containers_named(prefix: &str) -> Vec<String> {
    ok(tool("podman").args([
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
