//! The `Env` string of a RunScript step: sorted `k=v` pairs joined by `,`.
//!
//! The original splits on every comma. Our CLI escapes commas inside values as `\,` (and
//! doubles a backslash that precedes `,` or `\` or ends the value), so every string the
//! original stores reads the same here, and values may hold commas.

use anyhow::{bail, Result};

/// Splits `s` into `(name, value)` pairs, unescaping `\,` and `\\`; other backslashes are literal.
pub fn parse_env(s: &str) -> Result<Vec<(String, String)>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let seg = segments.last_mut().expect("segments starts non-empty");
        match (c, chars.peek()) {
            ('\\', Some(&next @ (',' | '\\'))) => {
                seg.push(next);
                chars.next();
            }
            (',', _) => segments.push(String::new()),
            _ => seg.push(c),
        }
    }
    segments
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

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn upstream_plain_forms() {
        assert_eq!(
            parse_env("A=1,B=2").unwrap(),
            pairs(&[("A", "1"), ("B", "2")])
        );
        assert_eq!(parse_env("a=A=B").unwrap(), pairs(&[("a", "A=B")]));
        assert_eq!(
            parse_env("HELLO=hello").unwrap(),
            pairs(&[("HELLO", "hello")])
        );
        assert_eq!(parse_env("E=").unwrap(), pairs(&[("E", "")]));
        assert!(parse_env("").unwrap().is_empty());
    }

    #[test]
    fn escaped_commas_stay_in_the_value() {
        assert_eq!(
            parse_env(r"LIST=a\,b\,c,X=1").unwrap(),
            pairs(&[("LIST", "a,b,c"), ("X", "1")])
        );
        assert_eq!(
            parse_env(r"URL=http://h/?a=1\,b=2").unwrap(),
            pairs(&[("URL", "http://h/?a=1,b=2")])
        );
        assert_eq!(parse_env(r"C=\,").unwrap(), pairs(&[("C", ",")]));
    }

    #[test]
    fn backslashes() {
        // Doubled before a comma, a backslash or the end; literal elsewhere.
        assert_eq!(
            parse_env(r"P=C:\dir\x").unwrap(),
            pairs(&[("P", r"C:\dir\x")])
        );
        assert_eq!(parse_env(r"E=ends\\").unwrap(), pairs(&[("E", r"ends\")]));
        assert_eq!(
            parse_env(r"A=x\\\,y,B=\\\\").unwrap(),
            pairs(&[("A", r"x\,y"), ("B", r"\\")])
        );
        assert_eq!(
            parse_env(r"A=a\\,B=b").unwrap(),
            pairs(&[("A", r"a\"), ("B", "b")])
        );
    }

    #[test]
    fn segment_without_equals_is_named() {
        let e = parse_env("A=1,oops").unwrap_err().to_string();
        assert!(e.contains("\"oops\"") && e.contains("NAME=VALUE"), "{e}");
        assert!(
            parse_env("A=1,").is_err(),
            "an empty trailing segment has no '='"
        );
    }
}
