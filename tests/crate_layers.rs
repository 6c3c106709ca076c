//! The README's Architecture lists the workspace's crates in layers, in its table's order: a
//! crate's `[dependencies]` (and `[build-dependencies]`) name only crates above it; its
//! `[dev-dependencies]` name crates above it or the test-only ones (folders under `tests/`),
//! and no production crate takes a test-only one as a dependency. This reads the table and
//! every member's manifest (through `cargo metadata`) and fails naming each crate and
//! dependency that breaks the order, and any drift between the table and the workspace.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// How a crate takes another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `[dependencies]` or `[build-dependencies]`: linked into the crate itself.
    Normal,
    /// `[dev-dependencies]`: its tests only.
    Dev,
}

/// A workspace member as its manifest has it.
struct Member {
    name: String,
    /// Its folder relative to the workspace root, with a trailing `/` (`""` for the root).
    folder: String,
    /// The other members it takes.
    deps: Vec<(String, Kind)>,
}

/// One row of the README's crate table: the crate and the folder it names.
struct Layer {
    name: String,
    folder: String,
}

impl Layer {
    fn test_only(&self) -> bool {
        self.folder.starts_with("tests/")
    }
}

/// The rows of the crate table in the README's `## Architecture` section, in order: those
/// whose first two cells are a crate and a folder in backticks.
fn layers(readme: &str) -> Vec<Layer> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Architecture\n"))
        .expect("the README has an `## Architecture` section");
    section
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let folder = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some(Layer {
                name: name.to_string(),
                folder: folder.to_string(),
            })
        })
        .collect()
}

/// The workspace's members and what each takes from the others, from `cargo metadata`.
fn members(root: &Path) -> Vec<Member> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version=1", "--no-deps", "--offline"])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    // A failed run prints no JSON: its stderr says why.
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        panic!("cargo metadata ({}): {e}: {stderr}", out.status)
    });
    let packages = meta["packages"]
        .as_array()
        .expect("cargo metadata's packages");
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().expect("a manifest path"));
            let dir = manifest
                .parent()
                .and_then(|d| d.strip_prefix(root).ok())
                .expect("a member inside the workspace")
                .to_string_lossy()
                .into_owned();
            let deps = p["dependencies"]
                .as_array()
                .expect("a package's dependencies")
                .iter()
                .filter(|d| d["name"].as_str().is_some_and(|n| names.contains(&n)))
                .map(|d| {
                    let kind = match d["kind"].as_str() {
                        Some("dev") => Kind::Dev,
                        _ => Kind::Normal,
                    };
                    (d["name"].as_str().unwrap_or_default().to_string(), kind)
                })
                .collect();
            Member {
                name: p["name"].as_str().expect("a package name").to_string(),
                folder: if dir.is_empty() {
                    dir
                } else {
                    format!("{dir}/")
                },
                deps,
            }
        })
        .collect()
}

/// Every break of the layering and every drift between the table and the workspace.
fn violations(layers: &[Layer], members: &[Member]) -> Vec<String> {
    let mut found = Vec::new();
    let mut position = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        if position.insert(layer.name.as_str(), i).is_some() {
            found.push(format!("the README lists `{}` twice", layer.name));
        }
        if !members.iter().any(|m| m.name == layer.name) {
            found.push(format!(
                "the README lists `{}`, which is not a workspace member",
                layer.name
            ));
        }
    }
    for m in members {
        let Some(&at) = position.get(m.name.as_str()) else {
            found.push(format!(
                "workspace member `{}` is missing from the README's crate table",
                m.name
            ));
            continue;
        };
        let layer = &layers[at];
        // The root crate is shown by its sources' folder.
        let shown = if m.folder.is_empty() {
            "src/"
        } else {
            &m.folder
        };
        if layer.folder != shown {
            found.push(format!(
                "the README puts `{}` in `{}`, but it is in `{shown}`",
                m.name, layer.folder
            ));
        }
        for (dep, kind) in &m.deps {
            let Some(&dep_at) = position.get(dep.as_str()) else {
                continue;
            };
            let dep_layer = &layers[dep_at];
            match kind {
                Kind::Normal if dep_at > at => found.push(format!(
                    "`{}` depends on `{dep}`, which the README places below it",
                    m.name
                )),
                Kind::Normal if dep_layer.test_only() && !layer.test_only() => found.push(
                    format!("`{}` depends on the test-only `{dep}`", m.name),
                ),
                Kind::Dev if dep_at > at && !dep_layer.test_only() => found.push(format!(
                    "`{}` dev-depends on `{dep}`, which the README places below it and is not test-only",
                    m.name
                )),
                _ => {}
            }
        }
    }
    found
}

#[test]
fn each_crate_depends_only_on_the_ones_the_readme_places_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("reading README.md");
    let layers = layers(&readme);
    assert!(layers.len() >= 2, "no crate table found in the README");
    let found = violations(&layers, &members(root));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn breaks_and_drift_are_named() {
    let readme = "# x\n\n## Architecture\n\n| crate | folder | owns |\n|---|---|---|\n\
        | `low` | `low/` | a |\n| `high` | `high/` | b |\n| `kit` | `tests/kit/` | c |\n\
        | `gone` | `gone/` | d |\n\n## Speed\n\n| `not` | `a crate/` | e |\n";
    let layers = layers(readme);
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["low", "high", "kit", "gone"]);
    let member = |name: &str, folder: &str, deps: &[(&str, Kind)]| Member {
        name: name.into(),
        folder: folder.into(),
        deps: deps.iter().map(|(d, k)| (d.to_string(), *k)).collect(),
    };
    let members = [
        member(
            "low",
            "low/",
            &[
                ("high", Kind::Normal),
                ("kit", Kind::Dev),
                ("high", Kind::Dev),
            ],
        ),
        member(
            "high",
            "elsewhere/",
            &[("low", Kind::Normal), ("kit", Kind::Normal)],
        ),
        member("kit", "tests/kit/", &[("low", Kind::Normal)]),
        member("new", "new/", &[]),
    ];
    assert_eq!(
        violations(&layers, &members),
        [
            "the README lists `gone`, which is not a workspace member",
            "`low` depends on `high`, which the README places below it",
            "`low` dev-depends on `high`, which the README places below it and is not test-only",
            "the README puts `high` in `high/`, but it is in `elsewhere/`",
            "`high` depends on `kit`, which the README places below it",
            "workspace member `new` is missing from the README's crate table",
        ]
    );
    // Above and test-only is still refused to a production crate's own dependencies; the
    // root crate is shown by `src/`.
    let readme = readme.replace("`gone/`", "`src/`") + "| `low` | `low/` | again |\n";
    let layers = self::layers(&readme.replace("## Speed", "### Speed"));
    let members = [
        member("low", "low/", &[]),
        member("high", "high/", &[]),
        member("kit", "tests/kit/", &[]),
        member("gone", "", &[("kit", Kind::Normal), ("kit", Kind::Dev)]),
    ];
    assert_eq!(
        violations(&layers, &members),
        [
            "the README lists `not`, which is not a workspace member",
            "the README lists `low` twice",
            "`gone` depends on the test-only `kit`",
        ]
    );
}
