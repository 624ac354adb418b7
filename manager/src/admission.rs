//! admission: a new plugin version takes work only once its tables fit its tenant's storage.
//! New tables are created and nullable columns added ([`TableSchema::evolve_to`]); a change that
//! cannot be applied (another type, another key, a new required column) refuses the version,
//! and so does leaving out a column that the version in service declared while the column
//! still holds data. A refused version never changes anything: every table is checked before
//! any is changed. The plugin host asks ([`Admission`]); `mysimbdp plugin check --root` shows
//! the same plan without applying it ([`plan`]).

use std::sync::Arc;

use crate::coredms::{CoreDms, StoreError, StoreErrorKind, TableChange, TableSchema, TenantStorage, TenantStore};
use crate::plugin_host::{Admission, Refusal};
use crate::tenants::TenantId;
use crate::tenants::watch::TenantsHandle;

/// The admission of the running platform: checks and applies on its storage, from the plugin
/// host's thread, on the platform's runtime.
pub struct StorageAdmission {
    dms: Arc<dyn CoreDms>,
    tenants: TenantsHandle,
    runtime: tokio::runtime::Handle,
}

impl StorageAdmission {
    /// Admits against `dms`, with the tenants' storage settings from `tenants`.
    pub fn new(dms: Arc<dyn CoreDms>, tenants: TenantsHandle, runtime: tokio::runtime::Handle) -> Self {
        StorageAdmission { dms, tenants, runtime }
    }
}

impl Admission for StorageAdmission {
    fn admit(&self, tenant: &TenantId, tables: &[TableSchema], dropped: &[(String, String)]) -> Result<(), Refusal> {
        let Some(config) = self.tenants.current().get(tenant).cloned() else {
            return Err(Refusal::Unavailable(format!("tenant {tenant} is not configured")));
        };
        self.runtime.block_on(async {
            let store = self
                .dms
                .open_tenant(&TenantStorage::of(tenant, &config))
                .await
                .map_err(refusal)?;
            plan(store.as_ref(), tables, dropped).await?;
            for table in tables {
                store.ensure_table(table).await.map_err(refusal)?;
            }
            Ok(())
        })
    }
}

/// What declaring `tables` would do to `store`, table by table, or why it cannot be done.
/// `dropped` are the `(table, column)` pairs the version in service declared and the new one
/// does not.
pub async fn plan(
    store: &dyn TenantStore,
    tables: &[TableSchema],
    dropped: &[(String, String)],
) -> Result<Vec<(String, TableChange)>, Refusal> {
    for (table, column) in dropped {
        if store.column_has_data(table, column).await.map_err(refusal)? {
            return Err(Refusal::Refused(format!(
                "table {table}: column {column} is not declared by this version but holds data \
                 (declare it again, nullable, to keep it)"
            )));
        }
    }
    let mut changes = Vec::with_capacity(tables.len());
    for table in tables {
        changes.push((table.name.clone(), store.check_table(table).await.map_err(refusal)?));
    }
    Ok(changes)
}

/// A storage error as a refusal: transient ones may pass later.
fn refusal(error: StoreError) -> Refusal {
    match error.kind {
        StoreErrorKind::Unavailable | StoreErrorKind::Timeout => Refusal::Unavailable(error.message),
        _ => Refusal::Refused(error.message),
    }
}
