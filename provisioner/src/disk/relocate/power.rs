//! Simulated power cuts: every write a relocation makes first calls [`check`]. In the unit
//! tests, it fails once a set number of writes has happened, so a test can stop a
//! relocation at each write in turn and check what the disk looks like; otherwise it does
//! nothing.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

#[cfg(not(test))]
/// Nothing: real power cuts need no help.
pub fn check() -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
pub use sim::check;

/// A file whose writes go through [`check`] (for the GPT writer, which takes any writer).
pub struct Checked<'a>(pub &'a File);

impl Write for Checked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        check().map_err(std::io::Error::other)?;
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Seek for Checked<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}

#[cfg(test)]
pub mod sim {
    use std::cell::Cell;

    use anyhow::{bail, Result};

    thread_local! {
        static LEFT: Cell<Option<u64>> = const { Cell::new(None) };
        static DONE: Cell<u64> = const { Cell::new(0) };
    }

    /// Fails once the writes allowed by [`cut_after`] are used up.
    pub fn check() -> Result<()> {
        DONE.set(DONE.get() + 1);
        match LEFT.get() {
            Some(0) => bail!("simulated power cut"),
            Some(n) => LEFT.set(Some(n - 1)),
            None => {}
        }
        Ok(())
    }

    /// Allows `n` more writes (`None`: any number) and resets the count.
    pub fn cut_after(n: Option<u64>) {
        LEFT.set(n);
        DONE.set(0);
    }

    /// Writes since the last [`cut_after`].
    pub fn writes() -> u64 {
        DONE.get()
    }
}
