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

    /// The next group to start (it counts as one running, like a file): the next file as
    /// [`next_file`](Self::next_file) picks it, and if `groupable` takes it, the tenant's other
    /// queued files of its type that `groupable` takes, in arrival order, up to `max_files`.
    pub fn next_group(&mut self, max_files: usize, groupable: impl Fn(&StagedFile) -> bool) -> Option<Vec<StagedFile>> {
        let first = self.next_file()?;
        let tenant = first.tenant.clone();
        let mut group = vec![first];
        if max_files <= 1 || !groupable(&group[0]) {
            return Some(group);
        }
        let Some(queue) = self.queues.get_mut(&tenant) else {
            return Some(group);
        };
        // Looking at a bounded stretch of the queue keeps a long queue cheap.
        let (mut at, mut looked) = (0, 0);
        while at < queue.len() && group.len() < max_files && looked < max_files * 4 {
            looked += 1;
            if queue[at].file_type == group[0].file_type && groupable(&queue[at]) {
                group.extend(queue.remove(at));
            } else {
                at += 1;
            }
        }
        if queue.is_empty() {
            self.queues.remove(&tenant);
        }
        Some(group)
    }

    /// A file (or group) of `tenant` finished.
    pub fn done(&mut self, tenant: &TenantId) {
        if let Some(n) = self.running.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(tenant);
            }
            self.running_total = self.running_total.saturating_sub(1);
        }
    }

    /// Files of `tenant` waiting for a turn.
    pub fn queued(&self, tenant: &TenantId) -> usize {
        self.queues.get(tenant).map_or(0, VecDeque::len)
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
            size: 0,
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

    fn typed(tenant: &str, id: u64, file_type: &str) -> StagedFile {
        StagedFile {
            file_type: file_type.parse().unwrap(),
            ..file(tenant, id)
        }
    }

    #[test]
    fn a_group_takes_the_tenants_groupable_files_of_one_type_and_counts_as_one() {
        let mut queue = FairQueue::new(10, 1);
        for (id, file_type) in [(1, "csv"), (2, "json"), (3, "csv"), (4, "csv"), (5, "csv")] {
            queue.push(typed("a", id, file_type));
        }
        queue.push(file("b", 100));
        let big = |f: &StagedFile| f.id.0 == 4;
        let ids = |g: Vec<StagedFile>| g.into_iter().map(|f| f.id.0).collect::<Vec<_>>();
        assert_eq!(ids(queue.next_group(3, |f| !big(f)).unwrap()), [1, 3, 5]);
        assert_eq!(queue.running(), 1);
        assert_eq!(ids(queue.next_group(3, |f| !big(f)).unwrap()), [100], "b's turn");
        assert!(queue.next_group(3, |f| !big(f)).is_none(), "a has one group running");
        queue.done(&"a".parse().unwrap());
        assert_eq!(ids(queue.next_group(3, |f| !big(f)).unwrap()), [2]);
        queue.done(&"a".parse().unwrap());
        assert_eq!(
            ids(queue.next_group(3, |f| !big(f)).unwrap()),
            [4],
            "a big file goes alone"
        );
    }
}
