//! `finish-image-build -backend=gce` end to end through the CLI against the Compute emulator
//! (scripted build VM) and fake-gcs-server: the image is made, the older image of its family is
//! deprecated, and nothing of the build is left in Compute or Cloud Storage, on success and on
//! a failed build.

use std::process::Output;

use cos_customizer_gce_emulator::fake_gcs::{self, FakeGcs};
use cos_customizer_gce_emulator::{Emulator, Handle, Options, Script};

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
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .arg(format!("-compute-endpoint={}", self.emu.compute_base()))
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
        self.run(&args).await
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
    let out = env.finish(&["-deprecate-old-images"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
