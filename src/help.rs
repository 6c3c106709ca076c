//! The help in the original's words. The original is a Go program (`flag` and
//! `subcommands`), whose users read and type `-flag value`; clap prints `--flag <FLAG>`.
//! [`command`] is the clap tree as users see it, which the parser, the man pages, the shell
//! completions and the README's flag table all start from.

use std::any::TypeId;
use std::fmt::Write as _;

use clap::{Arg, ArgAction, Command, CommandFactory};

use cos_customizer_common::goflags::is_bool;

use crate::cli::{Cli, BIN};

/// Where help text wraps, as a terminal's width.
const WIDTH: usize = 80;
/// How far a flag's help is indented below it: Go's `"\n    \t"`.
const INDENT: &str = "        ";

/// The command tree: values named as Go names them, Go's zero defaults (`""`, `0`, `false`)
/// left unsaid as Go leaves them, and each command's help and usage written Go-style.
pub fn command() -> Command {
    let root = go_values(Cli::command());
    let help = render(&root, false);
    let subs: Vec<(String, String)> = root
        .get_subcommands()
        .map(|s| (s.get_name().to_owned(), render(s, true)))
        .collect();
    let root_usage = usage(&root, false);
    let mut root = root.override_usage(root_usage).override_help(help);
    for (name, help) in subs {
        root = root.mut_subcommand(&name, |s| {
            let usage = usage(&s, true);
            s.override_usage(usage).override_help(help)
        });
    }
    root
}

fn go_values(cmd: Command) -> Command {
    cmd.mut_args(go_value).mut_subcommands(go_values)
}

fn go_value(a: Arg) -> Arg {
    if !a.get_action().takes_values() || a.is_positional() {
        return a;
    }
    let zero = matches!(a.get_default_values(), [d] if ["", "0", "false"].contains(&d.to_str().unwrap_or("-")));
    let derived = a.get_id().as_str().to_uppercase();
    let choices: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_owned())
        .collect();
    let name = if is_bool(&a) {
        "bool".to_owned()
    } else if !choices.is_empty() {
        choices.join("|")
    } else {
        match a.get_value_names() {
            // clap's derive names a value after its field: say its type instead, as Go does.
            Some([n]) if n.as_str() == derived => {
                if a.get_value_parser().type_id() == TypeId::of::<i64>() {
                    "int".to_owned()
                } else {
                    "string".to_owned()
                }
            }
            Some(names) => names
                .iter()
                .map(|n| n.to_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
            None => "string".to_owned(),
        }
    };
    a.value_name(name).hide_default_value(zero)
}

/// `cos-customizer [global flags] <subcommand> [flags]`, or one subcommand's usage.
fn usage(cmd: &Command, sub: bool) -> String {
    let bin = BIN;
    if !sub {
        format!("{bin} [global flags] <subcommand> [flags]")
    } else if visible_flags(cmd).next().is_none() {
        format!("{bin} [global flags] {}", cmd.get_name())
    } else {
        format!("{bin} [global flags] {} [flags]", cmd.get_name())
    }
}

fn visible_flags(cmd: &Command) -> impl Iterator<Item = &Arg> {
    // clap's own -h and -V, but not install-gpu's -version.
    cmd.get_arguments().filter(|a| {
        !a.is_hide_set()
            && !a.is_positional()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// The help of `cmd`, the root or (`sub`) a subcommand.
fn render(cmd: &Command, sub: bool) -> String {
    let mut out = format!("Usage: {}\n\n", usage(cmd, sub));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        for paragraph in about.to_string().split("\n\n") {
            wrap(&mut out, "", sentence(paragraph).split_whitespace());
            out.push('\n');
        }
    }
    if !sub {
        out.push_str("Subcommands:\n");
        let mut subs: Vec<(&str, String)> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| {
                (
                    s.get_name(),
                    s.get_about().map(|a| a.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        // clap adds `help` when it builds the tree, after this text is written.
        subs.push((
            "help",
            "Prints a subcommand's help: help <subcommand>".to_owned(),
        ));
        let width = subs.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, about) in subs {
            let _ = writeln!(out, "  {name:width$}  {about}");
        }
        out.push('\n');
    }
    let heading_default = if !sub { "Global flags" } else { "Flags" };
    for (heading, args) in groups(cmd) {
        let _ = writeln!(out, "{}:", heading.unwrap_or(heading_default));
        for a in args {
            flag(&mut out, a);
        }
        out.push('\n');
    }
    if !sub {
        let _ = writeln!(
            out,
            "Run \"{} <subcommand> -h\" for a subcommand's flags.",
            BIN
        );
    }
    out.truncate(out.trim_end().len());
    out
}

/// The visible flags of `cmd` under their headings, in the order the headings first appear.
pub fn groups(cmd: &Command) -> Vec<(Option<&str>, Vec<&Arg>)> {
    let mut groups: Vec<(Option<&str>, Vec<&Arg>)> = Vec::new();
    for a in visible_flags(cmd) {
        let heading = a.get_help_heading();
        match groups.iter_mut().find(|(h, _)| *h == heading) {
            Some((_, args)) => args.push(a),
            None => groups.push((heading, vec![a])),
        }
    }
    groups
}

/// One flag as Go's `PrintDefaults` prints it: `-name value`, then the help indented below,
/// ending in `(default "x")` unless the default is Go's zero value.
fn flag(out: &mut String, a: &Arg) {
    let _ = write!(out, "  -{}", a.get_long().unwrap_or_default());
    if !is_bool(a) {
        if let Some(v) = a.get_value_names() {
            let _ = write!(out, " {}", v.join(" "));
        }
    }
    out.push('\n');
    let text = help_text(a);
    let default = default(a).map(|d| format!("(default {d})"));
    wrap(
        out,
        INDENT,
        text.split_whitespace().chain(default.as_deref()),
    );
}

/// `text` ending as a sentence: clap drops the final period of a one-line doc comment.
pub fn sentence(text: &str) -> String {
    let text = text.trim_end();
    if text.ends_with('.') || text.is_empty() {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// A flag's whole help on one line.
pub fn help_text(a: &Arg) -> String {
    a.get_long_help()
        .or(a.get_help())
        .map(|h| {
            h.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A flag's default as Go shows it (strings quoted), or `None` where Go shows none.
pub fn default(a: &Arg) -> Option<String> {
    if a.is_hide_default_value_set() || !a.get_action().takes_values() {
        return None;
    }
    let d = a
        .get_default_values()
        .first()?
        .to_string_lossy()
        .into_owned();
    let plain = is_bool(a)
        || a.get_value_parser().type_id() == TypeId::of::<i64>()
        || !a.get_possible_values().is_empty();
    Some(if plain { d } else { format!("{d:?}") })
}

/// Writes `words` wrapped at [`WIDTH`], each line starting with `indent`.
fn wrap<'a>(out: &mut String, indent: &str, words: impl Iterator<Item = &'a str>) {
    let mut line = String::from(indent);
    for word in words {
        if line.len() > indent.len() && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if line.len() > indent.len() {
        out.push_str(&line);
        out.push('\n');
    }
}

/// Every long flag name in `cmd`'s tree.
pub fn longs(cmd: &Command) -> Vec<String> {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    for s in cmd.get_subcommands() {
        names.extend(longs(s));
    }
    names.extend(["help".to_owned(), "version".to_owned()]);
    names.sort();
    names.dedup();
    names
}

/// Rewrites `--name` as `-name` in generated text wherever `name` is one of `longs`: the
/// man pages' and completion scripts' generators know only clap's double dash. `dash` is
/// how the text spells a dash (`\-` in roff).
pub fn single_dash(text: &str, longs: &[String], dash: &str) -> String {
    let double = format!("{dash}{dash}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&double) {
        let (before, at) = rest.split_at(i);
        out.push_str(before);
        let after = &at[double.len()..];
        // roff sets a flag in bold: `\fB\-\-name`.
        let starts_word = [r"\fB", r"\fI", r"\fR"].iter().any(|f| out.ends_with(f))
            || out
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '\\'));
        let name_len = name_len(after, dash);
        let name = after[..name_len].replace(dash, "-");
        if starts_word && name_len > 0 && longs.contains(&name) {
            out.push_str(dash);
        } else {
            out.push_str(&double);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The length of the flag name at the start of `s`, whose dashes are spelled `dash`.
fn name_len(s: &str, dash: &str) -> usize {
    let mut i = 0;
    loop {
        let rest = &s[i..];
        if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            i += 1;
        } else if i > 0
            && rest.starts_with(dash)
            && rest[dash.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            i += dash.len();
        } else {
            return i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let e = command()
            .try_get_matches_from(args)
            .expect_err("help is shown as an error");
        assert!(!e.use_stderr(), "{e}");
        e.to_string()
    }

    #[test]
    fn the_tree_still_checks() {
        command().debug_assert();
    }

    #[test]
    fn flags_read_as_go_prints_them() {
        let h = help(&["cos-customizer", "finish-image-build", "--help"]);
        assert!(
            h.starts_with("Usage: cos-customizer [global flags] finish-image-build [flags]\n"),
            "{h}"
        );
        assert!(
            h.contains("\n  -output-file path\n        Local output image file"),
            "{h}"
        );
        assert!(h.contains("\n  -dry-run\n"), "{h}");
        assert!(h.contains("\n  -disk-size-gb gb\n"), "{h}");
        assert!(h.contains("\n  -image-name string\n"), "{h}");
        assert!(h.contains("\n  -accel auto|kvm|tcg\n"), "{h}");
        assert!(h.contains("(default \"n1-standard-1\")"), "{h}");
        assert!(h.contains("(default auto)"), "{h}");
        assert!(!h.contains("--"), "{h}");
        assert!(!h.contains("default \"\""), "{h}");
        assert!(
            !h.contains("(default false)") && !h.contains("(default 0)"),
            "{h}"
        );
        assert!(
            h.lines().all(|l| l.len() <= WIDTH || !l.contains(' ')),
            "{h}"
        );
    }

    #[test]
    fn finish_flags_are_grouped_local_before_gce() {
        let h = help(&["cos-customizer", "finish-image-build", "-h"]);
        let at = |s: &str| h.find(s).unwrap_or_else(|| panic!("{s} not in {h}"));
        let headings = [
            "\nBuild:\n",
            "\nLocal build (QEMU):\n",
            "\nOutput image:\n",
            "\nGCE build VM:\n",
            "\nSBOM:\n",
        ];
        let pos: Vec<usize> = headings.iter().map(|s| at(s)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{h}");
        assert!(at("-output-file") < at("\nGCE build VM:\n"));
        assert!(at("-overwrite") < at("-zone"));
        assert!(at("\nSBOM:\n") < at("-sbom-input-path"));
    }

    #[test]
    fn root_help_lists_the_subcommands_and_global_flags() {
        let h = help(&["cos-customizer", "--help"]);
        assert!(
            h.starts_with("Usage: cos-customizer [global flags] <subcommand> [flags]\n"),
            "{h}"
        );
        assert!(
            h.contains("\n  finish-image-build        Runs the recorded steps"),
            "{h}"
        );
        assert!(
            h.contains("\nGlobal flags:\n  -local-state-workdir dir\n"),
            "{h}"
        );
        assert!(h.contains("(default \".cos-customizer-workdir\")"), "{h}");
        assert!(
            !h.contains("completions") && !h.contains("metadata-proxy"),
            "{h}"
        );
        // A flag of a subcommand named as clap's own -V is listed.
        let h = help(&["cos-customizer", "install-gpu", "-h"]);
        assert!(h.contains("\n  -version string\n"), "{h}");
        let h = help(&["cos-customizer", "seal-oem", "-h"]);
        assert!(
            h.starts_with("Usage: cos-customizer [global flags] seal-oem\n"),
            "{h}"
        );
    }

    #[test]
    fn usage_errors_show_the_go_usage() {
        let e = command()
            .try_get_matches_from(["cos-customizer", "run-script", "x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Usage: cos-customizer [global flags] run-script [flags]"),
            "{e}"
        );
    }

    #[test]
    fn double_dashes_become_single_for_known_flags_only() {
        let longs = ["image-name".to_owned(), "help".to_owned()];
        assert_eq!(
            single_dash("a --image-name --image-names -- --help\n--x", &longs, "-"),
            "a -image-name --image-names -- -help\n--x"
        );
        assert_eq!(
            single_dash(r"\fB\-\-image\-name\fR \-\-image\-name\-x", &longs, r"\-"),
            r"\fB\-image\-name\fR \-\-image\-name\-x"
        );
        assert_eq!(
            single_dash("x---help a--help", &longs, "-"),
            "x---help a--help"
        );
    }
}
