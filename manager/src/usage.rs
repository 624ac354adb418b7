//! usage: what each tenant's data occupies in coredms, and the storage quota
//! (`max_memory_size`) checked against it, for uploads and messages alike.
//!
//! The figure is measured by the backend ([`TenantStore::stored_bytes`]): rows re-written
//! with the same keys add nothing, so a re-ingest never trips the quota. It is measured at
//! start (in the background), before a tenant's first quota check if not known yet, and again
//! after each change ([`UsageLedger::changed`]): one measurement at a time per tenant, the
//! changes during one folded into the next, and the next one not before nine times the last
//! one's duration has passed, so that measuring (a count of every table on Cassandra) takes at
//! most a tenth of the time however busy the tenant is.
//!
//! The quota is a limit on what is stored: a request is refused (507) while the tenant's data
//! occupies its quota or more. A file accepted below the quota is ingested whole, so usage can
//! pass the quota by what was in flight when it was reached (at most `max_files_number` files).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::coredms::{CoreDms, StoreError, TenantStorage};
use crate::tenants::TenantId;

/// The longest pause between two measurements of a busy tenant.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// A tenant's usage as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    /// What the tenant's data occupied at the last measurement, in bytes.
    pub storage_used_bytes: u64,
    /// When that measurement was made (seconds since the epoch).
    pub storage_measured_at: f64,
}

/// Why a request is refused for the quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant} stores {used} bytes, its quota is {quota}")]
pub struct OverQuota {
    /// The tenant.
    pub tenant: TenantId,
    /// Bytes stored at the last measurement.
    pub used: u64,
    /// The quota.
    pub quota: u64,
}

#[derive(Default)]
struct Entry {
    usage: Option<Usage>,
    /// A measurement task is running for this tenant.
    measuring: bool,
    /// Data changed since the running measurement began.
    stale: bool,
}

/// Every tenant's usage.
pub struct UsageLedger {
    dms: Arc<dyn CoreDms>,
    tenants: Mutex<HashMap<TenantId, Entry>>,
}

impl UsageLedger {
    /// A ledger measuring through `dms`.
    pub fn new(dms: Arc<dyn CoreDms>) -> Arc<Self> {
        Arc::new(UsageLedger {
            dms,
            tenants: Mutex::default(),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Entry>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last measurement, if there was one.
    pub fn known(&self, tenant: &TenantId) -> Option<Usage> {
        self.entries().get(tenant).and_then(|e| e.usage)
    }

    /// Refuses while the tenant's data occupies `quota` bytes or more. Measures first if the
    /// tenant was never measured.
    pub async fn check_quota(&self, storage: &TenantStorage, quota: u64) -> Result<Result<(), OverQuota>, StoreError> {
        let used = match self.known(&storage.tenant) {
            Some(usage) => usage.storage_used_bytes,
            None => self.measure(storage).await?.storage_used_bytes,
        };
        Ok(if used >= quota {
            Err(OverQuota {
                tenant: storage.tenant.clone(),
                used,
                quota,
            })
        } else {
            Ok(())
        })
    }

    /// The tenant's data changed (a file or a batch was stored): measure again soon.
    pub fn changed(self: &Arc<Self>, storage: TenantStorage) {
        {
            let mut entries = self.entries();
            let entry = entries.entry(storage.tenant.clone()).or_default();
            if entry.measuring {
                entry.stale = true;
                return;
            }
            entry.measuring = true;
        }
        let ledger = Arc::clone(self);
        tokio::spawn(async move { ledger.measure_while_stale(storage).await });
    }

    /// Measures each tenant in the background (at start).
    pub fn measure_all(self: &Arc<Self>, tenants: impl IntoIterator<Item = TenantStorage>) {
        for storage in tenants {
            self.changed(storage);
        }
    }

    async fn measure_while_stale(&self, storage: TenantStorage) {
        loop {
            let started = Instant::now();
            if let Err(e) = self.measure(&storage).await {
                log::warn!("tenant={} measuring its storage failed: {e}", storage.tenant);
            }
            let pause = started.elapsed().saturating_mul(9).min(MAX_PAUSE);
            {
                let mut entries = self.entries();
                let entry = entries.entry(storage.tenant.clone()).or_default();
                if !entry.stale {
                    entry.measuring = false;
                    return;
                }
                entry.stale = false;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Measures now and records the figure.
    async fn measure(&self, storage: &TenantStorage) -> Result<Usage, StoreError> {
        let started = Instant::now();
        let bytes = self.dms.open_tenant(storage).await?.stored_bytes().await?;
        let usage = Usage {
            storage_used_bytes: bytes,
            storage_measured_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        self.entries().entry(storage.tenant.clone()).or_default().usage = Some(usage);
        log::debug!(
            "tenant={} storage_used_bytes={bytes} ms={}",
            storage.tenant,
            started.elapsed().as_millis()
        );
        Ok(usage)
    }
}
