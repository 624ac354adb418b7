//! ARCHITECTURE.md's dependency rules, checked against the source (as rust-analyzer's tidy tests
//! do): each module of the `mysimbdp` library may name (`crate::...`) only the components its
//! rule allows, only the plugin host crosses the plugin ABI, `unsafe` appears only where the map
//! says, and the crates tenants build against depend on what they may. Test modules
//! (`#[cfg(test)]` and below) are not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The components a component may name with `crate::`. Leaves name nothing. Anything not
/// listed here is an unknown component, which fails the test until it gets its rule.
fn rules() -> BTreeMap<&'static str, Vec<&'static str>> {
    let leaves = ["schema", "source", "durable", "fswatch", "os", "crash"];
    let mut rules: BTreeMap<&str, Vec<&str>> = leaves.iter().map(|leaf| (*leaf, vec![])).collect();
    rules.insert("tenants", vec!["fswatch"]);
    // All dlopen and FFI: plugin-api, the tenants and the shared types; never storage, queues
    // or HTTP.
    rules.insert("plugin_host", vec!["tenants", "schema", "fswatch", "os"]);
    // Storage and queues: the tenants and the shared types only; never plugins or HTTP.
    rules.insert("coredms", vec!["tenants", "schema"]);
    rules.insert("queue", vec!["tenants"]);
    rules.insert("usage", vec!["coredms", "tenants"]);
    rules.insert("admission", vec!["coredms", "plugin_host", "tenants", "schema"]);
    rules.insert("staging", vec!["source", "durable", "tenants"]);
    rules.insert("report", vec!["source", "durable", "tenants"]);
    rules.insert("telemetry", vec!["report", "monitor"]);
    rules.insert(
        "ingest",
        vec![
            "coredms",
            "plugin_host",
            "schema",
            "source",
            "usage",
            "report",
            "tenants",
        ],
    );
    // The batch manager never reaches the HTTP API.
    rules.insert(
        "batch",
        vec![
            "ingest",
            "plugin_host",
            "coredms",
            "staging",
            "report",
            "usage",
            "tenants",
            "telemetry",
            "source",
            "durable",
            "fswatch",
            "schema",
            "crash",
        ],
    );
    rules.insert(
        "stream",
        vec![
            "ingest",
            "plugin_host",
            "coredms",
            "queue",
            "report",
            "usage",
            "tenants",
            "telemetry",
            "source",
            "durable",
            "schema",
            "monitor",
        ],
    );
    // The monitor decides from reports alone: never storage or plugins.
    rules.insert("monitor", vec!["tenants"]);
    // The settings aggregate the components' sections.
    rules.insert(
        "config",
        vec![
            "batch", "coredms", "queue", "report", "tenants", "stream", "monitor", "usage",
        ],
    );
    let everything: Vec<&str> = rules.keys().copied().chain(["daas", "config"]).collect();
    rules.insert("daas", everything.clone());
    rules.insert("platform", everything.into_iter().chain(["daas", "platform"]).collect());
    rules
}

/// Which components may use the `plugin_api` crate at all, and its FFI types.
const PLUGIN_API_USERS: [&str; 2] = ["plugin_host", "daas"];
const FFI_USERS: [&str; 1] = ["plugin_host"];

/// The only files with `unsafe` code.
const UNSAFE_FILES: [&str; 2] = ["plugin_host/loader.rs", "os.rs"];

/// Files under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The code of a file without its test module and its comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The components named as `crate::<name>` in `code`.
fn named_components(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            named.insert(name);
        }
    }
    // `use crate::{a, b::c}` names several.
    for group in code.split("crate::{").skip(1) {
        let inner = group.split('}').next().unwrap_or_default();
        for part in inner.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

#[test]
fn every_module_names_only_the_components_its_rule_allows() {
    let source = workspace().join("manager/src");
    let rules = rules();
    let mut violations = Vec::new();
    for file in rust_files(&source) {
        let relative = file.strip_prefix(&source).unwrap().to_string_lossy().to_string();
        let component = relative.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if ["lib", "main", "cli"].contains(&component.as_str()) {
            continue; // the crate root and the binary wire everything
        }
        let Some(allowed) = rules.get(component.as_str()) else {
            violations.push(format!(
                "{relative}: component {component} has no rule in tests/architecture.rs"
            ));
            continue;
        };
        let code = code(&file);
        for named in named_components(&code) {
            if named != component && !allowed.contains(&named.as_str()) {
                violations.push(format!("{relative}: {component} may not use crate::{named}"));
            }
        }
        if code.contains("plugin_api") && !PLUGIN_API_USERS.contains(&component.as_str()) {
            violations.push(format!("{relative}: {component} may not use plugin_api"));
        }
        if code.contains("plugin_api::ffi") && !FFI_USERS.contains(&component.as_str()) {
            violations.push(format!(
                "{relative}: only plugin_host crosses the plugin ABI (plugin_api::ffi)"
            ));
        }
        if code.contains("hyper") && !["daas", "platform"].contains(&component.as_str()) {
            violations.push(format!("{relative}: only daas speaks HTTP (hyper)"));
        }
        let has_unsafe = code.contains("unsafe {") || code.contains("unsafe impl") || code.contains("unsafe fn");
        if has_unsafe && !UNSAFE_FILES.contains(&relative.as_str()) {
            violations.push(format!("{relative}: unsafe code outside {UNSAFE_FILES:?}"));
        }
    }
    assert!(
        violations.is_empty(),
        "ARCHITECTURE.md's rules are broken:\n{}",
        violations.join("\n")
    );
}

/// The `[dependencies]` names of a crate's manifest.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && !line.is_empty() && !line.starts_with('#') {
            names.push(line.split(['=', '.']).next().unwrap().trim().to_string());
        }
    }
    names
}

#[test]
fn plugin_api_depends_on_abi_stable_alone_and_plugins_on_plugin_api_and_each_other() {
    let root = workspace();
    assert_eq!(dependencies(&root.join("plugin-api/Cargo.toml")), ["abi_stable"]);
    let ours = ["mysimbdp", "datagen", "mysimbdp-tests", "mysimbdp-bench"];
    for entry in std::fs::read_dir(root.join("plugins")).unwrap().flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        for dependency in dependencies(&manifest) {
            assert!(
                !ours.contains(&dependency.as_str()),
                "{}: a tenant's plugin may depend on plugin-api and other plugins, not on {dependency}",
                manifest.display()
            );
        }
    }
}

#[test]
fn the_rule_checker_sees_forbidden_names() {
    let named =
        named_components("use crate::coredms::Value;\nuse crate::{daas, queue::Queue};\nlet x = crate::usage::f();");
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["coredms", "daas", "queue", "usage"]
    );
}
