//! The seed: projects, zones, disk types, machine types and images the emulator starts with.
//! `seed.json` beside `Cargo.toml` is the built-in one (metadata only); `fixture-seed.json`
//! adds the fixture image with its `file`, which boot mode makes disks from.

use anyhow::{bail, Context};
use serde_json::{Map, Value};

use crate::discovery::{Discovery, Side};
use crate::validate;

/// The built-in seed.
const BUILTIN: &str = include_str!("../seed.json");

/// A disk type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskType {
    /// Its name (`pd-standard`).
    pub name: String,
    /// The size of a disk made without `sizeGb` or a source.
    pub default_size_gb: i64,
}

/// A machine type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineType {
    /// Its name (`n1-standard-1`).
    pub name: String,
    /// vCPUs.
    pub guest_cpus: i64,
    /// Memory in MiB.
    pub memory_mb: i64,
}

/// What the emulator starts with. Zones, disk types and machine types exist in every project.
#[derive(Clone, Debug)]
pub struct Seed {
    /// Project ids.
    pub projects: Vec<String>,
    /// Zone names (`us-central1-a`).
    pub zones: Vec<String>,
    /// Disk types.
    pub disk_types: Vec<DiskType>,
    /// Machine types.
    pub machine_types: Vec<MachineType>,
    /// Images: Image resource fields plus `project`.
    pub images: Vec<Map<String, Value>>,
}

impl Default for Seed {
    fn default() -> Self {
        Seed::from_json(BUILTIN).expect("the built-in seed is valid")
    }
}

fn strings(doc: &Value, key: &str) -> anyhow::Result<Vec<String>> {
    doc[key]
        .as_array()
        .with_context(|| format!("seed: `{key}` must be an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .with_context(|| format!("seed: `{key}` holds a non-string"))
        })
        .collect()
}

impl Seed {
    /// Parses a seed document.
    pub fn from_json(text: &str) -> anyhow::Result<Seed> {
        let doc: Value = serde_json::from_str(text).context("seed: not JSON")?;
        let entries = |key: &str| -> anyhow::Result<Vec<Value>> {
            Ok(doc[key].as_array().cloned().unwrap_or_default())
        };
        let mut disk_types = Vec::new();
        for t in entries("diskTypes")? {
            disk_types.push(DiskType {
                name: t["name"]
                    .as_str()
                    .context("seed: disk type without name")?
                    .into(),
                default_size_gb: crate::links::int64(t.get("defaultDiskSizeGb")).unwrap_or(10),
            });
        }
        let mut machine_types = Vec::new();
        for t in entries("machineTypes")? {
            machine_types.push(MachineType {
                name: t["name"]
                    .as_str()
                    .context("seed: machine type without name")?
                    .into(),
                guest_cpus: t["guestCpus"].as_i64().unwrap_or(1),
                memory_mb: t["memoryMb"].as_i64().unwrap_or(3840),
            });
        }
        let mut images = Vec::new();
        for image in entries("images")? {
            let Value::Object(mut map) = image else {
                bail!("seed: an image is not an object");
            };
            let project = map.remove("project");
            let file = map.remove("file");
            let name = map["name"].as_str().unwrap_or_default().to_string();
            validate::name("name", &name).map_err(|e| anyhow::anyhow!("seed: {}", e.message))?;
            Discovery::compute_v1()
                .check("Image", &Value::Object(map.clone()), Side::Request)
                .map_err(|e| anyhow::anyhow!("seed: image {name}: {e}"))?;
            map.insert("project".into(), project.unwrap_or(Value::Null));
            if let Some(file) = file {
                map.insert("file".into(), file);
            }
            images.push(map);
        }
        Ok(Seed {
            projects: strings(&doc, "projects")?,
            zones: strings(&doc, "zones")?,
            disk_types,
            machine_types,
            images,
        })
    }

    /// Reads a seed file; an image's relative `file` is relative to the seed's folder.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Seed> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the seed {}", path.display()))?;
        let mut seed = Seed::from_json(&text)?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        for image in &mut seed.images {
            if let Some(file) = image.get("file").and_then(Value::as_str) {
                let file = dir.join(file).to_string_lossy().into_owned();
                image.insert("file".into(), file.into());
            }
        }
        Ok(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_seed_loads_and_bad_images_are_refused() {
        let seed = Seed::default();
        assert!(seed.projects.contains(&"cos-cloud".to_string()));
        assert!(seed.images.len() >= 6);
        let bad = r#"{"projects":["p"],"zones":["z"],"images":[{"project":"p","name":"x","sizeGb":"1"}]}"#;
        let e = Seed::from_json(bad).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
