//! Shell completion scripts (`cos-customizer completions SHELL`), from the clap tree and
//! rewritten to offer the single-dash flags users type, as the original's users do.

use std::io::Write;

use anyhow::Context;
use clap::{Arg, ArgAction, Command};

use cos_customizer_common::goflags::is_bool;

use crate::cli::{Shell, BIN};
use crate::help;

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut cmd = for_completion(help::command());
    let longs = help::longs(&cmd);
    let mut buf = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, BIN, &mut buf);
    let text = String::from_utf8_lossy(&buf);
    match shell {
        // fish spells a single-dash long flag `-o name` ("old style") where clap writes `-l name`.
        Shell::Fish => text
            .lines()
            .map(|l| match l.starts_with("complete ") {
                true => l.replace(" -l ", " -o ") + "\n",
                false => format!("{l}\n"),
            })
            .collect(),
        // clap_complete spells the state of a subcommand of a hyphenated program two ways
        // (`cos__customizer__subcmd__x` where it walks the words, `cos__subcmd__customizer__
        // subcmd__x` where it matches them: clap-rs/clap#6421), so no subcommand's flags
        // would complete: use the first spelling throughout.
        Shell::Bash => help::single_dash(&text, &longs, "-")
            .replace(&BIN.replace('-', "__subcmd__"), &BIN.replace('-', "__")),
        Shell::Zsh => help::single_dash(&text, &longs, "-"),
    }
}

/// `cmd` as a shell should complete it: without the hidden subcommands (clap_complete
/// offers them), and with the booleans as switches, which users give bare (`-dry-run`), so
/// that a shell offers flags after them, not a value.
fn for_completion(cmd: Command) -> Command {
    let mut out = Command::new(cmd.get_name().to_owned());
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_owned());
    }
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    for a in cmd.get_arguments() {
        out = out.arg(switch(a.clone()));
    }
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(for_completion(s.clone()));
    }
    out
}

fn switch(a: Arg) -> Arg {
    if a.get_action().takes_values() && is_bool(&a) {
        a.action(ArgAction::SetTrue)
            .value_parser(clap::value_parser!(bool))
            .default_value("false")
            .hide_default_value(false)
    } else {
        a
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn write(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    out.write_all(script(shell).as_bytes())
        .and_then(|()| out.flush())
        .context("writing the completion script to standard output")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What bash completes after `words`, with the script loaded as bash loads it.
    fn bash_complete(words: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cos-customizer.bash");
        let script = script(Shell::Bash);
        std::fs::write(&path, &script).unwrap();
        let function = script
            .split("complete -F ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("the script registers a function");
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let run = format!(
            "source {path:?}\nCOMP_WORDS=({words})\nCOMP_CWORD={cword}\n\
             COMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
             {function} cos-customizer '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words = quoted.join(" "),
            cword = words.len() - 1,
            cur = words[words.len() - 1],
            prev = words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &run])
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn bash_completes_single_dash_flags() {
        let got = bash_complete(&["cos-customizer", "finish-image-build", "-out"]);
        assert!(got.contains(&"-output-file".to_owned()), "{got:?}");
        assert!(got.contains(&"-output-format".to_owned()), "{got:?}");
        assert!(got.iter().all(|w| !w.starts_with("--")), "{got:?}");
        let got = bash_complete(&["cos-customizer", "-local"]);
        assert_eq!(got, ["-local-state-workdir"]);
        let got = bash_complete(&["cos-customizer", "fin"]);
        assert_eq!(got, ["finish-image-build"]);
    }

    #[test]
    fn bash_offers_flags_after_a_bare_boolean_and_no_hidden_subcommand() {
        let got = bash_complete(&["cos-customizer", "finish-image-build", "-dry-run", ""]);
        assert!(got.contains(&"-output-file".to_owned()), "{got:?}");
        let got = bash_complete(&["cos-customizer", ""]);
        assert!(got.contains(&"seal-oem".to_owned()), "{got:?}");
        assert!(
            !got.iter()
                .any(|w| w.contains("metadata") || w == "completions" || w == "man-pages"),
            "{got:?}"
        );
    }

    #[test]
    fn bash_completes_a_flags_values() {
        let got = bash_complete(&["cos-customizer", "finish-image-build", "-accel", ""]);
        assert_eq!(got, ["auto", "kvm", "tcg"]);
    }

    #[test]
    fn scripts_name_the_single_dash_flags() {
        let zsh = script(Shell::Zsh);
        assert!(
            zsh.contains("'-output-file=[") || zsh.contains("'-output-file+["),
            "{zsh}"
        );
        assert!(!zsh.contains("'--output-file"), "{zsh}");
        let fish = script(Shell::Fish);
        assert!(fish.contains(" -o output-file "), "{fish}");
        let completes = || fish.lines().filter(|l| l.starts_with("complete "));
        assert!(completes().all(|l| !l.contains(" -l ")), "{fish}");
        // Only `complete`'s -l means a flag: the helpers' `set -l` stay.
        assert!(
            fish.contains("set -l cmd") && !fish.contains("set -o"),
            "{fish}"
        );
    }
}
