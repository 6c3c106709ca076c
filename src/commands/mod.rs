//! One module per subcommand.

pub mod anthos_check;
pub mod finish_image_build;
pub mod install_gpu;
pub mod run_script;
pub mod simple_steps;
pub mod start_image_build;
