//! A table's namespaces: a dense list with an index and a one-entry cache of the last
//! namespace found, so that runs of accesses to one namespace (always, for `()`) cost one
//! comparison instead of a hash lookup.

use std::cell::Cell;
use std::hash::Hash;

use rustc_hash::FxHashMap;

use super::Slot;

/// The namespaces of a table: a dense list, an index, and the last namespace found, so
/// that runs of accesses to one namespace (always, for `()`) skip the namespace lookup.
pub(super) struct Spaces<N, K, V> {
    list: Vec<(N, Space<K, V>)>,
    index: FxHashMap<N, usize>,
    last: Cell<usize>,
    /// Emptied maps of dropped namespaces, for new ones: a window operator drops a namespace
    /// per slice and opens the next, and a reused map neither grows through every size again
    /// nor faults in fresh pages.
    spare: Vec<FxHashMap<K, Slot<V>>>,
}

/// Emptied namespace maps kept for reuse.
const SPARE_MAPS_MAX: usize = 4;

impl<N, K, V> Default for Spaces<N, K, V> {
    fn default() -> Self {
        Spaces {
            list: Vec::new(),
            index: FxHashMap::default(),
            last: Cell::new(usize::MAX),
            spare: Vec::new(),
        }
    }
}

impl<N: Eq + Hash + Clone, K, V> Spaces<N, K, V> {
    #[inline]
    pub(super) fn find(&self, ns: &N) -> Option<usize> {
        let l = self.last.get();
        if let Some((n, _)) = self.list.get(l) {
            if n == ns {
                return Some(l);
            }
        }
        let i = *self.index.get(ns)?;
        self.last.set(i);
        Some(i)
    }
    #[inline]
    pub(super) fn get(&self, ns: &N) -> Option<&Space<K, V>> {
        let i = self.find(ns)?;
        self.list.get(i).map(|e| &e.1)
    }
    #[inline]
    pub(super) fn get_mut(&mut self, ns: &N) -> Option<&mut Space<K, V>> {
        let i = self.find(ns)?;
        self.list.get_mut(i).map(|e| &mut e.1)
    }
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }
    /// The namespace at `i` of the dense list (`i < len()`).
    pub(super) fn at_mut(&mut self, i: usize) -> (&N, &mut Space<K, V>) {
        let (n, s) = &mut self.list[i];
        (n, s)
    }
    pub(super) fn contains_key(&self, ns: &N) -> bool {
        self.find(ns).is_some()
    }
    pub(super) fn insert(&mut self, ns: N, space: Space<K, V>) {
        match self.find(&ns) {
            Some(i) => self.list[i].1 = space,
            None => {
                self.index.insert(ns.clone(), self.list.len());
                self.list.push((ns, space));
            }
        }
    }
    pub(super) fn remove(&mut self, ns: &N) -> Option<Space<K, V>> {
        let i = self.index.remove(ns)?;
        let (_, space) = self.list.swap_remove(i);
        if let Some((moved, _)) = self.list.get(i) {
            self.index.insert(moved.clone(), i);
        }
        self.last.set(usize::MAX);
        Some(space)
    }
    pub(super) fn retain(&mut self, mut f: impl FnMut(&N, &Space<K, V>) -> bool) {
        self.list.retain(|(n, s)| f(n, s));
        self.index = self
            .list
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        self.last.set(usize::MAX);
    }
    pub(super) fn keys(&self) -> impl Iterator<Item = &N> {
        self.list.iter().map(|e| &e.0)
    }
    pub(super) fn values(&self) -> impl Iterator<Item = &Space<K, V>> {
        self.list.iter().map(|e| &e.1)
    }
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Space<K, V>> {
        self.list.iter_mut().map(|e| &mut e.1)
    }
    pub(super) fn consistent(&self) -> bool {
        self.index.len() == self.list.len()
            && self
                .list
                .iter()
                .enumerate()
                .all(|(i, (n, _))| self.index.get(n) == Some(&i))
    }
}

impl<N, K: Eq + Hash, V> Spaces<N, K, V> {
    /// An empty map for a new namespace: a spare one if any, else one with room for `hint`.
    pub(super) fn new_map(&mut self, hint: usize) -> FxHashMap<K, Slot<V>> {
        match self.spare.pop() {
            Some(mut map) => {
                map.reserve(hint);
                map
            }
            None => FxHashMap::with_capacity_and_hasher(hint, Default::default()),
        }
    }
    /// Keeps an emptied map for a later namespace.
    pub(super) fn recycle(&mut self, map: FxHashMap<K, Slot<V>>) {
        debug_assert!(map.is_empty());
        if self.spare.len() < SPARE_MAPS_MAX && map.capacity() > 0 {
            self.spare.push(map);
        }
    }
}

pub(super) struct Space<K, V> {
    pub(super) map: FxHashMap<K, Slot<V>>,
    /// Every entry of this namespace is resident.
    pub(super) complete: bool,
    /// Some entry of this namespace may be on disk.
    pub(super) persisted: bool,
    /// The clock's hand in this map: how many of its entries (in the map's order) the next
    /// eviction passes over before it looks at one (see `TableData::evict`).
    pub(super) hand: usize,
}
