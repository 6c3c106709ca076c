//! NVIDIA's driver versions for `install-gpu`, gathered as the original does: one per folder
//! `tesla/<version>/` of NVIDIA's public bucket, plus [`LEGACY_VERSION`].

use std::cmp::Ordering;

use anyhow::{Context, Result};

use crate::storage::Gcs;

/// NVIDIA's public bucket of driver installers, readable without credentials.
pub const DRIVER_BUCKET: &str = "nvidia-drivers-us-public";

/// The folder of [`DRIVER_BUCKET`] whose subfolders are the driver versions.
pub const DRIVER_PREFIX: &str = "tesla/";

/// Valid whatever the bucket holds: its installers sit outside `tesla/<version>/` (an older
/// layout), and cos-gpu-installer still supports it.
pub const LEGACY_VERSION: &str = "390.46";

/// Every valid driver version, sorted by its dotted numbers (`96.1` before `390.46`), once
/// each, [`LEGACY_VERSION`] included.
///
/// The bucket is listed by folder, so its thousands of installers are not paged through.
/// Objects directly in `tesla/` name no version and are left out.
pub async fn valid_versions(gcs: &Gcs) -> Result<Vec<String>> {
    let folders = gcs
        .list_folders(DRIVER_BUCKET, DRIVER_PREFIX)
        .await
        .with_context(|| {
            format!(
                "NVIDIA's driver versions are unknown: check the network, or point \
                 -storage-endpoint at a Cloud Storage that serves gs://{DRIVER_BUCKET}"
            )
        })?;
    let mut versions: Vec<String> = folders
        .iter()
        .filter_map(|f| f.strip_prefix(DRIVER_PREFIX))
        .map(|f| f.trim_end_matches('/'))
        .filter(|v| !v.is_empty())
        .chain([LEGACY_VERSION])
        .map(str::to_string)
        .collect();
    versions.sort_by(|a, b| by_version(a, b));
    versions.dedup();
    Ok(versions)
}

/// One dotted part of a version: a number, or text for a part that is not one.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Part<'a> {
    Number(u64),
    Text(&'a str),
}

/// Numbers compared as numbers part by part; the names themselves break ties (`450.51.06`
/// and `450.51.6`), so equal names end up side by side for `dedup`.
fn by_version(a: &str, b: &str) -> Ordering {
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

fn key(version: &str) -> Vec<Part<'_>> {
    version
        .split('.')
        .map(|p| p.parse().map_or(Part::Text(p), Part::Number))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::Auth;
    use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
    use cos_customizer_testkit::testserver::{Reply, TestServer};

    #[test]
    fn versions_sort_by_their_numbers() {
        let mut v = vec![
            "535.129.03",
            "96.1",
            "450.51.6",
            "latest",
            "450.51.06",
            "390.46",
            "1000",
            "450.9",
        ];
        v.sort_by(|a, b| by_version(a, b));
        assert_eq!(
            v,
            [
                "96.1",
                "390.46",
                "450.9",
                "450.51.06",
                "450.51.6",
                "535.129.03",
                "1000",
                "latest"
            ]
        );
    }

    #[tokio::test]
    async fn every_page_is_listed_by_folder() {
        let server = TestServer::start(vec![
            Reply::Json(
                200,
                json!({"prefixes": ["tesla/535.129.03/", "tesla/450.51.06/"], "nextPageToken": "t2"}),
            ),
            Reply::Json(200, json!({"prefixes": ["tesla/450.51.06/", "tesla/96.1/"]})),
        ])
        .await;
        let gcs = Gcs::new(&server.origin, Auth::None).unwrap();
        assert_eq!(
            valid_versions(&gcs).await.unwrap(),
            ["96.1", "390.46", "450.51.06", "535.129.03"]
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].path(), "/storage/v1/b/nvidia-drivers-us-public/o");
        assert_eq!(seen[0].query("prefix").as_deref(), Some("tesla%2F"));
        assert_eq!(seen[0].query("delimiter").as_deref(), Some("%2F"));
        assert_eq!(seen[1].query("pageToken").as_deref(), Some("t2"));
    }

    async fn fake(seed: &[&str]) -> Option<(FakeGcs, Gcs)> {
        if !fake_gcs::require() {
            return None;
        }
        let fake = FakeGcs::start(DRIVER_BUCKET)
            .await
            .expect("fake-gcs-server starts");
        let gcs = Gcs::new(&fake.endpoint(), Auth::None).unwrap();
        for name in seed {
            gcs.upload_bytes(DRIVER_BUCKET, name, b"x".to_vec())
                .await
                .unwrap();
        }
        Some((fake, gcs))
    }

    #[tokio::test]
    async fn versions_are_the_folders_under_tesla() {
        let Some((_fake, gcs)) = fake(&[
            "tesla/450.51.06/NVIDIA-Linux-x86_64-450.51.06.run",
            "tesla/450.51.06/NVIDIA-Linux-x86_64-450.51.06-diagnostic.run",
            "tesla/535.129.03/NVIDIA-Linux-x86_64-535.129.03.run",
            "tesla/96.1/x",
            "tesla/README",
            "grid/999.1/x",
            "teslax/1.0/x",
        ])
        .await
        else {
            return;
        };
        assert_eq!(
            valid_versions(&gcs).await.unwrap(),
            ["96.1", "390.46", "450.51.06", "535.129.03"]
        );
    }

    #[tokio::test]
    async fn an_empty_bucket_still_has_the_legacy_version() {
        let Some((_fake, gcs)) = fake(&["390.46/NVIDIA-Linux-x86_64-390.46.run"]).await else {
            return;
        };
        assert_eq!(valid_versions(&gcs).await.unwrap(), ["390.46"]);
    }

    #[tokio::test]
    async fn a_failed_listing_names_the_bucket_and_the_fix() {
        if !fake_gcs::require() {
            return;
        }
        let fake = FakeGcs::start("another-bucket").await.unwrap();
        let gcs = Gcs::new(&fake.endpoint(), Auth::None).unwrap();
        let err = format!("{:#}", valid_versions(&gcs).await.unwrap_err());
        assert!(
            err.contains("gs://nvidia-drivers-us-public/tesla/"),
            "{err}"
        );
        assert!(err.contains("-storage-endpoint"), "{err}");
        assert!(!err.contains("-gcs-bucket"), "{err}");
    }
}
