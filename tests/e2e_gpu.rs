//! End-to-end: `install-gpu` and `anthos-installer-install` in a local build, with stand-ins
//! for the vendors' programs only. The GPU installer is a busybox image built here and
//! pushed to a real registry on the host's loopback, which checks that it got the original's
//! mounts, privileges and variables and installs stand-in `nvidia-smi` and
//! `nvidia-persistenced`; the anthos_installer release is a shell script in a tar.gz in
//! fake-gcs-server, run on a package spec from the build context and one from a `gs://` URL.
//! One passing build does both steps and its output is booted once to check both; a second
//! build whose installer fails stops at its first step.
//!
//! Needs what `tests/e2e_containers.rs` needs, and fake-gcs-server; `scripts/test.sh`
//! makes and installs them all.

use std::io::Write;
use std::process::Output;

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::registry::{Image, Registry, HOST_FROM_GUEST};
use common::{boot_and_check, vm_slots, Build};
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};

const DRIVER: &str = "535.129.03";
const RELEASE_BUCKET: &str = "cos-anthos-builds-us";
const RELEASE: &str = "anthos_installer-linux-amd64-v0.0.1-bb7e04e.tar.gz";

/// The stand-in cos-gpu-installer (v2's shape: entrypoint, `install` by default). It
/// fails unless it runs as setup_gpu.sh runs it; then it installs the stand-ins.
const INSTALLER: &str = r#"#!/bin/sh
fail() { echo "fake-installer: $*"; exit 1; }
val() { eval "printf %s \"\${$1}\""; }
[ "$*" = "install -no-verify" ] || fail "arguments '$*', expected 'install -no-verify'"
for kv in NVIDIA_DRIVER_VERSION=@DRIVER@ NVIDIA_DRIVER_MD5SUM=0123abcd \
    NVIDIA_INSTALL_DIR_HOST=/var/lib/nvidia COS_NVIDIA_INSTALLER_CONTAINER=@IMAGE@ \
    NVIDIA_INSTALL_DIR_CONTAINER=/usr/local/nvidia ROOT_MOUNT_DIR=/root \
    TOOLCHAIN_PKG_DIR=/toolchain COS_DOWNLOAD_GCS= GPU_INSTALLER_DOWNLOAD_URL=; do
  name=${kv%%=*}
  env | grep -qx "$kv" || fail "$name is '$(val "$name")', expected '${kv#*=}'"
done
grep -q ' /sys sysfs rw' /proc/mounts || fail "/sys is read-only: not --privileged"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm): not --pid=host"
[ "$(readlink /proc/1/ns/net)" = "$(readlink /proc/self/ns/net)" ] || fail "not --net=host"
grep -q ' /usr/local/nvidia ' /proc/mounts || fail "the install dir is not at /usr/local/nvidia"
grep -q ' /toolchain ' /proc/mounts || fail "nothing at /toolchain"
[ -d /root/mnt/disks/scratch/gpu ] || fail "the VM's / is not at /root with the SCRATCH disk"
grep -q ' /root/mnt/disks/scratch ' /proc/mounts || fail "SCRATCH is not mounted"
[ -b /dev/sda ] || fail "the VM's /dev is not at /dev"
mkdir -p /usr/local/nvidia/bin
for b in nvidia-smi nvidia-persistenced; do
  printf '#!/bin/sh\necho "%s stand-in, driver %s"\n' "$b" "$NVIDIA_DRIVER_VERSION" > /usr/local/nvidia/bin/$b
  chmod 755 /usr/local/nvidia/bin/$b
done
echo "fake-installer: preloaded driver $NVIDIA_DRIVER_VERSION"
"#;

/// A stand-in installer that fails as a driver build does, leaving its log.
const BROKEN_INSTALLER: &str = r#"#!/bin/sh
echo "ERROR: stand-in kernel module build failed" > /usr/local/nvidia/nvidia-installer.log
echo "fake-installer: failing"
exit 1
"#;

/// The stand-in anthos_installer: installs each `package: NAME` of the spec as a file
/// under /var/lib/anthos-packages, reading a gs:// spec from the build's storage.
const ANTHOS_INSTALLER: &str = r#"#!/bin/bash
set -euo pipefail
[[ $1 == install ]] || { echo "anthos_installer: command $1"; exit 2; }
spec=${2#-pkgspec-url=} ctx=${3#-build-contextdir=} top=${4#-top-workdir=}
[[ -f $ctx/trust.sh ]] || { echo "anthos_installer: $ctx is not the build context"; exit 1; }
mkdir -p "$top"
case $spec in
  gs://*)
    path=${spec#gs://}
    curl -fsS -o "$top/spec" "$STORAGE_EMULATOR_HOST/storage/v1/b/${path%%/*}/o/${path#*/}?alt=media"
    ;;
  *) cat "$spec"/*.yaml > "$top/spec" ;;
esac
mkdir -p /var/lib/anthos-packages
while read -r key name; do
  [[ $key == package: ]] && echo "from $spec" > "/var/lib/anthos-packages/$name"
done < "$top/spec"
echo "anthos_installer: installed from $spec"
"#;

/// The registry with both installers, fake-gcs-server with NVIDIA's driver bucket, the
/// anthos_installer release and a package spec, and a build context that trusts the
/// registry and holds another spec.
struct Env {
    registry: Registry,
    gcs: FakeGcs,
    build: Build,
    _rt: tokio::runtime::Runtime,
}

impl Env {
    fn start() -> Option<Env> {
        if !fake_gcs::require() {
            return None;
        }
        let registry = Registry::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let gcs = rt.block_on(FakeGcs::start(RELEASE_BUCKET)).unwrap();
        gcs.put(
            "nvidia-drivers-us-public",
            &format!("tesla/{DRIVER}/NVIDIA-Linux-x86_64-{DRIVER}.run"),
            b"x",
        );
        gcs.put(RELEASE_BUCKET, RELEASE, &release_archive());
        gcs.put("specs", "gs.yaml", b"package: hello-gs\n");
        let trust = format!(
            "#!/bin/bash\nset -euo pipefail\ncerts=/etc/docker/certs.d/{HOST_FROM_GUEST}:{port}\nmkdir -p \"$certs\"\ncp registry-ca.crt \"$certs/ca.crt\"\n",
            port = registry.port
        );
        let build = Build::new(&[
            ("trust.sh", &trust),
            ("registry-ca.crt", &registry.ca_pem()),
        ]);
        let specs = build.home.path().join("ctx/specs");
        std::fs::create_dir(&specs).unwrap();
        std::fs::write(specs.join("ctx.yaml"), "package: hello-ctx\n").unwrap();
        Some(Env {
            registry,
            gcs,
            build,
            _rt: rt,
        })
    }

    /// The CLI with the build's storage endpoint.
    fn cli(&self, args: &[&str]) -> Output {
        let storage = format!("-storage-endpoint={}", self.gcs.endpoint());
        let mut all = vec![storage.as_str()];
        all.extend_from_slice(args);
        self.build.cli(&all)
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?} failed");
    }

    /// start-image-build, the trust script, then install-gpu -no-verify of `installer`.
    fn record_gpu(&self, installer: &str) {
        self.build.start(".cos-customizer-workdir");
        self.ok(&["run-script", "-script=trust.sh"]);
        self.ok(&[
            "install-gpu",
            &format!("-version={DRIVER}"),
            "-md5sum=0123abcd",
            &format!("-installer-container={installer}"),
            "-no-verify",
        ]);
    }

    fn finish(&self) -> Output {
        let _vm = vm_slots(1);
        let started = std::time::Instant::now();
        let out = self.cli(&["finish-image-build", "-output-file=out.img", "-timeout=20m"]);
        eprintln!(
            "finish-image-build took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        out
    }
}

/// The release archive: `anthos_installer` at its top, as the original's script expects.
fn release_archive() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(ANTHOS_INSTALLER.len() as u64);
    tar.append_data(&mut h, "anthos_installer", ANTHOS_INSTALLER.as_bytes())
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// An installer image of `files` (the entrypoint script), started as cos-gpu-installer v2.
fn installer_image<'a>(files: &'a [(&'a str, &'a str)]) -> Image<'a> {
    Image {
        files,
        entrypoint: &["/cos-gpu-installer"],
        cmd: &["install"],
    }
}

#[test]
fn gpu_drivers_and_anthos_packages_are_in_the_booted_output() {
    let Some(env) = Env::start() else {
        return;
    };
    let name = format!(
        "{HOST_FROM_GUEST}:{}/test/gpu-installer:1",
        env.registry.port
    );
    let script = INSTALLER
        .replace("@DRIVER@", DRIVER)
        .replace("@IMAGE@", &name);
    let files = [("cos-gpu-installer", script.as_str())];
    let image = env.registry.push("gpu-installer", &installer_image(&files));
    assert_eq!(image, name);
    env.record_gpu(&image);
    env.ok(&[
        "anthos-installer-install",
        "-pkgspec-url=specs",
        "-top-workdir=/var/lib/anthos-work",
    ]);
    env.ok(&[
        "anthos-installer-install",
        "-pkgspec-url=gs://specs/gs.yaml",
        "-top-workdir=/var/lib/anthos-work",
    ]);
    let out = env.finish();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}\nregistry log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.registry.log()
    );
    for line in [
        "Running step 1 (InstallGPU)",
        "Successfully pulled cos-gpu-installer container image.",
        &format!("fake-installer: preloaded driver {DRIVER}"),
        "Preloaded without a GPU",
        "Done installing GPU drivers",
        "anthos_installer: installed from gs://specs/gs.yaml",
        "Done Installing the Packages from specs",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains("BuildStatus:") && l.contains(line)),
            "no {line:?} in the build log: {text}"
        );
    }
    env.build.assert_nothing_left();
    let img = env.build.output("out.img");
    let checks = format!(
        r#"for b in nvidia-smi nvidia-persistenced; do
  # /var is noexec, as on COS (setup_gpu.sh mounts the folder exec), so no -x here.
  [ "$(stat -c %a /var/lib/nvidia/bin/$b 2>&1)" = 755 ] || fail "no /var/lib/nvidia/bin/$b: $(ls -la /var/lib/nvidia /var/lib/nvidia/bin 2>&1)"
done
grep -q 'NVIDIA_DRIVER_VERSION={DRIVER}' /var/lib/nvidia/setup_gpu.sh || fail "setup_gpu.sh: $(head -n 20 /var/lib/nvidia/setup_gpu.sh 2>&1)"
[ "$(cat /var/lib/anthos-packages/hello-ctx 2>&1)" = "from /var/lib/.cos-customizer/user/specs" ] || fail "hello-ctx: $(ls -la /var/lib/anthos-packages 2>&1)"
[ "$(cat /var/lib/anthos-packages/hello-gs 2>&1)" = "from gs://specs/gs.yaml" ] || fail "hello-gs: $(cat /var/lib/anthos-packages/hello-gs 2>&1)"
[ ! -e /var/lib/.cos-customizer ] || fail "the provisioner's state folder is left"
"#
    );
    // The check boots a VM too: one slot, as the build had.
    let verdict = {
        let _vm = vm_slots(1);
        boot_and_check(&img, &checks)
    };
    assert!(verdict.contains("TestPass:"), "{verdict}");
}

#[test]
fn a_failing_gpu_installer_fails_the_build_with_its_log() {
    let Some(env) = Env::start() else {
        return;
    };
    let files = [("cos-gpu-installer", BROKEN_INSTALLER)];
    let image = env
        .registry
        .push("gpu-installer-broken", &installer_image(&files));
    env.record_gpu(&image);
    let out = env.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("installing the GPU drivers with")
            && stderr.contains("ERROR: stand-in kernel module build failed"),
        "the installer's log is not in the error: {stderr}"
    );
    assert!(!env.build.output("out.img").exists(), "no output");
    env.build.assert_nothing_left();
}
