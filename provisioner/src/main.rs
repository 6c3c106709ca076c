//! `provisioner`: runs inside the build VM, started by the startup script from the CIDATA disk.
//! Exit codes: 0 done, 1 failed, 2 usage, 3 reboot and `resume`.

mod boot;
mod build_contexts;
mod cleanup;
mod cli;
mod context;
mod disk;
mod flow;
mod gcs;
mod host;
mod metadata;
mod mount;
mod setup;
mod state;
mod steps;
mod tool;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::disk::repartition::RebootRequired;
use crate::host::Host;
use crate::metadata::Metadata;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(cli::go_style_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let ctx = Context {
        host: Host::system(),
        state_dir: cli.state_dir,
        docker_credential_gcr: cli.docker_credential_gcr,
        veritysetup_image: cli.veritysetup_image,
    };
    let result = match cli.command {
        Command::Run { config } => flow::run(&ctx, &config),
        Command::Resume => flow::resume(&ctx),
        Command::HandleDiskLayout {
            disk,
            state_part,
            oem_part,
            oem_size,
            reclaim_sda3,
        } => disk::layout::run(
            &ctx.host,
            &disk,
            state_part,
            oem_part,
            &oem_size,
            reclaim_sda3,
        ),
        Command::WaitMetadata { key, timeout } => Metadata::from_env().wait_for_attribute(
            &key,
            Duration::from_secs(timeout),
            Duration::from_secs(1),
        ),
    };
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<RebootRequired>().is_some() => {
            println!("{RebootRequired}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
