//! The architecture, as a test: the top modules of `src/` stand in layers (the table in
//! `src/lib.rs`), each importing only from its own layer or lower ones, and no files import each
//! other in a circle. A change that breaks either fails here with the offending files and lines.
//!
//! Imports are read from the code itself: every `crate::a::b`, `super::` and `self::` path outside
//! comments and test modules, attributed to the longest module path that is a file. (`self::` is
//! read as in a `mod.rs`, the only place this crate uses it.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may import from its own layer and those before it.
const LAYERS: &[&[&str]] = &[
    &["event", "location", "enrich", "metrics", "recent"],
    &["checkpoint"],
    &["ingest"],
    &["state"],
    &["detect"],
    &["control"],
    &["dataflows"],
    &["output"],
    &["kafka"],
    &["job"],
    &["render"],
    &["engine"],
    &["training"],
    &["cli"],
];

/// A source file: its module path (`detect::sigma`) and its lines up to its test module.
struct Source {
    module: String,
    path: PathBuf,
    lines: Vec<String>,
}

fn sources(dir: &Path, out: &mut Vec<Source>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&root).expect("under src").with_extension("");
        let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if matches!(parts.as_slice(), [only] if only == "lib" || only == "main") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let lines = text.lines().take_while(|l| l.trim() != "#[cfg(test)]").map(str::to_string).collect();
        out.push(Source { module: parts.join("::"), path, lines });
    }
}

/// The module paths a line refers to (`crate::x::y…`, `super::…`, `self::…`), as written.
fn references(line: &str, module: &str) -> Vec<Vec<String>> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let mut found = Vec::new();
    let own: Vec<String> = module.split("::").map(str::to_string).collect();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", own[..own.len() - 1].to_vec()), ("self::", own.clone())] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_ident = rest[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[at + prefix.len()..];
            if preceded_by_ident {
                continue;
            }
            let mut path = base.clone();
            let mut segments = rest;
            loop {
                let end = segments.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(segments.len());
                if end == 0 {
                    break;
                }
                path.push(segments[..end].to_string());
                match segments[end..].strip_prefix("::") {
                    Some(next) => segments = next,
                    None => break,
                }
            }
            found.push(path);
        }
    }
    found
}

/// The file module a path lands in: its longest prefix that is a module of `modules`.
fn owner<'m>(path: &[String], modules: &'m BTreeSet<String>) -> Option<&'m String> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n].join("::")))
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS.iter().position(|l| l.contains(&top)).unwrap_or_else(|| panic!("module {top} is in no layer: add it to LAYERS and to the table in src/lib.rs"))
}

/// Every file's imports of other files: `module -> {module: first line that imports it}`.
fn imports() -> (Vec<Source>, BTreeMap<String, BTreeMap<String, String>>) {
    let mut all = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut all);
    let modules: BTreeSet<String> = all.iter().map(|s| s.module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for source in &all {
        let edges = graph.entry(source.module.clone()).or_default();
        for (number, line) in source.lines.iter().enumerate() {
            for path in references(line, &source.module) {
                if let Some(target) = owner(&path, &modules).filter(|t| **t != source.module) {
                    edges.entry(target.clone()).or_insert_with(|| format!("{}:{}: {}", source.path.display(), number + 1, line.trim()));
                }
            }
        }
    }
    (all, graph)
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let (sources, graph) = imports();
    assert!(sources.len() > 40, "read {} files", sources.len());
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for (to, line) in targets {
            if layer(to) > layer(from) {
                upward.push(format!("{from} (layer {}) imports {to} (layer {}): {line}", layer(from), layer(to)));
            }
        }
    }
    assert!(upward.is_empty(), "imports from a higher layer:\n{}", upward.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let (_, graph) = imports();
    // Depth-first search; a grey node met again closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Grey,
        Black,
    }
    fn visit(node: &str, graph: &BTreeMap<String, BTreeMap<String, String>>, marks: &mut BTreeMap<String, Mark>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Grey);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|t| t.keys()) {
            match marks.get(next.as_str()) {
                Some(Mark::Grey) => {
                    let start = stack.iter().position(|n| n == next).expect("on the stack");
                    let mut circle = stack[start..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                Some(Mark::Black) => {}
                None => {
                    if let Some(circle) = visit(next, graph, marks, stack) {
                        return Some(circle);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Black);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.contains_key(node.as_str()) {
            continue;
        }
        if let Some(circle) = visit(node, &graph, &mut marks, &mut Vec::new()) {
            let lines: Vec<&String> = circle.windows(2).map(|pair| &graph[&pair[0]][&pair[1]]).collect();
            panic!("files import each other in a circle: {}\n{}", circle.join(" -> "), lines.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n"));
        }
    }
}

/// The test reads what it should: a path is attributed to the file that holds it.
#[test]
fn references_are_read_from_code_not_comments() {
    let module = "detect::sigma::detection";
    assert_eq!(references("use crate::detect::rules::{Rule, Severity};", module), vec![vec!["detect", "rules"]]);
    assert_eq!(references("    let x = super::Placeholders::new();", module), vec![vec!["detect", "sigma", "Placeholders", "new"]]);
    assert!(references("/// See [`crate::engine`].", module).is_empty());
    assert_eq!(references("use self::jobs::replay;", "cli"), vec![vec!["cli", "jobs", "replay"]]);
    let modules: BTreeSet<String> = ["detect::rules".to_string(), "detect".to_string()].into();
    let path: Vec<String> = ["detect", "rules", "Rule"].map(str::to_string).to_vec();
    assert_eq!(owner(&path, &modules).map(String::as_str), Some("detect::rules"));
}
