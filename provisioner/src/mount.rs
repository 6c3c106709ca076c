//! A mount that is undone when it goes out of scope, so an error never leaves the ESP mounted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::Host;

/// A mount made by [`Mounted::new`], undone by [`Mounted::close`] or on drop.
pub struct Mounted<'a> {
    host: &'a Host,
    target: PathBuf,
    active: bool,
}

impl<'a> Mounted<'a> {
    /// `mount <device> <target>`.
    pub fn new(host: &'a Host, device: &Path, target: &Path) -> Result<Self> {
        host.mount([device, target])
            .with_context(|| format!("mounting {} on {}", device.display(), target.display()))?;
        Ok(Mounted {
            host,
            target: target.to_path_buf(),
            active: true,
        })
    }

    /// Unmounts, reporting a failure (dropping only warns).
    pub fn close(mut self) -> Result<()> {
        self.active = false;
        self.host
            .umount(&self.target)
            .with_context(|| format!("unmounting {}", self.target.display()))
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = self.host.umount(&self.target) {
                eprintln!("warning: unmounting {}: {e:#}", self.target.display());
            }
        }
    }
}
