//! A map for the few entries the desired state's inner indexes hold (the
//! Services an endpoint serves, the frontends that select a backend: one or
//! two each): a sorted vector. A `BTreeMap` allocates a node of eleven
//! slots for its first entry, which at half a million backends is most of
//! the agent's memory.

/// A small map, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    /// Room for one more entry: exactly one more up to four entries (most
    /// of these maps hold one or two, and a vector's first growth would
    /// make room for four), the vector's own growth after that.
    fn make_room(&mut self) {
        if self.entries.len() == self.entries.capacity() && self.entries.len() < 4 {
            self.entries.reserve_exact(1);
        }
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// Sets `key` to `value`, returning the old value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.make_room();
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, inserting `V::default()` first when it has none.
    pub fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.make_room();
                self.entries.insert(i, (key, V::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        let (_, v) = self.entries.remove(i);
        if self.entries.is_empty() {
            self.entries.shrink_to_fit();
        }
        Some(v)
    }

    #[must_use]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry with the smallest key.
    #[must_use]
    pub fn first(&self) -> Option<(&K, &V)> {
        self.entries.first().map(|(k, v)| (k, v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Self::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m.entries.shrink_to_fit();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_entries_sorted_and_unique() {
        let mut m = SmallMap::default();
        assert_eq!(m.insert(3, 'c'), None);
        assert_eq!(m.insert(1, 'a'), None);
        assert_eq!(m.insert(3, 'C'), Some('c'));
        *m.entry_or_default(2) = 'b';
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(m.get(&3), Some(&'C'));
        assert_eq!(m.first(), Some((&1, &'a')));
        assert_eq!(m.remove(&1), Some('a'));
        assert_eq!(m.remove(&1), None);
        assert_eq!(m.len(), 2);
        let n: SmallMap<i32, char> = [(5, 'e'), (4, 'd')].into_iter().collect();
        assert_eq!(n.values().copied().collect::<String>(), "de");
    }
}
