//! Command line: the original's flags and subcommands, in Go's single-dash style or clap's.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cos_customizer_common::goflags;
use cos_customizer_common::protocol::{ACK_WAIT_SECS, STATE_DIR};

/// The provisioner's command line.
#[derive(Debug, Parser)]
#[command(
    name = "provisioner",
    about = "Runs the recorded build steps inside the COS build VM and cleans the image"
)]
pub struct Cli {
    /// Where the provisioner keeps its state and build contexts between reboots.
    #[arg(long, global = true, default_value = STATE_DIR)]
    pub state_dir: PathBuf,
    /// docker-credential-gcr binary to install, so scripts can pull from GCR/Artifact Registry.
    #[arg(long, global = true)]
    pub docker_credential_gcr: Option<PathBuf>,
    /// The original's veritysetup container image for seal-oem; accepted and ignored, for
    /// its startup script, since seal-oem writes the dm-verity hash tree itself.
    #[arg(long = "veritysetup-image", global = true)]
    pub _veritysetup_image: Option<PathBuf>,
    /// The original's separate repartitioning tool; accepted for its startup script, but
    /// this binary does that work itself (at shutdown, from the exit ramdisk).
    #[arg(long = "handle-disk-layout-bin", global = true)]
    pub _handle_disk_layout_bin: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start provisioning from a config file.
    Run {
        /// Provisioner config (config.json on the CIDATA disk).
        #[arg(long)]
        config: PathBuf,
    },
    /// Continue provisioning after a reboot.
    Resume,
    /// Wait until a GCE metadata attribute exists (the end-of-build handshake).
    WaitMetadata {
        /// Instance attribute to wait for, e.g. DaisyEnd.
        key: String,
        /// Seconds to wait before giving up.
        #[arg(long, default_value_t = ACK_WAIT_SECS)]
        timeout: u64,
    },
}

/// Parses `args` (with `argv[0]` first) in Go's flag syntax or clap's, as the CLI does:
/// the original's startup script passes `-flag=value`, and a repeated flag keeps its last
/// value.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    goflags::parse(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use cos_customizer_common::protocol::ACK_METADATA_KEY;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        super::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn original_startup_script_line_parses() {
        let cli = parse(&[
            "provisioner",
            "-docker-credential-gcr=/mnt/disks/cidata/docker-credential-gcr_amd64",
            "-veritysetup-image=/mnt/disks/cidata/veritysetup_amd64.tar.gz",
            "-handle-disk-layout-bin=/mnt/disks/cidata/handle_disk_layout_bin_amd64",
            "run",
            "-config=/mnt/disks/cidata/config.json",
        ])
        .unwrap();
        assert_eq!(cli.state_dir, PathBuf::from(STATE_DIR));
        assert_eq!(
            cli.docker_credential_gcr.unwrap(),
            PathBuf::from("/mnt/disks/cidata/docker-credential-gcr_amd64")
        );
        match cli.command {
            Command::Run { config } => {
                assert_eq!(config, PathBuf::from("/mnt/disks/cidata/config.json"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn double_dash_and_separate_values() {
        let cli = parse(&["provisioner", "--state-dir", "/s", "resume"]).unwrap();
        assert_eq!(cli.state_dir, PathBuf::from("/s"));
        assert!(matches!(cli.command, Command::Resume));
        let cli = parse(&["provisioner", "resume", "-state-dir=/t"]).unwrap();
        assert_eq!(cli.state_dir, PathBuf::from("/t"));
    }

    #[test]
    fn wait_metadata_defaults_to_five_minutes() {
        let cli = parse(&["provisioner", "wait-metadata", ACK_METADATA_KEY]).unwrap();
        match cli.command {
            Command::WaitMetadata { key, timeout } => {
                assert_eq!((key.as_str(), timeout), (ACK_METADATA_KEY, 300))
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["provisioner", "wait-metadata", "K", "-timeout=5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::WaitMetadata { timeout: 5, .. }
        ));
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&["provisioner", "run"]).is_err(), "run needs -config");
        assert!(parse(&["provisioner"]).is_err());
        assert!(parse(&["provisioner", "bogus"]).is_err());
    }

    #[test]
    fn only_long_looking_flags_are_rewritten() {
        let out = goflags::translate(
            &Cli::command(),
            ["p", "-h", "-config=x", "--k", "--", "-y=z"].map(OsString::from),
        );
        assert_eq!(
            out,
            ["p", "-h", "--config=x", "--k", "--", "-y=z"].map(OsString::from)
        );
    }
}
