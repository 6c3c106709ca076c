//! Before a build: each `anthos-installer-install` step's anthos_installer release archive,
//! which the VM downloads, is in its bucket, when this machine can look.

use anyhow::{bail, Context, Result};
use cos_customizer_common::config::{ProvisionerConfig, Step};
use cos_customizer_gce::connect;

/// Fails when a bucket this machine can list lacks the archive; `note` says why a bucket
/// could not be looked at (the VM, with its own credentials, may still reach it).
pub fn check(
    prov: &ProvisionerConfig,
    storage_endpoint: &str,
    note: &mut dyn FnMut(String),
) -> Result<()> {
    let wanted: Vec<(&str, &str)> = prov
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::InstallPackages(a) => Some((
                a.anthos_installer_release_bucket.as_str(),
                a.anthos_installer_version.as_str(),
            )),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let gcs = match connect::storage(storage_endpoint) {
            Ok(gcs) => gcs,
            Err(e) => {
                note(format!(
                    "Not checking the anthos_installer archive from here ({e:#}); the build VM downloads it"
                ));
                return Ok(());
            }
        };
        for (bucket, object) in wanted {
            match gcs.list(bucket, object).await {
                Ok(names) if names.iter().any(|n| n == object) => {}
                Ok(_) => bail!(
                    "the anthos_installer archive {object} is not in bucket {bucket} (gs://{bucket}/{object}), which anthos-installer-install downloads in the build VM"
                ),
                Err(e) => note(format!(
                    "Could not look for gs://{bucket}/{object} from here ({e:#}); the build VM downloads it with its own credentials"
                )),
            }
        }
        Ok(())
    })
}
