//! The emulator's state: resources as GCE JSON, operations, faults, scripts, the request log,
//! ids and fingerprints.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cos_customizer_core::backend::{DiskId, VmId};

use base64::Engine;
use serde_json::{Map, Value};

use crate::boot::{Boot, Job};
use crate::faults::Fault;
use crate::links::{link, unlink};
use crate::operation::Operation;
use crate::reply::ApiError;
use crate::route::Route;
use crate::script::Script;
use crate::seed::Seed;
use crate::serial_buffer::SerialBuffer;

/// One request as the emulator received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// The HTTP method.
    pub method: String,
    /// The path relative to the compute base (`projects/p/zones/z/disks`).
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The JSON body, if the request had one.
    pub body: Option<Value>,
    /// The HTTP status the emulator answered with.
    pub status: u16,
}

/// Tunables of the emulated API.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Polls an operation stays RUNNING before DONE (after one poll as PENDING).
    pub op_running_polls: u32,
    /// How long `/wait` blocks on an operation that cannot finish yet.
    pub wait_deadline: Duration,
    /// Bytes of serial output kept per instance; older output is dropped.
    pub serial_window: usize,
    /// Instance GETs that show STOPPING after a `stop` before TERMINATED.
    pub stop_polls: u32,
    /// Where `rawDisk` sources are read from, if anywhere.
    pub storage: Option<String>,
    /// Whether a standard VM's time limit is refused (see `Options::refuse_time_limits`).
    pub refuse_time_limits: bool,
    /// Every how many stops the instance shows DEPROVISIONING for a GET before TERMINATED
    /// (0: never).
    pub deprovisioning_every: u32,
}

/// An instance: scripted, or a QEMU VM in boot mode.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    /// The resource JSON except `status`.
    pub json: Map<String, Value>,
    /// PROVISIONING, STAGING, RUNNING, STOPPING, DEPROVISIONING or TERMINATED.
    pub status: &'static str,
    /// What the test scripted for it.
    pub script: Script,
    /// Serial ports 1 to 4.
    pub serial: [SerialBuffer; 4],
    /// Reads of serial port 3 so far.
    pub serial_reads: u32,
    /// GETs left that show STOPPING.
    pub stop_polls_left: u32,
    /// Whether this stop shows DEPROVISIONING for a GET after STOPPING.
    pub deprovisioning: bool,
    /// Boot mode: the VM, once it has been created.
    pub vm: Option<VmId>,
    /// Boot mode: how far each port of the VM has been copied into [`Instance::serial`].
    pub vm_read: [u64; 4],
}

impl Instance {
    /// Goes STOPPING; TERMINATED after `polls` more GETs (and one DEPROVISIONING if
    /// `deprovisioning`).
    pub fn begin_stop(&mut self, polls: u32, deprovisioning: bool) {
        self.status = "STOPPING";
        self.stop_polls_left = polls;
        self.deprovisioning = deprovisioning;
    }

    /// The status one GET shows, moving the lifecycle on: STAGING once (then RUNNING), and
    /// after a stop STOPPING for so many GETs, DEPROVISIONING once if asked, TERMINATED.
    pub fn poll_status(&mut self) -> &'static str {
        match self.status {
            "STAGING" => {
                self.status = "RUNNING";
                return "STAGING";
            }
            "STOPPING" if self.stop_polls_left > 0 => self.stop_polls_left -= 1,
            "STOPPING" if self.deprovisioning => {
                self.deprovisioning = false;
                self.status = "DEPROVISIONING";
            }
            "STOPPING" | "DEPROVISIONING" => self.status = "TERMINATED",
            _ => {}
        }
        self.status
    }
}

/// An image.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    /// The resource JSON.
    pub json: Map<String, Value>,
    /// Loaded from the seed rather than inserted through the API.
    pub seeded: bool,
    /// Boot mode: the disk image file that disks made from this image start from.
    pub file: Option<PathBuf>,
}

/// The resources, keyed by path (`projects/p/zones/z/disks/d`); cloned to roll back a request
/// whose operation is scripted to fail.
#[derive(Clone, Debug, Default)]
pub(crate) struct Store {
    /// Disks as GCE JSON (without the computed `users`).
    pub disks: BTreeMap<String, Map<String, Value>>,
    /// Instances.
    pub instances: BTreeMap<String, Instance>,
    /// Images.
    pub images: BTreeMap<String, Image>,
}

impl Store {
    /// The instances (full links) that have the disk at `path` attached.
    pub fn disk_users(&self, path: &str) -> Vec<String> {
        let full = link(path);
        self.instances
            .iter()
            .filter(|(_, i)| {
                i.json["disks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|d| d["source"] == full.as_str())
            })
            .map(|(p, _)| link(p))
            .collect()
    }

    /// An instance that has the disk attached and is not TERMINATED, if any.
    pub fn running_user(&self, path: &str) -> Option<String> {
        self.disk_users(path).into_iter().find(|user| {
            let p = unlink(user);
            self.instances
                .get(p)
                .is_some_and(|i| i.status != "TERMINATED")
        })
    }
}

/// Everything the emulator holds.
pub(crate) struct State {
    /// Projects, zones, disk and machine types.
    pub seed: Seed,
    /// Tunables.
    pub settings: Settings,
    /// Disks, instances and images.
    pub store: Store,
    /// Operations by path.
    pub ops: BTreeMap<String, Operation>,
    /// `(project, requestId)` to the operation path it produced.
    pub request_ids: HashMap<(String, String), String>,
    /// Faults queued per route.
    pub faults: HashMap<Route, VecDeque<Fault>>,
    /// Scripts waiting for an instance whose name starts with the prefix.
    pub scripts: Vec<(String, Script)>,
    /// Statuses the next GETs of the disk, image or instance at a path show, one each, in
    /// place of its own (a test's script).
    pub shows: HashMap<String, VecDeque<String>>,
    /// Stops so far, for `Settings::deprovisioning_every`.
    pub stops: u32,
    /// Every request, in order.
    pub log: Vec<RequestRecord>,
    /// Boot mode: where instances run.
    pub boot: Option<Arc<Boot>>,
    /// Boot mode: the QEMU disk of each disk path.
    pub boot_disks: HashMap<String, DiskId>,
    /// Boot mode: work the last request started, keyed by the operation it keeps RUNNING.
    pub pending: Vec<(String, Job)>,
    rng: u64,
}

impl State {
    /// A state with no resources yet (`images::load_seeded` adds the seed's images).
    pub fn new(seed: Seed, settings: Settings, rng_seed: u64, boot: Option<Arc<Boot>>) -> State {
        State {
            seed,
            settings,
            store: Store::default(),
            ops: BTreeMap::new(),
            request_ids: HashMap::new(),
            faults: HashMap::new(),
            scripts: Vec::new(),
            shows: HashMap::new(),
            stops: 0,
            log: Vec::new(),
            boot,
            boot_disks: HashMap::new(),
            pending: Vec::new(),
            rng: rng_seed | 1,
        }
    }

    /// The next pseudo-random number (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Counts a stop; whether it shows DEPROVISIONING (`Settings::deprovisioning_every`).
    pub fn stop_deprovisions(&mut self) -> bool {
        self.stops += 1;
        let every = self.settings.deprovisioning_every;
        every > 0 && self.stops.is_multiple_of(every)
    }

    /// The status a test scripted for the next GET of the resource at `path`, if any.
    pub fn scripted_status(&mut self, path: &str) -> Option<String> {
        self.shows.get_mut(path)?.pop_front()
    }

    /// A new numeric-string id, 19 digits like GCE's.
    pub fn new_id(&mut self) -> String {
        (1_000_000_000_000_000_000 + self.next_u64() % 8_000_000_000_000_000_000).to_string()
    }

    /// A new opaque fingerprint: base64 of 8 random bytes.
    pub fn fingerprint(&mut self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.next_u64().to_be_bytes())
    }

    /// 404 unless the project is seeded.
    pub fn check_project(&self, project: &str) -> Result<(), ApiError> {
        if self.seed.projects.iter().any(|p| p == project) {
            Ok(())
        } else {
            Err(ApiError::not_found(&format!("projects/{project}")))
        }
    }

    /// 404 unless the project and the zone are seeded.
    pub fn check_zone(&self, project: &str, zone: &str) -> Result<(), ApiError> {
        self.check_project(project)?;
        if self.seed.zones.iter().any(|z| z == zone) {
            Ok(())
        } else {
            Err(ApiError::not_found(&format!(
                "projects/{project}/zones/{zone}"
            )))
        }
    }
}
