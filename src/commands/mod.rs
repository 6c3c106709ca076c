//! One module per subcommand, and the one place that picks a backend.

pub mod anthos_check;
pub mod backend;
pub mod finish_image_build;
pub mod gce_build;
pub mod install_gpu;
pub mod run_script;
pub mod sbom;
pub mod simple_steps;
pub mod start_image_build;
