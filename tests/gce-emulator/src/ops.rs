//! Operations: PENDING → RUNNING → DONE one step per poll, errors on the operation,
//! operations held RUNNING, and `/wait` with a deadline.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::boot::Job;
use crate::links::link;
use crate::model::State;
use crate::operation::{Finish, Operation, Status};
use crate::reply::{ApiError, Reply};
use crate::time;

/// Starts an operation on `target` (a resource path) in the zone, or globally without one, and
/// returns it as the mutating call answers it (PENDING).
pub(crate) fn start(
    state: &mut State,
    project: &str,
    zone: Option<&str>,
    kind: &str,
    target: &str,
    target_id: &str,
    finish: Finish,
) -> Value {
    let now = jiff::Timestamp::now();
    let name = format!(
        "operation-{}-{:012x}",
        now.as_millisecond(),
        state.next_u64() >> 16
    );
    let scope = match zone {
        Some(z) => format!("projects/{project}/zones/{z}"),
        None => format!("projects/{project}/global"),
    };
    let path = format!("{scope}/operations/{name}");
    let mut json = Map::new();
    json.insert("kind".into(), "compute#operation".into());
    json.insert("id".into(), state.new_id().into());
    json.insert("name".into(), name.into());
    if zone.is_some() {
        json.insert("zone".into(), link(&scope).into());
    }
    json.insert("operationType".into(), kind.into());
    json.insert("targetLink".into(), link(target).into());
    json.insert("targetId".into(), target_id.into());
    json.insert("user".into(), "gce-emulator@localhost".into());
    json.insert("insertTime".into(), time::format(now).into());
    json.insert("selfLink".into(), link(&path).into());
    let op = Operation {
        json,
        status: Status::Pending,
        running_left: state.settings.op_running_polls,
        busy: false,
        finish,
        error: None,
    };
    let out = op.to_json();
    state.ops.insert(path, op);
    out
}

/// Queues boot-mode work and keeps the operation of `op` (a mutating call's answer)
/// RUNNING until the work is done.
pub(crate) fn queue(state: &mut State, op: &Value, job: Job) {
    let path = path_of(op);
    block(state, &path);
    state.pending.push((path, job));
}

/// The operation path in a mutating call's answer.
pub(crate) fn path_of(op: &Value) -> String {
    crate::links::unlink(op["selfLink"].as_str().unwrap_or_default()).to_string()
}

/// Makes the operation end DONE with this error, doing nothing else.
pub(crate) fn fail(state: &mut State, path: &str, code: &str, message: &str, http: u16) {
    if let Some(op) = state.ops.get_mut(path) {
        op.error = Some((code.to_string(), message.to_string(), http));
        op.finish = Finish::Nothing;
        op.busy = false;
    }
}

/// Keeps the operation RUNNING for `polls` more polls.
pub(crate) fn hold(state: &mut State, path: &str, polls: u32) {
    if let Some(op) = state.ops.get_mut(path) {
        op.running_left += polls;
    }
}

/// Keeps the operation RUNNING until [`work_done`] is called for it.
pub(crate) fn block(state: &mut State, path: &str) {
    if let Some(op) = state.ops.get_mut(path) {
        op.busy = true;
    }
}

/// Ends what [`block`] waited for: the operation can go DONE, with `error` if the work failed
/// (`(code, message, HTTP status)`).
pub(crate) fn work_done(state: &mut State, path: &str, error: Option<(String, String, u16)>) {
    if let Some(op) = state.ops.get_mut(path) {
        op.busy = false;
        if let Some((code, message, http)) = error {
            op.error = Some((code, message, http));
            op.finish = Finish::Nothing;
        }
    }
}

/// The current answer for the operation at `path`, as a retried request sees it.
pub(crate) fn current(state: &State, path: &str) -> Option<Value> {
    state.ops.get(path).map(Operation::to_json)
}

/// `GET …/operations/{op}`: one poll.
pub(crate) fn get(state: &mut State, path: &str) -> Reply {
    step(state, path, true)?;
    current(state, path).ok_or_else(|| ApiError::not_found(path))
}

/// Advances the operation one step; `count_hold` spends one poll of a hold while RUNNING.
/// Returns whether it is DONE.
fn step(state: &mut State, path: &str, count_hold: bool) -> Result<bool, ApiError> {
    let op = state
        .ops
        .get_mut(path)
        .ok_or_else(|| ApiError::not_found(path))?;
    let now = time::now();
    match op.status {
        Status::Pending => {
            op.status = Status::Running;
            op.json.insert("startTime".into(), now.into());
        }
        Status::Running if op.busy => {}
        Status::Running if op.running_left > 0 => {
            if count_hold {
                op.running_left -= 1;
            }
        }
        Status::Running => {
            op.status = Status::Done;
            op.json.insert("endTime".into(), now.into());
            let finish = op.finish.clone();
            apply(state, &finish);
        }
        Status::Done => {}
    }
    Ok(state.ops[path].status == Status::Done)
}

fn apply(state: &mut State, finish: &Finish) {
    match finish {
        Finish::Nothing => {}
        Finish::InstanceRunning(path) => {
            if let Some(i) = state.store.instances.get_mut(path) {
                if i.status == "PROVISIONING" {
                    i.status = "STAGING";
                }
            }
        }
        Finish::DiskReady(path) => {
            if let Some(d) = state.store.disks.get_mut(path) {
                d.insert("status".into(), "READY".into());
            }
        }
        Finish::ImageReady(path) => {
            if let Some(i) = state.store.images.get_mut(path) {
                i.json.insert("status".into(), "READY".into());
            }
        }
    }
}

/// `POST …/operations/{op}/wait`: finishes the operation unless it is held, in which case it
/// spends one poll of the hold and answers RUNNING at the deadline, or busy, in which case it
/// answers when the work ends or at the deadline. `early` answers after a single step.
pub(crate) async fn wait(shared: &Mutex<State>, path: &str, early: bool) -> Reply {
    let deadline = Instant::now() + shared.lock().expect("state lock").settings.wait_deadline;
    loop {
        let busy = {
            let mut state = shared.lock().expect("state lock");
            if early {
                step(&mut state, path, true)?;
                return current(&state, path).ok_or_else(|| ApiError::not_found(path));
            }
            loop {
                let op = state.ops.get(path);
                if op.is_some_and(|op| op.status == Status::Running && op.busy) {
                    break true;
                }
                let held = op.is_some_and(|op| op.status == Status::Running && op.running_left > 0);
                if held {
                    step(&mut state, path, true)?;
                    break false;
                }
                if step(&mut state, path, false)? {
                    return current(&state, path).ok_or_else(|| ApiError::not_found(path));
                }
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !busy || left.is_zero() {
            tokio::time::sleep(left).await;
            let state = shared.lock().expect("state lock");
            return current(&state, path).ok_or_else(|| ApiError::not_found(path));
        }
        tokio::time::sleep(left.min(BUSY_POLL)).await;
    }
}

/// How often `/wait` looks again at an operation that boot-mode work keeps RUNNING.
const BUSY_POLL: Duration = Duration::from_millis(100);
