//! The heap keyed state backend (Flink's `HeapKeyedStateBackend` with a `StateTable` of
//! per-key-group `CopyOnWriteStateMap`s): typed values in per-key-group hash tables behind `Arc`s,
//! keyed by the serialized `key ++ namespace` bytes of the current key.

use super::{StateData, StateError};
use crate::codec::{self, CodecError};
use crate::ids::KeyGroup;
use crate::key_groups::{key_group_for_key, Key, KeyGroupRange};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The kind of a keyed state (part of a state's identity: one name, one kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// A list per key and namespace.
    List,
    /// A sorted map per key and namespace.
    Map,
    /// One value per key and namespace, folded with a reduce function.
    Reducing,
    /// An accumulator per key and namespace, fed through an aggregate function.
    Aggregating,
}

/// One entry of a typed table: the value, inline, and where the key ends in the
/// `key ++ namespace` bytes it is stored under.
#[derive(Clone)]
pub(crate) struct Slot<T> {
    pub(crate) key_len: u32,
    pub(crate) value: T,
}

/// `key ++ namespace` bytes up to this length sit inline in a table's slot (a word of up to 15
/// bytes with its length byte, an `i64` key with a small namespace): a lookup compares them
/// without following a pointer to the heap. Longer ones are stored on the heap.
pub(crate) const TABLE_KEY_INLINE_BYTES: usize = 16;

/// The `key ++ namespace` bytes a table entry is stored under (hashes and compares as `[u8]`).
pub(crate) type TableKey = SmallVec<[u8; TABLE_KEY_INLINE_BYTES]>;

/// The entries of one state in one key group (Flink's `StateMap`), keyed by
/// `key bytes ++ namespace bytes`, values typed and inline.
pub(crate) type TypedTable<T> = FxHashMap<TableKey, Slot<T>>;

/// An entry as bytes: `(key ++ namespace, key length, value bytes)`.
pub(crate) type RawEntry = (Box<[u8]>, u32, Vec<u8>);

/// A [`TypedTable`] of any value type: what a key group holds per state. The typed access paths
/// downcast it once per access; snapshot, restore and `keys` use these methods.
pub(crate) trait Table: Any + Send + Sync {
    fn clone_box(&self) -> Box<dyn Table>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn len(&self) -> usize;
    fn contains(&self, composite: &[u8]) -> bool;
    fn remove(&mut self, composite: &[u8]);
    /// The key bytes of every entry (one per entry, so repeated across namespaces).
    fn key_bytes(&self) -> Vec<&[u8]>;
    /// Every entry with its value serialized.
    #[cfg(test)]
    fn encode(&self) -> Result<Vec<RawEntry>, CodecError>;
    /// The same entries as [`encode`](Self::encode) without an allocation per entry: each
    /// value's bytes are appended to `values`, and `(composite, key_len, values range)` to `out`.
    fn encode_into<'t>(&'t self, values: &mut Vec<u8>, out: &mut Vec<(&'t [u8], u32, std::ops::Range<usize>)>) -> Result<(), CodecError>;
}

impl<T: StateData> Table for TypedTable<T> {
    fn clone_box(&self) -> Box<dyn Table> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn len(&self) -> usize {
        FxHashMap::len(self)
    }
    fn contains(&self, composite: &[u8]) -> bool {
        self.contains_key(composite)
    }
    fn remove(&mut self, composite: &[u8]) {
        FxHashMap::remove(self, composite);
    }
    fn key_bytes(&self) -> Vec<&[u8]> {
        self.iter().map(|(composite, slot)| &composite[..slot.key_len as usize]).collect()
    }
    #[cfg(test)]
    fn encode(&self) -> Result<Vec<RawEntry>, CodecError> {
        self.iter().map(|(composite, slot)| Ok((Box::from(composite.as_slice()), slot.key_len, codec::to_bytes(&slot.value)?))).collect()
    }
    fn encode_into<'t>(&'t self, values: &mut Vec<u8>, out: &mut Vec<(&'t [u8], u32, std::ops::Range<usize>)>) -> Result<(), CodecError> {
        out.reserve(FxHashMap::len(self));
        for (composite, slot) in self.iter() {
            let start = values.len();
            codec::append_bytes(values, &slot.value)?;
            out.push((composite.as_slice(), slot.key_len, start..values.len()));
        }
        Ok(())
    }
}

impl Clone for Box<dyn Table> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Decodes entries into a table of the type captured at registration.
pub(crate) type DecodeTableFn = fn(&[RawEntry]) -> Result<Box<dyn Table>, CodecError>;

fn new_table<T: StateData>() -> Box<dyn Table> {
    Box::new(TypedTable::<T>::default())
}

fn decode_table<T: StateData>(entries: &[RawEntry]) -> Result<Box<dyn Table>, CodecError> {
    let mut table = TypedTable::<T>::default();
    table.reserve(entries.len());
    for (composite, key_len, bytes) in entries {
        table.insert(TableKey::from_slice(composite), Slot { key_len: *key_len, value: codec::from_bytes::<T>(bytes)? });
    }
    Ok(Box::new(table))
}

/// What the backend knows about a registered state.
#[derive(Clone)]
pub(crate) struct StateMeta {
    pub(crate) name: String,
    pub(crate) kind: StateKind,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) decode_table: DecodeTableFn,
}

/// Index of a registered state in [`KeyedStateBackend`]'s registry and in each key group's tables.
pub(crate) type StateId = usize;

/// Restored entries of a state that has not been registered again yet: still bytes.
#[derive(Clone, Debug)]
pub(crate) struct PendingState {
    pub(crate) kind: StateKind,
    pub(crate) entries: Vec<RawEntry>,
}

/// A timer: ordered by timestamp, then key bytes, then namespace bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    pub(crate) timestamp: i64,
    pub(crate) key: Box<[u8]>,
    pub(crate) namespace: Box<[u8]>,
}

/// Everything one key group holds: the unit of copy-on-write, snapshot and restore.
#[derive(Clone, Default)]
pub(crate) struct KeyGroupState {
    /// Tables by [`StateId`]; grown and created lazily on the first write.
    pub(crate) tables: Vec<Option<Box<dyn Table>>>,
    /// Restored states not registered yet, by name.
    pub(crate) pending: BTreeMap<String, PendingState>,
    pub(crate) event_timers: BTreeSet<TimerKey>,
    pub(crate) processing_timers: BTreeSet<TimerKey>,
}

impl KeyGroupState {
    /// True when the key group holds no entry and no timer.
    pub(crate) fn is_empty(&self) -> bool {
        self.tables.iter().flatten().all(|t| t.len() == 0)
            && self.pending.is_empty()
            && self.event_timers.is_empty()
            && self.processing_timers.is_empty()
    }
}

/// The current key and namespace: key group slot, and `key ++ namespace` bytes.
#[derive(Default)]
pub(crate) struct Cursor {
    /// Index into `key_groups` (key group minus range start); `None` until a key is set.
    pub(crate) kg_index: Option<usize>,
    pub(crate) buf: Vec<u8>,
    pub(crate) key_len: usize,
}

/// Keyed state of one subtask, stored per key group (Flink's `HeapKeyedStateBackend`).
///
/// See the [module documentation](super) for the design. Not `Clone`: take a
/// [`snapshot`](Self::snapshot) instead.
pub struct KeyedStateBackend {
    pub(crate) max_parallelism: u32,
    pub(crate) range: KeyGroupRange,
    /// One slot per key group of `range`, in order.
    pub(crate) key_groups: Vec<Arc<KeyGroupState>>,
    pub(crate) metas: Vec<StateMeta>,
    pub(crate) by_name: BTreeMap<String, StateId>,
    pub(crate) cursor: Cursor,
    /// The current namespace's bytes (empty: the void namespace `()`).
    pub(crate) namespace: Vec<u8>,
    pub(crate) watermark: i64,
    pub(crate) processing_time_ms: u64,
    pub(crate) key_group_copies: u64,
}

impl std::fmt::Debug for KeyedStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStateBackend")
            .field("max_parallelism", &self.max_parallelism)
            .field("range", &self.range)
            .field("states", &self.by_name.keys().collect::<Vec<_>>())
            .field("current_key_group", &self.current_key_group())
            .finish_non_exhaustive()
    }
}

impl KeyedStateBackend {
    /// An empty backend for the key groups `key_group_range` of an operator with this max
    /// parallelism.
    ///
    /// Panics if `max_parallelism` is 0 or the range reaches beyond it (a configuration bug).
    pub fn new(max_parallelism: u32, key_group_range: KeyGroupRange) -> Self {
        assert!(max_parallelism > 0, "max parallelism must be at least 1");
        assert!(
            key_group_range.is_empty() || key_group_range.end < max_parallelism,
            "key group range {key_group_range:?} reaches beyond max parallelism {max_parallelism}"
        );
        let key_groups = (0..key_group_range.len()).map(|_| Arc::new(KeyGroupState::default())).collect();
        KeyedStateBackend {
            max_parallelism,
            range: key_group_range,
            key_groups,
            metas: Vec::new(),
            by_name: BTreeMap::new(),
            cursor: Cursor::default(),
            namespace: Vec::new(),
            watermark: i64::MIN,
            processing_time_ms: 0,
            key_group_copies: 0,
        }
    }

    /// The operator's max parallelism (the number of key groups).
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// The key groups this backend owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// Sets the current key; panics with a clear message if the key's key group is not in this
    /// backend's range (the record was routed to the wrong subtask). See
    /// [`try_set_current_key`](Self::try_set_current_key).
    pub fn set_current_key<K: Key>(&mut self, key: &K) {
        if let Err(e) = self.try_set_current_key(key) {
            panic!("set_current_key({key:?}): {e}");
        }
    }

    /// Sets the current key, or says why not. On error there is no current key.
    pub fn try_set_current_key<K: Key>(&mut self, key: &K) -> Result<(), StateError> {
        self.cursor.kg_index = None;
        let index = key_group_index(key, self.max_parallelism, self.range)?;
        self.cursor.key_len = encode_composite(key, &self.namespace, &mut self.cursor.buf)?;
        self.cursor.kg_index = Some(index);
        Ok(())
    }

    /// Sets the current key from its serialized bytes and key group (e.g. a fired timer's).
    pub(crate) fn set_current_key_bytes(&mut self, key_group: KeyGroup, key: &[u8], namespace: &[u8]) {
        assert!(self.range.contains(key_group), "key group {key_group} outside {:?}", self.range);
        self.namespace.clear();
        self.namespace.extend_from_slice(namespace);
        let buf = &mut self.cursor.buf;
        buf.clear();
        buf.extend_from_slice(key);
        self.cursor.key_len = key.len();
        buf.extend_from_slice(namespace);
        self.cursor.kg_index = Some((key_group.0 - self.range.start) as usize);
    }

    /// The current key, decoded as `K`; `None` if no key is set or it is not a `K`.
    pub fn current_key<K: Key>(&self) -> Option<K> {
        self.cursor.kg_index?;
        codec::from_bytes(&self.cursor.buf[..self.cursor.key_len]).ok()
    }

    /// The current key's key group.
    pub fn current_key_group(&self) -> Option<KeyGroup> {
        self.cursor.kg_index.map(|i| KeyGroup(self.range.start + i as u32))
    }

    /// Sets the current namespace (e.g. a window); panics if it cannot be serialized.
    pub fn set_current_namespace<N: Serialize + ?Sized>(&mut self, namespace: &N) {
        if let Err(e) = self.try_set_current_namespace(namespace) {
            panic!("set_current_namespace: {e}");
        }
    }

    /// Sets the current namespace, or says why not (then the namespace is the void namespace).
    pub fn try_set_current_namespace<N: Serialize + ?Sized>(&mut self, namespace: &N) -> Result<(), StateError> {
        self.namespace.clear();
        let result = bincode::serde::encode_into_std_write(namespace, &mut self.namespace, codec::config())
            .map(|_| ())
            .map_err(|e| StateError::Encode(CodecError::Encode(e.to_string())));
        if result.is_err() {
            self.namespace.clear();
        }
        self.cursor.buf.truncate(self.cursor.key_len);
        self.cursor.buf.extend_from_slice(&self.namespace);
        result
    }

    /// Back to the default, void namespace `()` (what keyed state outside windows uses).
    pub fn set_void_namespace(&mut self) {
        self.namespace.clear();
        self.cursor.buf.truncate(self.cursor.key_len);
    }

    /// The current namespace's bytes (empty for the void namespace).
    pub fn current_namespace_bytes(&self) -> &[u8] {
        &self.namespace
    }

    /// Every key with an entry in the named state (any namespace), sorted and distinct
    /// (Flink's `getKeys`); empty for an unknown name. Panics if a stored key is not a `K`.
    pub fn keys<K: Key>(&self, state_name: &str) -> Vec<K> {
        match self.try_keys(state_name) {
            Ok(keys) => keys,
            Err(e) => panic!("keys({state_name:?}): {e}"),
        }
    }

    /// [`keys`](Self::keys), with a typed error for keys that are not `K`s.
    pub fn try_keys<K: Key>(&self, state_name: &str) -> Result<Vec<K>, StateError> {
        let id = self.by_name.get(state_name).copied();
        let mut keys = BTreeSet::new();
        let decode = |bytes: &[u8]| codec::from_bytes::<K>(bytes).map_err(StateError::KeyDecode);
        for kg in &self.key_groups {
            if let Some(table) = id.and_then(|id| kg.tables.get(id)).and_then(Option::as_deref) {
                for key in table.key_bytes() {
                    keys.insert(decode(key)?);
                }
            }
            if let Some(pending) = kg.pending.get(state_name) {
                for (composite, key_len, _) in &pending.entries {
                    keys.insert(decode(&composite[..*key_len as usize])?);
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Names of the registered states, sorted.
    pub fn state_names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// How many key groups were copied because a write hit a key group shared with a snapshot
    /// (the cost of copy-on-write).
    pub fn key_group_copies(&self) -> u64 {
        self.key_group_copies
    }

    /// Registers a state (or returns the id it already has). Restored entries of that name are
    /// decoded now; all of them must decode, or nothing changes.
    pub(crate) fn register<T: StateData>(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        let type_name = std::any::type_name::<T>();
        if let Some(&id) = self.by_name.get(name) {
            let meta = &self.metas[id];
            if meta.kind != kind {
                return Err(StateError::KindMismatch { name: name.into(), existing: meta.kind, requested: kind });
            }
            if meta.type_id != TypeId::of::<T>() {
                return Err(StateError::TypeMismatch { name: name.into(), existing: meta.type_name, requested: type_name });
            }
            return Ok(id);
        }
        let id = self.metas.len();
        let mut staged = Vec::new();
        for (index, kg) in self.key_groups.iter().enumerate() {
            let Some(pending) = kg.pending.get(name) else { continue };
            if pending.kind != kind {
                return Err(StateError::KindMismatch { name: name.into(), existing: pending.kind, requested: kind });
            }
            let table = decode_table::<T>(&pending.entries).map_err(|source| StateError::RestoredValueDecode {
                name: name.into(),
                key_group: KeyGroup(self.range.start + index as u32),
                type_name,
                source,
            })?;
            staged.push((index, table));
        }
        self.metas.push(StateMeta {
            name: name.into(),
            kind,
            type_id: TypeId::of::<T>(),
            type_name,
            decode_table: decode_table::<T>,
        });
        self.by_name.insert(name.into(), id);
        for (index, table) in staged {
            let kg = self.key_group_mut(index);
            kg.pending.remove(name);
            if kg.tables.len() <= id {
                kg.tables.resize_with(id + 1, || None);
            }
            kg.tables[id] = Some(table);
        }
        Ok(id)
    }

    /// The key group at `index`, unshared (copied first if a snapshot still holds it).
    pub(crate) fn key_group_mut(&mut self, index: usize) -> &mut KeyGroupState {
        unshare(&mut self.key_groups[index], &mut self.key_group_copies)
    }

    fn current_index(&self) -> usize {
        match self.cursor.kg_index {
            Some(i) => i,
            None => panic!("no current key: call set_current_key before accessing keyed state"),
        }
    }

    fn check_handle<T: 'static>(&self, id: StateId) {
        assert!(
            self.metas.get(id).is_some_and(|m| m.type_id == TypeId::of::<T>()),
            "a state handle was used with a backend that did not register it"
        );
    }

    /// The current key group's table of state `id`, if it has one.
    fn table<T: 'static>(&self, id: StateId) -> Option<&TypedTable<T>> {
        let kg = &self.key_groups[self.current_index()];
        kg.tables.get(id)?.as_deref().map(downcast_table::<T>)
    }

    /// The current key's value in state `id`, if any.
    pub(crate) fn get<T: 'static>(&self, id: StateId) -> Option<&T> {
        self.table::<T>(id)?.get(&self.cursor.buf[..]).map(|slot| &slot.value)
    }

    /// The current key's value in state `id`, mutable, if any. Copies the key group only if it
    /// is shared with a snapshot *and* the entry exists.
    pub(crate) fn get_mut<T: 'static>(&mut self, id: StateId) -> Option<&mut T> {
        let index = self.current_index();
        if Arc::get_mut(&mut self.key_groups[index]).is_none() {
            // Shared with a snapshot: copy only if there is something to change.
            self.get::<T>(id)?;
        }
        let kg = unshare(&mut self.key_groups[index], &mut self.key_group_copies);
        let table = downcast_table_mut::<T>(kg.tables.get_mut(id)?.as_deref_mut()?);
        table.get_mut(&self.cursor.buf[..]).map(|slot| &mut slot.value)
    }

    /// The current key's table of state `id` (unshared, created as needed), with the current
    /// `key ++ namespace` bytes and key length: the borrows split for the write paths.
    fn current_table_mut<T: StateData>(&mut self, id: StateId) -> (&mut TypedTable<T>, &[u8], u32) {
        self.check_handle::<T>(id);
        let index = self.current_index();
        let kg = unshare(&mut self.key_groups[index], &mut self.key_group_copies);
        (typed_table_mut::<T>(kg, id), &self.cursor.buf[..], self.cursor.key_len as u32)
    }

    /// The current key's value in state `id`, inserted with `init` if absent (two lookups on a
    /// hit: prefer [`update_with`](Self::update_with) on hot paths).
    pub(crate) fn get_or_insert_with<T: StateData>(&mut self, id: StateId, init: impl FnOnce() -> T) -> &mut T {
        let (table, buf, key_len) = self.current_table_mut::<T>(id);
        if !table.contains_key(buf) {
            table.insert(TableKey::from_slice(buf), Slot { key_len, value: init() });
        }
        &mut table.get_mut(buf).expect("present or just inserted").value
    }

    /// Applies `f` to the current key's value in state `id`, inserting `init()` first if absent:
    /// one lookup on a hit, no allocation.
    pub(crate) fn update_with<T: StateData, R>(
        &mut self,
        id: StateId,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let (table, buf, key_len) = self.current_table_mut::<T>(id);
        upsert(table, buf, key_len, init, f)
    }

    /// Sets the current key's value in state `id`: one lookup, no allocation on a hit.
    pub(crate) fn put<T: StateData>(&mut self, id: StateId, value: T) {
        let (table, buf, key_len) = self.current_table_mut::<T>(id);
        match table.get_mut(buf) {
            Some(slot) => slot.value = value,
            None => {
                table.insert(TableKey::from_slice(buf), Slot { key_len, value });
            }
        }
    }

    /// Removes the current key's entry in state `id`; no copy if there is none.
    pub(crate) fn remove(&mut self, id: StateId) {
        let index = self.current_index();
        let buf = &self.cursor.buf[..];
        let present = self.key_groups[index].tables.get(id).and_then(Option::as_deref).is_some_and(|t| t.contains(buf));
        if present {
            let kg = unshare(&mut self.key_groups[index], &mut self.key_group_copies);
            if let Some(table) = kg.tables[id].as_deref_mut() {
                table.remove(buf);
            }
        }
    }

    /// The current key and namespace bytes, split.
    pub(crate) fn current_key_and_namespace(&self) -> (usize, &[u8], &[u8]) {
        let index = self.current_index();
        let (key, namespace) = self.cursor.buf.split_at(self.cursor.key_len);
        (index, key, namespace)
    }
}

/// Read-modify-writes of one value state for a run of keys (a batch of records): what
/// `set_current_key` + `update_with` do per record, with the per-batch work done once — each
/// key group is unshared (copy-on-write) and its table resolved the first time the batch touches
/// it, not per record — and the key borrowed, not set as the backend's current key per record.
/// When it is dropped, the backend's current key is the last key updated (as after the same
/// records one by one). Obtained from [`ValueState::batch`](super::ValueState::batch).
pub struct ValueBatch<'b, V> {
    id: StateId,
    max_parallelism: u32,
    range: KeyGroupRange,
    registered: bool,
    namespace: &'b [u8],
    cursor: &'b mut Cursor,
    copies: &'b mut u64,
    /// Key groups not touched yet in this batch.
    untouched: Vec<Option<&'b mut Arc<KeyGroupState>>>,
    /// Tables of the key groups touched so far.
    tables: Vec<Option<&'b mut TypedTable<V>>>,
    /// `key ++ namespace` of the current record, and the key's length.
    buf: Vec<u8>,
    key_len: usize,
    /// What the backend's current key becomes when the batch ends: `None` while no key was
    /// given; then the last key's key group index, or `Some(None)` (no current key) after a key
    /// that failed, as `try_set_current_key` leaves it.
    last: Option<Option<usize>>,
}

impl<'b, V: StateData> ValueBatch<'b, V> {
    pub(crate) fn new(backend: &'b mut KeyedStateBackend, id: StateId) -> Self {
        let registered = backend.metas.get(id).is_some_and(|m| m.type_id == TypeId::of::<V>());
        let KeyedStateBackend { max_parallelism, range, key_groups, cursor, namespace, key_group_copies, .. } = backend;
        let tables = key_groups.iter().map(|_| None).collect();
        ValueBatch {
            id,
            max_parallelism: *max_parallelism,
            range: *range,
            registered,
            namespace,
            cursor,
            copies: key_group_copies,
            untouched: key_groups.iter_mut().map(Some).collect(),
            tables,
            buf: Vec::new(),
            key_len: 0,
            last: None,
        }
    }

    /// Applies `f` to `key`'s value, set to `init()` first if absent, and returns what `f`
    /// returns; an error (and nothing changed) if `key`'s key group is not this backend's.
    pub fn update_with<K: Key, R>(&mut self, key: &K, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> Result<R, StateError> {
        self.last = Some(None);
        let index = key_group_index(key, self.max_parallelism, self.range)?;
        self.key_len = encode_composite(key, self.namespace, &mut self.buf)?;
        self.last = Some(Some(index));
        if self.tables[index].is_none() {
            assert!(self.registered, "a state handle was used with a backend that did not register it");
            let slot = self.untouched[index].take().expect("a key group's table is resolved once");
            self.tables[index] = Some(typed_table_mut::<V>(unshare(slot, self.copies), self.id));
        }
        let table = self.tables[index].as_deref_mut().expect("resolved above");
        Ok(upsert(table, &self.buf, self.key_len as u32, init, f))
    }
}

impl<V> Drop for ValueBatch<'_, V> {
    fn drop(&mut self) {
        match self.last {
            None => {}
            Some(None) => self.cursor.kg_index = None,
            Some(Some(index)) => {
                self.cursor.buf.clear();
                self.cursor.buf.extend_from_slice(&self.buf);
                self.cursor.key_len = self.key_len;
                self.cursor.kg_index = Some(index);
            }
        }
    }
}

/// `key`'s key group, as an index into a backend's key groups for `range`; an error if the key
/// group lies outside `range` (the record was routed to the wrong subtask).
fn key_group_index<K: Key>(key: &K, max_parallelism: u32, range: KeyGroupRange) -> Result<usize, StateError> {
    let key_group = key_group_for_key(key, max_parallelism);
    if !range.contains(key_group) {
        return Err(StateError::KeyGroupOutOfRange { key_group, range });
    }
    Ok((key_group.0 - range.start) as usize)
}

/// Writes `key ++ namespace` into the reused `buf` (the key's bytes are exactly
/// `codec::to_bytes(key)`); returns the key's length.
fn encode_composite<K: Key>(key: &K, namespace: &[u8], buf: &mut Vec<u8>) -> Result<usize, StateError> {
    buf.clear();
    key.encode_into(buf).map_err(StateError::Encode)?;
    let key_len = buf.len();
    buf.extend_from_slice(namespace);
    Ok(key_len)
}

/// State `id`'s table in `kg`, created empty on first use.
fn typed_table_mut<T: StateData>(kg: &mut KeyGroupState, id: StateId) -> &mut TypedTable<T> {
    if kg.tables.len() <= id {
        kg.tables.resize_with(id + 1, || None);
    }
    downcast_table_mut::<T>(&mut **kg.tables[id].get_or_insert_with(new_table::<T>))
}

/// Applies `f` to the entry under `composite`, inserting `init()` first if absent: one lookup on
/// a hit, no allocation.
fn upsert<T, R>(table: &mut TypedTable<T>, composite: &[u8], key_len: u32, init: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
    if let Some(slot) = table.get_mut(composite) {
        return f(&mut slot.value);
    }
    let mut value = init();
    let result = f(&mut value);
    table.insert(TableKey::from_slice(composite), Slot { key_len, value });
    result
}

/// The key group behind `slot`, unshared: copied first (and counted) if a snapshot holds it.
fn unshare<'a>(slot: &'a mut Arc<KeyGroupState>, copies: &mut u64) -> &'a mut KeyGroupState {
    // One atomic check on the hot path (`make_mut`); a copy shows as a new allocation.
    let before = Arc::as_ptr(slot);
    let state = Arc::make_mut(slot);
    if !std::ptr::eq(before, state) {
        *copies += 1;
    }
    state
}

fn downcast_table<T: 'static>(table: &dyn Table) -> &TypedTable<T> {
    match table.as_any().downcast_ref::<TypedTable<T>>() {
        Some(t) => t,
        None => panic!("a state handle was used with a backend that did not register it"),
    }
}

fn downcast_table_mut<T: 'static>(table: &mut dyn Table) -> &mut TypedTable<T> {
    match table.as_any_mut().downcast_mut::<TypedTable<T>>() {
        Some(t) => t,
        None => panic!("a state handle was used with a backend that did not register it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SubtaskIndex;
    use crate::state::ValueStateDescriptor;

    #[test]
    fn the_current_key_is_serialized_like_codec_to_bytes() {
        let mut backend = KeyedStateBackend::new(128, KeyGroupRange::all(128));
        for key in ["", "hello", "a much longer key with unicode ✓"] {
            let key = key.to_string();
            backend.set_current_key(&key);
            let (_, bytes, ns) = backend.current_key_and_namespace();
            assert_eq!(bytes, &codec::to_bytes(&key).unwrap()[..]);
            assert!(ns.is_empty());
            assert_eq!(backend.current_key::<String>(), Some(key.clone()));
            assert_eq!(backend.current_key_group(), Some(key_group_for_key(&key, 128)));
        }
    }

    #[test]
    fn keys_at_either_side_of_the_inline_length_are_stored_updated_and_removed_alike() {
        let mut backend = KeyedStateBackend::new(128, KeyGroupRange::all(128));
        let count = backend.get_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        // Composite lengths (a length byte + the word) around TABLE_KEY_INLINE_BYTES.
        let keys: Vec<String> = (TABLE_KEY_INLINE_BYTES - 3..TABLE_KEY_INLINE_BYTES + 3).map(|n| "k".repeat(n)).collect();
        for (round, want) in [(0, 1u64), (1, 2)] {
            for key in &keys {
                backend.set_current_key(key);
                let got = count.update_with(&mut backend, || 0, |n| {
                    *n += 1;
                    *n
                });
                assert_eq!(got, want, "round {round}, {} bytes", key.len());
            }
        }
        assert_eq!(backend.keys::<String>("count"), keys);
        backend.set_current_key(&keys[3]);
        count.clear(&mut backend);
        assert_eq!(count.value(&backend), None);
        backend.set_current_key(&keys[2]);
        assert_eq!(count.value(&backend), Some(2));
        assert_eq!(backend.keys::<String>("count").len(), keys.len() - 1);
    }

    #[test]
    fn a_key_outside_the_range_is_a_typed_error_and_leaves_no_current_key() {
        let range = KeyGroupRange::for_operator_index(128, 4, SubtaskIndex(0));
        let mut backend = KeyedStateBackend::new(128, range);
        let mine = (0..1000).find(|k: &i32| range.contains(key_group_for_key(k, 128))).unwrap();
        let foreign = (0..1000).find(|k: &i32| !range.contains(key_group_for_key(k, 128))).unwrap();
        backend.set_current_key(&mine);
        let err = backend.try_set_current_key(&foreign).unwrap_err();
        assert_eq!(err, StateError::KeyGroupOutOfRange { key_group: key_group_for_key(&foreign, 128), range });
        assert_eq!(backend.current_key_group(), None);
        assert_eq!(backend.current_key::<i32>(), None);
    }

    #[test]
    #[should_panic(expected = "routed to the wrong subtask")]
    fn set_current_key_panics_with_a_clear_message_for_a_foreign_key() {
        let range = KeyGroupRange::new(0, 0);
        let mut backend = KeyedStateBackend::new(128, range);
        let foreign = (0..1000).find(|k: &i32| !range.contains(key_group_for_key(k, 128))).unwrap();
        backend.set_current_key(&foreign);
    }

    #[test]
    #[should_panic(expected = "no current key")]
    fn accessing_state_without_a_current_key_panics_clearly() {
        let mut backend = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let state = backend.get_state(&ValueStateDescriptor::<u32>::new("v")).unwrap();
        state.value(&backend);
    }

    #[test]
    fn registering_a_name_twice_gives_the_same_state_and_a_conflict_is_typed() {
        let mut backend = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let a = backend.register::<u32>("s", StateKind::Value).unwrap();
        let b = backend.register::<u32>("s", StateKind::Value).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            backend.register::<u32>("s", StateKind::Reducing),
            Err(StateError::KindMismatch { name: "s".into(), existing: StateKind::Value, requested: StateKind::Reducing })
        );
        assert!(matches!(backend.register::<u64>("s", StateKind::Value), Err(StateError::TypeMismatch { .. })));
        assert_eq!(backend.state_names(), vec!["s"]);
    }

    #[test]
    fn keys_are_distinct_sorted_and_cover_every_namespace() {
        let mut backend = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        let state = backend.get_state(&ValueStateDescriptor::<u8>::new("v")).unwrap();
        for (key, ns) in [(5i64, 0u8), (3, 0), (5, 1), (-2, 7), (3, 1)] {
            backend.set_current_key(&key);
            backend.set_current_namespace(&ns);
            state.update(&mut backend, ns);
        }
        assert_eq!(backend.keys::<i64>("v"), vec![-2, 3, 5]);
        assert_eq!(backend.keys::<i64>("unknown"), Vec::<i64>::new());
        assert!(matches!(backend.try_keys::<String>("v"), Err(StateError::KeyDecode(_))));
    }

    /// Runs `ops` (`Some(key)`: count `key` once; `None`: take a snapshot and hold it until the
    /// end) with each key set as the current key, or in [`ValueBatch`]es between the snapshots;
    /// returns the counts seen (or the error), the final snapshot, the key group copies and
    /// the current key.
    #[allow(clippy::type_complexity)]
    fn count_words(batched: bool, range: KeyGroupRange, namespace: Option<u8>, ops: &[Option<String>]) -> (Vec<Result<u64, StateError>>, Vec<u8>, u64, Option<(KeyGroup, String)>) {
        let mut backend = KeyedStateBackend::new(16, range);
        let count = backend.get_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        if let Some(ns) = namespace {
            backend.set_current_namespace(&ns);
        }
        let mut held = Vec::new();
        let mut seen = Vec::new();
        for run in ops.split_inclusive(Option::is_none) {
            let keys = run.iter().flatten();
            if batched {
                let mut batch = count.batch(&mut backend);
                for key in keys {
                    seen.push(batch.update_with(key, || 0, |n| {
                        *n += 1;
                        *n
                    }));
                }
            } else {
                for key in keys {
                    seen.push(backend.try_set_current_key(key).map(|()| {
                        count.update_with(&mut backend, || 0, |n| {
                            *n += 1;
                            *n
                        })
                    }));
                }
            }
            if run.last().is_some_and(Option::is_none) {
                held.push(backend.snapshot(crate::ids::CheckpointId(held.len() as u64 + 1)));
            }
        }
        let blob = backend.snapshot(crate::ids::CheckpointId(99)).to_blob().unwrap().0;
        let current = backend.current_key_group().zip(backend.current_key::<String>());
        (seen, blob, backend.key_group_copies(), current)
    }

    #[test]
    fn a_value_batch_of_no_key_leaves_the_current_key_as_it_was() {
        let mut backend = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        let count = backend.get_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        backend.set_current_key(&"k".to_string());
        drop(count.batch(&mut backend));
        assert_eq!(backend.current_key::<String>(), Some("k".to_string()));
        assert_eq!(count.batch(&mut backend).update_with(&"k".to_string(), || 0, |n| *n), Ok(0));
        assert_eq!(count.value(&backend), Some(0));
    }

    proptest::proptest! {
        /// A batch of read-modify-writes is the same as setting each key and updating it: the
        /// same values seen, errors for foreign keys, entries, snapshot bytes, copy-on-write
        /// copies (snapshots held across batches) and current key afterwards.
        #[test]
        fn a_value_batch_updates_exactly_like_setting_each_key_in_turn(
            ops in proptest::collection::vec(proptest::option::weighted(0.9, "[a-e]{1,2}|[a-z]{15,20}"), 0..60),
            subtask in 0u32..3,
            namespace in proptest::option::of(0u8..3),
        ) {
            // Subtask 0..2 of 2 own half the key groups each; 2 stands for all of them.
            let range = if subtask < 2 { KeyGroupRange::for_operator_index(16, 2, SubtaskIndex(subtask)) } else { KeyGroupRange::all(16) };
            let one_by_one = count_words(false, range, namespace, &ops);
            let batched = count_words(true, range, namespace, &ops);
            proptest::prop_assert_eq!(batched, one_by_one);
        }
    }

    #[test]
    fn namespaces_switch_without_touching_the_key() {
        let mut backend = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        backend.set_current_key(&"k".to_string());
        backend.set_current_namespace(&(10i64, 20i64));
        assert_eq!(backend.current_namespace_bytes(), &codec::to_bytes(&(10i64, 20i64)).unwrap()[..]);
        backend.set_void_namespace();
        assert!(backend.current_namespace_bytes().is_empty());
        assert_eq!(backend.current_key::<String>(), Some("k".to_string()));
        // A namespace set before the key applies to the key set after.
        backend.set_current_namespace(&1u8);
        backend.set_current_key(&"j".to_string());
        let (_, key, ns) = backend.current_key_and_namespace();
        assert_eq!((key, ns), (&codec::to_bytes(&"j".to_string()).unwrap()[..], &[1u8][..]));
    }
}
