//! The provisioner's context: the machine it changes, the folder it keeps between reboots,
//! and the tools it installs there. The flow, the setup, the steps and the cleanup all take it.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::host::Host;

/// What every stage of a provisioning run works with.
#[derive(Debug, Clone)]
pub struct Context {
    /// The machine the provisioner changes.
    pub host: Host,
    /// Where the state file, the build contexts and the installed tools live between reboots.
    pub state_dir: PathBuf,
    /// The docker-credential-gcr binary to install, so scripts can pull from GCR/Artifact Registry.
    pub docker_credential_gcr: Option<PathBuf>,
}

impl Context {
    /// `<state>/bin`: tools the steps may call, first on their PATH.
    pub fn bin_dir(&self) -> PathBuf {
        self.state_dir.join("bin")
    }

    /// PATH for child processes: `<state>/bin` first, then ours.
    pub fn child_path(&self) -> OsString {
        let mut path = self.bin_dir().into_os_string();
        path.push(":");
        path.push(
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        path
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::host::tests::fake_host;
    use std::path::Path;

    /// A context aimed at `root`, with systemctl, mount and umount doing nothing.
    pub fn test_context(root: &Path) -> Context {
        Context {
            host: fake_host(root),
            state_dir: root.join("state"),
            docker_credential_gcr: Some("/bin/true".into()),
        }
    }

    #[test]
    fn tools_come_first_on_the_childrens_path() {
        let ctx = test_context(Path::new("/r"));
        assert_eq!(ctx.bin_dir(), Path::new("/r/state/bin"));
        assert!(ctx
            .child_path()
            .to_string_lossy()
            .starts_with("/r/state/bin:"));
    }
}
