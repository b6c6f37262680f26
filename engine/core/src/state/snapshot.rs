//! Keyed snapshots per key group, and restore from any set of key groups (Flink's
//! `HeapSnapshotStrategy` / `HeapRestoreOperation` with `KeyGroupRangeOffsets`).
//!
//! [`KeyedStateBackend::snapshot`] is the synchronous part: it captures the key groups' `Arc`s
//! (copy-on-write, see [the module documentation](super)). Writing bytes is the asynchronous part
//! and happens from the [`KeyedSnapshot`], which is `Send` and independent of the backend.
//!
//! # Format of one key group (format version 1)
//!
//! `codec::seal(*b"FLKG", 1, bincode(body))` — magic, version, length and crc32 — where the body is
//!
//! ```text
//! key_group: u32
//! states: [ { name, kind, entries: [ { key, namespace, value } ] } ]   sorted by name, then by (key, namespace)
//! event_timers:      [ { timestamp, key, namespace } ]                 sorted
//! processing_timers: [ { timestamp, key, namespace } ]                 sorted
//! ```
//!
//! Keys and namespaces are bincode bytes; values are the bincode bytes of the state's stored type
//! (`V` for value and reducing state, `Vec<V>` for list state, `BTreeMap<UK, UV>` for map state,
//! the accumulator for aggregating state). The same state always gives the same bytes.
//!
//! The single-blob form ([`KeyedSnapshot::to_blob`]) concatenates the sealed key-group blobs and
//! returns a [`KeyGroupOffset`] index, so any key group can be sliced out of one subtask blob.

use super::backend::{KeyGroupState, KeyedStateBackend, PendingState, RawEntry, StateMeta, TimerKey};
use super::StateKind;
use crate::codec::{self, CodecError};
use crate::ids::{CheckpointId, KeyGroup};
use crate::key_groups::KeyGroupRange;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Magic of a sealed key-group blob.
pub const KEY_GROUP_MAGIC: [u8; 4] = *b"FLKG";
/// Format version of a key-group blob this build writes and reads.
pub const KEY_GROUP_FORMAT_VERSION: u16 = 1;

/// Why a snapshot could not be written, read or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Corrupt, truncated or foreign bytes (bad magic, version, length, checksum or body).
    #[error("unreadable snapshot: {0}")]
    Codec(#[from] CodecError),
    /// A value could not be serialized.
    #[error("cannot serialize state {name:?}: {source}")]
    Encode {
        /// The state's name.
        name: String,
        /// The encoder's complaint.
        source: CodecError,
    },
    /// The key group is not part of this snapshot's range.
    #[error("key group {key_group} is not in the snapshot's range {range:?}")]
    KeyGroupNotInSnapshot {
        /// The key group asked for.
        key_group: KeyGroup,
        /// The snapshot's range.
        range: KeyGroupRange,
    },
    /// A blob names a key group at or above the max parallelism: it belongs to another job graph.
    #[error("key group {key_group} is not below max parallelism {max_parallelism}")]
    KeyGroupBeyondMaxParallelism {
        /// The key group in the blob.
        key_group: KeyGroup,
        /// The backend's max parallelism.
        max_parallelism: u32,
    },
    /// Two blobs of one restore carry the same key group.
    #[error("key group {0} appears twice in one restore")]
    DuplicateKeyGroup(KeyGroup),
    /// The backend already holds state in a key group being restored.
    #[error("key group {0} already holds state: restore into a fresh backend")]
    KeyGroupNotEmpty(KeyGroup),
    /// A restored state has another kind than the state registered under its name.
    #[error("state {name:?} is a {snapshot:?} state in the snapshot but registered as {registered:?}")]
    KindMismatch {
        /// The state's name.
        name: String,
        /// The kind in the snapshot.
        snapshot: StateKind,
        /// The kind registered.
        registered: StateKind,
    },
    /// A restored value does not decode as the registered state's type.
    #[error("value of state {name:?} in key group {key_group} does not decode as {type_name}: {source}")]
    ValueDecode {
        /// The state's name.
        name: String,
        /// The key group.
        key_group: KeyGroup,
        /// The registered type.
        type_name: &'static str,
        /// The decoder's complaint.
        source: CodecError,
    },
    /// A well-sealed body that breaks the format's rules (duplicate names or entries, ...).
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// Operator state redistribution to zero subtasks.
    #[error("cannot redistribute operator state to parallelism 0")]
    ZeroParallelism,
    /// Operator state of one name has different modes (split / union) across subtasks.
    #[error("operator state {0:?} is split-distributed in one subtask and union in another")]
    ModeMismatch(String),
}

/// Where one key group's sealed blob sits in a subtask blob (Flink's `KeyGroupRangeOffsets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupOffset {
    /// The key group.
    pub key_group: KeyGroup,
    /// Byte offset of its sealed blob.
    pub offset: u64,
    /// Length of its sealed blob.
    pub len: u64,
}

impl KeyGroupOffset {
    /// The key group's sealed blob inside `blob`, or `None` if the index does not fit the blob.
    pub fn slice<'b>(&self, blob: &'b [u8]) -> Option<&'b [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let len = usize::try_from(self.len).ok()?;
        blob.get(start..start.checked_add(len)?)
    }
}

/// What a restore did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Key groups restored into this backend.
    pub key_groups_restored: u32,
    /// Key groups skipped because they belong to another subtask's range.
    pub key_groups_skipped: u32,
    /// Entries restored (all states).
    pub entries_restored: u64,
    /// Timers restored (both domains).
    pub timers_restored: u64,
}

#[derive(Serialize, Deserialize)]
struct KeyGroupBody {
    key_group: u32,
    states: Vec<StateBody>,
    event_timers: Vec<TimerBody>,
    processing_timers: Vec<TimerBody>,
}

#[derive(Serialize, Deserialize)]
struct StateBody {
    name: String,
    kind: StateKind,
    entries: Vec<EntryBody>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct EntryBody {
    key: Vec<u8>,
    namespace: Vec<u8>,
    value: Vec<u8>,
}

/// [`KeyGroupBody`] borrowed from a snapshot's tables (what is written): the same fields, so the
/// same bytes (a `&str` and a `String`, a byte slice and a `Vec<u8>` serialize alike in bincode).
#[derive(Serialize)]
struct KeyGroupBodyRef<'a> {
    key_group: u32,
    states: Vec<StateBodyRef<'a>>,
    event_timers: Vec<TimerBodyRef<'a>>,
    processing_timers: Vec<TimerBodyRef<'a>>,
}

/// [`StateBody`], borrowed.
#[derive(Serialize)]
struct StateBodyRef<'a> {
    name: &'a str,
    kind: StateKind,
    entries: Vec<EntryRef<'a>>,
}

/// [`EntryBody`], borrowed; ordered as it is (field by field, bytes lexicographically).
#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct EntryRef<'a> {
    #[serde(serialize_with = "slice_as_bytes")]
    key: &'a [u8],
    #[serde(serialize_with = "slice_as_bytes")]
    namespace: &'a [u8],
    #[serde(serialize_with = "slice_as_bytes")]
    value: &'a [u8],
}

/// [`TimerBody`], borrowed.
#[derive(Serialize)]
struct TimerBodyRef<'a> {
    timestamp: i64,
    #[serde(serialize_with = "slice_as_bytes")]
    key: &'a [u8],
    #[serde(serialize_with = "slice_as_bytes")]
    namespace: &'a [u8],
}

/// A byte slice as one byte string: in floe's bincode the same bytes as a `Vec<u8>`'s sequence
/// (a varint length, then the bytes), copied at once.
/// A table entry as `Table::encode_into` gives it: the
/// composite key, the key's length, and the value's range in the shared value buffer.
type BorrowedEntry<'t> = (&'t [u8], u32, std::ops::Range<usize>);

/// A composite key's `(key, namespace)` halves.
fn split(composite: &[u8], key_len: u32) -> (&[u8], &[u8]) {
    composite.split_at((key_len as usize).min(composite.len()))
}

fn slice_as_bytes<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    codec::byte_buf::serialize(bytes, serializer)
}

#[derive(Serialize, Deserialize)]
struct TimerBody {
    timestamp: i64,
    key: Vec<u8>,
    namespace: Vec<u8>,
}

/// The captured keyed state of one subtask at one checkpoint: shares every key group with the
/// backend until the backend writes to it. Write it (off the processing path) with
/// [`write_key_group`](Self::write_key_group), [`into_key_group_bytes`](Self::into_key_group_bytes)
/// or [`to_blob`](Self::to_blob).
#[derive(Clone)]
pub struct KeyedSnapshot {
    checkpoint_id: CheckpointId,
    range: KeyGroupRange,
    metas: Vec<StateMeta>,
    key_groups: Vec<Arc<KeyGroupState>>,
}

impl std::fmt::Debug for KeyedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedSnapshot")
            .field("checkpoint_id", &self.checkpoint_id)
            .field("range", &self.range)
            .field("non_empty_key_groups", &self.non_empty_key_groups().count())
            .finish()
    }
}

impl KeyedSnapshot {
    /// The checkpoint this snapshot belongs to.
    pub fn checkpoint_id(&self) -> CheckpointId {
        self.checkpoint_id
    }

    /// The key groups it covers.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// The key groups that hold an entry or a timer, in order.
    pub fn non_empty_key_groups(&self) -> impl Iterator<Item = KeyGroup> + '_ {
        self.range.iter().zip(&self.key_groups).filter(|(_, kg)| !kg.is_empty()).map(|(id, _)| id)
    }

    /// One key group as a sealed blob (written even if empty).
    pub fn write_key_group(&self, key_group: KeyGroup) -> Result<Vec<u8>, SnapshotError> {
        if !self.range.contains(key_group) {
            return Err(SnapshotError::KeyGroupNotInSnapshot { key_group, range: self.range });
        }
        let state = &self.key_groups[(key_group.0 - self.range.start) as usize];
        let mut out = Vec::new();
        self.write_key_group_into(key_group, state, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// Every non-empty key group as its own sealed blob, in key-group order.
    pub fn into_key_group_bytes(self) -> Result<Vec<(KeyGroup, Vec<u8>)>, SnapshotError> {
        self.non_empty_key_groups().map(|kg| Ok((kg, self.write_key_group(kg)?))).collect()
    }

    /// Every non-empty key group's sealed blob, concatenated, with the index to slice them out.
    pub fn to_blob(&self) -> Result<(Vec<u8>, Vec<KeyGroupOffset>), SnapshotError> {
        let mut blob = Vec::new();
        let mut index = Vec::new();
        // One value buffer for every key group; each sealed blob is encoded straight into `blob`.
        let mut values = Vec::new();
        for (key_group, state) in self.range.iter().zip(&self.key_groups).filter(|(_, kg)| !kg.is_empty()) {
            let start = blob.len();
            self.write_key_group_into(key_group, state, &mut values, &mut blob)?;
            index.push(KeyGroupOffset { key_group, offset: start as u64, len: (blob.len() - start) as u64 });
        }
        Ok((blob, index))
    }

    /// Appends one key group's sealed blob to `out`: its body borrowed from the tables (no
    /// allocation per entry; every value encoded into the reused `values`), the same bytes as
    /// sealing a [`KeyGroupBody`]. On error `out` may hold a partial blob.
    fn write_key_group_into(&self, key_group: KeyGroup, state: &KeyGroupState, values: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), SnapshotError> {
        values.clear();
        let mut raws: Vec<(&str, StateKind, Vec<BorrowedEntry<'_>>)> = Vec::new();
        for (id, meta) in self.metas.iter().enumerate() {
            let Some(table) = state.tables.get(id).and_then(Option::as_deref).filter(|t| t.len() > 0) else { continue };
            let mut raw = Vec::new();
            table.encode_into(values, &mut raw).map_err(|source| SnapshotError::Encode { name: meta.name.clone(), source })?;
            raws.push((&meta.name, meta.kind, raw));
        }
        let mut states: Vec<StateBodyRef<'_>> = raws
            .iter()
            .map(|(name, kind, raw)| {
                let mut entries: Vec<EntryRef<'_>> = raw
                    .iter()
                    .map(|(composite, key_len, range)| {
                        let (key, namespace) = split(composite, *key_len);
                        EntryRef { key, namespace, value: &values[range.clone()] }
                    })
                    .collect();
                entries.sort_unstable();
                StateBodyRef { name, kind: *kind, entries }
            })
            .collect();
        for (name, pending) in &state.pending {
            let mut entries: Vec<EntryRef<'_>> = pending
                .entries
                .iter()
                .map(|(composite, key_len, value)| {
                    let (key, namespace) = split(composite, *key_len);
                    EntryRef { key, namespace, value }
                })
                .collect();
            entries.sort_unstable();
            states.push(StateBodyRef { name, kind: pending.kind, entries });
        }
        states.sort_by(|a, b| a.name.cmp(b.name));
        fn timers(set: &BTreeSet<TimerKey>) -> Vec<TimerBodyRef<'_>> {
            set.iter().map(|t| TimerBodyRef { timestamp: t.timestamp, key: &t.key, namespace: &t.namespace }).collect()
        }
        let body = KeyGroupBodyRef {
            key_group: key_group.0,
            states,
            event_timers: timers(&state.event_timers),
            processing_timers: timers(&state.processing_timers),
        };
        codec::seal_value_into(out, KEY_GROUP_MAGIC, KEY_GROUP_FORMAT_VERSION, &body)?;
        Ok(())
    }
}

impl KeyedStateBackend {
    /// Captures the state for checkpoint `checkpoint_id` without copying any entry: the snapshot
    /// shares each key group with the backend, and the backend's next write to a shared key
    /// group copies that key group only.
    pub fn snapshot(&self, checkpoint_id: CheckpointId) -> KeyedSnapshot {
        KeyedSnapshot {
            checkpoint_id,
            range: self.range,
            metas: self.metas.clone(),
            key_groups: self.key_groups.clone(),
        }
    }

    /// Restores key groups from sealed key-group blobs (from any subtasks' snapshots).
    ///
    /// Blobs of key groups outside this backend's range are skipped (and counted). Every blob is
    /// checked before anything is applied: on error the backend is unchanged.
    pub fn restore<'a>(&mut self, blobs: impl IntoIterator<Item = &'a [u8]>) -> Result<RestoreStats, SnapshotError> {
        let mut stats = RestoreStats::default();
        let mut seen = BTreeSet::new();
        let mut staged: Vec<(usize, KeyGroupState)> = Vec::new();
        for blob in blobs {
            let body: KeyGroupBody = codec::open_value(KEY_GROUP_MAGIC, KEY_GROUP_FORMAT_VERSION, blob)?;
            let key_group = KeyGroup(body.key_group);
            if key_group.0 >= self.max_parallelism {
                return Err(SnapshotError::KeyGroupBeyondMaxParallelism { key_group, max_parallelism: self.max_parallelism });
            }
            if !seen.insert(key_group) {
                return Err(SnapshotError::DuplicateKeyGroup(key_group));
            }
            if !self.range.contains(key_group) {
                stats.key_groups_skipped += 1;
                continue;
            }
            let index = (key_group.0 - self.range.start) as usize;
            if !self.key_groups[index].is_empty() {
                return Err(SnapshotError::KeyGroupNotEmpty(key_group));
            }
            let state = self.decode_key_group(key_group, body, &mut stats)?;
            staged.push((index, state));
        }
        for (index, state) in staged {
            self.key_groups[index] = Arc::new(state);
            stats.key_groups_restored += 1;
        }
        Ok(stats)
    }

    fn decode_key_group(
        &self,
        key_group: KeyGroup,
        body: KeyGroupBody,
        stats: &mut RestoreStats,
    ) -> Result<KeyGroupState, SnapshotError> {
        let mut state = KeyGroupState::default();
        let mut names = BTreeSet::new();
        for s in body.states {
            if !names.insert(s.name.clone()) {
                return Err(SnapshotError::Malformed(format!("state {:?} twice in key group {key_group}", s.name)));
            }
            let mut composites: BTreeMap<Box<[u8]>, (u32, Vec<u8>)> = BTreeMap::new();
            for e in s.entries {
                let key_len = e.key.len() as u32;
                let mut composite = e.key;
                composite.extend_from_slice(&e.namespace);
                if composites.insert(composite.into(), (key_len, e.value)).is_some() {
                    return Err(SnapshotError::Malformed(format!(
                        "an entry of state {:?} twice in key group {key_group}",
                        s.name
                    )));
                }
            }
            stats.entries_restored += composites.len() as u64;
            match self.by_name.get(&s.name) {
                Some(&id) => {
                    let meta = &self.metas[id];
                    if meta.kind != s.kind {
                        return Err(SnapshotError::KindMismatch { name: s.name, snapshot: s.kind, registered: meta.kind });
                    }
                    let raw: Vec<RawEntry> = composites.into_iter().map(|(c, (len, v))| (c, len, v)).collect();
                    let table = (meta.decode_table)(&raw).map_err(|source| SnapshotError::ValueDecode {
                        name: meta.name.clone(),
                        key_group,
                        type_name: meta.type_name,
                        source,
                    })?;
                    if state.tables.len() <= id {
                        state.tables.resize_with(id + 1, || None);
                    }
                    state.tables[id] = Some(table);
                }
                None => {
                    let entries = composites.into_iter().map(|(c, (len, v))| (c, len, v)).collect();
                    state.pending.insert(s.name, PendingState { kind: s.kind, entries });
                }
            }
        }
        let timers = |list: Vec<TimerBody>| -> BTreeSet<TimerKey> {
            list.into_iter()
                .map(|t| TimerKey { timestamp: t.timestamp, key: t.key.into(), namespace: t.namespace.into() })
                .collect()
        };
        state.event_timers = timers(body.event_timers);
        state.processing_timers = timers(body.processing_timers);
        stats.timers_restored += (state.event_timers.len() + state.processing_timers.len()) as u64;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SubtaskIndex;
    use crate::key_groups::{key_group_for_key, operator_index_for_key_group};
    use crate::state::{
        AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor,
        StateError, ValueStateDescriptor,
    };
    use proptest::prelude::*;

    fn all_blobs(snapshot: &KeyedSnapshot) -> Vec<Vec<u8>> {
        snapshot.clone().into_key_group_bytes().unwrap().into_iter().map(|(_, b)| b).collect()
    }

    #[test]
    fn later_writes_do_not_change_a_captured_snapshot() {
        let mut be = KeyedStateBackend::new(32, KeyGroupRange::all(32));
        let v = be.get_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..50i32 {
            be.set_current_key(&k);
            v.update(&mut be, k as u64);
            be.register_event_time_timer(k as i64);
        }
        let snapshot = be.snapshot(CheckpointId(1));
        let before = snapshot.to_blob().unwrap();
        for k in 0..60i32 {
            be.set_current_key(&k);
            v.update(&mut be, 1000);
            be.delete_event_time_timer(k as i64);
        }
        be.advance_watermark(i64::MAX);
        assert_eq!(snapshot.to_blob().unwrap(), before);
        // And the live backend did change.
        assert_ne!(be.snapshot(CheckpointId(2)).to_blob().unwrap(), before);
    }

    #[test]
    fn capture_copies_only_the_key_groups_written_afterwards() {
        let mut be = KeyedStateBackend::new(64, KeyGroupRange::all(64));
        let v = be.get_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..500i32 {
            be.set_current_key(&k);
            v.update(&mut be, 1);
        }
        assert_eq!(be.key_group_copies(), 0, "no snapshot: no copy");
        let snapshot = be.snapshot(CheckpointId(1));
        let shared = be.key_groups.iter().zip(&snapshot.key_groups).all(|(a, b)| Arc::ptr_eq(a, b));
        assert!(shared, "capture shares every key group");
        // Reads and clears of absent entries copy nothing.
        be.set_current_key(&7i32);
        assert_eq!(v.value(&be), Some(1));
        be.set_current_key(&100_000i32);
        v.clear(&mut be);
        assert_eq!(be.key_group_copies(), 0);
        // Two writes to one key group: one copy, of that key group only.
        let kg7 = key_group_for_key(&7i32, 64);
        let twin = (8..).find(|k: &i32| key_group_for_key(k, 64) == kg7).unwrap();
        for k in [7, twin] {
            be.set_current_key(&k);
            v.update(&mut be, 2);
        }
        assert_eq!(be.key_group_copies(), 1);
        for (i, (a, b)) in be.key_groups.iter().zip(&snapshot.key_groups).enumerate() {
            assert_eq!(Arc::ptr_eq(a, b), i as u32 != kg7.0, "key group {i}");
        }
        drop(snapshot);
        be.set_current_key(&twin);
        v.update(&mut be, 3);
        assert_eq!(be.key_group_copies(), 1, "once the snapshot is gone, writes are in place");
    }

    #[test]
    fn snapshot_bytes_are_canonical() {
        let write = |keys: &[i32]| {
            let mut be = KeyedStateBackend::new(8, KeyGroupRange::all(8));
            let v = be.get_state(&ValueStateDescriptor::<i32>::new("v")).unwrap();
            for k in keys {
                be.set_current_key(k);
                v.update(&mut be, *k);
            }
            be.snapshot(CheckpointId(1)).to_blob().unwrap()
        };
        assert_eq!(write(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), write(&[9, 8, 7, 6, 5, 4, 3, 2, 1]));
    }

    #[test]
    fn the_blob_index_slices_out_every_key_group() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        let v = be.get_state(&ValueStateDescriptor::<String>::new("v")).unwrap();
        for k in 0..40i32 {
            be.set_current_key(&k);
            v.update(&mut be, format!("value {k}"));
        }
        let snapshot = be.snapshot(CheckpointId(3));
        let (blob, index) = snapshot.to_blob().unwrap();
        assert_eq!(index.iter().map(|o| o.key_group).collect::<Vec<_>>(), snapshot.non_empty_key_groups().collect::<Vec<_>>());
        for o in &index {
            assert_eq!(o.slice(&blob).unwrap(), &snapshot.write_key_group(o.key_group).unwrap()[..]);
        }
        assert_eq!(KeyGroupOffset { key_group: KeyGroup(0), offset: blob.len() as u64, len: 1 }.slice(&blob), None);
        assert_eq!(KeyGroupOffset { key_group: KeyGroup(0), offset: u64::MAX, len: 2 }.slice(&blob), None);
        assert!(matches!(
            snapshot.write_key_group(KeyGroup(16)),
            Err(SnapshotError::KeyGroupNotInSnapshot { .. })
        ));
    }

    #[test]
    fn empty_key_groups_are_omitted_but_can_be_written() {
        let mut be = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let v = be.get_state(&ValueStateDescriptor::<u8>::new("v")).unwrap();
        be.set_current_key(&1i32);
        v.update(&mut be, 1);
        let snapshot = be.snapshot(CheckpointId(1));
        let kg = key_group_for_key(&1i32, 8);
        assert_eq!(snapshot.non_empty_key_groups().collect::<Vec<_>>(), vec![kg]);
        let other = KeyGroup((kg.0 + 1) % 8);
        let empty_blob = snapshot.write_key_group(other).unwrap();
        let mut fresh = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let stats = fresh.restore([&empty_blob[..]]).unwrap();
        assert_eq!((stats.key_groups_restored, stats.entries_restored), (1, 0));
    }

    #[test]
    fn restore_rejects_bad_sets_of_blobs_and_changes_nothing() {
        let mut be = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let v = be.get_state(&ValueStateDescriptor::<u8>::new("v")).unwrap();
        for k in 0..20i32 {
            be.set_current_key(&k);
            v.update(&mut be, k as u8);
        }
        let blobs = all_blobs(&be.snapshot(CheckpointId(1)));
        let mut corrupt = blobs[1].clone();
        *corrupt.last_mut().unwrap() ^= 1;
        let foreign = {
            let mut big = KeyedStateBackend::new(16, KeyGroupRange::all(16));
            let v = big.get_state(&ValueStateDescriptor::<u8>::new("v")).unwrap();
            let k = (0..).find(|k: &i32| key_group_for_key(k, 16).0 >= 8).unwrap();
            big.set_current_key(&k);
            v.update(&mut big, 1);
            all_blobs(&big.snapshot(CheckpointId(1))).pop().unwrap()
        };
        type Case<'a> = (&'a str, Vec<&'a [u8]>, fn(&SnapshotError) -> bool);
        let cases: Vec<Case> = vec![
            ("corrupt", vec![&blobs[0], &corrupt], |e| matches!(e, SnapshotError::Codec(CodecError::ChecksumMismatch { .. }))),
            ("duplicate", vec![&blobs[0], &blobs[1], &blobs[0]], |e| matches!(e, SnapshotError::DuplicateKeyGroup(_))),
            ("beyond max parallelism", vec![&blobs[0], &foreign], |e| {
                matches!(e, SnapshotError::KeyGroupBeyondMaxParallelism { max_parallelism: 8, .. })
            }),
        ];
        for (name, input, is_expected) in cases {
            let mut fresh = KeyedStateBackend::new(8, KeyGroupRange::all(8));
            let err = fresh.restore(input).unwrap_err();
            assert!(is_expected(&err), "{name}: {err:?}");
            assert!(fresh.key_groups.iter().all(|kg| kg.is_empty()), "{name}: nothing applied");
        }
        // Restoring into a key group that already holds state would duplicate it.
        let err = be.restore(blobs.iter().map(Vec::as_slice)).unwrap_err();
        assert!(matches!(err, SnapshotError::KeyGroupNotEmpty(_)), "{err:?}");
    }

    #[test]
    fn restored_values_of_the_wrong_type_or_kind_are_typed_errors() {
        let mut be = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let v = be.get_state(&ValueStateDescriptor::<String>::new("v")).unwrap();
        be.set_current_key(&1i32);
        v.update(&mut be, "not a number".into());
        let blobs = all_blobs(&be.snapshot(CheckpointId(1)));
        let slices = || blobs.iter().map(Vec::as_slice);

        // Registered before the restore: the restore fails and applies nothing.
        let mut early = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        early.get_state(&ValueStateDescriptor::<u64>::new("v")).unwrap();
        assert!(matches!(early.restore(slices()), Err(SnapshotError::ValueDecode { .. })));
        let mut early_kind = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        early_kind.get_list_state(&ListStateDescriptor::<String>::new("v")).unwrap();
        assert!(matches!(early_kind.restore(slices()), Err(SnapshotError::KindMismatch { .. })));

        // Registered after the restore: registration fails, and the bytes stay for a right type.
        let mut late = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        late.restore(slices()).unwrap();
        assert!(matches!(late.get_state(&ValueStateDescriptor::<u64>::new("v")), Err(StateError::RestoredValueDecode { .. })));
        assert!(matches!(
            late.get_list_state(&ListStateDescriptor::<String>::new("v")),
            Err(StateError::KindMismatch { existing: StateKind::Value, requested: StateKind::List, .. })
        ));
        assert_eq!(late.keys::<i32>("v"), vec![1], "pending entries still count as keys");
        let v = late.get_state(&ValueStateDescriptor::<String>::new("v")).unwrap();
        late.set_current_key(&1i32);
        assert_eq!(v.value(&late).as_deref(), Some("not a number"));
    }

    #[test]
    fn unregistered_restored_state_survives_the_next_snapshot() {
        let mut be = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let v = be.get_state(&ValueStateDescriptor::<u32>::new("old")).unwrap();
        be.set_current_key(&5i32);
        v.update(&mut be, 55);
        let first = all_blobs(&be.snapshot(CheckpointId(1)));
        let mut second_life = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        second_life.restore(first.iter().map(Vec::as_slice)).unwrap();
        let other = second_life.get_state(&ValueStateDescriptor::<u32>::new("new")).unwrap();
        second_life.set_current_key(&5i32);
        other.update(&mut second_life, 1);
        let second = all_blobs(&second_life.snapshot(CheckpointId(2)));
        let mut third_life = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        third_life.restore(second.iter().map(Vec::as_slice)).unwrap();
        let old = third_life.get_state(&ValueStateDescriptor::<u32>::new("old")).unwrap();
        let new = third_life.get_state(&ValueStateDescriptor::<u32>::new("new")).unwrap();
        third_life.set_current_key(&5i32);
        assert_eq!((old.value(&third_life), new.value(&third_life)), (Some(55), Some(1)));
    }

    #[test]
    fn a_snapshot_can_be_written_on_another_thread() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let be = KeyedStateBackend::new(8, KeyGroupRange::all(8));
        let snapshot = be.snapshot(CheckpointId(1));
        assert_send(&snapshot);
        assert_eq!(snapshot.checkpoint_id(), CheckpointId(1));
        assert_eq!(snapshot.key_group_range(), KeyGroupRange::all(8));
    }

    #[test]
    fn restore_skips_and_counts_key_groups_of_other_subtasks() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        let v = be.get_state(&ValueStateDescriptor::<i32>::new("v")).unwrap();
        for k in 0..100i32 {
            be.set_current_key(&k);
            v.update(&mut be, -k);
            be.register_processing_time_timer(k as u64);
        }
        let blobs = all_blobs(&be.snapshot(CheckpointId(1)));
        let range = KeyGroupRange::for_operator_index(16, 3, SubtaskIndex(1));
        let mut half = KeyedStateBackend::new(16, range);
        let stats = half.restore(blobs.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(stats.key_groups_restored, range.len());
        assert_eq!(stats.key_groups_skipped, 16 - range.len());
        let mine: Vec<i32> = (0..100).filter(|k| range.contains(key_group_for_key(k, 16))).collect();
        assert_eq!(stats.entries_restored, mine.len() as u64);
        assert_eq!(stats.timers_restored, mine.len() as u64);
        let v = half.get_state(&ValueStateDescriptor::<i32>::new("v")).unwrap();
        assert_eq!(half.keys::<i32>("v"), mine);
        for k in &mine {
            half.set_current_key(k);
            assert_eq!(v.value(&half), Some(-k));
        }
        assert_eq!(half.processing_time_timer_count(), mine.len());
    }

    #[test]
    fn restored_timers_fire() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        for k in 0..10i32 {
            be.set_current_key(&k);
            be.register_event_time_timer(100 + k as i64);
            be.register_processing_time_timer(1000 + k as u64);
        }
        let blobs = all_blobs(&be.snapshot(CheckpointId(1)));
        let mut restored = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        let stats = restored.restore(blobs.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(stats.timers_restored, 20);
        let fired = restored.advance_watermark(104);
        assert_eq!(fired.iter().map(|t| t.key::<i32>().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        let fired = restored.advance_processing_time(2000);
        assert_eq!(fired.len(), 10);
        assert_eq!(fired.iter().map(|t| t.timestamp).collect::<Vec<_>>(), (1000..1010).collect::<Vec<_>>());
    }

    // ------------------------------------------------------------------------------------------
    // Rescaling property

    struct SumCount;
    impl AggregateFunction<u16, (u32, u32), (u32, u32)> for SumCount {
        fn create_accumulator(&self) -> (u32, u32) {
            (0, 0)
        }
        fn add(&self, value: u16, acc: &mut (u32, u32)) {
            acc.0 += value as u32;
            acc.1 += 1;
        }
        fn get_result(&self, acc: &(u32, u32)) -> (u32, u32) {
            *acc
        }
    }

    /// Every state of one key and namespace, as plain data (the model).
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Cell {
        value: Option<u32>,
        list: Vec<u8>,
        map: BTreeMap<u8, u16>,
        sum: Option<u64>,
        agg: Option<(u32, u32)>,
        event_timers: BTreeSet<i64>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Value(u32),
        ClearValue,
        List(u8),
        Map(u8, u16),
        MapRemove(u8),
        Sum(u64),
        Agg(u16),
        Timer(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u32>().prop_map(Op::Value),
            Just(Op::ClearValue),
            any::<u8>().prop_map(Op::List),
            (0u8..4, any::<u16>()).prop_map(|(k, v)| Op::Map(k, v)),
            (0u8..4).prop_map(Op::MapRemove),
            (0u64..1000).prop_map(Op::Sum),
            any::<u16>().prop_map(Op::Agg),
            (0i64..50).prop_map(Op::Timer),
        ]
    }

    struct Handles {
        value: crate::state::ValueState<u32>,
        list: crate::state::ListState<u8>,
        map: crate::state::MapState<u8, u16>,
        sum: crate::state::ReducingState<u64>,
        agg: crate::state::AggregatingState<u16, (u32, u32), (u32, u32)>,
    }

    fn register(be: &mut KeyedStateBackend) -> Handles {
        Handles {
            value: be.get_state(&ValueStateDescriptor::new("value")).unwrap(),
            list: be.get_list_state(&ListStateDescriptor::new("list")).unwrap(),
            map: be.get_map_state(&MapStateDescriptor::new("map")).unwrap(),
            sum: be.get_reducing_state(&ReducingStateDescriptor::new("sum", |a: &u64, b: &u64| a + b)).unwrap(),
            agg: be.get_aggregating_state(&AggregatingStateDescriptor::new("agg", SumCount)).unwrap(),
        }
    }

    fn apply(be: &mut KeyedStateBackend, h: &Handles, cell: &mut Cell, op: &Op) {
        match *op {
            Op::Value(v) => {
                h.value.update(be, v);
                cell.value = Some(v);
            }
            Op::ClearValue => {
                h.value.clear(be);
                cell.value = None;
            }
            Op::List(v) => {
                h.list.add(be, v);
                cell.list.push(v);
            }
            Op::Map(k, v) => {
                h.map.put(be, k, v);
                cell.map.insert(k, v);
            }
            Op::MapRemove(k) => {
                assert_eq!(h.map.remove(be, &k), cell.map.remove(&k));
            }
            Op::Sum(v) => {
                h.sum.add(be, v);
                *cell.sum.get_or_insert(0) += v;
            }
            Op::Agg(v) => {
                h.agg.add(be, v);
                let acc = cell.agg.get_or_insert((0, 0));
                acc.0 += v as u32;
                acc.1 += 1;
            }
            Op::Timer(ts) => {
                be.register_event_time_timer(ts);
                cell.event_timers.insert(ts);
            }
        }
    }

    fn read(be: &KeyedStateBackend, h: &Handles) -> Cell {
        Cell {
            value: h.value.value(be),
            list: h.list.get(be),
            map: h.map.entries(be).into_iter().collect(),
            sum: h.sum.get(be),
            agg: h.agg.get(be),
            event_timers: BTreeSet::new(),
        }
    }

    /// The owned key-group body, built entry by entry (the writer before the borrowed one).
    fn owned_body(snapshot: &KeyedSnapshot, key_group: KeyGroup, state: &KeyGroupState) -> KeyGroupBody {
        let entry = |composite: &[u8], key_len: u32, value: Vec<u8>| {
            let (key, namespace) = composite.split_at(key_len as usize);
            EntryBody { key: key.to_vec(), namespace: namespace.to_vec(), value }
        };
        let mut states = Vec::new();
        for (id, meta) in snapshot.metas.iter().enumerate() {
            let Some(table) = state.tables.get(id).and_then(Option::as_deref).filter(|t| t.len() > 0) else { continue };
            let mut entries: Vec<EntryBody> = table.encode().unwrap().into_iter().map(|(c, len, v)| entry(&c, len, v)).collect();
            entries.sort_unstable();
            states.push(StateBody { name: meta.name.clone(), kind: meta.kind, entries });
        }
        for (name, pending) in &state.pending {
            let mut entries: Vec<EntryBody> = pending.entries.iter().map(|(c, len, v)| entry(c, *len, v.clone())).collect();
            entries.sort_unstable();
            states.push(StateBody { name: name.clone(), kind: pending.kind, entries });
        }
        states.sort_by(|a, b| a.name.cmp(&b.name));
        let timers = |set: &BTreeSet<TimerKey>| set.iter().map(|t| TimerBody { timestamp: t.timestamp, key: t.key.to_vec(), namespace: t.namespace.to_vec() }).collect();
        KeyGroupBody { key_group: key_group.0, states, event_timers: timers(&state.event_timers), processing_timers: timers(&state.processing_timers) }
    }

    fn backends(max_p: u32, p: u32) -> Vec<KeyedStateBackend> {
        (0..p).map(|i| KeyedStateBackend::new(max_p, KeyGroupRange::for_operator_index(max_p, p, SubtaskIndex(i)))).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Keyed state written at parallelism p, snapshotted per subtask, restored at parallelism q
        /// from exactly each new range's key groups, reads back exactly as the model: nothing lost,
        /// nothing duplicated, timers included.
        #[test]
        fn rescaling_loses_and_duplicates_nothing(
            max_p in 1u32..=48,
            p_seed in 1u32..=48,
            q_seed in 1u32..=48,
            ops in proptest::collection::vec((0i32..120, 0u8..2, op()), 0..300),
            use_single_blob in any::<bool>(),
            register_before_restore in any::<bool>(),
        ) {
            let p = 1 + (p_seed - 1) % max_p;
            let q = 1 + (q_seed - 1) % max_p;
            let mut old = backends(max_p, p);
            let old_handles: Vec<Handles> = old.iter_mut().map(register).collect();
            let mut model: BTreeMap<(i32, u8), Cell> = BTreeMap::new();
            for (key, ns, op) in &ops {
                let i = operator_index_for_key_group(max_p, p, key_group_for_key(key, max_p)).0 as usize;
                let be = &mut old[i];
                be.set_current_key(key);
                be.set_current_namespace(ns);
                apply(be, &old_handles[i], model.entry((*key, *ns)).or_default(), op);
            }
            // Snapshot every old subtask: a map key group -> sealed blob.
            let mut by_key_group: BTreeMap<KeyGroup, Vec<u8>> = BTreeMap::new();
            for be in &old {
                let snapshot = be.snapshot(CheckpointId(1));
                if use_single_blob {
                    let (blob, index) = snapshot.to_blob().unwrap();
                    for o in index {
                        prop_assert!(by_key_group.insert(o.key_group, o.slice(&blob).unwrap().to_vec()).is_none());
                    }
                } else {
                    for (kg, bytes) in snapshot.into_key_group_bytes().unwrap() {
                        prop_assert!(by_key_group.insert(kg, bytes).is_none());
                    }
                }
            }
            let mut new = backends(max_p, q);
            for be in &mut new {
                if register_before_restore {
                    // Restored values are then decoded at restore time, not at registration.
                    register(be);
                }
                let range = be.key_group_range();
                let stats = be.restore(range.iter().filter_map(|kg| by_key_group.get(&kg)).map(Vec::as_slice)).unwrap();
                prop_assert_eq!(stats.key_groups_skipped, 0);
            }
            // Every key is on exactly one new subtask, with exactly the model's state.
            let mut seen_keys = BTreeSet::new();
            let mut timers_fired = BTreeSet::new();
            for be in &mut new {
                let h = register(be);
                let mut keys = BTreeSet::new();
                for name in ["value", "list", "map", "sum", "agg"] {
                    keys.extend(be.keys::<i32>(name));
                }
                for timer in be.advance_watermark(i64::MAX) {
                    let key: i32 = timer.key().unwrap();
                    let ns: u8 = timer.namespace().unwrap();
                    prop_assert!(timers_fired.insert((key, ns, timer.timestamp)), "timer fired twice");
                }
                for key in keys {
                    prop_assert!(seen_keys.insert(key), "key {} restored twice", key);
                    be.set_current_key(&key);
                    for ns in 0u8..2 {
                        be.set_current_namespace(&ns);
                        let want = model.get(&(key, ns)).cloned().map(|c| Cell { event_timers: BTreeSet::new(), ..c }).unwrap_or_default();
                        prop_assert_eq!(read(be, &h), want, "key {} ns {}", key, ns);
                    }
                }
            }
            let model_keys: BTreeSet<i32> = model
                .iter()
                .filter(|(_, c)| **c != Cell { event_timers: c.event_timers.clone(), ..Cell::default() })
                .map(|((k, _), _)| *k)
                .collect();
            prop_assert_eq!(seen_keys, model_keys);
            let model_timers: BTreeSet<(i32, u8, i64)> = model
                .iter()
                .flat_map(|(&(k, ns), c)| c.event_timers.iter().map(move |&ts| (k, ns, ts)))
                .collect();
            prop_assert_eq!(timers_fired, model_timers);
        }

        /// The borrowed writer (values in one buffer, slices of the tables) seals exactly the
        /// bytes of the owned body the format describes, for every kind of state, namespaces,
        /// timers and restored-but-unregistered (pending) state.
        #[test]
        fn key_group_blobs_are_the_bytes_of_the_owned_body(
            max_p in 1u32..=16,
            ops in proptest::collection::vec((0i32..60, 0u8..2, op()), 0..200),
            keep_pending in any::<bool>(),
        ) {
            let mut be = KeyedStateBackend::new(max_p, KeyGroupRange::all(max_p));
            let h = register(&mut be);
            let mut model: BTreeMap<(i32, u8), Cell> = BTreeMap::new();
            for (key, ns, op) in &ops {
                be.set_current_key(key);
                be.set_current_namespace(ns);
                apply(&mut be, &h, model.entry((*key, *ns)).or_default(), op);
            }
            if keep_pending {
                // Restore into a backend that registers only some states: the rest stay pending.
                let blobs = all_blobs(&be.snapshot(CheckpointId(1)));
                be = KeyedStateBackend::new(max_p, KeyGroupRange::all(max_p));
                be.restore(blobs.iter().map(Vec::as_slice)).unwrap();
                be.get_state(&ValueStateDescriptor::<u32>::new("value")).unwrap();
            }
            let snapshot = be.snapshot(CheckpointId(2));
            let (blob, index) = snapshot.to_blob().unwrap();
            let mut written = 0;
            for (kg, state) in snapshot.range.iter().zip(&snapshot.key_groups) {
                let want = codec::seal_value(KEY_GROUP_MAGIC, KEY_GROUP_FORMAT_VERSION, &owned_body(&snapshot, kg, state)).unwrap();
                prop_assert_eq!(&snapshot.write_key_group(kg).unwrap(), &want);
                if !state.is_empty() {
                    prop_assert_eq!(index[written].key_group, kg);
                    prop_assert_eq!(index[written].slice(&blob).unwrap(), &want[..]);
                    written += 1;
                }
            }
            prop_assert_eq!(written, index.len());
        }

        /// Flipping any byte or truncating anywhere gives a typed error, never a panic or a restore.
        #[test]
        fn a_damaged_key_group_blob_is_a_typed_error(
            keys in proptest::collection::vec(0i32..50, 1..20),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            truncate in any::<bool>(),
        ) {
            let mut be = KeyedStateBackend::new(1, KeyGroupRange::all(1));
            let h = register(&mut be);
            for k in &keys {
                be.set_current_key(k);
                h.list.add(&mut be, *k as u8);
                be.register_event_time_timer(*k as i64);
            }
            let blob = be.snapshot(CheckpointId(1)).write_key_group(KeyGroup(0)).unwrap();
            let at = position.index(blob.len());
            let damaged = if truncate {
                blob[..at].to_vec()
            } else {
                let mut d = blob.clone();
                d[at] ^= flip;
                d
            };
            let mut fresh = KeyedStateBackend::new(1, KeyGroupRange::all(1));
            let result = fresh.restore([&damaged[..]]);
            prop_assert!(matches!(result, Err(SnapshotError::Codec(_))), "{:?}", result);
            prop_assert!(fresh.key_groups[0].is_empty());
        }
    }
}
