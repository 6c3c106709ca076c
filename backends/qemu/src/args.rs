//! The qemu-system command line for one VM, as a pure function.

use std::ffi::OsStr;

/// The network GCE's metadata address lives in; QEMU only forwards addresses inside
/// its own user-mode network, so the network surrounds 169.254.169.254. The host's
/// loopback is 169.254.169.2 from the guest and DNS is answered at 169.254.169.3 (QEMU's
/// default, announced by DHCP; QEMU cannot put it on the metadata address as GCE does,
/// because that address is taken by the metadata forward).
const NETDEV_BASE: &str =
    "user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15";
/// The host's loopback as the guest reaches it (`host=` above).
pub const HOST_FROM_GUEST: &str = "169.254.169.2";

/// What GCE reports in SMBIOS, which COS's cloud-init and guest agents read to learn that
/// they run on GCE (cloud-init's `platform_reports_gce`).
const SMBIOS: [&str; 2] = [
    "type=0,vendor=Google",
    "type=1,manufacturer=Google,product=Google Compute Engine,family=Google",
];

/// How disks are attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskBus {
    /// One virtio-scsi controller, a `scsi-hd` per disk (`/dev/sda`, `/dev/sdb`, ...), vendor
    /// Google and product PersistentDisk, serial the disk's name: as GCE attaches
    /// persistent disks, so COS's udev rules make `/dev/disk/by-id/google-<name>`.
    #[default]
    Scsi,
    /// virtio-blk (`/dev/vda`, ...): simpler and a little faster under TCG.
    Virtio,
}

impl std::str::FromStr for DiskBus {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "scsi" => Ok(DiskBus::Scsi),
            "virtio" => Ok(DiskBus::Virtio),
            _ => anyhow::bail!("unknown disk interface {s:?}: use scsi (as GCE) or virtio"),
        }
    }
}

/// One disk on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskArg {
    /// Its qcow2 file.
    pub file: String,
    /// The disk's name in the build (`boot-disk`), the SCSI serial number GCE gives it.
    pub name: String,
}

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
    /// The disks, boot disk first.
    pub disks: Vec<DiskArg>,
    /// How they are attached.
    pub disk_bus: DiskBus,
    /// Whether the guest may open connections beyond the metadata server (NAT, as a GCE VM
    /// with an external IP); `false` is a hermetic build.
    pub outbound_network: bool,
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
    for smbios in SMBIOS {
        push(&["-smbios", smbios]);
    }
    if a.disk_bus == DiskBus::Scsi {
        push(&["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    for (i, d) in a.disks.iter().enumerate() {
        let id = drive_id(i);
        match a.disk_bus {
            DiskBus::Virtio => push(&[
                "-drive",
                &format!("file={},format=qcow2,if=virtio,id={id}", d.file),
            ]),
            DiskBus::Scsi => {
                push(&[
                    "-drive",
                    &format!("file={},format=qcow2,if=none,id={id}", d.file),
                ]);
                // The boot disk first in the firmware's boot order, as on GCE.
                let boot = if i == 0 { ",bootindex=0" } else { "" };
                push(&[
                    "-device",
                    &format!(
                        "scsi-hd,bus=scsi0.0,drive={id},vendor=Google,product=PersistentDisk,serial={}{boot}",
                        // QEMU's limit for a SCSI serial number.
                        &d.name[..d.name.len().min(36)]
                    ),
                ]);
            }
        }
    }
    for s in &a.serial {
        push(&["-serial", &format!("file:{s}")]);
    }
    push(&["-device", "pvpanic", "-action", "panic=exit-failure"]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", a.qmp_socket)]);
    let restrict = if a.outbound_network { "off" } else { "on" };
    let mut netdev = format!("{NETDEV_BASE},restrict={restrict},hostname={}", a.name);
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
            disks: ["boot-disk", "cidata-disk"]
                .map(|name| DiskArg {
                    file: format!("/w/{name}.qcow2"),
                    name: name.into(),
                })
                .to_vec(),
            disk_bus: DiskBus::Virtio,
            outbound_network: false,
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
            "-smbios", "type=0,vendor=Google",
            "-smbios", "type=1,manufacturer=Google,product=Google Compute Engine,family=Google",
            "-drive", "file=/w/boot-disk.qcow2,format=qcow2,if=virtio,id=disk0",
            "-drive", "file=/w/cidata-disk.qcow2,format=qcow2,if=virtio,id=disk1",
            "-serial", "file:/w/preload-vm-serial1.log",
            "-serial", "file:/w/preload-vm-serial2.log",
            "-serial", "file:/w/preload-vm-serial3.log",
            "-serial", "file:/w/preload-vm-serial4.log",
            "-device", "pvpanic", "-action", "panic=exit-failure",
            "-qmp", "unix:/w/preload-vm.qmp,server=on,wait=off",
            "-netdev",
            "user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,\
             restrict=on,hostname=preload-vm,guestfwd=tcp:169.254.169.254:80-cmd:'/opt/cos customizer' \
             __metadata-proxy 127.0.0.1:4242",
            "-device", "virtio-net-pci,netdev=n0",
        ];
        assert_eq!(qemu_argv(&sample()), want);
    }

    #[test]
    fn scsi_disks_look_like_gce_persistent_disks() {
        let mut a = sample();
        a.disk_bus = DiskBus::Scsi;
        let argv = qemu_argv(&a).join(" ");
        assert!(
            argv.contains(
                "-device virtio-scsi-pci,id=scsi0 \
                 -drive file=/w/boot-disk.qcow2,format=qcow2,if=none,id=disk0 \
                 -device scsi-hd,bus=scsi0.0,drive=disk0,vendor=Google,product=PersistentDisk,serial=boot-disk,bootindex=0 \
                 -drive file=/w/cidata-disk.qcow2,format=qcow2,if=none,id=disk1 \
                 -device scsi-hd,bus=scsi0.0,drive=disk1,vendor=Google,product=PersistentDisk,serial=cidata-disk -serial"
            ),
            "{argv}"
        );
        assert!(!argv.contains("if=virtio"), "{argv}");
    }

    #[test]
    fn outbound_network_lifts_the_restriction() {
        let mut a = sample();
        a.outbound_network = true;
        let argv = qemu_argv(&a);
        let netdev = &argv[argv.iter().position(|s| s == "-netdev").unwrap() + 1];
        assert!(netdev.contains(",restrict=off,"), "{netdev}");
        assert!(
            netdev.contains("guestfwd=tcp:169.254.169.254:80-cmd:"),
            "{netdev}"
        );
    }

    #[test]
    fn disk_interfaces_parse() {
        assert_eq!("scsi".parse::<DiskBus>().unwrap(), DiskBus::Scsi);
        assert_eq!("virtio".parse::<DiskBus>().unwrap(), DiskBus::Virtio);
        let e = "ide".parse::<DiskBus>().unwrap_err().to_string();
        assert!(e.contains("ide") && e.contains("scsi"), "{e}");
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
    fn the_host_address_is_the_networks() {
        assert!(NETDEV_BASE.contains(&format!(",host={HOST_FROM_GUEST},")));
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
