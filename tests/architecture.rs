//! The layering rules of `../shared/DESIGN.md` §2, checked against the sources and the
//! resolved dependency graph, so that a change breaking them fails here rather than in a
//! review:
//! - the FastCGI codec is sans-I/O: no sockets, clocks, async runtime or Python;
//! - pyo3 appears only in the worker crate;
//! - the manager (`pyfpm`) never links Python: pyo3 is not in its dependency graph.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of the sources under `dir` that mention any of `needles`, comments excluded.
fn offending_lines(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for needle in needles {
                if code.contains(needle) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn codec_is_sans_io() {
    let forbidden = [
        "std::net",
        "std::os::unix::net",
        "std::fs",
        "std::time",
        "std::thread",
        "tokio",
        "pyo3",
        "libc::",
        "nix::",
    ];
    let hits = offending_lines(&root().join("crates/fastcgi/src"), &forbidden);
    assert!(
        hits.is_empty(),
        "the codec must not do I/O, keep time or touch Python:\n{}",
        hits.join("\n")
    );
}

/// Normal (non-dev, non-build) dependency names of every workspace package, keyed by
/// package name, and the full resolved graph, from `cargo metadata`.
struct Graph {
    workspace: Vec<String>,
    deps: HashMap<String, Vec<String>>,
    names: HashMap<String, String>,
}

fn graph() -> &'static Graph {
    static GRAPH: std::sync::OnceLock<Graph> = std::sync::OnceLock::new();
    GRAPH.get_or_init(load_graph)
}

fn load_graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names = HashMap::new();
    for p in meta["packages"].as_array().unwrap() {
        names.insert(
            p["id"].as_str().unwrap().to_string(),
            p["name"].as_str().unwrap().to_string(),
        );
    }
    let mut deps = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        let normal: Vec<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_string())
            .collect();
        deps.insert(id, normal);
    }
    let workspace = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    Graph {
        workspace,
        deps,
        names,
    }
}

impl Graph {
    fn id_of(&self, name: &str) -> String {
        self.workspace
            .iter()
            .find(|id| self.names[*id] == name)
            .unwrap_or_else(|| panic!("no workspace package {name}"))
            .clone()
    }

    /// Names of every package reachable from `name` through normal dependencies.
    fn closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![self.id_of(name)];
        while let Some(id) = stack.pop() {
            for dep in self.deps.get(&id).into_iter().flatten() {
                if seen.insert(self.names[dep].clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen
    }
}

#[test]
fn only_the_worker_links_python() {
    let g = graph();
    for member in &g.workspace {
        let name = &g.names[member];
        let closure = g.closure(name);
        let has_pyo3 = closure.iter().any(|d| d.starts_with("pyo3"));
        if name == "pyfpm-worker" {
            assert!(has_pyo3, "the worker core is the pyo3 extension");
        } else {
            assert!(
                !has_pyo3,
                "{name} must not depend on pyo3 (only crates/worker may)"
            );
        }
    }
}

#[test]
fn codec_depends_only_on_parsing_crates() {
    let g = graph();
    let direct: BTreeSet<String> = g.deps[&g.id_of("pyfpm-fastcgi")]
        .iter()
        .map(|d| g.names[d].clone())
        .collect();
    let allowed: BTreeSet<String> = ["bytes", "nom", "thiserror"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(
        direct.is_subset(&allowed),
        "codec dependencies {direct:?} exceed {allowed:?}"
    );
}
