//! Dispatch: request checks (query parameters, body schema, `requestId`), faults, and the
//! handler of each route. Anything else answers 501 naming the route.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::discovery::{Discovery, Side};
use crate::faults::Fault;
use crate::model::{RequestRecord, State};
use crate::reply::{ApiError, Reply};
use crate::route::Route;
use crate::{disks, images, instances, jobs, metadata, ops, serial, validate};

use Route::*;

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
            jobs::refresh(shared, Some(&path)).await;
        }
        InstanceList | ImageInsert => jobs::refresh(shared, None).await,
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
    jobs::spawn(shared, jobs);
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
