//! `finish-image-build`: turns the flags into [`FinishOptions`], opens the backend they
//! pick and hands both to [`cos_customizer_core::finish`], which does the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cos_customizer_common::{duration, env};
use cos_customizer_core::backend::{Backend, BackendType, ImageFormat};
use cos_customizer_core::cache::CacheOptions;
use cos_customizer_core::finish::{
    self, FinishOptions, ImageName, ImageOptions, SbomOptions, VmOptions,
};
use cos_customizer_core::preload::LogLine;
use cos_customizer_core::state::{BuildState, StateDir};
use cos_customizer_gce::backend::{Gce, GceBackend, GceOptions, POLL_INTERVAL};
use cos_customizer_gce::connect::{self, SbomStorage};
use cos_customizer_gce::housekeeping::Housekeeping;
use cos_customizer_gce::names;
use cos_customizer_qemu::{Accel, DiskBus, Qemu, QemuBackend, QemuOptions};

use crate::cli::{AccelKind, BackendKind, DiskInterfaceKind, FinishOpts};
use crate::commands::anthos_check;

const GIB: u64 = 1 << 30;

/// Flag checks that need no state, as the original's `validate`.
fn validate(o: &FinishOpts, kind: BackendKind) -> Result<()> {
    if !o.image_name.is_empty() && !o.image_suffix.is_empty() {
        bail!("only one of -image-name and -image-suffix may be given");
    }
    if kind == BackendKind::Gce {
        if o.image_name.is_empty() && o.image_suffix.is_empty() {
            bail!("one of -image-name or -image-suffix must be given");
        }
        for (flag, v) in [("-zone", &o.zone), ("-project", &o.project)] {
            if v.is_empty() {
                bail!("{flag} is required for a GCE build");
            }
        }
        if o.output_file.is_some() {
            bail!("-output-file is for QEMU builds; a GCE build makes the image -image-project/-image-name");
        }
        if o.hermetic {
            bail!("-hermetic is for QEMU builds; a GCE build VM without internet access is -no-external-ip");
        }
        if o.disk_interface.is_some() {
            bail!("-disk-interface is for QEMU builds; GCE attaches disks its own way");
        }
        if o.cache_dir.is_some() {
            bail!("-cache-dir is for local builds (-output-file): a GCE build's output is an image in GCE, which the cache does not hold");
        }
    } else if o.output_file.is_none() {
        bail!("-output-file is required for a QEMU build: the output image file to write");
    }
    if o.deprecate_old_images && o.image_family.is_empty() {
        bail!("-deprecate-old-images needs -image-family");
    }
    if o.old_image_ttl != 0 && !o.deprecate_old_images {
        bail!("-old-image-ttl needs -deprecate-old-images");
    }
    if o.old_image_ttl < 0 {
        bail!("-old-image-ttl must not be negative");
    }
    if o.sbom_input_path.is_empty() != o.sbom_output_path.is_empty() {
        bail!("-sbom-input-path and -sbom-output-path must be given together");
    }
    if o.disk_size_gb < 0 {
        bail!("-disk-size-gb must not be negative");
    }
    if o.cache_size_gb == 0 || o.cache_size_gb.checked_mul(GIB).is_none() {
        bail!("-cache-size-gb must be a size in GB above 0, e.g. -cache-size-gb=50");
    }
    Ok(())
}

fn backend_kind(o: &FinishOpts, s: &BuildState) -> BackendKind {
    o.backend.unwrap_or(
        if !s.source.local_file.is_empty() || o.output_file.is_some() {
            BackendKind::Qemu
        } else {
            BackendKind::Gce
        },
    )
}

/// An empty flag is an unset one.
fn given(v: &str) -> Option<String> {
    Some(v.to_string()).filter(|v| !v.is_empty())
}

fn options(o: &FinishOpts) -> Result<FinishOptions> {
    let mut labels = BTreeMap::new();
    for v in &o.labels {
        env::parse_flag_value(v, &mut labels).context("checking -labels")?;
    }
    let local_file = match &o.output_file {
        Some(p) => {
            let format = match &o.output_format {
                Some(f) => f.parse().context("checking -output-format")?,
                None => ImageFormat::from_path(p),
            };
            Some((absolute(p)?, format))
        }
        None => None,
    };
    Ok(FinishOptions {
        timeout: duration::parse(&o.timeout).context("checking -timeout")?,
        disk_size_gb: u64::try_from(o.disk_size_gb).ok().filter(|&gb| gb > 0),
        oem_size: given(&o.oem_size),
        vm: VmOptions {
            project: o.project.clone(),
            zone: o.zone.clone(),
            machine_type: o.machine_type.clone(),
            service_account: o.service_account.clone(),
            disk_type: o.disk_type.clone(),
            gpu_type: given(&o.gpu_type),
            network: given(&o.network),
            subnet: given(&o.subnet),
        },
        image: ImageOptions {
            name: match (given(&o.image_name), given(&o.image_suffix)) {
                (Some(n), _) => ImageName::Name(n),
                (None, Some(s)) => ImageName::Suffix(s),
                (None, None) => ImageName::Unnamed,
            },
            // The original leaves an empty one to fail at GCE; the build's project is meant.
            project: given(&o.image_project).unwrap_or_else(|| o.project.clone()),
            family: o.image_family.clone(),
            labels,
            inherit_labels: o.inherit_labels,
            licenses: o.licenses.clone(),
            local_file,
            overwrite: o.overwrite,
        },
        provisioner: o.provisioner.clone(),
        allow_backing_file: o.allow_backing_file,
        storage_endpoint: None,
        sbom: given(&o.sbom_input_path).map(|input_path| SbomOptions {
            input_path,
            output_path: o.sbom_output_path.clone(),
        }),
        cache: o.cache_dir.as_ref().map(|dir| CacheOptions {
            dir: dir.clone(),
            limit_bytes: o.cache_size_gb.saturating_mul(GIB),
            salt: o.cache_salt.clone(),
            // What the build's scripts see of the VM besides the image and the steps.
            vm_shape: vec![
                format!("hermetic={}", o.hermetic),
                format!(
                    "virtio-blk={}",
                    o.disk_interface == Some(DiskInterfaceKind::Virtio)
                ),
            ],
        }),
    })
}

/// The storage endpoint the build and its VM use when it is not Cloud Storage's own:
/// `-storage-endpoint`, else `STORAGE_EMULATOR_HOST`.
fn own_storage_endpoint(flag: &str) -> Option<String> {
    let endpoint = match flag {
        "" => cos_customizer_gce::storage::Gcs::default_endpoint(),
        e => e.trim_end_matches('/').to_string(),
    };
    (endpoint != cos_customizer_gce::storage::DEFAULT_STORAGE_ENDPOINT).then_some(endpoint)
}

/// An absolute path whose folder exists, so the output can be renamed into place.
fn absolute(p: &Path) -> Result<PathBuf> {
    let dir = cos_customizer_common::fsutil::parent_dir(p);
    let dir = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "checking -output-file {}: its folder {} must exist",
            p.display(),
            dir.display()
        )
    })?;
    let name = p
        .file_name()
        .with_context(|| format!("-output-file {} must name a file", p.display()))?;
    Ok(dir.join(name))
}

/// What `kind` is and can do, without opening it (for `-dry-run`).
fn backend_type(kind: BackendKind) -> &'static dyn BackendType {
    match kind {
        BackendKind::Qemu => &Qemu,
        BackendKind::Gce => &Gce,
    }
}

/// What keeps this machine from running `kind`'s VMs, for `-dry-run` (a real run finds
/// the same when it opens the backend).
fn host_problems(kind: BackendKind, o: &FinishOpts) -> Vec<String> {
    let checked = match kind {
        BackendKind::Qemu => qemu_options(o).and_then(|o| cos_customizer_qemu::check_host(&o)),
        BackendKind::Gce => Ok(()),
    };
    checked
        .err()
        .map(|e| format!("{e:#}"))
        .into_iter()
        .collect()
}

/// Opens the backend `kind` for the build `s` (inside a Tokio runtime: GCE's credentials
/// start their refresher there).
fn open(
    kind: BackendKind,
    o: &FinishOpts,
    opts: &FinishOptions,
    s: &BuildState,
    compute_endpoint: &str,
    storage_endpoint: &str,
) -> Result<Arc<dyn Backend>> {
    if kind == BackendKind::Qemu {
        let backend = QemuBackend::new(qemu_options(o)?)?;
        eprintln!(
            "QEMU backend: accelerator {}, work folder {}",
            backend.accel(),
            backend.work_dir().display()
        );
        return Ok(Arc::new(backend));
    }
    if s.build.gcs_bucket.is_empty() {
        bail!("the build state has no Cloud Storage bucket: give -gcs-bucket and -gcs-workdir to start-image-build");
    }
    let endpoint = if compute_endpoint.is_empty() {
        &s.build.gce_endpoint
    } else {
        compute_endpoint
    };
    let compute = connect::compute(endpoint)?;
    let gcs = connect::storage(storage_endpoint)?;
    let backend = GceBackend::new(
        compute,
        gcs,
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
    )
    .with_housekeeping(Housekeeping {
        sweep_old: o.enable_cleanup,
        deprecate_old_images: o.deprecate_old_images,
        old_image_ttl: u64::try_from(o.old_image_ttl)
            .ok()
            .filter(|&s| s > 0)
            .map(Duration::from_secs),
    });
    Ok(Arc::new(backend))
}

fn qemu_options(o: &FinishOpts) -> Result<QemuOptions> {
    let exe = std::env::current_exe().context("finding this program for the metadata relay")?;
    Ok(QemuOptions {
        accel: match o.accel {
            AccelKind::Auto => Accel::Auto,
            AccelKind::Kvm => Accel::Kvm,
            AccelKind::Tcg => Accel::Tcg,
        },
        // QEMU's guestfwd runs this per guest connection to 169.254.169.254:80.
        metadata_proxy: vec![
            exe.to_string_lossy().into_owned(),
            "__metadata-proxy".into(),
        ],
        disk_bus: match o.disk_interface {
            Some(DiskInterfaceKind::Virtio) => DiskBus::Virtio,
            Some(DiskInterfaceKind::Scsi) | None => DiskBus::Scsi,
        },
        hermetic: o.hermetic,
        ..Default::default()
    })
}

/// What `-dry-run` checks of GCE, creating nothing: that the endpoints answer as the APIs do,
/// the source image is there and the bucket exists (the notes to print on success).
fn check_gce_reachable(
    o: &FinishOpts,
    opts: &FinishOptions,
    s: &BuildState,
    compute_endpoint: &str,
    storage_endpoint: &str,
) -> Result<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let backend = open(
            BackendKind::Gce,
            o,
            opts,
            s,
            compute_endpoint,
            storage_endpoint,
        )?;
        let reports = backend.check_reachable(&s.source).await?;
        Ok(reports
            .iter()
            .map(|r| r.line().text().to_string())
            .collect())
    })
}

pub fn run(
    state: &StateDir,
    compute_endpoint: &str,
    storage_endpoint: &str,
    o: FinishOpts,
) -> Result<()> {
    let _lock = state.lock("finish-image-build", false)?;
    let s = state.load()?;
    let kind = backend_kind(&o, &s);
    // Bad flags keep the recorded steps: fix the flag and run finish again.
    validate(&o, kind)?;
    let mut opts = options(&o)?;
    opts.storage_endpoint = own_storage_endpoint(storage_endpoint);
    anthos_check::check(&s.prov, storage_endpoint, &mut |l| eprintln!("{l}"))?;
    if o.dry_run {
        let mut host = host_problems(kind, &o);
        if kind == BackendKind::Gce {
            match check_gce_reachable(&o, &opts, &s, compute_endpoint, storage_endpoint) {
                Ok(notes) => notes.iter().for_each(|n| eprintln!("{n}")),
                Err(e) => host.push(format!("{e:#}")),
            }
        }
        let (text, refusals) = finish::plan(state, s, &opts, backend_type(kind), host)?;
        print!("{text}");
        if !refusals.is_empty() {
            bail!(
                "a real run would be refused: {} (the build state is kept)",
                finish::refused(&refusals)
            );
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The build's progress goes to stdout, notes on the run to stderr.
    let mut log = |line: LogLine| match line {
        LogLine::Guest(l) | LogLine::Host(l) => println!("{l}"),
        LogLine::Note(l) => eprintln!("{l}"),
    };
    rt.block_on(async {
        let backend = open(kind, &o, &opts, &s, compute_endpoint, storage_endpoint)?;
        let storage = SbomStorage::new(storage_endpoint);
        finish::finish(state, s, &opts, backend, &storage, &mut log).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn opts(args: &[&str]) -> FinishOpts {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            o: FinishOpts,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv).unwrap().o
    }

    #[test]
    fn validate_failures() {
        let gce = |a: &[&str]| validate(&opts(a), BackendKind::Gce);
        gce(&["--image-name=x", "--zone=z", "--project=p"]).unwrap();
        let o = opts(&["--image-name=x", "--zone=z", "--project=p", "--timeout=abc"]);
        assert!(options(&o).is_err());
        assert!(gce(&[
            "--image-name=x",
            "--image-suffix=-s",
            "--zone=z",
            "--project=p"
        ])
        .is_err());
        assert!(gce(&["--zone=z", "--project=p"]).is_err());
        assert!(gce(&["--image-name=x", "--project=p"]).is_err());
        assert!(gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--deprecate-old-images=true"
        ])
        .is_err());
        assert!(gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--old-image-ttl=5"
        ])
        .is_err());
        assert!(gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--sbom-input-path=a"
        ])
        .is_err());
        // The input is looked for in the build context once the state is read.
        gce(&[
            "--image-name=x",
            "--zone=z",
            "--project=p",
            "--sbom-input-path=a",
            "--sbom-output-path=gs://b/f",
        ])
        .unwrap();
        let e = validate(&opts(&[]), BackendKind::Qemu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("-output-file"), "{e}");
        validate(&opts(&["--output-file=o.img"]), BackendKind::Qemu).unwrap();
        let e = gce(&["--image-name=x", "--zone=z", "--project=p", "--cache-dir=c"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("-cache-dir is for local builds"), "{e}");
        let qemu = |a: &[&str]| validate(&opts(a), BackendKind::Qemu);
        qemu(&["--output-file=o.img", "--cache-dir=c"]).unwrap();
        assert!(qemu(&["--output-file=o.img", "--cache-size-gb=0"]).is_err());
    }

    #[test]
    fn the_cache_key_sees_the_disk_bus_not_how_it_was_named() {
        let shape = |a: &[&str]| options(&opts(a)).unwrap().cache.unwrap().vm_shape;
        let default = shape(&["--cache-dir=c"]);
        assert_eq!(default, shape(&["--cache-dir=c", "--disk-interface=scsi"]));
        assert_ne!(
            default,
            shape(&["--cache-dir=c", "--disk-interface=virtio"])
        );
        assert_ne!(default, shape(&["--cache-dir=c", "--hermetic=true"]));
        assert_eq!(
            default,
            shape(&["--cache-dir=c", "--timeout=5m", "--accel=tcg"])
        );
        let cache = options(&opts(&["--cache-dir=c", "--cache-size-gb=2"]))
            .unwrap()
            .cache
            .unwrap();
        assert_eq!(cache.limit_bytes, 2 << 30);
        assert!(options(&opts(&[])).unwrap().cache.is_none());
    }
}
