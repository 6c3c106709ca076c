//! The part of COS Customizer every backend shares: the build state recorded by the
//! CLI steps, the provisioner config, the CIDATA disk and the preload flow.

pub mod archive;
pub mod backend;
pub mod cidata;
pub mod cloud_config;
pub mod cmd;
pub mod config;
pub mod duration;
pub mod env;
pub mod fsutil;
pub mod oem;
pub mod preload;
pub mod state;
