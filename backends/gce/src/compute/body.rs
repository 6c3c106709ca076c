//! The request bodies of the mutations, built as JSON from typed inputs by pure functions, with
//! upstream's fields (Daisy's `build_image.wf.json` and the Go code around it) plus this
//! builder's hygiene: labels on everything, `autoDelete` disks and a maximum run duration after
//! which GCE deletes a VM that a killed builder leaked.
//!
//! References go in as partial `projects/...` paths ([`crate::urls`]); int64 fields as strings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::model::{Metadata, MetadataItem};
use crate::urls;

/// The scopes of the build VM's service account, as upstream gives them.
pub const VM_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_write",
];

/// A disk to create.
#[derive(Clone, Debug)]
pub struct DiskSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// The image it starts from (any form [`urls::image`] takes), or `None` for a blank disk.
    pub source_image: Option<&'a str>,
    /// Its type (`-disk-type`, such as `pd-standard`).
    pub disk_type: &'a str,
    /// Its size in GB, or `None` for the image's size.
    pub size_gb: Option<i64>,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The `disks.insert` body of `spec` in `zone` of `project`.
pub fn disk(project: &str, zone: &str, spec: &DiskSpec) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(spec.name));
    if let Some(image) = spec.source_image {
        body.insert("sourceImage".into(), json!(urls::image(project, image)));
    }
    body.insert(
        "type".into(),
        json!(urls::disk_type(project, zone, spec.disk_type)),
    );
    if let Some(size) = spec.size_gb {
        body.insert("sizeGb".into(), json!(size.to_string()));
    }
    body.insert("labels".into(), json!(spec.labels));
    Value::Object(body)
}

/// The `disks.resize` body.
pub fn resize(size_gb: i64) -> Value {
    json!({"sizeGb": size_gb.to_string()})
}

/// A GPU to attach.
#[derive(Clone, Debug)]
pub struct Gpu<'a> {
    /// Its type (`-gpu-type`, such as `nvidia-tesla-t4`).
    pub accelerator_type: &'a str,
    /// How many.
    pub count: u32,
}

/// A build VM to create.
#[derive(Clone, Debug)]
pub struct InstanceSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// What the console shows about it.
    pub description: &'a str,
    /// Its machine type (`-machine-type`).
    pub machine_type: &'a str,
    /// Its disks by name, in order; the first is the boot disk. Each is deleted with the VM.
    pub disks: &'a [&'a str],
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its metadata items (`user-data`, `block-project-ssh-keys`, `cos-update-strategy`, ...).
    pub metadata: &'a [MetadataItem],
    /// The e-mail of its service account (`-service-account`; `default` for the project's).
    pub service_account: &'a str,
    /// A GPU, for `install-gpu` builds.
    pub gpu: Option<Gpu<'a>>,
    /// Its network (`-network`), if given.
    pub network: Option<&'a str>,
    /// Its subnetwork (`-subnet`), if given; a host project's path for shared VPC.
    pub subnetwork: Option<&'a str>,
    /// Whether it gets an external IP (upstream always gives one; `-no-external-ip` does not).
    pub external_ip: bool,
    /// How long it may live before GCE deletes it; `None` sends no time limit (for a project
    /// where GCE refuses one, see `GceBackend::create_vm`).
    pub max_run_duration: Option<Duration>,
}

/// The run durations GCE takes: 30 seconds to 120 days
/// (https://cloud.google.com/compute/docs/instances/limit-vm-runtime, gcloud's
/// `--max-run-duration`).
const RUN_DURATION_SECONDS: std::ops::RangeInclusive<u64> = 30..=120 * 24 * 3600;

/// The instance's `scheduling`: only combinations GCE documents as allowed.
fn scheduling(gpu: bool, max_run_duration: Option<Duration>) -> Value {
    let mut s = json!({
        // A VM with a GPU cannot live-migrate: it must TERMINATE on host maintenance
        // (https://cloud.google.com/compute/docs/gpus, "Restrictions"); any other keeps
        // GCE's default, MIGRATE
        // (https://cloud.google.com/compute/docs/instances/setting-vm-host-options).
        // `automaticRestart` keeps its default (true), which a standard VM may have.
        "onHostMaintenance": if gpu { "TERMINATE" } else { "MIGRATE" },
        "provisioningModel": "STANDARD",
    });
    if let Some(limit) = max_run_duration {
        // A standard VM takes a termination action only together with a time limit, and a
        // time limit needs one; the duration must lie in GCE's range
        // (https://cloud.google.com/compute/docs/instances/limit-vm-runtime).
        let seconds = limit
            .as_secs()
            .clamp(*RUN_DURATION_SECONDS.start(), *RUN_DURATION_SECONDS.end());
        s["instanceTerminationAction"] = json!("DELETE");
        s["maxRunDuration"] = json!({"seconds": seconds.to_string()});
    }
    s
}

/// The `instances.insert` body of `spec` in `zone` of `project`.
pub fn instance(project: &str, zone: &str, spec: &InstanceSpec) -> Value {
    let disks: Vec<Value> = spec
        .disks
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "source": urls::disk(project, zone, name),
                "deviceName": name,
                "boot": i == 0,
                "mode": "READ_WRITE",
                "autoDelete": true,
            })
        })
        .collect();
    let mut nic = Map::new();
    // Daisy's rule: the default network only when neither a network nor a subnet is given; a
    // subnet alone names its network.
    match (spec.network, spec.subnetwork) {
        (Some(network), _) => {
            nic.insert("network".into(), json!(urls::network(project, network)));
        }
        (None, None) => {
            nic.insert("network".into(), json!(urls::network(project, "default")));
        }
        (None, Some(_)) => {}
    }
    if let Some(subnetwork) = spec.subnetwork {
        nic.insert(
            "subnetwork".into(),
            json!(urls::subnetwork(project, zone, subnetwork)),
        );
    }
    if spec.external_ip {
        nic.insert("accessConfigs".into(), json!([{"type": "ONE_TO_ONE_NAT"}]));
    }
    let mut body = json!({
        "name": spec.name,
        "description": spec.description,
        "machineType": urls::machine_type(project, zone, spec.machine_type),
        "disks": disks,
        "labels": spec.labels,
        "metadata": {"items": spec.metadata},
        "serviceAccounts": [{"email": spec.service_account, "scopes": VM_SCOPES}],
        "networkInterfaces": [nic],
        "scheduling": scheduling(spec.gpu.is_some(), spec.max_run_duration),
    });
    if let Some(gpu) = &spec.gpu {
        body["guestAccelerators"] = json!([{
            "acceleratorType": urls::accelerator_type(project, zone, gpu.accelerator_type),
            "acceleratorCount": gpu.count,
        }]);
    }
    body
}

/// An image to make from a disk.
#[derive(Clone, Debug)]
pub struct ImageSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// The disk in the build project and zone, as `projects/P/zones/Z/disks/D` (the image may
    /// go to another project, so the path names the build project).
    pub source_disk: &'a str,
    /// Its family, if any.
    pub family: Option<&'a str>,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Licenses to add to those the disk carries (`projects/X/global/licenses/L` or full URLs).
    pub licenses: &'a [String],
    /// Its description, such as [`derivative_description`]'s.
    pub description: &'a str,
}

/// The `images.insert` body of `spec`.
pub fn image(spec: &ImageSpec) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(spec.name));
    body.insert("sourceDisk".into(), json!(urls::partial(spec.source_disk)));
    if let Some(family) = spec.family {
        body.insert("family".into(), json!(family));
    }
    body.insert("labels".into(), json!(spec.labels));
    if !spec.licenses.is_empty() {
        let licenses: Vec<&str> = spec.licenses.iter().map(|l| urls::partial(l)).collect();
        body.insert("licenses".into(), json!(licenses));
    }
    body.insert("description".into(), json!(spec.description));
    Value::Object(body)
}

/// Upstream's description of an output image made from `source` (`projects/P/global/images/N`).
pub fn derivative_description(source: &str) -> String {
    format!("Derivative of {}.", urls::partial(source))
}

/// The `images.insert` body of a temporary image imported from `source`, a `disk.raw` tar.gz in
/// Cloud Storage (`https://storage.googleapis.com/B/O`).
pub fn raw_image(name: &str, source: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({"name": name, "rawDisk": {"source": source}, "labels": labels})
}

/// The `images.deprecate` body: DEPRECATED in favour of `replacement`
/// (`projects/P/global/images/N`), with `deleted` set to `now + ttl` when a TTL is given. GCE
/// treats `deleted` as information only; it does not delete the image.
pub fn deprecate(replacement: &str, now: jiff::Timestamp, ttl: Option<Duration>) -> Value {
    let mut body = json!({"state": "DEPRECATED", "replacement": urls::partial(replacement)});
    if let Some(ttl) = ttl {
        let seconds = now
            .as_second()
            .saturating_add(ttl.as_secs().try_into().unwrap_or(i64::MAX));
        let deleted = jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::MAX);
        body["deleted"] = json!(deleted.to_string());
    }
    body
}

/// `current` with `key` set to `value` (replaced if present, else added last), keeping the
/// fingerprint it was read with: `setMetadata` replaces every item, so sending only the new
/// key would drop `user-data`.
pub fn merge_metadata(current: &Metadata, key: &str, value: &str) -> Metadata {
    let mut merged = current.clone();
    match merged.items.iter_mut().find(|item| item.key == key) {
        Some(item) => item.value = value.to_string(),
        None => merged.items.push(MetadataItem {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::build_labels;

    fn items() -> Vec<MetadataItem> {
        [
            ("user-data", "#cloud-config\n"),
            ("block-project-ssh-keys", "TRUE"),
            ("cos-update-strategy", "update_disabled"),
        ]
        .map(|(k, v)| MetadataItem {
            key: k.into(),
            value: v.into(),
        })
        .to_vec()
    }

    fn vm<'a>(
        labels: &'a BTreeMap<String, String>,
        metadata: &'a [MetadataItem],
    ) -> InstanceSpec<'a> {
        InstanceSpec {
            name: "preload-vm-build-image-b4x9q",
            description: "Build VM of cos-customizer build b4x9q",
            machine_type: "n1-standard-1",
            disks: &[
                "boot-disk-build-image-b4x9q",
                "cidata-disk-build-image-b4x9q",
            ],
            labels,
            metadata,
            service_account: "default",
            gpu: None,
            network: None,
            subnetwork: None,
            external_ip: true,
            max_run_duration: Some(Duration::from_secs(3 * 3600 + 300)),
        }
    }

    #[test]
    fn instance_golden() {
        let labels = build_labels("b4x9q");
        let metadata = items();
        let body = instance("p", "us-west1-b", &vm(&labels, &metadata));
        let disk = |name: &str, boot: bool| {
            json!({"source": format!("projects/p/zones/us-west1-b/disks/{name}"), "deviceName": name,
                   "boot": boot, "mode": "READ_WRITE", "autoDelete": true})
        };
        assert_eq!(
            body,
            json!({
                "name": "preload-vm-build-image-b4x9q",
                "description": "Build VM of cos-customizer build b4x9q",
                "machineType": "projects/p/zones/us-west1-b/machineTypes/n1-standard-1",
                "disks": [disk("boot-disk-build-image-b4x9q", true), disk("cidata-disk-build-image-b4x9q", false)],
                "labels": {"cos-customizer-build": "b4x9q", "cos-customizer-cleanup": ""},
                "metadata": {"items": [
                    {"key": "user-data", "value": "#cloud-config\n"},
                    {"key": "block-project-ssh-keys", "value": "TRUE"},
                    {"key": "cos-update-strategy", "value": "update_disabled"},
                ]},
                "serviceAccounts": [{"email": "default", "scopes": [
                    "https://www.googleapis.com/auth/cloud-platform",
                    "https://www.googleapis.com/auth/devstorage.read_write",
                ]}],
                "networkInterfaces": [{
                    "network": "projects/p/global/networks/default",
                    "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}],
                }],
                "scheduling": {
                    "onHostMaintenance": "MIGRATE",
                    "provisioningModel": "STANDARD",
                    "instanceTerminationAction": "DELETE",
                    "maxRunDuration": {"seconds": "11100"},
                },
            })
        );
    }

    #[test]
    fn a_gpu_terminates_on_host_maintenance() {
        let labels = build_labels("b4x9q");
        let spec = InstanceSpec {
            gpu: Some(Gpu {
                accelerator_type: "nvidia-tesla-t4",
                count: 1,
            }),
            ..vm(&labels, &[])
        };
        let body = instance("p", "us-west1-b", &spec);
        assert_eq!(body["scheduling"]["onHostMaintenance"], "TERMINATE");
        assert_eq!(
            body["guestAccelerators"],
            json!([{"acceleratorType": "projects/p/zones/us-west1-b/acceleratorTypes/nvidia-tesla-t4",
                    "acceleratorCount": 1}])
        );
    }

    #[test]
    fn time_limits_stay_in_gces_range_or_go_with_their_action() {
        let labels = build_labels("b4x9q");
        let limited = |d: Option<Duration>| {
            instance(
                "p",
                "z",
                &InstanceSpec {
                    max_run_duration: d,
                    ..vm(&labels, &[])
                },
            )["scheduling"]
                .clone()
        };
        let short = limited(Some(Duration::from_secs(5)));
        assert_eq!(short["maxRunDuration"]["seconds"], "30");
        let long = limited(Some(Duration::from_secs(200 * 24 * 3600)));
        assert_eq!(long["maxRunDuration"]["seconds"], "10368000");
        assert_eq!(
            limited(None),
            json!({"onHostMaintenance": "MIGRATE", "provisioningModel": "STANDARD"})
        );
    }

    #[test]
    fn networks_subnets_and_no_external_ip() {
        let labels = build_labels("b4x9q");
        let shared = InstanceSpec {
            subnetwork: Some("projects/host/regions/us-west1/subnetworks/s"),
            external_ip: false,
            ..vm(&labels, &[])
        };
        assert_eq!(
            instance("p", "us-west1-b", &shared)["networkInterfaces"],
            json!([{"subnetwork": "projects/host/regions/us-west1/subnetworks/s"}])
        );
        let both = InstanceSpec {
            network: Some("n"),
            subnetwork: Some("s"),
            ..vm(&labels, &[])
        };
        assert_eq!(
            instance("p", "us-west1-b", &both)["networkInterfaces"],
            json!([{"network": "projects/p/global/networks/n",
                    "subnetwork": "projects/p/regions/us-west1/subnetworks/s",
                    "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}])
        );
    }

    #[test]
    fn disk_golden() {
        let labels = build_labels("b4x9q");
        let boot = DiskSpec {
            name: "boot-disk-build-image-b4x9q",
            source_image: Some("projects/cos-cloud/global/images/cos-113-18244-85-29"),
            disk_type: "pd-standard",
            size_gb: Some(10),
            labels: &labels,
        };
        assert_eq!(
            disk("p", "us-west1-b", &boot),
            json!({
                "name": "boot-disk-build-image-b4x9q",
                "sourceImage": "projects/cos-cloud/global/images/cos-113-18244-85-29",
                "type": "projects/p/zones/us-west1-b/diskTypes/pd-standard",
                "sizeGb": "10",
                "labels": {"cos-customizer-build": "b4x9q", "cos-customizer-cleanup": ""},
            })
        );
        let cidata = DiskSpec {
            source_image: Some("cidata-build-image-b4x9q"),
            size_gb: None,
            ..boot
        };
        let body = disk("p", "us-west1-b", &cidata);
        assert_eq!(
            body["sourceImage"],
            "projects/p/global/images/cidata-build-image-b4x9q"
        );
        assert!(body.get("sizeGb").is_none());
        let blank = DiskSpec {
            source_image: None,
            ..cidata
        };
        assert!(disk("p", "z", &blank).get("sourceImage").is_none());
        assert_eq!(resize(12), json!({"sizeGb": "12"}));
    }

    #[test]
    fn image_golden() {
        let labels = BTreeMap::from([("team".to_string(), "cos".to_string())]);
        let licenses = vec![
            "projects/p/global/licenses/extra".to_string(),
            "https://www.googleapis.com/compute/v1/projects/cos-cloud/global/licenses/cos-pcid"
                .to_string(),
        ];
        let description =
            derivative_description("projects/cos-cloud/global/images/cos-113-18244-85-29");
        let spec = ImageSpec {
            name: "my-cos",
            source_disk: "projects/p/zones/us-west1-b/disks/boot-disk-build-image-b4x9q",
            family: Some("my-family"),
            labels: &labels,
            licenses: &licenses,
            description: &description,
        };
        assert_eq!(
            image(&spec),
            json!({
                "name": "my-cos",
                "sourceDisk": "projects/p/zones/us-west1-b/disks/boot-disk-build-image-b4x9q",
                "family": "my-family",
                "labels": {"team": "cos"},
                "licenses": ["projects/p/global/licenses/extra", "projects/cos-cloud/global/licenses/cos-pcid"],
                "description": "Derivative of projects/cos-cloud/global/images/cos-113-18244-85-29.",
            })
        );
        let bare = image(&ImageSpec {
            family: None,
            licenses: &[],
            ..spec
        });
        assert!(bare.get("family").is_none() && bare.get("licenses").is_none());
    }

    #[test]
    fn raw_image_golden() {
        let labels = build_labels("b4x9q");
        assert_eq!(
            raw_image(
                "cidata-build-image-b4x9q",
                "https://storage.googleapis.com/b/w/cos-customizer/b4x9q/cidata.tar.gz",
                &labels
            ),
            json!({"name": "cidata-build-image-b4x9q",
                   "rawDisk": {"source": "https://storage.googleapis.com/b/w/cos-customizer/b4x9q/cidata.tar.gz"},
                   "labels": {"cos-customizer-build": "b4x9q", "cos-customizer-cleanup": ""}})
        );
    }

    #[test]
    fn deprecate_golden() {
        let now: jiff::Timestamp = "2026-11-29T07:40:00.5Z".parse().unwrap();
        assert_eq!(
            deprecate(
                "projects/p/global/images/new",
                now,
                Some(Duration::from_secs(86400))
            ),
            json!({"state": "DEPRECATED", "replacement": "projects/p/global/images/new",
                   "deleted": "2026-11-30T07:40:00Z"})
        );
        assert_eq!(
            deprecate(
                "https://www.googleapis.com/compute/v1/projects/p/global/images/new",
                now,
                None
            ),
            json!({"state": "DEPRECATED", "replacement": "projects/p/global/images/new"})
        );
    }

    #[test]
    fn merging_metadata_keeps_every_item_and_the_fingerprint() {
        let current = Metadata {
            fingerprint: Some("fp=".into()),
            items: items(),
        };
        let merged = merge_metadata(&current, "DaisyEnd", "ack");
        assert_eq!(merged.fingerprint.as_deref(), Some("fp="));
        assert_eq!(merged.items.len(), 4);
        assert_eq!(merged.items[..3], current.items[..]);
        assert_eq!(
            merged.items[3],
            MetadataItem {
                key: "DaisyEnd".into(),
                value: "ack".into()
            }
        );
        let again = merge_metadata(&merged, "DaisyEnd", "ack2");
        assert_eq!(again.items.len(), 4);
        assert_eq!(again.items[3].value, "ack2");
        assert_eq!(
            serde_json::to_value(&merged).unwrap()["fingerprint"],
            json!("fp=")
        );
    }
}
