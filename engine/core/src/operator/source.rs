//! The source reader: the pure half of Flink's Kafka source (`FlinkKafkaConsumerBase` with its
//! `KafkaTopicPartitionAssigner`, and the newer `KafkaSourceReader`).
//!
//! A [`SourceReader`] reads one topic of the Kafka-like broker. It never talks to the broker: it
//! asks for data with [`SourceCommand::Fetch`] and the runtime hands the answer back through
//! [`SourceReader::on_fetched`].
//!
//! # Partition assignment
//!
//! Partitions are spread over the subtasks exactly as Flink's `KafkaTopicPartitionAssigner`
//! does: the topic's Java `String.hashCode` picks a start index
//! `((hash * 31) & 0x7FFFFFFF) % parallelism` and partition `k` goes to subtask
//! `(start + k) % parallelism` ([`partition_owner`]). Every partition has exactly one owner; a
//! subtask may own none (more subtasks than partitions) and is then at end of input at once.
//!
//! # Offsets: union list state, so rescaling works
//!
//! The reader keeps, for each assigned partition, the **next offset to read**. At a checkpoint
//! ([`Operator::snapshot_state`]) it writes those offsets as [`PartitionOffset`]s into the union
//! list state [`SOURCE_OFFSETS_STATE`]. On restore every subtask receives the union of every old
//! subtask's offsets (Flink's `unionListState`), computes its own assignment at the new
//! parallelism and keeps the offsets of the partitions it now owns; a partition absent from the
//! state starts at offset 0. So a restore at any parallelism reads every partition from exactly
//! where the checkpoint left it.
//!
//! # Barriers never split a record
//!
//! A source has no input channel, so the runtime injects barrier `n` *between* two
//! `on_fetched` calls: it calls `snapshot_state(n)` and then emits the barrier. Every record that
//! an `on_fetched` call emitted is before the barrier and counted in the snapshotted offsets;
//! every record of a later call is after it. A response that is still in flight at the snapshot
//! is simply not counted yet (the snapshotted offset is the first offset it will deliver), so a
//! restore re-reads it: records before snapshot `n` plus records after restoring `n` are all
//! records, each once.
//!
//! # Fetching
//!
//! At most one fetch per partition is outstanding, and at most
//! [`SourceReader::fetches_outstanding_max`] over all partitions; free slots go round-robin over
//! the unfinished partitions, so one busy partition cannot starve another. A fetch asks for at
//! most [`SourceReader::fetch_records_max`] records and never past a stopping offset. After a
//! response (even an empty one: the broker is expected to long-poll) the next fetch is issued at
//! once. A response whose `from` is not the offset of the partition's outstanding fetch is stale
//! (a duplicate, or an answer for a reader state that no longer exists) and is ignored.
//!
//! # Why `Operator<In = (), Out = T>`
//!
//! The reader implements [`Operator`] so that the task can drive it like any chain head:
//! `initialize_state`, `snapshot_state` and the checkpoint notifications have their usual
//! meaning. It has no input: `process_batch` accepts only an empty batch (anything else is a
//! [`OperatorError::Protocol`]). Its records come from the inherent method
//! [`SourceReader::on_fetched`], which has the same `(ctx, ..., out)` shape as `process_batch`.
//!
//! # Bounded input
//!
//! With stopping offsets ([`SourceSpec::stopping`]) the input is bounded: each partition is read
//! up to, not including, its stopping offset, and [`SourceReader::is_end_of_input`] turns true
//! once every assigned partition got there. The offsets are assumed dense (the input topics are
//! written without transactions), so the reader advances to one past the last record it got.

use super::{Data, Operator, OperatorCommand, OperatorContext, OperatorError, OperatorResult};
use crate::ids::{CheckpointId, Offset, PartitionId, SubtaskIndex};
use crate::key_groups::java_string_hash;
use crate::state::OperatorListState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The name of the union list state holding the next offset of every partition.
pub const SOURCE_OFFSETS_STATE: &str = "source-offsets";

/// Default bound on the records one fetch asks for.
pub const FETCH_RECORDS_MAX_DEFAULT: u32 = 1024;

/// Default bound on the fetches outstanding at once, over all partitions of one reader.
pub const FETCHES_OUTSTANDING_MAX_DEFAULT: usize = 4;

/// What to read: a topic, its partition count and (for bounded input) where to stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// The broker topic.
    pub topic: String,
    /// The topic's partition count; partitions are `0..partitions`.
    pub partitions: u32,
    /// For bounded input: per partition, the offset to stop before (exclusive). When present it
    /// must name every partition of the topic and no other.
    pub stopping: Option<BTreeMap<PartitionId, Offset>>,
}

impl SourceSpec {
    /// An unbounded source over `partitions` partitions of `topic`.
    pub fn unbounded(topic: impl Into<String>, partitions: u32) -> Self {
        SourceSpec { topic: topic.into(), partitions, stopping: None }
    }

    /// A bounded source: partition `k` is read up to, not including, `stopping[k]`.
    pub fn bounded(topic: impl Into<String>, stopping: &[u64]) -> Self {
        let partitions = u32::try_from(stopping.len()).expect("a topic has fewer than 2^32 partitions");
        let stopping = stopping.iter().enumerate().map(|(k, &o)| (PartitionId(k as u32), Offset(o))).collect();
        SourceSpec { topic: topic.into(), partitions, stopping: Some(stopping) }
    }

    /// Checks the spec: a non-empty topic, at least one partition, and stopping offsets (if any)
    /// for exactly the topic's partitions.
    pub fn validate(&self) -> Result<(), SourceSpecError> {
        if self.topic.is_empty() {
            return Err(SourceSpecError::EmptyTopic);
        }
        if self.partitions == 0 {
            return Err(SourceSpecError::NoPartitions { topic: self.topic.clone() });
        }
        if let Some(stopping) = &self.stopping {
            if let Some((&partition, _)) = stopping.range(PartitionId(self.partitions)..).next() {
                return Err(SourceSpecError::UnknownStoppingPartition { partition, partitions: self.partitions });
            }
            if let Some(partition) = (0..self.partitions).map(PartitionId).find(|p| !stopping.contains_key(p)) {
                return Err(SourceSpecError::StoppingOffsetMissing { partition });
            }
        }
        Ok(())
    }

    /// The stopping offset of `partition`, if the input is bounded.
    pub fn stopping_offset(&self, partition: PartitionId) -> Option<Offset> {
        self.stopping.as_ref().and_then(|s| s.get(&partition).copied())
    }
}

/// Why a [`SourceSpec`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceSpecError {
    /// The topic name is empty.
    #[error("the source topic name is empty")]
    EmptyTopic,
    /// The topic has no partition.
    #[error("source topic {topic:?} has no partition")]
    NoPartitions {
        /// The topic.
        topic: String,
    },
    /// Bounded input without a stopping offset for this partition.
    #[error("bounded source has no stopping offset for partition {partition}")]
    StoppingOffsetMissing {
        /// The partition without a stopping offset.
        partition: PartitionId,
    },
    /// A stopping offset for a partition the topic does not have.
    #[error("stopping offset given for partition {partition}, but the topic has {partitions} partitions")]
    UnknownStoppingPartition {
        /// The partition named.
        partition: PartitionId,
        /// The topic's partition count.
        partitions: u32,
    },
}

/// Flink's `KafkaTopicPartitionAssigner` start index: the subtask that gets partition 0 of `topic`.
/// Panics if `parallelism` is 0 (callers check it first).
pub fn partition_start_index(topic: &str, parallelism: u32) -> u32 {
    assert!(parallelism > 0, "parallelism must be positive");
    let hash = java_string_hash(topic).wrapping_mul(31) & 0x7FFF_FFFF;
    debug_assert!(hash >= 0);
    (hash as u32) % parallelism
}

/// The subtask that reads `partition` of `topic` at `parallelism` (Flink's
/// `KafkaTopicPartitionAssigner.assign`). Panics if `parallelism` is 0.
pub fn partition_owner(topic: &str, partition: PartitionId, parallelism: u32) -> SubtaskIndex {
    let start = u64::from(partition_start_index(topic, parallelism));
    SubtaskIndex(((start + u64::from(partition.0)) % u64::from(parallelism)) as u32)
}

/// The partitions of a `partitions`-partition `topic` that `subtask` reads at `parallelism`, in
/// partition order. Panics if `parallelism` is 0.
pub fn assigned_partitions(topic: &str, partitions: u32, subtask: SubtaskIndex, parallelism: u32) -> Vec<PartitionId> {
    (0..partitions).map(PartitionId).filter(|&p| partition_owner(topic, p, parallelism) == subtask).collect()
}

/// One entry of the [`SOURCE_OFFSETS_STATE`] union list state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// The partition.
    pub partition: PartitionId,
    /// The next offset to read (everything before it has been emitted).
    pub next: Offset,
}

/// A source reader's request to the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceCommand {
    /// Read up to `max_records` records of `partition` (of the reader's topic), starting at `from`,
    /// and hand them to [`SourceReader::on_fetched`] with the same `partition` and `from`.
    Fetch {
        /// The partition to read.
        partition: PartitionId,
        /// The first offset wanted.
        from: Offset,
        /// The most records wanted (the broker may return fewer).
        max_records: u32,
    },
}

/// Turns the bytes the broker stores into a record. It takes them by value: a decoder may keep
/// the allocation (a line of text becomes its `String` without a copy).
pub type RecordDecoder<T> = fn(Vec<u8>) -> Result<T, String>;

/// Where the reader is in one assigned partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    /// The next offset to emit.
    next: Offset,
    /// Bounded input: stop before this offset.
    stop: Option<Offset>,
    /// The `from` of the fetch in flight, if any.
    in_flight: Option<Offset>,
}

impl Cursor {
    fn is_finished(&self) -> bool {
        self.stop.is_some_and(|stop| self.next >= stop)
    }
}

/// The pure half of a Kafka-like source subtask: partition assignment, offsets, fetch requests
/// and decoding. See the [module documentation](self).
pub struct SourceReader<T> {
    spec: SourceSpec,
    decoder: RecordDecoder<T>,
    fetch_records_max: u32,
    fetches_outstanding_max: usize,
    /// Assigned partitions; `None` until `initialize_state`.
    cursors: Option<BTreeMap<PartitionId, Cursor>>,
    /// The partition that got the last fetch slot (round-robin position).
    last_fetched: Option<PartitionId>,
    stale_responses: u64,
    records_emitted: u64,
}

impl<T> std::fmt::Debug for SourceReader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceReader")
            .field("spec", &self.spec)
            .field("cursors", &self.cursors)
            .field("stale_responses", &self.stale_responses)
            .field("records_emitted", &self.records_emitted)
            .finish_non_exhaustive()
    }
}

impl<T> SourceReader<T> {
    /// A reader of `spec` decoding records with `decoder`, with the default fetch bounds.
    pub fn new(spec: SourceSpec, decoder: RecordDecoder<T>) -> Result<Self, SourceSpecError> {
        spec.validate()?;
        Ok(SourceReader {
            spec,
            decoder,
            fetch_records_max: FETCH_RECORDS_MAX_DEFAULT,
            fetches_outstanding_max: FETCHES_OUTSTANDING_MAX_DEFAULT,
            cursors: None,
            last_fetched: None,
            stale_responses: 0,
            records_emitted: 0,
        })
    }

    /// Sets the most records one fetch asks for (at least 1).
    pub fn with_fetch_records_max(mut self, fetch_records_max: u32) -> Self {
        self.fetch_records_max = fetch_records_max.max(1);
        self
    }

    /// Sets the most fetches outstanding at once over all partitions (at least 1).
    pub fn with_fetches_outstanding_max(mut self, fetches_outstanding_max: usize) -> Self {
        self.fetches_outstanding_max = fetches_outstanding_max.max(1);
        self
    }

    /// What this reader reads.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// The most records one fetch asks for.
    pub fn fetch_records_max(&self) -> u32 {
        self.fetch_records_max
    }

    /// The most fetches outstanding at once.
    pub fn fetches_outstanding_max(&self) -> usize {
        self.fetches_outstanding_max
    }

    /// The partitions this subtask reads, in order (empty before `initialize_state`).
    pub fn assigned_partitions(&self) -> Vec<PartitionId> {
        self.cursors.iter().flat_map(|c| c.keys().copied()).collect()
    }

    /// The next offset to read of every assigned partition (what a snapshot would record).
    pub fn offsets(&self) -> BTreeMap<PartitionId, Offset> {
        self.cursors.iter().flat_map(|c| c.iter().map(|(&p, c)| (p, c.next))).collect()
    }

    /// The fetches in flight.
    pub fn fetches_outstanding(&self) -> usize {
        self.cursors.iter().flat_map(|c| c.values()).filter(|c| c.in_flight.is_some()).count()
    }

    /// Responses ignored because they did not match the outstanding fetch.
    pub fn stale_responses(&self) -> u64 {
        self.stale_responses
    }

    /// Records emitted since this reader was created.
    pub fn records_emitted(&self) -> u64 {
        self.records_emitted
    }

    /// True once `initialize_state` ran and every assigned partition reached its stopping offset
    /// (at once for a subtask without partitions; never for unbounded input with a partition).
    pub fn is_end_of_input(&self) -> bool {
        self.cursors.as_ref().is_some_and(|c| c.values().all(Cursor::is_finished))
    }

    /// Issues a fetch for every unfinished partition that has none outstanding, round-robin, up
    /// to [`Self::fetches_outstanding_max`]. Called by the reader itself after initialization and
    /// after each response; the runtime calls it after [`Self::on_fetch_failed`] (after a back-off).
    pub fn request_fetches(&mut self, ctx: &mut OperatorContext<'_>) {
        let Some(cursors) = self.cursors.as_mut() else { return };
        let mut outstanding = cursors.values().filter(|c| c.in_flight.is_some()).count();
        // Round-robin: start after the partition that got the previous slot.
        let order: Vec<PartitionId> = match self.last_fetched {
            Some(last) => cursors.range((Bound::Excluded(last), Bound::Unbounded)).chain(cursors.range(..=last)).map(|(&p, _)| p).collect(),
            None => cursors.keys().copied().collect(),
        };
        for partition in order {
            if outstanding >= self.fetches_outstanding_max {
                break;
            }
            let cursor = cursors.get_mut(&partition).expect("partition from the cursor map");
            if cursor.in_flight.is_some() || cursor.is_finished() {
                continue;
            }
            let remaining = cursor.stop.map_or(u64::MAX, |stop| stop.0 - cursor.next.0);
            debug_assert!(remaining > 0, "a finished partition is skipped above");
            let max_records = u64::from(self.fetch_records_max).min(remaining) as u32;
            cursor.in_flight = Some(cursor.next);
            outstanding += 1;
            self.last_fetched = Some(partition);
            ctx.commands.push(OperatorCommand::Source(SourceCommand::Fetch { partition, from: cursor.next, max_records }));
        }
        debug_assert!(outstanding <= self.fetches_outstanding_max);
    }

    /// The fetch of `partition` from `from` failed (broker unreachable, timed out): forget it, so
    /// that [`Self::request_fetches`] issues it again. A failure report that does not match the
    /// outstanding fetch is ignored.
    pub fn on_fetch_failed(&mut self, partition: PartitionId, from: Offset) {
        if let Some(cursor) = self.cursors.as_mut().and_then(|c| c.get_mut(&partition)) {
            if cursor.in_flight == Some(from) {
                cursor.in_flight = None;
            }
        }
    }

    /// The answer to `Fetch { partition, from, .. }`: `records` as `(offset, bytes)` in offset
    /// order. Decodes them into `out`, advances the partition's offset past them and issues the
    /// next fetch. A stale answer (no fetch from `from` outstanding for `partition`) is ignored.
    ///
    /// Errors leave the reader and `out` unchanged: offsets that are not increasing or start
    /// before `from` are [`OperatorError::Protocol`]; a record that does not decode is
    /// [`OperatorError::Codec`].
    pub fn on_fetched(
        &mut self,
        ctx: &mut OperatorContext<'_>,
        partition: PartitionId,
        from: Offset,
        records: Vec<(Offset, Vec<u8>)>,
        out: &mut Vec<T>,
    ) -> OperatorResult {
        let Some(cursors) = self.cursors.as_mut() else {
            return Err(OperatorError::Protocol("source: on_fetched before initialize_state".into()));
        };
        let Some(cursor) = cursors.get_mut(&partition) else {
            self.stale_responses += 1;
            return Ok(());
        };
        if cursor.in_flight != Some(from) {
            self.stale_responses += 1;
            return Ok(());
        }
        debug_assert_eq!(cursor.next, from, "an outstanding fetch starts at the next offset");
        let mut expected_min = from;
        for (offset, _) in &records {
            if *offset < expected_min {
                return Err(OperatorError::Protocol(format!(
                    "source {}/{partition}: fetch from {from} returned offset {offset}, expected at least {expected_min}",
                    self.spec.topic
                )));
            }
            expected_min = offset.next();
        }
        let stop = cursor.stop.unwrap_or(Offset(u64::MAX));
        let out_len_before = out.len();
        let mut next = cursor.next;
        for (offset, bytes) in records {
            if offset >= stop {
                // Past the end of bounded input: everything before `stop` has been seen.
                next = stop;
                break;
            }
            match (self.decoder)(bytes) {
                Ok(record) => out.push(record),
                Err(e) => {
                    out.truncate(out_len_before);
                    return Err(OperatorError::Codec(format!(
                        "source {}/{partition} record {offset} does not decode: {e}",
                        self.spec.topic
                    )));
                }
            }
            next = offset.next();
        }
        debug_assert!(next >= cursor.next);
        debug_assert!(next <= stop);
        cursor.next = next;
        cursor.in_flight = None;
        self.records_emitted += (out.len() - out_len_before) as u64;
        self.request_fetches(ctx);
        Ok(())
    }
}

/// Reads the restored union list of offsets: one next offset per partition.
fn read_offsets(ctx: &mut OperatorContext<'_>) -> Result<BTreeMap<PartitionId, Offset>, OperatorError> {
    let state = offsets_state(ctx)?;
    let mut offsets = BTreeMap::new();
    for item in state.get_ref(ctx.operator_state) {
        if let Some(previous) = offsets.insert(item.partition, item.next) {
            if previous != item.next {
                return Err(OperatorError::State(format!(
                    "{SOURCE_OFFSETS_STATE}: partition {} restored with two offsets, {previous} and {}",
                    item.partition, item.next
                )));
            }
        }
    }
    Ok(offsets)
}

/// Replaces this subtask's share of the union list of offsets.
fn write_offsets(ctx: &mut OperatorContext<'_>, items: &[PartitionOffset]) -> OperatorResult {
    let state = offsets_state(ctx)?;
    state.update(ctx.operator_state, items.to_vec());
    Ok(())
}

/// The union list state of offsets (registered on first use).
fn offsets_state(ctx: &mut OperatorContext<'_>) -> Result<OperatorListState<PartitionOffset>, OperatorError> {
    ctx.operator_state
        .union_list_state(SOURCE_OFFSETS_STATE)
        .map_err(|e| OperatorError::State(format!("{SOURCE_OFFSETS_STATE}: {e}")))
}

impl<T: Data> Operator for SourceReader<T> {
    type In = ();
    type Out = T;

    /// Computes this subtask's partitions, takes their offsets from the restored union list state
    /// (0 for a partition it does not name) and issues the first fetches.
    fn initialize_state(&mut self, ctx: &mut OperatorContext<'_>, restored_from: Option<CheckpointId>) -> OperatorResult {
        if self.cursors.is_some() {
            return Err(OperatorError::Protocol("source: initialize_state called twice".into()));
        }
        if ctx.parallelism == 0 || ctx.subtask.0 >= ctx.parallelism {
            return Err(OperatorError::Protocol(format!(
                "source: subtask {} at parallelism {}",
                ctx.subtask, ctx.parallelism
            )));
        }
        let restored = read_offsets(ctx)?;
        if restored_from.is_none() && !restored.is_empty() {
            return Err(OperatorError::Protocol(format!(
                "source: {SOURCE_OFFSETS_STATE} holds {} offsets, but this is a fresh start",
                restored.len()
            )));
        }
        let cursors = assigned_partitions(&self.spec.topic, self.spec.partitions, ctx.subtask, ctx.parallelism)
            .into_iter()
            .map(|p| {
                let next = restored.get(&p).copied().unwrap_or(Offset(0));
                (p, Cursor { next, stop: self.spec.stopping_offset(p), in_flight: None })
            })
            .collect();
        self.cursors = Some(cursors);
        self.request_fetches(ctx);
        Ok(())
    }

    /// A source has no input: only an empty batch is accepted.
    fn process_batch(&mut self, _ctx: &mut OperatorContext<'_>, input: Vec<()>, _out: &mut Vec<T>) -> OperatorResult {
        if input.is_empty() {
            Ok(())
        } else {
            Err(OperatorError::Protocol(format!("source: process_batch with {} input records", input.len())))
        }
    }

    /// Writes the next offset of every assigned partition into the union list state.
    fn snapshot_state(&mut self, ctx: &mut OperatorContext<'_>, _id: CheckpointId) -> OperatorResult {
        let Some(cursors) = self.cursors.as_ref() else {
            return Err(OperatorError::Protocol("source: snapshot_state before initialize_state".into()));
        };
        let items: Vec<PartitionOffset> = cursors.iter().map(|(&partition, c)| PartitionOffset { partition, next: c.next }).collect();
        write_offsets(ctx, &items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AttemptId;
    use crate::state::{redistribute, OperatorStateStore};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn decode_u64(bytes: Vec<u8>) -> Result<u64, String> {
        let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| format!("{} bytes, want 8", bytes.len()))?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// One source subtask: its reader, its operator state store and the commands it emitted.
    struct Subtask {
        reader: SourceReader<u64>,
        store: OperatorStateStore,
        commands: Vec<OperatorCommand>,
        index: u32,
        parallelism: u32,
    }

    impl Subtask {
        fn new(spec: &SourceSpec, index: u32, parallelism: u32, store: OperatorStateStore) -> Self {
            let reader = SourceReader::new(spec.clone(), decode_u64).unwrap();
            Subtask { reader, store, commands: Vec::new(), index, parallelism }
        }

        fn with<R>(&mut self, f: impl FnOnce(&mut SourceReader<u64>, &mut OperatorContext<'_>) -> R) -> R {
            let mut ctx = OperatorContext {
                now_ms: 0,
                subtask: SubtaskIndex(self.index),
                parallelism: self.parallelism,
                attempt: AttemptId(1),
                keyed: None,
                operator_state: &mut self.store,
                commands: &mut self.commands,
            };
            f(&mut self.reader, &mut ctx)
        }

        fn init(&mut self, restored_from: Option<CheckpointId>) {
            self.with(|r, ctx| r.initialize_state(ctx, restored_from)).unwrap();
        }

        fn fetched(&mut self, partition: u32, from: u64, records: &[(u64, u64)]) -> Result<Vec<u64>, OperatorError> {
            let records = records.iter().map(|&(o, v)| (Offset(o), v.to_le_bytes().to_vec())).collect();
            let mut out = vec![];
            self.with(|r, ctx| r.on_fetched(ctx, PartitionId(partition), Offset(from), records, &mut out))?;
            Ok(out)
        }

        fn take_fetches(&mut self) -> Vec<(u32, u64, u32)> {
            self.commands
                .drain(..)
                .map(|c| match c {
                    OperatorCommand::Source(SourceCommand::Fetch { partition, from, max_records }) => (partition.0, from.0, max_records),
                    other => panic!("unexpected command {other:?}"),
                })
                .collect()
        }

        fn snapshot(&mut self, id: u64) -> Vec<u8> {
            self.with(|r, ctx| r.snapshot_state(ctx, CheckpointId(id))).unwrap();
            snapshot_store(&self.store)
        }
    }

    fn snapshot_store(store: &OperatorStateStore) -> Vec<u8> {
        store.snapshot().unwrap()
    }

    fn restored_stores(snapshots: &[Vec<u8>], parallelism: u32) -> Vec<OperatorStateStore> {
        redistribute(snapshots, parallelism)
            .unwrap()
            .into_iter()
            .map(|bytes| {
                let mut store = OperatorStateStore::new();
                store.restore(&bytes).unwrap();
                store
            })
            .collect()
    }

    fn offsets(pairs: &[(u32, u64)]) -> BTreeMap<PartitionId, Offset> {
        pairs.iter().map(|&(p, o)| (PartitionId(p), Offset(o))).collect()
    }

    #[test]
    fn the_start_index_follows_flinks_kafka_topic_partition_assigner() {
        // Worked by hand: "words".hashCode() = 113318569; * 31 wraps to 1365391991 after the mask.
        let cases: &[(&str, u32, u32)] = &[
            ("words", 1, 0),
            ("words", 2, 1),
            ("words", 3, 2),
            ("words", 4, 3),
            ("words", 7, 5),
            ("input", 4, 2),
            ("input", 5, 2),
            ("topic", 3, 1),
            ("topic", 5, 0),
            ("a", 4, 3),
        ];
        for &(topic, parallelism, start) in cases {
            assert_eq!(partition_start_index(topic, parallelism), start, "{topic} at parallelism {parallelism}");
        }
    }

    #[test]
    fn partition_k_goes_to_the_subtask_start_plus_k() {
        // "words" at parallelism 4 starts at subtask 3.
        let owners: Vec<u32> = (0..6).map(|k| partition_owner("words", PartitionId(k), 4).0).collect();
        assert_eq!(owners, vec![3, 0, 1, 2, 3, 0]);
        assert_eq!(assigned_partitions("words", 6, SubtaskIndex(3), 4), vec![PartitionId(0), PartitionId(4)]);
        assert_eq!(assigned_partitions("words", 6, SubtaskIndex(2), 4), vec![PartitionId(3)]);
    }

    #[test]
    fn every_partition_has_exactly_one_owner_at_every_parallelism() {
        for topic in ["words", "input", "topic", "a", "événements"] {
            for partitions in 1..=9 {
                for parallelism in 1..=8 {
                    let mut seen = BTreeSet::new();
                    for subtask in 0..parallelism {
                        for p in assigned_partitions(topic, partitions, SubtaskIndex(subtask), parallelism) {
                            assert!(seen.insert(p), "{topic}: {p} owned twice at parallelism {parallelism}");
                        }
                    }
                    assert_eq!(seen.len() as u32, partitions, "{topic}: a partition without owner");
                }
            }
        }
    }

    #[test]
    fn a_bad_spec_is_a_typed_error() {
        let cases: Vec<(SourceSpec, Result<(), SourceSpecError>)> = vec![
            (SourceSpec::unbounded("t", 3), Ok(())),
            (SourceSpec::bounded("t", &[5, 0]), Ok(())),
            (SourceSpec::unbounded("", 3), Err(SourceSpecError::EmptyTopic)),
            (SourceSpec::unbounded("t", 0), Err(SourceSpecError::NoPartitions { topic: "t".into() })),
            (
                SourceSpec { topic: "t".into(), partitions: 2, stopping: Some(offsets(&[(0, 4)])) },
                Err(SourceSpecError::StoppingOffsetMissing { partition: PartitionId(1) }),
            ),
            (
                SourceSpec { topic: "t".into(), partitions: 1, stopping: Some(offsets(&[(0, 4), (3, 1)])) },
                Err(SourceSpecError::UnknownStoppingPartition { partition: PartitionId(3), partitions: 1 }),
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.validate(), want, "{spec:?}");
            assert_eq!(SourceReader::new(spec, decode_u64).err(), want.err());
        }
    }

    #[test]
    fn initialization_fetches_every_partition_from_zero_up_to_the_bound() {
        // "topic" at parallelism 1: one subtask owns all 6 partitions; only 4 fetches may be out.
        let mut s = Subtask::new(&SourceSpec::unbounded("topic", 6), 0, 1, OperatorStateStore::new());
        s.init(None);
        assert_eq!(s.take_fetches(), vec![(0, 0, 1024), (1, 0, 1024), (2, 0, 1024), (3, 0, 1024)]);
        assert_eq!(s.reader.fetches_outstanding(), 4);
        // An answer frees a slot: it goes to the partitions that waited, round-robin.
        assert_eq!(s.fetched(1, 0, &[(0, 10), (1, 11)]).unwrap(), vec![10, 11]);
        assert_eq!(s.take_fetches(), vec![(4, 0, 1024)]);
        assert_eq!(s.fetched(0, 0, &[]).unwrap(), Vec::<u64>::new());
        assert_eq!(s.take_fetches(), vec![(5, 0, 1024)]);
        assert_eq!(s.fetched(2, 0, &[(0, 20)]).unwrap(), vec![20]);
        assert_eq!(s.take_fetches(), vec![(0, 0, 1024)], "after the last partition, back to the first");
        assert_eq!(s.reader.offsets(), offsets(&[(0, 0), (1, 2), (2, 1), (3, 0), (4, 0), (5, 0)]));
        assert_eq!(s.reader.records_emitted(), 3);
    }

    #[test]
    fn a_response_advances_the_offset_and_issues_the_next_fetch() {
        let mut s = Subtask::new(&SourceSpec::unbounded("t", 1), 0, 1, OperatorStateStore::new());
        s.reader = SourceReader::new(SourceSpec::unbounded("t", 1), decode_u64).unwrap().with_fetch_records_max(3);
        s.init(None);
        assert_eq!(s.take_fetches(), vec![(0, 0, 3)]);
        assert_eq!(s.fetched(0, 0, &[(0, 7), (1, 8), (2, 9)]).unwrap(), vec![7, 8, 9]);
        assert_eq!(s.take_fetches(), vec![(0, 3, 3)]);
        assert_eq!(s.reader.offsets(), offsets(&[(0, 3)]));
        assert!(!s.reader.is_end_of_input(), "unbounded input never ends");
    }

    #[test]
    fn stale_responses_are_ignored() {
        let mut s = Subtask::new(&SourceSpec::unbounded("t", 1), 0, 1, OperatorStateStore::new());
        s.init(None);
        s.take_fetches();
        assert_eq!(s.fetched(0, 0, &[(0, 1), (1, 2)]).unwrap(), vec![1, 2]);
        assert_eq!(s.take_fetches(), vec![(0, 2, 1024)]);
        // (partition, from, records): a duplicate of the first answer, an answer from the future,
        // an answer for a partition this subtask does not own.
        type Answer = (u32, u64, &'static [(u64, u64)]);
        let stale: &[Answer] = &[(0, 0, &[(0, 1), (1, 2)]), (0, 5, &[(5, 9)]), (7, 0, &[(0, 3)])];
        for (n, &(partition, from, records)) in stale.iter().enumerate() {
            assert_eq!(s.fetched(partition, from, records).unwrap(), Vec::<u64>::new());
            assert_eq!(s.reader.stale_responses(), n as u64 + 1);
            assert_eq!(s.reader.offsets(), offsets(&[(0, 2)]));
            assert!(s.take_fetches().is_empty(), "a stale answer issues nothing");
        }
        // The real answer is still accepted.
        assert_eq!(s.fetched(0, 2, &[(2, 3)]).unwrap(), vec![3]);
    }

    #[test]
    fn a_failed_fetch_is_issued_again_on_request() {
        let mut s = Subtask::new(&SourceSpec::unbounded("t", 2), 0, 1, OperatorStateStore::new());
        s.init(None);
        assert_eq!(s.take_fetches(), vec![(0, 0, 1024), (1, 0, 1024)]);
        s.reader.on_fetch_failed(PartitionId(1), Offset(3)); // not the outstanding one: ignored
        assert_eq!(s.reader.fetches_outstanding(), 2);
        s.reader.on_fetch_failed(PartitionId(1), Offset(0));
        assert_eq!(s.reader.fetches_outstanding(), 1);
        s.with(|r, ctx| r.request_fetches(ctx));
        assert_eq!(s.take_fetches(), vec![(1, 0, 1024)]);
        s.with(|r, ctx| r.request_fetches(ctx));
        assert!(s.take_fetches().is_empty(), "one fetch per partition");
    }

    #[test]
    fn bounded_input_reads_up_to_the_stopping_offset_and_then_ends() {
        let spec = SourceSpec::bounded("t", &[3, 0]);
        let mut s = Subtask::new(&spec, 0, 1, OperatorStateStore::new());
        s.reader = SourceReader::new(spec, decode_u64).unwrap().with_fetch_records_max(2);
        s.init(None);
        // Partition 1 stops at 0: finished at once, never fetched.
        assert_eq!(s.take_fetches(), vec![(0, 0, 2)]);
        assert_eq!(s.fetched(0, 0, &[(0, 1), (1, 2)]).unwrap(), vec![1, 2]);
        assert_eq!(s.take_fetches(), vec![(0, 2, 1)], "never ask past the stopping offset");
        assert!(!s.reader.is_end_of_input());
        // A broker that returns more than asked: records at or past the stop are dropped.
        assert_eq!(s.fetched(0, 2, &[(2, 3), (3, 4), (4, 5)]).unwrap(), vec![3]);
        assert!(s.reader.is_end_of_input());
        assert!(s.take_fetches().is_empty());
        assert_eq!(s.reader.offsets(), offsets(&[(0, 3), (1, 0)]));
    }

    #[test]
    fn a_subtask_without_partitions_is_at_end_of_input_at_once() {
        // Two partitions, four subtasks: two subtasks own nothing.
        let spec = SourceSpec::unbounded("words", 2);
        let mut idle = 0;
        for index in 0..4 {
            let mut s = Subtask::new(&spec, index, 4, OperatorStateStore::new());
            assert!(!s.reader.is_end_of_input(), "not before initialization");
            s.init(None);
            let owns = !s.reader.assigned_partitions().is_empty();
            assert_eq!(s.reader.is_end_of_input(), !owns);
            assert_eq!(s.take_fetches().is_empty(), !owns);
            idle += usize::from(!owns);
        }
        assert_eq!(idle, 2);
    }

    #[test]
    fn an_undecodable_record_is_a_codec_error_that_changes_nothing() {
        let mut s = Subtask::new(&SourceSpec::unbounded("t", 1), 0, 1, OperatorStateStore::new());
        s.init(None);
        s.take_fetches();
        let records = vec![(Offset(0), 1u64.to_le_bytes().to_vec()), (Offset(1), vec![1, 2, 3])];
        let mut out = vec![99];
        let err = s.with(|r, ctx| r.on_fetched(ctx, PartitionId(0), Offset(0), records, &mut out)).unwrap_err();
        assert!(matches!(&err, OperatorError::Codec(m) if m.contains("t/p0 record @1")), "{err}");
        assert_eq!(out, vec![99], "nothing of the failed batch is emitted");
        assert_eq!(s.reader.offsets(), offsets(&[(0, 0)]));
        assert_eq!(s.reader.fetches_outstanding(), 1);
    }

    #[test]
    fn offsets_that_go_backwards_are_a_protocol_error() {
        let cases: &[&[(u64, u64)]] = &[&[(1, 1), (1, 2)], &[(2, 1), (1, 2)]];
        for records in cases {
            let mut s = Subtask::new(&SourceSpec::unbounded("t", 1), 0, 1, OperatorStateStore::new());
            s.init(None);
            s.take_fetches();
            s.fetched(0, 0, &[(0, 0)]).unwrap();
            let err = s.fetched(0, 1, records).unwrap_err();
            assert!(matches!(err, OperatorError::Protocol(_)), "{records:?}: {err}");
            assert_eq!(s.reader.offsets(), offsets(&[(0, 1)]));
        }
    }

    #[test]
    fn calls_out_of_protocol_order_are_protocol_errors() {
        let mut s = Subtask::new(&SourceSpec::unbounded("t", 1), 0, 1, OperatorStateStore::new());
        assert!(matches!(s.fetched(0, 0, &[]), Err(OperatorError::Protocol(_))));
        assert!(matches!(s.with(|r, ctx| r.snapshot_state(ctx, CheckpointId(1))), Err(OperatorError::Protocol(_))));
        s.init(None);
        assert!(matches!(s.with(|r, ctx| r.initialize_state(ctx, None)), Err(OperatorError::Protocol(_))));
        assert!(matches!(s.with(|r, ctx| r.process_batch(ctx, vec![()], &mut vec![])), Err(OperatorError::Protocol(_))));
        assert_eq!(s.with(|r, ctx| r.process_batch(ctx, vec![], &mut vec![])), Ok(()));
        let mut bad = Subtask::new(&SourceSpec::unbounded("t", 1), 2, 2, OperatorStateStore::new());
        assert!(matches!(bad.with(|r, ctx| r.initialize_state(ctx, None)), Err(OperatorError::Protocol(_))));
        // Restored offsets, but the host says this is a fresh start.
        let snapshot = s.snapshot(1);
        let store = restored_stores(&[snapshot], 1).pop().unwrap();
        let mut confused = Subtask::new(&SourceSpec::unbounded("t", 1), 0, 1, store);
        assert!(matches!(confused.with(|r, ctx| r.initialize_state(ctx, None)), Err(OperatorError::Protocol(_))));
    }

    #[test]
    fn a_restore_at_any_parallelism_keeps_every_offset_and_every_partition_has_one_owner() {
        let spec = SourceSpec::unbounded("words", 5);
        // Read a different amount from each partition at parallelism 2.
        let mut old: Vec<Subtask> = (0..2).map(|i| Subtask::new(&spec, i, 2, OperatorStateStore::new())).collect();
        for s in &mut old {
            s.init(None);
            for (partition, from, _) in s.take_fetches() {
                let records: Vec<(u64, u64)> = (0..u64::from(partition) + 1).map(|o| (o, o)).collect();
                s.fetched(partition, from, &records).unwrap();
            }
        }
        let want = offsets(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        let snapshots: Vec<Vec<u8>> = old.iter_mut().map(|s| s.snapshot(1)).collect();
        // (new parallelism) → each restored subtask keeps exactly the offsets of its partitions.
        for parallelism in [1, 2, 3, 5, 7] {
            let mut seen = BTreeMap::new();
            for (index, store) in restored_stores(&snapshots, parallelism).into_iter().enumerate() {
                let mut s = Subtask::new(&spec, index as u32, parallelism, store);
                s.init(Some(CheckpointId(1)));
                for (partition, from, _) in s.take_fetches() {
                    assert_eq!(Some(&Offset(from)), want.get(&PartitionId(partition)), "fetch resumes at the restored offset");
                }
                for (p, o) in s.reader.offsets() {
                    assert!(seen.insert(p, o).is_none(), "{p} owned twice at parallelism {parallelism}");
                }
            }
            assert_eq!(seen, want, "parallelism {parallelism}");
        }
    }

    #[test]
    fn partitions_missing_from_the_restored_state_start_at_zero() {
        // Checkpointed with 2 partitions; the topic now has 3.
        let mut old = Subtask::new(&SourceSpec::unbounded("t", 2), 0, 1, OperatorStateStore::new());
        old.init(None);
        old.take_fetches();
        old.fetched(0, 0, &[(0, 0), (1, 1)]).unwrap();
        let snapshot = old.snapshot(4);
        let store = restored_stores(&[snapshot], 1).pop().unwrap();
        let mut s = Subtask::new(&SourceSpec::unbounded("t", 3), 0, 1, store);
        s.init(Some(CheckpointId(4)));
        assert_eq!(s.reader.offsets(), offsets(&[(0, 2), (1, 0), (2, 0)]));
    }

    /// A broker with `logs[p]` records in partition `p` (value `p * 1000 + offset`) and readers at
    /// `parallelism`; `script` picks which in-flight fetch is answered next and how many records
    /// it gets (0 = as many as asked), and may duplicate an answer.
    struct World {
        spec: SourceSpec,
        logs: Vec<u64>,
        subtasks: Vec<Subtask>,
        in_flight: Vec<(usize, u32, u64, u32)>,
        emitted: Vec<u64>,
    }

    impl World {
        fn new(logs: &[u64], parallelism: u32, stores: Vec<OperatorStateStore>, restored_from: Option<CheckpointId>) -> Self {
            let spec = SourceSpec::bounded("events", logs);
            let mut world = World { spec: spec.clone(), logs: logs.to_vec(), subtasks: vec![], in_flight: vec![], emitted: vec![] };
            for (index, store) in stores.into_iter().enumerate() {
                let mut s = Subtask::new(&spec, index as u32, parallelism, store);
                s.reader = SourceReader::new(spec.clone(), decode_u64).unwrap().with_fetch_records_max(3).with_fetches_outstanding_max(2);
                s.init(restored_from);
                world.subtasks.push(s);
            }
            world.collect_fetches();
            world
        }

        fn collect_fetches(&mut self) {
            for (i, s) in self.subtasks.iter_mut().enumerate() {
                for (p, from, max) in s.take_fetches() {
                    self.in_flight.push((i, p, from, max));
                }
            }
        }

        fn answer(&mut self, pick: usize, take: u32, duplicate: bool) {
            if self.in_flight.is_empty() {
                return;
            }
            let (i, p, from, max) = self.in_flight.remove(pick % self.in_flight.len());
            let end = self.logs[p as usize].min(from + u64::from(if take == 0 { max } else { take.min(max) }));
            let records: Vec<(u64, u64)> = (from..end).map(|o| (o, u64::from(p) * 1000 + o)).collect();
            let out = self.subtasks[i].fetched(p, from, &records).unwrap();
            self.emitted.extend(out);
            if duplicate {
                let again = self.subtasks[i].fetched(p, from, &records).unwrap();
                assert!(again.is_empty(), "a duplicate answer emits nothing");
            }
            self.collect_fetches();
        }

        fn run_to_end(&mut self) {
            let mut steps = 0;
            while !self.subtasks.iter().all(|s| s.reader.is_end_of_input()) {
                assert!(!self.in_flight.is_empty(), "unfinished but nothing in flight");
                self.answer(0, 0, false);
                steps += 1;
                assert!(steps < 10_000, "no progress");
            }
        }

        fn all_records(&self) -> Vec<u64> {
            let mut all: Vec<u64> = (0..self.logs.len()).flat_map(|p| (0..self.logs[p]).map(move |o| p as u64 * 1000 + o)).collect();
            all.sort_unstable();
            all
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn records_before_a_snapshot_plus_records_after_restoring_it_are_every_record_once(
            logs in proptest::collection::vec(0u64..12, 1..5),
            parallelism in 1u32..4,
            restored_parallelism in 1u32..5,
            before in proptest::collection::vec((any::<usize>(), 0u32..4, any::<bool>()), 0..20),
            after in proptest::collection::vec((any::<usize>(), 0u32..4, any::<bool>()), 0..10),
        ) {
            let stores = (0..parallelism).map(|_| OperatorStateStore::new()).collect();
            let mut world = World::new(&logs, parallelism, stores, None);
            for &(pick, take, duplicate) in &before {
                world.answer(pick, take, duplicate);
            }
            // Barrier 1 between two answers: snapshot every subtask.
            let snapshots: Vec<Vec<u8>> = world.subtasks.iter_mut().map(|s| s.snapshot(1)).collect();
            let emitted_before = world.emitted.clone();
            // Records after the barrier are lost with the crash.
            for &(pick, take, duplicate) in &after {
                world.answer(pick, take, duplicate);
            }
            let mut restored = World::new(&logs, restored_parallelism, restored_stores(&snapshots, restored_parallelism), Some(CheckpointId(1)));
            prop_assert_eq!(restored.spec.clone(), world.spec.clone());
            restored.run_to_end();
            let mut got = emitted_before;
            got.extend(restored.emitted);
            got.sort_unstable();
            prop_assert_eq!(got, world.all_records());
        }
    }
}
