//! The broker's request/response protocol: what a client may ask, what it gets back, and every
//! typed error. Requests and responses are plain serde values; the transport frames and
//! checksums them.
//!
//! The requests follow Kafka's API keys where one exists (`CreateTopics`, `InitProducerId`,
//! `Produce`, `EndTxn`, `Fetch`, `ListTransactions`), folded into one enum. Two deliberate
//! simplifications: a transactional produce adds its partition to the transaction implicitly
//! (Kafka's `AddPartitionsToTxn` is a separate call), and floe adds an explicit `Prepare`
//! (Flink's pre-commit) that Kafka does not have.

use floe_core::ids::{Offset, PartitionId};
pub use floe_core::records::PackedRecords;
use serde::{Deserialize, Serialize};

/// A producer id, allocated by the broker (Kafka's `producerId`). Stable per transactional id.
pub type ProducerId = u64;

/// A producer epoch (Kafka's `producerEpoch`): bumped by every `init_transactions`, fencing older ones.
pub type ProducerEpoch = u32;

/// One record of a partition log, as a fetch returns it. (Records are produced, stored and
/// written to the log in [`PackedRecords`] batches.) floe's records have no key: nothing
/// partitions by a record key at the broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// The record's value.
    #[serde(with = "floe_core::codec::byte_buf")]
    pub value: Vec<u8>,
}

impl Record {
    /// A record with a value and no key.
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        Record { value: value.into() }
    }

    /// Bytes this record counts for in fetch and request limits.
    pub fn size_bytes(&self) -> usize {
        self.value.len()
    }
}

/// A batch of these records' values (tests and tools build batches this way).
impl FromIterator<Record> for PackedRecords {
    fn from_iter<I: IntoIterator<Item = Record>>(records: I) -> Self {
        PackedRecords::from_values(records.into_iter().map(|r| r.value))
    }
}

/// The producer identity stamped on an idempotent or transactional batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProducerStamp {
    /// The producer id.
    pub producer_id: ProducerId,
    /// The producer epoch.
    pub epoch: ProducerEpoch,
    /// The sequence number of the batch's first record, per (producer, partition), from 0.
    pub base_sequence: u32,
}

/// Which records a fetch may return (Kafka's `isolation.level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IsolationLevel {
    /// Every record, including those of open and aborted transactions, up to the log end.
    ReadUncommitted,
    /// Only non-transactional and committed records, up to the last stable offset.
    ReadCommitted,
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Committed: its records become visible to read-committed consumers.
    Commit,
    /// Aborted: its records are skipped by read-committed consumers.
    Abort,
}

/// Why a transaction was aborted (or that it was committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnEndReason {
    /// The producer asked for it (`commit` / `abort`).
    Requested,
    /// The broker aborted it because it stayed open longer than its timeout.
    TimedOut,
    /// A newer `init_transactions` of the same transactional id fenced its producer.
    Fenced,
}

/// The state of a transactional id as `list_transactions` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnState {
    /// Initialized, no transaction open (Kafka's `Empty`).
    Empty,
    /// A transaction is open and accepts records (Kafka's `Ongoing`).
    Ongoing,
    /// Pre-committed: durable, no longer accepts records, waiting for commit (still times out).
    Prepared,
    /// The last transaction committed (Kafka's `CompleteCommit`).
    CompleteCommit,
    /// The last transaction was aborted, for the given reason (Kafka's `CompleteAbort`).
    CompleteAbort(TxnEndReason),
}

impl TxnState {
    /// True while a transaction is open (ongoing or prepared).
    pub fn is_open(self) -> bool {
        matches!(self, TxnState::Ongoing | TxnState::Prepared)
    }
}

/// One row of `list_transactions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnListing {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: ProducerId,
    /// Its current epoch.
    pub epoch: ProducerEpoch,
    /// Its state.
    pub state: TxnState,
}

/// The result of a fetch: the records in one [`PackedRecords`] block, and their offsets.
/// A result whose offsets and records differ in number does not decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FetchResultWire")]
pub struct FetchResult {
    /// The records' offsets, in order: one per record of `records`.
    pub offsets: OffsetRuns,
    /// The records, in offset order.
    pub records: PackedRecords,
    /// Where the next fetch should start (past skipped markers and aborted records).
    pub next_offset: Offset,
    /// The log end offset (every appended, durable entry is below it).
    pub high_watermark: Offset,
    /// The last stable offset: the first offset of the earliest open transaction, or the log end.
    pub last_stable_offset: Offset,
}

/// [`FetchResult`] as it travels, before its offsets and records are checked to match.
#[derive(Deserialize)]
struct FetchResultWire {
    offsets: OffsetRuns,
    records: PackedRecords,
    next_offset: Offset,
    high_watermark: Offset,
    last_stable_offset: Offset,
}

impl TryFrom<FetchResultWire> for FetchResult {
    type Error = String;

    fn try_from(w: FetchResultWire) -> Result<Self, String> {
        if w.offsets.len() != w.records.len() as u64 {
            return Err(format!("a fetch result with {} offsets for {} records", w.offsets.len(), w.records.len()));
        }
        Ok(FetchResult { offsets: w.offsets, records: w.records, next_offset: w.next_offset, high_watermark: w.high_watermark, last_stable_offset: w.last_stable_offset })
    }
}

impl FetchResult {
    /// The records with their offsets, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Offset, &[u8])> + '_ {
        self.offsets.iter().zip(self.records.iter())
    }

    /// How many records the fetch returned.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the fetch returned no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Strictly increasing offsets, kept (and sent) as maximal runs of consecutive offsets: a
/// fetch's offsets are consecutive except where it skipped markers or aborted records, so a
/// result of thousands of records carries a handful of runs instead of one varint per record.
///
/// On the wire: the runs, each as `(gap, count)` — its first offset minus the end of the run
/// before (the first run's gap is its first offset) and its length. Decoding checks the form is
/// the one [`OffsetRuns::push_run`] builds (every count at least 1, every gap after the first at
/// least 1, nothing overflows), so the offsets are strictly increasing and one list of offsets has
/// one encoding; [`FetchResult`] then checks there is one offset per record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OffsetRuns {
    /// `(first offset, count)` of each run, in order; runs neither touch nor overlap.
    runs: Vec<(u64, u64)>,
    /// The number of offsets.
    len: u64,
}

impl OffsetRuns {
    /// No offsets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `count` consecutive offsets from `first` (joined to the last run when they
    /// continue it). Nothing is appended for a count of 0.
    ///
    /// # Panics
    /// If `first` is not above the last offset, or the run passes `u64::MAX`: the broker builds
    /// its offsets in order, so this is a programming error.
    pub fn push_run(&mut self, first: Offset, count: u64) {
        if count == 0 {
            return;
        }
        let first = first.get();
        assert!(first.checked_add(count).is_some(), "a run of offsets passes u64::MAX");
        match self.runs.last_mut() {
            Some((start, n)) if *start + *n == first => *n += count,
            Some((start, n)) => {
                assert!(first > *start + *n, "offsets must be strictly increasing");
                self.runs.push((first, count));
            }
            None => self.runs.push((first, count)),
        }
        self.len += count;
    }

    /// Appends one offset (above the last one; see [`OffsetRuns::push_run`]).
    pub fn push(&mut self, offset: Offset) {
        self.push_run(offset, 1);
    }

    /// How many offsets there are.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is no offset.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The offsets, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = Offset> + '_ {
        self.runs.iter().flat_map(|&(first, count)| (first..first + count).map(Offset))
    }
}

impl FromIterator<Offset> for OffsetRuns {
    /// # Panics
    /// If the offsets are not strictly increasing.
    fn from_iter<I: IntoIterator<Item = Offset>>(offsets: I) -> Self {
        let mut out = OffsetRuns::new();
        for offset in offsets {
            out.push(offset);
        }
        out
    }
}

impl Serialize for OffsetRuns {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.runs.len()))?;
        let mut end = 0u64;
        for &(first, count) in &self.runs {
            seq.serialize_element(&(first - end, count))?;
            end = first + count;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for OffsetRuns {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut runs = Vec::with_capacity(wire.len());
        let (mut end, mut len) = (0u64, 0u64);
        for (i, (gap, count)) in wire.into_iter().enumerate() {
            if count == 0 || (i > 0 && gap == 0) {
                return Err(D::Error::custom(format!("offset run {i} is empty or touches the run before")));
            }
            let first = end.checked_add(gap).ok_or_else(|| D::Error::custom("offsets overflow"))?;
            end = first.checked_add(count).ok_or_else(|| D::Error::custom("offsets overflow"))?;
            len = len.checked_add(count).ok_or_else(|| D::Error::custom("offsets overflow"))?;
            runs.push((first, count));
        }
        Ok(OffsetRuns { runs, len })
    }
}

/// A request to the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerRequest {
    /// Creates a topic. Creating an existing topic with the same partition count is `Ok`.
    CreateTopic {
        /// The topic name (`[A-Za-z0-9._-]`, at most [`TOPIC_NAME_BYTES_MAX`] bytes).
        topic: String,
        /// The partition count (at least 1).
        partitions: u32,
    },
    /// The partition count of a topic.
    Metadata {
        /// The topic.
        topic: String,
    },
    /// Allocates a producer id for an idempotent (non-transactional) producer; epoch 0.
    InitProducerId,
    /// Appends a batch to one partition.
    Produce {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
        /// Set for idempotent and transactional producers; `None` for a plain append.
        producer: Option<ProducerStamp>,
        /// Set for a transactional produce: the records join this id's open transaction.
        transactional_id: Option<String>,
        /// The records (at least one).
        records: PackedRecords,
    },
    /// Registers a transactional id, bumps its epoch and aborts its open transaction.
    InitTransactions {
        /// The transactional id.
        transactional_id: String,
        /// The transaction timeout; `None` for the broker's default. Capped by the broker's max.
        transaction_timeout_ms: Option<u64>,
        /// Orders the inits of this id (see [`InitToken`]); `None`: unconditional.
        token: Option<InitToken>,
    },
    /// Pre-commits the open transaction (floe's addition; Flink's `preCommit`).
    Prepare {
        /// The transactional id.
        transactional_id: String,
        /// The producer id `init_transactions` returned.
        producer_id: ProducerId,
        /// The epoch `init_transactions` returned.
        epoch: ProducerEpoch,
    },
    /// Ends the open transaction (Kafka's `EndTxn`). Idempotent.
    EndTransaction {
        /// The transactional id.
        transactional_id: String,
        /// The producer id.
        producer_id: ProducerId,
        /// The epoch.
        epoch: ProducerEpoch,
        /// Commit or abort.
        outcome: TxnOutcome,
    },
    /// Every transactional id starting with `prefix`, sorted, with its state — after applying
    /// `fence`, if given (durably, in the same step: see [`PrefixFence`]).
    ListTransactions {
        /// The prefix (empty for all).
        prefix: String,
        /// A fence to raise before listing.
        fence: Option<PrefixFence>,
    },
    /// Reads records from one partition.
    Fetch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
        /// The first offset wanted.
        from_offset: Offset,
        /// At most this many records (capped by the broker's own limit).
        records_max: u32,
        /// At most this many record bytes (at least one record is returned if any is available).
        bytes_max: u32,
        /// Which records are visible.
        isolation: IsolationLevel,
    },
}

impl BrokerRequest {
    /// True when the request only reads state (no disk writes).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            BrokerRequest::Metadata { .. } | BrokerRequest::ListTransactions { fence: None, .. } | BrokerRequest::Fetch { .. }
        )
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerResponse {
    /// The topic exists with this many partitions.
    TopicCreated {
        /// Its partition count.
        partitions: u32,
    },
    /// The topic's partition count.
    Metadata {
        /// Its partition count.
        partitions: u32,
    },
    /// A producer id and epoch.
    ProducerId {
        /// The producer id.
        producer_id: ProducerId,
        /// The epoch.
        epoch: ProducerEpoch,
    },
    /// The batch is durable; its first record got this offset. For a retried (duplicate)
    /// batch, the offset it got the first time.
    Produced {
        /// The first record's offset.
        base_offset: Offset,
        /// True when this was a retry of a batch already in the log (nothing was appended).
        duplicate: bool,
    },
    /// The prepare, commit or abort is durable.
    TransactionEnded {
        /// The state the transactional id is in now.
        state: TxnState,
    },
    /// The answer to `ListTransactions`.
    Transactions(Vec<TxnListing>),
    /// The answer to `Fetch`.
    Fetched(FetchResult),
}

/// The longest topic name, in bytes (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Orders the `InitTransactions` calls on one transactional id: a fencing token (floe's addition,
/// in the spirit of Kafka's KIP-360 and KIP-890). An init carrying a token lower than the last
/// one the id accepted is refused ([`BrokerError::StaleInit`]); one carrying the same token is a
/// duplicate — a retry, or the first attempt arriving late after its retry succeeded — and
/// answers the current producer id and epoch without bumping the epoch or aborting anything.
/// Without it, such a late duplicate fenced the very producer it had created and aborted its
/// pre-committed transaction; and an init a dead attempt left in the network could fence a newer
/// attempt's transaction of the same id.
///
/// floe's sinks use `generation` = the attempt (monotone across the job, job-manager restarts
/// included) and `sequence` = a per-subtask counter of init calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InitToken {
    /// The writer's generation (floe: the attempt).
    pub generation: u64,
    /// The call within the generation.
    pub sequence: u64,
}

/// Fences every transactional id starting with `prefix` below `generation` (floe's addition to
/// [`InitToken`]): once a fence is raised, an `InitTransactions` of such an id whose token's
/// generation is older is refused ([`BrokerError::PrefixFenced`]), whether or not the id exists
/// yet. The token of one id cannot do this: a zombie writer (a task manager cut off from the job
/// manager but not from the broker) opens the transactions of checkpoints the new attempt never
/// names, in ids the new attempt never touches — after the new attempt's restore listed and
/// fenced the ids that existed. Such a transaction stays open and holds back every
/// read-committed consumer of its partitions until the broker's transaction timeout (Kafka's
/// hanging transactions, KIP-890). A restore raises the fence over its subtask's ids in the same
/// request that lists them, so every id the zombie could write to is either in the listing (and
/// fenced by an init) or can no longer be initialized by it. Inits without a token are not
/// affected. Fences only rise, are durable, and are bounded by
/// [`super::state::BrokerConfig::prefix_fences_max`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixFence {
    /// The ids fenced: every one starting with this (non-empty).
    pub prefix: String,
    /// Inits with an older token generation are refused.
    pub generation: u64,
}

/// The longest transactional id, in bytes.
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 1024;

/// Everything that can go wrong, typed. Serializable: it crosses the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BrokerError {
    /// No such topic.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The topic has no such partition.
    #[error("unknown partition {partition} of topic {topic:?}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
    },
    /// The topic exists with another partition count.
    #[error("topic {topic:?} exists with {existing} partitions")]
    TopicExists {
        /// The topic.
        topic: String,
        /// Its partition count.
        existing: u32,
    },
    /// A name (topic or transactional id) or a count is not acceptable.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An `InitTransactions` whose [`InitToken`] is older than the last one the id accepted.
    #[error("init of {transactional_id:?} with token {token:?} is older than the id's last, {last:?}")]
    StaleInit {
        /// The transactional id.
        transactional_id: String,
        /// The request's token.
        token: InitToken,
        /// The last token the id accepted.
        last: InitToken,
    },
    /// An `InitTransactions` whose token is older than a [`PrefixFence`] over its id.
    #[error("init of {transactional_id:?} with token {token:?} is below the fence of {prefix:?} at generation {generation}")]
    PrefixFenced {
        /// The transactional id.
        transactional_id: String,
        /// The request's token.
        token: InitToken,
        /// The fenced prefix.
        prefix: String,
        /// The fence's generation.
        generation: u64,
    },
    /// A newer epoch of this producer exists: this one is a zombie.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}")]
    Fenced {
        /// The producer id.
        producer_id: ProducerId,
        /// The epoch the request carried.
        epoch: ProducerEpoch,
        /// The current epoch.
        current_epoch: ProducerEpoch,
    },
    /// The broker does not know this producer id (or this epoch is from the future).
    #[error("unknown producer {producer_id} epoch {epoch}")]
    UnknownProducer {
        /// The producer id.
        producer_id: ProducerId,
        /// The epoch.
        epoch: ProducerEpoch,
    },
    /// The batch's sequence leaves a gap after the last one appended.
    #[error("out of order sequence for producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// The producer id.
        producer_id: ProducerId,
        /// The next sequence the broker expects.
        expected: u32,
        /// The batch's base sequence.
        got: u32,
    },
    /// A retried batch too old for the broker to remember its offset (Kafka keeps 5 per producer).
    #[error("duplicate sequence {got} for producer {producer_id}, too old to know its offset")]
    DuplicateSequence {
        /// The producer id.
        producer_id: ProducerId,
        /// The batch's base sequence.
        got: u32,
    },
    /// No such transactional id.
    #[error("unknown transactional id {0:?}")]
    UnknownTransactionalId(String),
    /// The transaction was aborted (by request or by a newer epoch) and cannot be committed.
    #[error("transaction of {transactional_id:?} was aborted")]
    TransactionAborted {
        /// The transactional id.
        transactional_id: String,
    },
    /// The broker aborted the transaction when its timeout expired (FLINK-7784's hazard).
    #[error("transaction of {transactional_id:?} timed out and was aborted by the broker")]
    TransactionTimedOut {
        /// The transactional id.
        transactional_id: String,
    },
    /// The request does not fit the transaction's state (e.g. producing into a prepared one).
    #[error("transaction of {transactional_id:?} is {state:?}: {action} not allowed")]
    InvalidTransactionState {
        /// The transactional id.
        transactional_id: String,
        /// Its state.
        state: TxnState,
        /// What was attempted.
        action: String,
    },
    /// A fetch started outside `[0, log end]`.
    #[error("offset {offset} out of range (log end {log_end})")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: Offset,
        /// The log end offset.
        log_end: Offset,
    },
    /// A named limit was hit.
    #[error("limit {limit} exceeded: {detail}")]
    LimitExceeded {
        /// The limit's configuration name.
        limit: String,
        /// What exceeded it.
        detail: String,
    },
    /// The broker cannot serve now (recovering after an I/O error, overloaded, shutting down).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The peer answered something that does not fit the request (raised by the client).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer in time (raised by the client).
    #[error("request timed out")]
    Timeout,
    /// A disk operation failed; nothing in the request was acknowledged.
    #[error("broker I/O error: {0}")]
    Io(String),
}

impl BrokerError {
    /// True when retrying the same request later may succeed (the request had no effect, or a
    /// retry is deduplicated by the producer's sequence numbers).
    pub fn is_retriable(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_) | BrokerError::Timeout | BrokerError::Io(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_core::codec;
    use proptest::prelude::*;

    fn result(offsets: &[u64]) -> FetchResult {
        FetchResult {
            offsets: offsets.iter().copied().map(Offset).collect(),
            records: PackedRecords::from_values(offsets.iter().map(|o| o.to_string())),
            next_offset: Offset(offsets.last().map_or(0, |o| o + 1)),
            high_watermark: Offset(100),
            last_stable_offset: Offset(90),
        }
    }

    #[test]
    fn consecutive_offsets_travel_as_a_few_runs() {
        let offsets: Vec<u64> = (5..1005).chain(1007..2007).collect();
        let r = result(&offsets);
        assert_eq!(r.offsets.runs, vec![(5, 1000), (1007, 1000)]);
        let one_by_one = codec::to_bytes(&offsets).unwrap();
        let runs = codec::to_bytes(&r.offsets).unwrap();
        assert!(runs.len() < 16 && one_by_one.len() > 2000, "{} bytes as runs", runs.len());
        let back: FetchResult = codec::from_bytes(&codec::to_bytes(&r).unwrap()).unwrap();
        assert_eq!(back.iter().map(|(o, _)| o.get()).collect::<Vec<_>>(), offsets);
    }

    #[test]
    fn offsets_that_are_not_canonical_runs_or_do_not_match_the_records_do_not_decode() {
        let good = result(&[3, 4, 7]);
        let records = good.records.clone();
        // (wire runs, why it is refused)
        let cases: Vec<(Vec<(u64, u64)>, &str)> = vec![
            (vec![(3, 2), (0, 1)], "touches the run before"),
            (vec![(3, 2), (2, 0), (1, 1)], "is empty"),
            (vec![(3, 0), (3, 3)], "is empty"),
            (vec![(u64::MAX, 2), (1, 1)], "overflow"),
            (vec![(3, 1), (u64::MAX - 2, 2)], "overflow"),
            (vec![(3, 2)], "2 offsets for 3 records"),
            (vec![(3, 2), (1, 2)], "4 offsets for 3 records"),
        ];
        for (runs, want) in cases {
            let wire = (runs.clone(), &records, good.next_offset, good.high_watermark, good.last_stable_offset);
            let err = codec::from_bytes::<FetchResult>(&codec::to_bytes(&wire).unwrap()).unwrap_err();
            assert!(err.to_string().contains(want), "{runs:?}: {err}");
        }
        let wire = (vec![(3u64, 2u64), (2, 1)], &records, good.next_offset, good.high_watermark, good.last_stable_offset);
        assert_eq!(codec::from_bytes::<FetchResult>(&codec::to_bytes(&wire).unwrap()).unwrap(), good);
    }

    proptest! {
        #[test]
        fn any_increasing_offsets_round_trip_with_their_records(steps in proptest::collection::vec(prop_oneof![3 => Just(1u64), 1 => 1u64..5, 1 => 5u64..1_000_000], 0..60), start in 0u64..1_000) {
            let offsets: Vec<u64> = steps.iter().scan(start, |at, step| { let o = *at; *at += step; Some(o) }).collect();
            let r = result(&offsets);
            prop_assert_eq!(r.offsets.len(), offsets.len() as u64);
            prop_assert_eq!(r.offsets.iter().map(Offset::get).collect::<Vec<_>>(), offsets.clone());
            let back: FetchResult = codec::from_bytes(&codec::to_bytes(&r).unwrap()).unwrap();
            prop_assert_eq!(&back, &r);
        }

        #[test]
        fn decoding_arbitrary_bytes_as_a_fetch_result_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(r) = codec::from_bytes::<FetchResult>(&bytes) {
                prop_assert_eq!(r.offsets.len(), r.records.len() as u64);
                let offsets: Vec<Offset> = r.offsets.iter().collect();
                prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
