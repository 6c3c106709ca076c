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
use crate::ops::Operation;
use crate::reply::ApiError;
use crate::router::Route;
use crate::script::Script;
use crate::seed::Seed;
use crate::serial::SerialBuffer;

/// Where GCE's `selfLink`s live.
pub(crate) const API_ROOT: &str = "https://www.googleapis.com/compute/v1/";

/// The full URL of a resource path such as `projects/p/zones/z/disks/d`.
pub(crate) fn link(path: &str) -> String {
    format!("{API_ROOT}{path}")
}

/// The resource path of a full URL (the inverse of [`link`]); a path is returned as it is.
pub(crate) fn unlink(url: &str) -> &str {
    url.strip_prefix(API_ROOT).unwrap_or(url)
}

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
}

/// An instance: scripted, or a QEMU VM in boot mode.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    /// The resource JSON except `status`.
    pub json: Map<String, Value>,
    /// PROVISIONING, RUNNING, STOPPING or TERMINATED.
    pub status: &'static str,
    /// What the test scripted for it.
    pub script: Script,
    /// Serial ports 1 to 4.
    pub serial: [SerialBuffer; 4],
    /// Reads of serial port 3 so far.
    pub serial_reads: u32,
    /// GETs left that show STOPPING.
    pub stop_polls_left: u32,
    /// Boot mode: the VM, once it has been created.
    pub vm: Option<VmId>,
    /// Boot mode: how far each port of the VM has been copied into [`Instance::serial`].
    pub vm_read: [u64; 4],
}

impl Instance {
    /// Goes STOPPING; TERMINATED after `polls` more GETs.
    pub fn begin_stop(&mut self, polls: u32) {
        self.status = "STOPPING";
        self.stop_polls_left = polls;
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
    /// A state holding the seed's images.
    pub fn new(
        seed: Seed,
        settings: Settings,
        rng_seed: u64,
        boot: Option<Arc<Boot>>,
    ) -> anyhow::Result<State> {
        let mut state = State {
            seed,
            settings,
            store: Store::default(),
            ops: BTreeMap::new(),
            request_ids: HashMap::new(),
            faults: HashMap::new(),
            scripts: Vec::new(),
            log: Vec::new(),
            boot,
            boot_disks: HashMap::new(),
            pending: Vec::new(),
            rng: rng_seed | 1,
        };
        crate::seed::load_images(&mut state)?;
        Ok(state)
    }

    /// The next pseudo-random number (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A new numeric-string id, 19 digits like GCE's.
    pub fn new_id(&mut self) -> String {
        (1_000_000_000_000_000_000 + self.next_u64() % 8_000_000_000_000_000_000).to_string()
    }

    /// A new opaque fingerprint: base64 of 8 random bytes.
    pub fn fingerprint(&mut self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.next_u64().to_be_bytes())
    }

    /// Queues boot-mode work and keeps the operation of `op` (a mutating call's answer)
    /// RUNNING until the work is done.
    pub fn queue(&mut self, op: &Value, job: Job) {
        let path = crate::ops::path_of(op);
        crate::ops::block(self, &path);
        self.pending.push((path, job));
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

/// An int64 field that GCE sends as a string and accepts as either form.
pub(crate) fn int64(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}
