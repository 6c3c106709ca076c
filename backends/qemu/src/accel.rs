//! Which QEMU accelerator to use.
//!
//! `/dev/kvm` alone proves nothing: on nested hosts it can be PVM, where KVM initialises
//! and stock guests then hang. Auto picks KVM only when the CPU really has VT-x/AMD-V.

use std::path::Path;

/// The accelerator a VM runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM where hardware virtualization is really there, TCG otherwise.
    #[default]
    Auto,
    /// KVM, whether or not the host really supports it.
    Kvm,
    /// TCG, QEMU's software emulation: slow but works anywhere.
    Tcg,
}

impl Accel {
    /// The `-accel` value, resolving `Auto` on this host.
    pub fn resolve(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto if host_has_kvm() => "kvm",
            Accel::Auto => "tcg",
        }
    }
}

/// Whether this host can run stock guests under KVM (see [`kvm_usable`]).
pub fn host_has_kvm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let module =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    let dev_kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    kvm_usable(&cpuinfo, module, dev_kvm)
}

impl std::str::FromStr for Accel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => anyhow::bail!("unknown accelerator {s:?}: use auto, kvm or tcg"),
        }
    }
}

/// KVM runs stock guests only with a `vmx`/`svm` CPU flag, the matching KVM module
/// loaded, and `/dev/kvm` openable read-write.
pub fn kvm_usable(cpuinfo: &str, vendor_module_loaded: bool, dev_kvm_rw: bool) -> bool {
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    hw_virt && vendor_module_loaded && dev_kvm_rw
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\nbugs\t\t: spectre\n";
    const SVM: &str = "flags\t\t: fpu svm lm\n";
    // PVM host: only the `hypervisor` flag, even though /dev/kvm opens.
    const PVM: &str = "flags\t\t: fpu hypervisor lm avx512f\nvmx flags\t: none\n";

    #[test]
    fn kvm_needs_flag_module_and_device() {
        assert!(kvm_usable(VMX, true, true));
        assert!(kvm_usable(SVM, true, true));
        assert!(!kvm_usable(PVM, true, true));
        assert!(!kvm_usable(VMX, false, true));
        assert!(!kvm_usable(VMX, true, false));
        assert!(!kvm_usable("", true, true));
    }

    #[test]
    fn flag_match_is_whole_word() {
        assert!(!kvm_usable("flags\t: vmxfoo svmbar\n", true, true));
    }

    #[test]
    fn explicit_choices_are_kept() {
        assert_eq!(Accel::Kvm.resolve(), "kvm");
        assert_eq!(Accel::Tcg.resolve(), "tcg");
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("xen".parse::<Accel>().is_err());
    }
}
