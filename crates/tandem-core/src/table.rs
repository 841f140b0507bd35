//! [`Table`]: a `BTreeMap` whose changes are journaled (so a refused command can be undone
//! without copying the whole map) and can keep a derived [`Indexer`] up to date.
//!
//! The cluster model applies every command inside a transaction: [`Table::begin`] opens a
//! journal that keeps the original of each record the command touches, [`Table::commit`]
//! drops it and [`Table::rollback`] puts the originals back. Either way the cost is that of the
//! records touched, never of the table's size, and the keys touched are collected for whoever
//! consumes them ([`Table::take_changed`]: the director, the data view).
//!
//! Reads go through `Deref` to the map. Writes go only through [`Table::get_mut`],
//! [`Table::insert`] and [`Table::remove`], so no change can bypass the journal or the index.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};

/// A derived index over a table's records, updated on every change.
pub trait Indexer<K, V>: Default + Clone + std::fmt::Debug {
    /// Adds what record `value` at `key` contributes.
    fn add(&mut self, key: &K, value: &V);
    /// Removes what record `value` at `key` contributes.
    fn remove(&mut self, key: &K, value: &V);
}

/// No index.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIndex;

impl<K, V> Indexer<K, V> for NoIndex {
    fn add(&mut self, _: &K, _: &V) {}
    fn remove(&mut self, _: &K, _: &V) {}
}

/// A digest of a table's records, kept as they change: the wrapping sum of a hash of each
/// (key, record). Two tables with equal records have equal digests, so comparing whole
/// states (the simulation does, at every index) costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordDigest(pub u64);

impl RecordDigest {
    /// The hash of one record. SipHash with fixed keys: the same on every run and node.
    pub fn of<K: Hash, V: Hash>(key: &K, value: &V) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        value.hash(&mut hasher);
        hasher.finish()
    }
}

impl<K: Hash, V: Hash> Indexer<K, V> for RecordDigest {
    fn add(&mut self, key: &K, value: &V) {
        self.0 = self.0.wrapping_add(Self::of(key, value));
    }
    fn remove(&mut self, key: &K, value: &V) {
        self.0 = self.0.wrapping_sub(Self::of(key, value));
    }
}

/// A journaled map with a derived index.
#[derive(Debug, Clone)]
pub struct Table<K: Ord + Clone, V: Clone, I: Indexer<K, V> = NoIndex> {
    map: BTreeMap<K, V>,
    /// While a transaction is open: the original of every key it touched (`None`: absent).
    journal: Option<BTreeMap<K, Option<V>>>,
    /// Keys changed by committed transactions since the last `take_changed`.
    changed: BTreeSet<K>,
    index: I,
}

impl<K: Ord + Clone, V: Clone, I: Indexer<K, V>> Default for Table<K, V, I> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            journal: None,
            changed: BTreeSet::new(),
            index: I::default(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq, I: Indexer<K, V>> PartialEq for Table<K, V, I> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord + Clone, V: Clone + Eq, I: Indexer<K, V>> Eq for Table<K, V, I> {}

impl<K: Ord + Clone, V: Clone, I: Indexer<K, V>> Deref for Table<K, V, I> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Ord + Clone, V: Clone, I: Indexer<K, V>> FromIterator<(K, V)> for Table<K, V, I> {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self::from(iter.into_iter().collect::<BTreeMap<K, V>>())
    }
}

impl<K: Ord + Clone, V: Clone, I: Indexer<K, V>> From<BTreeMap<K, V>> for Table<K, V, I> {
    fn from(map: BTreeMap<K, V>) -> Self {
        let mut index = I::default();
        for (key, value) in &map {
            index.add(key, value);
        }
        Self {
            map,
            journal: None,
            changed: BTreeSet::new(),
            index,
        }
    }
}

impl<'a, K: Ord + Clone, V: Clone, I: Indexer<K, V>> IntoIterator for &'a Table<K, V, I> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

/// A record being changed: its contribution to the index is taken out when the guard is
/// made and put back, as it is then, when the guard is dropped.
pub struct RecordMut<'a, K, V: 'a, I: Indexer<K, V>> {
    key: &'a K,
    value: &'a mut V,
    index: &'a mut I,
}

impl<K, V, I: Indexer<K, V>> Deref for RecordMut<'_, K, V, I> {
    type Target = V;

    fn deref(&self) -> &V {
        self.value
    }
}

impl<K, V, I: Indexer<K, V>> DerefMut for RecordMut<'_, K, V, I> {
    fn deref_mut(&mut self) -> &mut V {
        self.value
    }
}

impl<K, V, I: Indexer<K, V>> Drop for RecordMut<'_, K, V, I> {
    fn drop(&mut self) {
        self.index.add(self.key, self.value);
    }
}

impl<K: Ord + Clone, V: Clone, I: Indexer<K, V>> Table<K, V, I> {
    /// The derived index.
    pub fn index(&self) -> &I {
        &self.index
    }

    /// Opens a transaction. Architecture invariant: transactions do not nest.
    pub fn begin(&mut self) {
        assert!(self.journal.is_none(), "a transaction is already open");
        self.journal = Some(BTreeMap::new());
    }

    /// Keys touched by the open transaction, so far.
    pub fn touched(&self) -> impl Iterator<Item = &K> + '_ {
        self.journal.iter().flat_map(|journal| journal.keys())
    }

    /// The original (before the open transaction) of a key it touched: `Some(None)` when the
    /// key was absent, `None` when the transaction did not touch it.
    pub fn original(&self, key: &K) -> Option<Option<&V>> {
        self.journal.as_ref()?.get(key).map(Option::as_ref)
    }

    /// Keeps the open transaction's changes.
    pub fn commit(&mut self) {
        let journal = self.journal.take().expect("no transaction is open");
        self.changed.extend(journal.into_keys());
    }

    /// Undoes the open transaction's changes.
    pub fn rollback(&mut self) {
        let journal = self.journal.take().expect("no transaction is open");
        for (key, original) in journal {
            if let Some(current) = self.map.remove(&key) {
                self.index.remove(&key, &current);
            }
            if let Some(original) = original {
                self.index.add(&key, &original);
                self.map.insert(key, original);
            }
        }
    }

    /// Keys changed by committed transactions since the last `take_changed`.
    pub fn changed(&self) -> &BTreeSet<K> {
        &self.changed
    }

    /// Keys changed by committed transactions since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<K> {
        std::mem::take(&mut self.changed)
    }

    fn note(&mut self, key: &K) {
        if let Some(journal) = &mut self.journal {
            if !journal.contains_key(key) {
                journal.insert(key.clone(), self.map.get(key).cloned());
            }
        } else {
            self.changed.insert(key.clone());
        }
    }

    /// The record at `key`, to change.
    pub fn get_mut<'a>(&'a mut self, key: &'a K) -> Option<RecordMut<'a, K, V, I>> {
        if !self.map.contains_key(key) {
            return None;
        }
        self.note(key);
        let value = self.map.get_mut(key).expect("checked");
        self.index.remove(key, value);
        Some(RecordMut {
            key,
            value,
            index: &mut self.index,
        })
    }

    /// Inserts or replaces the record at `key`.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.note(&key);
        self.index.add(&key, &value);
        let old = self.map.insert(key.clone(), value);
        if let Some(old) = &old {
            self.index.remove(&key, old);
        }
        old
    }

    /// Removes the record at `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        if !self.map.contains_key(key) {
            return None;
        }
        self.note(key);
        let old = self.map.remove(key)?;
        self.index.remove(key, &old);
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts records per value, to see the index follow every change.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Counts(BTreeMap<u32, usize>);

    impl Indexer<&'static str, u32> for Counts {
        fn add(&mut self, _: &&'static str, value: &u32) {
            *self.0.entry(*value).or_default() += 1;
        }
        fn remove(&mut self, _: &&'static str, value: &u32) {
            let count = self.0.get_mut(value).expect("indexed");
            *count -= 1;
            if *count == 0 {
                self.0.remove(value);
            }
        }
    }

    fn table() -> Table<&'static str, u32, Counts> {
        [("a", 1), ("b", 1), ("c", 2)].into_iter().collect()
    }

    fn rebuilt(table: &Table<&'static str, u32, Counts>) -> Counts {
        Table::<&'static str, u32, Counts>::from(table.map.clone()).index
    }

    #[test]
    fn the_index_follows_every_kind_of_change() {
        let mut table = table();
        assert_eq!(table.index().0, BTreeMap::from([(1, 2), (2, 1)]));
        *table.get_mut(&"a").unwrap() = 2;
        table.insert("d", 3);
        table.insert("b", 3);
        table.remove(&"c");
        assert_eq!(table.index(), &rebuilt(&table));
        assert_eq!(table.index().0, BTreeMap::from([(2, 1), (3, 2)]));
    }

    #[test]
    fn a_rollback_restores_records_and_index_and_reports_nothing_changed() {
        let mut table = table();
        let before = table.map.clone();
        let index_before = table.index().clone();
        table.begin();
        *table.get_mut(&"a").unwrap() = 7;
        *table.get_mut(&"a").unwrap() = 8;
        table.insert("z", 9);
        table.remove(&"c");
        assert_eq!(
            table.touched().copied().collect::<Vec<_>>(),
            ["a", "c", "z"]
        );
        table.rollback();
        assert_eq!(table.map, before);
        assert_eq!(table.index(), &index_before);
        assert!(table.take_changed().is_empty());
    }

    #[test]
    fn a_commit_reports_the_keys_it_touched_once() {
        let mut table = table();
        table.begin();
        *table.get_mut(&"b").unwrap() = 5;
        table.remove(&"missing");
        table.commit();
        table.begin();
        table.insert("e", 1);
        table.commit();
        assert_eq!(table.take_changed(), BTreeSet::from(["b", "e"]));
        assert!(table.take_changed().is_empty());
        assert_eq!(table.index(), &rebuilt(&table));
    }

    #[test]
    #[should_panic(expected = "already open")]
    fn transactions_do_not_nest() {
        let mut table = table();
        table.begin();
        table.begin();
    }
}
