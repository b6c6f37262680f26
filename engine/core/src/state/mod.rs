//! Keyed state, timers, operator state and their snapshots: Flink's `HeapKeyedStateBackend`,
//! `InternalTimerService` and `DefaultOperatorStateBackend`, as pure synchronous Rust.
//!
//! # Keyed state ([`KeyedStateBackend`])
//!
//! One backend serves one subtask and owns a contiguous [`KeyGroupRange`].
//! Every entry lives in the table of its **key group** (Flink's `StateTable` split into
//! per-key-group `StateMap`s), so a snapshot can be written per key group and a restore can take
//! any set of key groups: that is what makes rescaling lose and duplicate nothing.
//!
//! The caller sets the *current key* ([`KeyedStateBackend::set_current_key`]) and optionally a
//! *current namespace* (windows; the default is the void namespace `()`), registers states by
//! descriptor once (`get_state`, `get_list_state`, `get_map_state`, `get_reducing_state`,
//! `get_aggregating_state`, as in Flink's `RuntimeContext`) and uses the returned small handles,
//! which act on the current key and namespace:
//!
//! ```
//! use floe_core::key_groups::KeyGroupRange;
//! use floe_core::state::{KeyedStateBackend, ValueStateDescriptor};
//!
//! let mut backend = KeyedStateBackend::new(128, KeyGroupRange::all(128));
//! let count = backend.get_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
//! for word in ["to", "be", "or", "not", "to", "be"] {
//!     backend.set_current_key(&word.to_string());
//!     *count.get_or_insert_with(&mut backend, || 0) += 1;
//! }
//! backend.set_current_key(&"to".to_string());
//! assert_eq!(count.value(&backend), Some(2));
//! ```
//!
//! ## In memory
//!
//! Keys (and namespaces) are serialized once, when they are set, into one reused buffer
//! (`key bytes ++ namespace bytes`, bincode via [`crate::codec::config`]). Each key group holds,
//! per registered state, one **typed** table (Flink's `StateMap`): an `FxHashMap` from those bytes
//! to the value, stored inline, behind one `Box<dyn Any>`-like trait object that is downcast once
//! per access. Values are never serialized on the access path: only when a snapshot is written
//! (the table serializes itself) or restored (through a decoder captured at registration). A hit
//! allocates nothing; a write is one hash lookup (`update_with`, `update`, `add`, `put`).
//!
//! Measured by `cargo bench -p floe-core --bench keyed_count` (a word count through the aligner,
//! the keyed process operator and this backend against a plain `HashMap<String, u64>` loop in the
//! same process): about 0.5× the plain loop's rate.
//!
//! ## Snapshots: copy-on-write per key group
//!
//! Each key group's tables and timers sit behind one `Arc`. [`KeyedStateBackend::snapshot`]
//! clones the `Arc`s (O(number of key groups), no entry is copied) into a [`KeyedSnapshot`]. The
//! first write after a capture to a key group copies *that key group only* (`Arc::make_mut`);
//! untouched key groups are shared with the snapshot until it is dropped
//! ([`KeyedStateBackend::key_group_copies`] counts the copies). Serialization happens later, off
//! the processing path, from the snapshot: one sealed blob per key group (magic `FLKG`, format
//! version, crc32 — see [`snapshot`]), or one blob per subtask with a key-group index.
//! **Empty key groups are omitted** from [`KeyedSnapshot::into_key_group_bytes`] and
//! [`KeyedSnapshot::to_blob`]; [`KeyedSnapshot::write_key_group`] writes one (empty) if asked.
//!
//! ## Restore
//!
//! [`KeyedStateBackend::restore`] validates every blob first (envelope, body, duplicates,
//! kinds, and the values of already-registered states) and only then applies them, so a bad blob
//! leaves the backend untouched. Key groups outside the backend's range are skipped and counted.
//! Entries of a state that is not registered yet stay as bytes (and are written back as such by
//! later snapshots); they are decoded when the state is registered, and a value that does not
//! decode as the registered type is a typed error.
//!
//! ## Timers
//!
//! See [`timers`]: event-time and processing-time timers per key and namespace, stored in the key
//! group's table, so they are snapshotted and rescaled with it.
//!
//! ## Operator state
//!
//! See [`operator_state`]: list state (split evenly on rescale) and union list state (everything
//! to every subtask), a sealed snapshot and a pure redistribution function.

mod backend;
mod descriptors;
pub mod operator_state;
pub mod snapshot;
pub mod timers;

pub use backend::{KeyedStateBackend, StateKind, ValueBatch};
pub use descriptors::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, ReducingState, ReducingStateDescriptor, ValueState, ValueStateDescriptor,
};
pub use operator_state::{redistribute, OperatorListState, OperatorStateMode, OperatorStateStore};
pub use snapshot::{KeyGroupOffset, KeyedSnapshot, RestoreStats, SnapshotError};
pub use timers::{FiredTimer, TimeDomain};

use crate::codec::CodecError;
use crate::ids::KeyGroup;
use crate::key_groups::KeyGroupRange;
use serde::{de::DeserializeOwned, Serialize};

/// Anything that can be kept in state: serializable (for snapshots), cloneable (for copy-on-write
/// and for reads that return owned values) and shareable across threads (a [`KeyedSnapshot`]
/// shares the values with the backend until it is written, possibly on another thread).
pub trait StateData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> StateData for T {}

/// Why a keyed or operator state operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The key belongs to a key group this backend does not own: a partitioning bug upstream.
    #[error("key group {key_group} of the key is outside this backend's range {range:?}: the record was routed to the wrong subtask")]
    KeyGroupOutOfRange {
        /// The key's key group.
        key_group: KeyGroup,
        /// The range this backend owns.
        range: KeyGroupRange,
    },
    /// The key or namespace could not be serialized.
    #[error("cannot serialize the key or namespace: {0}")]
    Encode(CodecError),
    /// Stored key bytes do not decode as the requested key type.
    #[error("stored key bytes do not decode as the requested key type: {0}")]
    KeyDecode(CodecError),
    /// A state of this name is registered (or was restored) with another kind.
    #[error("state {name:?} is a {existing:?} state, not a {requested:?} state")]
    KindMismatch {
        /// The state's name.
        name: String,
        /// The kind it already has.
        existing: StateKind,
        /// The kind asked for.
        requested: StateKind,
    },
    /// A state of this name is registered with another value type.
    #[error("state {name:?} holds {existing}, not {requested}")]
    TypeMismatch {
        /// The state's name.
        name: String,
        /// The type it holds.
        existing: &'static str,
        /// The type asked for.
        requested: &'static str,
    },
    /// Restored bytes of this state do not decode as the type it is registered with.
    #[error("restored value of state {name:?} in key group {key_group} does not decode as {type_name}: {source}")]
    RestoredValueDecode {
        /// The state's name.
        name: String,
        /// The key group the bytes came from (for operator state: `kg0`).
        key_group: KeyGroup,
        /// The type the state was registered with.
        type_name: &'static str,
        /// The decoder's complaint.
        source: CodecError,
    },
}
