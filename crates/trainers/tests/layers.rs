//! The module graph of burnish-trainers has no circles: modules are in layers (lib.rs's docs), and each
//! imports only modules listed before it. Read from the sources, so a new `use crate::...` that points
//! upwards (e.g. ablation importing the run file) fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top. A module may use `crate::X` only for X earlier in this list (or itself).
const ORDER: &[&str] = &[
    "progress",
    "loss",
    "optim",
    "logps",
    "checkpoint",
    "output",
    "method",
    "team",
    "engine",
    "parallel",
    "plot",
    "sft",
    "dpo",
    "reward",
    "ppo",
    "detector",
    "eval",
    "ablate",
    "config",
    "run",
];

/// Top-level modules a source file refers to through `crate::` in code (comments, where docs may link
/// to any module, are left out).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
            .collect();
        if let Some(group) = name.strip_prefix('{') {
            // `use crate::{a, b::c}`: every item of the group up to the closing brace.
            let end = rest.find('}').unwrap_or(rest.len());
            for item in rest[1..end].split(',') {
                let m = item.trim().split("::").next().unwrap_or("").to_string();
                out.insert(m);
            }
            let _ = group;
        } else {
            out.insert(name);
        }
    }
    out
}

/// Every .rs file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut seen = BTreeSet::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let rank = ORDER
            .iter()
            .position(|m| *m == module)
            .unwrap_or_else(|| panic!("module `{module}` is not in ORDER: place it in a layer"));
        seen.insert(module.clone());
        let text = std::fs::read_to_string(&path).unwrap();
        for r in crate_refs(&text) {
            // The crate root's items (Error, Result, burn) are below every module.
            let Some(target) = ORDER.iter().position(|m| *m == r) else {
                continue;
            };
            assert!(
                target <= rank,
                "{}: `{module}` uses `crate::{r}`, a module above it in the layers",
                rel.display()
            );
        }
    }
    assert_eq!(seen.len(), ORDER.len(), "every listed module exists");
}

#[test]
fn references_are_read_from_use_groups_and_paths() {
    let r =
        crate_refs("use crate::{engine::X, eval};\nlet x = crate::plot::f();\nuse crate::Result;");
    let want: BTreeSet<String> = ["engine", "eval", "plot", "Result"]
        .map(String::from)
        .into();
    assert_eq!(r, want);
}
