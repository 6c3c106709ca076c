//! End-to-end builds that repartition the boot disk, under QEMU on the COS-shaped fixture:
//! `disable-auto-update` (ROOT-A reclaimed, root switched to ROOT-B, STATE moved back) and
//! `seal-oem -oem-size` (OEM moved behind ROOT-A, grown, and sealed with dm-verity).
//! Each build boots the VM twice (the partitions move at the first boot's shutdown); the
//! output is then booted once more and checked from inside, as the original's integration
//! tests do.
//!
//! Needs the fixture (`scripts/make-fixture.sh`), the static provisioner
//! (`scripts/build-provisioner.sh`), and sfdisk, sgdisk, cgpt, mtools, e2fsprogs and veritysetup
//! on the host to inspect the output image.

use std::path::Path;
use std::process::Command;

// Shared by the VM suites; each uses part of it.
#[allow(dead_code)]
mod common;
use common::{boot_and_check, partitions, read_file, vm_slots, Build, Part};
use cos_customizer_common::cmd;

/// Runs a tool through the project's runner; a failure names the command and its stderr.
fn run_ok(cmd: &mut Command) -> String {
    cmd::run_stdout(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `sgdisk -v`: both GPT headers agree and the backup is at the end of the disk.
fn gpt_valid(img: &Path) {
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(img));
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
}

fn grub_cfg(img: &Path, esp: Part) -> String {
    run_ok(
        Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{}", img.display(), esp.start * 512))
            .arg("::/efi/boot/grub.cfg")
            .env("MTOOLS_SKIP_CHECK", "1"),
    )
}

/// `e2fsck -fn` of the ext4 file system at a partition, read in place.
fn fsck_clean(img: &Path, p: Part) {
    run_ok(Command::new("e2fsck").arg("-fn").arg(format!(
        "{}?offset={}",
        img.display(),
        p.start * 512
    )));
}

/// A boot check that the mounted STATE holds at least 95% of its `mib` (ext4's own
/// metadata takes the rest).
fn state_size_check(mib: u64) -> String {
    format!(
        "size=$(df -B1M --output=size /mnt/stateful_partition | tail -n 1)\n\
         [ \"$size\" -ge {} ] || fail \"STATE is $size MiB, not about {mib}\"\n",
        mib * 95 / 100
    )
}

/// STATE fills the disk, as on COS: the boot after the relocation grew it to the end (the
/// backup GPT takes the last 33 sectors). Returns its size in MiB, which a boot of the image
/// checks with `df`, as upstream's disable_auto_update_test and seal_oem_test check
/// STATE's size.
fn state_fills_the_disk(img: &Path, state: Part) -> u64 {
    let disk_sectors = std::fs::metadata(img).unwrap().len() / 512;
    assert_eq!(
        state.start + state.size,
        disk_sectors - 33,
        "STATE ends at the end of the disk"
    );
    state.size / 2048
}

fn priority(img: &Path, part: u32) -> u32 {
    run_ok(
        Command::new("cgpt")
            .args(["show", "-i", &part.to_string(), "-P"])
            .arg(img),
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn disable_auto_update_reclaims_root_a() {
    let _vm = vm_slots(1);
    let b = Build::new(&[(
        "preload.sh",
        "#!/bin/bash\nset -e\necho hello > /var/lib/hello\necho wrote the file\n",
    )]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "disable-auto-update"]);
    b.ok(&[
        "-local-state-workdir=.w",
        "run-script",
        "-script=preload.sh",
    ]);
    // A disk larger than 10 GB starts at 10 GB and grows only once the provisioner asks,
    // after the partitions have moved (the original's needDiskResize).
    let out = b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-disk-size-gb=11",
        "-timeout=20m",
    ]);
    assert!(out.contains("BuildSucceeded:"), "{out}");
    assert_eq!(
        out.matches("Reboot is required to continue provisioning")
            .count(),
        1,
        "two boots: {out}"
    );
    assert!(
        out.contains(
            "BuildStatus: WaitForDiskResize is set; waiting for the boot disk size to change"
        ) && out.contains("Resizing the boot disk to 11 GB"),
        "{out}"
    );
    let img = b.output("out.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 11 << 30);
    gpt_valid(&img);
    let parts = partitions(&img);
    let (root_a, state, esp) = (parts[&3].0, parts[&1].0, parts[&12].0);
    assert_eq!(root_a.size, 8, "ROOT-A is minimal");
    assert_eq!(
        state.start,
        root_a.start + 4096,
        "STATE starts 2 MiB after ROOT-A"
    );
    fsck_clean(&img, state);
    let state_mib = state_fills_the_disk(&img, state);
    assert_eq!(
        read_file(&img, "STATE", "/var_overlay/lib/hello").unwrap(),
        "hello\n"
    );
    let grub = grub_cfg(&img, esp);
    let verified = grub
        .lines()
        .filter(|l| l.contains("root=/dev/dm-0"))
        .count();
    assert_eq!(
        grub.matches("cros_efi systemd.mask=update-engine.service")
            .count(),
        grub.matches("cros_efi").count(),
        "{grub}"
    );
    assert!(verified >= 2, "{grub}");
    assert!(!grub.contains("usr-share-oem.mount"), "{grub}");
    assert!(
        priority(&img, 4) > priority(&img, 2),
        "KERN-B has the top priority"
    );
    b.assert_nothing_left();
    let checks = r#"[ "$(cat /var/lib/hello)" = hello ] || fail "/var/lib/hello is $(cat /var/lib/hello 2>&1)"
dmsetup deps -o devname vroot | grep -Eq '\((sd|vd)a5\)' || fail "root is not verified ROOT-B: $(dmsetup deps -o devname vroot 2>&1)"
[ "$(systemctl show -p LoadState --value update-engine.service)" = masked ] || fail "update-engine.service is not masked"
"#;
    let verdict = boot_and_check(&img, &(checks.to_string() + &state_size_check(state_mib)));
    assert!(verdict.contains("TestPass:"), "{verdict}");
}

#[test]
fn seal_oem_with_a_larger_oem() {
    let _vm = vm_slots(1);
    let b = Build::new(&[(
        "oem.sh",
        "#!/bin/bash\nset -e\necho sealed > /usr/share/oem/hello\n",
    )]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=oem.sh"]);
    b.ok(&["-local-state-workdir=.w", "seal-oem"]);
    let out = b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-oem-size=50M",
        "-timeout=20m",
    ]);
    assert!(out.contains("BuildSucceeded:"), "{out}");
    let img = b.output("out.img");
    gpt_valid(&img);
    let parts = partitions(&img);
    let (root_a, state, esp) = (parts[&3].0, parts[&1].0, parts[&12].0);
    let (oem, oem_uuid) = parts[&8].clone();
    let state_mib = state_fills_the_disk(&img, state);
    assert_eq!(root_a.size, 8);
    assert_eq!(
        oem.start,
        root_a.start + 4096,
        "OEM moved right after the reclaimed ROOT-A"
    );
    assert_eq!(
        oem.size,
        99 * 2048,
        "OEM holds 50M of file system and its hash tree"
    );
    assert_eq!(state.start, oem.start + oem.size);
    fsck_clean(&img, state);
    fsck_clean(&img, oem);
    assert_eq!(read_file(&img, "OEM", "/hello").unwrap(), "sealed\n");

    let grub = grub_cfg(&img, esp);
    let table = format!("oemroot,,,ro,0 102400 verity 0 PARTUUID={oem_uuid} PARTUUID={oem_uuid} 4096 4096 12800 12800 sha256 ");
    let kernel_lines = |needle: &str| {
        grub.lines()
            .filter(|l| l.trim_start().starts_with("linux") && l.contains(needle))
            .count()
    };
    assert_eq!(
        kernel_lines(&table),
        kernel_lines("dm-mod.create="),
        "{grub}"
    );
    let line = grub
        .lines()
        .find(|l| l.contains(&table))
        .unwrap_or_else(|| panic!("no oemroot table in grub.cfg:\n{grub}"));
    assert!(
        line.contains(
            "cros_efi systemd.mask=usr-share-oem.mount systemd.mask=update-engine.service"
        ),
        "{line}"
    );
    assert!(
        line.contains(";oemroot,,,ro,"),
        "devices are joined by ';': {line}"
    );
    assert!(line.trim_end().ends_with('"'), "{line}");
    let rest = &line[line.find(&table).unwrap() + table.len()..];
    let mut words = rest.trim_end_matches('"').split(' ');
    let (hash, salt) = (words.next().unwrap(), words.next().unwrap());

    // The hash tree verifies against the root hash on the command line.
    let part = b.output("oem.part");
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", part.display()))
            .args([
                "bs=512",
                &format!("skip={}", oem.start),
                &format!("count={}", oem.size),
                "status=none",
            ]),
    );
    run_ok(
        Command::new("veritysetup")
            .args([
                "verify",
                "--data-block-size=4096",
                "--hash-block-size=4096",
                "--data-blocks=12800",
            ])
            .arg(format!("--hash-offset={}", 12800 * 4096))
            .args(["--no-superblock", "--format=0", &format!("--salt={salt}")])
            .arg(&part)
            .arg(&part)
            .arg(hash),
    );
    b.assert_nothing_left();

    // As upstream's seal_oem_test: OEM is /dev/dm-1, verified, not mounted by itself.
    let checks = r#"[ "$(systemctl show -p LoadState --value usr-share-oem.mount)" = masked ] || fail "usr-share-oem.mount is not masked"
! mountpoint -q /usr/share/oem || fail "/usr/share/oem is mounted: $(findmnt -no SOURCE /usr/share/oem)"
[ -b /dev/dm-1 ] || fail "no /dev/dm-1"
dmsetup status oemroot | grep -qw V || fail "oemroot is not verified: $(dmsetup status oemroot 2>&1)"
mount -o ro /dev/dm-1 /usr/share/oem || fail "cannot mount /dev/dm-1"
[ "$(cat /usr/share/oem/hello)" = sealed ] || fail "/usr/share/oem/hello is $(cat /usr/share/oem/hello 2>&1)"
"#;
    let verdict = boot_and_check(&img, &(checks.to_string() + &state_size_check(state_mib)));
    assert!(verdict.contains("TestPass:"), "{verdict}");
}

/// An -oem-size no larger than the image's OEM (16 MiB on the fixture; 16M asks for
/// 15M) leaves OEM where it is. The original then reboots forever, waiting for a move it
/// never makes; here the build completes with OEM unmoved and ROOT-A reclaimed.
#[test]
fn oem_size_that_leaves_oem_in_place_completes() {
    let _vm = vm_slots(1);
    let b = Build::new(&[("noop.sh", "#!/bin/bash\necho nothing to do\n")]);
    b.start(".w");
    b.ok(&["-local-state-workdir=.w", "disable-auto-update"]);
    b.ok(&["-local-state-workdir=.w", "run-script", "-script=noop.sh"]);
    let before = partitions(&common::fixture());
    let out = b.ok(&[
        "-local-state-workdir=.w",
        "finish-image-build",
        "-output-file=out.img",
        "-oem-size=16M",
        "-timeout=20m",
    ]);
    assert!(out.contains("BuildSucceeded:"), "{out}");
    assert!(
        out.contains("is not larger than the OEM partition"),
        "the provisioner says why OEM stays: {out}"
    );
    let img = b.output("out.img");
    let after = partitions(&img);
    assert_eq!(after[&8].0.start, before[&8].0.start, "OEM did not move");
    assert_eq!(after[&8].0.size, before[&8].0.size);
    assert_eq!(after[&3].0.size, 8, "ROOT-A was reclaimed");
    assert_eq!(
        after[&1].0.start,
        after[&3].0.start + 4096,
        "STATE moved back"
    );
    gpt_valid(&img);
    b.assert_nothing_left();
}
