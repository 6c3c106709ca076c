//! What both sides of a build share: the host CLI and preloader, and the provisioner
//! that runs inside the build VM. Synchronous and small, so the static provisioner
//! links nothing it does not use.

pub mod cmd;
pub mod config;
pub mod cos_layout;
pub mod duration;
pub mod env;
pub mod fsutil;
pub mod goflags;
pub mod names;
pub mod protocol;
pub mod sizing;
