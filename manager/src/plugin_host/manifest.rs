//! A plugin's manifest: read from a loaded library, checked (API version, table declarations,
//! identity against the file name) and turned into host types.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::loader::LoadedLibrary;
use super::status::{LoadFailureKind, LoadProblem};
use super::{PluginId, PluginKind, PluginManifest};
use crate::schema::{Column, ColumnType, TableSchema};

/// SHA-256 of a file's content, in hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Loads a library file and checks it as the plugin `id`. The library is closed again on
/// failure (after the loading thread was joined).
pub fn load_and_check(
    id: &PluginId,
    file: &Path,
    sha256: &str,
) -> Result<(LoadedLibrary, PluginManifest), LoadProblem> {
    let unreadable = |message: String| LoadProblem::new(LoadFailureKind::Unreadable, message);
    let copied_hash = hash_file(file).map_err(|e| unreadable(format!("cannot read {}: {e}", file.display())))?;
    if copied_hash != sha256 {
        return Err(unreadable(
            "the file changed while it was being loaded; it will be loaded once it is complete".into(),
        ));
    }
    let path = file.to_path_buf();
    let loading = std::thread::Builder::new()
        .name(format!("plugin-load-{}", id.tenant))
        .spawn(move || {
            let library = LoadedLibrary::load(&path)
                .map_err(|e| LoadProblem::new(LoadFailureKind::NotLoadable, e.to_string()))?;
            let manifest = library.manifest();
            Ok::<_, LoadProblem>((library, manifest))
        })
        .map_err(|e| unreadable(format!("cannot start a loading thread: {e}")))?;
    let (library, manifest) = loading.join().map_err(|_| {
        LoadProblem::new(
            LoadFailureKind::Crashed,
            "the platform failed while loading the library",
        )
    })??;
    let invalid = |message: String| LoadProblem::new(LoadFailureKind::Manifest, message);
    let manifest = manifest.map_err(|e| invalid(format!("its manifest() failed: {}", e.message)))?;
    let manifest = check_manifest(id, &manifest).map_err(invalid)?;
    Ok((library, manifest))
}

/// Checks a manifest against the plugin's file name and turns it into host types.
pub fn check_manifest(id: &PluginId, m: &plugin_api::ffi::Manifest) -> Result<PluginManifest, String> {
    let manifest = convert_manifest(m)?;
    check_identity(id, &manifest)?;
    Ok(manifest)
}

/// Checks that a manifest is the one the file name promises.
pub fn check_identity(id: &PluginId, m: &PluginManifest) -> Result<(), String> {
    if m.tenant != id.tenant.as_str() {
        return Err(format!(
            "its manifest names tenant {:?}, but its file name names tenant {:?}",
            m.tenant,
            id.tenant.as_str()
        ));
    }
    if m.kind != id.kind {
        let name = |k: PluginKind| if k == PluginKind::Batch { "batch" } else { "stream" };
        return Err(format!(
            "it is a {} plugin, but its file name is that of a {} plugin",
            name(m.kind),
            name(id.kind)
        ));
    }
    if let Some(file_type) = &id.file_type
        && !m.file_types.iter().any(|t| t == file_type.as_str())
    {
        return Err(format!(
            "its file name says file type {:?}, but it ingests {:?}",
            file_type.as_str(),
            m.file_types
        ));
    }
    Ok(())
}

/// Validates a manifest's content and turns it into host types.
pub fn convert_manifest(m: &plugin_api::ffi::Manifest) -> Result<PluginManifest, String> {
    if m.api_version != plugin_api::API_VERSION {
        return Err(format!(
            "its manifest says plugin-api version {}, the platform's is {}",
            m.api_version,
            plugin_api::API_VERSION
        ));
    }
    if m.tables.is_empty() {
        return Err("it declares no tables".into());
    }
    let mut tables: Vec<TableSchema> = Vec::new();
    for table in m.tables.iter() {
        let table = TableSchema {
            name: table.name.to_string(),
            columns: table
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.to_string(),
                    column_type: column_type(c.column_type),
                    nullable: c.nullable,
                })
                .collect(),
            partition_key: table.partition_key.iter().map(|k| k.to_string()).collect(),
            clustering_key: table.clustering_key.iter().map(|k| k.to_string()).collect(),
        };
        // The host's own copy of the rules: the plugin's checks are not relied on.
        table
            .validate()
            .map_err(|e| format!("invalid table declaration: {e}"))?;
        if tables.iter().any(|t| t.name == table.name) {
            return Err(format!("table {:?} is declared twice", table.name));
        }
        tables.push(table);
    }
    Ok(PluginManifest {
        tenant: m.tenant.to_string(),
        kind: PluginKind::from(m.kind),
        file_types: m.file_types.iter().map(|t| t.to_string()).collect(),
        api_version: m.api_version,
        plugin_version: m.plugin_version.to_string(),
        tables,
    })
}

fn column_type(t: plugin_api::ColumnType) -> ColumnType {
    match t {
        plugin_api::ColumnType::Text => ColumnType::Text,
        plugin_api::ColumnType::BigInt => ColumnType::BigInt,
        plugin_api::ColumnType::Int => ColumnType::Int,
        plugin_api::ColumnType::Double => ColumnType::Double,
        plugin_api::ColumnType::Boolean => ColumnType::Boolean,
        plugin_api::ColumnType::Timestamp => ColumnType::Timestamp,
        plugin_api::ColumnType::Blob => ColumnType::Blob,
    }
}

/// The `(table, column)` pairs of `old` tables that `new` no longer declares.
pub fn dropped_columns(old: &[TableSchema], new: &[TableSchema]) -> Vec<(String, String)> {
    let mut dropped = Vec::new();
    for table in old {
        let Some(next) = new.iter().find(|t| t.name == table.name) else {
            continue;
        };
        for column in &table.columns {
            if !next.columns.iter().any(|c| c.name == column.name) {
                dropped.push((table.name.clone(), column.name.clone()));
            }
        }
    }
    dropped
}
