//! Fair scheduling of staged files: round-robin over tenants with queued files, under a global
//! and a per-tenant limit of files ingesting at once. A tenant with a thousand files queued
//! gets one turn per round like a tenant with one.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::staging::StagedFile;
use crate::tenants::TenantId;

/// The queue of staged files.
#[derive(Debug)]
pub struct FairQueue {
    queues: BTreeMap<TenantId, VecDeque<StagedFile>>,
    running: HashMap<TenantId, usize>,
    running_total: usize,
    last_served: Option<TenantId>,
    max_total: usize,
    max_per_tenant: usize,
}

impl FairQueue {
    /// At most `max_total` files at once, `max_per_tenant` of one tenant.
    pub fn new(max_total: usize, max_per_tenant: usize) -> Self {
        FairQueue {
            queues: BTreeMap::new(),
            running: HashMap::new(),
            running_total: 0,
            last_served: None,
            max_total: max_total.max(1),
            max_per_tenant: max_per_tenant.max(1),
        }
    }

    /// Queues a file behind the tenant's others.
    pub fn push(&mut self, file: StagedFile) {
        self.queues.entry(file.tenant.clone()).or_default().push_back(file);
    }

    /// The next file to start, if a limit allows one; it counts as running until
    /// [`done`](Self::done).
    pub fn next_file(&mut self) -> Option<StagedFile> {
        if self.running_total >= self.max_total {
            return None;
        }
        let after: Vec<TenantId> = match &self.last_served {
            Some(last) => {
                let later = self
                    .queues
                    .range(last.clone()..)
                    .skip_while(|(t, _)| *t == last)
                    .map(|(t, _)| t.clone());
                let earlier = self.queues.range(..=last.clone()).map(|(t, _)| t.clone());
                later.chain(earlier).collect()
            }
            None => self.queues.keys().cloned().collect(),
        };
        let tenant = after
            .into_iter()
            .find(|t| self.running.get(t).copied().unwrap_or(0) < self.max_per_tenant)?;
        let queue = self.queues.get_mut(&tenant)?;
        let file = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&tenant);
        }
        *self.running.entry(tenant.clone()).or_default() += 1;
        self.running_total += 1;
        self.last_served = Some(tenant);
        Some(file)
    }

    /// A file of `tenant` finished.
    pub fn done(&mut self, tenant: &TenantId) {
        if let Some(n) = self.running.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(tenant);
            }
            self.running_total = self.running_total.saturating_sub(1);
        }
    }

    /// Files running.
    pub fn running(&self) -> usize {
        self.running_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileId;

    fn file(tenant: &str, id: u64) -> StagedFile {
        StagedFile {
            id: FileId(id),
            tenant: tenant.parse().unwrap(),
            file_type: "csv".parse().unwrap(),
            path: "x".into(),
        }
    }

    #[test]
    fn one_tenants_thousand_files_do_not_starve_anothers_one() {
        let mut queue = FairQueue::new(1, 1);
        for id in 0..1000 {
            queue.push(file("big", id));
        }
        let first = queue.next_file().unwrap();
        queue.push(file("small", 5000));
        queue.done(&first.tenant);
        assert_eq!(queue.next_file().unwrap().tenant.as_str(), "small");
    }

    #[test]
    fn limits_hold_globally_and_per_tenant() {
        let mut queue = FairQueue::new(3, 2);
        for id in 0..10 {
            queue.push(file("a", id));
            queue.push(file("b", 100 + id));
        }
        let started: Vec<String> = std::iter::from_fn(|| queue.next_file())
            .map(|f| f.tenant.to_string())
            .collect();
        assert_eq!(started, ["a", "b", "a"]);
        assert_eq!(queue.running(), 3);
        queue.done(&"a".parse().unwrap());
        assert_eq!(queue.next_file().unwrap().tenant.as_str(), "b");
        assert!(
            queue.next_file().is_none(),
            "b has 2 running, the global limit is reached"
        );
    }

    #[test]
    fn files_of_a_tenant_start_in_arrival_order() {
        let mut queue = FairQueue::new(10, 10);
        for id in [3, 1, 2] {
            queue.push(file("a", id));
        }
        let order: Vec<u64> = std::iter::from_fn(|| queue.next_file()).map(|f| f.id.0).collect();
        assert_eq!(order, [3, 1, 2]);
    }
}
