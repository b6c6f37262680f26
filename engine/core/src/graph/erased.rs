//! Type erasure between the typed DataStream API and the runtime.
//!
//! The job API is typed (`DataStream<T>`), but a host runs whatever job it is given, so the
//! execution graph holds operators and edges behind object-safe traits. A batch travels as an
//! [`AnyBatch`] (a boxed `Vec<T>` for the edge's `T`); each edge knows how to encode, decode and
//! route batches of its type; each operator checks the type of the batch it receives (a wrong
//! type is a host bug, reported as [`OperatorError::Protocol`], never a panic).

use crate::codec::{self, CodecError};
use crate::element::Watermark;
use crate::ids::{CheckpointId, KeyGroup, Offset, PartitionId};
use crate::key_groups::{key_group_for_key, operator_index_for_key_group, CompactString, Key, KeySelector};
use crate::operator::source::SourceReader;
use crate::operator::{Data, Operator, OperatorContext, OperatorError, OperatorResult};
use std::any::Any;
use std::sync::Arc;

/// A batch of records of some edge's type: always a `Vec<T>` inside.
pub type AnyBatch = Box<dyn Any + Send>;

/// How records are distributed from a producer's subtasks to a consumer's subtasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Partitioner {
    /// Producer subtask `i` sends to consumer subtask `i` (equal parallelism); chainable.
    Forward,
    /// By key group of the record's key, to the consumer subtask owning it.
    Hash {
        /// The consumer's max parallelism: the number of key groups.
        max_parallelism: u32,
    },
    /// Round robin over every consumer subtask, record by record.
    Rebalance,
    /// Every record to every consumer subtask.
    Broadcast,
}

/// An operator behind an object-safe trait (see [`Operator`] for the protocol).
pub trait DynOperator: Send {
    /// See [`Operator::initialize_state`].
    fn initialize_state(&mut self, ctx: &mut OperatorContext<'_>, restored_from: Option<CheckpointId>) -> OperatorResult;
    /// See [`Operator::process_batch`]; returns the output batch.
    fn process_batch(&mut self, ctx: &mut OperatorContext<'_>, input: AnyBatch) -> Result<AnyBatch, OperatorError>;
    /// See [`Operator::process_watermark`]; returns the output batch.
    fn process_watermark(&mut self, ctx: &mut OperatorContext<'_>, watermark: Watermark) -> Result<AnyBatch, OperatorError>;
    /// See [`Operator::advance_processing_time`]; returns the output batch.
    fn advance_processing_time(&mut self, ctx: &mut OperatorContext<'_>) -> Result<AnyBatch, OperatorError>;
    /// See [`Operator::snapshot_state`].
    fn snapshot_state(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult;
    /// See [`Operator::notify_checkpoint_complete`].
    fn notify_checkpoint_complete(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult;
    /// See [`Operator::notify_checkpoint_aborted`].
    fn notify_checkpoint_aborted(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult;
    /// See [`Operator::end_of_input`]; returns the output batch.
    fn end_of_input(&mut self, ctx: &mut OperatorContext<'_>) -> Result<AnyBatch, OperatorError>;
    /// The source reader behind this operator, if it is one: the host feeds it fetched records.
    fn as_source(&mut self) -> Option<&mut dyn DynSource> {
        None
    }
}

/// A [`SourceReader`] behind an object-safe trait: what a host needs to carry out its
/// [`crate::operator::SourceCommand`]s (the reader's `Operator` side goes through [`DynOperator`]).
pub trait DynSource {
    /// See [`SourceReader::on_fetched`]; returns the decoded records as a batch of the reader's type.
    fn on_fetched(&mut self, ctx: &mut OperatorContext<'_>, partition: PartitionId, from: Offset, records: Vec<(Offset, Vec<u8>)>) -> Result<AnyBatch, OperatorError>;
    /// See [`SourceReader::on_fetch_failed`].
    fn on_fetch_failed(&mut self, partition: PartitionId, from: Offset);
    /// See [`SourceReader::request_fetches`].
    fn request_fetches(&mut self, ctx: &mut OperatorContext<'_>);
    /// See [`SourceReader::is_end_of_input`].
    fn is_end_of_input(&self) -> bool;
    /// See [`SourceReader::records_emitted`].
    fn records_emitted(&self) -> u64;
}

impl<T: Data> DynSource for SourceReader<T> {
    fn on_fetched(&mut self, ctx: &mut OperatorContext<'_>, partition: PartitionId, from: Offset, records: Vec<(Offset, Vec<u8>)>) -> Result<AnyBatch, OperatorError> {
        let mut out: Vec<T> = Vec::new();
        SourceReader::on_fetched(self, ctx, partition, from, records, &mut out)?;
        Ok(Box::new(out))
    }

    fn on_fetch_failed(&mut self, partition: PartitionId, from: Offset) {
        SourceReader::on_fetch_failed(self, partition, from);
    }

    fn request_fetches(&mut self, ctx: &mut OperatorContext<'_>) {
        SourceReader::request_fetches(self, ctx);
    }

    fn is_end_of_input(&self) -> bool {
        SourceReader::is_end_of_input(self)
    }

    fn records_emitted(&self) -> u64 {
        SourceReader::records_emitted(self)
    }
}

/// Erases an [`Operator`].
pub struct Erased<O>(pub O);

fn downcast<T: Data>(batch: AnyBatch) -> Result<Vec<T>, OperatorError> {
    batch
        .downcast::<Vec<T>>()
        .map(|b| *b)
        .map_err(|_| OperatorError::Protocol(format!("expected a batch of {}", std::any::type_name::<T>())))
}

impl<O: Operator> DynOperator for Erased<O> {
    fn initialize_state(&mut self, ctx: &mut OperatorContext<'_>, restored_from: Option<CheckpointId>) -> OperatorResult {
        self.0.initialize_state(ctx, restored_from)
    }

    fn process_batch(&mut self, ctx: &mut OperatorContext<'_>, input: AnyBatch) -> Result<AnyBatch, OperatorError> {
        let input = downcast::<O::In>(input)?;
        // At least one output per input is the common case (map, keyed process, flat_map).
        let mut out = Vec::with_capacity(input.len());
        self.0.process_batch(ctx, input, &mut out)?;
        Ok(Box::new(out))
    }

    fn process_watermark(&mut self, ctx: &mut OperatorContext<'_>, watermark: Watermark) -> Result<AnyBatch, OperatorError> {
        let mut out: Vec<O::Out> = Vec::new();
        self.0.process_watermark(ctx, watermark, &mut out)?;
        Ok(Box::new(out))
    }

    fn advance_processing_time(&mut self, ctx: &mut OperatorContext<'_>) -> Result<AnyBatch, OperatorError> {
        let mut out: Vec<O::Out> = Vec::new();
        self.0.advance_processing_time(ctx, &mut out)?;
        Ok(Box::new(out))
    }

    fn snapshot_state(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult {
        self.0.snapshot_state(ctx, id)
    }

    fn notify_checkpoint_complete(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult {
        self.0.notify_checkpoint_complete(ctx, id)
    }

    fn notify_checkpoint_aborted(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult {
        self.0.notify_checkpoint_aborted(ctx, id)
    }

    fn end_of_input(&mut self, ctx: &mut OperatorContext<'_>) -> Result<AnyBatch, OperatorError> {
        let mut out: Vec<O::Out> = Vec::new();
        self.0.end_of_input(ctx, &mut out)?;
        Ok(Box::new(out))
    }

    fn as_source(&mut self) -> Option<&mut dyn DynSource> {
        // A source's output type is its reader's record type, so this finds every `SourceReader`.
        (&mut self.0 as &mut dyn Any).downcast_mut::<SourceReader<O::Out>>().map(|reader| reader as &mut dyn DynSource)
    }
}

/// Makes a fresh operator instance for one subtask.
pub type OperatorFactory = Arc<dyn Fn() -> Box<dyn DynOperator> + Send + Sync>;

/// Routes one batch: appends `(consumer subtask, sub-batch)` pairs.
type RouteFn = Arc<dyn Fn(AnyBatch, &Partitioner, u32, &mut RouteState, &mut Vec<(u32, AnyBatch)>) -> Result<(), OperatorError> + Send + Sync>;

/// Per-writer routing state (the rebalance cursor, the hash partitioner's target table).
#[derive(Clone, Debug, Default)]
pub struct RouteState {
    /// The next consumer for round robin.
    pub next: u32,
    /// For hash partitioning: each key group's consumer subtask, for the `(max parallelism,
    /// targets)` it was built for (at most `UPPER_BOUND_MAX_PARALLELISM` entries).
    targets_by_key_group: Option<((u32, u32), Vec<u32>)>,
}

impl RouteState {
    /// Each key group's consumer subtask out of `targets` (built once, then looked up per record
    /// instead of divided out).
    fn targets_by_key_group(&mut self, max_parallelism: u32, targets: u32) -> &[u32] {
        let shape = (max_parallelism, targets);
        if self.targets_by_key_group.as_ref().is_none_or(|(built_for, _)| *built_for != shape) {
            let table = (0..max_parallelism).map(|kg| operator_index_for_key_group(max_parallelism, targets, KeyGroup(kg)).0).collect();
            self.targets_by_key_group = Some((shape, table));
        }
        self.targets_by_key_group.as_ref().map_or(&[], |(_, table)| table)
    }
}

/// Everything a host needs to move batches of one edge's record type.
#[derive(Clone)]
pub struct EdgeFns {
    /// The record type's name, for error messages.
    pub type_name: &'static str,
    encode_into: fn(&AnyBatch, &mut Vec<u8>) -> Result<(), CodecError>,
    decode: fn(&[u8]) -> Result<AnyBatch, CodecError>,
    len: fn(&AnyBatch) -> usize,
    route: RouteFn,
}

impl std::fmt::Debug for EdgeFns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeFns").field("type_name", &self.type_name).finish()
    }
}

fn encode_batch_into<T: Data>(batch: &AnyBatch, out: &mut Vec<u8>) -> Result<(), CodecError> {
    // Batches of strings (the word count's words) take the fast path: the same bytes, no serde.
    if is::<T, String>() {
        if let Some(strings) = batch.downcast_ref::<Vec<String>>() {
            codec::put_str_batch(out, strings);
            return Ok(());
        }
    }
    if is::<T, CompactString>() {
        if let Some(words) = batch.downcast_ref::<Vec<CompactString>>() {
            codec::put_str_batch(out, words);
            return Ok(());
        }
    }
    let records = batch.downcast_ref::<Vec<T>>().ok_or_else(|| CodecError::Encode(format!("not a batch of {}", std::any::type_name::<T>())))?;
    let start = out.len();
    // Same bytes as `codec::to_bytes(records)`, appended to `out`.
    bincode::serde::encode_into_std_write(records, out, codec::config()).map(|_| ()).map_err(|e| {
        out.truncate(start);
        CodecError::Encode(e.to_string())
    })
}

fn decode_batch<T: Data>(bytes: &[u8]) -> Result<AnyBatch, CodecError> {
    // Batches of strings (the word count's words) take the fast path: same bytes, same batch
    // (and no allocation per word for inline strings).
    if is::<T, String>() {
        return Ok(Box::new(codec::str_batch_from_bytes::<String>(bytes)?));
    }
    if is::<T, CompactString>() {
        return Ok(Box::new(codec::str_batch_from_bytes::<CompactString>(bytes)?));
    }
    Ok(Box::new(codec::from_bytes::<Vec<T>>(bytes)?))
}

/// True when `T` is `U` (a fast path's type test, decided at compile time).
fn is<T: 'static, U: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>()
}

fn batch_len<T: Data>(batch: &AnyBatch) -> usize {
    batch.downcast_ref::<Vec<T>>().map_or(0, Vec::len)
}

fn route_unkeyed<T: Data>(batch: Vec<T>, partitioner: &Partitioner, targets: u32, state: &mut RouteState, out: &mut Vec<(u32, AnyBatch)>) -> Result<(), OperatorError> {
    debug_assert!(targets >= 1);
    match partitioner {
        Partitioner::Forward => out.push((0, Box::new(batch))),
        Partitioner::Broadcast => {
            for t in 0..targets {
                out.push((t, Box::new(batch.clone())));
            }
        }
        Partitioner::Rebalance => {
            let mut parts: Vec<Vec<T>> = (0..targets).map(|_| Vec::new()).collect();
            for record in batch {
                parts[state.next as usize].push(record);
                state.next = (state.next + 1) % targets;
            }
            out.extend(parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(t, p)| (t as u32, Box::new(p) as AnyBatch)));
        }
        Partitioner::Hash { .. } => return Err(OperatorError::Protocol("hash partitioning needs a key_by".into())),
    }
    Ok(())
}

impl EdgeFns {
    /// The functions for an edge carrying `T`, without a key.
    pub fn unkeyed<T: Data>() -> Self {
        EdgeFns {
            type_name: std::any::type_name::<T>(),
            encode_into: encode_batch_into::<T>,
            decode: decode_batch::<T>,
            len: batch_len::<T>,
            route: Arc::new(|batch, partitioner, targets, state, out| route_unkeyed::<T>(downcast::<T>(batch)?, partitioner, targets, state, out)),
        }
    }

    /// The functions for an edge carrying `T`, keyed by `selector` (for hash partitioning).
    pub fn keyed<T: Data, K: Key>(selector: Arc<dyn Fn(&T) -> K + Send + Sync>) -> Self {
        Self::keyed_by::<T, K, _>(move |record: &T| selector(record))
    }

    /// The functions for an edge carrying `T`, keyed by any [`KeySelector`] (for hash partitioning).
    pub fn keyed_by<T: Data, K: Key, S: KeySelector<T, K>>(selector: S) -> Self {
        let route: RouteFn = Arc::new(move |batch, partitioner, targets, state, out| {
            let batch = downcast::<T>(batch)?;
            let Partitioner::Hash { max_parallelism } = *partitioner else {
                return route_unkeyed::<T>(batch, partitioner, targets, state, out);
            };
            // Sized for an even spread (an uneven one grows its part as usual).
            let part_capacity = batch.len().div_ceil(targets.max(1) as usize);
            let mut parts: Vec<Vec<T>> = (0..targets).map(|_| Vec::with_capacity(part_capacity)).collect();
            let target_of = state.targets_by_key_group(max_parallelism, targets);
            let mut scratch = None;
            for record in batch {
                let kg = key_group_for_key(selector.key_of(&record, &mut scratch), max_parallelism);
                parts[target_of[kg.0 as usize] as usize].push(record);
            }
            out.extend(parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(t, p)| (t as u32, Box::new(p) as AnyBatch)));
            Ok(())
        });
        EdgeFns { route, ..EdgeFns::unkeyed::<T>() }
    }

    /// Encodes a batch for a channel.
    pub fn encode(&self, batch: &AnyBatch) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        (self.encode_into)(batch, &mut out)?;
        Ok(out)
    }

    /// Appends a batch's encoding (the bytes of [`encode`](Self::encode)) to `out`, so a caller can
    /// reuse one buffer for every batch. On error `out` is left as it was.
    pub fn encode_into(&self, batch: &AnyBatch, out: &mut Vec<u8>) -> Result<(), CodecError> {
        (self.encode_into)(batch, out)
    }

    /// Decodes a batch received on a channel. Bytes from the network never panic this.
    pub fn decode(&self, bytes: &[u8]) -> Result<AnyBatch, CodecError> {
        (self.decode)(bytes)
    }

    /// The number of records in a batch (0 if it is of another type).
    pub fn len(&self, batch: &AnyBatch) -> usize {
        (self.len)(batch)
    }

    /// Splits a batch among `targets` consumer subtasks (indices relative to the consumer;
    /// with `Forward` the single target is 0, meaning "the one forward channel").
    pub fn route(&self, batch: AnyBatch, partitioner: &Partitioner, targets: u32, state: &mut RouteState, out: &mut Vec<(u32, AnyBatch)>) -> Result<(), OperatorError> {
        (self.route)(batch, partitioner, targets, state, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(fns: &EdgeFns, batch: Vec<String>, p: Partitioner, targets: u32) -> Vec<(u32, Vec<String>)> {
        let mut out = Vec::new();
        fns.route(Box::new(batch), &p, targets, &mut RouteState::default(), &mut out).unwrap();
        out.into_iter().map(|(t, b)| (t, *b.downcast::<Vec<String>>().unwrap())).collect()
    }

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_batch_encoded_into_a_buffer_appends_the_bytes_of_encode_and_decodes_back() {
        let fns = EdgeFns::unkeyed::<String>();
        let batch: AnyBatch = Box::new(vec!["to".to_string(), "be".to_string(), String::new()]);
        let mut out = b"old".to_vec();
        fns.encode_into(&batch, &mut out).unwrap();
        assert_eq!(out[3..], fns.encode(&batch).unwrap()[..]);
        let back = fns.decode(&out[3..]).unwrap().downcast::<Vec<String>>().unwrap();
        assert_eq!(*back, ["to", "be", ""]);
        // A batch of another type is an error and leaves the buffer as it was.
        let wrong: AnyBatch = Box::new(vec![1u64]);
        assert!(fns.encode_into(&wrong, &mut out).is_err());
        assert_eq!(out[..3], *b"old");
        assert_eq!(out.len(), 3 + fns.encode(&batch).unwrap().len());
    }

    #[test]
    fn partitioners_route_as_flink_does() {
        let keyed = EdgeFns::keyed::<String, String>(Arc::new(|w: &String| w.clone()));
        // "hello" is key group 35 at max parallelism 128: subtask 1 of 7, 3 of 13.
        assert_eq!(routed(&keyed, words(&["hello"]), Partitioner::Hash { max_parallelism: 128 }, 7), vec![(1, words(&["hello"]))]);
        assert_eq!(routed(&keyed, words(&["hello"]), Partitioner::Hash { max_parallelism: 128 }, 13), vec![(3, words(&["hello"]))]);
        let plain = EdgeFns::unkeyed::<String>();
        assert_eq!(routed(&plain, words(&["a", "b", "c"]), Partitioner::Rebalance, 2), vec![(0, words(&["a", "c"])), (1, words(&["b"]))]);
        assert_eq!(routed(&plain, words(&["a"]), Partitioner::Broadcast, 3), vec![(0, words(&["a"])), (1, words(&["a"])), (2, words(&["a"]))]);
        assert_eq!(routed(&plain, words(&["a", "b"]), Partitioner::Forward, 1), vec![(0, words(&["a", "b"]))]);
    }

    #[test]
    fn one_route_state_reused_across_shapes_routes_like_a_fresh_one() {
        let keyed = EdgeFns::keyed_by::<String, String, _>(crate::key_groups::RecordIsKey);
        let input: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let mut reused = RouteState::default();
        for (max_parallelism, targets) in [(128, 7), (128, 13), (4096, 13), (128, 7), (10, 3)] {
            let hash = Partitioner::Hash { max_parallelism };
            let mut out = Vec::new();
            keyed.route(Box::new(input.clone()), &hash, targets, &mut reused, &mut out).unwrap();
            let got: Vec<(u32, Vec<String>)> = out.into_iter().map(|(t, b)| (t, *b.downcast::<Vec<String>>().unwrap())).collect();
            assert_eq!(got, routed(&keyed, input.clone(), hash, targets), "max parallelism {max_parallelism}, {targets} targets");
            for (t, batch) in &got {
                for w in batch {
                    assert_eq!(operator_index_for_key_group(max_parallelism, targets, key_group_for_key(w, max_parallelism)).0, *t);
                }
            }
        }
    }

    #[test]
    fn hash_routing_keeps_every_record_once_and_each_key_on_one_target() {
        let keyed = EdgeFns::keyed::<String, String>(Arc::new(|w: &String| w.clone()));
        let input: Vec<String> = (0..500).map(|i| format!("w{}", i % 37)).collect();
        let out = routed(&keyed, input.clone(), Partitioner::Hash { max_parallelism: 128 }, 3);
        let total: usize = out.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(total, input.len());
        let mut owner = std::collections::BTreeMap::new();
        for (t, batch) in &out {
            for w in batch {
                assert_eq!(*owner.entry(w.clone()).or_insert(*t), *t, "{w} went to two targets");
            }
        }
    }

    #[test]
    fn keying_records_by_themselves_routes_exactly_as_a_cloning_selector() {
        let by_clone = EdgeFns::keyed::<String, String>(Arc::new(|w: &String| w.clone()));
        let by_record = EdgeFns::keyed_by::<String, String, _>(crate::key_groups::RecordIsKey);
        let input: Vec<String> = (0..500).map(|i| format!("w{}", i % 37)).collect();
        for targets in [1, 2, 3, 7] {
            let hash = Partitioner::Hash { max_parallelism: 128 };
            assert_eq!(routed(&by_record, input.clone(), hash, targets), routed(&by_clone, input.clone(), hash, targets), "{targets} targets");
        }
    }

    #[test]
    fn only_a_source_reader_is_reachable_as_a_source() {
        use crate::ids::{AttemptId, SubtaskIndex};
        use crate::operator::map::MapOperator;
        use crate::operator::source::SourceSpec;
        use crate::operator::OperatorCommand;
        use crate::state::OperatorStateStore;
        fn decode(bytes: Vec<u8>) -> Result<String, String> {
            String::from_utf8(bytes).map_err(|e| e.to_string())
        }
        let mut map: Box<dyn DynOperator> = Box::new(Erased(MapOperator::new(|s: String| s.len())));
        assert!(map.as_source().is_none());
        let reader = SourceReader::new(SourceSpec::bounded("in", &[2]), decode).unwrap();
        let mut source: Box<dyn DynOperator> = Box::new(Erased(reader));
        let (mut store, mut commands) = (OperatorStateStore::new(), Vec::new());
        let mut ctx = OperatorContext { now_ms: 0, subtask: SubtaskIndex(0), parallelism: 1, attempt: AttemptId(1), keyed: None, operator_state: &mut store, commands: &mut commands };
        source.initialize_state(&mut ctx, None).unwrap();
        let dyn_source = source.as_source().expect("a source reader is a source");
        assert!(!dyn_source.is_end_of_input());
        let batch = dyn_source.on_fetched(&mut ctx, PartitionId(0), Offset(0), vec![(Offset(0), b"a".to_vec()), (Offset(1), b"b".to_vec())]).unwrap();
        assert_eq!(*batch.downcast::<Vec<String>>().unwrap(), vec!["a".to_string(), "b".to_string()]);
        assert!(dyn_source.is_end_of_input());
        assert_eq!(dyn_source.records_emitted(), 2);
        assert!(matches!(commands[0], OperatorCommand::Source(_)), "initialize_state issued the first fetch");
    }

    #[test]
    fn string_batches_of_either_kind_encode_to_the_serde_bytes_and_decode_back() {
        let words = ["to", "be", "", "a word longer than twenty-four bytes", "straße"];
        let strings: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let inline: Vec<CompactString> = words.iter().map(|w| CompactString::new(w)).collect();
        let serde_bytes = codec::to_bytes(&strings).unwrap();
        let (string_fns, inline_fns) = (EdgeFns::unkeyed::<String>(), EdgeFns::unkeyed::<CompactString>());
        assert_eq!(string_fns.encode(&(Box::new(strings.clone()) as AnyBatch)).unwrap(), serde_bytes);
        assert_eq!(inline_fns.encode(&(Box::new(inline.clone()) as AnyBatch)).unwrap(), serde_bytes);
        assert_eq!(*inline_fns.decode(&serde_bytes).unwrap().downcast::<Vec<CompactString>>().unwrap(), inline);
        assert_eq!(*string_fns.decode(&serde_bytes).unwrap().downcast::<Vec<String>>().unwrap(), strings);
        // A batch of the other string type is still the wrong type.
        assert!(string_fns.encode(&(Box::new(inline) as AnyBatch)).is_err());
        assert!(inline_fns.encode(&(Box::new(strings) as AnyBatch)).is_err());
    }

    #[test]
    fn batches_round_trip_and_bad_bytes_are_errors() {
        let fns = EdgeFns::unkeyed::<(String, u64)>();
        let batch: AnyBatch = Box::new(vec![("a".to_string(), 1u64), ("b".to_string(), 2)]);
        let bytes = fns.encode(&batch).unwrap();
        let back = fns.decode(&bytes).unwrap();
        assert_eq!(fns.len(&back), 2);
        assert!(fns.decode(&[0xff, 0xff, 0xff]).is_err());
        let wrong: AnyBatch = Box::new(vec![1u8]);
        assert!(fns.encode(&wrong).is_err());
        let mut out = Vec::new();
        assert!(matches!(fns.route(wrong, &Partitioner::Forward, 1, &mut RouteState::default(), &mut out), Err(OperatorError::Protocol(_))));
    }
}
