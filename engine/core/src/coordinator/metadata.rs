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
/// The format version of checkpoint metadata this build writes and reads.
pub const METADATA_FORMAT_VERSION: u16 = 1;

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
}

impl SubtaskStateHandle {
    /// A handle with no state at all (a stateless subtask still acknowledges).
    pub fn empty(subtask: SubtaskId) -> Self {
        SubtaskStateHandle { subtask, keyed: None, operator: None }
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

    /// Decodes metadata; a corrupt, truncated or foreign blob is a typed error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::open_value(METADATA_MAGIC, METADATA_FORMAT_VERSION, bytes)
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

        let operator_state: Vec<BlobRef> = old.iter().filter_map(|h| h.operator.clone()).collect();
        let assignment: Vec<SubtaskRestore> = (0..new_parallelism)
            .map(|i| {
                let subtask = SubtaskIndex(i);
                let key_group_range = KeyGroupRange::for_operator_index(max_parallelism, new_parallelism, subtask);
                let keyed_state = if keyed {
                    key_group_range.iter().map(|kg| by_key_group[&kg].clone()).collect()
                } else {
                    Vec::new()
                };
                SubtaskRestore { subtask, key_group_range, keyed: keyed_state, operator_state: operator_state.clone() }
            })
            .collect();
        debug_assert_eq!(assignment.len(), new_parallelism as usize);
        Ok(assignment)
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
    }
}
