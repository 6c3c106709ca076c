//! List calls: the filter subset GCE documents that the emulator implements exactly
//! (`(field = v)`, `(field != v)`, `labels.k:*` and `field:v`, `field eq "re"`, `field ne "re"`;
//! terms side by side or joined with `AND` and `OR`, where `OR` binds first as in AIP-160), and
//! paging with `maxResults`/`pageToken`.

use serde_json::{json, Map, Value};

use crate::reply::{ApiError, Reply};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    /// `:`: the value, or with `*` any value, is there.
    Has,
    Matches,
    NotMatches,
}

/// One comparison of a filter.
#[derive(Debug)]
pub(crate) struct Term {
    field: String,
    op: Op,
    value: String,
    regex: Option<regex_lite::Regex>,
}

fn unsupported(filter: &str, why: &str) -> ApiError {
    ApiError::invalid(format!("Invalid list filter expression '{filter}': {why}"))
}

fn tokens(filter: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    let mut chars = filter.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' | ')' | '=' | ':' => out.push(c.to_string()),
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                out.push("!=".into());
            }
            '"' | '\'' => {
                let mut text = String::from("\"");
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => text.push(other),
                        None => return Err(unsupported(filter, "unterminated quote")),
                    }
                }
                out.push(text);
            }
            _ => {
                let mut word = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || "()=!:\"'".contains(n) {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                out.push(word);
            }
        }
    }
    Ok(out)
}

/// A parsed filter: every group must have a term that passes (AND of ORs).
pub(crate) type Filter = Vec<Vec<Term>>;

/// Parses `filter`, allowing comparisons on `fields` and on `labels.KEY` when `labels` is set.
pub(crate) fn parse(filter: &str, fields: &[&str]) -> Result<Filter, ApiError> {
    let toks = tokens(filter)?;
    let mut groups: Filter = Vec::new();
    let mut or_next = false;
    let mut i = 0;
    while i < toks.len() {
        let joins = !groups.is_empty();
        if toks[i] == "AND" && joins && !or_next {
            i += 1;
            continue;
        }
        if toks[i] == "OR" && joins && !or_next {
            or_next = true;
            i += 1;
            continue;
        }
        let paren = toks[i] == "(";
        let start = i + usize::from(paren);
        let (Some(field), Some(op), Some(value)) =
            (toks.get(start), toks.get(start + 1), toks.get(start + 2))
        else {
            return Err(unsupported(filter, "expected FIELD OP VALUE"));
        };
        i = start + 3;
        if paren {
            if toks.get(i).map(String::as_str) != Some(")") {
                return Err(unsupported(filter, "expected ')'"));
            }
            i += 1;
        }
        let op = match op.as_str() {
            "=" => Op::Equal,
            "!=" => Op::NotEqual,
            ":" => Op::Has,
            "eq" => Op::Matches,
            "ne" => Op::NotMatches,
            other => return Err(unsupported(filter, &format!("operator {other}"))),
        };
        let known = fields.contains(&field.as_str())
            || (field.starts_with("labels.") && field.len() > 7 && fields.contains(&"labels"));
        if !known || field.starts_with('"') {
            return Err(unsupported(filter, &format!("field {field}")));
        }
        let value = value.strip_prefix('"').unwrap_or(value).to_string();
        let regex = match op {
            Op::Matches | Op::NotMatches => Some(
                regex_lite::Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| unsupported(filter, &e.to_string()))?,
            ),
            _ => None,
        };
        let term = Term {
            field: field.clone(),
            op,
            value,
            regex,
        };
        match groups.last_mut() {
            Some(group) if or_next => group.push(term),
            _ => groups.push(vec![term]),
        }
        or_next = false;
    }
    if or_next {
        return Err(unsupported(filter, "OR needs a term after it"));
    }
    let terms: Vec<&Term> = groups.iter().flatten().collect();
    let regexes = terms.iter().filter(|t| t.regex.is_some()).count();
    if regexes != 0 && (regexes != terms.len() || groups.iter().any(|g| g.len() > 1)) {
        return Err(unsupported(
            filter,
            "eq/ne cannot be mixed with =/!=, :, or OR",
        ));
    }
    Ok(groups)
}

/// Whether a resource's JSON passes the filter.
pub(crate) fn matches(filter: &Filter, resource: &Value) -> bool {
    filter
        .iter()
        .all(|group| group.iter().any(|t| passes(t, resource)))
}

fn passes(t: &Term, resource: &Value) -> bool {
    let found = match t.field.strip_prefix("labels.") {
        Some(key) => resource["labels"].get(key),
        None => resource.get(&t.field),
    }
    .and_then(Value::as_str);
    match t.op {
        Op::Equal => found == Some(t.value.as_str()),
        Op::NotEqual => found != Some(t.value.as_str()),
        Op::Has => found.is_some_and(|f| t.value == "*" || f == t.value),
        Op::Matches => t
            .regex
            .as_ref()
            .is_some_and(|r| r.is_match(found.unwrap_or(""))),
        Op::NotMatches => !t
            .regex
            .as_ref()
            .is_some_and(|r| r.is_match(found.unwrap_or(""))),
    }
}

/// The value of query parameter `key`, if given.
pub(crate) fn arg<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The parsed filter of a list call (`filter`), allowing `fields`.
pub(crate) fn filter(query: &[(String, String)], fields: &[&str]) -> Result<Filter, ApiError> {
    match arg(query, "filter") {
        Some(f) if !f.trim().is_empty() => parse(f, fields),
        _ => Ok(Vec::new()),
    }
}

/// One page of `items` (already filtered and sorted) as a `*List` resource.
pub(crate) fn page(
    items: Vec<Value>,
    query: &[(String, String)],
    kind: &str,
    self_link: String,
) -> Reply {
    let max = match arg(query, "maxResults") {
        None => 500,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|m| (1..=500).contains(m))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Invalid value for field 'maxResults': '{v}'. Must be between 1 and 500"
                ))
            })?,
    };
    let offset = match arg(query, "pageToken") {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| {
                ApiError::invalid(format!("Invalid value for field 'pageToken': '{t}'"))
            })?,
    };
    let end = (offset + max).min(items.len());
    let mut out = Map::new();
    out.insert("kind".into(), kind.into());
    // GCE's list id is the collection's path, not its URL.
    out.insert("id".into(), crate::links::unlink(&self_link).into());
    if end > offset {
        out.insert("items".into(), json!(items[offset..end]));
    }
    if end < items.len() {
        out.insert("nextPageToken".into(), format!("page-{end}").into());
    }
    out.insert("selfLink".into(), self_link.into());
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["name", "family", "architecture", "labels"];

    fn keep(filter: &str, v: Value) -> bool {
        matches(&parse(filter, FIELDS).unwrap(), &v)
    }

    #[test]
    fn the_documented_subset_works() {
        let img = json!({"name": "cos-109-1", "family": "cos-stable", "architecture": "X86_64", "labels": {"k": "v"}});
        assert!(keep("(family = cos-stable) (name != cos-1)", img.clone()));
        assert!(keep(
            "(family = \"cos-stable\") AND (labels.k = v)",
            img.clone()
        ));
        assert!(keep("name eq \"cos-.*\"", img.clone()));
        assert!(keep("name eq 'cos-.*' architecture eq X86_64", img.clone()));
        assert!(!keep("name eq cos", img.clone()));
        assert!(!keep("name ne \"cos-.*\"", img.clone()));
        assert!(keep("architecture = X86_64", img.clone()));
        assert!(!keep("(labels.other = v)", img.clone()));
        assert!(keep("labels.k:*", img.clone()));
        assert!(!keep("labels.other:*", img.clone()));
        assert!(keep("labels.k:v AND name = \"cos-109-1\"", img.clone()));
        // OR binds before AND: a AND (b OR c).
        assert!(keep(
            "(family = cos-stable) AND (name = x) OR (labels.k = v)",
            img.clone()
        ));
        assert!(!keep(
            "(family = x) AND (name = cos-109-1) OR (labels.k = v)",
            img.clone()
        ));
        assert!(keep("(name = x) OR (name != y)", img));
    }

    #[test]
    fn anything_else_is_a_400() {
        for bad in [
            "(family = a) OR",
            "OR (family = a)",
            "(name eq a) OR (name eq b)",
            "(status = READY)",
            "name > a",
            "(name = a",
            "name eq a (family = b)",
            "name eq \"(\"",
            "labels.:",
        ] {
            let e = parse(bad, FIELDS).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
    }
}
