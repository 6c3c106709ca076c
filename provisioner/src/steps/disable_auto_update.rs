//! DisableAutoUpdate: masks update-engine.service on the kernel command line in the ESP's grub.cfg.

use anyhow::Result;

use crate::boot::esp;
use crate::host::Host;

/// Masks update-engine.service in grub.cfg.
pub fn run(host: &Host) -> Result<()> {
    esp::mask_units(host, &["update-engine.service"])
}
