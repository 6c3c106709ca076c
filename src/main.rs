//! `cos-customizer`: parses the command line and hands each subcommand to its module.

mod cli;
mod commands;
mod completions;
#[cfg(test)]
mod flag_table;
mod help;
mod man_pages;

use std::process::ExitCode;

use cos_customizer_common::goflags;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = match goflags::parse_with::<Cli>(help::command(), std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 2, as the original's ExitUsageError; help exits 0.
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = || cos_customizer_core::state::StateDir::from_env(&cli.local_state_workdir);
    match cli.cmd {
        Cmd::StartImageBuild(o) => {
            commands::start_image_build::run(&state()?, &cli.compute_endpoint, o)
        }
        Cmd::RunScript(o) => commands::run_script::run(&state()?, o),
        Cmd::InstallGpu(o) => commands::install_gpu::run(state, &cli.storage_endpoint, o),
        Cmd::SealOem(_) => commands::seal_oem::run(&state()?),
        Cmd::DisableAutoUpdate(_) => commands::disable_auto_update::run(&state()?),
        Cmd::AnthosInstallerInstall(o) => commands::anthos_installer_install::run(&state()?, o),
        Cmd::FinishImageBuild(o) => commands::finish_image_build::run(
            &state()?,
            &cli.compute_endpoint,
            &cli.storage_endpoint,
            *o,
        ),
        Cmd::Completions { shell } => completions::write(shell, &mut std::io::stdout().lock()),
        Cmd::ManPages { dir } => {
            for path in man_pages::write(&dir)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Cmd::MetadataProxy { addr } => cos_customizer_qemu::proxy_stdio(&addr),
    }
}
