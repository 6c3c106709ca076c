//! Go `flag` syntax on top of clap, so the `args:` of an existing upstream
//! `cloudbuild.yaml` parse unchanged: `-flag=v`, `-flag v`, bare `-bool`, and `--flag`.

use std::ffi::OsString;

use clap::Command;

/// Rewrites single-dash long flags as `--flag`, leaving flag values alone.
///
/// `cmd` is the clap command tree: it tells which flags take a value, so that the
/// value after `-image-suffix` is kept even when it starts with a dash.
pub fn translate(cmd: &Command, args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut current = cmd;
    let mut value_next = false;
    let mut args = args.into_iter();
    if let Some(argv0) = args.next() {
        out.push(argv0);
    }
    while let Some(arg) = args.next() {
        if value_next {
            value_next = false;
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        let long = if let Some(rest) = s.strip_prefix("--") {
            Some(rest)
        } else {
            s.strip_prefix('-')
                .filter(|r| r.len() > 1 && r.starts_with(|c: char| c.is_ascii_alphabetic()))
        };
        match long {
            Some(rest) => {
                let (name, has_value) = match rest.split_once('=') {
                    Some((n, _)) => (n, true),
                    None => (rest, false),
                };
                value_next = !has_value && takes_value(current, name);
                out.push(format!("--{rest}").into());
            }
            None => {
                if let Some(sub) = current.find_subcommand(s) {
                    current = sub;
                }
                out.push(arg);
            }
        }
    }
    out
}

/// Whether `--name` consumes the next argument (bool flags only take `=value`).
fn takes_value(cmd: &Command, name: &str) -> bool {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(name))
        .is_some_and(|a| {
            a.get_action().takes_values() && a.get_num_args().is_none_or(|n| n.min_values() > 0)
        })
}

/// Go's `strconv.ParseBool`, for `-bool=value`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {s:?}: use true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("global").long("global"))
            .subcommand(
                Command::new("sub").arg(Arg::new("name").long("name")).arg(
                    Arg::new("flag")
                        .long("flag")
                        .num_args(0..=1)
                        .require_equals(true)
                        .default_missing_value("true")
                        .action(ArgAction::Set),
                ),
            )
    }

    fn t(args: &[&str]) -> Vec<String> {
        translate(&cmd(), args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_forms() {
        assert_eq!(
            t(&[
                "x",
                "-global=a",
                "sub",
                "-name",
                "-dash",
                "-flag",
                "--name=b"
            ]),
            [
                "x",
                "--global=a",
                "sub",
                "--name",
                "-dash",
                "--flag",
                "--name=b"
            ]
        );
        assert_eq!(
            t(&["x", "sub", "-flag=false", "-h"]),
            ["x", "sub", "--flag=false", "-h"]
        );
        assert_eq!(t(&["x", "sub", "-help"]), ["x", "sub", "--help"]);
        assert_eq!(t(&["x", "sub", "--", "-name"]), ["x", "sub", "--", "-name"]);
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("T"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }
}
