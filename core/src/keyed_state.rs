//! Keyed state for user functions (Flink's `ValueState`, `ListState`, `MapState`,
//! `ReducingState`, `AggregatingState`): typed handles, declared when the function opens,
//! always read and written for the *current key* — the key of the record or timer being
//! processed.
//!
//! The handles are small copyable ids into a [`KeyedState`] that the operator owns and scopes
//! to the current key before each call. Each declared state is a table of the stage's state
//! store (`sluice-state`), named `op<n>/state/<name>` after its operator, so it is
//! checkpointed, restored (by key group when the job rescales) and may exceed memory: the
//! store evicts cold entries to disk and reads them back on access. Hence what differs from
//! Flink's Java API: every access returns a [`Result`] (reading evicted state is I/O), values
//! are [`StateCodec`] (the store writes them as rkyv archives), and reads hand out clones
//! (`value`, `get`) or lend a reference to a closure (`with_value`, `with_list`, `for_each`)
//! rather than returning a borrow of the store.
//!
//! Layout in the store: value, reducing and aggregating state are one entry per key; list
//! state is one entry per key holding a `Vec` (an append pushes onto the resident list, no
//! copy); map state is one entry per (key, user key), in a namespace per key, so one user key
//! is read or written without the rest of its map and `clear` drops the namespace.
//!
//! State may expire ([`StateTtlConfig`], Flink's state TTL): its time to live is counted in
//! processing time from the last write, and expired values are never returned.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use sluice_state::{Ns, Table, TableConfig};

use crate::error::{Error, Result};
use crate::key::{Key, KeyGroups};
use crate::keyed::AggregateFunction;
use crate::state::{StateCodec, StateStore};

/// Flink's `StateTtlConfig`: how long a state's values live after they were last written.
///
/// The semantics are Flink's defaults: the time to live is counted in processing time and
/// restarts when a value is created or written (`OnCreateAndWrite`; reading does not extend
/// it), and an expired value is never returned (`NeverReturnExpired`), also after a restore.
/// Expired values are dropped when they are next touched and when the store compacts.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::keyed_state::StateTtlConfig;
/// let ttl = StateTtlConfig::new(Duration::from_secs(60));
/// assert_eq!(ttl.ttl_ms(), 60_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTtlConfig {
    ttl_ms: u64,
}

impl StateTtlConfig {
    /// Values live `ttl` after their last write (at least a millisecond).
    pub fn new(ttl: Duration) -> StateTtlConfig {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        StateTtlConfig { ttl_ms: ms.max(1) }
    }
    /// The time to live in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }
}

/// What kind of state a name was declared as (with the table's type, this tells apart two
/// declarations whose tables happen to have the same type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Value,
    List,
    Map,
    Reducing,
    Aggregating,
}

struct Declared {
    name: String,
    kind: Kind,
    table_type: TypeId,
    ttl_ms: u64,
    table: Box<dyn Any>,
}

/// The keyed state of one operator instance, scoped to its current key.
pub struct KeyedState<K> {
    current: Option<K>,
    declared: Vec<Declared>,
    store: Rc<StateStore>,
    key_groups: KeyGroups,
    prefix: String,
    uses_ttl: bool,
    /// Why a declaration failed: reported by the operator after `open`, and by a use of the
    /// handle.
    failed: Option<String>,
}

fn access(message: String) -> Error {
    Error::State {
        op: "access keyed state",
        message,
    }
}

impl<K: Key> KeyedState<K> {
    /// The keyed state of an operator of the stage whose state names start with `prefix`
    /// ([`StageState::operator_prefix`](crate::state::StageState::operator_prefix), taken at
    /// attach: the same in every run, so a restore finds the states, named
    /// `<prefix>/state/<name>`).
    pub fn new(ctx: &crate::context::OperatorContext, prefix: &str) -> KeyedState<K> {
        KeyedState::in_store(ctx.state().store().clone(), ctx.key_groups(), prefix)
    }

    /// Keyed state in `store`, its state names under `prefix` (for tests of the store's
    /// behaviour under a small memory budget).
    pub fn in_store(store: Rc<StateStore>, key_groups: KeyGroups, prefix: &str) -> KeyedState<K> {
        KeyedState {
            current: None,
            declared: Vec::new(),
            store,
            key_groups,
            prefix: prefix.to_owned(),
            uses_ttl: false,
            failed: None,
        }
    }

    /// The key that state access is scoped to.
    ///
    /// # Panics
    /// Outside a call for a key (a programming error in the operator).
    #[inline]
    pub fn current_key(&self) -> &K {
        self.current
            .as_ref()
            .unwrap_or_else(|| panic!("keyed state used outside a call for a key"))
    }

    /// Scopes access to `key` (for the operator).
    #[inline]
    pub fn set_current_key(&mut self, key: K) {
        self.current = Some(key);
    }

    /// Ends the scope and returns its key (for the operator).
    #[inline]
    pub fn take_current_key(&mut self) -> Option<K> {
        self.current.take()
    }

    /// Whether some state was declared with a time to live: the operator then tells the
    /// store the processing time before each call ([`set_time_ms`](Self::set_time_ms)).
    #[inline]
    pub fn uses_ttl(&self) -> bool {
        self.uses_ttl
    }

    /// Sets the processing time that time to live is measured against (for the operator).
    pub fn set_time_ms(&self, now_ms: i64) {
        self.store.set_time_ms(u64::try_from(now_ms).unwrap_or(0));
    }

    /// The first declaration that failed, if any (for the operator, after `open`).
    pub fn declaration_error(&self) -> Option<Error> {
        self.failed.as_ref().map(|m| Error::State {
            op: "declare keyed state",
            message: m.clone(),
        })
    }

    /// Declarations with a time to live: `state.with_ttl(ttl).value_state("seen")`.
    pub fn with_ttl(&mut self, ttl: StateTtlConfig) -> TtlDeclarations<'_, K> {
        TtlDeclarations {
            state: self,
            ttl_ms: ttl.ttl_ms,
        }
    }

    /// Registers the table of `name` (or finds it, declared before with the same kind and
    /// types). A failure is kept for [`declaration_error`](Self::declaration_error) and the
    /// handle's id is then one that no table has.
    fn declare<N: Ns, UK: Ns, V: StateCodec>(
        &mut self,
        name: &str,
        kind: Kind,
        ttl_ms: u64,
        key_group: impl Fn(&N, &UK) -> u32 + 'static,
    ) -> usize {
        let table_type = TypeId::of::<Table<N, UK, V>>();
        if let Some(i) = self.declared.iter().position(|d| d.name == name) {
            let d = &self.declared[i];
            if d.kind == kind && d.table_type == table_type && d.ttl_ms == ttl_ms {
                return i;
            }
            let message = format!(
                "state '{name}' declared twice: as {:?} state and as {kind:?} state, or with \
                 other types or time to live",
                d.kind
            );
            self.failed.get_or_insert(message);
            return usize::MAX;
        }
        let full = format!("{}/state/{name}", self.prefix);
        let cfg = TableConfig::new(key_group).with_ttl_ms(ttl_ms);
        match self.store.table::<N, UK, V>(&full, cfg) {
            Ok(table) => {
                self.uses_ttl |= ttl_ms != 0;
                self.declared.push(Declared {
                    name: name.to_owned(),
                    kind,
                    table_type,
                    ttl_ms,
                    table: Box::new(table),
                });
                self.declared.len() - 1
            }
            Err(e) => {
                let message = crate::runtime::one_line(&format!("state '{name}': {e}"));
                self.failed.get_or_insert(message);
                usize::MAX
            }
        }
    }

    /// A table of plain keyed state: the current key is the table's key.
    fn declare_keyed<V: StateCodec>(&mut self, name: &str, kind: Kind, ttl_ms: u64) -> usize {
        let kg = self.key_groups;
        self.declare::<(), K, V>(name, kind, ttl_ms, move |_: &(), k: &K| {
            kg.key_group(k.stable_hash())
        })
    }

    /// The current key and the table of handle `id`.
    #[inline]
    fn entry<N: 'static, UK: 'static, V: 'static>(
        &self,
        id: usize,
    ) -> Result<(&K, &Table<N, UK, V>)> {
        let Some(declared) = self.declared.get(id) else {
            return Err(self.undeclared());
        };
        let table = declared
            .table
            .downcast_ref::<Table<N, UK, V>>()
            .unwrap_or_else(|| unreachable!("state handles are typed"));
        Ok((self.current_key(), table))
    }

    #[cold]
    fn undeclared(&self) -> Error {
        access(match &self.failed {
            Some(m) => format!("a state whose declaration failed was used: {m}"),
            None => "a state handle was used before it was declared (declare it in open)".into(),
        })
    }

    /// Declares (or finds) value state `name`.
    pub fn value_state<V: StateCodec>(&mut self, name: &str) -> ValueState<V> {
        ValueState {
            id: self.declare_keyed::<V>(name, Kind::Value, 0),
            _v: PhantomData,
        }
    }

    /// Declares (or finds) list state `name`.
    pub fn list_state<V: StateCodec>(&mut self, name: &str) -> ListState<V> {
        ListState {
            id: self.declare_keyed::<Vec<V>>(name, Kind::List, 0),
            _v: PhantomData,
        }
    }

    /// Declares (or finds) map state `name`.
    pub fn map_state<UK: Ns, V: StateCodec>(&mut self, name: &str) -> MapState<UK, V> {
        MapState {
            id: self.declare_map::<UK, V>(name, 0),
            _v: PhantomData,
        }
    }

    fn declare_map<UK: Ns, V: StateCodec>(&mut self, name: &str, ttl_ms: u64) -> usize {
        // The namespace is the current key: it decides the key group.
        let kg = self.key_groups;
        self.declare::<K, UK, V>(name, Kind::Map, ttl_ms, move |k: &K, _: &UK| {
            kg.key_group(k.stable_hash())
        })
    }

    /// Declares (or finds) reducing state `name`, folded with `f`.
    pub fn reducing_state<V, F>(&mut self, name: &str, f: F) -> ReducingState<V, F>
    where
        V: StateCodec,
        F: Fn(V, V) -> V,
    {
        ReducingState {
            id: self.declare_keyed::<Option<V>>(name, Kind::Reducing, 0),
            f,
            _v: PhantomData,
        }
    }

    /// Declares (or finds) aggregating state `name`, with `agg`'s accumulator.
    pub fn aggregating_state<T, A>(&mut self, name: &str, agg: A) -> AggregatingState<T, A>
    where
        A: AggregateFunction<T>,
        A::Acc: StateCodec,
    {
        AggregatingState {
            id: self.declare_keyed::<A::Acc>(name, Kind::Aggregating, 0),
            agg,
            _t: PhantomData,
        }
    }
}

/// Declarations of state with a time to live ([`KeyedState::with_ttl`]).
pub struct TtlDeclarations<'s, K> {
    state: &'s mut KeyedState<K>,
    ttl_ms: u64,
}

impl<K: Key> TtlDeclarations<'_, K> {
    /// Declares (or finds) value state `name` with this time to live.
    pub fn value_state<V: StateCodec>(self, name: &str) -> ValueState<V> {
        ValueState {
            id: self
                .state
                .declare_keyed::<V>(name, Kind::Value, self.ttl_ms),
            _v: PhantomData,
        }
    }
    /// Declares (or finds) list state `name`; the list expires as a whole, counted from its
    /// last change.
    pub fn list_state<V: StateCodec>(self, name: &str) -> ListState<V> {
        ListState {
            id: self
                .state
                .declare_keyed::<Vec<V>>(name, Kind::List, self.ttl_ms),
            _v: PhantomData,
        }
    }
    /// Declares (or finds) map state `name`; each user key expires on its own.
    pub fn map_state<UK: Ns, V: StateCodec>(self, name: &str) -> MapState<UK, V> {
        MapState {
            id: self.state.declare_map::<UK, V>(name, self.ttl_ms),
            _v: PhantomData,
        }
    }
    /// Declares (or finds) reducing state `name`, folded with `f`.
    pub fn reducing_state<V, F>(self, name: &str, f: F) -> ReducingState<V, F>
    where
        V: StateCodec,
        F: Fn(V, V) -> V,
    {
        ReducingState {
            id: self
                .state
                .declare_keyed::<Option<V>>(name, Kind::Reducing, self.ttl_ms),
            f,
            _v: PhantomData,
        }
    }
    /// Declares (or finds) aggregating state `name`, with `agg`'s accumulator.
    pub fn aggregating_state<T, A>(self, name: &str, agg: A) -> AggregatingState<T, A>
    where
        A: AggregateFunction<T>,
        A::Acc: StateCodec,
    {
        AggregatingState {
            id: self
                .state
                .declare_keyed::<A::Acc>(name, Kind::Aggregating, self.ttl_ms),
            agg,
            _t: PhantomData,
        }
    }
}

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident < $($p:ident),* >) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<$($p),*> {
            id: usize,
            _v: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $name<$($p),*> {}
        impl<$($p),*> Default for $name<$($p),*> {
            /// A handle not yet declared: using it is an error. Declare it in `open`.
            fn default() -> Self {
                $name {
                    id: usize::MAX,
                    _v: PhantomData,
                }
            }
        }
    };
}

handle!(
    /// One value per key.
    ValueState<V>
);

impl<V: StateCodec> ValueState<V> {
    /// A copy of the current key's value.
    pub fn value<K: Key>(&self, state: &KeyedState<K>) -> Result<Option<V>>
    where
        V: Clone,
    {
        self.with_value(state, |v| v.cloned())
    }
    /// Calls `f` with the current key's value.
    #[inline]
    pub fn with_value<K: Key, R>(
        &self,
        state: &KeyedState<K>,
        f: impl FnOnce(Option<&V>) -> R,
    ) -> Result<R> {
        let (key, table) = state.entry::<(), K, V>(self.id)?;
        let mut t = table.lock();
        Ok(f(t.get(&(), key)?))
    }
    /// Calls `f` on the current key's value to change it in place, if there is one.
    #[inline]
    pub fn value_mut<K: Key, R>(
        &self,
        state: &mut KeyedState<K>,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>> {
        let (key, table) = state.entry::<(), K, V>(self.id)?;
        let mut t = table.lock();
        Ok(t.get_mut(&(), key)?.map(f))
    }
    /// Sets the current key's value.
    #[inline]
    pub fn update<K: Key>(&self, state: &mut KeyedState<K>, value: V) -> Result<()> {
        let (key, table) = state.entry::<(), K, V>(self.id)?;
        let mut t = table.lock();
        // The key is cloned only when it is new.
        match t.get_mut(&(), key)? {
            Some(slot) => *slot = value,
            None => t.insert(&(), key.clone(), value)?,
        }
        Ok(())
    }
    /// Removes the current key's value.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Result<()> {
        let (key, table) = state.entry::<(), K, V>(self.id)?;
        table.lock().remove(&(), key)?;
        Ok(())
    }
    /// Removes and returns the current key's value.
    pub fn take<K: Key>(&self, state: &mut KeyedState<K>) -> Result<Option<V>>
    where
        V: Clone,
    {
        let (key, table) = state.entry::<(), K, V>(self.id)?;
        let mut t = table.lock();
        let value = t.get(&(), key)?.cloned();
        if value.is_some() {
            t.remove(&(), key)?;
        }
        Ok(value)
    }
}

handle!(
    /// A list per key with cheap appends.
    ListState<V>
);

impl<V: StateCodec> ListState<V> {
    /// A copy of the current key's list (empty if none).
    pub fn get<K: Key>(&self, state: &KeyedState<K>) -> Result<Vec<V>>
    where
        V: Clone,
    {
        self.with_list(state, <[V]>::to_vec)
    }
    /// Calls `f` with the current key's list (empty if none).
    #[inline]
    pub fn with_list<K: Key, R>(
        &self,
        state: &KeyedState<K>,
        f: impl FnOnce(&[V]) -> R,
    ) -> Result<R> {
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        let mut t = table.lock();
        Ok(f(t.get(&(), key)?.map_or(&[], Vec::as_slice)))
    }
    /// Appends to the current key's list.
    #[inline]
    pub fn add<K: Key>(&self, state: &mut KeyedState<K>, value: V) -> Result<()> {
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        let mut t = table.lock();
        match t.get_mut(&(), key)? {
            Some(list) => list.push(value),
            None => t.insert(&(), key.clone(), vec![value])?,
        }
        Ok(())
    }
    /// Appends every value to the current key's list.
    pub fn add_all<K: Key>(
        &self,
        state: &mut KeyedState<K>,
        values: impl IntoIterator<Item = V>,
    ) -> Result<()> {
        let mut values = values.into_iter().peekable();
        if values.peek().is_none() {
            return Ok(());
        }
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        let mut t = table.lock();
        match t.get_mut(&(), key)? {
            Some(list) => list.extend(values),
            None => t.insert(&(), key.clone(), values.collect())?,
        }
        Ok(())
    }
    /// Replaces the current key's list (an empty list removes it).
    pub fn update<K: Key>(&self, state: &mut KeyedState<K>, values: Vec<V>) -> Result<()> {
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        let mut t = table.lock();
        if values.is_empty() {
            t.remove(&(), key)?;
            return Ok(());
        }
        match t.get_mut(&(), key)? {
            Some(list) => *list = values,
            None => t.insert(&(), key.clone(), values)?,
        }
        Ok(())
    }
    /// Keeps the values of the current key's list that `f` accepts (removing the list when
    /// none is left).
    pub fn retain<K: Key>(
        &self,
        state: &mut KeyedState<K>,
        f: impl FnMut(&V) -> bool,
    ) -> Result<()> {
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        let mut t = table.lock();
        let emptied = match t.get_mut(&(), key)? {
            Some(list) => {
                list.retain(f);
                list.is_empty()
            }
            None => false,
        };
        if emptied {
            t.remove(&(), key)?;
        }
        Ok(())
    }
    /// Removes and returns the current key's list.
    pub fn take<K: Key>(&self, state: &mut KeyedState<K>) -> Result<Vec<V>> {
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        let mut t = table.lock();
        let Some(list) = t.get_mut(&(), key)? else {
            return Ok(Vec::new());
        };
        let list = std::mem::take(list);
        t.remove(&(), key)?;
        Ok(list)
    }
    /// Removes the current key's list.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Result<()> {
        let (key, table) = state.entry::<(), K, Vec<V>>(self.id)?;
        table.lock().remove(&(), key)?;
        Ok(())
    }
}

handle!(
    /// A map per key.
    MapState<UK, V>
);

impl<UK: Ns, V: StateCodec> MapState<UK, V> {
    /// A copy of the value under `user_key` for the current key.
    pub fn get<K: Key>(&self, state: &KeyedState<K>, user_key: &UK) -> Result<Option<V>>
    where
        V: Clone,
    {
        self.with_value(state, user_key, |v| v.cloned())
    }
    /// Calls `f` with the value under `user_key` for the current key.
    #[inline]
    pub fn with_value<K: Key, R>(
        &self,
        state: &KeyedState<K>,
        user_key: &UK,
        f: impl FnOnce(Option<&V>) -> R,
    ) -> Result<R> {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        let mut t = table.lock();
        Ok(f(t.get(key, user_key)?))
    }
    /// Whether the current key has a value under `user_key`.
    pub fn contains<K: Key>(&self, state: &KeyedState<K>, user_key: &UK) -> Result<bool> {
        self.with_value(state, user_key, |v| v.is_some())
    }
    /// Puts `value` under `user_key` for the current key.
    #[inline]
    pub fn put<K: Key>(&self, state: &mut KeyedState<K>, user_key: UK, value: V) -> Result<()> {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        table.lock().insert(key, user_key, value)?;
        Ok(())
    }
    /// Calls `f` on the value under `user_key` to change it in place, if there is one.
    pub fn value_mut<K: Key, R>(
        &self,
        state: &mut KeyedState<K>,
        user_key: &UK,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>> {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        let mut t = table.lock();
        Ok(t.get_mut(key, user_key)?.map(f))
    }
    /// Removes `user_key` for the current key.
    pub fn remove<K: Key>(&self, state: &mut KeyedState<K>, user_key: &UK) -> Result<()> {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        table.lock().remove(key, user_key)?;
        Ok(())
    }
    /// Removes and returns the value under `user_key` for the current key.
    pub fn take<K: Key>(&self, state: &mut KeyedState<K>, user_key: &UK) -> Result<Option<V>>
    where
        V: Clone,
    {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        let mut t = table.lock();
        let value = t.get(key, user_key)?.cloned();
        if value.is_some() {
            t.remove(key, user_key)?;
        }
        Ok(value)
    }
    /// Calls `f` for every entry of the current key, in no particular order.
    pub fn for_each<K: Key>(&self, state: &KeyedState<K>, f: impl FnMut(&UK, &V)) -> Result<()> {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        table.lock().for_each_in_namespace(key, f)?;
        Ok(())
    }
    /// Copies of the current key's entries, in no particular order.
    pub fn entries<K: Key>(&self, state: &KeyedState<K>) -> Result<Vec<(UK, V)>>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.for_each(state, |k, v| out.push((k.clone(), v.clone())))?;
        Ok(out)
    }
    /// Whether the current key has no entry.
    pub fn is_empty<K: Key>(&self, state: &KeyedState<K>) -> Result<bool> {
        let mut empty = true;
        self.for_each(state, |_, _| empty = false)?;
        Ok(empty)
    }
    /// Removes every entry of the current key.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Result<()> {
        let (key, table) = state.entry::<K, UK, V>(self.id)?;
        table.lock().drop_namespace(key)?;
        Ok(())
    }
}

/// A value per key, folded with a reduce function on every add.
pub struct ReducingState<V, F> {
    id: usize,
    f: F,
    _v: PhantomData<fn() -> V>,
}

impl<V: StateCodec, F: Fn(V, V) -> V> ReducingState<V, F> {
    /// Folds `value` into the current key's value.
    #[inline]
    pub fn add<K: Key>(&self, state: &mut KeyedState<K>, value: V) -> Result<()> {
        let (key, table) = state.entry::<(), K, Option<V>>(self.id)?;
        let mut t = table.lock();
        let slot = match t.get_mut(&(), key)? {
            Some(slot) => slot,
            None => return Ok(t.insert(&(), key.clone(), Some(value))?),
        };
        *slot = Some(match slot.take() {
            Some(current) => (self.f)(current, value),
            None => value,
        });
        Ok(())
    }
    /// A copy of the current key's folded value.
    pub fn get<K: Key>(&self, state: &KeyedState<K>) -> Result<Option<V>>
    where
        V: Clone,
    {
        let (key, table) = state.entry::<(), K, Option<V>>(self.id)?;
        let mut t = table.lock();
        Ok(t.get(&(), key)?.and_then(Clone::clone))
    }
    /// Removes the current key's value.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Result<()> {
        let (key, table) = state.entry::<(), K, Option<V>>(self.id)?;
        table.lock().remove(&(), key)?;
        Ok(())
    }
}

/// An accumulator per key, added to with an [`AggregateFunction`].
pub struct AggregatingState<T, A> {
    id: usize,
    agg: A,
    _t: PhantomData<fn(T)>,
}

impl<T, A> AggregatingState<T, A>
where
    A: AggregateFunction<T>,
    A::Acc: StateCodec,
{
    /// Adds `value` to the current key's accumulator.
    #[inline]
    pub fn add<K: Key>(&self, state: &mut KeyedState<K>, value: T) -> Result<()> {
        let (key, table) = state.entry::<(), K, A::Acc>(self.id)?;
        let mut t = table.lock();
        match t.get_mut(&(), key)? {
            Some(acc) => self.agg.add(acc, value),
            None => {
                let mut acc = self.agg.create_accumulator();
                self.agg.add(&mut acc, value);
                t.insert(&(), key.clone(), acc)?;
            }
        }
        Ok(())
    }
    /// The current key's result.
    pub fn get<K: Key>(&self, state: &KeyedState<K>) -> Result<Option<A::Out>> {
        let (key, table) = state.entry::<(), K, A::Acc>(self.id)?;
        let mut t = table.lock();
        Ok(t.get(&(), key)?.map(|acc| self.agg.get_result(acc)))
    }
    /// Removes the current key's accumulator.
    pub fn clear<K: Key>(&self, state: &mut KeyedState<K>) -> Result<()> {
        let (key, table) = state.entry::<(), K, A::Acc>(self.id)?;
        table.lock().remove(&(), key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
