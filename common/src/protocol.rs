//! The host-to-VM protocol, in one place: what the preloader puts on the CIDATA disk and
//! where the guest finds it, the lines the provisioner prints on serial port 3 and the
//! preloader matches, the metadata acknowledgement, and the provisioner's exit codes.
//!
//! Every string here is the original's, so its Daisy workflow and ours read the same log.

/// Serial port the provisioner reports on, as GCE counts (1-based): the guest's ttyS2.
pub const STATUS_PORT: u8 = 3;
/// The guest tty behind [`STATUS_PORT`] on x86-64.
pub const STATUS_TTY_X86_64: &str = "/dev/ttyS2";
/// The guest tty behind [`STATUS_PORT`] on arm64.
pub const STATUS_TTY_AARCH64: &str = "/dev/ttyAMA2";

/// Prefix of every progress line; the preloader forwards those lines to the build log.
pub const STATUS_PREFIX: &str = "BuildStatus: ";
/// The line that ends a successful build.
pub const SUCCESS_MARKER: &str = "BuildSucceeded:";
/// The line that ends a failed build.
pub const FAILURE_MARKER: &str = "BuildFailed:";
/// The trigger's text, spelled once for both constants below (`concat!` takes literals).
macro_rules! resize_trigger {
    () => {
        "waiting for the boot disk size to change"
    };
}
/// The part of the provisioner's wait-for-resize line that the preloader matches (Daisy's
/// `SuccessMatch`); on it, the boot disk is grown to the requested size.
pub const RESIZE_TRIGGER: &str = resize_trigger!();
/// The whole line the provisioner prints while it waits for the boot disk to grow.
pub const RESIZE_WAIT_LINE: &str = concat!(
    "WaitForDiskResize is set; ",
    resize_trigger!(),
    ". Timeout is 3 minutes"
);

/// The instance metadata key the preloader sets once it has read the success line; the
/// guest waits for it before powering off, so no serial output is lost.
pub const ACK_METADATA_KEY: &str = "DaisyEnd";
/// The value the preloader sets [`ACK_METADATA_KEY`] to.
pub const ACK_METADATA_VALUE: &str = "ack";
/// How long the guest waits for [`ACK_METADATA_KEY`] before shutting down anyway, in seconds.
pub const ACK_WAIT_SECS: u64 = 300;

/// What the exit ramdisk prints on serial port 3 (after [`STATUS_PREFIX`]) as it starts
/// moving partitions at shutdown, and as it ends (either way).
pub const RELOCATION_START: &str = "Relocating partitions at shutdown";
/// See [`RELOCATION_START`].
pub const RELOCATION_END: &str = "Relocation complete";
/// See [`RELOCATION_START`].
pub const RELOCATION_FAILED: &str = "Relocation failed";

/// The provisioner's exit codes.
pub mod exit {
    /// Every step ran; the image is clean.
    pub const DONE: u8 = 0;
    /// A step or stage failed.
    pub const FAILED: u8 = 1;
    /// The command line was wrong.
    pub const USAGE: u8 = 2;
    /// Reboot the VM, then run `provisioner resume`.
    pub const REBOOT: u8 = 3;
}

/// Where the provisioner keeps its state and build contexts between reboots; the
/// startup script runs `run` when it is absent and `resume` when it is there.
pub const STATE_DIR: &str = "/var/lib/.cos-customizer";

/// The CIDATA disk's volume label (cloud-init's NoCloud source looks for it too).
pub const CIDATA_LABEL: &str = "CIDATA";
/// Where the startup script mounts the CIDATA disk in the guest.
pub const CIDATA_MOUNT: &str = "/mnt/disks/cidata";
/// The provisioner binary on CIDATA is `provisioner_<arch>`; this is its prefix.
pub const PROVISIONER_PREFIX: &str = "provisioner_";
/// The x86-64 provisioner's file name on CIDATA.
pub const PROVISIONER_AMD64: &str = "provisioner_amd64";
/// The provisioner config's file name on CIDATA.
pub const CONFIG_JSON: &str = "config.json";
/// The build context archive's file name, on CIDATA and in the state folder.
pub const BUILD_CONTEXT_TAR: &str = "user_build_context.tar";
/// The name the steps use for the user's build context.
pub const USER_CONTEXT: &str = "user";

/// The `file://` URL of a CIDATA file as the provisioner sees it in the guest.
pub fn cidata_url(name: &str) -> String {
    format!("file://{CIDATA_MOUNT}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_line_holds_the_trigger() {
        // The original's exact line: its Daisy workflow matches the trigger in it.
        assert_eq!(
            RESIZE_WAIT_LINE,
            "WaitForDiskResize is set; waiting for the boot disk size to change. Timeout is 3 minutes"
        );
        assert!(RESIZE_WAIT_LINE.contains(RESIZE_TRIGGER));
        assert!(PROVISIONER_AMD64.starts_with(PROVISIONER_PREFIX));
    }

    #[test]
    fn cidata_urls_point_into_the_mount() {
        assert_eq!(
            cidata_url(BUILD_CONTEXT_TAR),
            "file:///mnt/disks/cidata/user_build_context.tar"
        );
    }
}
