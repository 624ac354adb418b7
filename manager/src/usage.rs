//! usage: what each tenant's data occupies in coredms, and the storage quota
//! (`max_memory_size`) checked against it, for uploads and messages alike.
//!
//! The figure is measured by the backend ([`TenantStore::stored_bytes`]): rows re-written
//! with the same keys add nothing, so a re-ingest never trips the quota. Measuring can cost as
//! much as reading the tenant's data (a count of every table on Cassandra), so it is done when
//! the figure matters ([`UsageConfig`]): at start (in the background), before a tenant's first
//! quota check if not known yet, after each change ([`UsageLedger::changed`]) of a tenant that
//! may be near its quota (its last figure plus the bytes written since reach
//! `near_quota_ratio` of it), and otherwise at least every `max_age_seconds` while its data
//! changes. One measurement at a time per tenant, the changes during one folded into the next,
//! and the next one not before nine times the last one's duration has passed, so that measuring
//! takes at most a tenth of the time however busy the tenant is.
//!
//! The quota is a limit on what is stored: a request is refused (507) while the tenant's data
//! occupies its quota or more. A file accepted below the quota is ingested whole, so usage can
//! pass the quota by what was in flight when it was reached (at most `max_files_number` files).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::coredms::{CoreDms, StoreError, TenantStorage};
use crate::tenants::TenantId;
use crate::tenants::watch::TenantsHandle;

/// When tenants' usage is measured (the `[usage]` section of the platform configuration).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// A tenant whose last measured usage plus the bytes written since reach this fraction of
    /// its quota is measured again after every change. Default 0.8.
    pub near_quota_ratio: f64,
    /// Any other tenant whose data changed is measured again this many seconds after its last
    /// measurement at the latest; 0 measures every tenant after every change. Default 300.
    pub max_age_seconds: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            near_quota_ratio: 0.8,
            max_age_seconds: 300,
        }
    }
}

impl UsageConfig {
    /// Whether a tenant must be measured now: `used` bytes at its last measurement, `age` ago,
    /// `written` bytes written since, `quota` its quota (if it is still configured).
    fn due(&self, used: u64, age: Duration, written: u64, quota: Option<u64>) -> bool {
        self.max_age_seconds == 0
            || age >= Duration::from_secs(self.max_age_seconds)
            || quota.is_some_and(|q| used.saturating_add(written) as f64 >= q as f64 * self.near_quota_ratio)
    }
}

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
    /// The last measurement, and when it began.
    last: Option<(Usage, Instant)>,
    /// Accounting bytes written since the last measurement began.
    written_since: u64,
    /// A measurement task is running for this tenant.
    measuring: bool,
    /// Data changed since the running measurement began.
    stale: bool,
    /// A measurement is scheduled for when the last one is `max_age_seconds` old.
    scheduled: bool,
}

/// Every tenant's usage.
pub struct UsageLedger {
    dms: Arc<dyn CoreDms>,
    quotas: TenantsHandle,
    config: UsageConfig,
    tenants: Mutex<HashMap<TenantId, Entry>>,
}

impl UsageLedger {
    /// A ledger measuring through `dms`, the quotas from `quotas`, when `config` says.
    pub fn new(dms: Arc<dyn CoreDms>, quotas: TenantsHandle, config: UsageConfig) -> Arc<Self> {
        Arc::new(UsageLedger {
            dms,
            quotas,
            config,
            tenants: Mutex::default(),
        })
    }

    /// Whether the tenant of `entry` must be measured now.
    fn due(&self, tenant: &TenantId, entry: &Entry) -> bool {
        let Some((usage, measured)) = entry.last else {
            return true;
        };
        let quota = self.quotas.current().get(tenant).map(|t| t.max_memory_size);
        self.config
            .due(usage.storage_used_bytes, measured.elapsed(), entry.written_since, quota)
    }

    /// Measures the tenant when its last measurement is `max_age_seconds` old (once).
    fn schedule(self: &Arc<Self>, storage: TenantStorage, entry: &mut Entry) {
        if entry.scheduled {
            return;
        }
        entry.scheduled = true;
        let at = entry.last.map_or(Duration::ZERO, |(_, m)| {
            Duration::from_secs(self.config.max_age_seconds).saturating_sub(m.elapsed())
        });
        let ledger = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            ledger.entries().entry(storage.tenant.clone()).or_default().scheduled = false;
            ledger.changed(storage, 0);
        });
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Entry>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last measurement, if there was one.
    pub fn known(&self, tenant: &TenantId) -> Option<Usage> {
        self.entries().get(tenant).and_then(|e| e.last).map(|(usage, _)| usage)
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

    /// The tenant's data changed (a file or a batch of `written` accounting bytes was stored):
    /// measure again now if the figure matters, or later.
    pub fn changed(self: &Arc<Self>, storage: TenantStorage, written: u64) {
        {
            let mut entries = self.entries();
            let entry = entries.entry(storage.tenant.clone()).or_default();
            entry.written_since = entry.written_since.saturating_add(written);
            if entry.measuring {
                entry.stale = true;
                return;
            }
            if !self.due(&storage.tenant, entry) {
                self.schedule(storage, entry);
                return;
            }
            entry.measuring = true;
        }
        tokio::spawn(Arc::clone(self).measure_while_stale(storage));
    }

    /// Measures each tenant in the background (at start).
    pub fn measure_all(self: &Arc<Self>, tenants: impl IntoIterator<Item = TenantStorage>) {
        for storage in tenants {
            self.changed(storage, 0);
        }
    }

    async fn measure_while_stale(self: Arc<Self>, storage: TenantStorage) {
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
                if !self.due(&storage.tenant, entry) {
                    entry.measuring = false;
                    self.schedule(storage, entry);
                    return;
                }
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Measures now and records the figure.
    async fn measure(&self, storage: &TenantStorage) -> Result<Usage, StoreError> {
        let started = Instant::now();
        let written_before =
            std::mem::take(&mut self.entries().entry(storage.tenant.clone()).or_default().written_since);
        let measured = async { self.dms.open_tenant(storage).await?.stored_bytes().await }.await;
        let bytes = match measured {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not measured: what was written still counts towards the next decision.
                let mut entries = self.entries();
                let entry = entries.entry(storage.tenant.clone()).or_default();
                entry.written_since = entry.written_since.saturating_add(written_before);
                return Err(e);
            }
        };
        let usage = Usage {
            storage_used_bytes: bytes,
            storage_measured_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        self.entries().entry(storage.tenant.clone()).or_default().last = Some((usage, started));
        log::debug!(
            "tenant={} storage_used_bytes={bytes} ms={}",
            storage.tenant,
            started.elapsed().as_millis()
        );
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_measured_after_each_change_only_near_its_quota_or_when_its_figure_is_old() {
        let config = UsageConfig::default();
        let fresh = Duration::from_secs(10);
        let quota = Some(1000);
        assert!(!config.due(100, fresh, 100, quota), "far below the quota: later");
        assert!(config.due(700, fresh, 100, quota), "800 of 1000 written: now");
        assert!(
            config.due(900, fresh, 0, quota),
            "measured near the quota: after every change"
        );
        assert!(config.due(100, Duration::from_secs(300), 0, quota), "the figure is old");
        assert!(
            !config.due(100, fresh, 0, None),
            "a tenant without a quota: only when old"
        );
        let always = UsageConfig {
            max_age_seconds: 0,
            ..UsageConfig::default()
        };
        assert!(always.due(0, Duration::ZERO, 0, quota));
    }
}
