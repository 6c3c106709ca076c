//! How a provisioning run, or one of its stages, ends when it does not fail: done, or
//! stopped for a reboot after which `provisioner resume` carries on.

/// The result of a stage that may need the VM to reboot before anything else can happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// The stage finished; the run goes on.
    Done,
    /// The kernel must see a new partition table, or the VM must boot from the other root,
    /// before the run can go on: reboot, then `resume`.
    Reboot,
}

/// What the provisioner prints when it stops for a reboot: the original's words, which
/// the build log shows.
pub const REBOOT_MESSAGE: &str = "Reboot is required to continue provisioning. Please reboot the system and resume provisioning with the 'resume' subcommand.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_message_is_the_originals() {
        assert_eq!(
            REBOOT_MESSAGE,
            "Reboot is required to continue provisioning. Please reboot the system and resume provisioning with the 'resume' subcommand."
        );
    }
}
