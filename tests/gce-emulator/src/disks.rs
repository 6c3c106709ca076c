//! Disks: insert (blank or from an image by name or family), get, list, resize and delete, with
//! GCE's rules: a known disk type, no size below the image's, no shrinking, and no delete
//! while an instance uses the disk.

use cos_customizer_common::config::SourceImage;
use cos_customizer_core::backend::{DiskSource, DiskSpec};
use serde_json::{Map, Value};

use crate::boot::Job;
use crate::images;
use crate::links::{int64, link};
use crate::listing;
use crate::model::State;
use crate::operation::Finish;
use crate::ops;
use crate::reply::{ApiError, Reply};
use crate::time;
use crate::validate::{self, DISK_TYPE};

/// The fields `disks.insert` takes.
const INSERT_FIELDS: &[&str] = &[
    "name",
    "description",
    "sizeGb",
    "sourceImage",
    "type",
    "labels",
    "guestOsFeatures",
    "licenses",
    "architecture",
];

fn disk_path(state: &State, project: &str, zone: &str, name: &str) -> Result<String, ApiError> {
    state.check_zone(project, zone)?;
    let path = format!("projects/{project}/zones/{zone}/disks/{name}");
    if state.store.disks.contains_key(&path) {
        Ok(path)
    } else {
        Err(ApiError::not_found(&path))
    }
}

/// `POST projects/{p}/zones/{z}/disks`.
pub(crate) fn insert(state: &mut State, project: &str, zone: &str, body: &Value) -> Reply {
    state.check_zone(project, zone)?;
    let (name, labels) = validate::insert_body(body, INSERT_FIELDS, "Disk")?;
    let path = format!("projects/{project}/zones/{zone}/disks/{name}");
    if state.store.disks.contains_key(&path) {
        return Err(ApiError::already_exists(&path));
    }
    let type_ref = body["type"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("projects/{project}/zones/{zone}/diskTypes/pd-standard"));
    let t = validate::reference("type", &type_ref, DISK_TYPE)?;
    if t[0] != project || t[1] != zone {
        return Err(ApiError::invalid(format!(
            "Invalid value for field 'resource.type': '{type_ref}'. The disk type must be in the disk's project and zone"
        )));
    }
    let disk_type = state
        .seed
        .disk_types
        .iter()
        .find(|d| d.name == t[2])
        .ok_or_else(|| {
            ApiError::not_found(&format!(
                "projects/{project}/zones/{zone}/diskTypes/{}",
                t[2]
            ))
        })?
        .clone();
    let mut json = Map::new();
    let mut min_size = 1;
    let mut inherited = Value::Null;
    let mut file = None;
    if let Some(source) = body["sourceImage"].as_str() {
        let (image_path, image) = images::resolve(state, project, source)?;
        if image["status"] != "READY" {
            return Err(ApiError::new(
                400,
                "resourceNotReady",
                format!("The resource '{image_path}' is not ready"),
            ));
        }
        if state.boot.is_some() {
            let f = state.store.images[&image_path].file.clone().ok_or_else(|| {
                ApiError::invalid(format!(
                    "The emulator's boot mode makes disks only from images with a file, and '{image_path}' has none: give it a \"file\" in the seed"
                ))
            })?;
            file = Some((f, image_path.clone()));
        }
        min_size = int64(image.get("diskSizeGb")).unwrap_or(10);
        json.insert("sourceImage".into(), link(&image_path).into());
        json.insert("sourceImageId".into(), image["id"].clone());
        inherited = image;
    }
    if state.boot.is_some() && file.is_none() {
        return Err(ApiError::invalid(
            "The emulator's boot mode makes disks only from images: give 'sourceImage'",
        ));
    }
    let size = match body.get("sizeGb") {
        Some(v) => int64(Some(v))
            .ok_or_else(|| ApiError::invalid("Invalid value for field 'resource.sizeGb'"))?,
        None if inherited.is_null() => disk_type.default_size_gb,
        None => min_size,
    };
    if size < min_size {
        return Err(ApiError::invalid(format!(
            "Invalid value for field 'resource.sizeGb': '{size}'. Requested disk size cannot be smaller than the image size ({min_size} GB)"
        )));
    }
    let id = state.new_id();
    json.insert("kind".into(), "compute#disk".into());
    json.insert("id".into(), id.clone().into());
    json.insert("creationTimestamp".into(), time::now().into());
    json.insert("name".into(), name.into());
    if let Some(d) = body.get("description") {
        json.insert("description".into(), d.clone());
    }
    json.insert("sizeGb".into(), size.to_string().into());
    json.insert(
        "zone".into(),
        link(&format!("projects/{project}/zones/{zone}")).into(),
    );
    // CREATING until the insert's operation is DONE, as on GCE.
    json.insert("status".into(), "CREATING".into());
    json.insert(
        "type".into(),
        link(&format!(
            "projects/{project}/zones/{zone}/diskTypes/{}",
            disk_type.name
        ))
        .into(),
    );
    let licenses = images::full_licenses(&inherited["licenses"], &body["licenses"])?;
    if licenses.as_array().is_some_and(|l| !l.is_empty()) {
        json.insert("licenses".into(), licenses);
    }
    for field in ["guestOsFeatures", "architecture"] {
        if let Some(v) = body.get(field).or(inherited.get(field)) {
            json.insert(field.into(), v.clone());
        }
    }
    if !labels.is_empty() {
        json.insert("labels".into(), Value::Object(labels));
    }
    json.insert("selfLink".into(), link(&path).into());
    state.store.disks.insert(path.clone(), json);
    let op = ops::start(
        state,
        project,
        Some(zone),
        "insert",
        &path,
        &id,
        Finish::DiskReady(path.clone()),
    );
    if let Some((file, image_path)) = file {
        let image_name = image_path.rsplit('/').next().unwrap_or_default();
        let spec = DiskSpec {
            name: name.to_string(),
            source: DiskSource::Image(SourceImage {
                name: image_name.to_string(),
                project: project.to_string(),
                local_file: file.to_string_lossy().into_owned(),
                ..Default::default()
            }),
            size_gb: Some(u64::try_from(size).unwrap_or(1)),
            disk_type: disk_type.name,
        };
        ops::queue(state, &op, Job::CreateDisk { path, spec });
    }
    Ok(op)
}

/// The disk at `path` as GCE returns it, with `users` filled in.
fn to_json(state: &State, path: &str) -> Value {
    let mut json = state.store.disks[path].clone();
    let users = state.store.disk_users(path);
    if !users.is_empty() {
        json.insert("users".into(), users.into());
    }
    Value::Object(json)
}

/// `GET projects/{p}/zones/{z}/disks/{d}`, with `users` filled in.
pub(crate) fn get(state: &mut State, project: &str, zone: &str, name: &str) -> Reply {
    let path = disk_path(state, project, zone, name)?;
    let mut json = to_json(state, &path);
    if let Some(status) = state.scripted_status(&path) {
        json["status"] = status.into();
    }
    Ok(json)
}

/// `GET projects/{p}/zones/{z}/disks?filter=`: filters on `name`, `status`, `labels.K`;
/// sorted by name, `users` filled in.
pub(crate) fn list(state: &State, project: &str, zone: &str, query: &[(String, String)]) -> Reply {
    state.check_zone(project, zone)?;
    let terms = listing::filter(query, &["name", "status", "labels"])?;
    let prefix = format!("projects/{project}/zones/{zone}/disks/");
    let items = state
        .store
        .disks
        .keys()
        .filter(|p| p.starts_with(&prefix))
        .map(|p| to_json(state, p))
        .filter(|d| listing::matches(&terms, d))
        .collect();
    listing::page(
        items,
        query,
        "compute#diskList",
        link(&format!("projects/{project}/zones/{zone}/disks")),
    )
}

/// `POST projects/{p}/zones/{z}/disks/{d}/resize`: grows the disk; scripted instances that
/// have it attached print their `on_resize` output.
pub(crate) fn resize(
    state: &mut State,
    project: &str,
    zone: &str,
    name: &str,
    body: &Value,
) -> Reply {
    let path = disk_path(state, project, zone, name)?;
    let size = int64(body.get("sizeGb"))
        .ok_or_else(|| ApiError::invalid("Required field 'sizeGb' not specified"))?;
    let disk = state.store.disks.get_mut(&path).expect("checked above");
    let current = int64(disk.get("sizeGb")).unwrap_or(0);
    // GCE refuses a resize that does not grow the disk, the same size included.
    if size <= current {
        return Err(ApiError::invalid(format!(
            "Invalid value for field 'sizeGb': '{size}'. New disk size must be larger than the existing size ({current} GB)"
        )));
    }
    disk.insert("sizeGb".into(), size.to_string().into());
    let id = disk["id"].as_str().unwrap_or_default().to_string();
    for user in state.store.disk_users(&path) {
        if let Some(i) = state.store.instances.get_mut(crate::links::unlink(&user)) {
            if i.status == "RUNNING" {
                let out = i.script.on_resize.clone();
                i.serial[crate::serial_buffer::PORT_3].push(&out);
            }
        }
    }
    let op = ops::start(
        state,
        project,
        Some(zone),
        "resize",
        &path,
        &id,
        Finish::Nothing,
    );
    if state.boot.is_some() {
        let job = Job::ResizeDisk {
            path,
            size_gb: u64::try_from(size).unwrap_or(0),
        };
        ops::queue(state, &op, job);
    }
    Ok(op)
}

/// `DELETE projects/{p}/zones/{z}/disks/{d}`: 400 `resourceInUseByAnotherResource` while any
/// instance has it attached.
pub(crate) fn delete(state: &mut State, project: &str, zone: &str, name: &str) -> Reply {
    let path = disk_path(state, project, zone, name)?;
    if let Some(user) = state.store.disk_users(&path).first() {
        return Err(ApiError::in_use(format!(
            "The disk resource '{path}' is already being used by '{user}'"
        )));
    }
    let disk = state.store.disks.remove(&path).expect("checked above");
    let id = disk["id"].as_str().unwrap_or_default().to_string();
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
        let disk = state.boot_disks.remove(&path);
        ops::queue(state, &op, Job::DeleteDisk { disk });
    }
    Ok(op)
}
