//! The `-env` flag of `run-script` and the `Env` string it becomes.
//!
//! The original splits on every `,`, so a value cannot hold a comma. Here a segment
//! without `=` continues the previous value (`LIST=a,b,c` is one variable), and `\,`
//! is a literal comma for the rare value whose comma is followed by `=`. The stored
//! `Env` string stays the original's sorted `k=v,k2=v2` form; only commas inside
//! values are escaped (`\,`), so every value the original could store is stored the same.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// Splits on commas that are not escaped, unescaping `\,` and `\\`.
fn split_unescaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',') | Some('\\')) => {
                parts.last_mut().unwrap().push(chars.next().unwrap());
            }
            ',' => parts.push(String::new()),
            _ => parts.last_mut().unwrap().push(c),
        }
    }
    parts
}

/// Whether `name` can be a shell variable's name (what the script will read it as).
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Adds the pairs of one `-env` value to `env`; a later value for a key wins.
pub fn parse_flag_value(value: &str, env: &mut BTreeMap<String, String>) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    let mut last: Option<String> = None;
    for seg in split_unescaped(value) {
        if seg.is_empty() {
            bail!(
                "-env {value:?} has an empty entry (a trailing or doubled comma): remove it, or write \\, for a comma inside a value"
            );
        }
        match seg.split_once('=') {
            Some((k, v)) if is_variable_name(k) => {
                env.insert(k.to_string(), v.to_string());
                last = Some(k.to_string());
            }
            Some(("", _)) => bail!(
                "-env {value:?}: {seg:?} has an empty name; give NAME=VALUE pairs, e.g. -env=A=1,B=2"
            ),
            Some((k, _)) => bail!(
                "-env {value:?}: {k:?} is not a shell variable name (letters, digits and _, not starting with a digit), which the script could not read: rename it"
            ),
            None => match &last {
                Some(k) => {
                    let v = env.get_mut(k).expect("key was just inserted");
                    v.push(',');
                    v.push_str(&seg);
                }
                None => bail!(
                    "-env {value:?}: {seg:?} is not a NAME=VALUE pair; give NAME=VALUE pairs, e.g. -env=A=1,B=2"
                ),
            },
        }
    }
    Ok(())
}

fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let chars: Vec<char> = v.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            ',' => out.push_str("\\,"),
            // Doubled only where it would otherwise read as an escape.
            '\\' if matches!(chars.get(i + 1), None | Some(',') | Some('\\')) => {
                out.push_str("\\\\")
            }
            _ => out.push(c),
        }
    }
    out
}

/// The stored form: sorted `k=v` joined by `,`.
pub fn encode(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={}", escape_value(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the stored form back into ordered pairs (the provisioner's side).
pub fn decode(s: &str) -> Result<Vec<(String, String)>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    split_unescaped(s)
        .into_iter()
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("environment entry {seg:?} in {s:?} is not a NAME=VALUE pair"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for v in values {
            parse_flag_value(v, &mut env)?;
        }
        Ok(env)
    }

    #[test]
    fn original_forms() {
        assert_eq!(encode(&parse(&["B=2,A=1"]).unwrap()), "A=1,B=2");
        assert_eq!(encode(&parse(&["a=A=B"]).unwrap()), "a=A=B");
        assert_eq!(encode(&parse(&["HELLO=hello"]).unwrap()), "HELLO=hello");
        assert_eq!(encode(&parse(&[]).unwrap()), "");
    }

    #[test]
    fn names_must_be_variable_names_and_entries_not_empty() {
        for (bad, why) in [
            ("A B=1", "not a shell variable name"),
            ("1A=2", "not a shell variable name"),
            ("A-B=2", "not a shell variable name"),
            ("A=1,", "empty entry"),
            ("A=1,,B=2", "empty entry"),
            (",A=1", "empty entry"),
            ("=1", "empty name"),
        ] {
            let e = parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(encode(&parse(&["_A1=x,b_2=y"]).unwrap()), "_A1=x,b_2=y");
        // An escaped comma at the end is a value's comma, not an empty entry.
        assert_eq!(parse(&[r"A=1\,"]).unwrap()["A"], "1,");
    }

    #[test]
    fn repeated_flags_accumulate_and_later_wins() {
        let env = parse(&["A=1,B=2", "B=3", "C=4"]).unwrap();
        assert_eq!(encode(&env), "A=1,B=3,C=4");
    }

    #[test]
    fn commas_in_values() {
        let env = parse(&["LIST=a,b,c,X=1"]).unwrap();
        assert_eq!(env["LIST"], "a,b,c");
        assert_eq!(env["X"], "1");
        let env = parse(&[r"URL=http://h/?a=1\,b=2"]).unwrap();
        assert_eq!(env["URL"], "http://h/?a=1,b=2");
        assert_eq!(env.len(), 1);
    }

    #[test]
    fn round_trip_through_stored_form() {
        for v in ["a,b", r"a\b", r"ends\", r"a\,b", ",", "", "x=y,z=w", r"\\"] {
            let env = BTreeMap::from([("K".to_string(), v.to_string()), ("Z".into(), "1".into())]);
            let back = decode(&encode(&env)).unwrap();
            assert_eq!(
                back,
                vec![("K".into(), v.into()), ("Z".into(), "1".into())],
                "{v:?}"
            );
        }
    }

    #[test]
    fn plain_values_store_as_the_original_does() {
        let env = parse(&[r"P=C:\dir\x"]).unwrap();
        assert_eq!(encode(&env), r"P=C:\dir\x");
    }

    #[test]
    fn bad_pairs_name_the_input() {
        let e = parse(&["novalue"]).unwrap_err().to_string();
        assert!(e.contains("\"novalue\"") && e.contains("NAME=VALUE"), "{e}");
        assert!(parse(&["=x"]).is_err());
    }
}
