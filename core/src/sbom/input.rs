//! Reading and checking the user's SBOM input from the build context archive.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::generation::DOC_NAME_SUFFIX;
use super::types::Input;
use crate::archive;

impl Input {
    /// Reads and checks the SBOM input `path`, a file in the build context archive `archive`.
    pub fn from_archive(archive: &Path, path: &str) -> Result<Input> {
        let data = read_member(archive, path)?;
        Input::parse(&format!("SBOM input {path} in the build context"), &data)
    }

    /// Parses and checks an SBOM input; `origin` names it in errors.
    pub fn parse(origin: &str, data: &[u8]) -> Result<Input> {
        let input: Input = serde_json::from_slice(data).map_err(|e| {
            anyhow!(
                "{origin} is not a valid SBOM input: {e}; fix it in the build context and run \
                 start-image-build again (the build context is archived when the build starts)"
            )
        })?;
        for (field, value) in [
            ("outputImageName", &input.output_image_name),
            ("outputImageVersion", &input.output_image_version),
        ] {
            if value.contains(['/', '\0']) || value == "." || value == ".." {
                bail!(
                    "{origin}: {field} {value:?} names the SBOM file, so it may not hold '/': \
                     change it in the build context and run start-image-build again"
                );
            }
        }
        Ok(input)
    }

    /// The document's name and file name: `<name>[-<version>]_sbom.spdx.json`, with the
    /// input's `outputImageName` (and version) or else `output_image`, the image built.
    pub fn document_name(&self, output_image: &str) -> String {
        let (name, version) = self.name_and_version(output_image);
        if version.is_empty() {
            format!("{name}_{DOC_NAME_SUFFIX}")
        } else {
            format!("{name}-{version}_{DOC_NAME_SUFFIX}")
        }
    }

    /// The input's version goes only with the input's name.
    pub(super) fn name_and_version<'a>(&'a self, output_image: &'a str) -> (&'a str, &'a str) {
        if self.output_image_name.is_empty() {
            (output_image, "")
        } else {
            (&self.output_image_name, &self.output_image_version)
        }
    }
}

/// The regular file `path` in `archive`; the error for a missing one names the closest
/// members.
fn read_member(archive: &Path, path: &str) -> Result<Vec<u8>> {
    let reading = || format!("reading the build context archive {}", archive.display());
    let file = std::fs::File::open(archive).with_context(reading)?;
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().with_context(reading)? {
        let mut entry = entry.with_context(reading)?;
        if entry.path_bytes().as_ref() != path.as_bytes() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            break;
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("reading {path} from {}", archive.display()))?;
        return Ok(data);
    }
    archive::require_file(archive, path).context("checking -sbom-input-path")?;
    bail!(
        "-sbom-input-path {path:?} is a folder or a link in the build context: give the SBOM \
         input JSON file itself"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::testdata::{parse, VALID_INPUT};

    #[test]
    fn names_that_would_leave_the_output_folder_are_refused() {
        for bad in [
            r#"{"outputImageName": "a/b"}"#,
            r#"{"outputImageName": ".."}"#,
            r#"{"outputImageName": "a", "outputImageVersion": "1/../../x"}"#,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("may not hold '/'"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_json_and_unknown_fields_are_named_with_line_and_column() {
        let e = parse("{\n  \"creators\": [\"Tool: x\"\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3 column 1"), "{e}");
        assert!(e.contains("start-image-build again"), "{e}");
        let e = parse("{\n  \"outputImageNmae\": \"x\"\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `outputImageNmae`"), "{e}");
        assert!(e.contains("line 2 column"), "{e}");
        // A 2.3-only package field is not silently dropped from a 2.2 document.
        let e = parse(
            r#"{"SPDXPackages": [{"name": "a", "SPDXID": "SPDXRef-a", "primaryPackagePurpose": "OS"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `primaryPackagePurpose`"), "{e}");
    }

    fn context_archive(
        files: &[(&str, &str)],
        dirs: &[&str],
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let ctx = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(ctx.path().join(d)).unwrap();
        }
        for (name, text) in files {
            std::fs::write(ctx.path().join(name), text).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("ctx.tar");
        archive::create(ctx.path(), &tar, out.path()).unwrap();
        (out, tar)
    }

    #[test]
    fn the_input_is_read_from_the_build_context_archive() {
        let (_d, tar) = context_archive(
            &[("preload.sh", "x"), ("sbom/input.json", VALID_INPUT)],
            &["sbom"],
        );
        let input = Input::from_archive(&tar, "sbom/input.json").unwrap();
        assert_eq!(input, parse(VALID_INPUT).unwrap());

        let e = format!(
            "{:#}",
            Input::from_archive(&tar, "sbom/inptu.json").unwrap_err()
        );
        assert!(e.contains("-sbom-input-path"), "{e}");
        assert!(e.contains("closest members: sbom/input.json"), "{e}");
        let e = format!("{:#}", Input::from_archive(&tar, "sbom/").unwrap_err());
        assert!(e.contains("is a folder"), "{e}");
        let e = format!("{:#}", Input::from_archive(&tar, "preload.sh").unwrap_err());
        assert!(
            e.contains("SBOM input preload.sh in the build context is not a valid SBOM input"),
            "{e}"
        );
    }
}
