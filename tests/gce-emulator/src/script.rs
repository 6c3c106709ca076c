//! What a scripted instance does: serial port 3 output after so many reads, output on a resize
//! of one of its disks, and a shutdown when `DaisyEnd` is set.

/// A script for one instance; built with the chained methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    /// `(reads, bytes)`: the bytes appear on serial port 3 once it has been read `reads` times.
    pub(crate) serial: Vec<(u32, Vec<u8>)>,
    /// Bytes appended when a disk attached to the instance is resized.
    pub(crate) on_resize: Vec<u8>,
    /// Instance GETs that show STOPPING after `DaisyEnd` is set, before TERMINATED; `None`
    /// keeps the instance RUNNING.
    pub(crate) stop_on_daisy_end: Option<u32>,
    /// Statuses its GETs show, one each, from its first GET on (in place of its own).
    pub(crate) shows: Vec<String>,
    /// Statuses its GETs show, one each, once `DaisyEnd` is set (it is TERMINATED after them).
    pub(crate) stop_shows: Vec<String>,
}

impl Script {
    /// An instance that prints nothing and keeps running.
    pub fn new() -> Self {
        Script::default()
    }

    /// Appends `bytes` to serial port 3 once the port has been read `reads` times
    /// (0: there from the first read). Steps apply in the order given.
    pub fn serial_after(mut self, reads: u32, bytes: impl Into<Vec<u8>>) -> Self {
        self.serial.push((reads, bytes.into()));
        self
    }

    /// Appends `bytes` to serial port 3 whenever a disk attached to the instance is resized.
    pub fn on_resize(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.on_resize = bytes.into();
        self
    }

    /// On a `setMetadata` that sets `DaisyEnd`, goes STOPPING, and TERMINATED after `polls`
    /// instance GETs.
    pub fn stop_on_daisy_end(mut self, polls: u32) -> Self {
        self.stop_on_daisy_end = Some(polls);
        self
    }

    /// Its first GETs show these statuses, one each, in place of its own (which goes on:
    /// serial output and `DaisyEnd` work as for a RUNNING instance).
    pub fn shows(mut self, statuses: &[&str]) -> Self {
        self.shows = statuses.iter().map(|s| s.to_string()).collect();
        self
    }

    /// On a `setMetadata` that sets `DaisyEnd`, stops: its GETs show these statuses, one
    /// each, and then TERMINATED.
    pub fn stop_showing(mut self, statuses: &[&str]) -> Self {
        self.stop_shows = statuses.iter().map(|s| s.to_string()).collect();
        self
    }
}
