//! Generations: how a load knows that the row it read may predate a change.
//!
//! Every eviction bumps the generation of what it names; a flush bumps the
//! epoch of everything. A load stamps itself before it reads, and an entry
//! whose stamp no longer matches is never served, so a row read before a
//! revoke committed cannot outlive the revoke's eviction. Generations live
//! in a fixed table of counters indexed by a hash seeded per process:
//! memory stays bounded however many ids are evicted, and two names sharing
//! a counter only cost an extra reload.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::quality::RandomState;

/// Counters in the table (8 bytes each).
const SLOTS: usize = 8192;

/// What a load saw before it read: stale once either number moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    epoch: u64,
    generation: u64,
}

/// Which of the caches a name belongs to, so that a key id and an owner id
/// spelled alike hash apart.
#[derive(Clone, Copy, Hash)]
pub(super) enum Space {
    Key,
    Owner,
    /// Digest lookups of imported keys (one name for all of them).
    Imported,
}

pub(super) struct Generations {
    slots: Box<[AtomicU64]>,
    /// Bumped by a flush: every stamp taken before it is stale.
    epoch: AtomicU64,
    /// Seeded per process, so which names share a counter differs from
    /// replica to replica. foldhash, not SipHash: every Validate hashes two
    /// names here, and a shared counter costs only a reload, so a keyed
    /// PRF's strength buys nothing.
    hasher: RandomState,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            hasher: RandomState::default(),
        }
    }
}

impl Generations {
    pub(super) fn stamp(&self, space: Space, name: &(impl Hash + ?Sized)) -> Stamp {
        Stamp {
            epoch: self.epoch.load(Ordering::Acquire),
            generation: self.slot(space, name).load(Ordering::Acquire),
        }
    }

    /// Makes every stamp of `name` taken so far stale.
    pub(super) fn bump(&self, space: Space, name: &(impl Hash + ?Sized)) {
        self.slot(space, name).fetch_add(1, Ordering::AcqRel);
    }

    /// Makes every stamp taken so far stale.
    pub(super) fn bump_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn slot(&self, space: Space, name: &(impl Hash + ?Sized)) -> &AtomicU64 {
        let hash = self.hasher.hash_one((space, name));
        &self.slots[(hash % SLOTS as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_stales_that_name_and_a_flush_stales_every_name() {
        let generations = Generations::default();
        let key = generations.stamp(Space::Key, "a");
        let owner = generations.stamp(Space::Owner, "a");
        generations.bump(Space::Key, "a");
        assert_ne!(generations.stamp(Space::Key, "a"), key);

        let owner_after_key_bump = generations.stamp(Space::Owner, "a");
        generations.bump_all();
        assert_ne!(generations.stamp(Space::Owner, "a"), owner_after_key_bump);
        assert_ne!(generations.stamp(Space::Owner, "a"), owner);
    }

    #[test]
    fn a_bump_leaves_almost_every_other_name_fresh() {
        let generations = Generations::default();
        let names: Vec<String> = (0..1000).map(|i| format!("id{i}")).collect();
        let before: Vec<Stamp> = names
            .iter()
            .map(|n| generations.stamp(Space::Key, n.as_str()))
            .collect();
        generations.bump(Space::Key, "changed");
        let staled = names
            .iter()
            .zip(&before)
            .filter(|(n, stamp)| generations.stamp(Space::Key, n.as_str()) != **stamp)
            .count();
        // One slot in 8192: about 0.12 of 1000 names share it.
        assert!(staled < 10, "{staled} unrelated names went stale");
    }
}
