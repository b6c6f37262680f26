//! State descriptors and handles: Flink's `ValueState`, `ListState`, `MapState`,
//! `ReducingState` and `AggregatingState`, scoped to the backend's current key and namespace.
//!
//! A descriptor names a state and fixes its types; registering it on a [`KeyedStateBackend`]
//! (`get_state`, `get_list_state`, ...) returns a small handle. Handles take the backend as an
//! argument (`count.update(&mut backend, 3)`), so one handle serves every key. Absent and empty
//! are the same, as in Flink: a list or map that becomes empty is removed, and reads of an
//! absent entry give `None` / an empty collection.

use super::backend::{KeyedStateBackend, StateId, StateKind, ValueBatch};
use super::{StateData, StateError};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

macro_rules! handle_boilerplate {
    ($name:ident < $($p:ident),* >) => {
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $name<$($p),*> {}
        impl<$($p),*> fmt::Debug for $name<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "#{}"), self.id)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Value

/// Names a [`ValueState`] holding a `V` per key and namespace.
pub struct ValueStateDescriptor<V> {
    name: String,
    _value: PhantomData<fn() -> V>,
}

impl<V: StateData> ValueStateDescriptor<V> {
    /// A descriptor for the state called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ValueStateDescriptor { name: name.into(), _value: PhantomData }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One value per key and namespace. Copy it freely; it acts on the backend's current key.
pub struct ValueState<V> {
    id: StateId,
    _value: PhantomData<fn() -> V>,
}
handle_boilerplate!(ValueState<V>);

impl<V: StateData> ValueState<V> {
    /// The current value (a clone); `None` if none was set.
    pub fn value(&self, backend: &KeyedStateBackend) -> Option<V> {
        backend.get::<V>(self.id).cloned()
    }

    /// The current value, borrowed.
    pub fn get_ref<'b>(&self, backend: &'b KeyedStateBackend) -> Option<&'b V> {
        backend.get::<V>(self.id)
    }

    /// Sets the current value.
    pub fn update(&self, backend: &mut KeyedStateBackend, value: V) {
        backend.put(self.id, value);
    }

    /// The current value, mutable, set to `init()` first if absent: one lookup on a hit.
    pub fn get_or_insert_with<'b>(&self, backend: &'b mut KeyedStateBackend, init: impl FnOnce() -> V) -> &'b mut V {
        backend.get_or_insert_with(self.id, init)
    }

    /// Applies `f` to the current value, set to `init()` first if absent, and returns what `f`
    /// returns: the fastest read-modify-write (one lookup on a hit).
    pub fn update_with<R>(&self, backend: &mut KeyedStateBackend, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        backend.update_with(self.id, init, f)
    }

    /// Removes the current value.
    pub fn clear(&self, backend: &mut KeyedStateBackend) {
        backend.remove(self.id);
    }

    /// Read-modify-writes for a run of keys at once (see [`ValueBatch`]): a batch of records
    /// updates this state without setting each record's key as the current key.
    pub fn batch<'b>(&self, backend: &'b mut KeyedStateBackend) -> ValueBatch<'b, V> {
        ValueBatch::new(backend, self.id)
    }
}

// ---------------------------------------------------------------------------------------------
// List

/// Names a [`ListState`] holding a list of `V` per key and namespace.
pub struct ListStateDescriptor<V> {
    name: String,
    _value: PhantomData<fn() -> V>,
}

impl<V: StateData> ListStateDescriptor<V> {
    /// A descriptor for the state called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ListStateDescriptor { name: name.into(), _value: PhantomData }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A list per key and namespace, in insertion order.
pub struct ListState<V> {
    id: StateId,
    _value: PhantomData<fn() -> V>,
}
handle_boilerplate!(ListState<V>);

impl<V: StateData> ListState<V> {
    /// The current list (a clone); empty if none.
    pub fn get(&self, backend: &KeyedStateBackend) -> Vec<V> {
        backend.get::<Vec<V>>(self.id).cloned().unwrap_or_default()
    }

    /// The current list, borrowed; empty if none.
    pub fn get_ref<'b>(&self, backend: &'b KeyedStateBackend) -> &'b [V] {
        backend.get::<Vec<V>>(self.id).map_or(&[], Vec::as_slice)
    }

    /// Appends one value.
    pub fn add(&self, backend: &mut KeyedStateBackend, value: V) {
        backend.update_with(self.id, Vec::new, |list| list.push(value));
    }

    /// Appends every value (nothing changes for an empty iterator).
    pub fn add_all(&self, backend: &mut KeyedStateBackend, values: impl IntoIterator<Item = V>) {
        let mut values = values.into_iter().peekable();
        if values.peek().is_some() {
            backend.update_with(self.id, Vec::new, |list| list.extend(values));
        }
    }

    /// Replaces the list; an empty list clears it.
    pub fn update(&self, backend: &mut KeyedStateBackend, values: Vec<V>) {
        if values.is_empty() {
            backend.remove(self.id);
        } else {
            backend.put(self.id, values);
        }
    }

    /// Removes the list.
    pub fn clear(&self, backend: &mut KeyedStateBackend) {
        backend.remove(self.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Map

/// Names a [`MapState`] holding a sorted map `UK -> UV` per key and namespace.
pub struct MapStateDescriptor<UK, UV> {
    name: String,
    _value: PhantomData<fn() -> (UK, UV)>,
}

impl<UK: Ord + StateData, UV: StateData> MapStateDescriptor<UK, UV> {
    /// A descriptor for the state called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MapStateDescriptor { name: name.into(), _value: PhantomData }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A map per key and namespace; iteration is in user-key order.
pub struct MapState<UK, UV> {
    id: StateId,
    _value: PhantomData<fn() -> (UK, UV)>,
}
handle_boilerplate!(MapState<UK, UV>);

impl<UK: Ord + StateData, UV: StateData> MapState<UK, UV> {
    fn map<'b>(&self, backend: &'b KeyedStateBackend) -> Option<&'b BTreeMap<UK, UV>> {
        backend.get::<BTreeMap<UK, UV>>(self.id)
    }

    /// The value under `user_key` (a clone).
    pub fn get(&self, backend: &KeyedStateBackend, user_key: &UK) -> Option<UV> {
        self.map(backend)?.get(user_key).cloned()
    }

    /// Sets the value under `user_key`.
    pub fn put(&self, backend: &mut KeyedStateBackend, user_key: UK, value: UV) {
        backend.update_with(self.id, BTreeMap::new, |map| map.insert(user_key, value));
    }

    /// Removes `user_key`, returning its value; the map is removed when it becomes empty.
    pub fn remove(&self, backend: &mut KeyedStateBackend, user_key: &UK) -> Option<UV> {
        let map = backend.get_mut::<BTreeMap<UK, UV>>(self.id)?;
        let removed = map.remove(user_key);
        if map.is_empty() {
            backend.remove(self.id);
        }
        removed
    }

    /// True when `user_key` is present.
    pub fn contains(&self, backend: &KeyedStateBackend, user_key: &UK) -> bool {
        self.map(backend).is_some_and(|m| m.contains_key(user_key))
    }

    /// Every entry, in user-key order.
    pub fn entries(&self, backend: &KeyedStateBackend) -> Vec<(UK, UV)> {
        self.map(backend).map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// Every user key, in order.
    pub fn keys(&self, backend: &KeyedStateBackend) -> Vec<UK> {
        self.map(backend).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Every value, in user-key order.
    pub fn values(&self, backend: &KeyedStateBackend) -> Vec<UV> {
        self.map(backend).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// True when the map has no entry.
    pub fn is_empty(&self, backend: &KeyedStateBackend) -> bool {
        self.map(backend).is_none_or(BTreeMap::is_empty)
    }

    /// Removes the whole map.
    pub fn clear(&self, backend: &mut KeyedStateBackend) {
        backend.remove(self.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Reducing

/// A reduce function: `reduce(accumulated, new) -> accumulated`.
pub type ReduceFn<V> = Arc<dyn Fn(&V, &V) -> V + Send + Sync>;

/// Names a [`ReducingState`] and carries its reduce function.
pub struct ReducingStateDescriptor<V> {
    name: String,
    reduce: ReduceFn<V>,
}

impl<V: StateData> ReducingStateDescriptor<V> {
    /// A descriptor for the state called `name`, folding with `reduce` (a `fn` or a closure).
    pub fn new(name: impl Into<String>, reduce: impl Fn(&V, &V) -> V + Send + Sync + 'static) -> Self {
        ReducingStateDescriptor { name: name.into(), reduce: Arc::new(reduce) }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One value per key and namespace: the first added value, then `reduce(current, added)`.
pub struct ReducingState<V> {
    id: StateId,
    reduce: ReduceFn<V>,
}

impl<V> Clone for ReducingState<V> {
    fn clone(&self) -> Self {
        ReducingState { id: self.id, reduce: Arc::clone(&self.reduce) }
    }
}

impl<V> fmt::Debug for ReducingState<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReducingState#{}", self.id)
    }
}

impl<V: StateData> ReducingState<V> {
    /// The reduced value (a clone); `None` if nothing was added.
    pub fn get(&self, backend: &KeyedStateBackend) -> Option<V> {
        backend.get::<V>(self.id).cloned()
    }

    /// Folds `value` in.
    pub fn add(&self, backend: &mut KeyedStateBackend, value: V) {
        // The first value is the initial state; later ones are folded in.
        let value = std::cell::Cell::new(Some(value));
        backend.update_with(
            self.id,
            || value.take().expect("taken once"),
            |current| {
                if let Some(value) = value.take() {
                    *current = (self.reduce)(current, &value);
                }
            },
        );
    }

    /// Removes the value.
    pub fn clear(&self, backend: &mut KeyedStateBackend) {
        backend.remove(self.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregating

/// Flink's `AggregateFunction`: inputs `IN` fold into an accumulator `ACC` (the state), read out
/// as `OUT`.
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync + 'static {
    /// A fresh accumulator.
    fn create_accumulator(&self) -> ACC;
    /// Folds one input into the accumulator.
    fn add(&self, value: IN, accumulator: &mut ACC);
    /// The result for an accumulator.
    fn get_result(&self, accumulator: &ACC) -> OUT;
    /// Merges two accumulators (session windows); `None` when this function cannot merge.
    fn merge(&self, a: ACC, b: ACC) -> Option<ACC> {
        let _ = (a, b);
        None
    }
}

/// Names an [`AggregatingState`] and carries its aggregate function.
pub struct AggregatingStateDescriptor<IN, ACC, OUT> {
    name: String,
    function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
}

impl<IN: 'static, ACC: StateData, OUT: 'static> AggregatingStateDescriptor<IN, ACC, OUT> {
    /// A descriptor for the state called `name`, aggregating with `function`.
    pub fn new(name: impl Into<String>, function: impl AggregateFunction<IN, ACC, OUT>) -> Self {
        AggregatingStateDescriptor { name: name.into(), function: Arc::new(function) }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An accumulator per key and namespace.
pub struct AggregatingState<IN, ACC, OUT> {
    id: StateId,
    function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
}

impl<IN, ACC, OUT> Clone for AggregatingState<IN, ACC, OUT> {
    fn clone(&self) -> Self {
        AggregatingState { id: self.id, function: Arc::clone(&self.function) }
    }
}

impl<IN, ACC, OUT> fmt::Debug for AggregatingState<IN, ACC, OUT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AggregatingState#{}", self.id)
    }
}

impl<IN: 'static, ACC: StateData, OUT: 'static> AggregatingState<IN, ACC, OUT> {
    /// The result of the accumulator; `None` if nothing was added.
    pub fn get(&self, backend: &KeyedStateBackend) -> Option<OUT> {
        backend.get::<ACC>(self.id).map(|acc| self.function.get_result(acc))
    }

    /// Folds one input in (creating the accumulator first if needed).
    pub fn add(&self, backend: &mut KeyedStateBackend, value: IN) {
        let function = &*self.function;
        backend.update_with(self.id, || function.create_accumulator(), |acc| function.add(value, acc));
    }

    /// Removes the accumulator.
    pub fn clear(&self, backend: &mut KeyedStateBackend) {
        backend.remove(self.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Registration

impl KeyedStateBackend {
    /// Registers (or finds) a value state. Same name with another kind or type: a typed error.
    pub fn get_state<V: StateData>(&mut self, descriptor: &ValueStateDescriptor<V>) -> Result<ValueState<V>, StateError> {
        let id = self.register::<V>(&descriptor.name, StateKind::Value)?;
        Ok(ValueState { id, _value: PhantomData })
    }

    /// Registers (or finds) a list state.
    pub fn get_list_state<V: StateData>(&mut self, descriptor: &ListStateDescriptor<V>) -> Result<ListState<V>, StateError> {
        let id = self.register::<Vec<V>>(&descriptor.name, StateKind::List)?;
        Ok(ListState { id, _value: PhantomData })
    }

    /// Registers (or finds) a map state.
    pub fn get_map_state<UK: Ord + StateData, UV: StateData>(
        &mut self,
        descriptor: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>, StateError> {
        let id = self.register::<BTreeMap<UK, UV>>(&descriptor.name, StateKind::Map)?;
        Ok(MapState { id, _value: PhantomData })
    }

    /// Registers (or finds) a reducing state.
    pub fn get_reducing_state<V: StateData>(
        &mut self,
        descriptor: &ReducingStateDescriptor<V>,
    ) -> Result<ReducingState<V>, StateError> {
        let id = self.register::<V>(&descriptor.name, StateKind::Reducing)?;
        Ok(ReducingState { id, reduce: Arc::clone(&descriptor.reduce) })
    }

    /// Registers (or finds) an aggregating state.
    pub fn get_aggregating_state<IN: 'static, ACC: StateData, OUT: 'static>(
        &mut self,
        descriptor: &AggregatingStateDescriptor<IN, ACC, OUT>,
    ) -> Result<AggregatingState<IN, ACC, OUT>, StateError> {
        let id = self.register::<ACC>(&descriptor.name, StateKind::Aggregating)?;
        Ok(AggregatingState { id, function: Arc::clone(&descriptor.function) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_groups::KeyGroupRange;

    fn backend() -> KeyedStateBackend {
        KeyedStateBackend::new(32, KeyGroupRange::all(32))
    }

    /// An operation on the current key, and what the state reads as afterwards.
    enum Op<T> {
        Key(i32),
        Ns(u8),
        Void,
        Do(T),
    }

    #[test]
    fn value_state_semantics() {
        #[derive(Clone, Copy)]
        enum V {
            Update(u32),
            Clear,
            Bump,
        }
        use Op::*;
        let mut be = backend();
        let state = be.get_state(&ValueStateDescriptor::<u32>::new("v")).unwrap();
        // (operation, value afterwards for the current key and namespace)
        let table: &[(Op<V>, Option<u32>)] = &[
            (Key(1), None),
            (Do(V::Update(3)), Some(3)),
            (Do(V::Bump), Some(4)),
            (Key(2), None),
            (Do(V::Bump), Some(1)),
            (Key(1), Some(4)),
            (Ns(9), None),
            (Do(V::Update(7)), Some(7)),
            (Void, Some(4)),
            (Do(V::Clear), None),
            (Do(V::Clear), None),
            (Ns(9), Some(7)),
            (Key(2), None),
            (Void, Some(1)),
        ];
        for (step, (op, want)) in table.iter().enumerate() {
            match op {
                Key(k) => be.set_current_key(k),
                Ns(n) => be.set_current_namespace(n),
                Void => be.set_void_namespace(),
                Do(V::Update(v)) => state.update(&mut be, *v),
                Do(V::Clear) => state.clear(&mut be),
                Do(V::Bump) => *state.get_or_insert_with(&mut be, || 0) += 1,
            }
            assert_eq!(state.value(&be), *want, "step {step}");
            assert_eq!(state.get_ref(&be).copied(), *want, "step {step}");
        }
    }

    #[test]
    fn list_state_semantics() {
        #[derive(Clone)]
        enum L {
            Add(u8),
            AddAll(Vec<u8>),
            Update(Vec<u8>),
            Clear,
        }
        use Op::*;
        let mut be = backend();
        let state = be.get_list_state(&ListStateDescriptor::<u8>::new("l")).unwrap();
        let table: Vec<(Op<L>, Vec<u8>)> = vec![
            (Key(1), vec![]),
            (Do(L::Add(1)), vec![1]),
            (Do(L::AddAll(vec![2, 3])), vec![1, 2, 3]),
            (Do(L::AddAll(vec![])), vec![1, 2, 3]),
            (Key(2), vec![]),
            (Do(L::Update(vec![9, 8])), vec![9, 8]),
            (Ns(1), vec![]),
            (Do(L::Add(5)), vec![5]),
            (Void, vec![9, 8]),
            (Do(L::Update(vec![])), vec![]),
            (Key(1), vec![1, 2, 3]),
            (Do(L::Clear), vec![]),
            (Key(2), vec![]),
            (Ns(1), vec![5]),
        ];
        for (step, (op, want)) in table.into_iter().enumerate() {
            match op {
                Key(k) => be.set_current_key(&k),
                Ns(n) => be.set_current_namespace(&n),
                Void => be.set_void_namespace(),
                Do(L::Add(v)) => state.add(&mut be, v),
                Do(L::AddAll(v)) => state.add_all(&mut be, v),
                Do(L::Update(v)) => state.update(&mut be, v),
                Do(L::Clear) => state.clear(&mut be),
            }
            assert_eq!(state.get(&be), want, "step {step}");
            assert_eq!(state.get_ref(&be), &want[..], "step {step}");
        }
        // An emptied list is absent: its key is gone from `keys`.
        assert_eq!(be.keys::<i32>("l"), vec![2]);
    }

    #[test]
    fn map_state_semantics() {
        #[derive(Clone)]
        enum M {
            Put(&'static str, i32),
            Remove(&'static str, Option<i32>),
            Clear,
        }
        use Op::*;
        let mut be = backend();
        let state = be.get_map_state(&MapStateDescriptor::<String, i32>::new("m")).unwrap();
        type Row = (Op<M>, Vec<(&'static str, i32)>);
        let table: Vec<Row> = vec![
            (Key(1), vec![]),
            (Do(M::Put("b", 2)), vec![("b", 2)]),
            (Do(M::Put("a", 1)), vec![("a", 1), ("b", 2)]),
            (Do(M::Put("b", 3)), vec![("a", 1), ("b", 3)]),
            (Do(M::Remove("zz", None)), vec![("a", 1), ("b", 3)]),
            (Do(M::Remove("a", Some(1))), vec![("b", 3)]),
            (Key(2), vec![]),
            (Do(M::Remove("b", None)), vec![]),
            (Do(M::Put("c", 0)), vec![("c", 0)]),
            (Ns(4), vec![]),
            (Do(M::Put("c", 4)), vec![("c", 4)]),
            (Void, vec![("c", 0)]),
            (Do(M::Remove("c", Some(0))), vec![]),
            (Key(1), vec![("b", 3)]),
            (Do(M::Clear), vec![]),
            (Key(2), vec![]),
            (Ns(4), vec![("c", 4)]),
        ];
        for (step, (op, want)) in table.into_iter().enumerate() {
            match op {
                Key(k) => be.set_current_key(&k),
                Ns(n) => be.set_current_namespace(&n),
                Void => be.set_void_namespace(),
                Do(M::Put(k, v)) => state.put(&mut be, k.into(), v),
                Do(M::Remove(k, expected)) => assert_eq!(state.remove(&mut be, &k.to_string()), expected, "step {step}"),
                Do(M::Clear) => state.clear(&mut be),
            }
            let want: Vec<(String, i32)> = want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(state.entries(&be), want, "step {step}");
            assert_eq!(state.keys(&be), want.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), "step {step}");
            assert_eq!(state.values(&be), want.iter().map(|e| e.1).collect::<Vec<_>>(), "step {step}");
            assert_eq!(state.is_empty(&be), want.is_empty(), "step {step}");
            for (k, v) in &want {
                assert!(state.contains(&be, k), "step {step}");
                assert_eq!(state.get(&be, k), Some(*v), "step {step}");
            }
            assert!(!state.contains(&be, &"absent".to_string()));
            assert_eq!(state.get(&be, &"absent".to_string()), None);
        }
        // The map emptied by removal left no entry behind.
        assert_eq!(be.keys::<i32>("m"), vec![2]);
    }

    #[test]
    fn reducing_state_semantics() {
        use Op::*;
        let mut be = backend();
        let max = be.get_reducing_state(&ReducingStateDescriptor::<i64>::new("max", |a: &i64, b: &i64| *a.max(b))).unwrap();
        fn concat(a: &String, b: &String) -> String {
            format!("{a}+{b}")
        }
        let cat = be.get_reducing_state(&ReducingStateDescriptor::new("cat", concat)).unwrap();
        // (operation, max afterwards, concat afterwards); Do(None) clears both.
        type Row = (Op<Option<i64>>, Option<i64>, Option<&'static str>);
        let table: Vec<Row> = vec![
            (Key(1), None, None),
            (Do(Some(3)), Some(3), Some("3")),
            (Do(Some(-1)), Some(3), Some("3+-1")),
            (Do(Some(8)), Some(8), Some("3+-1+8")),
            (Key(2), None, None),
            (Do(Some(-5)), Some(-5), Some("-5")),
            (Ns(1), None, None),
            (Key(1), None, None),
            (Void, Some(8), Some("3+-1+8")),
            (Do(None), None, None),
            (Key(2), Some(-5), Some("-5")),
        ];
        for (step, (op, want_max, want_cat)) in table.into_iter().enumerate() {
            match op {
                Key(k) => be.set_current_key(&k),
                Ns(n) => be.set_current_namespace(&n),
                Void => be.set_void_namespace(),
                Do(Some(v)) => {
                    max.add(&mut be, v);
                    cat.add(&mut be, v.to_string());
                }
                Do(None) => {
                    max.clear(&mut be);
                    cat.clear(&mut be);
                }
            }
            assert_eq!(max.get(&be), want_max, "step {step}");
            assert_eq!(cat.get(&be).as_deref(), want_cat, "step {step}");
        }
    }

    /// Average of `u32`s: accumulator (sum, count).
    struct Average;
    impl AggregateFunction<u32, (u64, u64), f64> for Average {
        fn create_accumulator(&self) -> (u64, u64) {
            (0, 0)
        }
        fn add(&self, value: u32, acc: &mut (u64, u64)) {
            acc.0 += value as u64;
            acc.1 += 1;
        }
        fn get_result(&self, acc: &(u64, u64)) -> f64 {
            acc.0 as f64 / acc.1 as f64
        }
        fn merge(&self, a: (u64, u64), b: (u64, u64)) -> Option<(u64, u64)> {
            Some((a.0 + b.0, a.1 + b.1))
        }
    }

    #[test]
    fn aggregating_state_semantics() {
        use Op::*;
        let mut be = backend();
        let avg = be.get_aggregating_state(&AggregatingStateDescriptor::new("avg", Average)).unwrap();
        let table: Vec<(Op<Option<u32>>, Option<f64>)> = vec![
            (Key(1), None),
            (Do(Some(2)), Some(2.0)),
            (Do(Some(4)), Some(3.0)),
            (Key(2), None),
            (Do(Some(10)), Some(10.0)),
            (Ns(3), None),
            (Do(Some(1)), Some(1.0)),
            (Void, Some(10.0)),
            (Do(None), None),
            (Key(1), Some(3.0)),
            (Key(2), None),
            (Ns(3), Some(1.0)),
        ];
        for (step, (op, want)) in table.into_iter().enumerate() {
            match op {
                Key(k) => be.set_current_key(&k),
                Ns(n) => be.set_current_namespace(&n),
                Void => be.set_void_namespace(),
                Do(Some(v)) => avg.add(&mut be, v),
                Do(None) => avg.clear(&mut be),
            }
            assert_eq!(avg.get(&be), want, "step {step}");
        }
        assert_eq!(Average.merge((1, 1), (5, 3)), Some((6, 4)));
    }

    #[test]
    fn states_of_different_kinds_do_not_see_each_other() {
        let mut be = backend();
        let v = be.get_state(&ValueStateDescriptor::<u32>::new("a")).unwrap();
        let l = be.get_list_state(&ListStateDescriptor::<u32>::new("b")).unwrap();
        be.set_current_key(&7i32);
        v.update(&mut be, 1);
        l.add(&mut be, 2);
        assert_eq!((v.value(&be), l.get(&be)), (Some(1), vec![2]));
        l.clear(&mut be);
        assert_eq!((v.value(&be), l.get(&be)), (Some(1), vec![]));
        assert!(matches!(
            be.get_list_state(&ListStateDescriptor::<u32>::new("a")),
            Err(StateError::KindMismatch { existing: StateKind::Value, requested: StateKind::List, .. })
        ));
    }
}
