//! The README's Architecture says no crate of the workspace has an import circle among its
//! modules. This builds each crate's module graph from its sources and fails naming every
//! circle, with a reference for each step of it.
//!
//! A module depends on another when its code names it: `crate::a::b`, `super::x`,
//! `self::child`, or a child module by its bare name, inside `use` trees too. Edges go to the
//! deepest module a path names (`crate::model::State` is `model`; an item of the crate root is
//! the root). Not counted: `mod` declarations (a parent holds its children), and `pub use`
//! re-exports (a facade that hands a child's items on, which no code of its own calls).
//! Test-only code counts as part of its module, except inline modules (`mod tests { … }`),
//! which are modules of their own: a test module using its parent is not a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source folder of every workspace member; each crate root found in it (`lib.rs`,
/// `main.rs`, `bin/*.rs`) is one crate.
const SOURCE_DIRS: &[&str] = &[
    "src",
    "common/src",
    "core/src",
    "backends/qemu/src",
    "backends/gce/src",
    "tests/gce-emulator/src",
    "tests/testkit/src",
    "provisioner/src",
];

/// A module: its path from the crate root (`["preload", "flow"]`), empty for the root.
type ModPath = Vec<String>;

/// Where a reference was made, to show in a failure.
#[derive(Clone, Debug)]
struct Site {
    file: PathBuf,
    line: usize,
}

struct Crate {
    /// Every module, with the file holding it.
    modules: BTreeMap<ModPath, PathBuf>,
    /// Edges, with the first reference that made each.
    edges: BTreeMap<(ModPath, ModPath), Site>,
}

/// Blanks comments, string, byte-string, raw-string and char literals (keeping newlines), so
/// that braces and paths in them are not taken for code.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = raw_string_len(rest, i == 0 || !is_ident(b[i - 1])) {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == b'"' || (rest.starts_with(b"b\"") && (i == 0 || !is_ident(b[i - 1]))) {
            let mut j = if rest[0] == b'"' { 1 } else { 2 };
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{7f}'), or else a lifetime, which stays.
            let len = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            let len = len.unwrap_or(1);
            if len == 1 {
                out.push('\'');
            } else {
                blank(&mut out, &rest[..len]);
            }
            i += len;
        } else {
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The length of a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting `rest`, if one does.
fn raw_string_len(rest: &[u8], at_boundary: bool) -> Option<usize> {
    if !at_boundary {
        return None;
    }
    let start = if rest.starts_with(b"br") {
        2
    } else if rest.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = rest[start..].iter().take_while(|&&c| c == b'#').count();
    if rest.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let close: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    let body = start + hashes + 1;
    let end = rest[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?;
    Some(body + end + close.len())
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// One module's code, with its inline child modules cut out (each is a module of its own).
struct Unit {
    path: ModPath,
    file: PathBuf,
    /// Stripped code; lines of inline children blanked.
    code: String,
    /// Children declared here, inline or in files.
    children: BTreeSet<String>,
    /// `mod x;` declarations, to find their files.
    file_children: Vec<String>,
}

/// Splits a file's stripped code into its module and its inline modules (recursively).
fn units_of(path: ModPath, file: &Path, code: &str, out: &mut Vec<Unit>) {
    let lines: Vec<&str> = code.lines().collect();
    let mut own: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut children = BTreeSet::new();
    let mut file_children = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if depth == 0 {
            if let Some((name, inline)) = mod_decl(line) {
                children.insert(name.clone());
                if inline {
                    // The inline module runs to its matching brace.
                    let mut d = 0isize;
                    let mut j = i;
                    let mut body = Vec::new();
                    loop {
                        let l = lines[j];
                        d += brace_delta(l);
                        body.push(if j == i { String::new() } else { l.to_string() });
                        own[j] = String::new();
                        if d <= 0 || j + 1 == lines.len() {
                            break;
                        }
                        j += 1;
                    }
                    if let Some(last) = body.last_mut() {
                        // Drop the closing brace's line from the child's code.
                        last.clear();
                    }
                    let mut child = path.clone();
                    child.push(name);
                    // Keep line numbers: pad the child's code to its place in the file.
                    let padded = "\n".repeat(i) + &body.join("\n");
                    units_of(child, file, &padded, out);
                    i = j + 1;
                    continue;
                }
                file_children.push(name);
            }
        }
        depth = (depth as isize + brace_delta(line)).max(0) as usize;
        i += 1;
    }
    out.push(Unit {
        path,
        file: file.to_path_buf(),
        code: own.join("\n"),
        children,
        file_children,
    });
}

fn brace_delta(line: &str) -> isize {
    line.bytes()
        .map(|c| match c {
            b'{' => 1,
            b'}' => -1,
            _ => 0,
        })
        .sum()
}

/// `mod name;` (false) or `mod name {` (true), with any visibility.
fn mod_decl(line: &str) -> Option<(String, bool)> {
    let mut t = line.trim_start();
    if let Some(rest) = t.strip_prefix("pub") {
        t = rest.trim_start();
        if t.starts_with('(') {
            t = t[t.find(')')? + 1..].trim_start();
        }
    }
    let rest = t.strip_prefix("mod ")?;
    let name: String = rest
        .bytes()
        .take_while(|&c| is_ident(c))
        .map(char::from)
        .collect();
    let after = rest[name.len()..].trim();
    match after {
        ";" => Some((name, false)),
        _ if after.starts_with('{') => Some((name, true)),
        _ => None,
    }
}

/// Reads a crate from its root file.
fn load_crate(root: &Path) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut queue = vec![(ModPath::new(), root.to_path_buf())];
    while let Some((path, file)) = queue.pop() {
        let src = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let before = units.len();
        units_of(path.clone(), &file, &strip(&src), &mut units);
        // A file's children live beside it (root, mod.rs) or in a folder named after it.
        let dir = if path.is_empty() || file.file_name() == Some("mod.rs".as_ref()) {
            file.parent().expect("a file has a folder").to_path_buf()
        } else {
            file.with_extension("")
        };
        for unit in &units[before..] {
            // Inline modules' own `mod x;` children are rare; resolve them like the file's.
            let sub = unit.path[path.len()..]
                .iter()
                .fold(dir.clone(), |d, s| d.join(s));
            for name in &unit.file_children {
                let flat = sub.join(format!("{name}.rs"));
                let nested = sub.join(name).join("mod.rs");
                let child_file = if flat.is_file() { flat } else { nested };
                let mut child = unit.path.clone();
                child.push(name.clone());
                queue.push((child, child_file));
            }
        }
    }
    units
}

/// The paths a module's code names, as segment lists from their start (`crate`, `super`,
/// `self`, or a child's name), with the line of each.
fn references(unit: &Unit) -> Vec<(Vec<String>, usize)> {
    let code = without_reexports(&unit.code);
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':' || b[i - 1] == b'.');
        if !(boundary && is_ident(b[i])) {
            i += 1;
            continue;
        }
        let word_len = b[i..].iter().take_while(|&&c| is_ident(c)).count();
        let word = &code[i..i + word_len];
        let starts = matches!(word, "crate" | "super" | "self") || unit.children.contains(word);
        if starts && code[i + word_len..].starts_with("::") {
            let line = code[..i].matches('\n').count() + 1;
            let (paths, len) = parse_path(&code[i..]);
            out.extend(paths.into_iter().map(|p| (p, line)));
            i += len.max(word_len);
        } else {
            i += word_len;
        }
    }
    out
}

/// `code` with its `pub use …;` re-exports (any visibility) blanked, newlines kept.
fn without_reexports(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = next_reexport(rest) {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e + 1);
        out.extend(
            rest[at..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where the first `pub use` / `pub(…) use` statement of `code` starts.
fn next_reexport(code: &str) -> Option<usize> {
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(p) = code[from..].find("pub") {
        let at = from + p;
        from = at + 3;
        if at > 0 && is_ident(b[at - 1]) {
            continue;
        }
        let mut t = &code[at + 3..];
        if t.starts_with('(') {
            match t.find(')') {
                Some(close) => t = &t[close + 1..],
                None => continue,
            }
        }
        if t.starts_with(char::is_whitespace) && t.trim_start().starts_with("use ") {
            return Some(at);
        }
    }
    None
}

/// Parses `a::b::{c, d::e}` at the start of `s`: every full path it names, and its length.
fn parse_path(s: &str) -> (Vec<Vec<String>>, usize) {
    let b = s.as_bytes();
    let mut segments = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && (is_ident(b[i]) || b[i] == b'*') {
            i += 1;
        }
        if i > start {
            segments.push(s[start..i].to_string());
        }
        if !s[i..].starts_with("::") {
            return (vec![segments], i);
        }
        i += 2;
        if s[i..].starts_with('{') {
            // A group: split at top-level commas and parse each member.
            let mut depth = 0;
            let mut end = i;
            for (k, c) in s[i..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &s[i + 1..end.max(i + 1)];
            let mut paths = Vec::new();
            let (mut d, mut from) = (0, 0);
            for (k, c) in inner
                .char_indices()
                .chain(std::iter::once((inner.len(), ',')))
            {
                match c {
                    '{' => d += 1,
                    '}' => d -= 1,
                    ',' if d == 0 => {
                        let member = inner[from..k].trim();
                        from = k + 1;
                        if member.is_empty() {
                            continue;
                        }
                        for tail in parse_path(member).0 {
                            let mut p = segments.clone();
                            p.extend(tail.into_iter().filter(|t| t != "self"));
                            paths.push(p);
                        }
                    }
                    _ => {}
                }
            }
            return (paths, end + 1);
        }
    }
}

/// The module a path names, from module `at` (the deepest existing module on the path).
fn resolve(at: &ModPath, path: &[String], modules: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    let mut base: ModPath = at.clone();
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    for segment in rest {
        let mut next = base.clone();
        next.push(segment.clone());
        if !modules.contains_key(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

fn build(root: &Path) -> Crate {
    let units = load_crate(root);
    let modules: BTreeMap<ModPath, PathBuf> = units
        .iter()
        .map(|u| (u.path.clone(), u.file.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for unit in &units {
        for (path, line) in references(unit) {
            let Some(target) = resolve(&unit.path, &path, &modules) else {
                continue;
            };
            if target != unit.path {
                edges
                    .entry((unit.path.clone(), target))
                    .or_insert_with(|| Site {
                        file: unit.file.clone(),
                        line,
                    });
            }
        }
    }
    Crate { modules, edges }
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(c: &Crate) -> Vec<Vec<ModPath>> {
    struct Walk<'a> {
        next: BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.next.get(v).cloned().unwrap_or_default() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for (from, to) in c.edges.keys() {
        walk.next.entry(from).or_default().push(to);
    }
    for m in c.modules.keys() {
        if !walk.index.contains_key(m) {
            walk.visit(m);
        }
    }
    walk.found
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every crate root of the workspace.
fn crate_roots() -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = Vec::new();
    for dir in SOURCE_DIRS {
        let dir = workspace.join(dir);
        for root in ["lib.rs", "main.rs"] {
            if dir.join(root).is_file() {
                roots.push(dir.join(root));
            }
        }
        if let Ok(bins) = std::fs::read_dir(dir.join("bin")) {
            let mut bins: Vec<_> = bins.flatten().map(|e| e.path()).collect();
            bins.sort();
            roots.extend(
                bins.into_iter()
                    .filter(|p| p.extension() == Some("rs".as_ref())),
            );
        }
    }
    roots
}

#[test]
fn no_crate_has_an_import_circle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut report = Vec::new();
    let mut modules = 0;
    for root in crate_roots() {
        let c = build(&root);
        modules += c.modules.len();
        for circle in circles(&c) {
            let members: BTreeSet<&ModPath> = circle.iter().collect();
            let steps: Vec<String> = c
                .edges
                .iter()
                .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                .map(|((a, b), site)| {
                    format!(
                        "    {} -> {} ({}:{})",
                        name(a),
                        name(b),
                        site.file
                            .strip_prefix(workspace)
                            .unwrap_or(&site.file)
                            .display(),
                        site.line
                    )
                })
                .collect();
            report.push(format!(
                "{}: {} form a circle:\n{}",
                root.strip_prefix(workspace).unwrap_or(&root).display(),
                circle.iter().map(name).collect::<Vec<_>>().join(", "),
                steps.join("\n")
            ));
        }
    }
    // Every member's modules were read, not a handful.
    assert!(modules > 100, "only {modules} modules found");
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// A crate written out in a temporary folder.
fn scratch_crate(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let root = dir.path().join("lib.rs");
    (dir, root)
}

fn edge_names(c: &Crate) -> Vec<String> {
    c.edges
        .keys()
        .map(|(a, b)| format!("{} -> {}", name(a), name(b)))
        .collect()
}

#[test]
fn references_are_found_in_code_and_use_trees_only() {
    let (_dir, root) = scratch_crate(&[
        (
            "lib.rs",
            "mod a;\nmod b;\npub mod c;\npub use a::Thing;\n\
             pub fn run() { b::go(); }\n",
        ),
        (
            "a.rs",
            "//! See crate::b for more.\nuse crate::{c::{self, deep}, Root};\n\
             const S: &str = \"crate::b::x\";\nconst R: &str = r#\"super::b\"#;\n\
             fn f<'a>(x: &'a str) -> char { let _ = '{'; 'x' }\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    fn g() { crate::b::go(); }\n}\n",
        ),
        ("b.rs", "pub fn go() {}\n"),
        (
            "c/mod.rs",
            "pub mod deep;\nfn h() { deep::x(); self::deep::x(); }\n",
        ),
        ("c/deep.rs", "pub fn x() { super::super::b::go() }\n"),
    ]);
    let c = build(&root);
    assert_eq!(
        c.modules.keys().map(name).collect::<Vec<_>>(),
        ["crate", "a", "a::tests", "b", "c", "c::deep"]
    );
    assert_eq!(
        edge_names(&c),
        [
            "crate -> b",
            "a -> crate",
            "a -> c",
            "a -> c::deep",
            "a::tests -> a",
            "a::tests -> b",
            "c -> c::deep",
            "c::deep -> b",
        ]
    );
    assert!(circles(&c).is_empty());
}

#[test]
fn a_circle_is_found_and_named() {
    let (_dir, root) = scratch_crate(&[
        ("lib.rs", "mod model;\nmod router;\nmod seed;\n"),
        ("model.rs", "pub fn new() { crate::seed::load() }\n"),
        ("seed.rs", "use crate::router::Route;\npub fn load() {}\n"),
        ("router.rs", "use crate::model;\npub struct Route;\n"),
    ]);
    let c = build(&root);
    let found: Vec<Vec<String>> = circles(&c)
        .iter()
        .map(|m| m.iter().map(name).collect())
        .collect();
    assert_eq!(found, [["model", "router", "seed"]]);
}
