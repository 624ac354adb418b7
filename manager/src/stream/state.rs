//! Which stream instances should run, per tenant: kept in the platform's state folder
//! (`stream-instances.json`, written atomically), so the instances running before a restart
//! run again after it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::write_durably;
use crate::tenants::TenantId;

const FILE: &str = "stream-instances.json";

/// The instances that should run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct DesiredInstances {
    /// Instance ids per tenant.
    tenants: BTreeMap<TenantId, Vec<String>>,
    /// The number of the next instance id of each tenant (ids are never reused).
    next: BTreeMap<TenantId, u64>,
}

impl DesiredInstances {
    /// The recorded state, or none (a new platform, or an unreadable file, which is logged).
    pub(super) fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::error!(
                    "stream: {} is unreadable ({e}); starting from each tenant's minimum",
                    path.display()
                );
                DesiredInstances::default()
            }),
            Err(_) => DesiredInstances::default(),
        }
    }

    /// Writes it durably.
    pub(super) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_durably(&dir.join(FILE), &bytes)
    }

    /// The tenant's instances, if anything was chosen for it.
    pub(super) fn instances(&self, tenant: &TenantId) -> Option<&[String]> {
        self.tenants.get(tenant).map(Vec::as_slice)
    }

    /// Tenants with a choice.
    pub(super) fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.tenants.keys()
    }

    /// Every instance that should run.
    pub(super) fn all(&self) -> impl Iterator<Item = (TenantId, String)> + '_ {
        self.tenants
            .iter()
            .flat_map(|(tenant, ids)| ids.iter().map(move |id| (tenant.clone(), id.clone())))
    }

    /// One more instance; returns its id.
    pub(super) fn add(&mut self, tenant: &TenantId) -> String {
        let next = self.next.entry(tenant.clone()).or_insert(1);
        let id = format!("i{next}");
        *next += 1;
        self.tenants.entry(tenant.clone()).or_default().push(id.clone());
        id
    }

    /// Removes an instance; false if there was none of that id.
    pub(super) fn remove(&mut self, tenant: &TenantId, id: &str) -> bool {
        let Some(ids) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let before = ids.len();
        ids.retain(|i| i != id);
        ids.len() < before
    }

    /// Makes the tenant's choice exactly `count` instances (adding or removing the newest).
    pub(super) fn set_count(&mut self, tenant: &TenantId, count: u32) {
        self.tenants.entry(tenant.clone()).or_default();
        while self.tenants[tenant].len() < count as usize {
            self.add(tenant);
        }
        if let Some(ids) = self.tenants.get_mut(tenant) {
            ids.truncate(count as usize);
        }
    }

    /// Forgets a removed tenant.
    pub(super) fn forget(&mut self, tenant: &TenantId) {
        self.tenants.remove(tenant);
        self.next.remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_the_state_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let tenant: TenantId = "client1".parse().unwrap();
        let mut desired = DesiredInstances::default();
        desired.set_count(&tenant, 2);
        assert_eq!(desired.instances(&tenant).unwrap(), ["i1", "i2"]);
        assert!(desired.remove(&tenant, "i1"));
        assert!(!desired.remove(&tenant, "i1"));
        assert_eq!(desired.add(&tenant), "i3");
        desired.save(dir.path()).unwrap();
        let loaded = DesiredInstances::load(dir.path());
        assert_eq!(loaded.instances(&tenant).unwrap(), ["i2", "i3"]);
        let mut loaded = loaded;
        assert_eq!(loaded.add(&tenant), "i4");
        loaded.set_count(&tenant, 0);
        assert_eq!(loaded.instances(&tenant).unwrap(), Vec::<String>::new().as_slice());
    }
}
