//! Instance metadata: items checked against GCE's limits, opaque fingerprints that change on
//! every set, 412 `conditionNotMet` on a stale one, and the `DaisyEnd` acknowledgement that
//! stops a scripted instance.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::boot::Job;
use crate::model::State;
use crate::operation::Finish;
use crate::ops;
use crate::reply::{ApiError, Reply};

/// The largest value GCE takes for one item.
const MAX_VALUE: usize = 256 * 1024;
/// The largest total of keys and values.
const MAX_TOTAL: usize = 512 * 1024;

/// The key whose setting acknowledges the end of a build.
const DAISY_END: &str = "DaisyEnd";

/// Checks `items` (`[{key, value}]`) and returns them as GCE stores them.
fn checked_items(items: &Value) -> Result<Vec<Value>, ApiError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut out = Vec::new();
    for item in items.as_array().into_iter().flatten() {
        let key = item["key"].as_str().unwrap_or_default();
        let value = item["value"].as_str().unwrap_or_default();
        let key_ok = (1..=128).contains(&key.len())
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'metadata.items.key': '{key}'. Must be a match of regex '[a-zA-Z0-9-_]{{1,128}}'"
            )));
        }
        if !seen.insert(key.to_string()) {
            return Err(ApiError::invalid(format!("Duplicate metadata key '{key}'")));
        }
        if value.len() > MAX_VALUE {
            return Err(ApiError::invalid(format!(
                "Metadata value for key '{key}' is larger than 256 KB"
            )));
        }
        total += key.len() + value.len();
        out.push(json!({"key": key, "value": value}));
    }
    if total > MAX_TOTAL {
        return Err(ApiError::invalid("Metadata is larger than 512 KB in total"));
    }
    Ok(out)
}

/// A checked item (`{key, value}`) as a pair.
pub(crate) fn pair(item: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&item["key"]), text(&item["value"]))
}

/// The `metadata` of a new instance, from the insert body's `metadata` (fingerprint ignored).
pub(crate) fn initial(state: &mut State, metadata: Option<&Value>) -> Result<Value, ApiError> {
    let items = checked_items(&metadata.map(|m| m["items"].clone()).unwrap_or(Value::Null))?;
    Ok(shaped(state.fingerprint(), items))
}

fn shaped(fingerprint: String, items: Vec<Value>) -> Value {
    let mut m = json!({"kind": "compute#metadata", "fingerprint": fingerprint});
    if !items.is_empty() {
        m["items"] = Value::Array(items);
    }
    m
}

/// Another writer changes the instance's metadata: only its fingerprint moves.
pub(crate) fn concurrent_change(state: &mut State, path: &str) {
    let fingerprint = state.fingerprint();
    if let Some(i) = state.store.instances.get_mut(path) {
        i.json["metadata"]["fingerprint"] = fingerprint.into();
    }
}

/// The guest powers off after `DaisyEnd`, as its script says: through the statuses it
/// scripted, or STOPPING for so many GETs (and DEPROVISIONING on a share of stops).
fn stop_on_daisy_end(state: &mut State, path: &str) {
    let deprovisioning = state.stop_deprovisions();
    let instance = state.store.instances.get_mut(path).expect("checked above");
    let shows = instance.script.stop_shows.clone();
    if shows.is_empty() {
        let polls = instance.script.stop_on_daisy_end.unwrap_or_default();
        instance.begin_stop(polls, deprovisioning);
    } else {
        instance.status = "TERMINATED";
        state.shows.insert(path.to_string(), shows.into());
    }
}

/// `POST projects/{p}/zones/{z}/instances/{i}/setMetadata`: replaces every item.
pub(crate) fn set(state: &mut State, project: &str, zone: &str, path: &str, body: &Value) -> Reply {
    let current = state
        .store
        .instances
        .get(path)
        .ok_or_else(|| ApiError::not_found(path))?
        .json["metadata"]["fingerprint"]
        .clone();
    if body.get("fingerprint") != Some(&current) {
        return Err(ApiError::fingerprint_mismatch());
    }
    let items = checked_items(&body["items"])?;
    let daisy_end = items.iter().any(|i| i["key"] == DAISY_END);
    let fingerprint = state.fingerprint();
    let instance = state.store.instances.get_mut(path).expect("checked above");
    let old_items = instance.json["metadata"]["items"].clone();
    let had_daisy_end = old_items
        .as_array()
        .is_some_and(|items| items.iter().any(|i| i["key"] == DAISY_END));
    // Boot mode: the VM's metadata server learns what changed (a removed key stays there).
    let changed: Vec<(String, String)> = items
        .iter()
        .filter(|item| !old_items.as_array().is_some_and(|old| old.contains(item)))
        .map(pair)
        .collect();
    instance.json["metadata"] = shaped(fingerprint, items);
    let stops = daisy_end
        && !had_daisy_end
        && matches!(instance.status, "RUNNING" | "STAGING")
        && (instance.script.stop_on_daisy_end.is_some() || !instance.script.stop_shows.is_empty());
    let id = instance.json["id"].as_str().unwrap_or_default().to_string();
    if stops {
        stop_on_daisy_end(state, path);
    }
    let op = ops::start(
        state,
        project,
        Some(zone),
        "setMetadata",
        path,
        &id,
        Finish::Nothing,
    );
    if state.boot.is_some() && !changed.is_empty() {
        let job = Job::SetMetadata {
            path: path.to_string(),
            items: changed,
        };
        ops::queue(state, &op, job);
    }
    Ok(op)
}
