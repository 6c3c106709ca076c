//! One module per subcommand (`anthos_check` is what `finish-image-build` checks of an
//! `anthos-installer-install` step).

pub mod anthos_check;
pub mod anthos_installer_install;
pub mod disable_auto_update;
pub mod finish_image_build;
pub mod install_gpu;
pub mod run_script;
pub mod seal_oem;
pub mod start_image_build;
