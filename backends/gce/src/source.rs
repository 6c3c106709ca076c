//! The source image of a GCE build, resolved at `start-image-build` as the original's
//! `resolveImageName` does: `-image-name` must exist, `-image-family` is the family's current
//! image, and `-image-milestone` is the newest cos-cloud image of that milestone.
//!
//! The milestone choice improves on the original in three ways (the GCE design brief, §3.2): it
//! also reads the new `cos-M-a-b-c` names that the original's pattern misses, prefers images that
//! are not deprecated, and never takes an image of the other architecture.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result};

use crate::compute::model::Image;
use crate::compute::Compute;
use crate::error::{kind_of, ErrorKind};

/// What `start-image-build` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceQuery {
    /// `-image-name`: this image.
    Name(String),
    /// `-image-family`: the family's newest image that is not deprecated.
    Family(String),
    /// `-image-milestone`: the newest image of this COS milestone.
    Milestone(u32),
}

/// The CPU architecture the build VM will have. The machine type is not known when the build
/// starts, so callers that know nothing better use the default, `X86_64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    /// x86-64 (GCE `X86_64`).
    #[default]
    X86_64,
    /// Arm (GCE `ARM64`), such as the T2A machines.
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "X86_64",
            Arch::Arm64 => "ARM64",
        })
    }
}

/// Finds the image `query` names in `project`. `arch` rules the milestone choice only: a name or
/// family is the user's explicit choice. Errors name the query and the flag to fix.
pub async fn resolve(
    compute: &Compute,
    project: &str,
    query: &SourceQuery,
    arch: Arch,
) -> Result<Image> {
    match query {
        SourceQuery::Name(name) => compute.images_get(project, name).await.map_err(|e| {
            if kind_of(&e) == Some(ErrorKind::NotFound) {
                e.context(format!(
                    "could not find source image projects/{project}/global/images/{name}: \
                     check -image-name and -image-project"
                ))
            } else {
                e.context(format!(
                    "reading source image projects/{project}/global/images/{name}"
                ))
            }
        }),
        SourceQuery::Family(family) => compute
            .images_get_from_family(project, family)
            .await
            .map_err(|e| {
                if kind_of(&e) == Some(ErrorKind::NotFound) {
                    e.context(format!(
                        "could not find an image of family {family} in project {project} (the \
                         family does not exist or all its images are deprecated): check \
                         -image-family and -image-project"
                    ))
                } else {
                    e.context(format!(
                        "reading the image of family {family} in project {project}"
                    ))
                }
            }),
        SourceQuery::Milestone(milestone) => resolve_milestone(compute, project, *milestone, arch)
            .await
            .with_context(|| format!("resolving -image-milestone={milestone}")),
    }
}

/// The newest usable `arch` image of `milestone` in `project`, listed with a server-side filter
/// on the name; when there is none, a second listing finds the milestones there are.
async fn resolve_milestone(
    compute: &Compute,
    project: &str,
    milestone: u32,
    arch: Arch,
) -> Result<Image> {
    let images = compute
        .images_list(project, Some(&milestone_filter(milestone, arch)))
        .await
        .with_context(|| format!("listing the images of milestone {milestone} in {project}"))?;
    let unusable = match choose(images, milestone, arch) {
        Ok(image) => return Ok(image),
        Err(unusable) => unusable,
    };
    let all = compute
        .images_list(project, Some(r#"name eq "cos-.*""#))
        .await
        .with_context(|| format!("listing the COS images in {project}"))?;
    let milestones = usable_milestones(&all, arch);
    let available = if milestones.is_empty() {
        format!("{project} has no usable {arch} COS image at all")
    } else {
        let list: Vec<String> = milestones.iter().map(u32::to_string).collect();
        format!("milestones with {arch} images: {}", list.join(", "))
    };
    let skipped = if unusable.is_empty() {
        String::new()
    } else {
        format!(" (only unusable ones: {})", unusable.join(", "))
    };
    anyhow::bail!(
        "no usable {arch} image of milestone {milestone} in {project}{skipped}; {available}: \
         check -image-milestone"
    )
}

/// The list filter for the images of `milestone`: one `eq` on the name, in the RE2 subset every
/// server takes (GCE does not combine regular expressions on several fields, so the
/// architecture is checked here).
fn milestone_filter(milestone: u32, arch: Arch) -> String {
    let arm = match arch {
        Arch::X86_64 => "",
        Arch::Arm64 => "arm64-",
    };
    format!(r#"name eq "cos-{arm}([a-z]+-)*{milestone}-[0-9]+-[0-9]+-[0-9]+""#)
}

/// A cos-cloud image name taken apart: `cos-[arm64-][channel-]M-a-b-c`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CosName {
    arm64: bool,
    milestone: u32,
    build: [u64; 3],
}

/// Reads both the old names (`cos-stable-109-17800-66-27`, `cos-arm64-beta-117-18613-0-53`) and
/// the new ones (`cos-109-17800-147-54`); anything else is not a COS release image.
fn parse_name(name: &str) -> Option<CosName> {
    let mut parts = name.strip_prefix("cos-")?.split('-').peekable();
    let arm64 = parts.next_if_eq(&"arm64").is_some();
    while parts.next_if(|p| is_word(p)).is_some() {}
    let numbers: Vec<u64> = parts
        .map(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let [milestone, a, b, c] = numbers[..] else {
        return None;
    };
    Some(CosName {
        arm64,
        milestone: u32::try_from(milestone).ok()?,
        build: [a, b, c],
    })
}

fn is_word(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase())
}

/// Whether `image` (named `name`) runs on `arch`: the `architecture` field when GCE set it, and
/// an `arm64` name is Arm whatever the field says.
fn runs_on(image: &Image, name: &CosName, arch: Arch) -> bool {
    let is_arm = name.arm64 || image.architecture.as_deref() == Some("ARM64");
    is_arm == (arch == Arch::Arm64)
}

/// How usable an image is as a source: `None` if not at all (obsolete, deleted, not ready),
/// else 1 when active and 0 when only deprecated.
fn usability(image: &Image) -> Option<u8> {
    if !matches!(image.status.as_str(), "" | "READY") {
        return None;
    }
    match image.deprecated.as_ref().map(|d| d.state.as_str()) {
        None | Some("" | "ACTIVE") => Some(1),
        Some("DEPRECATED") => Some(0),
        Some(_) => None,
    }
}

/// How a candidate ranks: active before deprecated, then the build number, then the name.
type Rank = (u8, [u64; 3], String);

/// The image to build from among `images`: of `milestone` and `arch`, usable, active before
/// deprecated, then the highest build number compared numerically (so `147` beats `66`), then
/// the name, so the choice never depends on the listing's order. With none, the reasons the
/// images of the milestone were passed over.
fn choose(images: Vec<Image>, milestone: u32, arch: Arch) -> Result<Image, Vec<String>> {
    let mut unusable = Vec::new();
    let mut best: Option<(Rank, Image)> = None;
    for image in images {
        let Some(name) = parse_name(&image.name).filter(|n| n.milestone == milestone) else {
            continue;
        };
        if !runs_on(&image, &name, arch) {
            unusable.push(format!("{} (not {arch})", image.name));
            continue;
        }
        let Some(rank) = usability(&image) else {
            let state = image.deprecated.as_ref().map(|d| d.state.as_str());
            let why = state.filter(|s| !s.is_empty()).unwrap_or(&image.status);
            unusable.push(format!("{} ({why})", image.name));
            continue;
        };
        let key = (rank, name.build, image.name.clone());
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, image));
        }
    }
    best.map(|(_, image)| image).ok_or(unusable)
}

/// The milestones that have a usable `arch` image among `images`, for an error message.
fn usable_milestones(images: &[Image], arch: Arch) -> BTreeSet<u32> {
    images
        .iter()
        .filter_map(|image| {
            let name = parse_name(&image.name)?;
            (runs_on(image, &name, arch) && usability(image).is_some()).then_some(name.milestone)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use cos_customizer_gce_emulator::{Emulator, Handle, Options, Seed};
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::Auth;
    use crate::http::Api;

    fn image(v: Value) -> Image {
        serde_json::from_value(v).unwrap()
    }

    fn named(names: &[&str]) -> Vec<Image> {
        names
            .iter()
            .map(|n| image(json!({"name": n, "architecture": "X86_64", "status": "READY"})))
            .collect()
    }

    #[test]
    fn both_name_styles_are_read() {
        let n = |m, b: [u64; 3], arm64| {
            Some(CosName {
                arm64,
                milestone: m,
                build: b,
            })
        };
        assert_eq!(
            parse_name("cos-dev-72-11172-0-0"),
            n(72, [11172, 0, 0], false)
        );
        assert_eq!(
            parse_name("cos-stable-109-17800-66-27"),
            n(109, [17800, 66, 27], false)
        );
        assert_eq!(
            parse_name("cos-93-16623-461-15"),
            n(93, [16623, 461, 15], false)
        );
        assert_eq!(
            parse_name("cos-arm64-109-17800-147-54"),
            n(109, [17800, 147, 54], true)
        );
        assert_eq!(
            parse_name("cos-arm64-beta-117-18613-0-53"),
            n(117, [18613, 0, 53], true)
        );
        for other in [
            "cos-109-17800-147",
            "cos-109-17800-147-54-1",
            "cos-dev-72-11172-0-x",
            "cos-dev-72-11172--0",
            "cos-109-17800-+1-54",
            "cos-dev",
            "ubuntu-2204-jammy-v20240319",
            "my-cos-dev-72-11172-0-0",
            "cos-stable-72-11172-0-0-rc",
            "cos-99999999999-1-2-3",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_highest_build_wins_numerically_whatever_the_order_or_style() {
        let mut images = named(&[
            "cos-109-17800-147-54",
            "cos-stable-109-17800-66-27",
            "cos-109-17800-9-99",
            "cos-beta-121-18867-0-79",
            "cos-dev-72-11172-0-0",
        ]);
        let picked = choose(images.clone(), 109, Arch::X86_64).unwrap();
        assert_eq!(picked.name, "cos-109-17800-147-54");
        images.reverse();
        let picked = choose(images, 109, Arch::X86_64).unwrap();
        assert_eq!(picked.name, "cos-109-17800-147-54");
        let old = choose(
            named(&["cos-stable-72-11172-10-0", "cos-72-11172-9-0"]),
            72,
            Arch::X86_64,
        );
        assert_eq!(old.unwrap().name, "cos-stable-72-11172-10-0");
    }

    #[test]
    fn active_images_are_preferred_and_obsolete_ones_never_taken() {
        let images = vec![
            image(json!({"name": "cos-109-17800-200-0", "deprecated": {"state": "OBSOLETE"}})),
            image(json!({"name": "cos-109-17800-150-0", "deprecated": {"state": "DEPRECATED"}})),
            image(json!({"name": "cos-109-17800-100-0", "deprecated": {"state": "ACTIVE"}})),
            image(json!({"name": "cos-109-17800-300-0", "status": "FAILED"})),
        ];
        let picked = choose(images.clone(), 109, Arch::X86_64).unwrap();
        assert_eq!(picked.name, "cos-109-17800-100-0");
        // With no active image, a deprecated one still builds (GCE only warns about it).
        let picked = choose(images[..2].to_vec(), 109, Arch::X86_64).unwrap();
        assert_eq!(picked.name, "cos-109-17800-150-0");
        let none = choose(
            vec![images[0].clone(), images[3].clone()],
            109,
            Arch::X86_64,
        );
        assert_eq!(
            none.unwrap_err(),
            [
                "cos-109-17800-200-0 (OBSOLETE)",
                "cos-109-17800-300-0 (FAILED)"
            ]
        );
    }

    #[test]
    fn the_other_architecture_is_never_taken() {
        let images = vec![
            image(json!({"name": "cos-arm64-109-17800-900-0"})),
            image(json!({"name": "cos-109-17800-800-0", "architecture": "ARM64"})),
            image(json!({"name": "cos-109-17800-1-0", "architecture": "X86_64"})),
            image(json!({"name": "cos-stable-109-17800-0-5"})),
        ];
        let x86 = choose(images.clone(), 109, Arch::X86_64).unwrap();
        assert_eq!(x86.name, "cos-109-17800-1-0");
        let arm = choose(images.clone(), 109, Arch::Arm64).unwrap();
        assert_eq!(arm.name, "cos-arm64-109-17800-900-0");
        let only_arm = choose(images[..2].to_vec(), 109, Arch::X86_64).unwrap_err();
        assert_eq!(
            only_arm,
            [
                "cos-arm64-109-17800-900-0 (not X86_64)",
                "cos-109-17800-800-0 (not X86_64)"
            ]
        );
        let milestones = usable_milestones(&images, Arch::Arm64);
        assert_eq!(milestones.into_iter().collect::<Vec<_>>(), [109]);
    }

    #[test]
    fn the_filter_selects_the_milestone_by_name() {
        assert_eq!(
            milestone_filter(109, Arch::X86_64),
            r#"name eq "cos-([a-z]+-)*109-[0-9]+-[0-9]+-[0-9]+""#
        );
        assert!(milestone_filter(109, Arch::Arm64).starts_with(r#"name eq "cos-arm64-("#));
    }

    /// An emulator seeded with the built-in images plus `extra` cos-cloud ones.
    async fn emulator(extra: &[Value]) -> (Handle, Compute) {
        let mut seed = Seed::default();
        for e in extra {
            let mut image = e.as_object().unwrap().clone();
            image.insert("project".into(), "cos-cloud".into());
            seed.images.push(image);
        }
        let emu = Emulator::start(Options {
            seed,
            ..Options::default()
        })
        .await
        .unwrap();
        let compute = Compute::new(Api::new(&emu.compute_base(), Auth::None).unwrap());
        (emu, compute)
    }

    async fn pick(compute: &Compute, query: SourceQuery) -> Result<Image> {
        resolve(compute, "cos-cloud", &query, Arch::X86_64).await
    }

    #[tokio::test]
    async fn names_and_families_resolve_in_the_emulator() {
        let (_emu, compute) = emulator(&[]).await;
        let by_name = pick(&compute, SourceQuery::Name("cos-dev-125-19100-0-0".into()))
            .await
            .unwrap();
        assert_eq!(by_name.labels["channel"], "dev");
        let by_family = pick(&compute, SourceQuery::Family("cos-stable".into()))
            .await
            .unwrap();
        assert_eq!(by_family.name, "cos-stable-109-17800-66-27");
        assert_eq!(by_family.licenses.len(), 2);

        let e = pick(&compute, SourceQuery::Name("cos-nope".into()))
            .await
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(
                "could not find source image projects/cos-cloud/global/images/cos-nope: \
                 check -image-name and -image-project"
            ),
            "{msg}"
        );
        let e = pick(&compute, SourceQuery::Family("cos-nope".into()))
            .await
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("family cos-nope in project cos-cloud") && msg.contains("-image-family"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn milestones_resolve_in_the_emulator_with_a_server_side_filter() {
        let (emu, compute) = emulator(&[
            // Higher than every x86 image of 109 and 125: must still never be chosen.
            json!({"name": "cos-arm64-109-17800-999-0", "family": "cos-arm64-109-lts",
                   "architecture": "ARM64", "creationTimestamp": "2025-02-01T10:00:00.000-08:00"}),
            json!({"name": "cos-125-19100-9-0", "architecture": "ARM64",
                   "creationTimestamp": "2025-10-01T10:00:00.000-07:00"}),
        ])
        .await;
        for (milestone, want) in [
            // New style beats the old-style cos-stable-109-17800-66-27 and the obsolete -15.
            (109, "cos-109-17800-147-54"),
            (121, "cos-beta-121-18867-0-79"),
            (125, "cos-dev-125-19100-0-0"),
            // Only a deprecated image: still taken.
            (105, "cos-stable-105-17412-101-24"),
        ] {
            emu.clear_requests();
            let got = pick(&compute, SourceQuery::Milestone(milestone))
                .await
                .unwrap();
            assert_eq!(got.name, want, "milestone {milestone}");
            let requests = emu.requests();
            assert_eq!(requests.len(), 1, "{requests:?}");
            assert_eq!(requests[0].path, "projects/cos-cloud/global/images");
            assert_eq!(
                requests[0].query,
                [(
                    "filter".to_string(),
                    milestone_filter(milestone, Arch::X86_64)
                )]
            );
        }
        let arm = resolve(
            &compute,
            "cos-cloud",
            &SourceQuery::Milestone(109),
            Arch::Arm64,
        )
        .await
        .unwrap();
        assert_eq!(arm.name, "cos-arm64-109-17800-999-0");
    }

    #[tokio::test]
    async fn a_missing_milestone_names_the_ones_there_are() {
        let (_emu, compute) = emulator(&[
            json!({"name": "cos-130-1-2-3", "architecture": "ARM64"}),
            json!({"name": "cos-131-1-2-3", "deprecated": {"state": "OBSOLETE"}}),
        ])
        .await;
        let e = pick(&compute, SourceQuery::Milestone(99))
            .await
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.starts_with("resolving -image-milestone=99: no usable X86_64 image of milestone 99 in cos-cloud;"), "{msg}");
        assert!(
            msg.contains(
                "milestones with X86_64 images: 105, 109, 121, 125: check -image-milestone"
            ),
            "{msg}"
        );
        let e = pick(&compute, SourceQuery::Milestone(130))
            .await
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("(only unusable ones: cos-130-1-2-3 (not X86_64))"),
            "{msg}"
        );
        let e = pick(&compute, SourceQuery::Milestone(131))
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("cos-131-1-2-3 (OBSOLETE)"),
            "{e:#}"
        );
    }
}
