//! The [`RunRecord`]: everything one run of a world leaves behind for the judge — the input, the
//! committed output, the captured trace, every completed checkpoint read back from the blob store,
//! and the fault log. It is the one interface between the world (`run.rs`, built on the
//! cluster's `SimCluster`) and the judge (oracles, checkers, the "sometimes" catalog, reports), so
//! the judge can be tested on hand-made records, including deliberately broken ones.

use floe_core::records::PackedRecords;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One run's outcome, as the judge sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The scenario's name.
    pub scenario: String,
    /// The run's seed.
    pub seed: u64,
    /// The registered job (`word-count`, `two-shuffle`).
    pub job: String,
    /// Per input partition, the lines in offset order.
    pub input: Vec<Vec<String>>,
    /// Per output partition, the committed records in offset order (read committed).
    pub output: Vec<CommittedRecords>,
    /// The captured trace, in order.
    pub events: Vec<TraceEvent>,
    /// Every completed checkpoint, read back from the blob store.
    pub checkpoints: Vec<CheckpointView>,
    /// The faults injected, in order.
    pub faults: Vec<FaultLogEntry>,
    /// Whether the job finished (every source ended and the final checkpoint completed).
    pub finished: bool,
    /// When it finished (virtual ms since the run's start).
    pub finished_at_ms: Option<u64>,
    /// When the last fault was healed (virtual ms): the liveness phase starts here.
    pub healed_at_ms: u64,
    /// Virtual time the run lasted.
    pub sim_ms: u64,
    /// Failovers.
    pub restarts: u64,
    /// Checkpoints completed.
    pub checkpoints_completed: u64,
}

/// One output partition's committed records, in offset order, kept in the blocks the broker's
/// fetches returned (no copy per record). It reads and (de)serializes as the list of records.
#[derive(Clone, Default)]
#[derive(Serialize, Deserialize)]
#[serde(from = "Vec<Vec<u8>>", into = "Vec<Vec<u8>>")]
pub struct CommittedRecords {
    blocks: Vec<PackedRecords>,
    len: usize,
}

impl CommittedRecords {
    /// The records of `blocks`, in order.
    pub fn from_blocks(blocks: Vec<PackedRecords>) -> Self {
        let len = blocks.iter().map(PackedRecords::len).sum();
        CommittedRecords { blocks, len }
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone + '_ {
        self.blocks.iter().flat_map(PackedRecords::iter)
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every record.
    pub fn clear(&mut self) {
        *self = CommittedRecords::default();
    }

    /// The records, one vector each.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Rewrites the records through `f` on their list (copied out and packed again): for
    /// building broken records by hand.
    pub fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<Vec<u8>>) -> R) -> R {
        let mut records = self.to_vecs();
        let r = f(&mut records);
        *self = CommittedRecords::from(records);
        r
    }
}

impl From<Vec<Vec<u8>>> for CommittedRecords {
    fn from(records: Vec<Vec<u8>>) -> Self {
        CommittedRecords::from_blocks(vec![PackedRecords::from_values(&records)])
    }
}

impl From<CommittedRecords> for Vec<Vec<u8>> {
    fn from(records: CommittedRecords) -> Self {
        records.to_vecs()
    }
}

impl PartialEq for CommittedRecords {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for CommittedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One captured `tracing` event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Virtual time since the run's start, in ns.
    pub at_ns: u64,
    /// The node the event happened on (`jm`, `tm0`, `broker`, ...; `main` for the harness).
    pub node: String,
    /// The event's name (its `event` field, else its message), e.g. `checkpoint_completed`.
    pub name: String,
    /// Every other field, rendered as a string.
    pub fields: BTreeMap<String, String>,
}

impl TraceEvent {
    /// A builder for tests and tools: an event at `at_ms` on `node`.
    pub fn at_ms(at_ms: u64, node: &str, name: &str, fields: &[(&str, &str)]) -> Self {
        TraceEvent {
            at_ns: at_ms * 1_000_000,
            node: node.to_string(),
            name: name.to_string(),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// A field parsed as an id: the first run of ASCII digits in its value, so `7`, `cp7`,
    /// `CheckpointId(7)` and `Some(7)` all read as 7 (and `none` as `None`).
    pub fn id_field(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| parse_id(v))
    }
}

/// The first run of ASCII digits in `s`, as a number (`cp7` → 7, `none` → `None`).
pub fn parse_id(s: &str) -> Option<u64> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let digits: &str = &s[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// A completed checkpoint, as read back from the blob store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// The checkpoint id.
    pub id: u64,
    /// Per input partition, the next offset to read (lines consumed before the barrier).
    pub source_offsets: BTreeMap<u32, u64>,
    /// The word-count state: word → count.
    pub word_counts: BTreeMap<String, u64>,
    /// The two-shuffle job's second state: bucket → running sum (empty for `word-count`).
    pub bucket_sums: BTreeMap<u64, u64>,
}

/// One injected fault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultLogEntry {
    /// When (virtual ms since the run's start).
    pub at_ms: u64,
    /// The kind (`crash`, `restart`, `partition`, `heal`, `pause`, ...).
    pub kind: String,
    /// The nodes it hit.
    pub nodes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_records_read_the_same_however_they_are_blocked() {
        let records: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![], b"bcd".to_vec(), vec![0xff; 300]];
        let whole = CommittedRecords::from(records.clone());
        let blocked = CommittedRecords::from_blocks(vec![
            PackedRecords::from_values(&records[..1]),
            PackedRecords::new(),
            PackedRecords::from_values(&records[1..]),
        ]);
        assert_eq!(blocked.len(), 4);
        assert_eq!(blocked.to_vecs(), records);
        assert_eq!(blocked, whole);
        assert_ne!(blocked, CommittedRecords::from(records[..3].to_vec()));
        assert_eq!(format!("{blocked:?}"), format!("{records:?}"));
        let json = serde_json::to_string(&blocked).unwrap();
        assert_eq!(json, serde_json::to_string(&records).unwrap());
        assert_eq!(serde_json::from_str::<CommittedRecords>(&json).unwrap(), whole);
        let mut edited = blocked.clone();
        assert_eq!(edited.edit(|v| v.pop()), Some(vec![0xff; 300]));
        assert_eq!(edited.to_vecs(), records[..3]);
        edited.clear();
        assert!(edited.is_empty() && edited.iter().next().is_none());
    }

    #[test]
    fn ids_are_read_from_every_usual_rendering() {
        let cases: &[(&str, Option<u64>)] = &[
            ("7", Some(7)),
            ("cp7", Some(7)),
            ("CheckpointId(12)", Some(12)),
            ("Some(3)", Some(3)),
            ("none", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_id(s), *want, "{s:?}");
        }
    }
}
