//! The qemu-system command line for one VM, as a pure function.

use std::ffi::OsStr;

/// The network GCE's metadata address lives in; QEMU only forwards addresses inside
/// its own user-mode network, so the network surrounds 169.254.169.254.
const NETDEV_BASE: &str =
    "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15";

/// Everything the argv depends on. Paths are UTF-8 without commas (checked when the
/// work dir is made), so they go into QEMU's option syntax as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct VmArgs {
    pub name: String,
    /// `tcg` or `kvm`.
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub ovmf_code: String,
    pub ovmf_vars: String,
    /// qcow2 files, boot disk first.
    pub disks: Vec<String>,
    /// Files for serial ports 1..=4 (ttyS0..ttyS3).
    pub serial: [String; 4],
    pub qmp_socket: String,
    /// The command QEMU runs per guest connection to the metadata address (the port's
    /// `127.0.0.1:PORT` already appended); empty means no metadata forwarding.
    pub metadata_proxy: Vec<String>,
}

/// QEMU's id of the `i`th disk (0 is the boot disk): QMP commands and events name it.
pub fn drive_id(i: usize) -> String {
    format!("disk{i}")
}

/// The argv after the program name.
pub fn qemu_argv(a: &VmArgs) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| v.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("guest={}", a.name)]);
    push(&["-accel", &a.accel, "-cpu", "max", "-machine", "q35"]);
    push(&["-smp", &a.cpus.to_string(), "-m", &a.memory_mib.to_string()]);
    push(&["-nodefaults", "-display", "none"]);
    push(&[
        "-drive",
        &format!("if=pflash,format=raw,readonly=on,file={}", a.ovmf_code),
    ]);
    push(&[
        "-drive",
        &format!("if=pflash,format=raw,file={}", a.ovmf_vars),
    ]);
    for (i, d) in a.disks.iter().enumerate() {
        push(&[
            "-drive",
            &format!("file={d},format=qcow2,if=virtio,id={}", drive_id(i)),
        ]);
    }
    for s in &a.serial {
        push(&["-serial", &format!("file:{s}")]);
    }
    push(&["-device", "pvpanic", "-action", "panic=exit-failure"]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", a.qmp_socket)]);
    let mut netdev = format!("{NETDEV_BASE},hostname={}", a.name);
    if let Some((prog, rest)) = a.metadata_proxy.split_first() {
        // libslirp splits the command shell-style; QEMU's option parser needs `,,`.
        let line =
            cos_customizer_common::cmd::render(OsStr::new(prog), rest.iter().map(OsStr::new));
        netdev.push_str(",guestfwd=tcp:169.254.169.254:80-cmd:");
        netdev.push_str(&line.replace(',', ",,"));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmArgs {
        VmArgs {
            name: "preload-vm".into(),
            accel: "tcg".into(),
            cpus: 2,
            memory_mib: 2048,
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/w/preload-vm-OVMF_VARS.fd".into(),
            disks: vec!["/w/boot-disk.qcow2".into(), "/w/cidata-disk.qcow2".into()],
            serial: [1, 2, 3, 4].map(|n| format!("/w/preload-vm-serial{n}.log")),
            qmp_socket: "/w/preload-vm.qmp".into(),
            metadata_proxy: vec![
                "/opt/cos customizer".into(),
                "__metadata-proxy".into(),
                "127.0.0.1:4242".into(),
            ],
        }
    }

    #[test]
    fn full_command_line() {
        #[rustfmt::skip]
        let want = [
            "-name", "guest=preload-vm",
            "-accel", "tcg", "-cpu", "max", "-machine", "q35",
            "-smp", "2", "-m", "2048",
            "-nodefaults", "-display", "none",
            "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive", "if=pflash,format=raw,file=/w/preload-vm-OVMF_VARS.fd",
            "-drive", "file=/w/boot-disk.qcow2,format=qcow2,if=virtio,id=disk0",
            "-drive", "file=/w/cidata-disk.qcow2,format=qcow2,if=virtio,id=disk1",
            "-serial", "file:/w/preload-vm-serial1.log",
            "-serial", "file:/w/preload-vm-serial2.log",
            "-serial", "file:/w/preload-vm-serial3.log",
            "-serial", "file:/w/preload-vm-serial4.log",
            "-device", "pvpanic", "-action", "panic=exit-failure",
            "-qmp", "unix:/w/preload-vm.qmp,server=on,wait=off",
            "-netdev",
            "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,\
             hostname=preload-vm,guestfwd=tcp:169.254.169.254:80-cmd:'/opt/cos customizer' \
             __metadata-proxy 127.0.0.1:4242",
            "-device", "virtio-net-pci,netdev=n0",
        ];
        assert_eq!(qemu_argv(&sample()), want);
    }

    #[test]
    fn commas_in_proxy_command_are_doubled() {
        let mut a = sample();
        a.metadata_proxy = vec!["/x/a,b".into(), "127.0.0.1:1".into()];
        let argv = qemu_argv(&a);
        let netdev = &argv[argv.iter().position(|s| s == "-netdev").unwrap() + 1];
        assert!(netdev.ends_with("-cmd:/x/a,,b 127.0.0.1:1"), "{netdev}");
    }

    #[test]
    fn no_proxy_means_no_guestfwd() {
        let mut a = sample();
        a.metadata_proxy.clear();
        let argv = qemu_argv(&a);
        assert!(argv.iter().all(|s| !s.contains("guestfwd")));
        assert!(argv.iter().any(|s| s.ends_with("hostname=preload-vm")));
    }
}
