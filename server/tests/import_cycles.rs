//! No import cycles between the files of a crate: for each file, the set of `crate::x` (and
//! `super::x`) modules it uses; the graph of those edges must have no cycle. Checked for
//! `server/`, `client/` and `common/` (it lives here because it needs no crate of its own).
//!
//! A file's module is read from its path (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`); a use
//! of `crate::a::b::Item` is an edge to the longest module prefix that is a file. `mod x;`
//! declarations are not imports. Line comments are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Module = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "main" | "lib") || !parts.is_empty() && stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn ident_chars(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Paths after `prefix::` in `text`, expanding one level of `{a, b::c}` groups.
fn paths_after(text: &str, prefix: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.extend(parse_path(rest));
    }
    out
}

fn parse_path(s: &str) -> Vec<Module> {
    let mut path = Module::new();
    let mut s = s;
    loop {
        if let Some(group) = s.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            return group[..end]
                .split(',')
                .map(|item| {
                    let mut p = path.clone();
                    for seg in item.trim().split("::") {
                        let n = ident_chars(seg.trim());
                        if n == 0 {
                            break;
                        }
                        p.push(seg.trim()[..n].to_string());
                    }
                    p
                })
                .collect();
        }
        let n = ident_chars(s);
        if n == 0 {
            break;
        }
        path.push(s[..n].to_string());
        s = &s[n..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => break,
        }
    }
    vec![path]
}

/// File-level import graph of the crate rooted at `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, String> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                f.strip_prefix(src).expect("found under src").display().to_string(),
            )
        })
        .collect();
    let resolve = |path: &[String]| -> Option<&String> { (1..=path.len()).rev().find_map(|n| modules.get(&path[..n])) };
    let mut edges = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let name = modules[&me].clone();
        let text: String = std::fs::read_to_string(f)
            .expect("a source file is readable")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut used = BTreeSet::new();
        let mut targets = paths_after(&text, "crate::");
        // `use super::x` at the top of `a/b.rs` or `a/b/mod.rs` is `a::x` (indented ones are
        // in inline modules such as `mod tests`, whose `super` is the file itself).
        let parent: Module = me.iter().take(me.len().saturating_sub(1)).cloned().collect();
        for line in text
            .lines()
            .filter(|l| l.starts_with("use super::") || l.starts_with("pub use super::"))
        {
            for p in paths_after(line, "super::") {
                targets.push(parent.iter().cloned().chain(p).collect());
            }
        }
        for t in targets {
            if let Some(target) = resolve(&t)
                && *target != name
            {
                used.insert(target.clone());
            }
        }
        edges.insert(name, used);
    }
    edges
}

/// The groups of files that import each other (strongly connected components of size > 1).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for m in g.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for a in g.keys() {
        if done.contains(a) {
            continue;
        }
        let group: Vec<String> = g
            .keys()
            .filter(|b| *b == a || reachable[a].contains(*b) && reachable[*b].contains(a))
            .cloned()
            .collect();
        done.extend(group.iter().cloned());
        if group.len() > 1 {
            out.push(group);
        }
    }
    out
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
}

#[test]

fn server_files_import_no_cycle() {
    let found = cycles(&graph(&crate_src("server")));
    assert!(found.is_empty(), "files of server/ that import each other: {found:?}");
}

#[test]
fn client_and_common_files_import_no_cycle() {
    for krate in ["client", "common"] {
        let found = cycles(&graph(&crate_src(krate)));
        assert!(found.is_empty(), "files of {krate}/ that import each other: {found:?}");
    }
}

#[test]
fn checker_sees_a_cycle() {
    let dir = std::env::temp_dir().join(format!("sshvpnd-cycles-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("main.rs"), "mod a; mod b;\n").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::b::{c::X, Y};\n").unwrap();
    std::fs::write(dir.join("b/mod.rs"), "pub mod c; // crate::a is a comment\n").unwrap();
    std::fs::write(dir.join("b/c.rs"), "fn f() { crate::a::g() }\n").unwrap();
    let g = graph(&dir);
    assert_eq!(
        g["a.rs"],
        BTreeSet::from(["b/c.rs".to_string(), "b/mod.rs".to_string()])
    );
    assert!(g["b/mod.rs"].is_empty());
    assert_eq!(cycles(&g), vec![vec!["a.rs".to_string(), "b/c.rs".to_string()]]);
    let _ = std::fs::remove_dir_all(&dir);
}
