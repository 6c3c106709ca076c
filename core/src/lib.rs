//! The host side of COS Customizer: the local state folder, the build context
//! archive, the CIDATA disk, the backend trait and the preload flow every backend shares.

pub mod archive;
pub mod async_cmd;
pub mod backend;
pub mod cache;
pub mod cidata;
pub mod cloud_config;
pub mod finish;
pub mod gce_tar;
pub mod http_server;
pub mod output_lock;
pub mod preflight;
pub mod preload;
pub mod provisioner_bin;
pub mod sbom;
pub mod scratch;
pub mod state;
pub mod workdir;
