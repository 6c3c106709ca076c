//! The README's flag tables, generated from the clap tree (as coreos-installer generates
//! its docs) and checked by a test, so the README cannot drift from the flags.

use std::fmt::Write as _;

use clap::{Arg, Command};

use cos_customizer_common::goflags::is_bool;

use crate::help;

const BEGIN: &str = "<!-- flag-table: generated from src/cli.rs by src/flag_table.rs; \
                     UPDATE_README=1 cargo test -p cos-customizer flag_table rewrites it -->";
const END: &str = "<!-- flag-table end -->";

/// The tables, in Markdown: the global flags, then each subcommand's under its headings.
pub fn render(root: &Command) -> String {
    let mut out = String::new();
    table(
        &mut out,
        "Global flag",
        help::groups(root).into_iter().flat_map(|(_, a)| a),
    );
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        let _ = write!(out, "\n**{}**: {}", sub.get_name(), help::sentence(&about));
        let groups = help::groups(sub);
        if groups.is_empty() {
            out.push_str(" No flags.\n");
            continue;
        }
        out.push('\n');
        for (heading, args) in groups {
            if let Some(h) = heading {
                let _ = writeln!(out, "\n*{h}*");
            }
            out.push('\n');
            table(&mut out, "Flag", args.into_iter());
        }
    }
    out
}

fn table<'a>(out: &mut String, first: &str, args: impl Iterator<Item = &'a Arg>) {
    let _ = writeln!(out, "| {first} | Default | Meaning |\n|---|---|---|");
    for a in args {
        let mut flag = format!("-{}", a.get_long().unwrap_or_default());
        if !is_bool(a) {
            if let Some(v) = a.get_value_names() {
                let _ = write!(flag, " {}", v.join(" "));
            }
        }
        let default = match a.get_default_values() {
            [d] if !a.is_hide_default_value_set() => format!("`{}`", d.to_string_lossy()),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            cell(&flag),
            cell(&default),
            cell(&help::help_text(a))
        );
    }
}

/// Markdown tables end a cell at any `|`, even inside backquotes.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `readme` with the text between the markers replaced by `table`, or `None` without markers.
fn with_table(readme: &str, table: &str) -> Option<String> {
    let start = readme.find(BEGIN)? + BEGIN.len();
    let end = start + readme[start..].find(END)?;
    Some(format!("{}\n{table}{}", &readme[..start], &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn readme_flag_table_matches_the_cli() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let table = render(&help::command());
        let want = with_table(&readme, &table)
            .unwrap_or_else(|| panic!("README.md lacks the markers {BEGIN} and {END}"));
        if want == readme {
            return;
        }
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(&path, want).unwrap();
            return;
        }
        let first = readme
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(readme.lines().count().min(want.lines().count()));
        panic!(
            "README.md's flag table differs from src/cli.rs from line {} on:\n  README: {}\n  CLI:    {}\n\
             Rewrite it with:\n  UPDATE_README=1 cargo test -p cos-customizer flag_table",
            first + 1,
            readme.lines().nth(first).unwrap_or("(end)"),
            want.lines().nth(first).unwrap_or("(end)"),
        );
    }

    #[test]
    fn tables_have_go_forms_headings_and_no_empty_defaults() {
        let t = render(&help::command());
        assert!(
            t.contains("| `-local-state-workdir dir` | `.cos-customizer-workdir` |"),
            "{t}"
        );
        assert!(t.contains("| `-accel auto\\|kvm\\|tcg` | `auto` |"), "{t}");
        assert!(t.contains("| `-dry-run` |  |"), "{t}");
        assert!(t.contains("**seal-oem**: Adds a step that seals the OEM partition with dm-verity. No flags.\n"), "{t}");
        assert!(
            t.find("*Local build (QEMU)*") < t.find("*GCE build VM*"),
            "{t}"
        );
        assert!(t.contains("| `-version string` |  | Driver version"), "{t}");
        assert!(!t.contains("``") && !t.contains("`--"), "{t}");
    }

    #[test]
    fn markers_bound_the_replacement() {
        let doc = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        assert_eq!(
            with_table(&doc, "new\n").unwrap(),
            format!("a\n{BEGIN}\nnew\n{END}\nb\n")
        );
        assert_eq!(with_table("no markers", "x"), None);
    }
}
