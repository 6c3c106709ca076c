//! The build context archive (`user_build_context.tar`).
//!
//! Member names are relative with no `./` prefix (`preload.sh`, `lib/`, `lib/x.sh`), as
//! the original makes them, so `run-script -script` names match. Unlike the original,
//! top-level dotfiles are kept; symlinks stay symlinks.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use cos_customizer_common::fsutil;

/// Archives `src` (a directory or a single file) into a new tar at `dst`.
///
/// Fails if `dst` exists. Anything under `exclude` (the state folder, when the build
/// context contains it) is left out, so the archive never contains itself.
pub fn create(src: &Path, dst: &Path, exclude: &Path) -> Result<()> {
    if dst.exists() {
        bail!(
            "{} already exists: a build is already in progress; run finish-image-build first, or remove {} to start over",
            dst.display(),
            fsutil::parent_dir(dst).display()
        );
    }
    // A -build-context that is a symlink means the folder or file it names, not the link.
    let given = src;
    let src = &std::fs::canonicalize(src)
        .with_context(|| format!("reading build context {}", src.display()))?;
    let meta = std::fs::symlink_metadata(src)
        .with_context(|| format!("reading build context {}", src.display()))?;
    if !meta.is_dir() {
        check_kind(src, &meta)?;
    }
    let dir = fsutil::parent_dir(dst);
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-context-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary archive in {}", dir.display()))?;
    let mut builder = tar::Builder::new(tmp.as_file());
    builder.follow_symlinks(false);
    if meta.is_dir() {
        let exclude = exclude
            .canonicalize()
            .unwrap_or_else(|_| exclude.to_path_buf());
        for rel in walk(src, &exclude)? {
            let path = src.join(&rel);
            builder
                .append_path_with_name(&path, &rel)
                .with_context(|| {
                    format!("adding {} to the build context archive", path.display())
                })?;
        }
    } else {
        // Named as given, so -script names what the user passed.
        let name = given
            .file_name()
            .with_context(|| format!("build context {} has no file name", given.display()))?;
        builder
            .append_path_with_name(src, name)
            .with_context(|| format!("adding {} to the build context archive", src.display()))?;
    }
    builder
        .into_inner()
        .and_then(|f| f.sync_all())
        .with_context(|| format!("finishing the build context archive {}", dst.display()))?;
    tmp.persist_noclobber(dst)
        .with_context(|| format!("moving the build context archive into {}", dst.display()))?;
    Ok(())
}

/// Every path under `root`, relative to it, sorted depth-first (parents before children).
fn walk(root: &Path, exclude: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), exclude, &mut out)?;
    Ok(out)
}

fn walk_into(root: &Path, rel: &Path, exclude: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    for name in entries {
        let child = rel.join(&name);
        let full = root.join(&child);
        let meta = std::fs::symlink_metadata(&full)
            .with_context(|| format!("reading {}", full.display()))?;
        check_kind(&full, &meta)?;
        if !meta.is_symlink() && full.canonicalize().is_ok_and(|c| c.starts_with(exclude)) {
            continue;
        }
        out.push(child.clone());
        if meta.is_dir() {
            walk_into(root, &child, exclude, out)?;
        }
    }
    Ok(())
}

/// A build context holds files, folders and symlinks; a pipe, socket or device could not
/// be archived faithfully (reading a pipe blocks), so it is refused by name.
fn check_kind(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        return Ok(());
    };
    bail!(
        "{} in the build context is {kind}: a build context holds only files, folders and symlinks; remove it or move it out of -build-context",
        path.display()
    )
}

/// The member names of an archive, directories with a trailing `/`.
pub fn members(archive: &Path) -> Result<Vec<String>> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut names = Vec::new();
    for entry in tar.entries().map_err(|e| corrupt(archive, &e))? {
        let entry = entry.map_err(|e| corrupt(archive, &e))?;
        let mut name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if entry.header().entry_type().is_dir() && !name.ends_with('/') {
            name.push('/');
        }
        names.push(name);
    }
    Ok(names)
}

/// Walks the archive's headers, seeking past the data, and checks that each member's data
/// lies inside the file: one that is not a tar file or is cut short is refused before the
/// build instead of failing in the VM, without reading a large context through at start-up.
pub fn check_whole(archive: &Path) -> Result<()> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries_with_seek().map_err(|e| corrupt(archive, &e))? {
        let entry = entry.map_err(|e| corrupt(archive, &e))?;
        let end = entry.raw_file_position().saturating_add(entry.size());
        if end > len {
            let cut = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("cut short in member {}", entry.path_bytes().escape_ascii()),
            );
            return Err(corrupt(archive, &cut));
        }
    }
    Ok(())
}

/// The error for an archive that is not a tar file: the tar crate's own words may quote
/// the garbage it read after a colon, so only what comes before it goes in.
fn corrupt(archive: &Path, e: &std::io::Error) -> anyhow::Error {
    let text = e.to_string();
    let reason: String = text
        .split(": ")
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    anyhow::anyhow!(
        "{} is not a valid tar archive ({reason}): the build state is corrupt; remove {} and run start-image-build again",
        archive.display(),
        fsutil::parent_dir(archive).display()
    )
}

/// What a member is, for [`require_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// A symlink and its target, as stored.
    Link(String),
    Other,
}

/// Every member by name (folders without their trailing `/`), with what it is.
fn member_kinds(archive: &Path) -> Result<BTreeMap<String, Kind>> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut kinds = BTreeMap::new();
    for entry in tar.entries().map_err(|e| corrupt(archive, &e))? {
        let entry = entry.map_err(|e| corrupt(archive, &e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_string();
        let t = entry.header().entry_type();
        let kind = if t.is_file() || t.is_gnu_sparse() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Kind::Link(target)
        } else {
            Kind::Other
        };
        kinds.insert(name, kind);
    }
    Ok(kinds)
}

/// `target` read from the folder of the member `from`, as a member name; `None` when it
/// leads out of the build context.
fn link_target(from: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Checks that `path` names a regular file of the build context, exactly or through
/// symlinks that stay inside it: the VM has the build context and nothing else, so a
/// folder, a link out of the context (say to `/etc/shadow`) or a link loop would only
/// fail there, after the build VM booted. A name that is no member lists the closest ones.
pub fn require_file(archive: &Path, path: &str) -> Result<()> {
    if path.is_empty() {
        bail!("-script is required: name a file in the build context, e.g. -script=preload.sh");
    }
    let kinds = member_kinds(archive)?;
    let mut current = path.to_string();
    // Linux's own limit on links followed in one lookup.
    for _ in 0..40 {
        let key = current.trim_end_matches('/');
        match kinds.get(key) {
            Some(Kind::File) => return Ok(()),
            Some(Kind::Dir) if current == path => {
                bail!("{path:?} in the build context is a folder: name a file in it")
            }
            Some(Kind::Dir) => bail!(
                "{path:?} in the build context is a symlink to the folder {key:?}: name a file"
            ),
            Some(Kind::Link(target)) => match link_target(key, target) {
                Some(next) => current = next,
                None => bail!(
                    "{path:?} in the build context is a symlink to {target:?}, outside the build context, which is all the build VM gets: copy the file into -build-context"
                ),
            },
            Some(Kind::Other) => bail!(
                "{path:?} in the build context is not a regular file: name a file"
            ),
            None if current != path => bail!(
                "{path:?} in the build context is a symlink to {current:?}, which is not in the build context: copy the file into -build-context"
            ),
            None => {
                let mut ranked: Vec<_> = members(archive)?
                    .into_iter()
                    .map(|n| (strsim::levenshtein(&n, path), n))
                    .collect();
                ranked.sort();
                let closest: Vec<_> = ranked.iter().take(3).map(|(_, n)| n.as_str()).collect();
                let hint = if closest.is_empty() {
                    "the build context is empty".to_string()
                } else {
                    format!("closest members: {}", closest.join(", "))
                };
                bail!(
                    "{path:?} is not in the build context (names are relative to -build-context, with no ./ prefix); {hint}"
                )
            }
        }
    }
    bail!("{path:?} in the build context is a symlink that loops (or passes through more than 40 links): point it at a file")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn context() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("preload.sh"), "echo hi\n").unwrap();
        std::fs::write(d.path().join(".env"), "A=1\n").unwrap();
        std::fs::create_dir(d.path().join("lib")).unwrap();
        std::fs::write(d.path().join("lib/x.sh"), "x\n").unwrap();
        symlink("x.sh", d.path().join("lib/link.sh")).unwrap();
        d
    }

    #[test]
    fn an_archive_cut_short_or_of_garbage_is_not_whole() {
        let ctx = context();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        create(ctx.path(), &tar, out.path()).unwrap();
        check_whole(&tar).unwrap();
        let bytes = std::fs::read(&tar).unwrap();
        // Into the first member's data (its header is the first 512 bytes).
        std::fs::write(&tar, &bytes[..514]).unwrap();
        let e = format!("{:#}", check_whole(&tar).unwrap_err());
        assert!(e.contains("is not a valid tar archive"), "{e}");
        std::fs::write(&tar, vec![b'x'; 4096]).unwrap();
        let e = format!("{:#}", check_whole(&tar).unwrap_err());
        assert!(e.contains("run start-image-build again"), "{e}");
    }

    #[test]
    fn directory_members_have_no_dot_prefix_and_keep_dotfiles() {
        let ctx = context();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        create(ctx.path(), &tar, out.path()).unwrap();
        assert_eq!(
            members(&tar).unwrap(),
            [".env", "lib/", "lib/link.sh", "lib/x.sh", "preload.sh"]
        );
        let mut a = tar::Archive::new(File::open(&tar).unwrap());
        let link = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("link.sh"))
            .unwrap();
        assert!(link.header().entry_type().is_symlink());
        assert_eq!(link.link_name().unwrap().unwrap(), Path::new("x.sh"));
    }

    #[test]
    fn single_file_and_empty_dir() {
        let ctx = context();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("one.tar");
        create(&ctx.path().join("lib/x.sh"), &tar, out.path()).unwrap();
        assert_eq!(members(&tar).unwrap(), ["x.sh"]);
        let empty = tempfile::tempdir().unwrap();
        let tar = out.path().join("empty.tar");
        create(empty.path(), &tar, out.path()).unwrap();
        assert!(members(&tar).unwrap().is_empty());
    }

    #[test]
    fn archive_inside_context_excludes_itself() {
        let ctx = context();
        let state = ctx.path().join(".cos-customizer-workdir");
        std::fs::create_dir(&state).unwrap();
        let tar = state.join("user_build_context.tar");
        create(ctx.path(), &tar, &state).unwrap();
        let names = members(&tar).unwrap();
        assert!(
            !names.iter().any(|n| n.contains("cos-customizer-workdir")),
            "{names:?}"
        );
    }

    #[test]
    fn existing_archive_is_refused() {
        let ctx = context();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        create(ctx.path(), &tar, out.path()).unwrap();
        let e = create(ctx.path(), &tar, out.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("already in progress"), "{e}");
    }

    #[test]
    fn member_lookup_is_exact_and_suggests() {
        let ctx = context();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        create(ctx.path(), &tar, out.path()).unwrap();
        require_file(&tar, "preload.sh").unwrap();
        require_file(&tar, "lib/x.sh").unwrap();
        // A link inside the context is the file it names.
        require_file(&tar, "lib/link.sh").unwrap();
        for folder in ["lib", "lib/"] {
            let e = require_file(&tar, folder).unwrap_err().to_string();
            assert!(e.contains("is a folder"), "{e}");
        }
        let e = require_file(&tar, "./preload.sh").unwrap_err().to_string();
        assert!(e.contains("closest members: preload.sh"), "{e}");
        assert!(require_file(&tar, "").is_err());
    }

    #[test]
    fn links_out_of_the_context_loops_and_dangling_links_are_named() {
        let ctx = context();
        symlink("/etc/shadow", ctx.path().join("shadow.sh")).unwrap();
        symlink("../../outside.sh", ctx.path().join("lib/up.sh")).unwrap();
        symlink("loop.sh", ctx.path().join("loop.sh")).unwrap();
        symlink("gone.sh", ctx.path().join("dangling.sh")).unwrap();
        symlink("lib", ctx.path().join("libdir")).unwrap();
        symlink("../preload.sh", ctx.path().join("lib/back.sh")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        create(ctx.path(), &tar, out.path()).unwrap();
        require_file(&tar, "lib/back.sh").unwrap();
        for (name, why) in [
            ("shadow.sh", "outside the build context"),
            ("lib/up.sh", "outside the build context"),
            ("loop.sh", "loops"),
            (
                "dangling.sh",
                "\"gone.sh\", which is not in the build context",
            ),
            ("libdir", "symlink to the folder \"lib\""),
        ] {
            let e = require_file(&tar, name).unwrap_err().to_string();
            assert!(e.contains(why), "{name}: {e}");
        }
    }

    #[test]
    fn a_context_given_through_a_symlink_is_what_it_names() {
        let ctx = context();
        let links = tempfile::tempdir().unwrap();
        symlink(ctx.path(), links.path().join("ctx")).unwrap();
        symlink(ctx.path().join("preload.sh"), links.path().join("one.sh")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        create(&links.path().join("ctx"), &tar, out.path()).unwrap();
        assert_eq!(
            members(&tar).unwrap(),
            [".env", "lib/", "lib/link.sh", "lib/x.sh", "preload.sh"]
        );
        let tar = out.path().join("one.tar");
        create(&links.path().join("one.sh"), &tar, out.path()).unwrap();
        assert_eq!(members(&tar).unwrap(), ["one.sh"]);
        require_file(&tar, "one.sh").unwrap();
    }

    #[test]
    fn missing_context_is_named() {
        let out = tempfile::tempdir().unwrap();
        let e = create(
            Path::new("/nonexistent/ctx"),
            &out.path().join("t.tar"),
            out.path(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ctx"));
    }

    #[test]
    fn pipes_are_refused_by_name() {
        let ctx = context();
        let fifo = ctx.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("ctx.tar");
        for src in [ctx.path(), fifo.as_path()] {
            let e = create(src, &dst, out.path()).unwrap_err().to_string();
            assert!(
                e.contains("pipe") && e.contains("is a named pipe (FIFO)"),
                "{e}"
            );
            assert!(!dst.exists());
        }
    }

    #[test]
    fn a_corrupt_archive_says_so_without_quoting_garbage() {
        let d = tempfile::tempdir().unwrap();
        let tar = d.path().join("user_build_context.tar");
        let mut junk = b"garbage".repeat(200);
        junk[100..108].copy_from_slice(b"\xff\xfe\x01\x02abcd");
        std::fs::write(&tar, &junk).unwrap();
        let e = require_file(&tar, "a.sh").unwrap_err().to_string();
        assert!(
            e.contains("is not a valid tar archive") && e.contains("run start-image-build again"),
            "{e}"
        );
        assert!(!e.contains('\u{fffd}'), "{e}");
    }
}
