//! The GCE side of `finish-image-build`, around the preload flow as the original orders it:
//! the `-enable-cleanup` sweep, the upload of `install-gpu`'s dependencies, the build, its
//! SBOM, the deprecation of the family's older images, and the removal of the build's Cloud
//! Storage folder whatever the outcome.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cos_customizer_core::finish::{self, FinishOptions, Outcome};
use cos_customizer_core::preload::LogLine;
use cos_customizer_core::state::StateDir;
use cos_customizer_gce::backend::{GceBackend, GceOptions};
use cos_customizer_gce::compute::Compute;
use cos_customizer_gce::storage::Gcs;
use cos_customizer_gce::{connect, deprecate, names, sweep};

use crate::cli::FinishOpts;
use crate::commands::sbom::Sbom;

/// How often the build VM is polled: a marker is seen within this, at about 36 API reads a
/// minute while the VM is quiet (see the contract test `polling_is_prompt_and_sparing`).
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long the deprecation of one image may take (upstream: 600 s).
const DEPRECATE_TIMEOUT: Duration = Duration::from_secs(600);

/// A GCE build's clients and settings.
pub struct GceBuild {
    compute: Compute,
    gcs: Gcs,
    backend: Arc<GceBackend>,
    o: FinishOpts,
    /// The output image's project and name, with `-image-suffix` applied.
    image: (String, String),
}

impl GceBuild {
    /// Checks what a GCE build needs from the state and the flags, and opens the clients
    /// (inside a Tokio runtime: the credentials start their refresher there).
    pub fn open(
        state: &StateDir,
        o: &FinishOpts,
        opts: &FinishOptions,
        compute_endpoint: &str,
        storage_endpoint: &str,
    ) -> Result<GceBuild> {
        let s = state.load()?;
        if !s.source.local_file.is_empty() {
            bail!(
                "the build's source image is the local file {}: a GCE build needs a GCE image; \
                 start the build again with -image-name, -image-family or -image-milestone, or \
                 build locally with -backend=qemu -output-file=PATH",
                s.source.local_file
            );
        }
        if s.build.gcs_bucket.is_empty() {
            bail!("the build state has no Cloud Storage bucket: give -gcs-bucket and -gcs-workdir to start-image-build");
        }
        let image_name = opts.image.name.resolve(&s.source.name);
        names::check_name(&image_name).context("checking the output image's name")?;
        let image_project = opts.image.project.clone();
        names::check_labels(&opts.image.labels).context("checking -labels")?;
        let endpoint = if compute_endpoint.is_empty() {
            &s.build.gce_endpoint
        } else {
            compute_endpoint
        };
        let compute = connect::compute(endpoint)?;
        let gcs = connect::storage(storage_endpoint)?;
        let backend = GceBackend::new(
            compute.clone(),
            gcs.clone(),
            GceOptions {
                project: opts.vm.project.clone(),
                zone: opts.vm.zone.clone(),
                gcs_bucket: s.build.gcs_bucket.clone(),
                gcs_dir: s.build.gcs_dir.clone(),
                build_id: names::build_id(),
                external_ip: !o.no_external_ip,
                op_timeout: opts.timeout,
                poll_interval: POLL_INTERVAL,
                in_use_backoff: Duration::from_secs(2),
            },
        );
        Ok(GceBuild {
            compute,
            gcs,
            backend: Arc::new(backend),
            o: o.clone(),
            image: (image_project, image_name),
        })
    }

    /// Runs the whole GCE build; `sbom` is written once the image is built.
    pub async fn run(
        &self,
        state: &StateDir,
        mut opts: FinishOptions,
        sbom: Option<&Sbom>,
        log: &mut dyn FnMut(LogLine),
    ) -> Result<()> {
        let g = self.backend.options().clone();
        if self.o.enable_cleanup {
            let now = jiff::Timestamp::now();
            let swept =
                sweep::sweep_old(&self.compute, &g.project, &g.zone, sweep::DEFAULT_AGE, now)
                    .await
                    .context("deleting old build VMs (-enable-cleanup)")?;
            for (what, names) in [
                ("instance", &swept.instances),
                ("disk", &swept.disks),
                ("image", &swept.images),
            ] {
                for name in names {
                    log(LogLine::Note(&format!(
                        "-enable-cleanup: deleted old {what} {name}"
                    )));
                }
            }
            // As upstream, a leftover that cannot be deleted does not stop the build.
            for failure in &swept.failures {
                log(LogLine::Note(&format!(
                    "-enable-cleanup: warning: {failure}"
                )));
            }
        }
        let prefix = g.gcs_prefix();
        let result = async {
            opts.gpu_deps_url = self.upload_deps(state, &prefix).await?;
            let outcome = finish::finish(state, &opts, self.backend.clone(), log).await?;
            if let (Outcome::Built, Some(sbom)) = (outcome, sbom) {
                sbom.write(log).await?;
            }
            if outcome == Outcome::Built && self.o.deprecate_old_images {
                self.deprecate(&opts, log).await?;
            }
            Ok(())
        }
        .await;
        match self.gcs.delete_prefix(&g.gcs_bucket, &prefix).await {
            Ok(_) => {}
            Err(e) => log(LogLine::Note(&format!(
                "warning: could not delete gs://{}/{prefix}: {e:#}",
                g.gcs_bucket
            ))),
        }
        result
    }

    /// Uploads `install-gpu -deps-dir`'s files where the original puts them; returns the
    /// folder's `gs://` URL for the step, or `None` when there are none.
    async fn upload_deps(&self, state: &StateDir, prefix: &str) -> Result<Option<String>> {
        let files = state.load()?.build.gcs_files;
        if files.is_empty() {
            return Ok(None);
        }
        let bucket = &self.backend.options().gcs_bucket;
        let folder = format!("{prefix}gcs_files");
        for file in &files {
            let path = std::path::Path::new(file);
            let name = path
                .file_name()
                .with_context(|| format!("install-gpu dependency {file} names no file"))?
                .to_string_lossy();
            self.gcs
                .upload_file(bucket, &format!("{folder}/{name}"), path)
                .await
                .with_context(|| format!("uploading install-gpu dependency {file}"))?;
        }
        Ok(Some(format!("gs://{bucket}/{folder}")))
    }

    async fn deprecate(&self, opts: &FinishOptions, log: &mut dyn FnMut(LogLine)) -> Result<()> {
        let (project, name) = &self.image;
        let ttl = u64::try_from(self.o.old_image_ttl)
            .ok()
            .filter(|&s| s > 0)
            .map(Duration::from_secs);
        let deprecated = deprecate::deprecate_in_family(
            &self.compute,
            project,
            &opts.image.family,
            name,
            ttl,
            DEPRECATE_TIMEOUT,
        )
        .await
        .with_context(|| {
            format!(
                "deprecating the older images of family {}",
                opts.image.family
            )
        })?;
        if !deprecated.is_empty() {
            log(LogLine::Host(&format!(
                "Deprecated {} in favour of {name}",
                deprecated.join(", ")
            )));
        }
        Ok(())
    }
}
