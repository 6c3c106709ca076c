//! Go `flag` syntax on top of clap, for both binaries, so the `args:` of an existing
//! upstream `cloudbuild.yaml` and the original's startup script parse unchanged.
//!
//! Before clap sees the arguments, every long flag is normalised to `--flag=value`:
//! `-flag=v`, `-flag v`, `--flag v` and `--flag=v` all become `--flag=v`, and a bare
//! boolean `-flag` becomes `--flag=true`. clap then needs no per-flag workaround for
//! values that start with a dash, nor optional values for booleans.

use std::any::TypeId;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use clap::{Arg, Command, FromArgMatches, Parser};

/// Rewrites `args` (with `argv[0]` first) for `cmd`, the clap command tree.
///
/// A flag is looked up in the subcommand reached so far and its ancestors (global
/// flags). Unknown flags are passed on as `--name` so clap reports them; nothing after a
/// bare `--` is touched. Values are kept byte for byte, also when not UTF-8.
pub fn translate(cmd: &Command, args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut path = vec![cmd];
    let mut args = args.into_iter();
    if let Some(argv0) = args.next() {
        out.push(argv0);
    }
    while let Some(arg) = args.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        let Some((name, value)) = split_flag(&arg) else {
            let current = path.last().expect("the root is always there");
            if let Some(sub) = arg.to_str().and_then(|s| current.find_subcommand(s)) {
                path.push(sub);
            }
            out.push(arg);
            continue;
        };
        let found = path
            .iter()
            .rev()
            .find_map(|c| c.get_arguments().find(|a| a.get_long() == Some(name)));
        let value = match (found, value) {
            (_, Some(v)) => Some(v.to_os_string()),
            (Some(a), None) if is_bool(a) => Some(OsString::from("true")),
            (Some(a), None) if a.get_action().takes_values() => args.next(),
            _ => None,
        };
        let mut flag = OsString::from(format!("--{name}"));
        if let Some(v) = value {
            flag.push("=");
            flag.push(v);
        }
        out.push(flag);
    }
    out
}

/// Parses `args` (with `argv[0]` first) into `P` as Go's flag package would: translated
/// as [`translate`] does, and a repeated flag keeps its last value (a list flag, such as
/// `-env`, still collects every value).
pub fn parse<P: Parser>(args: impl IntoIterator<Item = OsString>) -> Result<P, clap::Error> {
    parse_with(P::command(), args)
}

/// [`parse`] with `cmd`, `P`'s command tree as the caller adjusted it (its help, say).
pub fn parse_with<P: FromArgMatches>(
    cmd: Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<P, clap::Error> {
    let cmd = cmd.args_override_self(true);
    let args = translate(&cmd, args);
    let matches = cmd.try_get_matches_from(args).map_err(go_wording)?;
    P::from_arg_matches(&matches)
}

/// An unknown flag is reported in Go's words (`flag provided but not defined: -x`), as the
/// original prints it, rather than as the `--x` the translation made of it; other usage
/// errors name flags as users type them (`-disk-size-gb`, not `'--disk-size-gb <gb>'`).
fn go_wording(e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !e.use_stderr() {
        return e;
    }
    if e.kind() == ErrorKind::UnknownArgument {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            if let Some(flag) = arg.strip_prefix("--") {
                let name = flag.split('=').next().unwrap_or(flag);
                return clap::Error::raw(
                    ErrorKind::UnknownArgument,
                    format!("flag provided but not defined: -{name} (see -h for the flags)\n"),
                );
            }
        }
    }
    let text = e.render().to_string();
    if !text.contains("'--") {
        return e;
    }
    let text = single_dash_flags(&text);
    clap::Error::raw(e.kind(), text.strip_prefix("error: ").unwrap_or(&text))
}

/// clap's quoted flags (`'--name <value>'`, `'--name'`) as `-name`, and its hint to try
/// `'--help'` as `'-h'`.
fn single_dash_flags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("'--") {
        out.push_str(&rest[..i]);
        let quoted = &rest[i + 1..];
        let Some(end) = quoted.find('\'') else {
            out.push('\'');
            rest = quoted;
            continue;
        };
        let flag = &quoted[..end];
        let name = flag[2..].split([' ', '=']).next().unwrap_or_default();
        if name == "help" {
            out.push_str("'-h'");
        } else {
            out.push('-');
            out.push_str(name);
        }
        rest = &quoted[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Splits `-name[=value]` or `--name[=value]` into its name and value. A single dash
/// followed by one character (`-h`) and anything that is not a flag give `None`.
fn split_flag(arg: &OsStr) -> Option<(&str, Option<&OsStr>)> {
    let bytes = arg.as_bytes();
    let rest = bytes
        .strip_prefix(b"--")
        .or_else(|| bytes.strip_prefix(b"-"))?;
    let (name, value) = match rest.iter().position(|&b| b == b'=') {
        Some(i) => (&rest[..i], Some(OsStr::from_bytes(&rest[i + 1..]))),
        None => (rest, None),
    };
    let name = std::str::from_utf8(name).ok()?;
    let long_enough = name.len() > 1 || bytes.starts_with(b"--");
    let flag_like = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (long_enough && flag_like).then_some((name, value))
}

/// Whether a flag is a boolean, which Go sets with a bare `-flag`.
pub fn is_bool(a: &Arg) -> bool {
    a.get_value_parser().type_id() == TypeId::of::<bool>()
}

/// Go's `strconv.ParseBool`, the value parser for every boolean flag.
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
    use clap::ArgAction;
    use std::os::unix::ffi::OsStringExt;

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("global").long("global").global(true))
            .subcommand(
                Command::new("sub")
                    .arg(Arg::new("name").long("name"))
                    .arg(Arg::new("list").long("list").action(ArgAction::Append))
                    .arg(
                        Arg::new("flag")
                            .long("flag")
                            .action(ArgAction::Set)
                            .value_parser(parse_bool),
                    )
                    .arg(Arg::new("pos")),
            )
    }

    fn t(args: &[&str]) -> Vec<String> {
        translate(&cmd(), args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_forms_become_one_form() {
        assert_eq!(
            t(&["x", "-global", "a", "sub", "-name", "-dash", "-flag", "--name=b"]),
            [
                "x",
                "--global=a",
                "sub",
                "--name=-dash",
                "--flag=true",
                "--name=b"
            ]
        );
        assert_eq!(
            t(&["x", "sub", "-flag=false", "-h", "--list", "v", "-global=g"]),
            ["x", "sub", "--flag=false", "-h", "--list=v", "--global=g"]
        );
        assert_eq!(t(&["x", "sub", "-help"]), ["x", "sub", "--help"]);
        assert_eq!(t(&["x", "sub", "--", "-name"]), ["x", "sub", "--", "-name"]);
        assert_eq!(t(&["x", "sub", "-name"]), ["x", "sub", "--name"]);
        assert_eq!(
            t(&["x", "sub", "-bogus", "p"]),
            ["x", "sub", "--bogus", "p"]
        );
        assert_eq!(t(&["x", "sub", "-5", "-"]), ["x", "sub", "-5", "-"]);
    }

    #[test]
    fn translated_args_parse() {
        let m = cmd()
            .try_get_matches_from(translate(
                &cmd(),
                [
                    "x", "sub", "-name", "-v", "-flag", "-list", "a", "-list=b", "p",
                ]
                .map(OsString::from),
            ))
            .unwrap();
        let (_, m) = m.subcommand().unwrap();
        assert_eq!(m.get_one::<String>("name").unwrap(), "-v");
        assert!(*m.get_one::<bool>("flag").unwrap());
        let list: Vec<_> = m.get_many::<String>("list").unwrap().collect();
        assert_eq!(list, ["a", "b"]);
        assert_eq!(m.get_one::<String>("pos").unwrap(), "p");
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        sub: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Run {
            #[arg(long, default_value = "")]
            script: String,
            #[arg(long)]
            env: Vec<String>,
            #[arg(long, default_value = "false", value_parser = parse_bool, action = ArgAction::Set)]
            dry_run: bool,
        },
    }

    #[test]
    fn a_repeated_flag_keeps_its_last_value() {
        let cli: Cli = parse(
            [
                "x",
                "run",
                "-script",
                "a.sh",
                "-env",
                "A=1",
                "-script=b.sh",
                "-dry-run",
                "-env=B=2",
                "-dry-run=false",
            ]
            .map(OsString::from),
        )
        .unwrap();
        let Sub::Run {
            script,
            env,
            dry_run,
        } = cli.sub;
        assert_eq!((script.as_str(), dry_run), ("b.sh", false));
        assert_eq!(env, ["A=1", "B=2"]);
    }

    #[test]
    fn unknown_flags_are_named_as_go_names_them() {
        let e = parse::<Cli>(["x", "run", "-bogus=1"].map(OsString::from)).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(
            e.to_string()
                .contains("flag provided but not defined: -bogus"),
            "{e}"
        );
        let e = parse::<Cli>(["x", "run", "extra"].map(OsString::from)).unwrap_err();
        assert!(e.to_string().contains("unexpected argument 'extra'"), "{e}");
    }

    #[test]
    fn usage_errors_name_flags_as_users_type_them() {
        let e = parse::<Cli>(["x", "run", "-script"].map(OsString::from)).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        let text = e.to_string();
        assert!(
            text.contains("a value is required for -script but none"),
            "{text}"
        );
        assert!(!text.contains("--"), "{text}");
        let e = parse::<Cli>(["x", "run", "extra"].map(OsString::from)).unwrap_err();
        assert!(e.to_string().contains("try '-h'"), "{e}");
        let e = parse::<Cli>(["x", "run", "-dry-run=maybe"].map(OsString::from)).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid value 'maybe' for -dry-run:"),
            "{e}"
        );
        assert_eq!(
            single_dash_flags("for '--a-b <x>' and '--c=<y>'; try '--help'. 'it's'"),
            "for -a-b and -c; try '-h'. 'it's'"
        );
    }

    #[test]
    fn non_utf8_values_are_kept() {
        let raw = OsString::from_vec(b"-name=\xff.sh".to_vec());
        let out = translate(&cmd(), [OsString::from("x"), "sub".into(), raw]);
        assert_eq!(out[2].as_bytes(), b"--name=\xff.sh");
        let out = translate(
            &cmd(),
            [
                OsString::from("x"),
                "sub".into(),
                "-name".into(),
                OsString::from_vec(b"\xfe".to_vec()),
            ],
        );
        assert_eq!(out[2].as_bytes(), b"--name=\xfe");
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("T"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }
}
