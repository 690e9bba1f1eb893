//! Sets of resource names a proxy subscribes to (EDS cluster names, RDS route names), shared
//! between proxies.
//!
//! Ten thousand simulated proxies mostly hold the same thousand names. Each proxy keeps only an
//! `Arc` to an interned [`NameSet`]; sets are keyed by an order-independent hash of their
//! names ([`SetKey`]), which a proxy can compute while scanning a response (SotW servers may
//! list resources in any order) and update incrementally (Delta adds and removes names), so an
//! unchanged set costs no allocation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::request;

/// An order-independent digest of a set of names: the count and the wrapping sum of their
/// 64-bit hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetKey {
    sum: u64,
    len: usize,
}

impl SetKey {
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut key = Self::default();
        for name in names {
            key.add(name);
        }
        key
    }

    pub fn add(&mut self, name: &str) {
        self.add_hash(Self::hash(name));
    }

    /// Adds the name whose [`SetKey::hash`] is `hash`.
    pub fn add_hash(&mut self, hash: u64) {
        self.sum = self.sum.wrapping_add(hash);
        self.len += 1;
    }

    pub fn remove(&mut self, name: &str) {
        self.sum = self.sum.wrapping_sub(Self::hash(name));
        self.len = self.len.saturating_sub(1);
    }

    /// The hash a name contributes to a key.
    pub fn hash(name: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(name.as_bytes())
    }
}

/// A sorted set of names with its request encoding, shared by every proxy that holds it.
#[derive(Debug)]
pub struct NameSet {
    names: Box<[Box<str>]>,
    encoded: Bytes,
    key: SetKey,
}

impl NameSet {
    fn new(mut names: Vec<Box<str>>) -> Self {
        names.sort_unstable();
        names.dedup();
        let key = SetKey::of(names.iter().map(|n| &**n));
        let encoded = request::encode_names(names.iter().map(|n| &**n));
        Self {
            names: names.into_boxed_slice(),
            encoded,
            key,
        }
    }

    pub fn key(&self) -> SetKey {
        self.key
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The position of `name` in the sorted set.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| (**n).cmp(name)).ok()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index(name).is_some()
    }

    /// The names as a repeated field 3, for SotW `resource_names` or Delta subscribe.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }
}

/// All distinct sets seen in a run.
#[derive(Debug, Default)]
pub struct Interner {
    sets: Mutex<HashMap<SetKey, Arc<NameSet>>>,
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The empty set.
    pub fn empty(&self) -> Arc<NameSet> {
        self.get_or_build(SetKey::default(), Vec::new)
    }

    /// The set with `key`, built by `names` when no proxy has held it yet.
    pub fn get_or_build(&self, key: SetKey, names: impl FnOnce() -> Vec<Box<str>>) -> Arc<NameSet> {
        if let Some(set) = self.lock().get(&key) {
            return set.clone();
        }
        // Built outside the lock: a few proxies may build the same set at once; one wins.
        let set = Arc::new(NameSet::new(names()));
        self.lock().entry(set.key()).or_insert(set).clone()
    }

    /// How many distinct sets exist.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SetKey, Arc<NameSet>>> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which members of a set have been received, while a proxy waits for all of them.
#[derive(Debug, Clone)]
pub struct Received {
    bits: Vec<u64>,
    count: usize,
    len: usize,
}

impl Received {
    pub fn new(len: usize) -> Self {
        Self {
            bits: vec![0; len.div_ceil(64)],
            count: 0,
            len,
        }
    }

    /// Marks member `index`; out-of-range indexes are ignored.
    pub fn mark(&mut self, index: usize) {
        let Some(word) = self.bits.get_mut(index / 64) else {
            return;
        };
        let bit = 1u64 << (index % 64);
        if *word & bit == 0 && index < self.len {
            *word |= bit;
            self.count += 1;
        }
    }

    pub fn complete(&self) -> bool {
        self.count == self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(names: &[&str]) -> Vec<Box<str>> {
        names.iter().map(|n| Box::from(*n)).collect()
    }

    #[test]
    fn key_is_order_independent_and_incremental() {
        let a = SetKey::of(["x", "y", "z"]);
        assert_eq!(a, SetKey::of(["z", "x", "y"]));
        let mut b = SetKey::of(["x", "y"]);
        assert_ne!(a, b);
        b.add("z");
        assert_eq!(a, b);
        b.remove("y");
        assert_eq!(b, SetKey::of(["x", "z"]));
    }

    #[test]
    fn interned_sets_are_shared() {
        let interner = Interner::new();
        let key = SetKey::of(["b", "a"]);
        let one = interner.get_or_build(key, || boxed(&["b", "a"]));
        let two = interner.get_or_build(key, || unreachable!("already interned"));
        assert!(Arc::ptr_eq(&one, &two));
        assert_eq!(one.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(one.index("b"), Some(1));
        assert!(!one.contains("c"));
        assert_eq!(one.encoded(), &request::encode_names(["a", "b"]));
        assert!(interner.empty().is_empty());
        assert_eq!(interner.len(), 2);
    }

    #[test]
    fn received_counts_each_member_once() {
        let mut r = Received::new(65);
        for i in 0..65 {
            assert!(!r.complete());
            r.mark(i);
            r.mark(i);
        }
        r.mark(100);
        assert!(r.complete());
        assert!(Received::new(0).complete());
    }
}
