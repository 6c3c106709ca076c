//! `provisioner`: runs inside the build VM, started by the startup script from the CIDATA disk.
//! Its exit codes are the protocol's (`protocol::exit`): done, failed, usage, and reboot
//! then `resume`.

mod boot;
mod build_contexts;
mod child;
mod cleanup;
mod cli;
mod context;
mod disk;
mod docker_auth;
mod flow;
mod gcs;
mod host;
mod http;
mod metadata;
mod mount;
mod outcome;
mod setup;
mod state;
mod steps;
mod tool;

use std::ffi::OsStr;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use cos_customizer_common::protocol::exit;

use crate::cli::Command;
use crate::context::Context;
use crate::host::Host;
use crate::metadata::Metadata;
use crate::outcome::{Outcome, REBOOT_MESSAGE};

fn main() -> ExitCode {
    // args() would panic on an argument that is not UTF-8: compare argv[0] alone first.
    if std::env::args_os().next().as_deref() == Some(OsStr::new(disk::exitrd::PROGRAM)) {
        disk::exitrd::shutdown(&std::env::args().collect::<Vec<_>>());
    }
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's errors go to stderr; --help and --version, to stdout, are no failure.
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::DONE
            });
        }
    };
    let ctx = Context {
        host: Host::system(),
        state_dir: cli.state_dir,
        docker_credential_gcr: cli.docker_credential_gcr,
    };
    let result = match cli.command {
        Command::Run { config } => flow::run(&ctx, &config),
        Command::Resume => flow::resume(&ctx),
        Command::WaitMetadata { key, timeout } => Metadata::from_env()
            .wait_for_attribute(&key, Duration::from_secs(timeout), Duration::from_secs(1))
            .map(|()| Outcome::Done),
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(report(result))
}

/// Says how the run ended and returns its exit code; the startup script reboots on
/// [`exit::REBOOT`] and runs `resume` after.
fn report(result: Result<Outcome>) -> u8 {
    match result {
        Ok(Outcome::Done) => exit::DONE,
        Ok(Outcome::Reboot) => {
            println!("{REBOOT_MESSAGE}");
            exit::REBOOT
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            exit::FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_become_the_protocols_exit_codes() {
        assert_eq!(report(Ok(Outcome::Done)), exit::DONE);
        assert_eq!(report(Ok(Outcome::Reboot)), exit::REBOOT);
        assert_eq!(report(Err(anyhow::anyhow!("broken"))), exit::FAILED);
    }
}
