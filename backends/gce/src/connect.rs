//! Opening the Compute and Cloud Storage APIs from the `-compute-endpoint` and
//! `-storage-endpoint` flags.

use anyhow::{Context, Result};
use reqwest::Url;

use crate::auth::Auth;
use crate::compute::Compute;
use crate::http::{Api, DEFAULT_COMPUTE_BASE};
use crate::storage::Gcs;

/// gcloud's variable for another Compute endpoint, read when `-compute-endpoint` is not
/// given: a build whose steps cannot take flags (a cloudbuild.yaml run against an emulator)
/// points there through the environment, as it does Cloud Storage with `STORAGE_EMULATOR_HOST`.
pub const COMPUTE_ENDPOINT_ENV: &str = "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE";

/// The base path `endpoint` means: itself when given, else `$CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE`,
/// else Compute's public one.
fn base(endpoint: &str) -> String {
    base_from(endpoint, std::env::var(COMPUTE_ENDPOINT_ENV).ok())
}

fn base_from(endpoint: &str, env: Option<String>) -> String {
    match env {
        _ if !endpoint.is_empty() => endpoint.to_string(),
        Some(v) if !v.is_empty() => v,
        _ => DEFAULT_COMPUTE_BASE.to_string(),
    }
}

/// Compute at `endpoint`, a base path that `projects/...` is joined to, with or without its
/// trailing slash (`""` is `https://compute.googleapis.com/compute/v1/`). An `https://` endpoint
/// gets Application Default Credentials; an `http://` one (an emulator) gets none, so no token
/// is ever sent in the clear. Call it inside a Tokio runtime: the credentials start their
/// refresher there.
pub fn compute(endpoint: &str) -> Result<Compute> {
    let base = &base(endpoint);
    let scheme = Url::parse(base)
        .map(|url| url.scheme().to_string())
        .with_context(|| {
            format!(
                "-compute-endpoint {base:?} is not a URL: give a base path such as \
                 {DEFAULT_COMPUTE_BASE}"
            )
        })?;
    let auth = if scheme == "https" {
        Auth::application_default(None)?
    } else {
        Auth::None
    };
    let api = Api::new(base, auth).with_context(|| {
        format!("-compute-endpoint {base:?}: give a base path such as {DEFAULT_COMPUTE_BASE}")
    })?;
    Ok(Compute::new(api))
}

/// Cloud Storage at `endpoint` (`""` is `STORAGE_EMULATOR_HOST` or the public API), with
/// Application Default Credentials for an `https://` endpoint and none for an emulator.
/// Call it inside a Tokio runtime.
pub fn storage(endpoint: &str) -> Result<Gcs> {
    let endpoint = if endpoint.is_empty() {
        Gcs::default_endpoint()
    } else {
        endpoint.to_string()
    };
    let auth = if endpoint.starts_with("https://") {
        Auth::application_default(None)?
    } else {
        Auth::None
    };
    Gcs::new(&endpoint, auth).context("-storage-endpoint")
}

/// Anonymous Cloud Storage at `endpoint`, for public buckets such as NVIDIA's drivers and
/// `cos-tools`: they must be readable without credentials, so none are asked for.
pub fn public_storage(endpoint: &str) -> Result<Gcs> {
    let endpoint = if endpoint.is_empty() {
        Gcs::default_endpoint()
    } else {
        endpoint.to_string()
    };
    Gcs::new(&endpoint, Auth::None).context("-storage-endpoint")
}

/// Cloud Storage at `-storage-endpoint` as the SBOM uses it: each call opens the client it
/// needs, so a build that reads or writes nothing there asks for no credentials.
pub struct SbomStorage {
    endpoint: String,
}

impl SbomStorage {
    /// Cloud Storage at `endpoint`, as [`storage`] reads it.
    pub fn new(endpoint: &str) -> SbomStorage {
        SbomStorage {
            endpoint: endpoint.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl cos_customizer_core::sbom::Storage for SbomStorage {
    async fn read_public(&self, bucket: &str, object: &str) -> Result<Vec<u8>> {
        public_storage(&self.endpoint)?
            .download(bucket, object)
            .await
    }

    async fn write(&self, bucket: &str, object: &str, data: Vec<u8>) -> Result<()> {
        storage(&self.endpoint)?
            .upload_bytes(bucket, object, data)
            .await
    }
}

#[cfg(test)]
mod tests {
    use cos_customizer_gce_emulator::{Emulator, Options};

    use super::*;

    #[test]
    fn an_empty_endpoint_is_gclouds_variable_else_the_public_api() {
        let emu = "http://127.0.0.1:1/compute/v1/";
        assert_eq!(
            base_from("", None),
            "https://compute.googleapis.com/compute/v1/"
        );
        assert_eq!(
            base_from("", Some(String::new())),
            "https://compute.googleapis.com/compute/v1/"
        );
        assert_eq!(base_from("", Some(emu.into())), emu);
        // The flag wins over the variable.
        assert_eq!(
            base_from("http://127.0.0.1:2/compute/v1", Some(emu.into())),
            "http://127.0.0.1:2/compute/v1"
        );
    }

    #[tokio::test]
    async fn the_base_is_joined_with_or_without_its_trailing_slash() {
        let emu = Emulator::start(Options::default()).await.unwrap();
        let with_slash = emu.compute_base();
        let without = with_slash.trim_end_matches('/').to_string();
        for endpoint in [with_slash, without] {
            let compute = compute(&endpoint).unwrap();
            let image = compute
                .images_get("cos-cloud", "cos-dev-125-19100-0-0")
                .await
                .unwrap_or_else(|e| panic!("{endpoint}: {e:#}"));
            assert_eq!(image.name, "cos-dev-125-19100-0-0");
        }
        let paths: Vec<String> = emu.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            ["projects/cos-cloud/global/images/cos-dev-125-19100-0-0"; 2]
        );
    }

    #[test]
    fn endpoints_that_are_not_base_paths_are_refused_by_name() {
        for bad in [
            "compute.googleapis.com",
            "ftp://x/compute/v1/",
            "http://x/v1/?a=b",
        ] {
            let e = compute(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            let msg = format!("{e:#}");
            assert!(
                msg.contains("-compute-endpoint") && msg.contains(bad),
                "{msg}"
            );
        }
    }
}
