//! Routes: the table of what the emulator serves (each one a method of Google's discovery
//! document), request checks (query parameters, body schema, `requestId`), faults, and
//! dispatch. Anything else answers 501 naming the route.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::discovery::{Discovery, Side};
use crate::faults::Fault;
use crate::model::{RequestRecord, State};
use crate::reply::{ApiError, Reply};
use crate::{boot, disks, images, instances, metadata, ops, serial, validate};

/// Every route the emulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `zoneOperations.get`.
    ZoneOperationGet,
    /// `zoneOperations.wait`.
    ZoneOperationWait,
    /// `globalOperations.get`.
    GlobalOperationGet,
    /// `globalOperations.wait`.
    GlobalOperationWait,
    /// `disks.insert`.
    DiskInsert,
    /// `disks.get`.
    DiskGet,
    /// `disks.list`.
    DiskList,
    /// `disks.resize`.
    DiskResize,
    /// `disks.delete`.
    DiskDelete,
    /// `instances.insert`.
    InstanceInsert,
    /// `instances.get`.
    InstanceGet,
    /// `instances.list`.
    InstanceList,
    /// `instances.delete`.
    InstanceDelete,
    /// `instances.getSerialPortOutput`.
    InstanceSerialPort,
    /// `instances.setMetadata`.
    InstanceSetMetadata,
    /// `instances.stop`.
    InstanceStop,
    /// `images.insert`.
    ImageInsert,
    /// `images.get`.
    ImageGet,
    /// `images.list`.
    ImageList,
    /// `images.getFromFamily`.
    ImageGetFromFamily,
    /// `images.deprecate`.
    ImageDeprecate,
    /// `images.delete`.
    ImageDelete,
}

use Route::*;

/// `(route, HTTP method, path template, discovery resource, discovery method)`.
const TABLE: &[(Route, &str, &str, &str, &str)] = &[
    (
        ZoneOperationGet,
        "GET",
        "projects/{project}/zones/{zone}/operations/{operation}",
        "zoneOperations",
        "get",
    ),
    (
        ZoneOperationWait,
        "POST",
        "projects/{project}/zones/{zone}/operations/{operation}/wait",
        "zoneOperations",
        "wait",
    ),
    (
        GlobalOperationGet,
        "GET",
        "projects/{project}/global/operations/{operation}",
        "globalOperations",
        "get",
    ),
    (
        GlobalOperationWait,
        "POST",
        "projects/{project}/global/operations/{operation}/wait",
        "globalOperations",
        "wait",
    ),
    (
        DiskInsert,
        "POST",
        "projects/{project}/zones/{zone}/disks",
        "disks",
        "insert",
    ),
    (
        DiskGet,
        "GET",
        "projects/{project}/zones/{zone}/disks/{disk}",
        "disks",
        "get",
    ),
    (
        DiskList,
        "GET",
        "projects/{project}/zones/{zone}/disks",
        "disks",
        "list",
    ),
    (
        DiskResize,
        "POST",
        "projects/{project}/zones/{zone}/disks/{disk}/resize",
        "disks",
        "resize",
    ),
    (
        DiskDelete,
        "DELETE",
        "projects/{project}/zones/{zone}/disks/{disk}",
        "disks",
        "delete",
    ),
    (
        InstanceInsert,
        "POST",
        "projects/{project}/zones/{zone}/instances",
        "instances",
        "insert",
    ),
    (
        InstanceGet,
        "GET",
        "projects/{project}/zones/{zone}/instances/{instance}",
        "instances",
        "get",
    ),
    (
        InstanceList,
        "GET",
        "projects/{project}/zones/{zone}/instances",
        "instances",
        "list",
    ),
    (
        InstanceDelete,
        "DELETE",
        "projects/{project}/zones/{zone}/instances/{instance}",
        "instances",
        "delete",
    ),
    (
        InstanceSerialPort,
        "GET",
        "projects/{project}/zones/{zone}/instances/{instance}/serialPort",
        "instances",
        "getSerialPortOutput",
    ),
    (
        InstanceSetMetadata,
        "POST",
        "projects/{project}/zones/{zone}/instances/{instance}/setMetadata",
        "instances",
        "setMetadata",
    ),
    (
        InstanceStop,
        "POST",
        "projects/{project}/zones/{zone}/instances/{instance}/stop",
        "instances",
        "stop",
    ),
    (
        ImageInsert,
        "POST",
        "projects/{project}/global/images",
        "images",
        "insert",
    ),
    (
        ImageGet,
        "GET",
        "projects/{project}/global/images/{image}",
        "images",
        "get",
    ),
    (
        ImageList,
        "GET",
        "projects/{project}/global/images",
        "images",
        "list",
    ),
    (
        ImageGetFromFamily,
        "GET",
        "projects/{project}/global/images/family/{family}",
        "images",
        "getFromFamily",
    ),
    (
        ImageDeprecate,
        "POST",
        "projects/{project}/global/images/{image}/deprecate",
        "images",
        "deprecate",
    ),
    (
        ImageDelete,
        "DELETE",
        "projects/{project}/global/images/{image}",
        "images",
        "delete",
    ),
];

/// Query parameters every Google API takes.
const STANDARD_PARAMETERS: &[&str] = &[
    "alt",
    "fields",
    "key",
    "prettyPrint",
    "quotaUser",
    "userIp",
    "$.xgafv",
];

impl Route {
    /// Every route.
    pub fn all() -> impl Iterator<Item = Route> {
        TABLE.iter().map(|r| r.0)
    }

    fn row(
        self,
    ) -> &'static (
        Route,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every route is in the table")
    }

    /// The HTTP method.
    pub fn http_method(self) -> &'static str {
        self.row().1
    }

    /// The path template, relative to the compute base, as the discovery document writes it.
    pub fn template(self) -> &'static str {
        self.row().2
    }

    /// The discovery document's `(resource, method)`.
    pub fn discovery(self) -> (&'static str, &'static str) {
        (self.row().3, self.row().4)
    }

    /// Whether the route changes something and answers with an operation.
    pub fn is_mutation(self) -> bool {
        matches!(self.http_method(), "POST" | "DELETE") && !self.is_wait()
    }

    /// Whether the route is an operation's `/wait`.
    pub fn is_wait(self) -> bool {
        matches!(self, ZoneOperationWait | GlobalOperationWait)
    }

    /// Whether `fault` can happen on this route.
    pub fn accepts(self, fault: &Fault) -> bool {
        match fault {
            Fault::Http(_) => true,
            Fault::OpError { .. } | Fault::OpStaysRunning(_) => self.is_mutation(),
            Fault::WaitReturnsEarly => self.is_wait(),
            Fault::ConcurrentMetadataChange => self == InstanceSetMetadata,
        }
    }

    /// The route a request takes (`path` relative to the compute base), if the emulator
    /// serves it.
    pub fn of(method: &str, path: &str) -> Option<Route> {
        Route::parse(method, path).map(|r| r.0)
    }

    /// The route and its captured path segments for a request, if the emulator serves it.
    fn parse(method: &str, path: &str) -> Option<(Route, Vec<String>)> {
        let parts: Vec<&str> = path.split('/').collect();
        TABLE.iter().find_map(|(route, m, template, _, _)| {
            let shape: Vec<&str> = template.split('/').collect();
            if *m != method || shape.len() != parts.len() {
                return None;
            }
            let mut captured = Vec::new();
            for (part, want) in parts.iter().zip(&shape) {
                if want.starts_with('{') {
                    if part.is_empty() {
                        return None;
                    }
                    captured.push((*part).to_string());
                } else if want != part {
                    return None;
                }
            }
            Some((*route, captured))
        })
    }
}

/// Handles one request and logs it; returns the status and the JSON body.
pub(crate) async fn respond(
    shared: &Arc<Mutex<State>>,
    method: &str,
    raw_path: &str,
    query: Vec<(String, String)>,
    body: &[u8],
) -> (u16, Value) {
    let result = route(shared, method, raw_path, &query, body).await;
    let (status, json) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, e.envelope()),
    };
    let record = RequestRecord {
        method: method.to_string(),
        path: raw_path
            .strip_prefix("/compute/v1/")
            .unwrap_or(raw_path)
            .to_string(),
        query,
        body: serde_json::from_slice(body).ok(),
        status,
    };
    shared.lock().expect("state lock").log.push(record);
    (status, json)
}

async fn route(
    shared: &Arc<Mutex<State>>,
    method: &str,
    raw_path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Reply {
    let parsed = raw_path
        .strip_prefix("/compute/v1/")
        .and_then(|rel| Route::parse(method, rel));
    let Some((route, p)) = parsed else {
        return Err(ApiError::not_implemented(method, raw_path));
    };
    let (resource, name) = route.discovery();
    let m = Discovery::compute_v1()
        .method(resource, name)
        .expect("every route is in the discovery document");
    for (key, _) in query {
        if !m.parameters.contains(key) && !STANDARD_PARAMETERS.contains(&key.as_str()) {
            return Err(ApiError::invalid(format!(
                "Unknown query parameter '{key}' for {resource}.{name}"
            )));
        }
    }
    let body = match &m.request {
        Some(schema) => {
            let value: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::new(
                    400,
                    "parseError",
                    format!("Invalid JSON payload received. {e}"),
                )
            })?;
            Discovery::compute_v1()
                .check(schema, &value, Side::Request)
                .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
            value
        }
        None => Value::Null,
    };
    let fault = shared
        .lock()
        .expect("state lock")
        .faults
        .get_mut(&route)
        .and_then(|q| q.pop_front());
    if let Some(Fault::Http(e)) = fault {
        return Err(e);
    }
    if route.is_wait() {
        let path = op_path(route, &p);
        shared.lock().expect("state lock").check_project(&p[0])?;
        return ops::wait(shared, &path, fault == Some(Fault::WaitReturnsEarly)).await;
    }
    // A rawDisk source is read from storage before the state is locked: the read awaits.
    let raw_disk = match route {
        ImageInsert => images::read_raw_disk(shared, &body).await,
        _ => None,
    };
    // Boot mode: what the VMs printed and whether they still run, also read before locking.
    match route {
        InstanceGet | InstanceSerialPort => {
            let path = format!("projects/{}/zones/{}/instances/{}", p[0], p[1], p[2]);
            boot::refresh(shared, Some(&path)).await;
        }
        InstanceList | ImageInsert => boot::refresh(shared, None).await,
        _ => {}
    }
    let mut guard = shared.lock().expect("state lock");
    let state = &mut *guard;
    let request_id = crate::listing::arg(query, "requestId").map(str::to_string);
    if let (Some(rid), true) = (&request_id, m.parameters.iter().any(|x| x == "requestId")) {
        validate::request_id(rid)?;
        if let Some(op) = state.request_ids.get(&(p[0].clone(), rid.clone())) {
            return ops::current(state, op).ok_or_else(|| ApiError::not_found(op));
        }
    }
    if fault == Some(Fault::ConcurrentMetadataChange) {
        let path = instances::path(state, &p[0], &p[1], &p[2])?;
        metadata::concurrent_change(state, &path);
    }
    let snapshot = matches!(fault, Some(Fault::OpError { .. })).then(|| state.store.clone());
    let reply = dispatch(state, route, &p, query, &body, raw_disk);
    let jobs = std::mem::take(&mut state.pending);
    let reply = reply?;
    if route.is_mutation() {
        let op = ops::path_of(&reply);
        if let Some(rid) = request_id {
            state.request_ids.insert((p[0].clone(), rid), op.clone());
        }
        match fault {
            Some(Fault::OpError {
                code,
                message,
                http_status,
            }) => {
                state.store = snapshot.expect("taken for an operation error");
                ops::fail(state, &op, &code, &message, http_status);
                // Nothing happened, so nothing is to be done.
                return Ok(reply);
            }
            Some(Fault::OpStaysRunning(polls)) => ops::hold(state, &op, polls),
            _ => {}
        }
    }
    drop(guard);
    boot::spawn(shared, jobs);
    Ok(reply)
}

fn op_path(route: Route, p: &[String]) -> String {
    match route {
        ZoneOperationGet | ZoneOperationWait => {
            format!("projects/{}/zones/{}/operations/{}", p[0], p[1], p[2])
        }
        _ => format!("projects/{}/global/operations/{}", p[0], p[1]),
    }
}

fn dispatch(
    state: &mut State,
    route: Route,
    p: &[String],
    query: &[(String, String)],
    body: &Value,
    raw_disk: Option<images::RawDisk>,
) -> Reply {
    match route {
        ZoneOperationGet => {
            state.check_zone(&p[0], &p[1])?;
            ops::get(state, &op_path(route, p))
        }
        GlobalOperationGet => {
            state.check_project(&p[0])?;
            ops::get(state, &op_path(route, p))
        }
        ZoneOperationWait | GlobalOperationWait => {
            unreachable!("waits are handled before dispatch")
        }
        DiskInsert => disks::insert(state, &p[0], &p[1], body),
        DiskGet => disks::get(state, &p[0], &p[1], &p[2]),
        DiskList => disks::list(state, &p[0], &p[1], query),
        DiskResize => disks::resize(state, &p[0], &p[1], &p[2], body),
        DiskDelete => disks::delete(state, &p[0], &p[1], &p[2]),
        InstanceInsert => instances::insert(state, &p[0], &p[1], body),
        InstanceGet => instances::get(state, &p[0], &p[1], &p[2]),
        InstanceList => instances::list(state, &p[0], &p[1], query),
        InstanceDelete => instances::delete(state, &p[0], &p[1], &p[2]),
        InstanceSerialPort => {
            let path = instances::path(state, &p[0], &p[1], &p[2])?;
            serial::get(state, &path, query)
        }
        InstanceSetMetadata => {
            let path = instances::path(state, &p[0], &p[1], &p[2])?;
            metadata::set(state, &p[0], &p[1], &path, body)
        }
        InstanceStop => instances::stop(state, &p[0], &p[1], &p[2]),
        ImageInsert => images::insert(state, &p[0], query, body, raw_disk),
        ImageGet => images::get(state, &p[0], &p[1]),
        ImageList => images::list(state, &p[0], query),
        ImageGetFromFamily => images::from_family(state, &p[0], &p[1]),
        ImageDeprecate => images::deprecate(state, &p[0], &p[1], body),
        ImageDelete => images::delete(state, &p[0], &p[1]),
    }
}
