//! `mysimbdp plugin check FILE.so [--root DIR]`: what a plugin file declares, whether this
//! platform loads it, and (given a platform's folder) what loading it there would do to the
//! tenant's tables: the same plan the running platform's admission applies.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use mysimbdp::admission;
use mysimbdp::config::PlatformConfig;
use mysimbdp::coredms::{TableChange, TenantStorage, WriteLimiter};
use mysimbdp::plugin_host::check::{CheckReport, check_file};
use mysimbdp::plugin_host::{PluginId, Refusal};
use mysimbdp::tenants::{CUSTOMER_INFORMATION_FILE, Tenants};

/// Checks `file` (as if named `deployed_as`); with `root`, also against that platform's
/// configuration and storage.
pub fn run(file: &Path, deployed_as: Option<&str>, root: Option<&Path>) -> anyhow::Result<CheckReport> {
    let binary = std::env::current_exe().context("finding the mysimbdp binary")?;
    let mut report = check_file(file, deployed_as, Some(&binary));
    if let (Some(root), Ok(()), Ok(id), Some(manifest)) = (root, &report.verdict, &report.id, &report.manifest) {
        let tables = manifest.tables.clone();
        let id = id.clone();
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(check_against(root, &id, &tables));
        match outcome {
            Ok(notes) => report.notes.extend(notes),
            Err(reason) => report.verdict = Err(reason),
        }
    }
    Ok(report)
}

/// What loading a plugin with `tables` in the platform at `root` would do, or why it would not.
async fn check_against(
    root: &Path,
    id: &PluginId,
    tables: &[mysimbdp::coredms::TableSchema],
) -> Result<Vec<String>, String> {
    let config =
        PlatformConfig::load(&mysimbdp::platform::default_config_path(root), false).map_err(|e| e.to_string())?;
    let tenants = Tenants::load(&root.join(CUSTOMER_INFORMATION_FILE)).map_err(|e| e.to_string())?;
    let Some(tenant) = tenants.get(&id.tenant) else {
        return Err(format!(
            "tenant {} is not in {}: the platform there would not load it",
            id.tenant,
            root.join(CUSTOMER_INFORMATION_FILE).display()
        ));
    };
    if let Some(file_type) = &id.file_type
        && !tenant.allows(file_type)
    {
        return Err(format!("tenant {} may not upload {file_type} files", id.tenant));
    }
    // The version in service there: what the new one would replace.
    let deployed = root.join("plugins").join(id.file_name());
    let dropped = if deployed.is_file() {
        check_file(
            &deployed,
            None,
            Some(&std::env::current_exe().map_err(|e| e.to_string())?),
        )
        .manifest
        .map(|m| mysimbdp::plugin_host::dropped_columns(&m.tables, tables))
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let limiter = Arc::new(WriteLimiter::new(1, 1));
    let dms = mysimbdp::platform::open_coredms(&config, &config.data_dir_in(root), limiter)
        .await
        .map_err(|e| format!("cannot reach the platform's storage: {e:#}"))?;
    let mut notes = vec![format!(
        "storage:     tenant {} on the {} backend of {}",
        id.tenant,
        dms.backend(),
        root.display()
    )];
    let store = dms
        .open_existing(&TenantStorage::of(&id.tenant, tenant))
        .await
        .map_err(|e| format!("cannot open the tenant's storage: {e}"))?;
    let Some(store) = store else {
        notes.extend(tables.iter().map(|t| format!("table {}: created at load", t.name)));
        return Ok(notes);
    };
    match admission::plan(store.as_ref(), tables, &dropped).await {
        Ok(changes) => {
            for (table, change) in changes {
                notes.push(match change {
                    TableChange::Create => format!("table {table}: created at load"),
                    TableChange::Unchanged => format!("table {table}: unchanged"),
                    TableChange::AddColumns(columns) => format!(
                        "table {table}: columns added at load: {}",
                        columns
                            .iter()
                            .map(|c| format!("{} {}", c.name, c.column_type.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            Ok(notes)
        }
        Err(Refusal::Refused(reason)) => Err(format!("its tables cannot be applied there: {reason}")),
        Err(Refusal::Unavailable(reason)) => Err(format!("the platform's storage cannot be checked now: {reason}")),
    }
}
