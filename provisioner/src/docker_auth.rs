//! Docker's credential helper for Google's registries, so that a build's scripts pull
//! private images from Container Registry and Artifact Registry with the VM's service
//! account, as the original sets up with `docker-credential-gcr configure-docker`.
//!
//! The entries are written into root's docker config here rather than by the helper's own
//! `configure-docker`: COS ships helpers of several versions, the older ones know no
//! Artifact Registry hosts and no `--registries` flag, and the config format is small and
//! documented (`credHelpers`: registry host -> helper suffix).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// The hosts `docker-credential-gcr configure-docker` configures by default.
pub const GCR_HOSTS: [&str; 6] = [
    "gcr.io",
    "us.gcr.io",
    "eu.gcr.io",
    "asia.gcr.io",
    "staging-k8s.gcr.io",
    "marketplace.gcr.io",
];

/// Artifact Registry's locations; each has a `<location>-docker.pkg.dev` host.
pub const ARTIFACT_REGISTRY_LOCATIONS: [&str; 45] = [
    "us",
    "europe",
    "asia",
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west10",
    "europe-west12",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
];

/// The helper's name as docker calls it: `docker-credential-<this>`.
const HELPER: &str = "gcr";

/// Every registry host the helper is configured for.
pub fn registries() -> Vec<String> {
    GCR_HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(
            ARTIFACT_REGISTRY_LOCATIONS
                .iter()
                .map(|l| format!("{l}-docker.pkg.dev")),
        )
        .collect()
}

/// `config` (a docker `config.json`, or `None` if there is none) with `credHelpers`
/// naming the helper for every registry in [`registries`]; every other key and entry is
/// kept.
pub fn with_cred_helpers(config: Option<&str>) -> Result<String> {
    let mut root = match config {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str::<Value>(text).context("parsing the docker config")?
        }
        _ => Value::Object(Map::new()),
    };
    let Some(obj) = root.as_object_mut() else {
        bail!("the docker config is not a JSON object");
    };
    let helpers = obj
        .entry("credHelpers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(helpers) = helpers.as_object_mut() else {
        bail!("credHelpers in the docker config is not a JSON object");
    };
    for host in registries() {
        helpers.insert(host, Value::String(HELPER.into()));
    }
    serde_json::to_string_pretty(&root).context("encoding the docker config")
}

/// Adds the entries to the docker config at `path` (root's `~/.docker/config.json`),
/// creating it and its folder if needed.
pub fn configure(path: &Path) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config = with_cred_helpers(existing.as_deref())
        .with_context(|| format!("updating {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_gcr_and_artifact_registry_hosts() {
        let config: Value = serde_json::from_str(&with_cred_helpers(None).unwrap()).unwrap();
        let helpers = config["credHelpers"].as_object().unwrap();
        for host in [
            "gcr.io",
            "marketplace.gcr.io",
            "us-docker.pkg.dev",
            "europe-west4-docker.pkg.dev",
            "asia-northeast1-docker.pkg.dev",
        ] {
            assert_eq!(helpers[host], "gcr", "{host}");
        }
        assert_eq!(
            helpers.len(),
            GCR_HOSTS.len() + ARTIFACT_REGISTRY_LOCATIONS.len()
        );
    }

    #[test]
    fn other_settings_are_kept() {
        let before = r#"{"auths":{"r.example":{"auth":"eA=="}},"credHelpers":{"r.example":"pass","gcr.io":"old"}}"#;
        let after: Value = serde_json::from_str(&with_cred_helpers(Some(before)).unwrap()).unwrap();
        assert_eq!(after["auths"]["r.example"]["auth"], "eA==");
        assert_eq!(after["credHelpers"]["r.example"], "pass");
        assert_eq!(after["credHelpers"]["gcr.io"], "gcr");
    }

    #[test]
    fn a_broken_config_is_named() {
        for bad in ["[1]", "{\"credHelpers\":[]}", "{"] {
            assert!(with_cred_helpers(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn configure_creates_or_updates_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("root/.docker/config.json");
        configure(&path).unwrap();
        std::fs::write(&path, r#"{"auths":{},"credHelpers":{"r.example":"pass"}}"#).unwrap();
        configure(&path).unwrap();
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["credHelpers"]["r.example"], "pass");
        assert_eq!(config["credHelpers"]["us-central1-docker.pkg.dev"], "gcr");
    }
}
