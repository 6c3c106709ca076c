//! `provisioner`: runs inside the build VM, started by the startup script from the CIDATA disk.
//! Exit codes: 0 done, 1 failed, 2 usage, 3 reboot and `resume`.

mod bootdisk;
mod cleanup;
mod cli;
mod contexts;
mod disk_layout;
mod esp;
mod ext4;
mod gcs;
mod grub_cfg;
mod host;
mod metadata;
mod mount;
mod provision;
mod repartition;
mod setup;
mod sfdisk;
mod shutdown_unit;
mod state;
mod steps;
mod tool;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::host::Host;
use crate::metadata::Metadata;
use crate::provision::Provisioner;
use crate::repartition::RebootRequired;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(cli::go_style_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let p = Provisioner {
        host: Host::system(),
        state_dir: cli.state_dir,
        docker_credential_gcr: cli.docker_credential_gcr,
        veritysetup_image: cli.veritysetup_image,
    };
    let result = match cli.command {
        Command::Run { config } => p.start(&config),
        Command::Resume => p.resume(),
        Command::HandleDiskLayout {
            disk,
            state_part,
            oem_part,
            oem_size,
            reclaim_sda3,
        } => disk_layout::run(
            &p.host,
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
