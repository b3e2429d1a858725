//! Keyed state for user functions (Flink's `ValueState`, `ListState`, `MapState`,
//! `ReducingState`, `AggregatingState`): typed handles, declared when the function opens,
//! always read and written for the *current key* — the key of the record or timer being
//! processed.
//!
//! The handles are small copyable ids into a [`KeyedState`] that the operator owns and scopes
//! to the current key before each call. The tables live in memory per worker, holding only the
//! worker's key groups; the state store issue moves them into the log-structured store behind
//! these same handles.

use std::any::{Any, TypeId};
use std::hash::Hash;
use std::marker::PhantomData;

use crate::FastMap;
use crate::key::Key;
use crate::keyed::AggregateFunction;

struct TableSlot {
    name: String,
    kind: TypeId,
    table: Box<dyn Any>,
}

/// The keyed state of one operator instance, scoped to its current key.
pub struct KeyedState<K> {
    current: Option<K>,
    tables: Vec<TableSlot>,
}

impl<K> Default for KeyedState<K> {
    fn default() -> Self {
        KeyedState {
            current: None,
            tables: Vec::new(),
        }
    }
}

impl<K: Key> KeyedState<K> {
    /// The key that state access is scoped to.
    ///
    /// # Panics
    /// Outside a call for a key (a programming error in the operator).
    pub fn current_key(&self) -> &K {
        self.current
            .as_ref()
            .unwrap_or_else(|| panic!("keyed state used outside a call for a key"))
    }

    /// Scopes access to `key` (for the operator).
    pub fn set_current_key(&mut self, key: K) {
        self.current = Some(key);
    }

    /// Ends the scope and returns its key (for the operator).
    pub fn take_current_key(&mut self) -> Option<K> {
        self.current.take()
    }

    fn register<S: 'static>(&mut self, name: &str, make: impl FnOnce() -> S) -> usize {
        let kind = TypeId::of::<S>();
        if let Some(i) = self.tables.iter().position(|t| t.name == name) {
            assert!(
                self.tables[i].kind == kind,
                "state '{name}' declared twice with different types"
            );
            return i;
        }
        self.tables.push(TableSlot {
            name: name.to_owned(),
            kind,
            table: Box::new(make()),
        });
        self.tables.len() - 1
    }

    fn table<S: 'static>(&self, id: usize) -> &FastMap<K, S> {
        self.tables[id]
            .table
            .downcast_ref()
            .unwrap_or_else(|| unreachable!("state handles are typed"))
    }

    /// The current key and one table, both borrowed.
    fn entry<S: 'static>(&mut self, id: usize) -> (&K, &mut FastMap<K, S>) {
        let key = self
            .current
            .as_ref()
            .unwrap_or_else(|| panic!("keyed state used outside a call for a key"));
        let table = self.tables[id]
            .table
            .downcast_mut()
            .unwrap_or_else(|| unreachable!("state handles are typed"));
        (key, table)
    }

    /// Declares (or finds) value state `name`.
    pub fn value_state<V: 'static>(&mut self, name: &str) -> ValueState<V> {
        let id = self.register(name, FastMap::<K, V>::default);
        ValueState {
            id,
            _v: PhantomData,
        }
    }

    /// Declares (or finds) list state `name`.
    pub fn list_state<V: 'static>(&mut self, name: &str) -> ListState<V> {
        let id = self.register(name, FastMap::<K, Vec<V>>::default);
        ListState {
            id,
            _v: PhantomData,
        }
    }

    /// Declares (or finds) map state `name`.
    pub fn map_state<UK, V>(&mut self, name: &str) -> MapState<UK, V>
    where
        UK: Hash + Eq + 'static,
        V: 'static,
    {
        let id = self.register(name, FastMap::<K, FastMap<UK, V>>::default);
        MapState {
            id,
            _v: PhantomData,
        }
    }

    /// Declares (or finds) reducing state `name`, folded with `f`.
    pub fn reducing_state<V: 'static, F>(&mut self, name: &str, f: F) -> ReducingState<V, F>
    where
        F: Fn(V, V) -> V,
    {
        let id = self.register(name, FastMap::<K, V>::default);
        ReducingState {
            id,
            f,
            _v: PhantomData,
        }
    }

    /// Declares (or finds) aggregating state `name`, with `agg`'s accumulator.
    pub fn aggregating_state<T, A>(&mut self, name: &str, agg: A) -> AggregatingState<T, A>
    where
        A: AggregateFunction<T>,
    {
        let id = self.register(name, FastMap::<K, A::Acc>::default);
        AggregatingState {
            id,
            agg,
            _t: PhantomData,
        }
    }
}

/// One value per key.
#[derive(Debug)]
pub struct ValueState<V> {
    id: usize,
    _v: PhantomData<fn() -> V>,
}

impl<V> Clone for ValueState<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for ValueState<V> {}

impl<V> Default for ValueState<V> {
    /// A handle not yet declared: using it panics. Declare it in `open`.
    fn default() -> Self {
        ValueState {
            id: usize::MAX,
            _v: PhantomData,
        }
    }
}

impl<V: 'static> ValueState<V> {
    /// The current key's value.
    pub fn value<'s, K: Key>(&self, state: &'s KeyedState<K>) -> Option<&'s V> {
        state.table::<V>(self.id).get(state.current_key())
    }
    /// The current key's value, mutably.
    pub fn value_mut<'s, K: Key>(&self, state: &'s mut KeyedState<K>) -> Option<&'s mut V> {
        let (key, table) = state.entry::<V>(self.id);
        table.get_mut(key)
    }
    /// Sets the current key's value.
    pub fn update<K: Key>(&self, state: &mut KeyedState<K>, value: V) {
        let (key, table) = state.entry::<V>(self.id);
        match table.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                table.insert(key.clone(), value);
            }
        }
    }
    /// Removes the current key's value.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Option<V> {
        let (key, table) = state.entry::<V>(self.id);
        table.remove(key)
    }
}

/// A list per key with cheap appends.
#[derive(Debug)]
pub struct ListState<V> {
    id: usize,
    _v: PhantomData<fn() -> V>,
}

impl<V> Clone for ListState<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for ListState<V> {}

impl<V> Default for ListState<V> {
    /// A handle not yet declared: using it panics. Declare it in `open`.
    fn default() -> Self {
        ListState {
            id: usize::MAX,
            _v: PhantomData,
        }
    }
}

impl<V: 'static> ListState<V> {
    /// The current key's list (empty if none).
    pub fn get<'s, K: Key>(&self, state: &'s KeyedState<K>) -> &'s [V] {
        state
            .table::<Vec<V>>(self.id)
            .get(state.current_key())
            .map_or(&[], Vec::as_slice)
    }
    /// Appends to the current key's list.
    pub fn add<K: Key>(&self, state: &mut KeyedState<K>, value: V) {
        let (key, table) = state.entry::<Vec<V>>(self.id);
        match table.get_mut(key) {
            Some(list) => list.push(value),
            None => {
                table.insert(key.clone(), vec![value]);
            }
        }
    }
    /// Replaces the current key's list.
    pub fn update<K: Key>(&self, state: &mut KeyedState<K>, values: Vec<V>) {
        let (key, table) = state.entry::<Vec<V>>(self.id);
        if values.is_empty() {
            table.remove(key);
        } else {
            table.insert(key.clone(), values);
        }
    }
    /// Removes and returns the current key's list.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Vec<V> {
        let (key, table) = state.entry::<Vec<V>>(self.id);
        table.remove(key).unwrap_or_default()
    }
}

/// A map per key.
#[derive(Debug)]
pub struct MapState<UK, V> {
    id: usize,
    _v: PhantomData<fn() -> (UK, V)>,
}

impl<UK, V> Clone for MapState<UK, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<UK, V> Copy for MapState<UK, V> {}

impl<UK, V> Default for MapState<UK, V> {
    /// A handle not yet declared: using it panics. Declare it in `open`.
    fn default() -> Self {
        MapState {
            id: usize::MAX,
            _v: PhantomData,
        }
    }
}

impl<UK: Hash + Eq + 'static, V: 'static> MapState<UK, V> {
    /// The value under `user_key` for the current key.
    pub fn get<'s, K: Key>(&self, state: &'s KeyedState<K>, user_key: &UK) -> Option<&'s V> {
        state
            .table::<FastMap<UK, V>>(self.id)
            .get(state.current_key())?
            .get(user_key)
    }
    /// Puts `value` under `user_key` for the current key.
    pub fn put<K: Key>(&self, state: &mut KeyedState<K>, user_key: UK, value: V) -> Option<V> {
        let (key, table) = state.entry::<FastMap<UK, V>>(self.id);
        match table.get_mut(key) {
            Some(map) => map.insert(user_key, value),
            None => {
                let mut map = FastMap::default();
                map.insert(user_key, value);
                table.insert(key.clone(), map);
                None
            }
        }
    }
    /// Removes `user_key` for the current key.
    pub fn remove<K: Key>(&self, state: &mut KeyedState<K>, user_key: &UK) -> Option<V> {
        let (key, table) = state.entry::<FastMap<UK, V>>(self.id);
        let map = table.get_mut(key)?;
        let removed = map.remove(user_key);
        if map.is_empty() {
            table.remove(key);
        }
        removed
    }
    /// The current key's entries, in no particular order.
    pub fn entries<'s, K: Key>(
        &self,
        state: &'s KeyedState<K>,
    ) -> impl Iterator<Item = (&'s UK, &'s V)> {
        state
            .table::<FastMap<UK, V>>(self.id)
            .get(state.current_key())
            .into_iter()
            .flat_map(|m| m.iter())
    }
    /// Removes every entry of the current key.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) {
        let (key, table) = state.entry::<FastMap<UK, V>>(self.id);
        table.remove(key);
    }
}

/// A value per key, folded with a reduce function on every add.
pub struct ReducingState<V, F> {
    id: usize,
    f: F,
    _v: PhantomData<fn() -> V>,
}

impl<V: 'static, F: Fn(V, V) -> V> ReducingState<V, F> {
    /// Folds `value` into the current key's value.
    pub fn add<K: Key>(&self, state: &mut KeyedState<K>, value: V) {
        let (key, table) = state.entry::<V>(self.id);
        match table.remove(key) {
            Some(current) => {
                let folded = (self.f)(current, value);
                table.insert(key.clone(), folded);
            }
            None => {
                table.insert(key.clone(), value);
            }
        }
    }
    /// The current key's folded value.
    pub fn get<'s, K: Key>(&self, state: &'s KeyedState<K>) -> Option<&'s V> {
        state.table::<V>(self.id).get(state.current_key())
    }
    /// Removes the current key's value.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Option<V> {
        let (key, table) = state.entry::<V>(self.id);
        table.remove(key)
    }
}

/// An accumulator per key, added to with an [`AggregateFunction`].
pub struct AggregatingState<T, A> {
    id: usize,
    agg: A,
    _t: PhantomData<fn(T)>,
}

impl<T, A: AggregateFunction<T>> AggregatingState<T, A> {
    /// Adds `value` to the current key's accumulator.
    pub fn add<K: Key>(&self, state: &mut KeyedState<K>, value: T) {
        let (key, table) = state.entry::<A::Acc>(self.id);
        match table.get_mut(key) {
            Some(acc) => self.agg.add(acc, value),
            None => {
                let mut acc = self.agg.create_accumulator();
                self.agg.add(&mut acc, value);
                table.insert(key.clone(), acc);
            }
        }
    }
    /// The current key's result.
    pub fn get<K: Key>(&self, state: &KeyedState<K>) -> Option<A::Out> {
        let acc = state.table::<A::Acc>(self.id).get(state.current_key())?;
        Some(self.agg.get_result(acc))
    }
    /// Removes the current key's accumulator.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) {
        let (key, table) = state.entry::<A::Acc>(self.id);
        table.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_scoped_to_the_current_key() {
        let mut s: KeyedState<u32> = KeyedState::default();
        let count = s.value_state::<u64>("count");
        let seen = s.list_state::<char>("seen");
        let tags = s.map_state::<&str, u8>("tags");
        let sum = s.reducing_state("sum", |a: i64, b: i64| a + b);
        s.set_current_key(1);
        count.update(&mut s, 5);
        seen.add(&mut s, 'a');
        seen.add(&mut s, 'b');
        tags.put(&mut s, "x", 1);
        sum.add(&mut s, 3);
        sum.add(&mut s, 4);
        s.set_current_key(2);
        assert_eq!(count.value(&s), None);
        assert!(seen.get(&s).is_empty());
        count.update(&mut s, 9);
        s.set_current_key(1);
        assert_eq!(count.value(&s), Some(&5));
        assert_eq!(seen.get(&s), &['a', 'b']);
        assert_eq!(tags.get(&s, &"x"), Some(&1));
        assert_eq!(sum.get(&s), Some(&7));
        assert_eq!(seen.clear(&mut s), vec!['a', 'b']);
        assert!(seen.get(&s).is_empty());
        // Declaring again by name finds the same state.
        let again = s.value_state::<u64>("count");
        assert_eq!(again.value(&s), Some(&5));
    }
}
