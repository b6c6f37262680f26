//! Operator (non-keyed) state: Flink's `DefaultOperatorStateBackend` with its list state and union
//! list state, and the `RoundRobinOperatorStateRepartitioner` that redistributes them on restore.
//!
//! - **List state** (`SPLIT_DISTRIBUTE`): on a restore with another parallelism, the items of every
//!   old subtask are concatenated in subtask order and new subtask `i` gets a contiguous share;
//!   shares differ by at most one, the first `total % n` subtasks get one more. With the same
//!   parallelism every subtask keeps exactly its own items (as in Flink).
//! - **Union list state** (`UNION`): every new subtask gets every item of every old subtask, in
//!   subtask order.
//!
//! A snapshot is `codec::seal(*b"FLOS", 1, bincode([{ name, mode, items: [bytes] }]))`, states
//! sorted by name, every item serialized on its own so that [`redistribute`] can split lists
//! without knowing their types. Restored items stay bytes until their state is registered.
//! Source offsets live here.

use super::snapshot::SnapshotError;
use super::{StateData, StateError};
use crate::codec::{self, CodecError};
use crate::ids::KeyGroup;
use serde::{Deserialize, Serialize};
use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// Magic of a sealed operator-state snapshot.
pub const OPERATOR_STATE_MAGIC: [u8; 4] = *b"FLOS";
/// Format version of an operator-state snapshot this build writes and reads.
pub const OPERATOR_STATE_FORMAT_VERSION: u16 = 1;

/// How a list state is redistributed on restore (Flink's `OperatorStateHandle.Mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OperatorStateMode {
    /// Split evenly across the new subtasks (`getListState`).
    SplitDistribute,
    /// Every new subtask gets everything (`getUnionListState`).
    Union,
}

/// A typed list kept in the store.
trait OperatorList: Any + Send + Sync {
    fn encode_items(&self) -> Result<Vec<Vec<u8>>, CodecError>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<V: StateData> OperatorList for Vec<V> {
    fn encode_items(&self) -> Result<Vec<Vec<u8>>, CodecError> {
        self.iter().map(codec::to_bytes).collect()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Decodes restored items as the registered element type.
type DecodeListFn = fn(&[Vec<u8>]) -> Result<Box<dyn OperatorList>, CodecError>;

fn decode_list<V: StateData>(items: &[Vec<u8>]) -> Result<Box<dyn OperatorList>, CodecError> {
    let values = items.iter().map(|bytes| codec::from_bytes::<V>(bytes)).collect::<Result<Vec<V>, _>>()?;
    Ok(Box::new(values))
}

enum Stored {
    Typed { type_id: TypeId, type_name: &'static str, decode: DecodeListFn, list: Box<dyn OperatorList> },
    /// Restored, not registered yet.
    Bytes(Vec<Vec<u8>>),
}

struct OperatorStateEntry {
    mode: OperatorStateMode,
    stored: Stored,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct OperatorStateBody {
    name: String,
    mode: OperatorStateMode,
    items: Vec<Vec<u8>>,
}

/// The operator state of one subtask: named lists (Flink's `OperatorStateStore`).
#[derive(Default)]
pub struct OperatorStateStore {
    states: BTreeMap<String, OperatorStateEntry>,
    restored: bool,
}

impl std::fmt::Debug for OperatorStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorStateStore")
            .field("states", &self.states.iter().map(|(n, e)| (n, e.mode)).collect::<Vec<_>>())
            .field("restored", &self.restored)
            .finish()
    }
}

/// A handle to one named operator list state.
pub struct OperatorListState<V> {
    name: String,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for OperatorListState<V> {
    fn clone(&self) -> Self {
        OperatorListState { name: self.name.clone(), _value: PhantomData }
    }
}

impl<V> std::fmt::Debug for OperatorListState<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorListState({:?})", self.name)
    }
}

impl<V: StateData> OperatorListState<V> {
    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn list<'s>(&self, store: &'s OperatorStateStore) -> &'s Vec<V> {
        match store.states.get(&self.name).map(|e| &e.stored) {
            Some(Stored::Typed { list, .. }) => list.as_any().downcast_ref().expect("registered with this type"),
            _ => panic!("operator state {:?} was not registered in this store", self.name),
        }
    }

    fn list_mut<'s>(&self, store: &'s mut OperatorStateStore) -> &'s mut Vec<V> {
        match store.states.get_mut(&self.name).map(|e| &mut e.stored) {
            Some(Stored::Typed { list, .. }) => list.as_any_mut().downcast_mut().expect("registered with this type"),
            _ => panic!("operator state {:?} was not registered in this store", self.name),
        }
    }

    /// The items (a clone).
    pub fn get(&self, store: &OperatorStateStore) -> Vec<V> {
        self.list(store).clone()
    }

    /// The items, borrowed.
    pub fn get_ref<'s>(&self, store: &'s OperatorStateStore) -> &'s [V] {
        self.list(store)
    }

    /// Appends one item.
    pub fn add(&self, store: &mut OperatorStateStore, value: V) {
        self.list_mut(store).push(value);
    }

    /// Appends every item.
    pub fn add_all(&self, store: &mut OperatorStateStore, values: impl IntoIterator<Item = V>) {
        self.list_mut(store).extend(values);
    }

    /// Replaces the items.
    pub fn update(&self, store: &mut OperatorStateStore, values: Vec<V>) {
        *self.list_mut(store) = values;
    }

    /// Removes every item.
    pub fn clear(&self, store: &mut OperatorStateStore) {
        self.list_mut(store).clear();
    }
}

impl OperatorStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when this store was restored from a snapshot (Flink's `isRestored`).
    pub fn is_restored(&self) -> bool {
        self.restored
    }

    /// Names of every state (registered or restored), sorted.
    pub fn state_names(&self) -> Vec<&str> {
        self.states.keys().map(String::as_str).collect()
    }

    /// Registers (or finds) a list state split evenly on rescale.
    pub fn list_state<V: StateData>(&mut self, name: &str) -> Result<OperatorListState<V>, StateError> {
        self.register(name, OperatorStateMode::SplitDistribute)
    }

    /// Registers (or finds) a union list state: every subtask gets all items on restore.
    pub fn union_list_state<V: StateData>(&mut self, name: &str) -> Result<OperatorListState<V>, StateError> {
        self.register(name, OperatorStateMode::Union)
    }

    fn register<V: StateData>(&mut self, name: &str, mode: OperatorStateMode) -> Result<OperatorListState<V>, StateError> {
        let type_name = std::any::type_name::<Vec<V>>();
        let handle = OperatorListState { name: name.into(), _value: PhantomData };
        let Some(entry) = self.states.get_mut(name) else {
            let list: Box<dyn OperatorList> = Box::new(Vec::<V>::new());
            let stored = Stored::Typed { type_id: TypeId::of::<Vec<V>>(), type_name, decode: decode_list::<V>, list };
            self.states.insert(name.into(), OperatorStateEntry { mode, stored });
            return Ok(handle);
        };
        if entry.mode != mode {
            return Err(StateError::TypeMismatch {
                name: name.into(),
                existing: mode_name(entry.mode),
                requested: mode_name(mode),
            });
        }
        match &entry.stored {
            Stored::Typed { type_id, type_name: existing, .. } => {
                if *type_id != TypeId::of::<Vec<V>>() {
                    return Err(StateError::TypeMismatch { name: name.into(), existing, requested: type_name });
                }
            }
            Stored::Bytes(items) => {
                let list = decode_list::<V>(items).map_err(|source| StateError::RestoredValueDecode {
                    name: name.into(),
                    key_group: KeyGroup(0),
                    type_name: std::any::type_name::<V>(),
                    source,
                })?;
                entry.stored = Stored::Typed { type_id: TypeId::of::<Vec<V>>(), type_name, decode: decode_list::<V>, list };
            }
        }
        Ok(handle)
    }

    /// The sealed snapshot of every state (registered or still restored bytes).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut bodies = Vec::with_capacity(self.states.len());
        for (name, entry) in &self.states {
            let items = match &entry.stored {
                Stored::Typed { list, .. } => {
                    list.encode_items().map_err(|source| SnapshotError::Encode { name: name.clone(), source })?
                }
                Stored::Bytes(items) => items.clone(),
            };
            bodies.push(OperatorStateBody { name: name.clone(), mode: entry.mode, items });
        }
        Ok(codec::seal_value(OPERATOR_STATE_MAGIC, OPERATOR_STATE_FORMAT_VERSION, &bodies)?)
    }

    /// Restores from one subtask's (redistributed) snapshot, replacing every state it names.
    /// Everything is checked (including that items of already registered states decode as their
    /// type) before anything changes.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut staged = Vec::new();
        for body in open(bytes)? {
            let stored = match self.states.get(&body.name) {
                Some(entry) if entry.mode != body.mode => return Err(SnapshotError::ModeMismatch(body.name)),
                Some(OperatorStateEntry { stored: Stored::Typed { type_id, type_name, decode, .. }, .. }) => {
                    let list = decode(&body.items).map_err(|source| SnapshotError::ValueDecode {
                        name: body.name.clone(),
                        key_group: KeyGroup(0),
                        type_name,
                        source,
                    })?;
                    Stored::Typed { type_id: *type_id, type_name, decode: *decode, list }
                }
                _ => Stored::Bytes(body.items),
            };
            staged.push((body.name, OperatorStateEntry { mode: body.mode, stored }));
        }
        self.states.extend(staged);
        self.restored = true;
        Ok(())
    }
}

fn mode_name(mode: OperatorStateMode) -> &'static str {
    match mode {
        OperatorStateMode::SplitDistribute => "split-distributed list state",
        OperatorStateMode::Union => "union list state",
    }
}

fn open(bytes: &[u8]) -> Result<Vec<OperatorStateBody>, SnapshotError> {
    let bodies: Vec<OperatorStateBody> = codec::open_value(OPERATOR_STATE_MAGIC, OPERATOR_STATE_FORMAT_VERSION, bytes)?;
    for pair in bodies.windows(2) {
        if pair[0].name >= pair[1].name {
            return Err(SnapshotError::Malformed(format!("operator state {:?} out of order or twice", pair[1].name)));
        }
    }
    Ok(bodies)
}

/// Redistributes operator state snapshots of `old.len()` subtasks to `new_parallelism` subtasks
/// (Flink's `RoundRobinOperatorStateRepartitioner`). Pure: bytes in, bytes out.
///
/// Every new subtask's snapshot names every state, possibly with no items. An empty `old` gives
/// empty snapshots.
pub fn redistribute(old: &[Vec<u8>], new_parallelism: u32) -> Result<Vec<Vec<u8>>, SnapshotError> {
    if new_parallelism == 0 {
        return Err(SnapshotError::ZeroParallelism);
    }
    let n = new_parallelism as usize;
    let decoded = old.iter().map(|b| open(b)).collect::<Result<Vec<_>, _>>()?;
    // name -> (mode, items per old subtask)
    type ItemsPerSubtask = Vec<Vec<Vec<u8>>>;
    let mut by_name: BTreeMap<String, (OperatorStateMode, ItemsPerSubtask)> = BTreeMap::new();
    for (subtask, bodies) in decoded.into_iter().enumerate() {
        for body in bodies {
            let slot = by_name.entry(body.name.clone()).or_insert_with(|| (body.mode, vec![Vec::new(); old.len()]));
            if slot.0 != body.mode {
                return Err(SnapshotError::ModeMismatch(body.name));
            }
            slot.1[subtask] = body.items;
        }
    }
    let mut new: Vec<Vec<OperatorStateBody>> = vec![Vec::new(); n];
    for (name, (mode, per_old)) in by_name {
        let shares: Vec<Vec<Vec<u8>>> = match mode {
            OperatorStateMode::Union => vec![per_old.concat(); n],
            OperatorStateMode::SplitDistribute if per_old.len() == n => per_old,
            OperatorStateMode::SplitDistribute => {
                let all = per_old.concat();
                let (base, extra) = (all.len() / n, all.len() % n);
                let mut items = all.into_iter();
                (0..n).map(|i| items.by_ref().take(base + usize::from(i < extra)).collect()).collect()
            }
        };
        debug_assert_eq!(shares.len(), n);
        for (i, items) in shares.into_iter().enumerate() {
            new[i].push(OperatorStateBody { name: name.clone(), mode, items });
        }
    }
    new.iter()
        .map(|bodies| Ok(codec::seal_value(OPERATOR_STATE_MAGIC, OPERATOR_STATE_FORMAT_VERSION, bodies)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store_with(split: &[u32], union: &[&str]) -> Vec<u8> {
        let mut store = OperatorStateStore::new();
        let s = store.list_state::<u32>("offsets").unwrap();
        s.add_all(&mut store, split.iter().copied());
        let u = store.union_list_state::<String>("names").unwrap();
        u.update(&mut store, union.iter().map(|x| x.to_string()).collect());
        store.snapshot().unwrap()
    }

    fn read(bytes: &[u8]) -> (Vec<u32>, Vec<String>) {
        let mut store = OperatorStateStore::new();
        store.restore(bytes).unwrap();
        assert!(store.is_restored());
        let s = store.list_state::<u32>("offsets").unwrap();
        let u = store.union_list_state::<String>("names").unwrap();
        (s.get(&store), u.get(&store))
    }

    #[test]
    fn list_state_operations() {
        let mut store = OperatorStateStore::new();
        let s = store.list_state::<u8>("l").unwrap();
        let table: &[(&str, Vec<u8>)] = &[("add 1", vec![1]), ("add_all 2 3", vec![1, 2, 3]), ("update 9", vec![9]), ("clear", vec![])];
        for (step, want) in table {
            match *step {
                "add 1" => s.add(&mut store, 1),
                "add_all 2 3" => s.add_all(&mut store, [2, 3]),
                "update 9" => s.update(&mut store, vec![9]),
                "clear" => s.clear(&mut store),
                _ => unreachable!(),
            }
            assert_eq!(&s.get(&store), want, "{step}");
            assert_eq!(s.get_ref(&store), &want[..], "{step}");
        }
        assert!(!store.is_restored());
        assert!(matches!(store.union_list_state::<u8>("l"), Err(StateError::TypeMismatch { .. })));
        assert!(matches!(store.list_state::<u16>("l"), Err(StateError::TypeMismatch { .. })));
        assert_eq!(store.state_names(), vec!["l"]);
    }

    #[test]
    fn redistribution_splits_lists_and_unions_unions() {
        let old = vec![store_with(&[1, 2, 3], &["a"]), store_with(&[4, 5], &["b", "c"]), store_with(&[], &[])];
        let abc = || vec!["a".to_string(), "b".into(), "c".into()];
        // (new parallelism, split shares)
        let table: &[(u32, &[&[u32]])] = &[
            (1, &[&[1, 2, 3, 4, 5]]),
            (2, &[&[1, 2, 3], &[4, 5]]),
            (3, &[&[1, 2, 3], &[4, 5], &[]]), // same parallelism: every subtask keeps its own
            (4, &[&[1, 2], &[3], &[4], &[5]]),
            (7, &[&[1], &[2], &[3], &[4], &[5], &[], &[]]),
        ];
        for (q, shares) in table {
            let new = redistribute(&old, *q).unwrap();
            assert_eq!(new.len(), *q as usize);
            for (i, bytes) in new.iter().enumerate() {
                let (split, union) = read(bytes);
                assert_eq!(split, shares[i].to_vec(), "q={q} subtask {i}");
                assert_eq!(union, abc(), "q={q} subtask {i}");
            }
        }
        assert_eq!(redistribute(&old, 0), Err(SnapshotError::ZeroParallelism));
        assert_eq!(redistribute(&[], 2).unwrap().len(), 2);
    }

    #[test]
    fn a_name_with_two_modes_is_a_typed_error() {
        let mut a = OperatorStateStore::new();
        a.list_state::<u8>("x").unwrap();
        let mut b = OperatorStateStore::new();
        b.union_list_state::<u8>("x").unwrap();
        let old = [a.snapshot().unwrap(), b.snapshot().unwrap()];
        assert_eq!(redistribute(&old, 2), Err(SnapshotError::ModeMismatch("x".into())));
        assert_eq!(a.restore(&old[1]), Err(SnapshotError::ModeMismatch("x".into())));
    }

    #[test]
    fn restore_into_registered_state_checks_types_first() {
        let bytes = store_with(&[7, 8], &["n"]);
        let mut store = OperatorStateStore::new();
        let s = store.list_state::<u32>("offsets").unwrap();
        s.add(&mut store, 1);
        store.restore(&bytes).unwrap();
        assert_eq!(s.get(&store), vec![7, 8], "restore replaces");
        let mut wrong = OperatorStateStore::new();
        let w = wrong.union_list_state::<u64>("names").unwrap();
        w.add(&mut wrong, 3);
        assert!(matches!(wrong.restore(&bytes), Err(SnapshotError::ValueDecode { .. })));
        assert_eq!(w.get(&wrong), vec![3], "nothing changed");
        assert!(!wrong.is_restored());
        // Restored but unregistered: registering with the wrong type is a typed error, and the
        // bytes survive the next snapshot.
        let mut lazy = OperatorStateStore::new();
        lazy.restore(&bytes).unwrap();
        assert!(matches!(lazy.union_list_state::<u64>("names"), Err(StateError::RestoredValueDecode { .. })));
        let again = lazy.snapshot().unwrap();
        assert_eq!(read(&again), (vec![7, 8], vec!["n".to_string()]));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Split lists keep the multiset and split evenly (±1) on rescale; unions go everywhere.
        #[test]
        fn redistribution_keeps_every_item(
            old_lists in proptest::collection::vec(proptest::collection::vec(any::<u32>(), 0..20), 1..8),
            q in 1u32..12,
        ) {
            let old: Vec<Vec<u8>> = old_lists.iter().enumerate().map(|(i, items)| {
                let mut store = OperatorStateStore::new();
                store.list_state::<u32>("split").unwrap().update(&mut store, items.clone());
                store.union_list_state::<(usize, u32)>("union").unwrap()
                    .update(&mut store, items.iter().map(|&x| (i, x)).collect());
                store.snapshot().unwrap()
            }).collect();
            let new = redistribute(&old, q).unwrap();
            prop_assert_eq!(new.len(), q as usize);
            let all: Vec<u32> = old_lists.concat();
            let union_all: Vec<(usize, u32)> =
                old_lists.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |&x| (i, x))).collect();
            let mut got = Vec::new();
            for bytes in &new {
                let mut store = OperatorStateStore::new();
                store.restore(bytes).unwrap();
                let split = store.list_state::<u32>("split").unwrap().get(&store);
                if q as usize != old.len() {
                    let (lo, hi) = (all.len() / q as usize, all.len().div_ceil(q as usize));
                    prop_assert!(lo <= split.len() && split.len() <= hi);
                }
                got.extend(split);
                prop_assert_eq!(store.union_list_state::<(usize, u32)>("union").unwrap().get(&store), union_all.clone());
            }
            // Concatenated in new-subtask order, the shares are the old items in old-subtask order.
            prop_assert_eq!(got, all);
        }

        /// A damaged operator-state snapshot is a typed error.
        #[test]
        fn a_damaged_operator_snapshot_is_a_typed_error(
            items in proptest::collection::vec(any::<u32>(), 0..10),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            truncate in any::<bool>(),
        ) {
            let mut store = OperatorStateStore::new();
            store.list_state::<u32>("s").unwrap().update(&mut store, items);
            let bytes = store.snapshot().unwrap();
            let at = position.index(bytes.len());
            let damaged = if truncate { bytes[..at].to_vec() } else { let mut d = bytes.clone(); d[at] ^= flip; d };
            let mut fresh = OperatorStateStore::new();
            prop_assert!(matches!(fresh.restore(&damaged), Err(SnapshotError::Codec(_))));
            prop_assert!(matches!(redistribute(&[damaged], 2), Err(SnapshotError::Codec(_))));
        }
    }
}
