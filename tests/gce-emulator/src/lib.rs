//! A local emulator of a strict subset of the Compute Engine v1 API, for tests: disks,
//! instances, images, zone and global operations, serial port output and `setMetadata` with
//! fingerprints, in GCE's JSON shapes. Its instances are scripted (no VM runs: the test says
//! what serial port 3 shows and when the instance stops, and queues faults per route), or, in
//! boot mode ([`Options::boot`]), QEMU VMs of the images' files that really boot (see `boot.rs`).
//! Every request is logged; any route it does not serve answers 501 naming the route.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cos_customizer_gce_emulator::{Emulator, Fault, Options, Route, Script};
//! let emu = Emulator::start(Options::default()).await?;
//! emu.script("preload-vm-", Script::new().serial_after(1, "BuildStatus: hi\n").stop_on_daisy_end(2));
//! emu.inject(Route::DiskDelete, Fault::disk_in_use());
//! println!("{}", emu.compute_base());
//! # Ok(()) }
//! ```

// In layers, each using only the ones before it (tests/import_graph.rs checks there is no
// circle). Data and rules: the API's links, replies, faults, routes, scripts, timestamps, the
// discovery document and the seed, the scheduling rules, serial buffers, operations, boot mode's jobs; then the state
// that holds them;
mod boot;
mod discovery;
mod faults;
mod gcs_fetch;
mod links;
mod operation;
mod reply;
mod route;
mod scheduling;
mod script;
mod seed;
mod serial_buffer;
mod time;
mod validate;

mod model;

// then what acts on the state: operations, listing, boot mode's runner, the resources' handlers;
// and last the router over them all.
mod disks;
mod images;
mod instances;
mod jobs;
mod listing;
mod metadata;
mod ops;
mod serial;

mod router;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cos_customizer_core::http_server::{self, Body, Bytes, Request, Response, Server};

pub use boot::BootOptions;
pub use discovery::{Discovery, Method, Side};
pub use faults::Fault;
pub use model::RequestRecord;
pub use reply::ApiError;
pub use route::Route;
pub use script::Script;
pub use seed::{DiskType, MachineType, Seed};

use model::{Settings, State};

/// How to start an emulator.
#[derive(Clone, Debug)]
pub struct Options {
    /// The address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Projects, zones, types and images to start with.
    pub seed: Seed,
    /// Seeds the ids and fingerprints, so runs are repeatable.
    pub rng_seed: u64,
    /// Polls an operation stays RUNNING before DONE (it is PENDING until the first poll).
    pub op_running_polls: u32,
    /// How long `/wait` blocks on an operation that cannot finish yet (GCE: about 2 minutes).
    pub wait_deadline: Duration,
    /// Bytes of serial output kept per instance (GCE: 1 MiB); older output is dropped and
    /// `start` moves forward.
    pub serial_window: usize,
    /// Instance GETs that show STOPPING after `instances.stop` (or, in boot mode, the guest's
    /// poweroff), before TERMINATED.
    pub stop_polls: u32,
    /// A Cloud Storage JSON-API endpoint (`http://127.0.0.1:Q`, fake-gcs-server) that
    /// `images.insert` reads `rawDisk` sources from, checking each is a gzipped tar with
    /// `disk.raw` first; `None` accepts any source unread. Boot mode needs it.
    pub storage: Option<String>,
    /// Boot mode: instances are QEMU VMs; `None` scripts them.
    pub boot: Option<BootOptions>,
    /// Plays a project where GCE refuses a standard VM's termination action even with a time
    /// limit (`instanceTerminationAction` and `maxRunDuration`), with the 400 it gives one
    /// without, as it did before standard VMs could have time limits.
    pub refuse_time_limits: bool,
    /// Every how many instance stops (a guest's poweroff or `instances.stop`) show
    /// DEPROVISIONING for a GET between STOPPING and TERMINATED, as GCE does on some stops;
    /// 0: never (the default), 1: every stop.
    pub deprovisioning_every: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: Seed::default(),
            rng_seed: 0x5eed,
            op_running_polls: 0,
            wait_deadline: Duration::from_secs(2),
            serial_window: 1 << 20,
            stop_polls: 1,
            storage: None,
            boot: None,
            refuse_time_limits: false,
            deprovisioning_every: 0,
        }
    }
}

/// The emulator; [`Emulator::start`] runs one.
pub struct Emulator;

impl Emulator {
    /// Binds the listener and serves on the current tokio runtime until the handle drops.
    pub async fn start(opts: Options) -> anyhow::Result<Handle> {
        let settings = Settings {
            op_running_polls: opts.op_running_polls,
            wait_deadline: opts.wait_deadline,
            serial_window: opts.serial_window,
            stop_polls: opts.stop_polls,
            storage: opts.storage,
            refuse_time_limits: opts.refuse_time_limits,
            deprovisioning_every: opts.deprovisioning_every,
        };
        let boot = match opts.boot {
            Some(b) => Some(Arc::new(boot::Boot::new(b)?)),
            None => None,
        };
        let mut state = State::new(opts.seed, settings, opts.rng_seed, boot);
        images::load_seeded(&mut state)?;
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let server = Server::start(opts.listen, move |req| serve(shared.clone(), req))
            .await
            .context("starting the emulator's server")?;
        Ok(Handle { server, state })
    }
}

async fn serve(state: Arc<Mutex<State>>, req: Request<Bytes>) -> Option<Response<Body>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let (status, json) = router::respond(&state, &method, &path, query, req.body()).await;
    Some(http_server::answer(
        status,
        &[("content-type", "application/json; charset=UTF-8")],
        json.to_string(),
    ))
}

/// Splits and percent-decodes a query string (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the emulator holds that a test may have to clean up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Disk paths (`projects/p/zones/z/disks/d`).
    pub disks: Vec<String>,
    /// Instance paths.
    pub instances: Vec<String>,
    /// Image paths, seeded images excluded.
    pub images: Vec<String>,
}

impl Resources {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty() && self.instances.is_empty() && self.images.is_empty()
    }
}

/// A running emulator; dropping it stops the server.
pub struct Handle {
    server: Server,
    state: Arc<Mutex<State>>,
}

impl Handle {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The base a client joins `projects/…` to: `http://127.0.0.1:PORT/compute/v1/`.
    pub fn compute_base(&self) -> String {
        format!("http://{}/compute/v1/", self.server.addr())
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().log.clone()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        self.state().log.clear();
    }

    /// Queues `fault` for the next request on `route` that does not already take an earlier
    /// fault.
    ///
    /// # Panics
    /// If the fault cannot happen on the route (an operation error on a GET, say).
    pub fn inject(&self, route: Route, fault: Fault) {
        assert!(
            route.accepts(&fault),
            "{fault:?} cannot happen on {route:?}"
        );
        self.state()
            .faults
            .entry(route)
            .or_default()
            .push_back(fault);
    }

    /// Gives the next instance whose name starts with `name_prefix` this script (an empty
    /// prefix matches any name). Instances without one print nothing and keep running.
    pub fn script(&self, name_prefix: &str, script: Script) {
        self.state().scripts.push((name_prefix.to_string(), script));
    }

    /// Makes the next GETs of the disk, image or instance at `path` (`projects/p/zones/z/disks/d`,
    /// `projects/p/global/images/n`, `…/instances/i`, which need not exist yet) show these
    /// statuses, one each and after any queued before, in place of its own: any value GCE
    /// documents, or one it may add.
    pub fn show_statuses(&self, path: &str, statuses: &[&str]) {
        self.state()
            .shows
            .entry(path.to_string())
            .or_default()
            .extend(statuses.iter().map(|s| s.to_string()));
    }

    /// The statuses scripted for the resource at `path` that no GET has shown yet.
    pub fn statuses_left(&self, path: &str) -> Vec<String> {
        self.state()
            .shows
            .get(path)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Appends bytes to serial port 3 of the instance at `path`
    /// (`projects/p/zones/z/instances/i`); false if there is no such instance.
    pub fn append_serial(&self, path: &str, bytes: &[u8]) -> bool {
        serial::append(&mut self.state(), path, bytes)
    }

    /// Moves the `creationTimestamp` of the disk, instance or image at `path`
    /// (`projects/p/zones/z/disks/d`, `…/instances/i`, `projects/p/global/images/n`) `by` into
    /// the past, so a test can make a resource old; false if there is no such resource.
    ///
    /// # Panics
    /// If the resource's `creationTimestamp` is not RFC 3339 (a seed can set any string).
    pub fn backdate(&self, path: &str, by: Duration) -> bool {
        let mut state = self.state();
        let store = &mut state.store;
        let json = match store.disks.get_mut(path) {
            Some(disk) => disk,
            None => match store.instances.get_mut(path) {
                Some(instance) => &mut instance.json,
                None => match store.images.get_mut(path) {
                    Some(image) => &mut image.json,
                    None => return false,
                },
            },
        };
        let created = json
            .get("creationTimestamp")
            .and_then(serde_json::Value::as_str)
            .and_then(time::parse)
            .unwrap_or_else(|| panic!("{path}: creationTimestamp is not RFC 3339"));
        json.insert(
            "creationTimestamp".into(),
            time::format(created.saturating_sub(by).unwrap_or(jiff::Timestamp::MIN)).into(),
        );
        true
    }

    /// The image at `path` (`projects/p/global/images/n`) as `images.get` answers it.
    pub fn image(&self, path: &str) -> Option<serde_json::Value> {
        let state = self.state();
        Some(serde_json::Value::Object(
            state.store.images.get(path)?.json.clone(),
        ))
    }

    /// Boot mode: the file of the image at `path` (`projects/p/global/images/n`), once the image
    /// is READY.
    pub fn image_file(&self, path: &str) -> Option<std::path::PathBuf> {
        self.state().store.images.get(path)?.file.clone()
    }

    /// Boot mode: what is left in QEMU's work dir (disk overlays, VM logs and sockets); empty
    /// once every disk and instance is deleted.
    pub fn boot_files(&self) -> Vec<std::path::PathBuf> {
        let Some(boot) = self.state().boot.clone() else {
            return Vec::new();
        };
        let mut files: Vec<_> = std::fs::read_dir(boot.backend.work_dir())
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        // The work dir's own stamp, which lets a later run sweep it.
        files.retain(|f| !f.ends_with(cos_customizer_core::workdir::OWNER_FILE));
        files.sort();
        files
    }

    /// The disks, instances and non-seeded images that exist now.
    pub fn resources(&self) -> Resources {
        let state = self.state();
        Resources {
            disks: state.store.disks.keys().cloned().collect(),
            instances: state.store.instances.keys().cloned().collect(),
            images: state
                .store
                .images
                .iter()
                .filter(|(_, i)| !i.seeded)
                .map(|(p, _)| p.clone())
                .collect(),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The server stops accepting as `server` drops, right after this. The VMs stop and
        // QEMU's work dir goes once the last task using them ends (also after a panic in the
        // emulator, which a test reports better than a poisoned lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner()).boot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("filter=(family%20=%20cos)+AND+x&port=3&bad=%zz&e");
        assert_eq!(q[0], ("filter".into(), "(family = cos) AND x".into()));
        assert_eq!(q[1], ("port".into(), "3".into()));
        assert_eq!(q[2], ("bad".into(), "%zz".into()));
        assert_eq!(q[3], ("e".into(), String::new()));
    }
}
