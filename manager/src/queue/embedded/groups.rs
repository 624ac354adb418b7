//! Consumer group membership of the embedded queue: which member of a group owns which
//! partitions. Membership lives in memory (the embedded queue serves one process); the
//! committed offsets it starts from live in the database.

use std::collections::HashMap;

/// The members of every group, by (topic id, group name).
#[derive(Debug, Default)]
pub(super) struct Groups {
    next_member: u64,
    groups: HashMap<(i64, String), Group>,
}

#[derive(Debug, Default)]
struct Group {
    /// Bumped on every join and leave: a member whose cached generation differs recomputes.
    generation: u64,
    /// Member ids in join order.
    members: Vec<u64>,
}

impl Groups {
    /// Adds a member to the group; returns its id.
    pub(super) fn join(&mut self, topic_id: i64, group: &str) -> u64 {
        self.next_member += 1;
        let member = self.next_member;
        let entry = self.groups.entry((topic_id, group.to_string())).or_default();
        entry.members.push(member);
        entry.generation += 1;
        member
    }

    /// Removes a member; its partitions go to the others.
    pub(super) fn leave(&mut self, topic_id: i64, group: &str, member: u64) {
        let key = (topic_id, group.to_string());
        if let Some(entry) = self.groups.get_mut(&key) {
            entry.members.retain(|m| *m != member);
            entry.generation += 1;
            if entry.members.is_empty() {
                self.groups.remove(&key);
            }
        }
    }

    /// The group's generation and the partitions of `member` (empty if it is not a member).
    pub(super) fn assignment(&self, topic_id: i64, group: &str, member: u64, partitions: u32) -> (u64, Vec<u32>) {
        let Some(entry) = self.groups.get(&(topic_id, group.to_string())) else {
            return (0, Vec::new());
        };
        let Some(index) = entry.members.iter().position(|m| *m == member) else {
            return (entry.generation, Vec::new());
        };
        (entry.generation, assign(partitions, entry.members.len(), index))
    }

    /// The group's current generation (0 when it has no members).
    pub(super) fn generation(&self, topic_id: i64, group: &str) -> u64 {
        self.groups
            .get(&(topic_id, group.to_string()))
            .map_or(0, |g| g.generation)
    }
}

/// Round-robin: member `index` of `members` owns the partitions `p` with `p % members == index`.
fn assign(partitions: u32, members: usize, index: usize) -> Vec<u32> {
    (0..partitions).filter(|p| *p as usize % members == index).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_a_group_get_disjoint_partitions_covering_all() {
        let mut groups = Groups::default();
        let a = groups.join(1, "g");
        assert_eq!(groups.assignment(1, "g", a, 4).1, vec![0, 1, 2, 3]);
        let b = groups.join(1, "g");
        let c = groups.join(1, "g");
        let mut all: Vec<u32> = [a, b, c]
            .iter()
            .flat_map(|m| groups.assignment(1, "g", *m, 4).1)
            .collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn leaving_hands_the_partitions_to_the_others_and_bumps_the_generation() {
        let mut groups = Groups::default();
        let a = groups.join(1, "g");
        let b = groups.join(1, "g");
        let (generation, _) = groups.assignment(1, "g", a, 4);
        groups.leave(1, "g", b);
        let (after, partitions) = groups.assignment(1, "g", a, 4);
        assert_ne!(generation, after);
        assert_eq!(partitions, vec![0, 1, 2, 3]);
        assert_eq!(groups.assignment(1, "g", b, 4).1, Vec::<u32>::new());
    }

    #[test]
    fn groups_and_topics_are_independent_and_extra_members_idle() {
        let mut groups = Groups::default();
        let a = groups.join(1, "g");
        let other_group = groups.join(1, "h");
        let other_topic = groups.join(2, "g");
        for (topic, group, member) in [(1, "g", a), (1, "h", other_group), (2, "g", other_topic)] {
            assert_eq!(groups.assignment(topic, group, member, 2).1, vec![0, 1]);
        }
        let b = groups.join(1, "g");
        let c = groups.join(1, "g");
        assert_eq!(groups.assignment(1, "g", a, 2).1, vec![0]);
        assert_eq!(groups.assignment(1, "g", b, 2).1, vec![1]);
        assert!(groups.assignment(1, "g", c, 2).1.is_empty());
    }
}
