//! `gce-emulator`: runs the Compute Engine emulator standalone until killed.
//!
//! `gce-emulator [--listen 127.0.0.1:0] [--seed seed.json] [--wait-deadline-ms N]
//! [--serial-window BYTES] [--storage http://127.0.0.1:Q] [--boot DIR]`
//! prints `listening on http://127.0.0.1:P/compute/v1/` once it serves. With `--boot`,
//! instances are QEMU VMs (QEMU's work dir and the images made through the API go under
//! DIR); without it they are scripted and print nothing.

use std::time::Duration;

use anyhow::{bail, Context};
use cos_customizer_gce_emulator::{BootOptions, Emulator, Options, Seed};
use cos_customizer_qemu::QemuOptions;

const USAGE: &str = "gce-emulator [--listen 127.0.0.1:0] [--seed seed.json] [--wait-deadline-ms N] [--serial-window BYTES] [--storage http://127.0.0.1:Q] [--boot DIR]";

/// QEMU's guestfwd runs this program per guest connection to the metadata address.
const METADATA_PROXY: &str = "__metadata-proxy";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some(METADATA_PROXY) {
        let addr = std::env::args()
            .nth(2)
            .context("__metadata-proxy needs an address")?;
        return cos_customizer_qemu::proxy_stdio(&addr);
    }
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "--listen" => opts.listen = value()?.parse().context("--listen takes HOST:PORT")?,
            "--seed" => opts.seed = Seed::from_file(value()?.as_ref())?,
            "--wait-deadline-ms" => {
                opts.wait_deadline = Duration::from_millis(
                    value()?
                        .parse()
                        .context("--wait-deadline-ms takes a number")?,
                )
            }
            "--serial-window" => {
                opts.serial_window = value()?
                    .parse()
                    .context("--serial-window takes a byte count")?
            }
            // fake-gcs-server's endpoint, which rawDisk sources are read from.
            "--storage" => opts.storage = Some(value()?),
            "--boot" => {
                let dir = std::path::PathBuf::from(value()?);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating --boot folder {}", dir.display()))?;
                let exe = std::env::current_exe().context("finding this program")?;
                opts.boot = Some(BootOptions {
                    images_dir: dir.join("images"),
                    qemu: QemuOptions {
                        parent_dir: dir,
                        metadata_proxy: vec![
                            exe.to_string_lossy().into_owned(),
                            METADATA_PROXY.into(),
                        ],
                        ..Default::default()
                    },
                });
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    if opts.boot.is_some() && opts.storage.is_none() {
        bail!("--boot needs --storage: disks of the build's CIDATA images are fetched from it");
    }
    let handle = Emulator::start(opts).await?;
    println!("listening on {}", handle.compute_base());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
