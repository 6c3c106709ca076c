//! `gce-emulator`: runs the Compute Engine emulator standalone (scripted mode) until killed.
//!
//! `gce-emulator [--listen 127.0.0.1:0] [--seed seed.json] [--wait-deadline-ms N]
//! [--serial-window BYTES] [--storage http://127.0.0.1:Q]`
//! prints `listening on http://127.0.0.1:P/compute/v1/` once it serves.

use std::time::Duration;

use anyhow::{bail, Context};
use cos_customizer_gce_emulator::{Emulator, Options, Seed};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
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
            "-h" | "--help" => {
                println!("gce-emulator [--listen 127.0.0.1:0] [--seed seed.json] [--wait-deadline-ms N] [--serial-window BYTES] [--storage http://127.0.0.1:Q]");
                return Ok(());
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    let handle = Emulator::start(opts).await?;
    println!("listening on {}", handle.compute_base());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
