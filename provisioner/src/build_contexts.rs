//! Build contexts: the tar archives a RunScript step's files come from, unpacked into the state folder.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::gcs::Gcs;

/// Unpacks each `name → url` into `<state_dir>/<name>`.
///
/// `file:///abs.tar` is read in place (local builds put it on the CIDATA disk);
/// `gs://bucket/object` is downloaded with the VM's service account first.
/// `storage_endpoint` is the build's (empty for Cloud Storage).
pub fn unpack_all(
    state_dir: &Path,
    contexts: &BTreeMap<String, String>,
    storage_endpoint: &str,
) -> Result<()> {
    for (name, url) in contexts {
        let dest = state_dir.join(name);
        println!("Unpacking build context {name} from {url}");
        if let Some(path) = url.strip_prefix("file://") {
            unpack(Path::new(path), &dest)
        } else if url.starts_with("gs://") {
            let tar = state_dir.join(format!("{name}.tar"));
            Gcs::for_build(storage_endpoint).download(url, &tar)?;
            unpack(&tar, &dest)?;
            fs::remove_file(&tar).with_context(|| format!("removing {}", tar.display()))
        } else {
            bail!("build context {name}: unsupported URL {url:?}; expected gs://bucket/object or file:///path.tar")
        }
        .with_context(|| format!("unpacking build context {name} from {url}"))?;
    }
    Ok(())
}

/// Extracts a tar archive into a new folder, keeping modes and symlinks.
fn unpack(tar: &Path, dest: &Path) -> Result<()> {
    let file = File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive
        .unpack(dest)
        .with_context(|| format!("extracting {} into {}", tar.display(), dest.display()))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A tar like the CLI's: no `./` prefix, a dotfile, an executable, a symlink, a subfolder.
    pub fn make_context_tar(dir: &Path, files: &[(&str, &str, u32)]) -> PathBuf {
        let path = dir.join("ctx.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (name, body, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "link.sh", "run.sh").unwrap();
        b.finish().unwrap();
        path
    }

    fn check_unpacked(dest: &Path) {
        assert_eq!(fs::read_to_string(dest.join(".hidden")).unwrap(), "h");
        assert_eq!(fs::read_to_string(dest.join("sub/x.txt")).unwrap(), "x");
        let mode = fs::metadata(dest.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dest.join("link.sh")).unwrap(),
            Path::new("run.sh")
        );
    }

    const FILES: &[(&str, &str, u32)] = &[
        ("run.sh", "echo hi", 0o755),
        (".hidden", "h", 0o644),
        ("sub/x.txt", "x", 0o600),
    ];

    #[test]
    fn file_url_unpacks_in_place() {
        let d = tempfile::tempdir().unwrap();
        let tar = make_context_tar(d.path(), FILES);
        let state = d.path().join("state");
        let contexts = BTreeMap::from([("user".to_string(), format!("file://{}", tar.display()))]);
        unpack_all(&state, &contexts, "").unwrap();
        check_unpacked(&state.join("user"));
    }

    #[test]
    fn unsupported_scheme_names_context_and_url() {
        let d = tempfile::tempdir().unwrap();
        let contexts = BTreeMap::from([("user".to_string(), "https://x/y.tar".to_string())]);
        let e = format!("{:#}", unpack_all(d.path(), &contexts, "").unwrap_err());
        assert!(
            e.contains("build context user") && e.contains("https://x/y.tar"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn gs_url_downloads_then_unpacks() {
        if !fake_gcs::require() {
            return;
        }
        let fake = FakeGcs::start("bkt").await.unwrap();
        let d = tempfile::tempdir().unwrap();
        let tar = make_context_tar(d.path(), FILES);
        fake.put(
            "bkt",
            "w/cos-customizer/user_build_context.tar",
            &fs::read(tar).unwrap(),
        );
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        let contexts = BTreeMap::from([(
            "user".to_string(),
            "gs://bkt/w/cos-customizer/user_build_context.tar".to_string(),
        )]);
        // Only this test sets the variable, and only the download reads it.
        std::env::set_var("STORAGE_EMULATOR_HOST", fake.endpoint());
        unpack_all(&state, &contexts, "").unwrap();
        check_unpacked(&state.join("user"));
        assert!(
            !state.join("user.tar").exists(),
            "the downloaded tar is removed"
        );
    }
}
