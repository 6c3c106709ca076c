//! End-to-end builds that need what a real COS guest and a real preload script need
//! from the local build VM: outbound network (unless the build is hermetic), a
//! GCE-shaped machine whose cloud-init reads user-data from the metadata server, and
//! disks attached as GCE attaches them.
//!
//! Needs the fixture (`scripts/make-fixture.sh`) and the static provisioner
//! (`scripts/build-provisioner.sh`); `scripts/test.sh` makes both.

use cos_customizer_testkit::testserver::{BlockingTestServer, Reply, TestServer};

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::{boot_and_check, read_file, vm_slots, Build};

/// The guest's address for the host's loopback in the QEMU backend's user network.
const HOST_FROM_GUEST: &str = "169.254.169.2";

/// A build whose one script downloads a file from a server on the host's loopback, and
/// that server, which must outlive the build.
fn fetching_build() -> (Build, BlockingTestServer) {
    let server = BlockingTestServer::start(TestServer::answering_all(|| {
        Reply::Text(200, "payload from the host\n".into())
    }));
    let port = server
        .host()
        .rsplit_once(':')
        .expect("host:port")
        .1
        .to_string();
    let script = format!(
        "#!/bin/bash\nset -e\necho \"disks: $(ls /sys/block | grep -E '^(sd|vd)' | tr '\\n' ' ')\"\ncurl -fsS --max-time 20 -o /var/lib/fetched http://{HOST_FROM_GUEST}:{port}/payload\necho fetched\n"
    );
    let b = Build::new(&[("fetch.sh", &script)]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=fetch.sh"]);
    (b, server)
}

#[test]
fn a_script_downloads_from_the_network() {
    let _vm = vm_slots(1);
    let (b, _server) = fetching_build();
    let out = b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=10m",
    ]);
    assert!(out.contains("BuildStatus: fetched"), "{out}");
    // virtio-scsi by default, as GCE: boot, CIDATA.
    assert!(out.contains("BuildStatus: disks: sda sdb "), "{out}");
    let img = b.output("out.img");
    assert_eq!(
        read_file(&img, "STATE", "/var_overlay/lib/fetched").as_deref(),
        Some("payload from the host\n")
    );
    b.assert_nothing_left();
    // The output boots on a GCE-shaped machine: SMBIOS says GCE, cloud-init took the
    // user-data from the metadata server (boot_and_check gives it no other way), and
    // the disk is a Google PersistentDisk on virtio-scsi.
    let verdict = boot_and_check(
        &img,
        r#"[ "$(cat /var/lib/fetched)" = "payload from the host" ] || fail "/var/lib/fetched is $(cat /var/lib/fetched 2>&1)"
[ "$(cat /sys/class/dmi/id/product_name)" = "Google Compute Engine" ] || fail "product name $(cat /sys/class/dmi/id/product_name)"
[ "$(cloud-init query v1.platform)" = gce ] || fail "cloud-init platform $(cloud-init query v1.platform 2>&1)"
[ "$(cat /sys/block/sda/device/vendor | tr -d ' ')" = Google ] || fail "sda vendor $(cat /sys/block/sda/device/vendor 2>&1)"
[ "$(cat /sys/block/sda/device/model | tr -d ' ')" = PersistentDisk ] || fail "sda model $(cat /sys/block/sda/device/model 2>&1)"
findmnt -no SOURCE /mnt/stateful_partition | grep -q '^/dev/sda1$' || fail "STATE is $(findmnt -no SOURCE /mnt/stateful_partition)"
"#,
    );
    assert!(verdict.contains("TestPass:"), "{verdict}");
}

/// Also the one build on virtio-blk (`-disk-interface=virtio`).
#[test]
fn a_hermetic_build_has_no_network() {
    let _vm = vm_slots(1);
    let (b, _server) = fetching_build();
    let out = b.cli(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-timeout=10m",
        "-hermetic=true",
        "-disk-interface=virtio",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("BuildStatus: curl: "),
        "the script's own error: {text}"
    );
    assert!(text.contains("BuildFailed:"), "{text}");
    // virtio-blk when asked: the provisioner found its disks there too.
    assert!(text.contains("BuildStatus: disks: vda vdb "), "{text}");
    assert!(!b.output("out.img").exists());
    b.assert_nothing_left();
}
