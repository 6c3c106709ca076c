//! Test-only helpers the workspace's crates share, kept out of the production crates (as
//! cloud-hypervisor keeps `test_infra` and Firecracker `test_utils`): production crates take
//! this crate only as a dev-dependency.
//!
//! - [`fake_gcs`]: a real fake-gcs-server on a free loopback port, with one bucket;
//! - [`gcs_client`]: a plain HTTP/1.1 client for it (the Compute emulator reads `rawDisk`
//!   sources with it too);
//! - [`testserver`]: an HTTP server that answers a scripted list of replies and records what it
//!   was sent, for unit tests of HTTP clients.

pub mod fake_gcs;
pub mod gcs_client;
pub mod testserver;
