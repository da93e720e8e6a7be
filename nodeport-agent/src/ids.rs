//! Stable ids of the reconciler: a backend id names one pod address and
//! target port, a service id one frontend. [`Ids`] maps identities to ids
//! both ways, so that a new id is found in logarithmic time whatever the
//! number of ids in use (a change at 50k Services allocates one id without
//! looking at the other half million).

use std::collections::BTreeMap;

/// Ids by identity `K`, and identities by id.
#[derive(Clone, Debug)]
pub struct Ids<K> {
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    /// Where the search for a free id continues (ids are not handed out
    /// again soon after they were freed: flow state may still name them).
    next: u32,
}

impl<K> Default for Ids<K> {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
            next: 1,
        }
    }
}

impl<K: Ord + Clone> Ids<K> {
    /// Ids found in the maps; the search for new ones starts above `max_seen`.
    #[must_use]
    pub fn adopted(ids: BTreeMap<K, u32>, max_seen: u32) -> Self {
        let by_id = ids.iter().map(|(k, id)| (*id, k.clone())).collect();
        Self {
            by_key: ids,
            by_id,
            next: max_seen.wrapping_add(1).max(1),
        }
    }

    #[must_use]
    pub fn get(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Whether `id` names an identity.
    #[must_use]
    pub fn holds(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The id of `key`, allocating one when it has none: the first id at or
    /// after the search position (skipping 0) that no identity holds and
    /// `taken` does not refuse.
    pub fn get_or_alloc(&mut self, key: &K, taken: impl Fn(u32) -> bool) -> u32 {
        if let Some(id) = self.get(key) {
            return id;
        }
        let id = loop {
            let id = self.next.max(1);
            self.next = id.wrapping_add(1);
            if !self.by_id.contains_key(&id) && !taken(id) {
                break id;
            }
        };
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        id
    }

    /// Forgets `key`'s id, if it is `id`.
    pub fn remove_if(&mut self, key: &K, id: u32) {
        if self.by_key.get(key) == Some(&id) {
            self.by_key.remove(key);
            self.by_id.remove(&id);
        }
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some(id) = self.by_key.remove(key) {
            self.by_id.remove(&id);
        }
    }

    /// Keeps the ids for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, u32) -> bool) {
        self.by_key.retain(|k, id| keep(k, *id));
        let by_key = &self.by_key;
        self.by_id.retain(|_, k| by_key.contains_key(k));
    }

    /// The search position (for a reconciler that starts over).
    #[must_use]
    pub fn next(&self) -> u32 {
        self.next
    }

    /// Moves the search position forward to at least `next`.
    pub fn advance_to(&mut self, next: u32) {
        self.next = self.next.max(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_fresh_and_never_zero() {
        let mut ids = Ids::<&str>::default();
        let a = ids.get_or_alloc(&"a", |_| false);
        assert_eq!(a, 1);
        assert_eq!(ids.get_or_alloc(&"a", |_| false), 1, "stable");
        // Ids the caller says are taken (e.g. still in a map) are skipped.
        let b = ids.get_or_alloc(&"b", |id| id == 2);
        assert_eq!(b, 3);
        ids.remove(&"a");
        assert!(!ids.holds(1));
        assert_eq!(
            ids.get_or_alloc(&"c", |_| false),
            4,
            "a freed id is not reused at once"
        );
        let mut wrapping = Ids::<&str>::adopted(BTreeMap::new(), u32::MAX);
        assert_eq!(wrapping.get_or_alloc(&"x", |_| false), 1, "0 is skipped");
        ids.retain(|k, _| *k == "b");
        assert_eq!(ids.get(&"b"), Some(3));
        assert!(ids.get(&"c").is_none() && !ids.holds(4));
    }
}
