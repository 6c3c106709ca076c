//! Resource URLs in the forms GCE documents: partial (`projects/P/zones/Z/disks/D`), full
//! (`https://www.googleapis.com/compute/v1/projects/...`), and the short forms users type
//! (`global/networks/N`, `regions/R/subnetworks/S`, a bare name).
//!
//! Request bodies carry the partial form, which GCE accepts for every field used here; GCE
//! answers with full URLs, so comparisons go through [`partial`].

/// The prefix of the full URLs GCE returns (`selfLink`, `licenses`, ...).
pub const FULL_PREFIX: &str = "https://www.googleapis.com/compute/v1/";

/// The `projects/...` path of `url`: a full URL loses everything before `projects/` (whatever
/// its host or API version), a partial one is returned as it is.
pub fn partial(url: &str) -> &str {
    if url.starts_with("https://") || url.starts_with("http://") {
        if let Some(at) = url.find("/projects/") {
            return &url[at + 1..];
        }
    }
    url
}

/// The full URL of a partial `projects/...` path, as GCE writes it in `selfLink`.
pub fn full(path: &str) -> String {
    format!("{FULL_PREFIX}{}", partial(path))
}

/// The last path segment of `url`: the name of the resource it points at.
pub fn name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// The region a zone belongs to: `us-central1-a` → `us-central1`.
pub fn zone_region(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(region, _)| region)
}

/// `value` as a `projects/...` path. A full URL or `projects/...` path stays where it points
/// (another project's, for shared VPC); a scoped path such as `global/networks/N` or
/// `regions/R/subnetworks/S` goes into `project`; a bare name becomes `scope/collection/name`
/// in `project`.
fn resolve(project: &str, scope: &str, collection: &str, value: &str) -> String {
    let value = partial(value);
    if value.starts_with("projects/") {
        value.to_string()
    } else if ["global/", "regions/", "zones/"]
        .iter()
        .any(|s| value.starts_with(s))
    {
        format!("projects/{project}/{value}")
    } else {
        format!("projects/{project}/{scope}/{collection}/{value}")
    }
}

/// A machine type (`-machine-type`) in `zone` of `project`.
pub fn machine_type(project: &str, zone: &str, value: &str) -> String {
    resolve(project, &format!("zones/{zone}"), "machineTypes", value)
}

/// A disk type (`-disk-type`, such as `pd-standard`) in `zone` of `project`.
pub fn disk_type(project: &str, zone: &str, value: &str) -> String {
    resolve(project, &format!("zones/{zone}"), "diskTypes", value)
}

/// An accelerator type (`-gpu-type`, such as `nvidia-tesla-t4`) in `zone` of `project`.
pub fn accelerator_type(project: &str, zone: &str, value: &str) -> String {
    resolve(project, &format!("zones/{zone}"), "acceleratorTypes", value)
}

/// A disk in `zone` of `project`.
pub fn disk(project: &str, zone: &str, value: &str) -> String {
    resolve(project, &format!("zones/{zone}"), "disks", value)
}

/// An image of `project` (a name, `projects/P/global/images/N`,
/// `projects/P/global/images/family/F` or a full URL).
pub fn image(project: &str, value: &str) -> String {
    resolve(project, "global", "images", value)
}

/// A network (`-network`): a name in `project`, or a host project's path for shared VPC.
pub fn network(project: &str, value: &str) -> String {
    resolve(project, "global", "networks", value)
}

/// A subnetwork (`-subnet`): a name in `project` and the zone's region, or a host project's
/// `projects/HOST/regions/R/subnetworks/S` for shared VPC.
pub fn subnetwork(project: &str, zone: &str, value: &str) -> String {
    resolve(
        project,
        &format!("regions/{}", zone_region(zone)),
        "subnetworks",
        value,
    )
}

/// A license: `projects/X/global/licenses/L` stays, a full URL loses its prefix, a bare name
/// is taken to be in `project`.
pub fn license(project: &str, value: &str) -> String {
    resolve(project, "global", "licenses", value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_full_round_trip() {
        let p = "projects/p/zones/us-central1-a/disks/d";
        assert_eq!(partial(p), p);
        assert_eq!(
            full(p),
            format!("https://www.googleapis.com/compute/v1/{p}")
        );
        assert_eq!(partial(&full(p)), p);
        assert_eq!(full(&full(p)), full(p));
        // Other hosts and versions, as an emulator or staging endpoint writes them.
        assert_eq!(
            partial("http://127.0.0.1:9/compute/staging_v1/projects/p/global/images/i"),
            "projects/p/global/images/i"
        );
        assert_eq!(
            partial("global/networks/default"),
            "global/networks/default"
        );
    }

    #[test]
    fn names_and_regions() {
        assert_eq!(name(&full("projects/p/zones/z/instances/vm")), "vm");
        assert_eq!(name("vm"), "vm");
        assert_eq!(zone_region("us-central1-a"), "us-central1");
        assert_eq!(zone_region("europe-west4-b"), "europe-west4");
        assert_eq!(zone_region("nodash"), "nodash");
    }

    #[test]
    fn bare_names_land_in_the_build_project() {
        assert_eq!(
            machine_type("p", "us-west1-b", "n1-standard-1"),
            "projects/p/zones/us-west1-b/machineTypes/n1-standard-1"
        );
        assert_eq!(
            disk_type("p", "us-west1-b", "pd-ssd"),
            "projects/p/zones/us-west1-b/diskTypes/pd-ssd"
        );
        assert_eq!(
            accelerator_type("p", "us-west1-b", "nvidia-tesla-t4"),
            "projects/p/zones/us-west1-b/acceleratorTypes/nvidia-tesla-t4"
        );
        assert_eq!(disk("p", "z", "boot"), "projects/p/zones/z/disks/boot");
        assert_eq!(image("p", "cidata"), "projects/p/global/images/cidata");
        assert_eq!(
            network("p", "default"),
            "projects/p/global/networks/default"
        );
        assert_eq!(
            subnetwork("p", "us-west1-b", "s"),
            "projects/p/regions/us-west1/subnetworks/s"
        );
        assert_eq!(license("p", "l"), "projects/p/global/licenses/l");
    }

    #[test]
    fn scoped_paths_land_in_the_build_project() {
        assert_eq!(
            network("p", "global/networks/n"),
            "projects/p/global/networks/n"
        );
        assert_eq!(
            subnetwork("p", "us-west1-b", "regions/us-east1/subnetworks/s"),
            "projects/p/regions/us-east1/subnetworks/s"
        );
        assert_eq!(
            machine_type("p", "z", "zones/z/machineTypes/m"),
            "projects/p/zones/z/machineTypes/m"
        );
    }

    #[test]
    fn shared_vpc_paths_keep_the_host_project() {
        assert_eq!(
            subnetwork(
                "p",
                "us-west1-b",
                "projects/host/regions/us-west1/subnetworks/s"
            ),
            "projects/host/regions/us-west1/subnetworks/s"
        );
        assert_eq!(
            network("p", "projects/host/global/networks/shared"),
            "projects/host/global/networks/shared"
        );
        assert_eq!(
            subnetwork(
                "p",
                "us-west1-b",
                "https://www.googleapis.com/compute/v1/projects/host/regions/us-west1/subnetworks/s"
            ),
            "projects/host/regions/us-west1/subnetworks/s"
        );
    }

    #[test]
    fn image_forms() {
        assert_eq!(
            image("p", "projects/cos-cloud/global/images/family/cos-stable"),
            "projects/cos-cloud/global/images/family/cos-stable"
        );
        assert_eq!(
            image(
                "p",
                &full("projects/cos-cloud/global/images/cos-113-18244-85-29")
            ),
            "projects/cos-cloud/global/images/cos-113-18244-85-29"
        );
        assert_eq!(
            license(
                "p",
                "https://www.googleapis.com/compute/v1/projects/cos-cloud/global/licenses/cos"
            ),
            "projects/cos-cloud/global/licenses/cos"
        );
    }
}
