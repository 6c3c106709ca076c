//! Images: insert (from a disk, an image or a `rawDisk` in Cloud Storage), get, list with the
//! filter subset, getFromFamily, deprecate and delete. All answer with global operations.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{bail, Context};
use cos_customizer_core::backend::{ImageFormat, OutputImage};
use serde_json::{json, Map, Value};

use crate::boot::Job;
use crate::gcs_fetch::{self, ImportError};
use crate::links::{link, API_ROOT};
use crate::listing;
use crate::model::{Image, State};
use crate::operation::Finish;
use crate::ops;
use crate::reply::{ApiError, Reply};
use crate::time;
use crate::validate::{self, IMAGE, IMAGE_FAMILY, LICENSE};

/// The fields `images.insert` takes.
const INSERT_FIELDS: &[&str] = &[
    "name",
    "description",
    "family",
    "labels",
    "licenses",
    "guestOsFeatures",
    "architecture",
    "sourceDisk",
    "sourceImage",
    "rawDisk",
    "storageLocations",
];

/// An image path as its full link; partial `projects/…` forms get the API root.
pub(crate) fn full_image_link(reference: &str) -> String {
    if reference.starts_with(API_ROOT) {
        reference.to_string()
    } else {
        link(reference)
    }
}

/// `inherited` (full links) plus `added` (partial or full), as full links without duplicates.
pub(crate) fn full_licenses(inherited: &Value, added: &Value) -> Result<Value, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for l in inherited
        .as_array()
        .into_iter()
        .chain(added.as_array())
        .flatten()
    {
        let l = l
            .as_str()
            .ok_or_else(|| ApiError::invalid("Invalid value for field 'licenses'"))?;
        let parts = validate::reference("licenses", l, LICENSE)?;
        let full = link(&format!(
            "projects/{}/global/licenses/{}",
            parts[0], parts[1]
        ));
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(json!(out))
}

/// The image a `sourceImage` names (`…/images/N` or `…/images/family/F`; `global/images/…`
/// in `project`): its path and JSON.
pub(crate) fn resolve(
    state: &State,
    project: &str,
    reference: &str,
) -> Result<(String, Value), ApiError> {
    let completed = validate::project_less(reference, project);
    let reference = completed.as_deref().unwrap_or(reference);
    if let Some(parts) = validate::try_reference(reference, IMAGE_FAMILY) {
        state.check_project(&parts[0])?;
        return newest_in_family(state, &parts[0], &parts[1]);
    }
    let parts = validate::reference("sourceImage", reference, IMAGE)?;
    let path = format!("projects/{}/global/images/{}", parts[0], parts[1]);
    let image = state
        .store
        .images
        .get(&path)
        .ok_or_else(|| ApiError::not_found(&path))?;
    Ok((path, Value::Object(image.json.clone())))
}

fn newest_in_family(
    state: &State,
    project: &str,
    family: &str,
) -> Result<(String, Value), ApiError> {
    let prefix = format!("projects/{project}/global/images/");
    state
        .store
        .images
        .iter()
        .filter(|(path, image)| {
            let state = image
                .json
                .get("deprecated")
                .and_then(|d| d["state"].as_str());
            path.starts_with(&prefix)
                && image.json.get("family").and_then(Value::as_str) == Some(family)
                && matches!(state, None | Some("ACTIVE"))
        })
        .max_by_key(|(_, image)| {
            time::parse(image.json["creationTimestamp"].as_str().unwrap_or(""))
                .unwrap_or(jiff::Timestamp::MIN)
        })
        .map(|(path, image)| (path.clone(), Value::Object(image.json.clone())))
        .ok_or_else(|| ApiError::not_found(&format!("{prefix}family/{family}")))
}

/// What reading a `rawDisk` source found: the size of its `disk.raw` in bytes and the object,
/// or why GCE would fail the import.
pub(crate) type RawDisk = Result<(u64, cos_customizer_core::http_server::Bytes), ImportError>;

/// The bucket and the (still percent-encoded) object of a `rawDisk.source` URL.
fn raw_disk_object(source: &str) -> Option<(&str, &str)> {
    source
        .strip_prefix("https://storage.googleapis.com/")
        .or_else(|| source.strip_prefix("https://storage.cloud.google.com/"))?
        .split_once('/')
        .filter(|(bucket, object)| !bucket.is_empty() && !object.is_empty())
}

/// Reads the `rawDisk` source an `images.insert` body names from the emulator's storage
/// endpoint; `None` without an endpoint or a well-formed source (`insert` rejects the latter).
/// Awaited before the state is locked, which only the endpoint's lookup takes.
pub(crate) async fn read_raw_disk(shared: &Mutex<State>, body: &Value) -> Option<RawDisk> {
    let storage = shared
        .lock()
        .expect("state lock")
        .settings
        .storage
        .clone()?;
    let (bucket, object) = raw_disk_object(body["rawDisk"]["source"].as_str()?)?;
    Some(gcs_fetch::raw_disk(&storage, bucket, object).await)
}

/// `POST projects/{p}/global/images`. `raw_disk` is what [`read_raw_disk`] found for a
/// `rawDisk` body: its size becomes `diskSizeGb`, and a failure ends the operation DONE with
/// the error and drops the image, as GCE does with an import that fails.
pub(crate) fn insert(
    state: &mut State,
    project: &str,
    query: &[(String, String)],
    body: &Value,
    raw_disk: Option<RawDisk>,
) -> Reply {
    state.check_project(project)?;
    let (name, labels) = validate::insert_body(body, INSERT_FIELDS, "Image")?;
    if let Some(family) = body["family"].as_str() {
        validate::name("resource.family", family)?;
    }
    let path = format!("projects/{project}/global/images/{name}");
    if state.store.images.contains_key(&path) {
        return Err(ApiError::already_exists(&path));
    }
    let sources = ["sourceDisk", "sourceImage", "rawDisk"]
        .iter()
        .filter(|s| body.get(**s).is_some())
        .count();
    if sources != 1 {
        return Err(ApiError::invalid(
            "Exactly one of 'sourceDisk', 'sourceImage' or 'rawDisk' must be given",
        ));
    }
    let force = query.iter().any(|(k, v)| k == "forceCreate" && v == "true");
    let mut json = Map::new();
    let boot = state.boot.clone();
    // Boot mode: the image's file, and the work that writes it from a disk.
    let mut file = None;
    let mut from_disk = None;
    let (inherited, size) = if let Some(disk) = body["sourceDisk"].as_str() {
        let parts = validate::reference_in("sourceDisk", disk, validate::DISK, project)?;
        let disk_path = format!(
            "projects/{}/zones/{}/disks/{}",
            parts[0], parts[1], parts[2]
        );
        let disk = state
            .store
            .disks
            .get(&disk_path)
            .ok_or_else(|| ApiError::not_found(&disk_path))?
            .clone();
        if let Some(user) = state.store.running_user(&disk_path) {
            if !force {
                return Err(ApiError::in_use(format!(
                    "The disk resource '{disk_path}' is already being used by '{user}'"
                )));
            }
        }
        json.insert("sourceDisk".into(), link(&disk_path).into());
        json.insert("sourceDiskId".into(), disk["id"].clone());
        from_disk = Some(disk_path);
        (Value::Object(disk), None)
    } else if let Some(image) = body["sourceImage"].as_str() {
        let (image_path, image) = resolve(state, project, image)?;
        json.insert("sourceImage".into(), link(&image_path).into());
        json.insert("sourceImageId".into(), image["id"].clone());
        file = state.store.images[&image_path].file.clone();
        (image, None)
    } else {
        let source = body["rawDisk"]["source"].as_str().unwrap_or_default();
        if raw_disk_object(source).is_none() {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'rawDisk.source': '{source}'. Expected https://storage.googleapis.com/BUCKET/OBJECT"
            )));
        }
        if body["rawDisk"]
            .get("containerType")
            .is_some_and(|c| c != "TAR")
        {
            return Err(ApiError::invalid(
                "Invalid value for field 'rawDisk.containerType'",
            ));
        }
        json.insert(
            "rawDisk".into(),
            json!({"source": source, "containerType": "TAR"}),
        );
        // GCE sizes the image by its disk.raw, in whole GB rounded up; unread, a stand-in.
        let size = match &raw_disk {
            Some(Ok((bytes, _))) => bytes.div_ceil(1 << 30).max(1).to_string(),
            _ => "10".to_string(),
        };
        if let (Some(boot), Some(Ok((_, object)))) = (&boot, &raw_disk) {
            let f = boot.image_file(name, "tar.gz");
            std::fs::write(&f, object).map_err(|e| {
                ApiError::new(
                    500,
                    "internalError",
                    format!("boot mode: writing {}: {e}", f.display()),
                )
            })?;
            file = Some(f);
        }
        (Value::Null, Some(size))
    };
    let id = state.new_id();
    json.insert("kind".into(), "compute#image".into());
    json.insert("id".into(), id.clone().into());
    json.insert("creationTimestamp".into(), time::now().into());
    json.insert("name".into(), name.into());
    for field in ["description", "family", "storageLocations"] {
        if let Some(v) = body.get(field) {
            json.insert(field.into(), v.clone());
        }
    }
    if !labels.is_empty() {
        json.insert("labels".into(), Value::Object(labels));
    }
    let licenses = full_licenses(&inherited["licenses"], &body["licenses"])?;
    if licenses.as_array().is_some_and(|l| !l.is_empty()) {
        json.insert("licenses".into(), licenses);
    }
    let features = body
        .get("guestOsFeatures")
        .or(inherited.get("guestOsFeatures"));
    if let Some(f) = features {
        json.insert("guestOsFeatures".into(), f.clone());
    }
    if let Some(a) = body.get("architecture").or(inherited.get("architecture")) {
        json.insert("architecture".into(), a.clone());
    }
    let size = match size {
        Some(s) => Value::from(s),
        None => inherited
            .get("sizeGb")
            .or(inherited.get("diskSizeGb"))
            .cloned()
            .unwrap_or("10".into()),
    };
    json.insert("diskSizeGb".into(), size);
    json.insert("sourceType".into(), "RAW".into());
    json.insert("status".into(), "PENDING".into());
    json.insert("selfLink".into(), link(&path).into());
    state.store.images.insert(
        path.clone(),
        Image {
            json,
            seeded: false,
            file,
        },
    );
    let op = ops::start(
        state,
        project,
        None,
        "insert",
        &path,
        &id,
        Finish::ImageReady(path.clone()),
    );
    if let Some(Err(e)) = raw_disk {
        state.store.images.remove(&path);
        ops::fail(state, &ops::path_of(&op), e.code, &e.message, e.http);
    }
    if let (Some(boot), Some(disk)) = (&boot, from_disk) {
        let out = OutputImage {
            name: name.to_string(),
            project: project.to_string(),
            family: body["family"].as_str().unwrap_or_default().to_string(),
            labels: BTreeMap::new(),
            licenses: Vec::new(),
            description: String::new(),
            local_file: Some((boot.image_file(name, "qcow2"), ImageFormat::Qcow2)),
        };
        ops::queue(state, &op, Job::CreateImage { path, disk, out });
    }
    Ok(op)
}

fn image_path(state: &State, project: &str, name: &str) -> Result<String, ApiError> {
    state.check_project(project)?;
    let path = format!("projects/{project}/global/images/{name}");
    if state.store.images.contains_key(&path) {
        Ok(path)
    } else {
        Err(ApiError::not_found(&path))
    }
}

/// `GET projects/{p}/global/images/{name}`.
pub(crate) fn get(state: &mut State, project: &str, name: &str) -> Reply {
    let path = image_path(state, project, name)?;
    let mut json = state.store.images[&path].json.clone();
    if let Some(status) = state.scripted_status(&path) {
        json.insert("status".into(), status.into());
    }
    Ok(Value::Object(json))
}

/// `GET projects/{p}/global/images/family/{family}`.
pub(crate) fn from_family(state: &State, project: &str, family: &str) -> Reply {
    state.check_project(project)?;
    newest_in_family(state, project, family).map(|(_, image)| image)
}

/// `GET projects/{p}/global/images?filter=&maxResults=&pageToken=`, sorted by name.
pub(crate) fn list(state: &State, project: &str, query: &[(String, String)]) -> Reply {
    state.check_project(project)?;
    let terms = listing::filter(
        query,
        &["name", "family", "architecture", "status", "labels"],
    )?;
    let prefix = format!("projects/{project}/global/images/");
    let items = state
        .store
        .images
        .iter()
        .filter(|(path, _)| path.starts_with(&prefix))
        .map(|(_, image)| Value::Object(image.json.clone()))
        .filter(|image| listing::matches(&terms, image))
        .collect();
    listing::page(
        items,
        query,
        "compute#imageList",
        link(&format!("projects/{project}/global/images")),
    )
}

/// `POST projects/{p}/global/images/{name}/deprecate`.
pub(crate) fn deprecate(state: &mut State, project: &str, name: &str, body: &Value) -> Reply {
    let path = image_path(state, project, name)?;
    validate::only_fields(
        body,
        &["state", "replacement", "deprecated", "obsolete", "deleted"],
        "DeprecationStatus",
    )?;
    let status = validate::required(body, "state")?;
    let mut deprecation = body.as_object().cloned().unwrap_or_default();
    if let Some(r) = body["replacement"].as_str() {
        validate::reference("replacement", r, IMAGE)?;
        deprecation.insert("replacement".into(), full_image_link(r).into());
    }
    for field in ["deprecated", "obsolete", "deleted"] {
        if let Some(t) = body[field].as_str() {
            if time::parse(t).is_none() {
                return Err(ApiError::invalid(format!(
                    "Invalid value for field 'deprecationStatus.{field}': '{t}'. Must be RFC 3339"
                )));
            }
        }
    }
    let image = state.store.images.get_mut(&path).expect("checked above");
    if status == "ACTIVE" {
        image.json.remove("deprecated");
    } else {
        image
            .json
            .insert("deprecated".into(), Value::Object(deprecation));
    }
    let id = image.json["id"].as_str().unwrap_or_default().to_string();
    Ok(ops::start(
        state,
        project,
        None,
        "deprecate",
        &path,
        &id,
        Finish::Nothing,
    ))
}

/// `DELETE projects/{p}/global/images/{name}`.
pub(crate) fn delete(state: &mut State, project: &str, name: &str) -> Reply {
    let path = image_path(state, project, name)?;
    let image = state.store.images.remove(&path).expect("checked above");
    // Boot mode: the file goes with the last image made through the API that reads it.
    if let (Some(boot), Some(file)) = (&state.boot, &image.file) {
        let shared = state
            .store
            .images
            .values()
            .any(|i| i.file.as_ref() == Some(file));
        if file.starts_with(&boot.images_dir) && !shared {
            crate::boot::remove_file(file);
        }
    }
    let id = image.json["id"].as_str().unwrap_or_default().to_string();
    Ok(ops::start(
        state,
        project,
        None,
        "delete",
        &path,
        &id,
        Finish::Nothing,
    ))
}

/// Puts the seed's images into the state, shaped as GCE returns them.
pub(crate) fn load_seeded(state: &mut State) -> anyhow::Result<()> {
    for entry in state.seed.images.clone() {
        let mut json = entry.clone();
        let project = json
            .remove("project")
            .and_then(|p| p.as_str().map(str::to_string))
            .context("seed: an image has no project")?;
        if !state.seed.projects.contains(&project) {
            bail!("seed: image project {project} is not among the projects");
        }
        let file = match json.remove("file") {
            None => None,
            Some(Value::String(f)) => Some(std::path::PathBuf::from(f)),
            Some(other) => bail!("seed: image file {other} is not a path"),
        };
        let name = json["name"].as_str().unwrap_or_default().to_string();
        if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
            bail!(
                "seed: the file of image {name}, {}, does not exist (build the fixture with scripts/make-fixture.sh)",
                f.display()
            );
        }
        let path = format!("projects/{project}/global/images/{name}");
        json.insert("kind".into(), "compute#image".into());
        json.insert("id".into(), state.new_id().into());
        json.insert("selfLink".into(), link(&path).into());
        json.insert("status".into(), "READY".into());
        json.insert("sourceType".into(), "RAW".into());
        json.entry("diskSizeGb").or_insert("10".into());
        json.entry("creationTimestamp")
            .or_insert(time::now().into());
        if let Some(licenses) = json.get("licenses").cloned() {
            let full = full_licenses(&licenses, &Value::Null)
                .map_err(|e| anyhow::anyhow!("seed: image {name}: {}", e.message))?;
            json.insert("licenses".into(), full);
        }
        if let Some(Value::Object(dep)) = json.get_mut("deprecated") {
            if let Some(r) = dep.get("replacement").and_then(Value::as_str) {
                let full = full_image_link(r);
                dep.insert("replacement".into(), full.into());
            }
        }
        state.store.images.insert(
            path,
            Image {
                json,
                seeded: true,
                file,
            },
        );
    }
    Ok(())
}
