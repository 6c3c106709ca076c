//! Power cuts during the partition relocation, under QEMU on the COS-shaped fixture. A
//! repartitioning build (`disable-auto-update` with `-oem-size=50M`: ROOT-A reclaimed,
//! STATE and OEM moved, OEM grown) moves the partitions from the exit ramdisk at its first
//! shutdown. These tests stop the VM hard while it copies (QMP `quit`: the guest's page
//! cache is lost, as in a power cut), keep booting the same disk, and check the guarantee:
//! the next boots complete the relocation and the build, or fail with a message naming the
//! interrupted relocation; no boot ever mounts a STATE with files missing.
//!
//! `finish-image-build` deletes the boot disk when its VM dies, so these drive the disk
//! directly: a copy of the fixture grown to 6 GiB (the backup GPT is then misplaced, as on
//! a disk the preloader grew) with a canary on STATE (40 MiB of noise and 300 small files,
//! written with debugfs), a CIDATA disk made with the crate's own API holding what
//! `finish-image-build` puts there, and scripts/boot-fixture.sh booting it until serial
//! port 3 says how the build ended. Each boot that runs cloud-init also reports on ttyS1
//! whether STATE is mounted and the digest of the canary (a `runcmd` added to the build's
//! user-data); a boot that does not, says on its console whether it mounted STATE.
//!
//! The delay before the cut is random: the seed is printed, `POWERCUT_SEED=N` repeats it.
//!
//! Needs the fixture (`scripts/make-fixture.sh`), the static provisioner
//! (`scripts/build-provisioner.sh`, or `COS_CUSTOMIZER_PROVISIONER`), and qemu-img,
//! debugfs, e2fsck, dumpe2fs, sfdisk and sgdisk on the host.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cos_customizer_common::cmd;
use cos_customizer_common::config::{ProvisionerConfig, RunScriptArgs, Step};
use cos_customizer_common::protocol::{
    cidata_url, BUILD_CONTEXT_TAR, FAILURE_MARKER, SUCCESS_MARKER, USER_CONTEXT,
};
use cos_customizer_common::sizing;
use cos_customizer_core::{archive, cidata, cloud_config};
use sha2::{Digest, Sha256};

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::{ext4_at, fixture, partitions, provisioner, repo, vm_slots, Part};

/// The disk as the build VM sees it: larger than the image, as the preloader makes it.
const DISK_BYTES: u64 = 6 << 30;
const SECTOR: u64 = 512;
const CANARY_BYTES: usize = 40 << 20;
const SMALL_FILES: usize = 300;
/// A build that relocates takes two boots, three after a cut (four when the cut came before
/// the new table); more means it is not converging.
const MAX_BOOTS: usize = 6;
const BOOT_TIMEOUT_S: u64 = 300;
/// What the CLI's `-oem-size` is given.
const OEM_SIZE: &str = "50M";
/// ROOT-A's size once reclaimed, and where the first moved partition starts after it.
const RECLAIMED_ROOT_A_SECTORS: u64 = 8;
const RECLAIM_MARGIN_SECTORS: u64 = 4096;
/// The per-boot report on ttyS1.
const PROBE: &str = "PowercutProbe:";
/// What the exit ramdisk and the recovery print on serial port 3.
const RELOCATING: &str = "Relocating partitions at shutdown";
const FOUND: &str = "Found an interrupted relocation of";
const UNDONE: &str = "the relocation is undone and will run again";
const STAGING: &str = "Copying the blocks that land on free space";
const SWITCHING: &str = "Switching to the new partition table";
const MOVED: &str = "Relocation moved ";
const REBOOT: &str = "Reboot is required to continue provisioning";
/// Where the relocation journal lives on the fixture (the sectors between the GPT and the
/// first partition), and the mark it starts with.
const JOURNAL_AREA: (u64, u64) = (34, 64);
const JOURNAL_MAGIC: &[u8] = b"COSRELOC";
/// Serial port 3 silent this long after cloud-init finished: the provisioner is not running.
const STALL: Duration = Duration::from_secs(90);

/// Runs a tool through the project's runner; a failure names the command and its stderr.
fn run_ok(cmd: &mut Command) -> String {
    cmd::run_stdout(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// splitmix64: reproducible from a printed seed, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// `POWERCUT_SEED`, or a new one; printed either way so a failure can be repeated.
fn seed() -> u64 {
    let seed = match std::env::var("POWERCUT_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("POWERCUT_SEED={s:?} is not a number")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000),
    };
    eprintln!("power cut seed {seed} (POWERCUT_SEED={seed} repeats this run)");
    seed
}

/// Partitions of a raw image by number.
fn parts(img: &Path) -> BTreeMap<u32, Part> {
    partitions(img)
        .into_iter()
        .map(|(n, (p, _))| (n, p))
        .collect()
}

/// The e2fsprogs name of the file system at a partition, read in place.
fn at(img: &Path, p: Part) -> String {
    format!("{}?offset={}", img.display(), p.start * SECTOR)
}

/// The canary: its files in the order the guest's `sha256sum canary smalls/*` lists them.
struct Canary {
    files: Vec<(String, Vec<u8>)>,
}

impl Canary {
    fn new() -> Canary {
        // Fixed contents: only the cut is random.
        let mut rng = Rng(0xca9a_7a5e);
        let mut files = vec![("canary".to_string(), rng.bytes(CANARY_BYTES))];
        for i in 0..SMALL_FILES {
            let len = rng.between(1, 4000) as usize;
            files.push((format!("smalls/f{i:03}"), rng.bytes(len)));
        }
        Canary { files }
    }

    /// What `sha256sum canary smalls/* | sha256sum` prints in /home, from `read(name)`.
    fn digest_of(&self, mut read: impl FnMut(&str) -> Option<Vec<u8>>) -> String {
        let mut listing = String::new();
        for (name, _) in &self.files {
            let Some(data) = read(name) else {
                return format!("{name} is missing");
            };
            listing.push_str(&format!("{:x}  {name}\n", Sha256::digest(&data)));
        }
        format!("{:x}", Sha256::digest(listing.as_bytes()))
    }

    fn digest(&self) -> String {
        self.digest_of(|name| {
            self.files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d.clone())
        })
    }

    /// Writes the files into STATE's /home with debugfs, in place in the image.
    fn write(&self, img: &Path, state: Part, dir: &Path) {
        let mut script = String::from("cd /home\nmkdir smalls\n");
        for (i, (name, data)) in self.files.iter().enumerate() {
            let src = dir.join(format!("c{i}"));
            fs::write(&src, data).unwrap();
            script.push_str(&format!("write {} /home/{name}\n", src.display()));
        }
        let cmds = dir.join("debugfs.cmds");
        fs::write(&cmds, script).unwrap();
        let out = cmd::run(
            Command::new("debugfs")
                .arg("-w")
                .arg("-f")
                .arg(&cmds)
                .arg(at(img, state)),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        // debugfs exits 0 whatever its commands did; its complaints go to stderr.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().all(|l| l.starts_with("debugfs ")),
            "debugfs: {err}"
        );
    }
}

/// The canary's digest as STATE in `img` holds it, read with ext4-view.
fn digest_in_image(canary: &Canary, img: &Path, state: Part) -> String {
    let fs = ext4_at(img, state.start * SECTOR);
    canary.digest_of(|name| fs.read(format!("/home/{name}").as_str()).ok())
}

/// A QMP connection, held for the whole boot so a command goes out at once.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(socket: &Path) -> std::io::Result<Qmp> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting)?;
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Sends a command and waits for its reply (skipping events).
    fn execute(&mut self, command: &str) -> std::io::Result<()> {
        self.send(command)?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.contains("\"return\"") {
                return Ok(());
            }
            if line.contains("\"error\"") {
                return Err(std::io::Error::other(line));
            }
        }
    }

    /// Sends a command without waiting: QEMU may close the socket before it replies to `quit`.
    fn send(&mut self, command: &str) -> std::io::Result<()> {
        writeln!(self.writer, "{{\"execute\":\"{command}\"}}")
    }
}

/// When to cut the power: `delay_ms` (a range, drawn from the seed) after the first ttyS2
/// line containing `after`.
struct Cut {
    name: &'static str,
    after: &'static str,
    delay_ms: (u64, u64),
}

/// One boot of the build disk.
struct Boot {
    /// 1-based.
    n: usize,
    ttys2: String,
    ttys1: String,
    console: String,
    secs: f64,
    /// Where the power was cut, if it was in this boot.
    cut: Option<String>,
}

impl Boot {
    /// Whether systemd mounted STATE, as the console says.
    fn state_mounted(&self) -> bool {
        self.console
            .lines()
            .any(|l| l.contains("] Mounted ") && l.contains("mnt-stateful_partition.mount"))
    }

    fn probe(&self) -> Option<&str> {
        self.ttys1.lines().find_map(|l| {
            l.find(PROBE)
                .map(|i| l[i + PROBE.len()..].trim())
                .filter(|s| !s.is_empty())
        })
    }
}

/// The build disk and its CIDATA disk, booted again and again.
struct Rig {
    work: Work,
    disk: PathBuf,
    qcow2: PathBuf,
    seed_img: PathBuf,
    canary: Canary,
    oem_bytes: u64,
    before: BTreeMap<u32, Part>,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let work = Work(
            tempfile::Builder::new()
                .prefix(&format!("powercut-{name}-"))
                .tempdir()
                .unwrap()
                .keep(),
        );
        let disk = work.0.join("disk.img");
        let qcow2 = work.0.join("disk.qcow2");
        // The VM writes straight into the raw file (a qcow2 whose data file it is), so the
        // raw image is the disk at every moment, with no second copy of it.
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-o"])
                .arg(format!("data_file={},data_file_raw=on", disk.display()))
                .arg(&qcow2)
                .arg(DISK_BYTES.to_string()),
        );
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(fixture())
                .arg(&disk),
        );
        File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(DISK_BYTES)
            .unwrap();
        let before = parts(&disk);
        let canary = Canary::new();
        let files = work.0.join("canary");
        fs::create_dir(&files).unwrap();
        canary.write(&disk, before[&1], &files);
        fs::remove_dir_all(&files).unwrap();
        run_ok(Command::new("e2fsck").arg("-fn").arg(at(&disk, before[&1])));
        assert_eq!(
            digest_in_image(&canary, &disk, before[&1]),
            canary.digest(),
            "the canary reads back before the first boot"
        );

        // The config as `disable-auto-update`, a script and `finish-image-build
        // -oem-size=50M` record it, sized by the CLI's own rule.
        let mut config = ProvisionerConfig {
            build_contexts: BTreeMap::from([(
                USER_CONTEXT.to_string(),
                cidata_url(BUILD_CONTEXT_TAR),
            )]),
            steps: vec![
                Step::DisableAutoUpdate,
                Step::RunScript(RunScriptArgs {
                    build_context: USER_CONTEXT.into(),
                    path: "check.sh".into(),
                    env: String::new(),
                }),
            ],
            ..Default::default()
        };
        config.boot_disk.reclaim_sda3 = true;
        config.boot_disk.oem_size = Some(OEM_SIZE.into());
        sizing::validate_oem(None, &mut config).unwrap();
        let oem_bytes = sizing::parse_size(config.boot_disk.oem_size.as_deref().unwrap()).unwrap();

        // The build's own step checks the canary too, from inside.
        let ctx = work.0.join("ctx");
        fs::create_dir(&ctx).unwrap();
        fs::write(
            ctx.join("check.sh"),
            format!(
                "#!/bin/bash\nset -euo pipefail\ncd /home\ngot=$(sha256sum canary smalls/* | sha256sum | cut -c1-64)\n[ \"$got\" = {want} ] || {{ echo \"the canary's digest is $got, not {want}\"; exit 1; }}\necho the canary is intact\n",
                want = canary.digest()
            ),
        )
        .unwrap();
        let tar = work.0.join("ctx.tar");
        archive::create(&ctx, &tar, work.0.join("none").as_path()).unwrap();

        let seed_img = work.0.join("cidata.img");
        let files = cidata::cidata_files(
            &config,
            &user_data_with_probe(),
            &provisioner(),
            Some(&tar),
            &format!("powercut-{name}"),
        )
        .unwrap();
        cidata::build_cidata(&seed_img, &files).unwrap();
        Rig {
            work,
            disk,
            qcow2,
            seed_img,
            canary,
            oem_bytes,
            before,
        }
    }

    /// What the disk holds now, for a failure message: the relocation journal's mark in
    /// the sectors before the first partition, and STATE's place and superblock.
    fn disk_summary(&self) -> String {
        let file = File::open(&self.disk).unwrap();
        let mut area = vec![0u8; (JOURNAL_AREA.1 - JOURNAL_AREA.0) as usize * SECTOR as usize];
        file.read_exact_at(&mut area, JOURNAL_AREA.0 * SECTOR)
            .unwrap();
        let journal = area
            .windows(JOURNAL_MAGIC.len())
            .position(|w| w == JOURNAL_MAGIC)
            .map_or("no relocation journal".to_string(), |at| {
                format!(
                    "a relocation journal at sector {}",
                    JOURNAL_AREA.0 + at as u64 / SECTOR
                )
            });
        let state = parts(&self.disk)[&1];
        let mut magic = [0u8; 2];
        file.read_exact_at(&mut magic, state.start * SECTOR + 1024 + 56)
            .unwrap();
        format!(
            "{journal}; the table has STATE at sector {} (it was at {}), {} an ext4 superblock there",
            state.start,
            self.before[&1].start,
            if magic == [0x53, 0xef] { "with" } else { "without" }
        )
    }

    /// Boots the disk once; cuts the power as `cut` says (if given), presses the power
    /// button after BuildSucceeded (as the QEMU backend's acknowledgement does) and stops
    /// the VM after BuildFailed.
    fn boot(&self, n: usize, cut: Option<(&Cut, Duration)>) -> Boot {
        let logdir = self.work.0.join(format!("boot{n}"));
        fs::create_dir(&logdir).unwrap();
        let sock = logdir.join("qmp.sock");
        let mut child = Command::new("bash")
            .arg(repo().join("scripts/boot-fixture.sh"))
            .arg(&self.disk)
            .arg(&self.seed_img)
            .arg(BOOT_TIMEOUT_S.to_string())
            .env("BOOT_OVERLAY", &self.qcow2)
            .env("BOOT_LOGDIR", &logdir)
            // A build VM's shape: one vCPU (one VM slot).
            .env("BOOT_SMP", "1")
            .env(
                "BOOT_QEMU_EXTRA",
                format!("-qmp unix:{},server=on,wait=off", sock.display()),
            )
            .stdout(Stdio::null())
            .stderr(File::create(logdir.join("boot-fixture.err")).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut qmp: Option<Qmp> = None;
        let mut seen = 0;
        let mut armed: Option<Instant> = None;
        let mut cut_at: Option<String> = None;
        let (mut pressed, mut stopped) = (false, false);
        let (mut quiet_since, mut s2_len, mut cloud_init_done) = (start, 0, false);
        let mut stalled = false;
        let mut console_checked = start;
        let status: ExitStatus = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if qmp.is_none() && sock.exists() {
                qmp = Qmp::connect(&sock).ok();
            }
            let s2 = fs::read_to_string(logdir.join("ttyS2.log")).unwrap_or_default();
            // Each new line with the time it was seen: the figures for the delay bounds.
            if let Some(end) = s2.rfind('\n').filter(|&e| e + 1 > seen) {
                for l in s2[seen..end].lines() {
                    eprintln!("[boot {n} {:6.1}s] {l}", start.elapsed().as_secs_f64());
                }
                seen = end + 1;
            }
            if let (Some((c, delay)), None, None) = (cut, armed, &cut_at) {
                if s2.contains(c.after) {
                    armed = Some(Instant::now() + delay);
                }
            }
            if let (Some(when), Some(q), None) = (armed, qmp.as_mut(), &cut_at) {
                if Instant::now() >= when {
                    // A VM that stopped first (its reboot) took no cut: the checks say so.
                    let sent = if q.send("quit").is_ok() {
                        ""
                    } else {
                        " (the VM had stopped)"
                    };
                    let (c, delay) = cut.unwrap();
                    let last = s2
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    cut_at = Some(format!(
                        "{} ms after {:?}{sent} ({:.1} s into boot {n}); the last line before it: {last:?}",
                        delay.as_millis(),
                        c.after,
                        start.elapsed().as_secs_f64()
                    ));
                }
            }
            if s2.len() != s2_len {
                (s2_len, quiet_since) = (s2.len(), Instant::now());
            }
            if !cloud_init_done && console_checked.elapsed() >= Duration::from_secs(1) {
                console_checked = Instant::now();
                let console = fs::read(logdir.join("ttyS0.log")).unwrap_or_default();
                cloud_init_done = String::from_utf8_lossy(&console)
                    .lines()
                    .any(|l| l.contains("Reached target") && l.contains("cloud-init.target"));
                if cloud_init_done {
                    quiet_since = quiet_since.max(Instant::now());
                }
            }
            // A shutdown (the relocation copies quietly) has the boot's own timeout.
            let shutting_down = s2.contains("Rebooting...") || s2.contains(RELOCATING);
            if cloud_init_done && !shutting_down && quiet_since.elapsed() >= STALL && !stalled {
                if let Some(q) = qmp.as_mut() {
                    stalled = q.send("quit").is_ok();
                }
            }
            if s2.contains(SUCCESS_MARKER) && !pressed {
                if let Some(q) = qmp.as_mut() {
                    pressed = q.execute("system_powerdown").is_ok();
                }
            }
            if s2.contains(FAILURE_MARKER) && !stopped {
                if let Some(q) = qmp.as_mut() {
                    stopped = q.send("quit").is_ok();
                }
            }
            // The relocation takes seconds: watch it closely while a cut is due.
            let wait = if cut.is_some() && cut_at.is_none() && s2.contains(RELOCATING) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(20)
            };
            std::thread::sleep(wait);
        };
        let read = |f: &str| {
            String::from_utf8_lossy(&fs::read(logdir.join(f)).unwrap_or_default()).into_owned()
        };
        let boot = Boot {
            n,
            ttys2: read("ttyS2.log"),
            ttys1: read("ttyS1.log"),
            console: read("ttyS0.log"),
            secs: start.elapsed().as_secs_f64(),
            cut: cut_at,
        };
        assert!(
            !stalled,
            "boot {n}: nothing on serial port 3 for {} s after cloud-init finished: the provisioner is not running{}.\nSTATE mounted: {}; the disk: {}\nthe console's errors:\n{}\nttyS2:\n{}",
            STALL.as_secs(),
            if n > 1 { " (the build is stuck: it neither completes nor fails)" } else { "" },
            boot.state_mounted(),
            self.disk_summary(),
            boot.console
                .lines()
                .filter(|l| ["FAILED", "Error", "error:", "Read-only"].iter().any(|w| l.contains(w)))
                .collect::<Vec<_>>()
                .join("\n"),
            boot.ttys2
        );
        assert!(
            status.success(),
            "boot {n} ended with {status} (124: the {BOOT_TIMEOUT_S} s timeout); {}\nconsole tail:\n{}\nttyS2:\n{}",
            read("boot-fixture.err"),
            tail(&boot.console, 40),
            boot.ttys2
        );
        boot
    }
}

/// A test's folder: removed when the test passes; when it fails, only its serial logs
/// are kept (the disks take gigabytes, the logs explain the failure).
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for f in [
                "disk.img",
                "disk.qcow2",
                "cidata.img",
                "ctx.tar",
                "ctx",
                "canary",
            ] {
                let p = self.0.join(f);
                let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p));
            }
            eprintln!(
                "the serial logs of each boot are kept in {}",
                self.0.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The build's user-data, plus a command (run at every boot, before the provisioner) that
/// reports on ttyS1 whether STATE is mounted and the canary's digest.
fn user_data_with_probe() -> String {
    let text = cloud_config::user_data();
    let (head, body) = text.split_once('\n').unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(body).unwrap();
    let probe = format!(
        "exec >/dev/ttyS1 2>&1; if mountpoint -q /mnt/stateful_partition; then \
         echo \"{PROBE} STATE mounted; canary $(cd /mnt/stateful_partition/home && sha256sum canary smalls/* | sha256sum | cut -c1-64)\"; \
         else echo \"{PROBE} STATE not mounted\"; fi"
    );
    // First, before the command that starts the provisioner (the fixture's cloud-init runs
    // no bootcmd module).
    doc["runcmd"]
        .as_array_mut()
        .expect("the user-data has a runcmd list")
        .insert(0, serde_json::json!(["sh", "-c", probe]));
    format!("{head}\n{}\n", serde_json::to_string_pretty(&doc).unwrap())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Boots the build until serial port 3 says how it ended, cutting the power once as `cut`
/// says (not at all with `POWERCUT_CONTROL` set: a control run of the same build), and
/// checks the guarantee.
fn power_cut_case(cut: &Cut) {
    let _vm = vm_slots(1);
    let started = Instant::now();
    let seed = seed();
    let control = std::env::var_os("POWERCUT_CONTROL").is_some();
    let rig = Rig::new(cut.name);
    let delay = Duration::from_millis(Rng(seed).between(cut.delay_ms.0, cut.delay_ms.1));
    let mut boots: Vec<Boot> = Vec::new();
    let mut outcome = None;
    while outcome.is_none() {
        let n = boots.len() + 1;
        assert!(
            n <= MAX_BOOTS,
            "no BuildSucceeded or BuildFailed after {MAX_BOOTS} boots; serial port 3 of each:\n{}",
            boots
                .iter()
                .map(|b| format!("--- boot {}\n{}", b.n, b.ttys2))
                .collect::<String>()
        );
        let pending = !control && boots.iter().all(|b| b.cut.is_none());
        let boot = rig.boot(n, pending.then_some((cut, delay)));
        eprintln!(
            "boot {n}: {:.1} s; {}; probe: {}",
            boot.secs,
            boot.cut.as_deref().unwrap_or("no power cut"),
            boot.probe().unwrap_or("(none)")
        );
        if boot.ttys2.contains(SUCCESS_MARKER) {
            outcome = Some(true);
        } else if boot.ttys2.contains(FAILURE_MARKER) {
            outcome = Some(false);
        }
        boots.push(boot);
    }
    let all_s2: String = boots.iter().map(|b| b.ttys2.as_str()).collect();
    let cut_boot = boots.iter().position(|b| b.cut.is_some());
    let recovery = cut_boot.and_then(|i| boots.get(i + 1));
    let lines = |b: Option<&Boot>, pick: &dyn Fn(&str) -> bool| -> String {
        b.map_or(String::new(), |b| {
            b.ttys2
                .lines()
                .filter(|l| pick(l))
                .collect::<Vec<_>>()
                .join(" / ")
        })
    };
    eprintln!(
        "== {}: seed {seed}; {} in {:.0} s, {} boots ({} s)\n   cut: {}\n   recovery: {}\n   {}",
        cut.name,
        if outcome == Some(true) {
            "BuildSucceeded"
        } else {
            "BuildFailed"
        },
        started.elapsed().as_secs_f64(),
        boots.len(),
        boots
            .iter()
            .map(|b| format!("{:.0}", b.secs))
            .collect::<Vec<_>>()
            .join("+"),
        cut_boot.map_or("none", |i| boots[i].cut.as_deref().unwrap_or("")),
        lines(recovery, &|l| l.contains(FOUND)),
        lines(recovery, &|l| l.contains(MOVED)
            || l.contains(UNDONE)
            || l.contains("Error")),
    );

    // No boot mounted STATE with the canary changed or missing. The probe runs from
    // cloud-init, which cannot run without STATE (/var/lib/cloud is under /var): then the
    // console says whether STATE was mounted.
    let want = rig.canary.digest();
    for b in &boots {
        match b.probe() {
            Some(probe) => assert!(
                probe == "STATE not mounted" || probe == format!("STATE mounted; canary {want}"),
                "boot {} mounted STATE without the canary intact: {probe} (want {want})",
                b.n
            ),
            None => assert!(
                !b.state_mounted(),
                "boot {} mounted STATE but printed no {PROBE} line on ttyS1:\n{}",
                b.n,
                tail(&b.console, 40)
            ),
        }
    }

    if outcome == Some(false) {
        // The other outcome the guarantee allows: a failure that names what was cut short.
        let failing: Vec<&str> = all_s2
            .lines()
            .filter(|l| l.contains("Error") || l.contains(FAILURE_MARKER))
            .collect();
        assert!(
            cut_boot.is_some() && failing.iter().any(|l| l.contains("interrupted relocation")),
            "the build failed without naming an interrupted relocation:\n{}",
            failing.join("\n")
        );
        return;
    }
    let last = boots.last().unwrap();
    assert!(
        last.ttys2.contains("the canary is intact"),
        "the build's own check:\n{}",
        last.ttys2
    );

    // The disk as the build left it.
    let img = &rig.disk;
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(img));
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
    let parts = parts(img);
    let (root_a, state, oem) = (parts[&3], parts[&1], parts[&8]);
    assert_eq!(root_a.size, RECLAIMED_ROOT_A_SECTORS, "ROOT-A is reclaimed");
    assert_eq!(
        oem.start,
        root_a.start + RECLAIM_MARGIN_SECTORS,
        "OEM moved right after the reclaimed ROOT-A"
    );
    assert_eq!(oem.size * SECTOR, rig.oem_bytes, "OEM grew to -oem-size");
    assert_eq!(state.start, oem.start + oem.size, "STATE follows OEM");
    // The move keeps STATE's size; the next boot grew it to the end of the disk, as COS does
    // (the backup GPT takes the last 33 sectors).
    assert_eq!(
        state.start + state.size,
        DISK_BYTES / SECTOR - 33,
        "STATE fills the disk"
    );
    for p in [state, oem] {
        run_ok(Command::new("e2fsck").arg("-fn").arg(at(img, p)));
    }
    let dump = run_ok(Command::new("dumpe2fs").arg("-h").arg(at(img, oem)));
    let field = |name: &str| -> u64 {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs -h:\n{dump}"))
    };
    assert_eq!(
        field("Block count:") * field("Block size:"),
        rig.oem_bytes,
        "OEM's file system fills its partition"
    );
    assert_eq!(
        digest_in_image(&rig.canary, img, state),
        want,
        "the canary on STATE after the build"
    );
    if control {
        return;
    }

    // The cut landed in the relocation, and the boot after it said so.
    let cut_boot = cut_boot.unwrap_or_else(|| {
        panic!(
            "the power was never cut: no {:?} on serial port 3:\n{all_s2}",
            cut.after
        )
    });
    assert!(
        boots[cut_boot].ttys2.contains(RELOCATING),
        "the cut was not in the exit ramdisk:\n{}",
        boots[cut_boot].ttys2
    );
    let recovery = recovery.unwrap();
    // A cut after the journal was erased left nothing to recover.
    let finished = boots[cut_boot].ttys2.contains(MOVED);
    assert!(
        (recovery.ttys2.contains(FOUND) && recovery.ttys2.contains(REBOOT)) || finished,
        "boot {} after the cut ({}) did not find the interrupted relocation and reboot:\n{}",
        recovery.n,
        boots[cut_boot].cut.as_deref().unwrap_or(""),
        recovery.ttys2
    );
}

/// While the pieces that land on free space are copied, under the old partition table:
/// the next boot mounts the old STATE whole, drops the relocation and runs it again.
/// About 80 MiB take about 1.5 s under TCG.
#[test]
fn power_cut_while_staging() {
    power_cut_case(&Cut {
        name: "staging",
        after: STAGING,
        delay_ms: (0, 800),
    });
}

/// At the switch: the heads, the new table and the journal's erasure take a few
/// milliseconds, and the cut lands before, among or after them. The next boot finds the old
/// table (and redoes the relocation) or the new one (and completes it, or has nothing left
/// to do).
#[test]
fn power_cut_at_the_switch() {
    power_cut_case(&Cut {
        name: "switch",
        after: SWITCHING,
        delay_ms: (0, 4),
    });
}
