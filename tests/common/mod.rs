//! Shared by the end-to-end tests: the fixture and provisioner they need, one VM at a
//! time, and a user's home to run the built `cos-customizer` in.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture() -> PathBuf {
    let p = repo().join("fixtures/out/cos-fixture.img");
    assert!(
        p.exists(),
        "{} is missing: run scripts/make-fixture.sh (or scripts/test.sh)",
        p.display()
    );
    p
}

pub fn provisioner() -> PathBuf {
    let p = std::env::var_os("COS_CUSTOMIZER_PROVISIONER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/x86_64-unknown-linux-gnu/release/provisioner"));
    // The CLI runs in another folder, so a relative path would not resolve there.
    std::fs::canonicalize(&p).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run scripts/build-provisioner.sh (or scripts/test.sh)",
            p.display()
        )
    })
}

/// TCG VMs are CPU-bound and the machine has 2 cores: one build at a time, except
/// in the test that runs two on purpose.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A user's home with a build context, and a private TMPDIR to prove nothing is left.
pub struct Build {
    pub home: tempfile::TempDir,
    pub tmp: tempfile::TempDir,
}

impl Build {
    pub fn new(scripts: &[(&str, &str)]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let ctx = home.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        for (name, body) in scripts {
            std::fs::write(ctx.join(name), body).unwrap();
        }
        Build {
            home,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_cos-customizer"))
            .args(args)
            .env("HOME", self.home.path())
            .env("TMPDIR", self.tmp.path())
            .env("COS_CUSTOMIZER_PROVISIONER", provisioner())
            .current_dir(self.home.path())
            .output()
            .unwrap();
        eprintln!(
            "$ cos-customizer {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn start(&self, workdir: &str) {
        let fixture = fixture();
        self.ok(&[
            &format!("-local-state-workdir={workdir}"),
            "start-image-build",
            "-build-context=ctx",
            &format!("-image-file={}", fixture.display()),
        ]);
    }

    pub fn output(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// Nothing of the build is left: no temporary file, no QEMU process.
    pub fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(self.tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
        let pgrep = Command::new("pgrep")
            .args(["-f", &self.tmp.path().to_string_lossy()])
            .output()
            .unwrap();
        assert!(
            pgrep.stdout.is_empty(),
            "processes left: {}",
            String::from_utf8_lossy(&pgrep.stdout)
        );
    }
}
