//! `mysimbdp plugin check FILE.so`: what a plugin file declares and whether this platform
//! would load it, without a running platform.

use std::fmt;
use std::path::{Path, PathBuf};

use super::loader::LoadedLibrary;
use super::manifest::{check_identity, convert_manifest, hash_file};
use super::naming::PluginId;
use super::version::PluginManifest;

/// The outcome of a check.
#[derive(Debug)]
pub struct CheckReport {
    /// The file.
    pub file: PathBuf,
    /// Its SHA-256.
    pub sha256: Option<String>,
    /// What its name says it is.
    pub id: Result<PluginId, String>,
    /// What it declares, if it loaded.
    pub manifest: Option<PluginManifest>,
    /// `Ok` if the platform would load it as the plugin its name says; otherwise why not.
    pub verdict: Result<(), String>,
    /// Further findings, one line each (what loading it would do to a platform's storage).
    pub notes: Vec<String>,
}

/// Checks a plugin file: its name (or `deployed_as`, the file name it will have in
/// `plugins/`), the ABI checks of the loader, its manifest. With `probe_binary` (the `mysimbdp`
/// binary), the file is loaded in a child process first, so a library that crashes while it
/// loads fails the check instead of ending it.
pub fn check_file(path: &Path, deployed_as: Option<&str>, probe_binary: Option<&Path>) -> CheckReport {
    let id = match deployed_as {
        Some(name) => PluginId::from_file_name(name),
        None => PluginId::from_path(path),
    };
    let sha256 = hash_file(path).ok();
    if let Some(Err(problem)) = probe_binary.map(|binary| super::preflight::probe_in_child(binary, path)) {
        return CheckReport {
            file: path.to_path_buf(),
            sha256,
            id,
            manifest: None,
            verdict: Err(problem.message),
            notes: Vec::new(),
        };
    }
    let file = path.to_path_buf();
    let loaded = std::thread::spawn(move || {
        let library = LoadedLibrary::load(&file).map_err(|e| e.to_string())?;
        let manifest = library
            .manifest()
            .map_err(|e| format!("its manifest() failed: {}", e.message));
        Ok::<_, String>((library, manifest))
    })
    .join()
    .unwrap_or_else(|_| Err("the check failed while loading the library".into()));
    let (manifest, verdict) = match loaded {
        Err(error) => (None, Err(error)),
        Ok((library, manifest)) => {
            let manifest = manifest.and_then(|m| convert_manifest(&m));
            drop(library);
            match manifest {
                Err(error) => (None, Err(error)),
                Ok(manifest) => {
                    let verdict = match &id {
                        Ok(id) => check_identity(id, &manifest),
                        Err(naming) => Err(format!("wrongly named: {naming}")),
                    };
                    (Some(manifest), verdict)
                }
            }
        }
    };
    CheckReport {
        file: path.to_path_buf(),
        sha256,
        id,
        manifest,
        verdict,
        notes: Vec::new(),
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:        {}", self.file.display())?;
        if let Some(sha) = &self.sha256 {
            writeln!(f, "sha256:      {sha}")?;
        }
        match &self.id {
            Ok(id) => writeln!(f, "named as:    {id} (tenant {})", id.tenant)?,
            Err(reason) => writeln!(f, "named as:    (not a plugin name: {reason})")?,
        }
        if let Some(m) = &self.manifest {
            let kind = if m.kind == super::PluginKind::Batch {
                "batch"
            } else {
                "stream"
            };
            writeln!(
                f,
                "manifest:    tenant={} kind={kind} file_types=[{}] plugin_version={} api_version={}",
                m.tenant,
                m.file_types.join(","),
                m.plugin_version,
                m.api_version
            )?;
            for table in &m.tables {
                writeln!(
                    f,
                    "table {}: partition key ({}), clustering key ({})",
                    table.name,
                    table.partition_key.join(", "),
                    table.clustering_key.join(", ")
                )?;
                for c in &table.columns {
                    writeln!(
                        f,
                        "    {:<24} {:<10}{}",
                        c.name,
                        c.column_type.name(),
                        if c.nullable { "" } else { " not null" }
                    )?;
                }
            }
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        match &self.verdict {
            Ok(()) => writeln!(
                f,
                "verdict:     OK: this platform loads it (plugin-api {})",
                plugin_api::API_VERSION
            ),
            Err(reason) => writeln!(f, "verdict:     REJECTED: {reason}"),
        }
    }
}
