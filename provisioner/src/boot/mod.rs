//! The boot configuration: the EFI system partition and the kernel command lines in its
//! grub.cfg.

pub mod esp;
pub mod grub_cfg;
