//! What the QEMU backend needs of this machine, checked before anything is created, so
//! that a missing package or an unusable folder is one line that leads with the reason
//! and ends with the fix, not a failure halfway through a build.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::{bail, Result};
use cos_customizer_core::async_cmd::{find_program_in, SETPRIV};
use cos_customizer_core::preload::VM_NAME;

use crate::accel::{host_has_kvm, Accel};
use crate::{qmp_socket_name, QemuOptions, MAX_SOCKET_PATH, WORK_DIR_PREFIX};

/// Checks that this machine can run VMs with `opts`: QEMU, `qemu-img` and `setpriv`
/// found (on `PATH` unless given as paths), the UEFI firmware files present, and a work
/// folder parent that exists, is writable, and gives paths QEMU can take. Every problem
/// found is reported, each with its fix.
pub fn check_host(opts: &QemuOptions) -> Result<()> {
    check_host_in(opts, std::env::var_os("PATH").as_deref())
}

/// [`check_host`] with `path_var` as `PATH`.
fn check_host_in(opts: &QemuOptions, path_var: Option<&OsStr>) -> Result<()> {
    let mut problems = Vec::new();
    for (program, package) in [
        (opts.qemu_system.as_str(), "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        // Ties every child's life to this process (`async_cmd::dies_with_us`).
        (SETPRIV, "util-linux"),
    ] {
        if find_program_in(program.as_ref(), path_var).is_some() {
            continue;
        }
        problems.push(if program.contains('/') {
            format!("{program} is not an executable file: install the {package} package or give the right path")
        } else {
            format!("{program} not found on PATH: install the {package} package")
        });
    }
    for (what, file) in [("code", &opts.ovmf_code), ("variables", &opts.ovmf_vars)] {
        if !file.is_file() {
            problems.push(format!(
                "UEFI firmware {what} {} is missing: install the ovmf package",
                file.display()
            ));
        }
    }
    if let Err(p) = check_parent(&opts.parent_dir) {
        problems.push(p);
    }
    // Asked for outright, KVM on a host without it starts a guest that stops at its first
    // instruction ("emulation failure"): say so before the build.
    if opts.accel == Accel::Kvm && !host_has_kvm() {
        problems.push(
            "-accel=kvm, but this host cannot run guests under KVM (it needs a vmx or svm CPU \
             flag, the kvm_intel or kvm_amd module, and a read-write /dev/kvm): use \
             -accel=auto or -accel=tcg"
                .to_string(),
        );
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// The work folder parent exists, is writable, and keeps QEMU's option syntax and the
/// QMP socket path of the build VM valid.
fn check_parent(parent: &Path) -> std::result::Result<(), String> {
    let fix = if parent == std::env::temp_dir() {
        "set TMPDIR to another folder"
    } else {
        "choose another parent folder"
    };
    let dir = match std::fs::canonicalize(parent) {
        Ok(d) if d.is_dir() => d,
        Ok(_) => {
            return Err(format!(
                "work folder parent {} is not a folder: {fix}",
                parent.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "work folder parent {} is unusable ({e}): create it or {fix}",
                parent.display()
            ))
        }
    };
    // QEMU's option syntax gives commas a meaning; file paths go in unescaped.
    match dir.to_str() {
        None => {
            return Err(format!(
                "work folder parent {} is not UTF-8, which QEMU options cannot carry: {fix}",
                dir.display()
            ))
        }
        Some(s) if s.contains(',') => {
            return Err(format!(
                "work folder parent {s} has a comma, which QEMU options cannot carry: {fix}"
            ))
        }
        Some(_) => {}
    }
    if let Err(e) = rustix::fs::access(
        &dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    ) {
        return Err(format!(
            "work folder parent {} is not writable ({e}): {fix}",
            dir.display()
        ));
    }
    // The work folder's name ends in six random characters (tempfile's default).
    let socket = dir
        .join(format!("{WORK_DIR_PREFIX}XXXXXX"))
        .join(qmp_socket_name(VM_NAME));
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "work folder parent {} is too long: the QMP socket path {} would have {len} bytes, \
             more than the {MAX_SOCKET_PATH} a unix socket takes: {fix} with a shorter path",
            dir.display(),
            socket.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A host with every program in a private PATH folder and the firmware files.
    struct Host {
        dir: tempfile::TempDir,
        opts: QemuOptions,
    }

    impl Host {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            for p in ["qemu-system-x86_64", "qemu-img", "setpriv"] {
                let f = bin.join(p);
                std::fs::write(&f, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let fw = dir.path().join("fw");
            std::fs::create_dir(&fw).unwrap();
            std::fs::write(fw.join("CODE.fd"), "").unwrap();
            std::fs::write(fw.join("VARS.fd"), "").unwrap();
            let opts = QemuOptions {
                parent_dir: dir.path().into(),
                ovmf_code: fw.join("CODE.fd"),
                ovmf_vars: fw.join("VARS.fd"),
                ..Default::default()
            };
            Host { dir, opts }
        }

        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }

        fn check(&self) -> std::result::Result<(), String> {
            check_host_in(&self.opts, Some(self.bin().as_os_str())).map_err(|e| format!("{e:#}"))
        }
    }

    #[test]
    fn a_complete_host_passes() {
        Host::new().check().unwrap();
    }

    #[test]
    fn kvm_asked_for_on_a_host_without_it_is_refused() {
        let mut h = Host::new();
        h.opts.accel = Accel::Kvm;
        match (host_has_kvm(), h.check()) {
            (true, r) => r.unwrap(),
            (false, r) => {
                let e = r.unwrap_err();
                assert!(e.starts_with("-accel=kvm, but this host cannot"), "{e}");
                assert!(e.contains("-accel=tcg"), "{e}");
            }
        }
        h.opts.accel = Accel::Tcg;
        h.check().unwrap();
    }

    #[test]
    fn each_missing_program_is_named_first_with_its_package() {
        let h = Host::new();
        std::fs::remove_file(h.bin().join("qemu-system-x86_64")).unwrap();
        assert_eq!(
            h.check().unwrap_err(),
            "qemu-system-x86_64 not found on PATH: install the qemu-system-x86 package"
        );
        std::fs::remove_file(h.bin().join("qemu-img")).unwrap();
        std::fs::remove_file(h.bin().join("setpriv")).unwrap();
        assert_eq!(
            h.check().unwrap_err(),
            "qemu-system-x86_64 not found on PATH: install the qemu-system-x86 package; \
             qemu-img not found on PATH: install the qemu-utils package; \
             setpriv not found on PATH: install the util-linux package"
        );
    }

    #[test]
    fn a_given_qemu_path_must_be_executable() {
        let mut h = Host::new();
        let plain = h.dir.path().join("qemu");
        std::fs::write(&plain, "").unwrap();
        h.opts.qemu_system = plain.to_string_lossy().into_owned();
        assert_eq!(
            h.check().unwrap_err(),
            format!(
                "{} is not an executable file: install the qemu-system-x86 package or give the right path",
                plain.display()
            )
        );
        h.opts.qemu_system = h.bin().join("qemu-img").to_string_lossy().into_owned();
        h.check().unwrap();
    }

    #[test]
    fn missing_firmware_names_the_file_and_package() {
        let mut h = Host::new();
        h.opts.ovmf_vars = "/nonexistent/OVMF_VARS_4M.fd".into();
        assert_eq!(
            h.check().unwrap_err(),
            "UEFI firmware variables /nonexistent/OVMF_VARS_4M.fd is missing: install the ovmf package"
        );
    }

    #[test]
    fn parent_folder_problems() {
        let mut h = Host::new();
        h.opts.parent_dir = h.dir.path().join("missing");
        let e = h.check().unwrap_err();
        assert!(
            e.starts_with(&format!(
                "work folder parent {} is unusable (",
                h.opts.parent_dir.display()
            )) && e.ends_with("): create it or choose another parent folder"),
            "{e}"
        );

        h.opts.parent_dir = h.opts.ovmf_code.clone();
        let e = h.check().unwrap_err();
        assert!(
            e.ends_with("CODE.fd is not a folder: choose another parent folder"),
            "{e}"
        );

        let comma = h.dir.path().join("a,b");
        std::fs::create_dir(&comma).unwrap();
        h.opts.parent_dir = comma.clone();
        assert_eq!(
            h.check().unwrap_err(),
            format!(
                "work folder parent {} has a comma, which QEMU options cannot carry: choose another parent folder",
                comma.display()
            )
        );

        let mut long = h.dir.path().to_path_buf();
        while long.as_os_str().len() < MAX_SOCKET_PATH {
            long.push("abcdefghij");
        }
        std::fs::create_dir_all(&long).unwrap();
        h.opts.parent_dir = long;
        let e = h.check().unwrap_err();
        assert!(
            e.starts_with("work folder parent ")
                && e.contains("is too long: the QMP socket path")
                && e.contains("/cos-customizer-qemu-XXXXXX/preload-vm.qmp would have"),
            "{e}"
        );
    }

    /// Unmounts a test's read-only file system.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn read_only_parent_is_refused() {
        let mut h = Host::new();
        let ro = h.dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut _mounted = None;
        // Root writes through any mode; only a read-only file system stops it.
        if rustix::fs::access(&ro, rustix::fs::Access::WRITE_OK).is_ok() {
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,size=1M", "tmpfs"])
                .arg(&ro)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped: cannot make a read-only folder here");
                return;
            }
            _mounted = Some(Unmount(ro.clone()));
        }
        h.opts.parent_dir = ro.clone();
        let e = h.check().unwrap_err();
        assert!(
            e.starts_with(&format!(
                "work folder parent {} is not writable (",
                ro.display()
            )) && e.ends_with("): choose another parent folder"),
            "{e}"
        );
    }
}
