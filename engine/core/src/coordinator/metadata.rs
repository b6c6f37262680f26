//! What a completed checkpoint is made of, and how it is handed back out on restore.
//!
//! Follows Flink's `CheckpointMetadata` / `OperatorState` / `OperatorSubtaskState` /
//! `KeyGroupsStateHandle` and, for restores, `StateAssignmentOperation`:
//!
//! - a subtask acknowledges a checkpoint with a [`SubtaskStateHandle`]: at most one blob of keyed
//!   state, indexed per key group ([`KeyedStateHandle`] of [`KeyGroupSlice`]s), and at most one
//!   blob of operator state (list / union list state, source offsets, sink transactions);
//! - the coordinator gathers the handles of every subtask into a [`CheckpointMetadata`], grouped
//!   per operator with the operator's parallelism and max parallelism; the metadata is written to
//!   the blob store in a checked envelope ([`CheckpointMetadata::to_bytes`], magic `FLCM`), so a
//!   corrupt or truncated metadata blob is a typed error and never a wrong restore;
//! - on restore, possibly at another parallelism (rescaling), [`CheckpointMetadata::restore_assignment`]
//!   gives new subtask `i` exactly the key groups of `KeyGroupRange::for_operator_index(maxP, p', i)`
//!   — nothing lost, nothing duplicated — and the operator-state blob of every old subtask (the
//!   state module splits list state evenly and hands union state to everyone, as Flink does).
//!
//! **Finished on restore** (Flink's FLIP-147: `OperatorSubtaskState#isFinished`,
//! `FullyFinishedOperatorState`, `TaskStateSnapshot#isTaskDeployedAsFinished`): a handle records
//! whether the subtask's data had ended — its chain's `end_of_input` had run and `EndOfData` had
//! gone out — when it snapshotted ([`SubtaskStateHandle::data_ended`]). What `end_of_input`
//! emitted is then inside the checkpoint (in its sinks' committed transactions), so a subtask
//! restored from it must not run `end_of_input` again; [`SubtaskRestore::data_ended`] tells it.
//! At the same parallelism each new subtask takes its old subtask's flag. At another parallelism
//! an operator restores as finished only if every old subtask had finished, and as running only
//! if none had; a partly finished operator is refused ([`RestoreError::PartiallyFinished`]), as
//! Flink refuses to rescale a partly finished operator.
//!
//! **Format versions**: version 2 added `data_ended`. Metadata of version 1 (written before it)
//! still decodes, every subtask read as not finished — what that build did on restore.
//!
//! **Contract for keyed handles**: a keyed handle lists *every* key group of its subtask's range,
//! empty key groups included (with `len: 0`). The coordinator rejects an acknowledgement whose
//! keyed handle does not cover its range exactly, so a completed checkpoint always restores.

use crate::codec::{self, CodecError};
use crate::ids::{AttemptId, CheckpointId, KeyGroup, OperatorId, SubtaskId, SubtaskIndex};
use crate::key_groups::KeyGroupRange;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The magic of a checkpoint-metadata envelope.
pub const METADATA_MAGIC: [u8; 4] = *b"FLCM";
/// The format version of checkpoint metadata this build writes (2: handles carry
/// [`SubtaskStateHandle::data_ended`]). [`CheckpointMetadata::from_bytes`] also reads
/// [`METADATA_FORMAT_VERSION_V1`].
pub const METADATA_FORMAT_VERSION: u16 = 2;
/// The previous format version, still read: handles without `data_ended` (read as `false`).
pub const METADATA_FORMAT_VERSION_V1: u16 = 1;

/// A blob in the checkpoint blob store, with what is needed to check it when read back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// The blob's key in the store.
    pub key: String,
    /// The blob's length in bytes.
    pub len: u64,
    /// The crc32 of the whole blob.
    pub crc32: u32,
}

/// Where one key group's state lies inside a keyed-state blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyGroupSlice {
    /// The key group.
    pub key_group: KeyGroup,
    /// Byte offset of the key group's section in the blob.
    pub offset: u64,
    /// Byte length of the section (0 for an empty key group).
    pub len: u64,
}

/// One subtask's keyed state: one blob, indexed per key group (Flink's `KeyGroupsStateHandle`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyedStateHandle {
    /// The blob holding every key group's section.
    pub blob: BlobRef,
    /// One slice per key group of the subtask's range.
    pub key_groups: Vec<KeyGroupSlice>,
}

/// What one subtask acknowledged for a checkpoint (Flink's `OperatorSubtaskState`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubtaskStateHandle {
    /// The subtask that wrote the state.
    pub subtask: SubtaskId,
    /// Its keyed state, if the operator is keyed.
    pub keyed: Option<KeyedStateHandle>,
    /// Its operator state (list / union list state), if any.
    pub operator: Option<BlobRef>,
    /// The subtask's data had ended when it snapshotted: its chain's `end_of_input` had run and
    /// `EndOfData` had gone out on every output (Flink's `OperatorSubtaskState#isFinished`). A
    /// subtask restored from this handle does not run `end_of_input` again. (The metadata is
    /// bincode, which has no missing fields: version-1 metadata is read through `v1`.)
    pub data_ended: bool,
}

impl SubtaskStateHandle {
    /// A handle with no state at all (a stateless subtask still acknowledges), data not ended.
    pub fn empty(subtask: SubtaskId) -> Self {
        SubtaskStateHandle { subtask, keyed: None, operator: None, data_ended: false }
    }

    /// Every blob this handle names (keyed first, then operator).
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        self.keyed.as_ref().map(|k| &k.blob).into_iter().chain(self.operator.as_ref())
    }

    /// Checks the handle against the subtask that sent it and the range it owns: the subtask
    /// matches, the keyed slices cover `range` exactly once each and lie inside their blob.
    pub fn validate(&self, sender: SubtaskId, range: KeyGroupRange) -> Result<(), HandleError> {
        if self.subtask != sender {
            return Err(HandleError::WrongSubtask { sender, named: self.subtask });
        }
        let Some(keyed) = &self.keyed else { return Ok(()) };
        let mut seen = BTreeSet::new();
        for slice in &keyed.key_groups {
            if !range.contains(slice.key_group) {
                return Err(HandleError::KeyGroupOutsideRange { key_group: slice.key_group, range });
            }
            if !seen.insert(slice.key_group) {
                return Err(HandleError::DuplicateKeyGroup(slice.key_group));
            }
            let end = slice.offset.checked_add(slice.len);
            if end.is_none_or(|end| end > keyed.blob.len) {
                return Err(HandleError::SliceOutsideBlob { key_group: slice.key_group, blob_len: keyed.blob.len });
            }
        }
        if let Some(missing) = range.iter().find(|kg| !seen.contains(kg)) {
            return Err(HandleError::MissingKeyGroup(missing));
        }
        debug_assert_eq!(seen.len() as u32, range.len());
        Ok(())
    }
}

/// Why an acknowledged state handle cannot be part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The handle names another subtask than the one that sent it.
    #[error("handle names subtask {named} but was sent by {sender}")]
    WrongSubtask {
        /// The subtask that acknowledged.
        sender: SubtaskId,
        /// The subtask the handle names.
        named: SubtaskId,
    },
    /// A key group the subtask does not own.
    #[error("{key_group} is outside the subtask's key-group range {range:?}")]
    KeyGroupOutsideRange {
        /// The key group.
        key_group: KeyGroup,
        /// The subtask's range.
        range: KeyGroupRange,
    },
    /// A key group listed twice.
    #[error("{0} is listed twice")]
    DuplicateKeyGroup(KeyGroup),
    /// A key group of the range is not listed.
    #[error("{0} of the subtask's range is missing")]
    MissingKeyGroup(KeyGroup),
    /// A slice reaches past the end of its blob.
    #[error("the slice of {key_group} reaches past the blob's {blob_len} bytes")]
    SliceOutsideBlob {
        /// The key group.
        key_group: KeyGroup,
        /// The blob's length.
        blob_len: u64,
    },
}

/// One operator's part of a checkpoint (Flink's `OperatorState`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperatorCheckpoint {
    /// The operator's parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// The operator's max parallelism (the number of key groups); fixed for the job's life.
    pub max_parallelism: u32,
    /// One handle per subtask, in subtask-index order.
    pub subtasks: Vec<SubtaskStateHandle>,
}

/// A completed (or completing) checkpoint: what is written to the blob store and read on restore.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// The attempt that took it.
    pub attempt: AttemptId,
    /// When the coordinator triggered it.
    pub triggered_at_ms: u64,
    /// When every subtask had acknowledged and the metadata write was issued (the checkpoint
    /// completes once that write is durable, a little later).
    pub completed_at_ms: u64,
    /// True for the final checkpoint taken after every source reached end of input.
    pub is_final: bool,
    /// Every operator's state.
    pub operators: BTreeMap<OperatorId, OperatorCheckpoint>,
}

impl CheckpointMetadata {
    /// Encodes the metadata in its checked envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        codec::seal_value(METADATA_MAGIC, METADATA_FORMAT_VERSION, self)
    }

    /// Decodes metadata of [`METADATA_FORMAT_VERSION`] or [`METADATA_FORMAT_VERSION_V1`] (whose
    /// handles read as data not ended); a corrupt, truncated or foreign blob, or another version,
    /// is a typed error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        match codec::open_value(METADATA_MAGIC, METADATA_FORMAT_VERSION, bytes) {
            Err(CodecError::UnsupportedVersion { found: METADATA_FORMAT_VERSION_V1, .. }) => {
                codec::open_value::<v1::CheckpointMetadata>(METADATA_MAGIC, METADATA_FORMAT_VERSION_V1, bytes).map(Into::into)
            }
            decoded => decoded,
        }
    }

    /// Every distinct blob the checkpoint names (what to delete when it is discarded, besides
    /// the metadata blob itself).
    pub fn blobs(&self) -> BTreeSet<&BlobRef> {
        self.operators.values().flat_map(|op| op.subtasks.iter()).flat_map(SubtaskStateHandle::blobs).collect()
    }

    /// Which state each subtask of `operator` restores when the job restarts with
    /// `new_parallelism` (Flink's `StateAssignmentOperation`).
    ///
    /// New subtask `i` gets exactly the key groups of
    /// `KeyGroupRange::for_operator_index(max_parallelism, new_parallelism, i)`, each with the
    /// blob and slice holding it, and every old subtask's operator-state blob in old subtask
    /// order. An operator with no keyed handle at all has no keyed state: every new subtask gets
    /// an empty keyed list. Otherwise every key group must be present exactly once.
    pub fn restore_assignment(&self, operator: OperatorId, new_parallelism: u32) -> Result<Vec<SubtaskRestore>, RestoreError> {
        let op = self.operators.get(&operator).ok_or(RestoreError::UnknownOperator(operator))?;
        let max_parallelism = op.max_parallelism;
        // Metadata read back from the blob store is input floe did not write in this process:
        // a max parallelism above Flink's bound would size the assignment without limit.
        if new_parallelism == 0 || new_parallelism > max_parallelism || max_parallelism > crate::key_groups::UPPER_BOUND_MAX_PARALLELISM {
            return Err(RestoreError::InvalidParallelism { operator, new_parallelism, max_parallelism });
        }

        let mut old: Vec<&SubtaskStateHandle> = op.subtasks.iter().collect();
        old.sort_by_key(|h| h.subtask.index);

        let mut by_key_group: BTreeMap<KeyGroup, KeyGroupStateRef> = BTreeMap::new();
        let mut keyed = false;
        for handle in &old {
            let Some(k) = &handle.keyed else { continue };
            keyed = true;
            for slice in &k.key_groups {
                if slice.key_group.0 >= max_parallelism {
                    return Err(RestoreError::KeyGroupOutOfRange { key_group: slice.key_group, max_parallelism });
                }
                let entry = KeyGroupStateRef { blob: k.blob.clone(), slice: *slice };
                if by_key_group.insert(slice.key_group, entry).is_some() {
                    return Err(RestoreError::DuplicateKeyGroup(slice.key_group));
                }
            }
        }
        if keyed {
            if let Some(missing) = KeyGroupRange::all(max_parallelism).iter().find(|kg| !by_key_group.contains_key(kg)) {
                return Err(RestoreError::MissingKeyGroup(missing));
            }
        }
        debug_assert!(!keyed || by_key_group.len() as u32 == max_parallelism);

        let data_ended = finished_on_restore(operator, op, &old, new_parallelism)?;
        debug_assert_eq!(data_ended.len(), new_parallelism as usize);
        let operator_state: Vec<BlobRef> = old.iter().filter_map(|h| h.operator.clone()).collect();
        let assignment: Vec<SubtaskRestore> = (0..new_parallelism)
            .zip(data_ended)
            .map(|(i, data_ended)| {
                let subtask = SubtaskIndex(i);
                let key_group_range = KeyGroupRange::for_operator_index(max_parallelism, new_parallelism, subtask);
                let keyed_state = if keyed {
                    key_group_range.iter().map(|kg| by_key_group[&kg].clone()).collect()
                } else {
                    Vec::new()
                };
                SubtaskRestore { subtask, key_group_range, keyed: keyed_state, operator_state: operator_state.clone(), data_ended }
            })
            .collect();
        debug_assert_eq!(assignment.len(), new_parallelism as usize);
        Ok(assignment)
    }
}

/// Which new subtasks of `operator` restore as finished (data ended), one flag per new subtask.
///
/// At the parallelism of the checkpoint, new subtask `i` takes old subtask `i`'s flag (a subtask
/// missing from the checkpoint restores as running). At another parallelism the old subtasks must
/// agree: all finished (Flink's `FullyFinishedOperatorState`: every new subtask is finished on
/// restore) or none; otherwise [`RestoreError::PartiallyFinished`] — the key groups and operator
/// state of a finished subtask would be spread over subtasks that still consume input, and one
/// flag per new subtask could not say which part of them had ended.
fn finished_on_restore(operator: OperatorId, op: &OperatorCheckpoint, old: &[&SubtaskStateHandle], new_parallelism: u32) -> Result<Vec<bool>, RestoreError> {
    if new_parallelism == op.parallelism {
        let by_index: BTreeMap<SubtaskIndex, bool> = old.iter().map(|h| (h.subtask.index, h.data_ended)).collect();
        return Ok((0..new_parallelism).map(|i| by_index.get(&SubtaskIndex(i)).copied().unwrap_or(false)).collect());
    }
    let finished = old.iter().filter(|h| h.data_ended).count() as u32;
    let all = !old.is_empty() && finished == old.len() as u32 && old.len() as u32 == op.parallelism;
    if finished == 0 || all {
        return Ok(vec![all; new_parallelism as usize]);
    }
    Err(RestoreError::PartiallyFinished { operator, finished, parallelism: op.parallelism, new_parallelism })
}

/// Checkpoint metadata of format version 1 (before [`SubtaskStateHandle::data_ended`]), read
/// only: the same types without that field.
mod v1 {
    use super::{BlobRef, KeyedStateHandle};
    use crate::ids::{AttemptId, CheckpointId, OperatorId, SubtaskId};
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    pub(super) struct SubtaskStateHandle {
        subtask: SubtaskId,
        keyed: Option<KeyedStateHandle>,
        operator: Option<BlobRef>,
    }

    #[derive(Deserialize)]
    pub(super) struct OperatorCheckpoint {
        parallelism: u32,
        max_parallelism: u32,
        subtasks: Vec<SubtaskStateHandle>,
    }

    #[derive(Deserialize)]
    pub(super) struct CheckpointMetadata {
        checkpoint_id: CheckpointId,
        attempt: AttemptId,
        triggered_at_ms: u64,
        completed_at_ms: u64,
        is_final: bool,
        operators: BTreeMap<OperatorId, OperatorCheckpoint>,
    }

    impl From<CheckpointMetadata> for super::CheckpointMetadata {
        fn from(m: CheckpointMetadata) -> Self {
            let operators = m
                .operators
                .into_iter()
                .map(|(id, op)| {
                    let subtasks = op
                        .subtasks
                        .into_iter()
                        .map(|h| super::SubtaskStateHandle { subtask: h.subtask, keyed: h.keyed, operator: h.operator, data_ended: false })
                        .collect();
                    (id, super::OperatorCheckpoint { parallelism: op.parallelism, max_parallelism: op.max_parallelism, subtasks })
                })
                .collect();
            super::CheckpointMetadata {
                checkpoint_id: m.checkpoint_id,
                attempt: m.attempt,
                triggered_at_ms: m.triggered_at_ms,
                completed_at_ms: m.completed_at_ms,
                is_final: m.is_final,
                operators,
            }
        }
    }
}

/// One key group to restore: the blob and the slice of it holding the key group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupStateRef {
    /// The blob.
    pub blob: BlobRef,
    /// Where the key group lies in it.
    pub slice: KeyGroupSlice,
}

/// What one new subtask restores.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubtaskRestore {
    /// The new subtask.
    pub subtask: SubtaskIndex,
    /// The key groups it owns at the new parallelism.
    pub key_group_range: KeyGroupRange,
    /// One entry per key group of `key_group_range`, in key-group order (empty if the operator
    /// has no keyed state).
    pub keyed: Vec<KeyGroupStateRef>,
    /// Every old subtask's operator-state blob, in old subtask order (subtasks without operator
    /// state are skipped).
    pub operator_state: Vec<BlobRef>,
    /// The subtask is finished on restore (Flink's `TaskStateSnapshot#isTaskFinished`): its data
    /// had ended when the checkpoint was taken, so what its chain's `end_of_input` emitted is
    /// already in the checkpoint. It must not run `end_of_input` again; when its input ends it
    /// only sends `EndOfData` on.
    pub data_ended: bool,
}

/// Why a checkpoint cannot be restored for an operator at a parallelism.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The checkpoint has no state for this operator.
    #[error("the checkpoint has no state for {0}")]
    UnknownOperator(OperatorId),
    /// The new parallelism is 0 or above the max parallelism.
    #[error("{operator} cannot restore at parallelism {new_parallelism} (max parallelism {max_parallelism})")]
    InvalidParallelism {
        /// The operator.
        operator: OperatorId,
        /// The requested parallelism.
        new_parallelism: u32,
        /// The operator's max parallelism.
        max_parallelism: u32,
    },
    /// A key group at or above the max parallelism.
    #[error("{key_group} is out of range for max parallelism {max_parallelism}")]
    KeyGroupOutOfRange {
        /// The key group.
        key_group: KeyGroup,
        /// The operator's max parallelism.
        max_parallelism: u32,
    },
    /// A key group no subtask snapshotted.
    #[error("{0} is missing from the checkpoint")]
    MissingKeyGroup(KeyGroup),
    /// A key group snapshotted twice.
    #[error("{0} is present twice in the checkpoint")]
    DuplicateKeyGroup(KeyGroup),
    /// Some but not all subtasks of the operator had finished (their data ended) when the
    /// checkpoint was taken, and the restore changes the operator's parallelism.
    #[error("{operator} cannot be rescaled from {parallelism} to {new_parallelism}: {finished} of its subtasks had finished when the checkpoint was taken")]
    PartiallyFinished {
        /// The operator.
        operator: OperatorId,
        /// Old subtasks whose data had ended.
        finished: u32,
        /// The parallelism in the checkpoint.
        parallelism: u32,
        /// The requested parallelism.
        new_parallelism: u32,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key_groups::operator_index_for_key_group;
    use proptest::prelude::*;

    /// A handle for subtask `index` of `operator` at parallelism `p`, covering its range with
    /// 10-byte slices, plus an operator-state blob.
    pub(crate) fn handle_for(operator: OperatorId, index: u32, p: u32, max_p: u32, tag: &str) -> SubtaskStateHandle {
        let range = KeyGroupRange::for_operator_index(max_p, p, SubtaskIndex(index));
        let key_groups: Vec<KeyGroupSlice> = range
            .iter()
            .enumerate()
            .map(|(n, kg)| KeyGroupSlice { key_group: kg, offset: n as u64 * 10, len: 10 })
            .collect();
        let len = key_groups.len() as u64 * 10;
        SubtaskStateHandle {
            subtask: SubtaskId::new(operator, index),
            keyed: Some(KeyedStateHandle { blob: BlobRef { key: format!("{tag}/{operator}/{index}/keyed"), len, crc32: index }, key_groups }),
            operator: Some(BlobRef { key: format!("{tag}/{operator}/{index}/op"), len: 1, crc32: 0 }),
            data_ended: false,
        }
    }

    fn metadata_with(operator: OperatorId, p: u32, max_p: u32) -> CheckpointMetadata {
        let subtasks = (0..p).map(|i| handle_for(operator, i, p, max_p, "cp1")).collect();
        CheckpointMetadata {
            checkpoint_id: CheckpointId(1),
            attempt: AttemptId(1),
            triggered_at_ms: 10,
            completed_at_ms: 20,
            is_final: false,
            operators: BTreeMap::from([(operator, OperatorCheckpoint { parallelism: p, max_parallelism: max_p, subtasks })]),
        }
    }

    const OP: OperatorId = OperatorId(7);

    #[test]
    fn metadata_round_trips_and_damage_is_a_typed_error() {
        let meta = metadata_with(OP, 3, 16);
        let bytes = meta.to_bytes().unwrap();
        assert_eq!(CheckpointMetadata::from_bytes(&bytes).unwrap(), meta);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(CheckpointMetadata::from_bytes(&flipped), Err(CodecError::ChecksumMismatch { .. })));
        assert!(matches!(CheckpointMetadata::from_bytes(&bytes[..bytes.len() / 2]), Err(CodecError::Truncated { .. })));
        let foreign = codec::seal_value(*b"FLSS", METADATA_FORMAT_VERSION, &meta).unwrap();
        assert!(matches!(CheckpointMetadata::from_bytes(&foreign), Err(CodecError::BadMagic { .. })));
    }

    #[test]
    fn scaling_from_two_to_three_hands_out_each_key_group_once() {
        let meta = metadata_with(OP, 2, 8);
        let got = meta.restore_assignment(OP, 3).unwrap();
        let ranges: Vec<(u32, u32)> = got.iter().map(|r| (r.key_group_range.start, r.key_group_range.end)).collect();
        assert_eq!(ranges, vec![(0, 2), (3, 5), (6, 7)]);
        // new subtask 1 owns kg3 (old subtask 0's last) .. kg5 (old subtask 1's second).
        let kgs: Vec<(u32, &str)> = got[1].keyed.iter().map(|k| (k.slice.key_group.0, k.blob.key.as_str())).collect();
        assert_eq!(kgs, vec![(3, "cp1/op7/0/keyed"), (4, "cp1/op7/1/keyed"), (5, "cp1/op7/1/keyed")]);
        for r in &got {
            let ops: Vec<&str> = r.operator_state.iter().map(|b| b.key.as_str()).collect();
            assert_eq!(ops, vec!["cp1/op7/0/op", "cp1/op7/1/op"]);
        }
    }

    #[test]
    fn restore_assignment_rejects_bad_input() {
        let good = metadata_with(OP, 2, 8);
        let mut missing = good.clone();
        missing.operators.get_mut(&OP).unwrap().subtasks[1].keyed.as_mut().unwrap().key_groups.pop();
        let mut twice = good.clone();
        let extra = twice.operators[&OP].subtasks[0].keyed.as_ref().unwrap().key_groups[0];
        twice.operators.get_mut(&OP).unwrap().subtasks[1].keyed.as_mut().unwrap().key_groups.push(extra);
        let mut beyond = good.clone();
        beyond.operators.get_mut(&OP).unwrap().subtasks[1].keyed.as_mut().unwrap().key_groups[0].key_group = KeyGroup(8);
        let cases: Vec<(&str, &CheckpointMetadata, OperatorId, u32, RestoreError)> = vec![
            ("unknown operator", &good, OperatorId(1), 2, RestoreError::UnknownOperator(OperatorId(1))),
            ("parallelism 0", &good, OP, 0, RestoreError::InvalidParallelism { operator: OP, new_parallelism: 0, max_parallelism: 8 }),
            ("above max", &good, OP, 9, RestoreError::InvalidParallelism { operator: OP, new_parallelism: 9, max_parallelism: 8 }),
            ("missing key group", &missing, OP, 2, RestoreError::MissingKeyGroup(KeyGroup(7))),
            ("key group twice", &twice, OP, 2, RestoreError::DuplicateKeyGroup(KeyGroup(0))),
            ("key group beyond max", &beyond, OP, 2, RestoreError::KeyGroupOutOfRange { key_group: KeyGroup(8), max_parallelism: 8 }),
        ];
        for (name, meta, op, p, want) in cases {
            assert_eq!(meta.restore_assignment(op, p).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn an_operator_without_keyed_state_restores_only_operator_state() {
        let mut meta = metadata_with(OP, 3, 8);
        for h in &mut meta.operators.get_mut(&OP).unwrap().subtasks {
            h.keyed = None;
        }
        meta.operators.get_mut(&OP).unwrap().subtasks[1].operator = None;
        let got = meta.restore_assignment(OP, 1).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].keyed.is_empty());
        let ops: Vec<&str> = got[0].operator_state.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(ops, vec!["cp1/op7/0/op", "cp1/op7/2/op"]);
    }

    #[test]
    fn handle_validation_catches_each_defect() {
        let range = KeyGroupRange::new(0, 2);
        let me = SubtaskId::new(OP, 0);
        let good = handle_for(OP, 0, 3, 9, "x");
        assert_eq!(good.validate(me, range), Ok(()));
        let edit = |f: fn(&mut SubtaskStateHandle)| {
            let mut h = good.clone();
            f(&mut h);
            h.validate(me, range).unwrap_err()
        };
        let cases: Vec<(&str, HandleError)> = vec![
            ("wrong subtask", edit(|h| h.subtask = SubtaskId::new(OP, 1))),
            ("outside range", edit(|h| h.keyed.as_mut().unwrap().key_groups[0].key_group = KeyGroup(3))),
            ("twice", edit(|h| h.keyed.as_mut().unwrap().key_groups[1].key_group = KeyGroup(0))),
            ("missing", edit(|h| {
                h.keyed.as_mut().unwrap().key_groups.pop();
            })),
            ("past the blob", edit(|h| h.keyed.as_mut().unwrap().key_groups[2].len = 11)),
            ("overflow", edit(|h| h.keyed.as_mut().unwrap().key_groups[2].offset = u64::MAX)),
        ];
        let want: Vec<fn(&HandleError) -> bool> = vec![
            |e| matches!(e, HandleError::WrongSubtask { .. }),
            |e| matches!(e, HandleError::KeyGroupOutsideRange { .. }),
            |e| matches!(e, HandleError::DuplicateKeyGroup(KeyGroup(0))),
            |e| matches!(e, HandleError::MissingKeyGroup(KeyGroup(2))),
            |e| matches!(e, HandleError::SliceOutsideBlob { .. }),
            |e| matches!(e, HandleError::SliceOutsideBlob { .. }),
        ];
        for ((name, err), is_expected) in cases.iter().zip(want) {
            assert!(is_expected(err), "{name}: {err:?}");
        }
        assert_eq!(SubtaskStateHandle::empty(me).validate(me, range), Ok(()));
    }

    /// `metadata_with(OP, p, 8)` whose subtasks listed in `ended` had finished.
    fn metadata_ended(p: u32, ended: &[u32]) -> CheckpointMetadata {
        let mut meta = metadata_with(OP, p, 8);
        for h in &mut meta.operators.get_mut(&OP).unwrap().subtasks {
            h.data_ended = ended.contains(&h.subtask.index.0);
        }
        meta
    }

    #[test]
    fn each_restored_subtask_learns_whether_its_data_had_ended() {
        /// (case, old parallelism, old subtasks finished, new parallelism, each new subtask's flag)
        type Case = (&'static str, u32, &'static [u32], u32, Result<Vec<bool>, RestoreError>);
        let cases: Vec<Case> = vec![
            ("none finished, same parallelism", 3, &[], 3, Ok(vec![false, false, false])),
            ("one finished, same parallelism: only it", 3, &[1], 3, Ok(vec![false, true, false])),
            ("all finished, same parallelism", 2, &[0, 1], 2, Ok(vec![true, true])),
            ("none finished, scaled out", 2, &[], 3, Ok(vec![false, false, false])),
            ("all finished, scaled out: finished on restore", 2, &[0, 1], 3, Ok(vec![true, true, true])),
            ("all finished, scaled in", 3, &[0, 1, 2], 1, Ok(vec![true])),
            (
                "partly finished, scaled in: refused",
                3,
                &[2],
                2,
                Err(RestoreError::PartiallyFinished { operator: OP, finished: 1, parallelism: 3, new_parallelism: 2 }),
            ),
            (
                "partly finished, scaled out: refused",
                2,
                &[0],
                4,
                Err(RestoreError::PartiallyFinished { operator: OP, finished: 1, parallelism: 2, new_parallelism: 4 }),
            ),
        ];
        for (name, p, ended, q, want) in cases {
            let got = metadata_ended(p, ended).restore_assignment(OP, q).map(|a| a.iter().map(|r| r.data_ended).collect::<Vec<_>>());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn data_ended_survives_the_metadata_round_trip() {
        let meta = metadata_ended(3, &[0, 2]);
        let back = CheckpointMetadata::from_bytes(&meta.to_bytes().unwrap()).unwrap();
        assert_eq!(back, meta);
        let flags: Vec<bool> = back.operators[&OP].subtasks.iter().map(|h| h.data_ended).collect();
        assert_eq!(flags, vec![true, false, true]);
    }

    /// The version-1 layout of a handle, as that build serialized it (no `data_ended`).
    #[derive(Serialize)]
    struct HandleV1<'a> {
        subtask: SubtaskId,
        keyed: &'a Option<KeyedStateHandle>,
        operator: &'a Option<BlobRef>,
    }

    #[derive(Serialize)]
    struct OperatorV1<'a> {
        parallelism: u32,
        max_parallelism: u32,
        subtasks: Vec<HandleV1<'a>>,
    }

    #[derive(Serialize)]
    struct MetadataV1<'a> {
        checkpoint_id: CheckpointId,
        attempt: AttemptId,
        triggered_at_ms: u64,
        completed_at_ms: u64,
        is_final: bool,
        operators: BTreeMap<OperatorId, OperatorV1<'a>>,
    }

    fn as_v1(meta: &CheckpointMetadata) -> MetadataV1<'_> {
        let operators = meta
            .operators
            .iter()
            .map(|(id, op)| {
                let subtasks = op.subtasks.iter().map(|h| HandleV1 { subtask: h.subtask, keyed: &h.keyed, operator: &h.operator }).collect();
                (*id, OperatorV1 { parallelism: op.parallelism, max_parallelism: op.max_parallelism, subtasks })
            })
            .collect();
        MetadataV1 {
            checkpoint_id: meta.checkpoint_id,
            attempt: meta.attempt,
            triggered_at_ms: meta.triggered_at_ms,
            completed_at_ms: meta.completed_at_ms,
            is_final: meta.is_final,
            operators,
        }
    }

    #[test]
    fn version_one_metadata_still_decodes_with_no_subtask_finished() {
        let meta = metadata_with(OP, 3, 16);
        let v1 = codec::seal_value(METADATA_MAGIC, METADATA_FORMAT_VERSION_V1, &as_v1(&meta)).unwrap();
        assert_eq!(CheckpointMetadata::from_bytes(&v1).unwrap(), meta, "every handle reads as not finished");
        // A version-2 body under a version-1 header is not silently misread, nor the reverse.
        let mislabelled = codec::seal_value(METADATA_MAGIC, METADATA_FORMAT_VERSION_V1, &metadata_ended(2, &[1])).unwrap();
        assert!(CheckpointMetadata::from_bytes(&mislabelled).is_err());
        let unknown = codec::seal_value(METADATA_MAGIC, METADATA_FORMAT_VERSION + 1, &meta).unwrap();
        assert!(matches!(
            CheckpointMetadata::from_bytes(&unknown),
            Err(CodecError::UnsupportedVersion { expected: METADATA_FORMAT_VERSION, found }) if found == METADATA_FORMAT_VERSION + 1
        ));
    }

    proptest! {
        /// Restoring at any parallelism q from any parallelism p assigns every key group to
        /// exactly one new subtask — the one `operator_index_for_key_group` names — with the
        /// slice the old subtask wrote for it.
        #[test]
        fn every_key_group_goes_to_exactly_the_subtask_flink_names(max_p in 1u32..=300, p_seed in 0u32..300, q_seed in 0u32..300) {
            let p = 1 + p_seed % max_p;
            let q = 1 + q_seed % max_p;
            let meta = metadata_with(OP, p, max_p);
            let got = meta.restore_assignment(OP, q).unwrap();
            prop_assert_eq!(got.len() as u32, q);
            let mut owner: BTreeMap<KeyGroup, SubtaskIndex> = BTreeMap::new();
            for r in &got {
                prop_assert_eq!(r.keyed.len() as u32, r.key_group_range.len());
                prop_assert_eq!(r.operator_state.len() as u32, p);
                for k in &r.keyed {
                    prop_assert!(owner.insert(k.slice.key_group, r.subtask).is_none(), "{} assigned twice", k.slice.key_group);
                    prop_assert_eq!(operator_index_for_key_group(max_p, q, k.slice.key_group), r.subtask);
                    let old = operator_index_for_key_group(max_p, p, k.slice.key_group);
                    prop_assert_eq!(&k.blob.key, &format!("cp1/op7/{}/keyed", old.0));
                }
            }
            prop_assert_eq!(owner.len() as u32, max_p);
        }

        /// Finished on restore: at the same parallelism every subtask keeps its own flag; at
        /// another one an operator restores all finished or all running exactly when its old
        /// subtasks agreed, and is refused otherwise. A restore never invents an ended subtask.
        #[test]
        fn finished_on_restore_follows_the_old_subtasks(p in 1u32..=8, q in 1u32..=8, ended_bits in 0u32..256) {
            let ended: Vec<u32> = (0..p).filter(|i| ended_bits & (1 << i) != 0).collect();
            let got = metadata_ended(p, &ended).restore_assignment(OP, q);
            let finished = ended.len() as u32;
            if p == q {
                let flags: Vec<bool> = got.unwrap().iter().map(|r| r.data_ended).collect();
                prop_assert_eq!(flags, (0..p).map(|i| ended.contains(&i)).collect::<Vec<_>>());
            } else if finished == 0 || finished == p {
                let got = got.unwrap();
                prop_assert_eq!(got.len() as u32, q);
                prop_assert!(got.iter().all(|r| r.data_ended == (finished == p)));
            } else {
                prop_assert_eq!(got.unwrap_err(), RestoreError::PartiallyFinished { operator: OP, finished, parallelism: p, new_parallelism: q });
            }
        }
    }
}
