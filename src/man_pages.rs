//! The man pages (`cos-customizer man-pages DIR`): `cos-customizer.1` and one page per
//! subcommand (`cos-customizer-finish-image-build.1`, as git names its pages), from the clap
//! tree, with the single-dash flags users type.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Command;

use crate::help;

/// Every page, as (file name, roff text).
pub fn pages() -> anyhow::Result<Vec<(String, String)>> {
    let mut cmd = help::command().disable_help_subcommand(true);
    cmd.build();
    let longs = help::longs(&cmd);
    let mut pages = vec![page(cmd.clone(), &longs)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(page(sub.clone(), &longs)?);
    }
    Ok(pages)
}

fn page(cmd: Command, longs: &[String]) -> anyhow::Result<(String, String)> {
    let man = clap_mangen::Man::new(cmd).manual("cos-customizer");
    let mut roff = Vec::new();
    man.render(&mut roff)
        .with_context(|| format!("rendering the man page {}", man.get_filename()))?;
    let roff = String::from_utf8(roff).context("the man page is not UTF-8")?;
    Ok((
        man.get_filename(),
        ascii(&help::single_dash(&roff, longs, r"\-")),
    ))
}

/// roff input is ASCII: other characters (the `…` of `NAME=VALUE,…`) become `\[uXXXX]`.
fn ascii(roff: &str) -> String {
    roff.chars()
        .map(|c| match c {
            c if c.is_ascii() => c.to_string(),
            c => format!(r"\[u{:04X}]", u32::from(c)),
        })
        .collect()
}

/// Writes every page into `dir` and returns their paths.
pub fn write(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        dir.is_dir(),
        "{}: not a folder; give an existing folder, e.g. /usr/local/share/man/man1",
        dir.display()
    );
    let mut written = Vec::new();
    for (name, text) in pages()? {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn one_page_per_subcommand_with_single_dash_flags() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"cos-customizer.1"), "{names:?}");
        assert!(
            names.contains(&"cos-customizer-finish-image-build.1"),
            "{names:?}"
        );
        assert!(!names
            .iter()
            .any(|n| n.contains("completions") || n.contains("metadata")));
        let (_, finish) = pages
            .iter()
            .find(|(n, _)| n == "cos-customizer-finish-image-build.1")
            .unwrap();
        assert!(finish.contains(r"\fB\-output\-file\fR"), "{finish}");
        assert!(!finish.contains(r"\-\-"), "{finish}");
        assert!(finish.contains(".SH \"LOCAL BUILD (QEMU)\""), "{finish}");
    }

    /// The pages render without a warning in groff, which `man` runs. scripts/test.sh sets
    /// REQUIRE_GROFF=1 (install-deps installs groff-base), so CI cannot pass by skipping.
    #[test]
    fn pages_render_cleanly_in_groff() {
        if Command::new("groff").arg("-v").output().is_err() {
            assert_ne!(
                std::env::var("REQUIRE_GROFF").as_deref(),
                Ok("1"),
                "groff is missing and REQUIRE_GROFF=1 forbids skipping"
            );
            eprintln!("skipped: no groff");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for path in write(dir.path()).unwrap() {
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z", "-b"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "{}: {stderr}",
                path.display()
            );
        }
    }
}
