//! The boot disk: its partitions, the partition table, the ext4 file systems on it, and
//! the repartitioning that reclaims ROOT-A and grows OEM (partly at shutdown, when the
//! partitions are unmounted).

pub mod bootdisk;
pub mod ext4;
pub mod layout;
pub mod repartition;
pub mod sfdisk;
pub mod shutdown_unit;
pub mod verity;
