//! The COS boot disk's GPT layout, as the provisioner relies on it: partition numbers and
//! their labels.

/// A partition the build needs: its GPT number and label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// The 1-based GPT entry number (`sda1` is 1).
    pub number: u32,
    /// The GPT partition name.
    pub label: &'static str,
}

/// STATE, the stateful partition (`/mnt/stateful_partition`).
pub const STATE: Partition = Partition {
    number: 1,
    label: "STATE",
};
/// KERN-A, whose GPT priority picks slot A.
pub const KERN_A: Partition = Partition {
    number: 2,
    label: "KERN-A",
};
/// ROOT-A, the root file system of slot A.
pub const ROOT_A: Partition = Partition {
    number: 3,
    label: "ROOT-A",
};
/// KERN-B, whose GPT priority picks slot B.
pub const KERN_B: Partition = Partition {
    number: 4,
    label: "KERN-B",
};
/// ROOT-B, the root file system of slot B.
pub const ROOT_B: Partition = Partition {
    number: 5,
    label: "ROOT-B",
};
/// OEM, mounted at `/usr/share/oem`.
pub const OEM: Partition = Partition {
    number: 8,
    label: "OEM",
};
/// EFI-SYSTEM, with GRUB and its `grub.cfg`.
pub const EFI_SYSTEM: Partition = Partition {
    number: 12,
    label: "EFI-SYSTEM",
};

/// The partitions every build needs: the provisioner keeps its state on STATE, and
/// boots, edits and cleans ROOT-A, OEM and EFI-SYSTEM.
pub const ALWAYS: [Partition; 4] = [STATE, ROOT_A, OEM, EFI_SYSTEM];
/// What reclaiming ROOT-A (`disable-auto-update`, `seal-oem`) needs besides: slot B to
/// boot from while ROOT-A shrinks.
pub const FOR_RECLAIM: [Partition; 3] = [KERN_A, KERN_B, ROOT_B];
