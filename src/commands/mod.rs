//! One module per subcommand.

pub mod finish_image_build;
pub mod install_gpu;
pub mod provisioner_bin;
pub mod qemu;
pub mod run_script;
pub mod simple_steps;
pub mod start_image_build;
