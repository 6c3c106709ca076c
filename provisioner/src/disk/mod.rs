//! The boot disk: its partitions, the partition table, the ext4 file systems on it, and
//! the repartitioning that reclaims ROOT-A and grows OEM (the moves happen at shutdown,
//! from the exit ramdisk, when the partitions are unmounted).

pub mod bootdisk;
pub mod exitrd;
pub mod ext4;
pub mod ext4_used;
pub mod gpt_edit;
pub mod layout;
pub mod le;
pub mod relocate;
pub mod repartition;
pub mod table;
pub mod verity;
