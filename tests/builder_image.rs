//! The Cloud Build builder image (`Dockerfile`, `.dockerignore`): always linted here, with
//! checks of our own (and hadolint's errors when it is on PATH); built and run only when
//! `COS_CUSTOMIZER_BUILD_IMAGE=1` is set and docker or podman can build, since its base
//! images cannot be pulled on every machine. Otherwise the test says loudly why not.
//!
//! The lint functions take the files' text, so the unit tests below feed them broken
//! variants of the real Dockerfile to show that each check can fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What Cloud Build runs: the original image's entrypoint, so only `name:` changes.
const ENTRYPOINT: &str = "/cos_customizer";
/// Cloud Build's working folder.
const WORKDIR: &str = "/workspace";
/// The names the program looks for next to itself (core/src/provisioner_bin.rs).
const PROVISIONER_NAMES: [&str; 2] = ["provisioner_amd64", "provisioner"];
/// Builds the static provisioner; the build stage must run it.
const PROVISIONER_SCRIPT: &str = "scripts/build-provisioner.sh";
/// Builds the image; the build-and-run test goes through it.
const IMAGE_SCRIPT: &str = "scripts/build-builder-image.sh";
/// Must stay out of the build context: large, local, or secret-ish.
const MUST_IGNORE: [&str; 4] = ["target", "fixtures/out", ".venv-gcs", ".git"];
/// The subcommands a cloudbuild.yaml calls (upstream's names).
const SUBCOMMANDS: [&str; 6] = [
    "start-image-build",
    "run-script",
    "install-gpu",
    "seal-oem",
    "disable-auto-update",
    "finish-image-build",
];
/// Tools the GCE path runs (async_cmd.rs, raw_disk.rs, scratch.rs).
const RUNTIME_TOOLS: [&str; 4] = ["setpriv", "tar", "gzip", "mkfs.ext4"];
/// Opts in to building the image.
const BUILD_ENV: &str = "COS_CUSTOMIZER_BUILD_IMAGE";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Parsing

/// One Dockerfile instruction, continuations joined and comment lines dropped.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    /// 1-based line where it starts.
    line: usize,
    /// Upper case: `FROM`, `RUN`, …
    keyword: String,
    args: String,
}

/// Splits a Dockerfile into instructions: joins lines ending in the escape character
/// (`\`, or the one a leading `# escape=` directive names), skipping comment and blank
/// lines inside a continuation as Docker does.
fn parse(text: &str) -> Vec<Instruction> {
    let escape = text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .find_map(|l| {
            let d = l.trim_start().trim_start_matches('#').trim();
            d.strip_prefix("escape=")
                .and_then(|v| v.trim().chars().next())
        })
        .unwrap_or('\\');
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        let body = raw.trim_end();
        if let Some(cont) = body.strip_suffix(escape) {
            acc.push_str(cont);
            acc.push(' ');
            pending = Some((start, acc));
            continue;
        }
        acc.push_str(body);
        out.push(instruction(start, &acc));
    }
    if let Some((start, acc)) = pending {
        out.push(instruction(start, &acc));
    }
    out
}

fn instruction(line: usize, text: &str) -> Instruction {
    let text = text.trim();
    let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    Instruction {
        line,
        keyword: keyword.to_ascii_uppercase(),
        args: squash_spaces(args),
    }
}

fn squash_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A build stage: its `FROM` and what follows up to the next `FROM`.
#[derive(Debug)]
struct Stage {
    index: usize,
    from_line: usize,
    base: String,
    name: Option<String>,
    body: Vec<Instruction>,
}

impl Stage {
    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("stage {} ({n})", self.index),
            None => format!("stage {}", self.index),
        }
    }

    fn runs(&self) -> impl Iterator<Item = &Instruction> {
        self.body.iter().filter(|i| i.keyword == "RUN")
    }

    fn copies(&self) -> impl Iterator<Item = (&Instruction, Copy)> {
        self.body
            .iter()
            .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
            .map(|i| (i, parse_copy(&i.args)))
    }

    /// The last `keyword` instruction's arguments (the one in force).
    fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.body.iter().rev().find(|i| i.keyword == keyword)
    }
}

fn stages(instructions: &[Instruction]) -> Result<Vec<Stage>, String> {
    let mut out: Vec<Stage> = Vec::new();
    for ins in instructions {
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (base, name) = match words.as_slice() {
                [base] => (base.to_string(), None),
                [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (base.to_string(), Some(name.to_ascii_lowercase()))
                }
                _ => return Err(format!("line {}: cannot read FROM {}", ins.line, ins.args)),
            };
            out.push(Stage {
                index: out.len(),
                from_line: ins.line,
                base,
                name,
                body: Vec::new(),
            });
        } else if let Some(stage) = out.last_mut() {
            stage.body.push(ins.clone());
        } else if ins.keyword != "ARG" {
            return Err(format!(
                "line {}: {} before any FROM",
                ins.line, ins.keyword
            ));
        }
    }
    if out.is_empty() {
        return Err("no FROM: not a Dockerfile".into());
    }
    Ok(out)
}

/// A `COPY`/`ADD`: its `--from`, sources and destination (shell or JSON form).
#[derive(Debug, Clone, PartialEq)]
struct Copy {
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn parse_copy(args: &str) -> Copy {
    let mut from = None;
    let mut rest = args.trim();
    while let Some(flag) = rest.strip_prefix("--") {
        let (word, tail) = flag.split_once(' ').unwrap_or((flag, ""));
        if let Some(v) = word.strip_prefix("from=") {
            from = Some(v.to_ascii_lowercase());
        }
        rest = tail.trim_start();
    }
    let mut paths: Vec<String> = if rest.starts_with('[') {
        serde_json::from_str(rest).unwrap_or_default()
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    let dest = paths.pop().unwrap_or_default();
    Copy {
        from,
        sources: paths,
        dest,
    }
}

/// Where each source lands: inside `dest` when it names a folder (a trailing `/` or
/// several sources), else at `dest`; relative to the stage's WORKDIR.
fn copy_targets(copy: &Copy, workdir: &str) -> Vec<String> {
    let dest = if copy.dest.starts_with('/') {
        copy.dest.clone()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), copy.dest)
    };
    let into_dir = dest.ends_with('/') || copy.sources.len() > 1;
    copy.sources
        .iter()
        .map(|src| {
            if into_dir {
                let base = src.trim_end_matches('/').rsplit('/').next().unwrap_or(src);
                format!("{}/{base}", dest.trim_end_matches('/'))
            } else {
                dest.clone()
            }
        })
        .collect()
}

/// A file a COPY/ADD puts in a stage.
#[derive(Debug)]
struct Placed {
    path: String,
    from: Option<String>,
    src: String,
}

/// Every file a stage ends up with from COPY/ADD.
fn stage_files(stage: &Stage) -> Vec<Placed> {
    let mut workdir = "/".to_string();
    let mut out = Vec::new();
    for ins in &stage.body {
        match ins.keyword.as_str() {
            "WORKDIR" if ins.args.starts_with('/') => workdir = ins.args.clone(),
            "WORKDIR" => workdir = format!("{}/{}", workdir.trim_end_matches('/'), ins.args),
            "COPY" | "ADD" => {
                let copy = parse_copy(&ins.args);
                for (path, src) in copy_targets(&copy, &workdir).into_iter().zip(&copy.sources) {
                    out.push(Placed {
                        path,
                        from: copy.from.clone(),
                        src: src.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The words of a shell command: split on blanks and shell punctuation.
fn shell_words(cmd: &str) -> Vec<&str> {
    cmd.split(|c: char| c.is_whitespace() || "\"'`$();&|<>".contains(c))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The simple commands of a RUN line (split on `&&`, `||`, `;`, `|`).
fn shell_commands(cmd: &str) -> Vec<String> {
    cmd.replace("&&", ";")
        .replace("||", ";")
        .split([';', '|'])
        .map(squash_spaces)
        .filter(|c| !c.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------
// .dockerignore

/// One `.dockerignore` line: path segments (globs), `!` for an exception.
#[derive(Debug)]
struct IgnoreRule {
    negate: bool,
    segments: Vec<String>,
}

fn parse_dockerignore(text: &str) -> Vec<IgnoreRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negate, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            IgnoreRule {
                negate,
                segments: clean_path(pat),
            }
        })
        .filter(|r| !r.segments.is_empty())
        .collect()
}

/// Docker cleans patterns and paths alike: no leading `/` or `./`, no trailing `/`.
fn clean_path(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .map(str::to_string)
        .collect()
}

/// Whether the context path `rel` is left out: the last rule that matches it or one of
/// its parent folders decides (an excluded folder takes its contents with it).
fn is_ignored(rules: &[IgnoreRule], rel: &str) -> bool {
    let path = clean_path(rel);
    let mut ignored = false;
    for rule in rules {
        if (1..=path.len()).any(|n| segments_match(&rule.segments, &path[..n])) {
            ignored = !rule.negate;
        }
    }
    ignored
}

fn segments_match(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|k| segments_match(rest, &path[k..])),
        Some((p, rest)) => match path.split_first() {
            Some((seg, tail)) => glob(p, seg) && segments_match(rest, tail),
            None => false,
        },
    }
}

/// `*` (any run) and `?` (one character) within one path segment.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn at(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|k| at(rest, &t[k..])),
            Some(('?', rest)) => !t.is_empty() && at(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && at(rest, &t[1..]),
        }
    }
    at(&p, &t)
}

// ---------------------------------------------------------------------------------------
// Checks: each returns the problems it found, empty when the Dockerfile passes it.

/// Runs every check on the two files' text against the repository at `root`.
fn lint(dockerfile: &str, dockerignore: &str, root: &Path) -> Vec<String> {
    let stages = match stages(&parse(dockerfile)) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let rules = parse_dockerignore(dockerignore);
    let cargo_toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    [
        check_bases_pinned(&stages),
        check_final_stage(&stages),
        check_copy_from(&stages),
        check_context_copies(&stages, &rules, root),
        check_workspace_copied(&stages, &cargo_toml),
        check_dockerignore(&rules),
        check_run_scripts(&stages, root),
        check_runtime_contents(&stages),
        check_apt(&stages),
    ]
    .concat()
}

/// Every base image has a version tag or a digest: no `latest`, no bare name.
fn check_bases_pinned(stages: &[Stage]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in stages {
        let earlier = stages[..s.index]
            .iter()
            .any(|e| e.name.as_deref() == Some(s.base.to_ascii_lowercase().as_str()));
        if earlier || s.base == "scratch" {
            continue;
        }
        let at = format!("line {}: FROM {}", s.from_line, s.base);
        if s.base.contains('$') {
            problems.push(format!("{at}: a variable base image cannot be checked"));
        } else if let Some((_, digest)) = s.base.split_once('@') {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!("{at}: the digest is not sha256:<64 hex digits>"));
            }
        } else {
            let last = s.base.rsplit('/').next().unwrap_or(&s.base);
            match last.split_once(':') {
                None => problems.push(format!("{at}: untagged (means latest): pin a tag")),
                Some((_, "latest")) => problems.push(format!("{at}: `latest` is not pinned")),
                Some((_, tag)) if !tag.chars().any(|c| c.is_ascii_digit()) => problems.push(
                    format!("{at}: the tag names no version (a moving tag): pin one"),
                ),
                Some(_) => {}
            }
        }
    }
    problems
}

/// The final stage runs `/cos_customizer` in `/workspace`, as the original image did.
fn check_final_stage(stages: &[Stage]) -> Vec<String> {
    let last = stages.last().expect("stages() returns at least one");
    let mut problems = Vec::new();
    match last.last("ENTRYPOINT") {
        None => problems.push(format!("{}: no ENTRYPOINT", last.label())),
        Some(e) => match serde_json::from_str::<Vec<String>>(&e.args) {
            Ok(v) if v == [ENTRYPOINT] => {}
            Ok(v) => problems.push(format!(
                "line {}: ENTRYPOINT {v:?} is not exactly [\"{ENTRYPOINT}\"]",
                e.line
            )),
            Err(_) => problems.push(format!(
                "line {}: ENTRYPOINT {} is not the JSON (exec) form [\"{ENTRYPOINT}\"]",
                e.line, e.args
            )),
        },
    }
    match last.last("WORKDIR") {
        Some(w) if w.args == WORKDIR => {}
        other => problems.push(format!(
            "{}: WORKDIR is {:?}, Cloud Build's is {WORKDIR}",
            last.label(),
            other.map(|w| &w.args)
        )),
    }
    problems
}

/// Resolves a `--from=` value to an earlier stage (by name or index).
fn earlier_stage<'a>(stages: &'a [Stage], before: usize, from: &str) -> Option<&'a Stage> {
    stages[..before]
        .iter()
        .find(|s| s.name.as_deref() == Some(from) || s.index.to_string() == from)
}

/// `COPY --from=` names an earlier stage, never a later one, itself or an outside image.
fn check_copy_from(stages: &[Stage]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in stages {
        for (ins, copy) in s.copies() {
            if let Some(from) = &copy.from {
                if earlier_stage(stages, s.index, from).is_none() {
                    problems.push(format!(
                        "line {}: COPY --from={from} names no earlier stage",
                        ins.line
                    ));
                }
            }
        }
    }
    problems
}

/// What is copied from the build context exists, stays inside it and is not ignored
/// (nor any Cargo input inside a copied folder).
fn check_context_copies(stages: &[Stage], rules: &[IgnoreRule], root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for s in stages {
        for (ins, copy) in s.copies().filter(|(_, c)| c.from.is_none()) {
            for src in &copy.sources {
                let at = format!("line {}: {} {src}", ins.line, ins.keyword);
                let rel = clean_path(src).join("/");
                if src.contains(['*', '?', '[']) || src.contains("..") || src.contains("://") {
                    problems.push(format!("{at}: only plain paths inside the context"));
                    continue;
                }
                let path = root.join(&rel);
                if !path.exists() {
                    problems.push(format!("{at}: not in the repository"));
                } else if is_ignored(rules, &rel) {
                    problems.push(format!("{at}: excluded by .dockerignore"));
                } else if path.is_dir() {
                    for inner in cargo_inputs(root, &rel) {
                        if is_ignored(rules, &inner) {
                            problems.push(format!("{at}: {inner} is excluded by .dockerignore"));
                        }
                    }
                }
            }
        }
    }
    problems
}

/// Files under the context folder `dir` that Cargo reads (manifests and Rust sources),
/// relative to `root`; the folders that must stay out ([`MUST_IGNORE`]) are not walked.
fn cargo_inputs(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_string()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(root.join(&d))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if d.is_empty() {
                name.clone()
            } else {
                format!("{d}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && !MUST_IGNORE.contains(&rel.as_str()) {
                todo.push(rel);
            } else if kind.is_file() && (name.ends_with(".rs") || name == "Cargo.toml") {
                out.push(rel);
            }
        }
    }
    out
}

/// The members of `[workspace] members = [...]` in a Cargo.toml.
fn workspace_members(cargo_toml: &str) -> Vec<String> {
    let Some(start) = cargo_toml
        .find("[workspace]")
        .and_then(|w| Some(w + cargo_toml[w..].find("members")?))
    else {
        return Vec::new();
    };
    let list = &cargo_toml[start..];
    let (Some(open), Some(close)) = (list.find('['), list.find(']')) else {
        return Vec::new();
    };
    list[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The stage that runs `cargo build` gets the manifests and every workspace member (and
/// the root package's tests/, whose declared [[test]] targets Cargo checks).
fn check_workspace_copied(stages: &[Stage], cargo_toml: &str) -> Vec<String> {
    let Some(stage) = stages
        .iter()
        .find(|s| s.runs().any(|r| r.args.contains("cargo build")))
    else {
        return vec!["no stage runs `cargo build`".into()];
    };
    let copied: Vec<String> = stage
        .copies()
        .filter(|(_, c)| c.from.is_none())
        .flat_map(|(_, c)| c.sources)
        .map(|s| clean_path(&s).join("/"))
        .collect();
    let covered = |p: &str| {
        copied
            .iter()
            .any(|c| c.is_empty() || p == c || p.starts_with(&format!("{c}/")))
    };
    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    for m in workspace_members(cargo_toml) {
        if m == "." {
            needed.push("src".into());
            if cargo_toml.contains("[[test]]") {
                needed.push("tests".into());
            }
        } else {
            needed.push(m);
        }
    }
    needed
        .into_iter()
        .filter(|n| !covered(n))
        .map(|n| format!("{}: runs cargo build but does not COPY {n}", stage.label()))
        .collect()
}

/// The context leaves out build output, fixtures' disk images, the venv and .git.
fn check_dockerignore(rules: &[IgnoreRule]) -> Vec<String> {
    MUST_IGNORE
        .iter()
        .filter(|p| !is_ignored(rules, p))
        .map(|p| format!(".dockerignore does not exclude {p}"))
        .collect()
}

/// Scripts a RUN calls (`scripts/…`, `./…`, `*.sh`): in the repository, executable, and
/// copied into that stage. The provisioner's build script is among them.
fn check_run_scripts(stages: &[Stage], root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ran_provisioner_script = false;
    for s in stages {
        let copied: Vec<String> = s
            .copies()
            .filter(|(_, c)| c.from.is_none())
            .flat_map(|(_, c)| c.sources)
            .map(|p| clean_path(&p).join("/"))
            .collect();
        for run in s.runs() {
            for word in shell_words(&run.args) {
                let looks_like_script = !word.starts_with('/')
                    && (word.starts_with("scripts/")
                        || word.starts_with("./")
                        || word.ends_with(".sh"));
                if !looks_like_script {
                    continue;
                }
                let rel = clean_path(word).join("/");
                ran_provisioner_script |= rel == PROVISIONER_SCRIPT;
                let at = format!("line {}: RUN {word}", run.line);
                if !copied
                    .iter()
                    .any(|c| c.is_empty() || rel == *c || rel.starts_with(&format!("{c}/")))
                {
                    problems.push(format!("{at}: not copied into {}", s.label()));
                }
                match std::fs::metadata(root.join(&rel)) {
                    Err(_) => problems.push(format!("{at}: not in the repository")),
                    Ok(m) if !is_executable(&m) => {
                        problems.push(format!("{at}: not executable in the repository"))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    if !ran_provisioner_script {
        problems.push(format!("no stage runs {PROVISIONER_SCRIPT}"));
    }
    problems
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.is_file() && m.permissions().mode() & 0o111 != 0
}

/// The final stage holds the entrypoint binary and, next to it, the provisioner, each
/// copied from an earlier stage whose RUN makes it: `cargo build --release` of the
/// cos-customizer package, and the provisioner script.
fn check_runtime_contents(stages: &[Stage]) -> Vec<String> {
    let last = stages.last().expect("stages() returns at least one");
    let files = stage_files(last);
    let dir = ENTRYPOINT.rsplit_once('/').map_or("", |(d, _)| d);
    let provisioners: Vec<String> = PROVISIONER_NAMES
        .iter()
        .map(|n| format!("{dir}/{n}"))
        .collect();
    let binary = Wanted {
        what: format!("cos-customizer binary at {ENTRYPOINT}"),
        paths: vec![ENTRYPOINT.to_string()],
        made_by: "runs cargo build --release -p cos-customizer",
        makes: &|run| {
            let words = shell_words(run);
            run.contains("cargo build")
                && words.contains(&"--release")
                && words.windows(2).any(|w| {
                    matches!(w[0], "-p" | "--package" | "--bin") && w[1] == "cos-customizer"
                })
        },
    };
    let provisioner = Wanted {
        what: format!("provisioner at {}", provisioners.join(" or ")),
        paths: provisioners,
        made_by: "runs scripts/build-provisioner.sh",
        makes: &|run| run.contains(PROVISIONER_SCRIPT),
    };
    [binary, provisioner]
        .iter()
        .filter_map(|w| w.problem(stages, last, &files))
        .collect()
}

/// A file the final stage must hold, and how to tell the RUN that makes it.
struct Wanted<'a> {
    what: String,
    /// Any of these.
    paths: Vec<String>,
    made_by: &'a str,
    makes: &'a dyn Fn(&str) -> bool,
}

impl Wanted<'_> {
    fn problem(&self, stages: &[Stage], last: &Stage, files: &[Placed]) -> Option<String> {
        let Some(Placed { path, from, src }) = files.iter().find(|f| self.paths.contains(&f.path))
        else {
            return Some(format!("{}: no {}", last.label(), self.what));
        };
        let Some(from) = from.as_deref() else {
            return Some(format!("{path}: copied from the context, not built"));
        };
        // An unknown stage is check_copy_from's to report.
        let stage = earlier_stage(stages, last.index, from)?;
        let made = stage
            .runs()
            .any(|r| r.args.contains(src.as_str()) && (self.makes)(&r.args));
        (!made).then(|| {
            format!(
                "{path}: no RUN in {} both makes {src} and {}",
                stage.label(),
                self.made_by
            )
        })
    }
}

/// `apt-get install` takes `--no-install-recommends` and the same RUN removes the lists.
fn check_apt(stages: &[Stage]) -> Vec<String> {
    let mut problems = Vec::new();
    for run in stages.iter().flat_map(Stage::runs) {
        let installs: Vec<String> = shell_commands(&run.args)
            .into_iter()
            .filter(|c| c.contains("apt-get install") || c.contains("apt install"))
            .collect();
        for c in &installs {
            if !c.split_whitespace().any(|w| w == "--no-install-recommends") {
                problems.push(format!(
                    "line {}: `{c}` lacks --no-install-recommends",
                    run.line
                ));
            }
        }
        if !installs.is_empty() && !run.args.contains("rm -rf /var/lib/apt/lists") {
            problems.push(format!(
                "line {}: installs packages but keeps /var/lib/apt/lists",
                run.line
            ));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// Tools

/// `name`'s path on PATH, if it is there and executable.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| is_executable(&m)))
}

/// Runs `cmd` with its output in temporary files (no pipe to fill up), killing it after
/// `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let line = format!("{cmd:?}");
    let out = tempfile::tempfile().map_err(|e| e.to_string())?;
    let err = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting {line}: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{line} took more than {limit:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let slurp = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        let _ = f.rewind().and_then(|_| f.read_to_end(&mut v));
        v
    };
    Ok(Output {
        status,
        stdout: slurp(out),
        stderr: slurp(err),
    })
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The first of docker and podman that can build here, or why none can.
fn container_tool() -> Result<String, String> {
    let mut why = Vec::new();
    for tool in ["docker", "podman"] {
        let Some(path) = on_path(tool) else {
            why.push(format!("{tool} is not on PATH"));
            continue;
        };
        match run_with_timeout(Command::new(&path).arg("info"), Duration::from_secs(20)) {
            Ok(o) if o.status.success() => return Ok(tool.to_string()),
            Ok(o) => why.push(format!(
                "{tool} ({}) cannot build: `{tool} info` failed: {}",
                path.display(),
                tail(&o.stderr, 2).replace('\n', " ")
            )),
            Err(e) => why.push(format!("{tool} ({}) cannot build: {e}", path.display())),
        }
    }
    Err(why.join("; "))
}

/// Writes to the real stderr: libtest captures `eprintln!` and shows it only on failure.
fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn loud(message: &str) {
    let bar = "=".repeat(88);
    say(&format!("\n{bar}\n{message}\n{bar}\n"));
}

/// Removes the test's image however the test ends.
struct ImageGuard {
    tool: String,
    tag: String,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new(&self.tool).args(["rmi", "-f", &self.tag]),
            Duration::from_secs(120),
        );
    }
}

/// `tool run --rm FLAGS TAG ARGS`, which must succeed.
fn run_image(tool: &str, flags: &[&str], tag: &str, args: &[&str]) -> Output {
    let out = run_with_timeout(
        Command::new(tool)
            .args(["run", "--rm"])
            .args(flags)
            .arg(tag)
            .args(args),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{tool} run {flags:?} {tag} {args:?} failed: {}\n{}",
        out.status,
        tail(&out.stderr, 20)
    );
    out
}

// ---------------------------------------------------------------------------------------
// The tests of the real files

#[test]
fn dockerfile_passes_the_lint() {
    let problems = lint(&read("Dockerfile"), &read(".dockerignore"), &repo());
    assert!(
        problems.is_empty(),
        "Dockerfile lint:\n  {}",
        problems.join("\n  ")
    );
}

/// hadolint's findings on `dockerfile` (text), run from the repository so that a config
/// file there applies; one line each, errors first.
fn hadolint(hadolint: &Path, dockerfile: &str) -> (Vec<String>, Vec<String>) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), dockerfile).unwrap();
    let out = run_with_timeout(
        Command::new(hadolint)
            .args(["--format", "json"])
            .arg(file.path())
            .current_dir(repo()),
        Duration::from_secs(60),
    )
    .unwrap();
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "hadolint's output is not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let describe =
        |f: &serde_json::Value| format!("Dockerfile:{} {} {}", f["line"], f["code"], f["message"]);
    let (errors, others): (Vec<_>, Vec<_>) = findings.iter().partition(|f| f["level"] == "error");
    (
        errors.into_iter().map(describe).collect(),
        others.into_iter().map(describe).collect(),
    )
}

#[test]
fn hadolint_reports_no_errors() {
    let Some(path) = on_path("hadolint") else {
        say("note: hadolint is not on PATH: the Dockerfile got only this file's own checks");
        return;
    };
    let (errors, others) = hadolint(&path, &read("Dockerfile"));
    for f in others {
        say(&format!("hadolint: {f}"));
    }
    assert!(errors.is_empty(), "hadolint errors:\n{}", errors.join("\n"));
    // And it does fail: a relative WORKDIR is one of its errors (DL3000).
    let (errors, _) = hadolint(&path, &mutate("WORKDIR /workspace", "WORKDIR workspace"));
    assert!(errors.iter().any(|e| e.contains("DL3000")), "{errors:?}");
}

#[test]
fn builder_image_builds_and_runs_when_asked() {
    let asked = std::env::var(BUILD_ENV).is_ok_and(|v| v == "1");
    let tool = container_tool();
    let tool = match (asked, tool) {
        (true, Ok(tool)) => tool,
        (asked, tool) => {
            let mut why = Vec::new();
            if !asked {
                why.push(format!("{BUILD_ENV}=1 is not set"));
            }
            match tool {
                Ok(t) => why.push(format!("{t} could build it")),
                Err(e) => why.push(e),
            }
            loud(&format!(
                "BUILDER IMAGE: Dockerfile LINTED but the image was NOT BUILT OR RUN.\nWhy: {}.\n\
                 To build and run it: {BUILD_ENV}=1 cargo test -p cos-customizer --test builder_image \
                 (needs docker or podman able to pull rust and debian images)",
                why.join("; ")
            ));
            return;
        }
    };
    let tag = format!("cos-customizer:builder-image-test-{}", std::process::id());
    let _guard = ImageGuard {
        tool: tool.clone(),
        tag: tag.clone(),
    };
    let built = run_with_timeout(
        Command::new(repo().join(IMAGE_SCRIPT))
            .arg(&tag)
            .env("CONTAINER_TOOL", &tool),
        Duration::from_secs(3600),
    )
    .unwrap();
    assert!(
        built.status.success(),
        "{IMAGE_SCRIPT} {tag} failed ({}):\n{}",
        built.status,
        tail(&built.stderr, 40)
    );
    assert_eq!(String::from_utf8_lossy(&built.stdout).trim(), tag);

    let help = run_image(&tool, &[], &tag, &["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for sub in SUBCOMMANDS {
        assert!(text.contains(sub), "--help does not name {sub}:\n{text}");
    }
    let pwd = run_image(&tool, &["--entrypoint=pwd"], &tag, &[]);
    assert_eq!(String::from_utf8_lossy(&pwd.stdout).trim(), WORKDIR);
    let probe = format!(
        "for t in {}; do command -v \"$t\" || exit 1; done; \
         test -x /{} && test -s /etc/ssl/certs/ca-certificates.crt",
        RUNTIME_TOOLS.join(" "),
        PROVISIONER_NAMES[0]
    );
    run_image(&tool, &["--entrypoint=/bin/sh"], &tag, &["-c", &probe]);
    eprintln!("builder image {tag} built with {tool}, ran --help, has its runtime tools");
}

// ---------------------------------------------------------------------------------------
// Each check fails on a broken variant of the real files

/// The real Dockerfile with `from` replaced by `to` (which must be there to replace).
fn mutate(from: &str, to: &str) -> String {
    let text = read("Dockerfile");
    assert!(
        text.contains(from),
        "the Dockerfile no longer contains {from:?}: update this test"
    );
    text.replacen(from, to, 1)
}

/// Lints a variant and returns its problems, which must include one containing `expect`.
fn assert_flags(dockerfile: &str, dockerignore: &str, expect: &str) {
    let problems = lint(dockerfile, dockerignore, &repo());
    assert!(
        problems.iter().any(|p| p.contains(expect)),
        "expected a problem containing {expect:?}, got {problems:#?}"
    );
}

fn bad(from: &str, to: &str, expect: &str) {
    assert_flags(&mutate(from, to), &read(".dockerignore"), expect);
}

#[test]
fn parse_joins_continuations_and_drops_comments() {
    let ins = parse("# c\nFROM a:1 AS b\nRUN x \\\n  # inside\n  && y\n\ncopy  a  b\n");
    let got: Vec<(usize, &str, &str)> = ins
        .iter()
        .map(|i| (i.line, i.keyword.as_str(), i.args.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "FROM", "a:1 AS b"),
            (3, "RUN", "x && y"),
            (7, "COPY", "a b")
        ]
    );
    let escaped = parse("# escape=`\nFROM a:1\nRUN x `\n  y\n");
    assert_eq!(escaped[1].args, "x y");
}

#[test]
fn dockerignore_matches_as_docker_does() {
    let rules = parse_dockerignore("target/\n/fixtures/out\n**/*.img\n*.log\n!keep.log\n");
    for p in [
        "target",
        "target/release/x",
        "fixtures/out/a.img",
        "a/b/c.img",
        "x.log",
    ] {
        assert!(is_ignored(&rules, p), "{p}");
    }
    for p in [
        "src/target",
        "fixtures",
        "keep.log",
        "a/x.log",
        "Cargo.toml",
    ] {
        assert!(!is_ignored(&rules, p), "{p}");
    }
}

#[test]
fn unpinned_base_images_are_refused() {
    bad("rust:1.91.1-bookworm", "rust", "untagged");
    bad("rust:1.91.1-bookworm", "rust:latest", "`latest`");
    bad(
        "debian:12.12-slim",
        "debian:bookworm-slim",
        "names no version",
    );
    bad("debian:12.12-slim", "debian@sha256:abc", "digest");
}

#[test]
fn the_entrypoint_must_be_exactly_the_originals() {
    let exact = "ENTRYPOINT [\"/cos_customizer\"]";
    bad(exact, "ENTRYPOINT /cos_customizer", "JSON (exec) form");
    bad(exact, "ENTRYPOINT [\"/cos-customizer\"]", "not exactly");
    bad(
        exact,
        "ENTRYPOINT [\"/cos_customizer\", \"--help\"]",
        "not exactly",
    );
    bad(exact, "", "no ENTRYPOINT");
    bad("WORKDIR /workspace", "WORKDIR /src", "WORKDIR");
    // An ENTRYPOINT in the build stage does not count.
    let moved = mutate(exact, "").replacen("WORKDIR /src", &format!("WORKDIR /src\n{exact}"), 1);
    assert_flags(&moved, &read(".dockerignore"), "no ENTRYPOINT");
}

#[test]
fn copy_from_must_name_an_earlier_stage() {
    bad(
        "COPY --from=build /out/cos_customizer",
        "COPY --from=later /out/cos_customizer",
        "--from=later names no earlier stage",
    );
    bad(
        "COPY --from=build /out/provisioner_amd64",
        "COPY --from=1 /out/provisioner_amd64",
        "--from=1 names no earlier stage",
    );
}

#[test]
fn context_copies_must_exist_and_not_be_ignored() {
    bad(
        "COPY core/ core/",
        "COPY kore/ core/",
        "not in the repository",
    );
    let df = read("Dockerfile");
    let ignore = format!("{}\ncore/\n", read(".dockerignore"));
    assert_flags(&df, &ignore, "COPY core/: excluded by .dockerignore");
    let ignore = format!("{}\n**/*.rs\n", read(".dockerignore"));
    assert_flags(&df, &ignore, "core/src/lib.rs is excluded");
    bad(
        "COPY core/ core/",
        "COPY ../core/ core/",
        "only plain paths",
    );
}

#[test]
fn every_workspace_member_is_copied() {
    bad(
        "COPY provisioner/ provisioner/\n",
        "",
        "does not COPY provisioner",
    );
    bad("COPY tests/ tests/\n", "", "does not COPY tests");
    assert_eq!(
        workspace_members("[workspace]\nmembers = [\".\", \"a/b\"]\n"),
        [".", "a/b"]
    );
}

#[test]
fn the_dockerignore_must_keep_local_state_out() {
    let df = read("Dockerfile");
    for (line, expect) in [
        ("target/", "target"),
        (".git", ".git"),
        (".venv-gcs/", ".venv-gcs"),
    ] {
        let ignore = read(".dockerignore").replace(&format!("\n{line}\n"), "\n");
        assert_flags(&df, &ignore, &format!("does not exclude {expect}"));
    }
}

#[test]
fn scripts_the_build_runs_must_be_copied_and_executable() {
    bad(
        "COPY scripts/build-provisioner.sh scripts/\n",
        "",
        "not copied into stage 0 (build)",
    );
    bad(
        "scripts/build-provisioner.sh)",
        "scripts/no-such.sh)",
        "not in the repository",
    );
    bad(
        "prov=\"$(scripts/build-provisioner.sh)\"",
        "prov=/bin/true",
        "no stage runs scripts/build-provisioner.sh",
    );
    // A copy of the script without its executable bit.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("scripts")).unwrap();
    std::fs::write(root.path().join(PROVISIONER_SCRIPT), "#!/bin/sh\n").unwrap();
    let stages = stages(&parse(&read("Dockerfile"))).unwrap();
    let problems = check_run_scripts(&stages, root.path());
    assert!(
        problems.iter().any(|p| p.contains("not executable")),
        "{problems:?}"
    );
}

#[test]
fn the_runtime_stage_must_hold_both_binaries() {
    bad(
        "COPY --from=build /out/provisioner_amd64 /provisioner_amd64\n",
        "",
        "no provisioner at /provisioner_amd64 or /provisioner",
    );
    bad(
        "/out/provisioner_amd64 /provisioner_amd64",
        "/out/provisioner_amd64 /usr/bin/provisioner_amd64",
        "no provisioner",
    );
    bad(
        "COPY --from=build /out/cos_customizer /cos_customizer",
        "COPY --from=build /out/cos_customizer /usr/bin/cos_customizer",
        "no cos-customizer binary at /cos_customizer",
    );
    bad(
        "cargo build --release --locked -p cos-customizer",
        "cargo build --release --locked -p provisioner",
        "runs cargo build --release -p cos-customizer",
    );
    bad(
        "cargo build --release --locked",
        "cargo build --locked",
        "runs cargo build --release",
    );
    // Folder destinations and several sources land inside the folder.
    let copy = parse_copy("--from=build /out/a /out/b /");
    assert_eq!(copy_targets(&copy, "/"), ["/a", "/b"]);
    assert_eq!(copy_targets(&parse_copy("x y/"), "/w"), ["/w/y/x"]);
}

#[test]
fn apt_installs_must_skip_recommends_and_drop_the_lists() {
    bad(
        "install -y --no-install-recommends ca-certificates",
        "install -y ca-certificates",
        "lacks --no-install-recommends",
    );
    bad(
        "install -y --no-install-recommends file",
        "install -y file",
        "lacks --no-install-recommends",
    );
    bad(
        "util-linux \\\n && rm -rf /var/lib/apt/lists/*",
        "util-linux",
        "keeps /var/lib/apt/lists",
    );
}
