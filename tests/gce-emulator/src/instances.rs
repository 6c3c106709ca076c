//! Instances: insert (disks attached by `source`, strict machine type and network forms),
//! get, list with a label filter, delete (with `autoDelete` disks), stop, and their status:
//! PROVISIONING until the insert operation is DONE, STAGING for a GET, RUNNING, and after a
//! stop STOPPING for so many GETs, DEPROVISIONING on a share of stops, TERMINATED (GCE's
//! instance life cycle); a test can script the statuses GETs show.

use std::collections::BTreeMap;
use std::time::Duration;

use cos_customizer_core::backend::VmSpec;
use serde_json::{json, Map, Value};

use crate::boot::Job;
use crate::links::link;
use crate::listing;
use crate::metadata;
use crate::model::{Instance, State};
use crate::operation::Finish;
use crate::ops;
use crate::reply::{ApiError, Reply};
use crate::scheduling;
use crate::script::Script;
use crate::seed::MachineType;
use crate::serial_buffer::SerialBuffer;
use crate::time;
use crate::validate::{self, DISK, MACHINE_TYPE, NETWORK, SUBNETWORK};

/// The fields `instances.insert` takes that the emulator models.
const INSERT_FIELDS: &[&str] = &[
    "name",
    "machineType",
    "disks",
    "networkInterfaces",
    "metadata",
    "labels",
    "scheduling",
];
/// The fields `instances.insert` takes and returns as they came.
const PASS_THROUGH: &[&str] = &[
    "description",
    "serviceAccounts",
    "guestAccelerators",
    "tags",
    "shieldedInstanceConfig",
    "canIpForward",
    "deletionProtection",
    "minCpuPlatform",
];
/// The fields of an attached disk the emulator models (no `initializeParams`).
const DISK_FIELDS: &[&str] = &[
    "source",
    "boot",
    "autoDelete",
    "mode",
    "deviceName",
    "type",
    "interface",
];
/// The fields of a network interface the emulator models.
const NIC_FIELDS: &[&str] = &[
    "network",
    "subnetwork",
    "accessConfigs",
    "nicType",
    "stackType",
];

/// The path of an existing instance.
pub(crate) fn path(
    state: &State,
    project: &str,
    zone: &str,
    name: &str,
) -> Result<String, ApiError> {
    state.check_zone(project, zone)?;
    let path = format!("projects/{project}/zones/{zone}/instances/{name}");
    if state.store.instances.contains_key(&path) {
        Ok(path)
    } else {
        Err(ApiError::not_found(&path))
    }
}

fn to_json(instance: &Instance) -> Value {
    let mut json = instance.json.clone();
    json.insert("status".into(), instance.status.into());
    Value::Object(json)
}

fn attached_disks(
    state: &State,
    project: &str,
    zone: &str,
    disks: &Value,
) -> Result<Vec<Value>, ApiError> {
    let disks = disks
        .as_array()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::invalid("At least one disk is required"))?;
    let mut out = Vec::new();
    for (index, d) in disks.iter().enumerate() {
        validate::only_fields(d, DISK_FIELDS, "AttachedDisk")?;
        let source = d["source"].as_str().ok_or_else(|| {
            ApiError::invalid(format!(
                "Required field 'disks[{index}].source' not specified"
            ))
        })?;
        let parts =
            validate::reference_in(&format!("disks[{index}].source"), source, DISK, project)?;
        if parts[0] != project || parts[1] != zone {
            return Err(ApiError::invalid(format!(
                "Disk '{source}' must be in the instance's project and zone"
            )));
        }
        let disk_path = format!("projects/{project}/zones/{zone}/disks/{}", parts[2]);
        let disk = state
            .store
            .disks
            .get(&disk_path)
            .ok_or_else(|| ApiError::not_found(&disk_path))?;
        let mode = d["mode"].as_str().unwrap_or("READ_WRITE");
        if let Some(user) = state.store.disk_users(&disk_path).first() {
            return Err(ApiError::in_use(format!(
                "The disk resource '{disk_path}' is already being used by '{user}'"
            )));
        }
        let mut a = json!({
            "kind": "compute#attachedDisk",
            "type": "PERSISTENT",
            "mode": mode,
            "source": link(&disk_path),
            "deviceName": d["deviceName"].as_str().unwrap_or(&parts[2]),
            "index": index,
            "boot": d["boot"].as_bool().unwrap_or(false),
            "autoDelete": d["autoDelete"].as_bool().unwrap_or(false),
            "interface": d["interface"].as_str().unwrap_or("SCSI"),
            "diskSizeGb": disk["sizeGb"],
        });
        for field in ["licenses", "guestOsFeatures", "architecture"] {
            if let Some(v) = disk.get(field) {
                a[field] = v.clone();
            }
        }
        out.push(a);
    }
    if out[0]["boot"] != true || out.iter().filter(|d| d["boot"] == true).count() != 1 {
        return Err(ApiError::invalid(
            "The first disk, and only it, must be the boot disk",
        ));
    }
    Ok(out)
}

fn network_interfaces(
    project: &str,
    zone: &str,
    nics: Option<&Value>,
    seq: u64,
) -> Result<Vec<Value>, ApiError> {
    let default = json!([{}]);
    let nics = nics
        .unwrap_or(&default)
        .as_array()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("At least one network interface is required"))?;
    let region = zone.rsplit_once('-').map_or(zone, |r| r.0);
    let mut out = Vec::new();
    for (i, nic) in nics.iter().enumerate() {
        validate::only_fields(nic, NIC_FIELDS, "NetworkInterface")?;
        let mut o = json!({"kind": "compute#networkInterface", "name": format!("nic{i}"), "networkIP": format!("10.128.{}.{}", seq / 250 % 250, seq % 250 + 2)});
        let network = nic["network"].as_str().map(str::to_string);
        if let Some(s) = nic["subnetwork"].as_str() {
            let p = validate::reference_in("subnetwork", s, SUBNETWORK, project)?;
            if p[1] != region {
                return Err(ApiError::invalid(format!(
                    "Subnetwork '{s}' is not in region '{region}'"
                )));
            }
            o["subnetwork"] = link(&format!(
                "projects/{}/regions/{}/subnetworks/{}",
                p[0], p[1], p[2]
            ))
            .into();
        }
        let network = match (network, o.get("subnetwork")) {
            (Some(n), _) => Some(n),
            (None, None) => Some(format!("projects/{project}/global/networks/default")),
            (None, Some(_)) => None,
        };
        if let Some(n) = network {
            let p = validate::reference_in("network", &n, NETWORK, project)?;
            o["network"] = link(&format!("projects/{}/global/networks/{}", p[0], p[1])).into();
        }
        if let Some(configs) = nic["accessConfigs"].as_array() {
            let configs: Vec<Value> = configs
                .iter()
                .map(|c| json!({"kind": "compute#accessConfig", "type": c["type"].as_str().unwrap_or("ONE_TO_ONE_NAT"), "name": c["name"].as_str().unwrap_or("External NAT"), "natIP": format!("203.0.113.{}", seq % 250 + 1)}))
                .collect();
            o["accessConfigs"] = configs.into();
        }
        for field in ["nicType", "stackType"] {
            if let Some(v) = nic.get(field) {
                o[field] = v.clone();
            }
        }
        out.push(o);
    }
    Ok(out)
}

/// `POST projects/{p}/zones/{z}/instances`.
pub(crate) fn insert(state: &mut State, project: &str, zone: &str, body: &Value) -> Reply {
    state.check_zone(project, zone)?;
    let fields = [INSERT_FIELDS, PASS_THROUGH].concat();
    let (name, labels) = validate::insert_body(body, &fields, "Instance")?;
    let path = format!("projects/{project}/zones/{zone}/instances/{name}");
    if state.store.instances.contains_key(&path) {
        return Err(ApiError::already_exists(&path));
    }
    let mt = validate::required(body, "machineType")?;
    let m = validate::reference_in("machineType", mt, MACHINE_TYPE, project)?;
    if m[0] != project || m[1] != zone {
        return Err(ApiError::invalid(format!(
            "Machine type '{mt}' must be in the instance's project and zone"
        )));
    }
    if !state.seed.machine_types.iter().any(|t| t.name == m[2]) {
        return Err(ApiError::not_found(&format!(
            "projects/{project}/zones/{zone}/machineTypes/{}",
            m[2]
        )));
    }
    let gpus = body["guestAccelerators"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let scheduling = scheduling::check(
        body.get("scheduling"),
        gpus,
        state.settings.refuse_time_limits,
    )?;
    let disks = attached_disks(state, project, zone, &body["disks"])?;
    let seq = state.store.instances.len() as u64 + state.next_u64() % 1000;
    let nics = network_interfaces(project, zone, body.get("networkInterfaces"), seq)?;
    let metadata = metadata::initial(state, body.get("metadata"))?;
    let id = state.new_id();
    let mut json = Map::new();
    json.insert("kind".into(), "compute#instance".into());
    json.insert("id".into(), id.clone().into());
    json.insert("creationTimestamp".into(), time::now().into());
    json.insert("name".into(), name.into());
    json.insert(
        "machineType".into(),
        link(&format!(
            "projects/{project}/zones/{zone}/machineTypes/{}",
            m[2]
        ))
        .into(),
    );
    json.insert(
        "zone".into(),
        link(&format!("projects/{project}/zones/{zone}")).into(),
    );
    json.insert("disks".into(), disks.into());
    json.insert("networkInterfaces".into(), nics.into());
    json.insert("metadata".into(), metadata);
    if !labels.is_empty() {
        json.insert("labels".into(), Value::Object(labels));
    }
    for field in PASS_THROUGH {
        if let Some(v) = body.get(field) {
            json.insert((*field).into(), v.clone());
        }
    }
    json.insert("scheduling".into(), scheduling);
    json.insert("selfLink".into(), link(&path).into());
    let script = match state
        .scripts
        .iter()
        .position(|(prefix, _)| name.starts_with(prefix.as_str()))
    {
        Some(i) => state.scripts.remove(i).1,
        None => Script::default(),
    };
    let job = state.boot.is_some().then(|| {
        let shape = state.seed.machine_types.iter().find(|t| t.name == m[2]);
        boot_job(&path, &json, shape)
    });
    let window = state.settings.serial_window;
    let instance = Instance {
        json,
        status: "PROVISIONING",
        script,
        serial: std::array::from_fn(|_| SerialBuffer::new(window)),
        serial_reads: 0,
        stop_polls_left: 0,
        deprovisioning: false,
        vm: None,
        vm_read: [0; 4],
    };
    if !instance.script.shows.is_empty() {
        state.shows.insert(
            path.clone(),
            instance.script.shows.iter().cloned().collect(),
        );
    }
    state.store.instances.insert(path.clone(), instance);
    let op = ops::start(
        state,
        project,
        Some(zone),
        "insert",
        &path,
        &id,
        Finish::InstanceRunning(path.clone()),
    );
    if let Some(job) = job {
        ops::queue(state, &op, job);
    }
    Ok(op)
}

/// Boot mode: the VM of a new instance (its JSON as stored), with the vCPUs and memory of
/// its seeded machine type.
fn boot_job(path: &str, json: &Map<String, Value>, shape: Option<&MachineType>) -> Job {
    let metadata: BTreeMap<String, String> = json["metadata"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(metadata::pair)
        .collect();
    let labels = json
        .get("labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    // The QEMU backend sizes a VM by a GCE machine type's name; a custom type's name says
    // exactly what the seed gives.
    let machine_type = match shape {
        Some(t) => format!("custom-{}-{}", t.guest_cpus, t.memory_mb),
        None => json["machineType"]
            .as_str()
            .and_then(|m| m.rsplit('/').next())
            .unwrap_or_default()
            .to_string(),
    };
    // GCE stops an instance at its maxRunDuration; without one it runs until deleted.
    let max_lifetime = crate::links::int64(json["scheduling"]["maxRunDuration"].get("seconds"))
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::from_secs(24 * 3600), Duration::from_secs);
    let disks = json["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["source"].as_str())
        .map(|s| crate::links::unlink(s).to_string())
        .collect();
    Job::CreateVm {
        path: path.to_string(),
        spec: VmSpec {
            name: json["name"].as_str().unwrap_or_default().to_string(),
            disks: Vec::new(),
            metadata,
            labels,
            machine_type,
            service_account: String::new(),
            // The instance keeps its guestAccelerators, but QEMU attaches no GPU: a build
            // that installs drivers runs end to end, and only the driver cannot be checked.
            gpu_type: None,
            network: None,
            subnet: None,
            max_lifetime,
        },
        disks,
    }
}

/// `GET projects/{p}/zones/{z}/instances/{i}`: one poll, which moves a STAGING or stopping
/// instance on, or shows the status a test scripted.
pub(crate) fn get(state: &mut State, project: &str, zone: &str, name: &str) -> Reply {
    let path = path(state, project, zone, name)?;
    let scripted = state.scripted_status(&path);
    let instance = state.store.instances.get_mut(&path).expect("checked above");
    let mut json = to_json(instance);
    json["status"] = match scripted {
        Some(s) => s.into(),
        None => instance.poll_status().into(),
    };
    Ok(json)
}

/// `GET projects/{p}/zones/{z}/instances?filter=`: filters on `name`, `status`, `labels.K`.
pub(crate) fn list(state: &State, project: &str, zone: &str, query: &[(String, String)]) -> Reply {
    state.check_zone(project, zone)?;
    let terms = listing::filter(query, &["name", "status", "labels"])?;
    let prefix = format!("projects/{project}/zones/{zone}/instances/");
    let items = state
        .store
        .instances
        .iter()
        .filter(|(p, _)| p.starts_with(&prefix))
        .map(|(_, i)| to_json(i))
        .filter(|i| listing::matches(&terms, i))
        .collect();
    listing::page(
        items,
        query,
        "compute#instanceList",
        link(&format!("projects/{project}/zones/{zone}/instances")),
    )
}

/// `DELETE projects/{p}/zones/{z}/instances/{i}`: its `autoDelete` disks go with it.
pub(crate) fn delete(state: &mut State, project: &str, zone: &str, name: &str) -> Reply {
    let path = path(state, project, zone, name)?;
    let instance = state.store.instances.remove(&path).expect("checked above");
    let mut vm_disks = Vec::new();
    for d in instance.json["disks"].as_array().into_iter().flatten() {
        if d["autoDelete"] == true {
            let disk = crate::links::unlink(d["source"].as_str().unwrap_or_default());
            state.store.disks.remove(disk);
            vm_disks.extend(state.boot_disks.remove(disk));
        }
    }
    let id = instance.json["id"].as_str().unwrap_or_default().to_string();
    let op = ops::start(
        state,
        project,
        Some(zone),
        "delete",
        &path,
        &id,
        Finish::Nothing,
    );
    if state.boot.is_some() {
        let job = Job::DeleteVm {
            vm: instance.vm,
            disks: vm_disks,
        };
        ops::queue(state, &op, job);
    }
    Ok(op)
}

/// `POST projects/{p}/zones/{z}/instances/{i}/stop`.
pub(crate) fn stop(state: &mut State, project: &str, zone: &str, name: &str) -> Reply {
    let path = path(state, project, zone, name)?;
    let polls = state.settings.stop_polls;
    let stopping = matches!(
        state.store.instances[&path].status,
        "RUNNING" | "STAGING" | "PROVISIONING"
    );
    let deprovisioning = stopping && state.stop_deprovisions();
    let instance = state.store.instances.get_mut(&path).expect("checked above");
    if stopping {
        instance.begin_stop(polls, deprovisioning);
    }
    let id = instance.json["id"].as_str().unwrap_or_default().to_string();
    let op = ops::start(
        state,
        project,
        Some(zone),
        "stop",
        &path,
        &id,
        Finish::Nothing,
    );
    if state.boot.is_some() {
        ops::queue(state, &op, Job::StopVm { path });
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_mode_vm_has_its_seeded_shape_deadline_and_disks() {
        let json = json!({
            "name": "vm",
            "machineType": "https://www.googleapis.com/compute/v1/projects/p/zones/z/machineTypes/odd",
            "metadata": {"items": [{"key": "user-data", "value": "x"}]},
            "scheduling": {"maxRunDuration": {"seconds": "600"}},
            "disks": [{"source": "https://www.googleapis.com/compute/v1/projects/p/zones/z/disks/boot"}],
        });
        let shape = MachineType {
            name: "odd".into(),
            guest_cpus: 3,
            memory_mb: 5000,
        };
        let Job::CreateVm { spec, disks, .. } = boot_job(
            "projects/p/zones/z/instances/vm",
            json.as_object().unwrap(),
            Some(&shape),
        ) else {
            panic!("not a VM");
        };
        assert_eq!(spec.machine_type, "custom-3-5000");
        assert_eq!(spec.max_lifetime, Duration::from_secs(600));
        assert_eq!(spec.metadata["user-data"], "x");
        assert_eq!(disks, ["projects/p/zones/z/disks/boot"]);
    }
}
