//! The cloud-config passes cloud-init's own schema check, with the cloud-init of the
//! COS-shaped fixture (so it needs `scripts/make-fixture.sh` first: a fixture suite, run
//! by `scripts/test.sh`, not by a plain `cargo test`).

use std::path::PathBuf;
use std::process::Command;

use cos_customizer_common::cmd;
use cos_customizer_core::cloud_config::user_data;

/// cloud-init 22.4's own schema check, from the fixture's rootfs.
#[test]
fn cloud_init_schema_accepts_user_data() {
    let rootfs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/out/rootfs");
    let dist = rootfs.join("usr/lib/python3/dist-packages");
    assert!(
        dist.join("cloudinit").is_dir(),
        "{} has no cloud-init; build the fixture first with scripts/make-fixture.sh",
        rootfs.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data");
    std::fs::write(&file, user_data()).unwrap();
    // The host's Debian python matches the ABI of the rootfs's compiled modules.
    let out = cmd::run_stdout(
        Command::new("/usr/bin/python3")
            .args(["-m", "cloudinit.cmd.main", "schema", "--config-file"])
            .arg(&file)
            .env("PYTHONPATH", &dist),
    )
    .unwrap();
    assert!(out.contains("Valid cloud-config"), "{out}");
}
