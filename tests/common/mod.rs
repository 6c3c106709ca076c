//! Shared by the end-to-end tests: the fixture and provisioner they need, one VM at a
//! time, and a user's home to run the built `cos-customizer` in.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cos_customizer_common::config::SourceImage;
use cos_customizer_core::backend::{Backend, DiskSource, DiskSpec, VmSpec, VmStatus};
use cos_customizer_qemu::{QemuBackend, QemuOptions};

pub mod containers;
pub mod registry;

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

/// TCG VMs are CPU-bound with one busy vCPU thread each, so tests run as many VMs at
/// once as there are cores (two on CI) and no more; a slow boot under heavier
/// contention would only make the suite slower, never faster. The slots are lock files
/// shared by every test process on the machine, so the VM suites can run side by side
/// (`scripts/test.sh` runs them so) without running more VMs than cores between them.
pub struct VmSlots {
    _held: Vec<File>,
}

/// Where the slot locks live: `COS_CUSTOMIZER_VM_SLOTS` or a folder in the system's
/// temporary folder, the same for every test process.
fn slot_dir() -> PathBuf {
    std::env::var_os("COS_CUSTOMIZER_VM_SLOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cos-customizer-vm-slots"))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn open_lock(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the VM slot lock {}: {e}", path.display()))
}

/// Takes `n` VM slots (fewer if the machine has fewer cores), waiting for them.
pub fn vm_slots(n: usize) -> VmSlots {
    let n = n.min(cores());
    let dir = slot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // Takers wait their turn at this lock, so one wanting two slots is not starved by a
    // stream of ones wanting one; a holder never needs it to give its slots back.
    let queue = open_lock(&dir.join("queue"));
    queue.lock().expect("lock the VM slot queue");
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        for i in 0..cores() {
            if held.len() == n {
                break;
            }
            let slot = open_lock(&dir.join(format!("slot-{i}")));
            match slot.try_lock() {
                Ok(()) => held.push(slot),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => panic!("lock VM slot {i}: {e}"),
            }
        }
        if held.len() < n {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    VmSlots { _held: held }
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

/// Boots `image` with a test cloud-config running `checks` (bash), given only as the
/// `user-data` of the metadata server, and returns what serial port 2 (ttyS1) received: a
/// `TestPass:` or `TestFail:` line.
pub fn boot_and_check(image: &Path, checks: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let test_sh = format!(
        "#!/bin/bash\nexec > /dev/ttyS1 2>&1\nfail() {{ echo \"TestFail: $*\"; systemctl poweroff; exit 1; }}\n{checks}\necho 'TestPass: all checks passed'\nsystemctl poweroff\n"
    );
    let user_data = serde_json::json!({
        "write_files": [{"path": "/tmp/test.sh", "content": test_sh, "permissions": "0755"}],
        "runcmd": [["bash", "/tmp/test.sh"]],
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let qemu = Arc::new(
            QemuBackend::new(QemuOptions {
                parent_dir: work.path().to_path_buf(),
                metadata_proxy: vec![
                    env!("CARGO_BIN_EXE_cos-customizer").into(),
                    "__metadata-proxy".into(),
                ],
                ..Default::default()
            })
            .unwrap(),
        );
        let boot = qemu
            .create_disk(&DiskSpec {
                name: "test-boot".into(),
                source: DiskSource::Image(SourceImage {
                    local_file: image.to_string_lossy().into_owned(),
                    ..Default::default()
                }),
                size_gb: None,
                disk_type: String::new(),
            })
            .await
            .unwrap();
        let vm = qemu
            .create_vm(&VmSpec {
                name: "test-vm".into(),
                disks: vec![boot.clone()],
                // Only through the metadata server, as on GCE: the checks run only if the
                // image's cloud-init finds the GCE datasource there.
                metadata: BTreeMap::from([(
                    "user-data".to_string(),
                    format!("#cloud-config\n{user_data}"),
                )]),
                labels: BTreeMap::new(),
                // One vCPU, as a build VM: one VM slot is one core.
                machine_type: "n1-standard-1".into(),
                service_account: String::new(),
                gpu_type: None,
                network: None,
                subnet: None,
                max_lifetime: Duration::from_secs(400),
            })
            .await
            .unwrap();
        let start = Instant::now();
        let mut text = String::new();
        let mut offset = 0;
        loop {
            let chunk = qemu.serial_output(&vm, 2, offset).await.unwrap();
            offset = chunk.next;
            text.push_str(&chunk.contents);
            if text.contains("TestPass:") || text.contains("TestFail:") {
                break;
            }
            let status = qemu.vm_status(&vm).await.unwrap();
            assert!(
                status == VmStatus::Running && start.elapsed() < Duration::from_secs(300),
                "test VM ended without a verdict ({status:?}); console:\n{}",
                qemu.serial_output(&vm, 1, 0).await.unwrap().contents
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        qemu.delete_vm(&vm).await.unwrap();
        qemu.delete_disk(&boot).await.unwrap();
        text
    })
}

/// Reads a file from the ext4 file system on the GPT partition named `label` of a raw
/// image; `None` if the file is absent.
pub fn read_file(image: &Path, label: &str, path: &str) -> Option<String> {
    let disk = gpt::GptConfig::new().writable(false).open(image).unwrap();
    let lb = *disk.logical_block_size();
    let part = disk
        .partitions()
        .values()
        .find(|p| p.name == label)
        .unwrap_or_else(|| panic!("no partition {label} in {}", image.display()));
    let start = part.bytes_start(lb).unwrap();
    let fs = ext4_at(image, start);
    fs.read_to_string(path).ok()
}

/// A partition's first sector and size in sectors.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// First sector.
    pub start: u64,
    /// Size in sectors.
    pub size: u64,
}

/// Partitions of a raw image by number, with their unique GUIDs (lower case), from
/// `sfdisk -J`.
pub fn partitions(img: &Path) -> BTreeMap<u32, (Part, String)> {
    let out = cos_customizer_common::cmd::run_stdout(Command::new("sfdisk").arg("-J").arg(img))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let node_prefix = img.to_string_lossy().into_owned();
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n = node.strip_prefix(&node_prefix).unwrap().parse().unwrap();
            let part = Part {
                start: p["start"].as_u64().unwrap(),
                size: p["size"].as_u64().unwrap(),
            };
            (
                n,
                (part, p["uuid"].as_str().unwrap_or("").to_ascii_lowercase()),
            )
        })
        .collect()
}

/// The ext4 file system that starts at byte `start` of a raw image, read in place.
pub fn ext4_at(image: &Path, start: u64) -> ext4_view::Ext4 {
    struct At(std::fs::File, u64);
    impl ext4_view::Ext4Read for At {
        fn read(
            &mut self,
            start_byte: u64,
            dst: &mut [u8],
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
            use std::os::unix::fs::FileExt;
            Ok(self.0.read_exact_at(dst, self.1 + start_byte)?)
        }
    }
    ext4_view::Ext4::load(Box::new(At(std::fs::File::open(image).unwrap(), start))).unwrap_or_else(
        |e| {
            panic!(
                "no ext4 file system at byte {start} of {}: {e}",
                image.display()
            )
        },
    )
}
