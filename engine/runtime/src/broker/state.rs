//! The broker's logic as a pure, synchronous state machine: topics and partition logs in
//! memory, idempotent-producer sequence state, and the transaction coordinator. No I/O, no clock:
//! `now_ms` comes in as an argument, and every change is expressed as log entries.
//!
//! **One code path for live requests and recovery.** A request is validated first (an invalid
//! request changes nothing), then turned into [`MetaEntry`]s and [`PartitionEntry`]s; each entry
//! is *applied* to the in-memory state by the same functions that replay the logs on recovery,
//! and handed back in a [`Staged`] list for the host to append and fsync. So the state after a
//! restart is, by construction, the state the durable entries describe.
//!
//! Semantics follow Kafka:
//!
//! - **Idempotent producers** (`ProducerStateManager`): per (producer id, partition) the broker
//!   keeps the epoch, the last sequence and the last [`BrokerConfig::producer_batch_cache_max`]
//!   batches. A batch whose sequence was already appended is a duplicate and gets its original
//!   offset back; a gap is `OutOfOrderSequence`; a new epoch must start at sequence 0. The state
//!   is rebuilt from the partition logs on recovery.
//! - **Transactions** (`TransactionCoordinator`, `TransactionMetadata`): `init_transactions`
//!   bumps the epoch of a transactional id (fencing older producers) and aborts its open
//!   transaction. The first transactional produce to a partition adds it to the transaction
//!   (`AddPartitionsToTxn`). Ending a transaction first records the decision in the metadata log,
//!   then writes a marker (control record) into every partition holding its records; the host
//!   makes the metadata durable before it writes any marker, so recovery finds every decided
//!   transaction and completes its missing markers.
//! - **`Prepare`** is floe's addition (Flink's `preCommit`): the transaction stops accepting
//!   records; everything is already durable. **It still times out**: Kafka aborts any ongoing
//!   transaction older than `transaction.timeout.ms`, and floe keeps that hazard (FLINK-7784) on
//!   purpose — [`BrokerState::expire_transactions`] aborts open transactions, prepared or not.
//!   Kafka (since KIP-360) also bumps the epoch on a timeout abort; floe keeps the epoch but
//!   remembers the reason, so the late commit gets the precise `TransactionTimedOut`, and the
//!   producer must call `init_transactions` again.
//! - **Timeout clocks across a restart**: Kafka persists a wall-clock start time; floe's host
//!   clock is monotonic per process, so a recovered open transaction's timeout restarts at the
//!   recovery time (a broker restart extends open transactions; the job's own downtime does not).
//! - **Read committed** (`LogSegment`, `AbortedTxn` index): the last stable offset is the first
//!   offset of the earliest open transaction; read-committed fetches stop there and skip the
//!   records of aborted transactions and the markers.
//! - Commit and abort are idempotent: ending a transaction the same way twice is `Ok`; committing
//!   an aborted one is `TransactionAborted` or `TransactionTimedOut`. Several transactions may
//!   follow each other within one epoch (as in Kafka); floe's sinks use one per transactional id.
//!
//! Limitations: the logs are also held in memory (no retention, no segments), and producer and
//! transactional-id state never expires; both are bounded by the named limits instead.

use super::log::{MetaEntry, PartitionEntry};
use super::protocol::*;
use floe_core::ids::{Offset, PartitionId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The broker's configuration: timeouts and every bound. Serde with defaults for missing fields.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// The default transaction timeout (Kafka's client default `transaction.timeout.ms` is 60 s).
    pub transaction_timeout_ms: u64,
    /// The largest timeout a producer may ask for (Kafka's `transaction.max.timeout.ms`, 15 min).
    pub transaction_timeout_ms_max: u64,
    /// Most records one fetch returns.
    pub fetch_records_max: u32,
    /// Most record bytes one fetch returns (beyond its first record), so an answer fits a frame.
    pub fetch_bytes_max: u32,
    /// Most records in one produce request.
    pub produce_records_max: usize,
    /// Most bytes of one record (key + value).
    pub record_bytes_max: usize,
    /// Most topics.
    pub topics_max: usize,
    /// Most partitions of one topic.
    pub partitions_per_topic_max: u32,
    /// Most producer ids ever allocated to idempotent producers.
    pub idempotent_producers_max: usize,
    /// Most transactional ids ever registered.
    pub transactional_ids_max: usize,
    /// Most transactions open at once.
    pub open_transactions_max: usize,
    /// Most partitions in one transaction.
    pub transaction_partitions_max: usize,
    /// Batches remembered per (producer, partition) to answer retries (Kafka keeps 5).
    pub producer_batch_cache_max: usize,
    /// Most requests handled in one group commit (one fsync per touched file for all of them).
    pub group_commit_requests_max: usize,
    /// Most requests queued at the server before it answers `Unavailable`.
    pub request_queue_max: usize,
    /// How often the server checks transaction timeouts.
    pub expiry_check_interval_ms: u64,
    /// Most [`PrefixFence`]s kept (one per sink subtask in floe).
    pub prefix_fences_max: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            transaction_timeout_ms: 60_000,
            transaction_timeout_ms_max: 900_000,
            fetch_records_max: 10_000,
            fetch_bytes_max: 8 << 20,
            produce_records_max: 10_000,
            record_bytes_max: 1 << 20,
            topics_max: 1_000,
            partitions_per_topic_max: 1_024,
            idempotent_producers_max: 1_000_000,
            transactional_ids_max: 100_000,
            open_transactions_max: 10_000,
            transaction_partitions_max: 1_024,
            producer_batch_cache_max: 5,
            group_commit_requests_max: 256,
            request_queue_max: 4_096,
            expiry_check_interval_ms: 100,
            prefix_fences_max: 100_000,
        }
    }
}

/// Entries produced by one or more requests, for the host to persist: first every meta entry
/// (append, fsync), then every partition entry (append, fsync per file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Staged {
    /// Metadata-log entries, in order.
    pub meta: Vec<MetaEntry>,
    /// Partition-log entries, in order, with their partition.
    pub partitions: Vec<(String, PartitionId, PartitionEntry)>,
}

impl Staged {
    /// True when nothing must be written.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty() && self.partitions.is_empty()
    }
}

/// A partition entry that does not continue its log on replay (the offsets do not line up).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("entry at {found} does not continue the log ending at {log_end}")]
pub struct ReplayGap {
    /// Where the log ended.
    pub log_end: Offset,
    /// Where the entry starts.
    pub found: Offset,
}

/// The fate of a stored batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Not part of a transaction: visible to everyone.
    Plain,
    /// Part of a transaction still open.
    Open,
    /// Part of a decided transaction.
    Decided(TxnOutcome),
}

#[derive(Clone, Debug)]
enum Stored {
    /// `records` is shared with the [`PartitionEntry`] that was staged for the disk.
    Batch { base_offset: Offset, fate: Fate, records: Arc<PackedRecords> },
    Marker { offset: Offset },
}

impl Stored {
    fn base_offset(&self) -> Offset {
        match self {
            Stored::Batch { base_offset, .. } => *base_offset,
            Stored::Marker { offset } => *offset,
        }
    }

    fn next_offset(&self) -> Offset {
        match self {
            Stored::Batch { base_offset, records, .. } => Offset(base_offset.get() + records.len() as u64),
            Stored::Marker { offset } => offset.next(),
        }
    }
}

/// Sequence state of one producer in one partition.
#[derive(Clone, Debug)]
struct ProducerSeq {
    epoch: ProducerEpoch,
    /// The last sequence appended in this epoch.
    last_sequence: u32,
    /// Recent batches: (base sequence, record count, base offset).
    recent: VecDeque<(u32, u32, Offset)>,
}

/// An open transaction's footprint in one partition.
#[derive(Clone, Debug)]
struct OpenInPartition {
    transaction: u64,
    first_offset: Offset,
    batch_indexes: Vec<usize>,
}

#[derive(Clone, Debug, Default)]
struct Partition {
    log_end: Offset,
    entries: Vec<Stored>,
    producers: BTreeMap<ProducerId, ProducerSeq>,
    open: BTreeMap<ProducerId, OpenInPartition>,
}

impl Partition {
    fn last_stable_offset(&self) -> Offset {
        self.open.values().map(|o| o.first_offset).min().unwrap_or(self.log_end)
    }
}

#[derive(Clone, Debug)]
struct TxnMeta {
    producer_id: ProducerId,
    epoch: ProducerEpoch,
    timeout_ms: u64,
    state: TxnState,
    /// The number of the open (or last) transaction: +1 each time one opens.
    transaction: u64,
    /// The partitions of the open (or last) transaction.
    partitions: BTreeSet<(String, PartitionId)>,
    started_ms: u64,
    /// The highest [`InitToken`] an init of this id carried.
    last_token: Option<InitToken>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Owner {
    Idempotent,
    Transactional(String),
}

/// The broker's whole state (see the module doc).
#[derive(Clone, Debug)]
pub struct BrokerState {
    config: BrokerConfig,
    topics: BTreeMap<String, Vec<Partition>>,
    txns: BTreeMap<String, TxnMeta>,
    owners: BTreeMap<ProducerId, Owner>,
    next_producer_id: ProducerId,
    /// Every decision, by (producer id, transaction number): recovery uses it to finish
    /// transactions whose markers a crash lost. Only filled between replay and
    /// `finish_recovery` (live decisions write their markers at once).
    decided: BTreeMap<(ProducerId, u64), (ProducerEpoch, TxnOutcome)>,
    /// Raised [`PrefixFence`]s: prefix → generation.
    fences: BTreeMap<String, u64>,
}

fn limit(limit: &str, detail: String) -> BrokerError {
    BrokerError::LimitExceeded { limit: limit.to_string(), detail }
}

fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl BrokerState {
    /// An empty broker.
    pub fn new(config: BrokerConfig) -> Self {
        BrokerState { config, topics: BTreeMap::new(), txns: BTreeMap::new(), owners: BTreeMap::new(), next_producer_id: 0, decided: BTreeMap::new(), fences: BTreeMap::new() }
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Topic names and partition counts.
    pub fn topics(&self) -> Vec<(String, u32)> {
        self.topics.iter().map(|(t, p)| (t.clone(), p.len() as u32)).collect()
    }

    /// The log end offset of a partition, if it exists.
    pub fn log_end(&self, topic: &str, partition: PartitionId) -> Option<Offset> {
        self.topics.get(topic)?.get(partition.get() as usize).map(|p| p.log_end)
    }

    /// The number of transactions open now.
    pub fn open_transactions(&self) -> usize {
        self.txns.values().filter(|t| t.state.is_open()).count()
    }

    // ----- applying entries: shared by live requests and recovery -----

    /// Applies one metadata entry (live or on replay). `now_ms` starts the timeout clock of a
    /// transaction the entry opens.
    pub fn apply_meta(&mut self, entry: &MetaEntry, now_ms: u64) {
        match entry {
            MetaEntry::CreateTopic { topic, partitions } => {
                self.topics
                    .entry(topic.clone())
                    .or_insert_with(|| (0..*partitions).map(|_| Partition::default()).collect());
            }
            MetaEntry::AllocateProducerId { producer_id } => {
                self.owners.insert(*producer_id, Owner::Idempotent);
                self.next_producer_id = self.next_producer_id.max(producer_id + 1);
            }
            MetaEntry::InitTransactions { transactional_id, producer_id, epoch, transaction_timeout_ms, token } => {
                self.owners.insert(*producer_id, Owner::Transactional(transactional_id.clone()));
                self.next_producer_id = self.next_producer_id.max(producer_id + 1);
                let meta = self.txns.entry(transactional_id.clone()).or_insert_with(|| TxnMeta {
                    producer_id: *producer_id,
                    epoch: *epoch,
                    timeout_ms: *transaction_timeout_ms,
                    state: TxnState::Empty,
                    transaction: 0,
                    partitions: BTreeSet::new(),
                    started_ms: now_ms,
                    last_token: None,
                });
                meta.last_token = meta.last_token.max(*token);
                meta.producer_id = *producer_id;
                meta.epoch = *epoch;
                meta.timeout_ms = *transaction_timeout_ms;
                meta.state = TxnState::Empty;
                meta.partitions.clear();
            }
            MetaEntry::AddPartition { transactional_id, topic, partition } => {
                if let Some(meta) = self.txns.get_mut(transactional_id) {
                    if !meta.state.is_open() {
                        meta.state = TxnState::Ongoing;
                        meta.transaction += 1;
                        meta.partitions.clear();
                        meta.started_ms = now_ms;
                    }
                    meta.partitions.insert((topic.clone(), *partition));
                }
            }
            MetaEntry::Prepare { transactional_id } => {
                if let Some(meta) = self.txns.get_mut(transactional_id) {
                    if !meta.state.is_open() {
                        meta.transaction += 1;
                        meta.partitions.clear();
                        meta.started_ms = now_ms;
                    }
                    meta.state = TxnState::Prepared;
                }
            }
            MetaEntry::Decide { transactional_id, outcome, reason } => {
                if let Some(meta) = self.txns.get_mut(transactional_id) {
                    self.decided.insert((meta.producer_id, meta.transaction), (meta.epoch, *outcome));
                    meta.state = match outcome {
                        TxnOutcome::Commit => TxnState::CompleteCommit,
                        TxnOutcome::Abort => TxnState::CompleteAbort(*reason),
                    };
                }
            }
            MetaEntry::FencePrefix { prefix, generation } => {
                let fence = self.fences.entry(prefix.clone()).or_insert(*generation);
                *fence = (*fence).max(*generation);
            }
        }
    }

    /// Applies one partition entry (live or on replay). On replay, an entry that does not start
    /// at the log end is rejected and changes nothing (the host truncates the log there).
    pub fn apply_partition(&mut self, topic: &str, partition: PartitionId, entry: &PartitionEntry) -> Result<(), ReplayGap> {
        let cache_max = self.config.producer_batch_cache_max.max(1);
        let Some(p) = self.topics.get_mut(topic).and_then(|ps| ps.get_mut(partition.get() as usize)) else {
            return Err(ReplayGap { log_end: Offset(0), found: entry.base_offset() });
        };
        if entry.base_offset() != p.log_end {
            return Err(ReplayGap { log_end: p.log_end, found: entry.base_offset() });
        }
        match entry {
            PartitionEntry::Batch { base_offset, producer, transaction, records } => {
                debug_assert!(!records.is_empty());
                let index = p.entries.len();
                let fate = if transaction.is_some() { Fate::Open } else { Fate::Plain };
                if let Some(stamp) = producer {
                    let count = records.len() as u32;
                    let last = stamp.base_sequence.saturating_add(count - 1);
                    let seq = p.producers.entry(stamp.producer_id).or_insert_with(|| ProducerSeq {
                        epoch: stamp.epoch,
                        last_sequence: last,
                        recent: VecDeque::new(),
                    });
                    if seq.epoch != stamp.epoch {
                        seq.epoch = stamp.epoch;
                        seq.recent.clear();
                    }
                    seq.last_sequence = last;
                    seq.recent.push_back((stamp.base_sequence, count, *base_offset));
                    while seq.recent.len() > cache_max {
                        seq.recent.pop_front();
                    }
                    if let Some(transaction) = *transaction {
                        let open = p.open.entry(stamp.producer_id).or_insert_with(|| OpenInPartition {
                            transaction,
                            first_offset: *base_offset,
                            batch_indexes: Vec::new(),
                        });
                        debug_assert_eq!(open.transaction, transaction, "one open transaction per producer");
                        open.batch_indexes.push(index);
                    }
                }
                p.entries.push(Stored::Batch { base_offset: *base_offset, fate, records: Arc::clone(records) });
            }
            PartitionEntry::Marker { offset, producer_id, outcome, transaction, .. } => {
                if let Some(open) = p.open.remove(producer_id) {
                    debug_assert_eq!(open.transaction, *transaction, "a marker ends its own transaction");
                    for i in open.batch_indexes {
                        if let Some(Stored::Batch { fate, .. }) = p.entries.get_mut(i) {
                            debug_assert_eq!(*fate, Fate::Open);
                            *fate = Fate::Decided(*outcome);
                        }
                    }
                }
                p.entries.push(Stored::Marker { offset: *offset });
            }
        }
        p.log_end = entry.next_offset();
        Ok(())
    }

    fn emit_meta(&mut self, staged: &mut Staged, entry: MetaEntry, now_ms: u64) {
        self.apply_meta(&entry, now_ms);
        staged.meta.push(entry);
    }

    fn emit_partition(&mut self, staged: &mut Staged, topic: &str, partition: PartitionId, entry: PartitionEntry) {
        self.apply_partition(topic, partition, &entry).expect("a live entry always continues its log");
        staged.partitions.push((topic.to_string(), partition, entry));
    }

    // ----- recovery -----

    /// After replaying both logs: completes every decided transaction whose markers are missing,
    /// aborts open records no open transaction owns, and returns the entries to persist.
    pub fn finish_recovery(&mut self, now_ms: u64) -> Staged {
        let mut staged = Staged::default();
        let decided = std::mem::take(&mut self.decided);
        let mut markers = Vec::new();
        for (topic, parts) in &self.topics {
            for (i, p) in parts.iter().enumerate() {
                let partition = PartitionId(i as u32);
                for (pid, open) in &p.open {
                    let (epoch, outcome) = match decided.get(&(*pid, open.transaction)) {
                        Some(decision) => *decision,
                        None => {
                            let still_open = match self.owners.get(pid) {
                                Some(Owner::Transactional(tid)) => self.txns.get(tid).is_some_and(|m| {
                                    m.producer_id == *pid
                                        && m.transaction == open.transaction
                                        && m.state.is_open()
                                        && m.partitions.contains(&(topic.clone(), partition))
                                }),
                                _ => false,
                            };
                            if still_open {
                                continue;
                            }
                            tracing::warn!(%topic, %partition, producer_id = pid, "aborting orphaned open records on recovery");
                            (0, TxnOutcome::Abort)
                        }
                    };
                    markers.push((topic.clone(), partition, *pid, epoch, open.transaction, outcome));
                }
            }
        }
        for (topic, partition, producer_id, epoch, transaction, outcome) in markers {
            let offset = self.log_end(&topic, partition).expect("the partition exists");
            let entry = PartitionEntry::Marker { offset, producer_id, epoch, transaction, outcome };
            self.emit_partition(&mut staged, &topic, partition, entry);
        }
        for meta in self.txns.values_mut() {
            if meta.state.is_open() {
                meta.started_ms = now_ms;
            }
        }
        debug_assert!(self.decided.is_empty());
        staged
    }

    /// Decides `tid`'s open transaction and writes its markers.
    fn end_open_transaction(&mut self, staged: &mut Staged, tid: &str, outcome: TxnOutcome, reason: TxnEndReason, now_ms: u64) {
        debug_assert!(self.txns.get(tid).is_some_and(|m| m.state.is_open()));
        self.emit_meta(staged, MetaEntry::Decide { transactional_id: tid.to_string(), outcome, reason }, now_ms);
        let meta = &self.txns[tid];
        let (pid, epoch, transaction) = (meta.producer_id, meta.epoch, meta.transaction);
        let decision = self.decided.remove(&(pid, transaction));
        debug_assert_eq!(decision, Some((epoch, outcome)));
        debug_assert!(self.decided.is_empty(), "live decisions are delivered at once");
        let parts: Vec<(String, PartitionId)> = meta.partitions.iter().cloned().collect();
        for (topic, partition) in parts {
            let Some(p) = self.topics.get(&topic).and_then(|ps| ps.get(partition.get() as usize)) else { continue };
            let Some(open) = p.open.get(&pid) else { continue };
            assert_eq!(open.transaction, transaction, "a partition holds only the open transaction's records");
            let entry = PartitionEntry::Marker { offset: p.log_end, producer_id: pid, epoch, transaction, outcome };
            self.emit_partition(staged, &topic, partition, entry);
        }
        debug_assert!(self.txns.get(tid).is_some_and(|m| !m.state.is_open()));
    }

    // ----- requests -----

    /// Handles one request at `now_ms`. An error changes nothing; a success may append entries
    /// to `staged`, which must be durable before the answer is released.
    pub fn handle(&mut self, request: BrokerRequest, now_ms: u64, staged: &mut Staged) -> Result<BrokerResponse, BrokerError> {
        match request {
            BrokerRequest::CreateTopic { topic, partitions } => self.create_topic(topic, partitions, now_ms, staged),
            BrokerRequest::Metadata { topic } => match self.topics.get(&topic) {
                Some(ps) => Ok(BrokerResponse::Metadata { partitions: ps.len() as u32 }),
                None => Err(BrokerError::UnknownTopic { topic }),
            },
            BrokerRequest::InitProducerId => {
                let idempotent = self.owners.len() - self.txns.len();
                if idempotent >= self.config.idempotent_producers_max {
                    return Err(limit("idempotent_producers_max", format!("{idempotent} producer ids")));
                }
                let producer_id = self.next_producer_id;
                self.emit_meta(staged, MetaEntry::AllocateProducerId { producer_id }, now_ms);
                Ok(BrokerResponse::ProducerId { producer_id, epoch: 0 })
            }
            BrokerRequest::Produce { topic, partition, producer, transactional_id, records } => {
                self.produce(&topic, partition, producer, transactional_id, records, now_ms, staged)
            }
            BrokerRequest::InitTransactions { transactional_id, transaction_timeout_ms, token } => {
                self.init_transactions(transactional_id, transaction_timeout_ms, token, now_ms, staged)
            }
            BrokerRequest::Prepare { transactional_id, producer_id, epoch } => {
                self.prepare(&transactional_id, producer_id, epoch, now_ms, staged)
            }
            BrokerRequest::EndTransaction { transactional_id, producer_id, epoch, outcome } => {
                self.end_transaction(&transactional_id, producer_id, epoch, outcome, now_ms, staged)
            }
            BrokerRequest::ListTransactions { prefix, fence } => {
                if let Some(fence) = fence {
                    self.raise_fence(fence, now_ms, staged)?;
                }
                Ok(BrokerResponse::Transactions(self.list_transactions(&prefix)))
            }
            BrokerRequest::Fetch { topic, partition, from_offset, records_max, bytes_max, isolation } => {
                self.fetch(&topic, partition, from_offset, records_max, bytes_max, isolation).map(BrokerResponse::Fetched)
            }
        }
    }

    fn create_topic(&mut self, topic: String, partitions: u32, now_ms: u64, staged: &mut Staged) -> Result<BrokerResponse, BrokerError> {
        if !valid_topic_name(&topic) {
            return Err(BrokerError::InvalidRequest(format!("invalid topic name {topic:?}")));
        }
        if partitions == 0 {
            return Err(BrokerError::InvalidRequest("a topic needs at least one partition".into()));
        }
        if let Some(existing) = self.topics.get(&topic) {
            let existing = existing.len() as u32;
            return if existing == partitions {
                Ok(BrokerResponse::TopicCreated { partitions })
            } else {
                Err(BrokerError::TopicExists { topic, existing })
            };
        }
        if partitions > self.config.partitions_per_topic_max {
            return Err(limit("partitions_per_topic_max", format!("{partitions} partitions")));
        }
        if self.topics.len() >= self.config.topics_max {
            return Err(limit("topics_max", format!("{} topics exist", self.topics.len())));
        }
        self.emit_meta(staged, MetaEntry::CreateTopic { topic, partitions }, now_ms);
        Ok(BrokerResponse::TopicCreated { partitions })
    }

    fn partition(&self, topic: &str, partition: PartitionId) -> Result<&Partition, BrokerError> {
        let ps = self.topics.get(topic).ok_or_else(|| BrokerError::UnknownTopic { topic: topic.to_string() })?;
        ps.get(partition.get() as usize)
            .ok_or_else(|| BrokerError::UnknownPartition { topic: topic.to_string(), partition })
    }

    /// Checks a transactional request's producer id and epoch against the transactional id.
    fn check_txn_identity(&self, tid: &str, producer_id: ProducerId, epoch: ProducerEpoch) -> Result<&TxnMeta, BrokerError> {
        let meta = self.txns.get(tid).ok_or_else(|| BrokerError::UnknownTransactionalId(tid.to_string()))?;
        if meta.producer_id != producer_id || epoch > meta.epoch {
            return Err(BrokerError::UnknownProducer { producer_id, epoch });
        }
        if epoch < meta.epoch {
            return Err(BrokerError::Fenced { producer_id, epoch, current_epoch: meta.epoch });
        }
        Ok(meta)
    }

    #[allow(clippy::too_many_arguments)]
    fn produce(
        &mut self,
        topic: &str,
        partition: PartitionId,
        producer: Option<ProducerStamp>,
        transactional_id: Option<String>,
        records: PackedRecords,
        now_ms: u64,
        staged: &mut Staged,
    ) -> Result<BrokerResponse, BrokerError> {
        let p = self.partition(topic, partition)?;
        if records.is_empty() {
            return Err(BrokerError::InvalidRequest("a produce needs at least one record".into()));
        }
        if records.len() > self.config.produce_records_max {
            return Err(limit("produce_records_max", format!("{} records", records.len())));
        }
        // The batch knows its longest record: only a batch over the limit is walked, to name the
        // first record that is.
        if records.record_bytes_max() > self.config.record_bytes_max {
            let r = records.iter().find(|r| r.len() > self.config.record_bytes_max).expect("the longest record is over the limit");
            return Err(limit("record_bytes_max", format!("a record of {} bytes", r.len())));
        }
        let count = records.len() as u32;
        // Producer identity.
        if let Some(stamp) = producer {
            match (&transactional_id, self.owners.get(&stamp.producer_id)) {
                (None, Some(Owner::Idempotent)) if stamp.epoch == 0 => {}
                (Some(tid), Some(Owner::Transactional(owner))) if owner == tid => {
                    let meta = self.check_txn_identity(tid, stamp.producer_id, stamp.epoch)?;
                    match meta.state {
                        TxnState::Prepared => {
                            return Err(BrokerError::InvalidTransactionState {
                                transactional_id: tid.clone(),
                                state: meta.state,
                                action: "produce".into(),
                            })
                        }
                        TxnState::CompleteAbort(TxnEndReason::TimedOut) => {
                            return Err(BrokerError::TransactionTimedOut { transactional_id: tid.clone() })
                        }
                        _ => {}
                    }
                }
                (None, Some(Owner::Transactional(_))) => {
                    return Err(BrokerError::InvalidRequest("a transactional producer must name its transactional id".into()))
                }
                (Some(tid), _) if !self.txns.contains_key(tid) => {
                    return Err(BrokerError::UnknownTransactionalId(tid.clone()))
                }
                _ => return Err(BrokerError::UnknownProducer { producer_id: stamp.producer_id, epoch: stamp.epoch }),
            }
            // Sequence: duplicate, gap, or next.
            let Some(last_in_batch) = stamp.base_sequence.checked_add(count - 1) else {
                return Err(BrokerError::InvalidRequest("sequence overflow".into()));
            };
            debug_assert!(last_in_batch >= stamp.base_sequence);
            match p.producers.get(&stamp.producer_id) {
                Some(seq) if seq.epoch > stamp.epoch => {
                    return Err(BrokerError::Fenced { producer_id: stamp.producer_id, epoch: stamp.epoch, current_epoch: seq.epoch })
                }
                Some(seq) if seq.epoch == stamp.epoch => {
                    let expected = seq.last_sequence.wrapping_add(1);
                    if stamp.base_sequence > expected {
                        return Err(BrokerError::OutOfOrderSequence { producer_id: stamp.producer_id, expected, got: stamp.base_sequence });
                    }
                    if stamp.base_sequence < expected {
                        return match seq.recent.iter().find(|(b, n, _)| *b == stamp.base_sequence && *n == count) {
                            Some((_, _, base_offset)) => Ok(BrokerResponse::Produced { base_offset: *base_offset, duplicate: true }),
                            None => Err(BrokerError::DuplicateSequence { producer_id: stamp.producer_id, got: stamp.base_sequence }),
                        };
                    }
                }
                _ => {
                    if stamp.base_sequence != 0 {
                        return Err(BrokerError::OutOfOrderSequence { producer_id: stamp.producer_id, expected: 0, got: stamp.base_sequence });
                    }
                }
            }
        } else if transactional_id.is_some() {
            return Err(BrokerError::InvalidRequest("a transactional produce needs a producer stamp".into()));
        }
        // The transaction: add the partition (opening the transaction) if needed.
        if let Some(tid) = &transactional_id {
            let meta = &self.txns[tid];
            let key = (topic.to_string(), partition);
            let opening = !meta.state.is_open();
            if opening || !meta.partitions.contains(&key) {
                if opening && self.open_transactions() >= self.config.open_transactions_max {
                    return Err(limit("open_transactions_max", format!("{} open", self.open_transactions())));
                }
                if !opening && meta.partitions.len() >= self.config.transaction_partitions_max {
                    return Err(limit("transaction_partitions_max", format!("{} partitions", meta.partitions.len())));
                }
                let entry = MetaEntry::AddPartition { transactional_id: tid.clone(), topic: topic.to_string(), partition };
                self.emit_meta(staged, entry, now_ms);
            }
        }
        let base_offset = self.partition(topic, partition)?.log_end;
        let transaction = transactional_id.as_ref().map(|tid| self.txns[tid].transaction);
        let entry = PartitionEntry::Batch { base_offset, producer, transaction, records: Arc::new(records) };
        self.emit_partition(staged, topic, partition, entry);
        Ok(BrokerResponse::Produced { base_offset, duplicate: false })
    }

    fn init_transactions(
        &mut self,
        tid: String,
        timeout_ms: Option<u64>,
        token: Option<InitToken>,
        now_ms: u64,
        staged: &mut Staged,
    ) -> Result<BrokerResponse, BrokerError> {
        if tid.is_empty() || tid.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return Err(BrokerError::InvalidRequest(format!("invalid transactional id of {} bytes", tid.len())));
        }
        let timeout_ms = timeout_ms.unwrap_or(self.config.transaction_timeout_ms);
        if timeout_ms == 0 || timeout_ms > self.config.transaction_timeout_ms_max {
            return Err(BrokerError::InvalidRequest(format!(
                "transaction timeout {timeout_ms} ms outside (0, {}]",
                self.config.transaction_timeout_ms_max
            )));
        }
        if let Some(token) = token {
            if let Some((prefix, generation)) = self.fence_over(&tid).filter(|(_, g)| token.generation < *g) {
                return Err(BrokerError::PrefixFenced { transactional_id: tid, token, prefix: prefix.to_string(), generation });
            }
        }
        if let (Some(token), Some(meta)) = (token, self.txns.get(&tid)) {
            match meta.last_token {
                Some(last) if token < last => {
                    return Err(BrokerError::StaleInit { transactional_id: tid, token, last });
                }
                // A duplicate of the init that made the current epoch: answer it again.
                Some(last) if token == last => {
                    return Ok(BrokerResponse::ProducerId { producer_id: meta.producer_id, epoch: meta.epoch });
                }
                _ => {}
            }
        }
        let (producer_id, epoch, open) = match self.txns.get(&tid) {
            Some(meta) => {
                let epoch = meta
                    .epoch
                    .checked_add(1)
                    .ok_or_else(|| limit("producer epoch", format!("{tid:?} exhausted its epochs")))?;
                (meta.producer_id, epoch, meta.state.is_open())
            }
            None => {
                if self.txns.len() >= self.config.transactional_ids_max {
                    return Err(limit("transactional_ids_max", format!("{} ids", self.txns.len())));
                }
                (self.next_producer_id, 0, false)
            }
        };
        if open {
            self.end_open_transaction(staged, &tid, TxnOutcome::Abort, TxnEndReason::Fenced, now_ms);
        }
        let entry = MetaEntry::InitTransactions { transactional_id: tid, producer_id, epoch, transaction_timeout_ms: timeout_ms, token };
        self.emit_meta(staged, entry, now_ms);
        Ok(BrokerResponse::ProducerId { producer_id, epoch })
    }

    /// Raises `fence` (durably) unless an equal or higher one is up already.
    fn raise_fence(&mut self, fence: PrefixFence, now_ms: u64, staged: &mut Staged) -> Result<(), BrokerError> {
        let PrefixFence { prefix, generation } = fence;
        if prefix.is_empty() || prefix.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return Err(BrokerError::InvalidRequest(format!("invalid fence prefix of {} bytes", prefix.len())));
        }
        match self.fences.get(&prefix) {
            Some(up) if *up >= generation => return Ok(()),
            Some(_) => {}
            None if self.fences.len() >= self.config.prefix_fences_max => {
                return Err(limit("prefix_fences_max", format!("{} fences", self.fences.len())));
            }
            None => {}
        }
        self.emit_meta(staged, MetaEntry::FencePrefix { prefix, generation }, now_ms);
        Ok(())
    }

    /// The highest fence over `tid` (a raised prefix it starts with), if any.
    fn fence_over(&self, tid: &str) -> Option<(&str, u64)> {
        // Every prefix of `tid` sorts at or before it; the fences are few (one per sink subtask).
        self.fences
            .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(tid)))
            .filter(|(prefix, _)| tid.starts_with(prefix.as_str()))
            .max_by_key(|(_, generation)| **generation)
            .map(|(prefix, generation)| (prefix.as_str(), *generation))
    }

    fn prepare(
        &mut self,
        tid: &str,
        producer_id: ProducerId,
        epoch: ProducerEpoch,
        now_ms: u64,
        staged: &mut Staged,
    ) -> Result<BrokerResponse, BrokerError> {
        let meta = self.check_txn_identity(tid, producer_id, epoch)?;
        match meta.state {
            TxnState::Prepared => Ok(BrokerResponse::TransactionEnded { state: TxnState::Prepared }),
            TxnState::CompleteAbort(TxnEndReason::TimedOut) => {
                Err(BrokerError::TransactionTimedOut { transactional_id: tid.to_string() })
            }
            // The producer's transaction already ended: this is a late duplicate of the prepare
            // that came before its commit or abort (a retried request whose first attempt was held
            // in the network). Re-preparing would open an empty transaction nobody ends.
            TxnState::CompleteCommit => Ok(BrokerResponse::TransactionEnded { state: TxnState::CompleteCommit }),
            TxnState::CompleteAbort(_) => Err(BrokerError::TransactionAborted { transactional_id: tid.to_string() }),
            TxnState::Empty | TxnState::Ongoing => {
                if !meta.state.is_open() && self.open_transactions() >= self.config.open_transactions_max {
                    return Err(limit("open_transactions_max", format!("{} open", self.open_transactions())));
                }
                self.emit_meta(staged, MetaEntry::Prepare { transactional_id: tid.to_string() }, now_ms);
                Ok(BrokerResponse::TransactionEnded { state: TxnState::Prepared })
            }
        }
    }

    fn end_transaction(
        &mut self,
        tid: &str,
        producer_id: ProducerId,
        epoch: ProducerEpoch,
        outcome: TxnOutcome,
        now_ms: u64,
        staged: &mut Staged,
    ) -> Result<BrokerResponse, BrokerError> {
        let meta = self.check_txn_identity(tid, producer_id, epoch)?;
        let state = meta.state;
        let tid_owned = || tid.to_string();
        match (state, outcome) {
            (TxnState::Ongoing | TxnState::Prepared, _) => {
                self.end_open_transaction(staged, tid, outcome, TxnEndReason::Requested, now_ms);
                Ok(BrokerResponse::TransactionEnded { state: self.txns[tid].state })
            }
            (TxnState::Empty, _)
            | (TxnState::CompleteCommit, TxnOutcome::Commit)
            | (TxnState::CompleteAbort(_), TxnOutcome::Abort) => Ok(BrokerResponse::TransactionEnded { state }),
            (TxnState::CompleteAbort(TxnEndReason::TimedOut), TxnOutcome::Commit) => {
                Err(BrokerError::TransactionTimedOut { transactional_id: tid_owned() })
            }
            (TxnState::CompleteAbort(_), TxnOutcome::Commit) => Err(BrokerError::TransactionAborted { transactional_id: tid_owned() }),
            (TxnState::CompleteCommit, TxnOutcome::Abort) => Err(BrokerError::InvalidTransactionState {
                transactional_id: tid_owned(),
                state,
                action: "abort".into(),
            }),
        }
    }

    /// Every transactional id starting with `prefix`, sorted, with its producer id, epoch and state.
    pub fn list_transactions(&self, prefix: &str) -> Vec<TxnListing> {
        self.txns
            .range(prefix.to_string()..)
            .take_while(|(tid, _)| tid.starts_with(prefix))
            .map(|(tid, m)| TxnListing { transactional_id: tid.clone(), producer_id: m.producer_id, epoch: m.epoch, state: m.state })
            .collect()
    }

    /// Aborts every open transaction (ongoing *or prepared*) whose timeout expired at `now_ms`,
    /// and returns their transactional ids.
    pub fn expire_transactions(&mut self, now_ms: u64, staged: &mut Staged) -> Vec<String> {
        let expired: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| m.state.is_open() && now_ms.saturating_sub(m.started_ms) >= m.timeout_ms)
            .map(|(tid, _)| tid.clone())
            .collect();
        for tid in &expired {
            tracing::debug!(transactional_id = %tid, "transaction timed out; aborting");
            self.end_open_transaction(staged, tid, TxnOutcome::Abort, TxnEndReason::TimedOut, now_ms);
        }
        expired
    }

    /// Reads from a partition (see [`BrokerRequest::Fetch`]).
    pub fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        from_offset: Offset,
        records_max: u32,
        bytes_max: u32,
        isolation: IsolationLevel,
    ) -> Result<FetchResult, BrokerError> {
        let p = self.partition(topic, partition)?;
        if from_offset > p.log_end {
            return Err(BrokerError::OffsetOutOfRange { offset: from_offset, log_end: p.log_end });
        }
        let lso = p.last_stable_offset();
        let end = match isolation {
            IsolationLevel::ReadUncommitted => p.log_end,
            IsolationLevel::ReadCommitted => lso,
        };
        let records_max = records_max.min(self.config.fetch_records_max) as usize;
        let bytes_max = bytes_max.min(self.config.fetch_bytes_max) as usize;
        // First find the runs of records to return (a walk over the length prefixes only), then
        // copy each run whole into a batch of exactly their size: the same records as taking them
        // one by one, with one copy per stored batch and no regrowth of the answer.
        let mut runs = Vec::new();
        let (mut count, mut bytes, mut run_bytes) = (0usize, 0usize, 0usize);
        let mut next = from_offset.max(Offset(0));
        let first = p.entries.partition_point(|e| e.next_offset() <= from_offset);
        for entry in &p.entries[first..] {
            if entry.base_offset() >= end {
                break;
            }
            let Stored::Batch { base_offset, fate, records: batch } = entry else {
                next = entry.next_offset();
                continue;
            };
            let visible = match isolation {
                IsolationLevel::ReadUncommitted => true,
                IsolationLevel::ReadCommitted => {
                    debug_assert_ne!(*fate, Fate::Open, "open records lie at or past the LSO");
                    matches!(fate, Fate::Plain | Fate::Decided(TxnOutcome::Commit))
                }
            };
            // The batch's records from `from_offset` on, up to `end`.
            let skip = from_offset.get().saturating_sub(base_offset.get());
            let run_first = Offset(base_offset.get() + skip);
            let available = (batch.len() as u64).saturating_sub(skip).min(end.get().saturating_sub(run_first.get()));
            if !visible {
                next = Offset(run_first.get() + available);
                if available < (batch.len() as u64).saturating_sub(skip) {
                    break;
                }
                continue;
            }
            let n = batch.len() as u64;
            if skip == 0 && available == n && count + batch.len() <= records_max && bytes + batch.payload_bytes_len() <= bytes_max {
                // The whole batch fits every limit: no record-by-record walk.
                count += batch.len();
                bytes += batch.payload_bytes_len();
                next = Offset(run_first.get() + n);
                run_bytes += batch.bytes_len();
                runs.push((run_first, batch.as_run()));
                continue;
            }
            let mut it = batch.iter();
            let mut skipped = 0u64;
            it.take_run_while(|_| {
                skipped += 1;
                skipped <= skip
            });
            let mut taken = 0u64;
            let mut full = false;
            let run = it.take_run_while(|record| {
                if taken == available {
                    return false;
                }
                let size = record.len();
                if count >= records_max || (count > 0 && bytes + size > bytes_max) {
                    full = true;
                    return false;
                }
                bytes += size;
                count += 1;
                taken += 1;
                true
            });
            debug_assert_eq!(run.len() as u64, taken);
            next = Offset(run_first.get() + taken);
            run_bytes += run.bytes_len();
            runs.push((run_first, run));
            if full || taken < (batch.len() as u64).saturating_sub(skip) {
                break;
            }
        }
        let mut offsets = OffsetRuns::new();
        let mut records = PackedRecords::with_capacity(run_bytes);
        for (first, run) in runs {
            offsets.push_run(first, run.len() as u64);
            records.extend_from_run(run).expect("a fetch returns at most fetch_records_max records");
        }
        debug_assert_eq!(records.len(), count);
        debug_assert!(next <= end.max(from_offset));
        Ok(FetchResult { offsets, records, next_offset: next, high_watermark: p.log_end, last_stable_offset: lso })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_core::ids::{Offset, PartitionId};

    const T: &str = "t";

    fn broker() -> BrokerState {
        let mut b = BrokerState::new(BrokerConfig { transaction_timeout_ms: 1_000, ..BrokerConfig::default() });
        ok(&mut b, BrokerRequest::CreateTopic { topic: T.into(), partitions: 2 });
        b
    }

    fn run(b: &mut BrokerState, req: BrokerRequest, now_ms: u64) -> Result<BrokerResponse, BrokerError> {
        let mut staged = Staged::default();
        let before = staged.clone();
        let r = b.handle(req, now_ms, &mut staged);
        if r.is_err() {
            assert_eq!(staged, before, "an error stages nothing");
        }
        r
    }

    fn ok(b: &mut BrokerState, req: BrokerRequest) -> BrokerResponse {
        run(b, req, 0).expect("request succeeds")
    }

    fn recs(values: &[&str]) -> PackedRecords {
        PackedRecords::from_values(values)
    }

    fn produce(p: u32, producer: Option<ProducerStamp>, tid: Option<&str>, values: &[&str]) -> BrokerRequest {
        BrokerRequest::Produce {
            topic: T.into(),
            partition: PartitionId(p),
            producer,
            transactional_id: tid.map(str::to_string),
            records: recs(values),
        }
    }

    fn stamp(producer_id: ProducerId, epoch: ProducerEpoch, base_sequence: u32) -> Option<ProducerStamp> {
        Some(ProducerStamp { producer_id, epoch, base_sequence })
    }

    fn init(b: &mut BrokerState, tid: &str) -> (ProducerId, ProducerEpoch) {
        match ok(b, BrokerRequest::InitTransactions { transactional_id: tid.into(), transaction_timeout_ms: None, token: None }) {
            BrokerResponse::ProducerId { producer_id, epoch } => (producer_id, epoch),
            other => panic!("{other:?}"),
        }
    }

    fn end(tid: &str, (producer_id, epoch): (ProducerId, ProducerEpoch), outcome: TxnOutcome) -> BrokerRequest {
        BrokerRequest::EndTransaction { transactional_id: tid.into(), producer_id, epoch, outcome }
    }

    fn values(b: &BrokerState, p: u32, isolation: IsolationLevel) -> Vec<String> {
        let f = b.fetch(T, PartitionId(p), Offset(0), u32::MAX, u32::MAX, isolation).unwrap();
        f.records.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_duplicate_sequence_returns_the_original_offset_and_a_gap_is_out_of_order() {
        let mut b = broker();
        let BrokerResponse::ProducerId { producer_id: pid, .. } = ok(&mut b, BrokerRequest::InitProducerId) else { panic!() };
        ok(&mut b, produce(0, None, None, &["plain"]));
        let cases: Vec<(Option<ProducerStamp>, Result<BrokerResponse, BrokerError>)> = vec![
            (stamp(pid, 0, 0), Ok(BrokerResponse::Produced { base_offset: Offset(1), duplicate: false })),
            (stamp(pid, 0, 0), Ok(BrokerResponse::Produced { base_offset: Offset(1), duplicate: true })),
            (stamp(pid, 0, 5), Err(BrokerError::OutOfOrderSequence { producer_id: pid, expected: 2, got: 5 })),
            (stamp(pid, 0, 2), Ok(BrokerResponse::Produced { base_offset: Offset(3), duplicate: false })),
            (stamp(pid, 0, 1), Err(BrokerError::DuplicateSequence { producer_id: pid, got: 1 })),
            (stamp(pid, 1, 0), Err(BrokerError::UnknownProducer { producer_id: pid, epoch: 1 })),
            (stamp(pid + 7, 0, 0), Err(BrokerError::UnknownProducer { producer_id: pid + 7, epoch: 0 })),
        ];
        for (i, (producer, want)) in cases.into_iter().enumerate() {
            assert_eq!(run(&mut b, produce(0, producer, None, &["a", "b"]), 0), want, "case {i}");
        }
        assert_eq!(values(&b, 0, IsolationLevel::ReadCommitted), ["plain", "a", "b", "a", "b"]);
    }

    fn init_with(b: &mut BrokerState, tid: &str, generation: u64, sequence: u64) -> Result<(ProducerId, ProducerEpoch), BrokerError> {
        let token = Some(InitToken { generation, sequence });
        match run(b, BrokerRequest::InitTransactions { transactional_id: tid.into(), transaction_timeout_ms: None, token }, 0)? {
            BrokerResponse::ProducerId { producer_id, epoch } => Ok((producer_id, epoch)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_late_duplicate_init_neither_fences_its_producer_nor_aborts_its_prepared_transaction() {
        let mut b = broker();
        let (pid, e0) = init_with(&mut b, "sink-0-5", 1, 7).unwrap();
        ok(&mut b, produce(0, stamp(pid, e0, 0), Some("sink-0-5"), &["a"]));
        ok(&mut b, BrokerRequest::Prepare { transactional_id: "sink-0-5".into(), producer_id: pid, epoch: e0 });
        // The first attempt of the same init, held in the network, arrives now.
        assert_eq!(init_with(&mut b, "sink-0-5", 1, 7), Ok((pid, e0)));
        ok(&mut b, end("sink-0-5", (pid, e0), TxnOutcome::Commit));
        assert_eq!(values(&b, 0, IsolationLevel::ReadCommitted), ["a"]);
    }

    #[test]
    fn a_late_duplicate_prepare_after_the_end_opens_nothing() {
        let mut b = broker();
        let prepare = |pid, epoch| BrokerRequest::Prepare { transactional_id: "sink-0-3".into(), producer_id: pid, epoch };
        let (pid, e0) = init(&mut b, "sink-0-3");
        ok(&mut b, produce(0, stamp(pid, e0, 0), Some("sink-0-3"), &["a"]));
        ok(&mut b, prepare(pid, e0));
        ok(&mut b, end("sink-0-3", (pid, e0), TxnOutcome::Commit));
        // The first attempt of the prepare, held in the network, arrives after the commit.
        assert_eq!(ok(&mut b, prepare(pid, e0)), BrokerResponse::TransactionEnded { state: TxnState::CompleteCommit });
        assert_eq!(b.open_transactions(), 0, "nothing was reopened");
        let (pid, e1) = init(&mut b, "sink-0-3");
        ok(&mut b, produce(0, stamp(pid, e1, 0), Some("sink-0-3"), &["b"]));
        ok(&mut b, end("sink-0-3", (pid, e1), TxnOutcome::Abort));
        assert!(matches!(run(&mut b, prepare(pid, e1), 0), Err(BrokerError::TransactionAborted { .. })));
        assert_eq!(b.open_transactions(), 0);
    }

    #[test]
    fn an_older_token_is_refused_and_a_newer_one_fences() {
        let mut b = broker();
        let (pid, e0) = init_with(&mut b, "sink-1-3", 2, 1).unwrap();
        let stale = init_with(&mut b, "sink-1-3", 1, 9);
        assert_eq!(
            stale,
            Err(BrokerError::StaleInit {
                transactional_id: "sink-1-3".into(),
                token: InitToken { generation: 1, sequence: 9 },
                last: InitToken { generation: 2, sequence: 1 },
            })
        );
        assert_eq!(init_with(&mut b, "sink-1-3", 2, 2), Ok((pid, e0 + 1)));
        // An unconditional init (no token) is not ordered: it still fences.
        assert_eq!(init(&mut b, "sink-1-3"), (pid, e0 + 2));
        assert!(matches!(init_with(&mut b, "sink-1-3", 2, 1), Err(BrokerError::StaleInit { .. })), "the highest token is kept");
    }

    #[test]
    fn the_last_init_token_survives_a_replay_of_the_metadata_log() {
        let mut b = broker();
        let mut staged = Staged::default();
        let req = |g, s| BrokerRequest::InitTransactions { transactional_id: "sink-2-4".into(), transaction_timeout_ms: None, token: Some(InitToken { generation: g, sequence: s }) };
        b.handle(BrokerRequest::CreateTopic { topic: T.into(), partitions: 2 }, 0, &mut Staged::default()).ok();
        b.handle(req(3, 1), 0, &mut staged).unwrap();
        let mut replayed = BrokerState::new(BrokerConfig { transaction_timeout_ms: 1_000, ..BrokerConfig::default() });
        for entry in &staged.meta {
            replayed.apply_meta(entry, 0);
        }
        assert!(matches!(run(&mut replayed, req(2, 5), 0), Err(BrokerError::StaleInit { .. })));
    }

    fn fence_and_list(b: &mut BrokerState, prefix: &str, generation: u64, staged: &mut Staged) -> Result<Vec<TxnListing>, BrokerError> {
        let fence = Some(PrefixFence { prefix: prefix.into(), generation });
        match b.handle(BrokerRequest::ListTransactions { prefix: String::new(), fence }, 0, staged)? {
            BrokerResponse::Transactions(rows) => Ok(rows),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_prefix_fence_refuses_older_inits_of_every_id_under_it_even_ids_that_do_not_exist_yet() {
        let mut b = broker();
        let mut staged = Staged::default();
        init_with(&mut b, "sink-1-2", 1, 1).unwrap();
        let listed = fence_and_list(&mut b, "sink-1-", 2, &mut staged).unwrap();
        assert_eq!(listed.iter().map(|r| r.transactional_id.as_str()).collect::<Vec<_>>(), ["sink-1-2"], "the listing still answers");
        assert_eq!(staged.meta, vec![MetaEntry::FencePrefix { prefix: "sink-1-".into(), generation: 2 }], "the fence is logged");
        // The zombie of generation 1 cannot initialize a new id under the prefix, nor the old one.
        assert_eq!(
            init_with(&mut b, "sink-1-3", 1, 7),
            Err(BrokerError::PrefixFenced {
                transactional_id: "sink-1-3".into(),
                token: InitToken { generation: 1, sequence: 7 },
                prefix: "sink-1-".into(),
                generation: 2,
            })
        );
        assert!(matches!(init_with(&mut b, "sink-1-2", 1, 8), Err(BrokerError::PrefixFenced { .. })));
        assert!(!b.list_transactions("sink-1-3").iter().any(|r| r.transactional_id == "sink-1-3"), "nothing was created");
        // The fencing generation and newer ones may; other subtasks' ids and tokenless inits are not fenced.
        assert!(init_with(&mut b, "sink-1-3", 2, 1).is_ok());
        assert!(init_with(&mut b, "sink-1-4", 3, 1).is_ok());
        assert!(init_with(&mut b, "sink-10-3", 1, 1).is_ok(), "\"sink-1-\" does not cover subtask 10");
        assert!(init_with(&mut b, "sink-2-3", 1, 1).is_ok());
        init(&mut b, "sink-1-5");
        // A fence only rises: a lower one changes nothing and logs nothing.
        let mut lower = Staged::default();
        fence_and_list(&mut b, "sink-1-", 1, &mut lower).unwrap();
        assert!(lower.meta.is_empty());
        assert!(matches!(init_with(&mut b, "sink-1-6", 1, 9), Err(BrokerError::PrefixFenced { generation: 2, .. })));
        // An empty prefix would fence everything: refused.
        assert!(matches!(fence_and_list(&mut b, "", 9, &mut Staged::default()), Err(BrokerError::InvalidRequest(_))));
    }

    #[test]
    fn a_prefix_fence_survives_a_replay_of_the_metadata_log_and_is_bounded() {
        let mut b = BrokerState::new(BrokerConfig { prefix_fences_max: 2, ..BrokerConfig::default() });
        let mut staged = Staged::default();
        fence_and_list(&mut b, "sink-0-", 4, &mut staged).unwrap();
        fence_and_list(&mut b, "sink-1-", 4, &mut staged).unwrap();
        assert!(matches!(fence_and_list(&mut b, "sink-2-", 4, &mut staged), Err(BrokerError::LimitExceeded { .. })));
        fence_and_list(&mut b, "sink-1-", 5, &mut staged).unwrap();
        let mut replayed = BrokerState::new(BrokerConfig::default());
        for entry in &staged.meta {
            replayed.apply_meta(entry, 0);
        }
        assert!(matches!(init_with(&mut replayed, "sink-0-9", 3, 1), Err(BrokerError::PrefixFenced { generation: 4, .. })));
        assert!(matches!(init_with(&mut replayed, "sink-1-9", 4, 1), Err(BrokerError::PrefixFenced { generation: 5, .. })));
        assert!(init_with(&mut replayed, "sink-1-9", 5, 1).is_ok());
    }

    #[test]
    fn init_transactions_bumps_the_epoch_fences_the_zombie_and_aborts_its_open_transaction() {
        let mut b = broker();
        let (pid, e0) = init(&mut b, "sink-0-1");
        ok(&mut b, produce(0, stamp(pid, e0, 0), Some("sink-0-1"), &["zombie"]));
        let (pid1, e1) = init(&mut b, "sink-0-1");
        assert_eq!((pid1, e1), (pid, e0 + 1));
        let fenced = BrokerError::Fenced { producer_id: pid, epoch: e0, current_epoch: e1 };
        assert_eq!(run(&mut b, produce(0, stamp(pid, e0, 1), Some("sink-0-1"), &["late"]), 0), Err(fenced.clone()));
        assert_eq!(run(&mut b, end("sink-0-1", (pid, e0), TxnOutcome::Commit), 0), Err(fenced.clone()));
        assert_eq!(
            run(&mut b, BrokerRequest::Prepare { transactional_id: "sink-0-1".into(), producer_id: pid, epoch: e0 }, 0),
            Err(fenced)
        );
        // The new epoch starts its sequences at 0 and commits normally.
        ok(&mut b, produce(0, stamp(pid, e1, 0), Some("sink-0-1"), &["fresh"]));
        ok(&mut b, end("sink-0-1", (pid, e1), TxnOutcome::Commit));
        assert_eq!(values(&b, 0, IsolationLevel::ReadCommitted), ["fresh"]);
        assert_eq!(values(&b, 0, IsolationLevel::ReadUncommitted), ["zombie", "fresh"]);
    }

    #[test]
    fn commit_and_abort_are_idempotent_and_ending_the_other_way_is_a_typed_error() {
        type Case = (&'static str, Vec<TxnOutcome>, Result<TxnState, fn(&BrokerError) -> bool>);
        let cases: Vec<Case> = vec![
            ("commit twice", vec![TxnOutcome::Commit, TxnOutcome::Commit], Ok(TxnState::CompleteCommit)),
            ("abort twice", vec![TxnOutcome::Abort, TxnOutcome::Abort], Ok(TxnState::CompleteAbort(TxnEndReason::Requested))),
            ("commit after abort", vec![TxnOutcome::Abort, TxnOutcome::Commit], Err(|e| matches!(e, BrokerError::TransactionAborted { .. }))),
            (
                "abort after commit",
                vec![TxnOutcome::Commit, TxnOutcome::Abort],
                Err(|e| matches!(e, BrokerError::InvalidTransactionState { state: TxnState::CompleteCommit, .. })),
            ),
        ];
        for (name, outcomes, want) in cases {
            let mut b = broker();
            let id = init(&mut b, "x");
            ok(&mut b, produce(1, stamp(id.0, id.1, 0), Some("x"), &["v"]));
            let mut last = None;
            for outcome in outcomes {
                last = Some(run(&mut b, end("x", id, outcome), 0));
            }
            match (last.unwrap(), want) {
                (Ok(BrokerResponse::TransactionEnded { state }), Ok(want)) => assert_eq!(state, want, "{name}"),
                (Err(e), Err(is)) => assert!(is(&e), "{name}: {e:?}"),
                (got, _) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn a_prepared_transaction_still_times_out_and_then_cannot_be_committed() {
        let mut b = broker();
        let id = init(&mut b, "sink-0-7");
        run(&mut b, produce(0, stamp(id.0, id.1, 0), Some("sink-0-7"), &["v"]), 100).unwrap();
        run(&mut b, BrokerRequest::Prepare { transactional_id: "sink-0-7".into(), producer_id: id.0, epoch: id.1 }, 200).unwrap();
        let produce_after_prepare = run(&mut b, produce(0, stamp(id.0, id.1, 1), Some("sink-0-7"), &["w"]), 300);
        assert!(matches!(produce_after_prepare, Err(BrokerError::InvalidTransactionState { state: TxnState::Prepared, .. })));
        let mut staged = Staged::default();
        assert!(b.expire_transactions(1_099, &mut staged).is_empty(), "the timeout runs from the first record (100 ms)");
        assert_eq!(b.expire_transactions(1_100, &mut staged), ["sink-0-7"]);
        assert!(matches!(staged.meta[..], [MetaEntry::Decide { outcome: TxnOutcome::Abort, reason: TxnEndReason::TimedOut, .. }]));
        assert!(matches!(staged.partitions[..], [(_, PartitionId(0), PartitionEntry::Marker { outcome: TxnOutcome::Abort, .. })]));
        let late = run(&mut b, end("sink-0-7", id, TxnOutcome::Commit), 2_000);
        assert_eq!(late, Err(BrokerError::TransactionTimedOut { transactional_id: "sink-0-7".into() }));
        assert!(values(&b, 0, IsolationLevel::ReadCommitted).is_empty());
        assert_eq!(
            run(&mut b, end("sink-0-7", id, TxnOutcome::Abort), 2_000),
            Ok(BrokerResponse::TransactionEnded { state: TxnState::CompleteAbort(TxnEndReason::TimedOut) })
        );
    }

    #[test]
    fn read_committed_stops_at_the_last_stable_offset_and_skips_aborted_records() {
        let mut b = broker();
        let a = init(&mut b, "a");
        let c = init(&mut b, "c");
        ok(&mut b, produce(0, None, None, &["p0"])); // @0
        ok(&mut b, produce(0, stamp(a.0, a.1, 0), Some("a"), &["a0", "a1"])); // @1, @2
        ok(&mut b, produce(0, stamp(c.0, c.1, 0), Some("c"), &["c0"])); // @3
        ok(&mut b, produce(0, None, None, &["p1"])); // @4
        let fetch = |b: &BrokerState, from: u64, isolation| b.fetch(T, PartitionId(0), Offset(from), 100, 1_000, isolation).unwrap();
        let f = fetch(&b, 0, IsolationLevel::ReadCommitted);
        assert_eq!((f.records.len(), f.next_offset, f.last_stable_offset, f.high_watermark), (1, Offset(1), Offset(1), Offset(5)));
        ok(&mut b, end("a", a, TxnOutcome::Abort)); // marker @5
        let f = fetch(&b, 1, IsolationLevel::ReadCommitted);
        assert_eq!((f.records.len(), f.next_offset, f.last_stable_offset), (0, Offset(3), Offset(3)), "aborted a0, a1 skipped; c is open");
        ok(&mut b, end("c", c, TxnOutcome::Commit)); // marker @6
        type Case = (u64, IsolationLevel, Vec<(u64, &'static str)>, u64);
        let cases: Vec<Case> = vec![
            (0, IsolationLevel::ReadCommitted, vec![(0, "p0"), (3, "c0"), (4, "p1")], 7),
            (2, IsolationLevel::ReadCommitted, vec![(3, "c0"), (4, "p1")], 7),
            (5, IsolationLevel::ReadCommitted, vec![], 7),
            (7, IsolationLevel::ReadCommitted, vec![], 7),
            (0, IsolationLevel::ReadUncommitted, vec![(0, "p0"), (1, "a0"), (2, "a1"), (3, "c0"), (4, "p1")], 7),
            (2, IsolationLevel::ReadUncommitted, vec![(2, "a1"), (3, "c0"), (4, "p1")], 7),
        ];
        for (from, isolation, want, next) in cases {
            let f = fetch(&b, from, isolation);
            let got: Vec<(u64, String)> = f.iter().map(|(o, r)| (o.get(), String::from_utf8(r.to_vec()).unwrap())).collect();
            let want: Vec<(u64, String)> = want.into_iter().map(|(o, v)| (o, v.to_string())).collect();
            assert_eq!(got, want, "from {from} {isolation:?}");
            assert_eq!(f.next_offset, Offset(next), "from {from} {isolation:?}");
        }
        assert!(matches!(b.fetch(T, PartitionId(0), Offset(8), 1, 1, IsolationLevel::ReadCommitted), Err(BrokerError::OffsetOutOfRange { .. })));
    }

    #[test]
    fn fetch_limits_cut_whole_records_but_always_return_one() {
        let mut b = broker();
        ok(&mut b, produce(1, None, None, &["aaaa", "bbbb", "cccc"]));
        let cases: Vec<(u32, u32, usize, u64)> = vec![(10, 1_000, 3, 3), (2, 1_000, 2, 2), (10, 8, 2, 2), (10, 9, 2, 2), (10, 1, 1, 1), (0, 1_000, 0, 0)];
        for (records_max, bytes_max, n, next) in cases {
            let f = b.fetch(T, PartitionId(1), Offset(0), records_max, bytes_max, IsolationLevel::ReadUncommitted).unwrap();
            assert_eq!((f.records.len(), f.next_offset), (n, Offset(next)), "records_max {records_max} bytes_max {bytes_max}");
        }
    }

    #[test]
    fn list_transactions_finds_every_id_of_a_prefix_in_order() {
        let mut b = broker();
        for tid in ["sink-1-3", "sink-0-2", "sink-0-10", "other-0-1", "sink-0-3"] {
            init(&mut b, tid);
        }
        let id = init(&mut b, "sink-0-3");
        ok(&mut b, produce(0, stamp(id.0, id.1, 0), Some("sink-0-3"), &["v"]));
        let got: Vec<(String, TxnState)> = b.list_transactions("sink-0-").into_iter().map(|l| (l.transactional_id, l.state)).collect();
        let want = [("sink-0-10", TxnState::Empty), ("sink-0-2", TxnState::Empty), ("sink-0-3", TxnState::Ongoing)];
        assert_eq!(got, want.map(|(t, s)| (t.to_string(), s)));
        assert_eq!(b.list_transactions("").len(), 5);
        assert!(b.list_transactions("zzz").is_empty());
    }

    #[test]
    fn bad_requests_are_typed_errors_that_change_nothing() {
        let mut b = BrokerState::new(BrokerConfig { partitions_per_topic_max: 4, produce_records_max: 2, open_transactions_max: 1, ..BrokerConfig::default() });
        ok(&mut b, BrokerRequest::CreateTopic { topic: T.into(), partitions: 1 });
        let id = init(&mut b, "x");
        init(&mut b, "y");
        ok(&mut b, produce(0, stamp(id.0, id.1, 0), Some("x"), &["v"]));
        let y = b.list_transactions("y")[0].clone();
        type Case = (BrokerRequest, fn(&BrokerError) -> bool);
        let cases: Vec<Case> = vec![
            (BrokerRequest::CreateTopic { topic: "bad/name".into(), partitions: 1 }, |e| matches!(e, BrokerError::InvalidRequest(_))),
            (BrokerRequest::CreateTopic { topic: "..".into(), partitions: 1 }, |e| matches!(e, BrokerError::InvalidRequest(_))),
            (BrokerRequest::CreateTopic { topic: "u".into(), partitions: 0 }, |e| matches!(e, BrokerError::InvalidRequest(_))),
            (BrokerRequest::CreateTopic { topic: "u".into(), partitions: 5 }, |e| matches!(e, BrokerError::LimitExceeded { .. })),
            (BrokerRequest::CreateTopic { topic: T.into(), partitions: 3 }, |e| matches!(e, BrokerError::TopicExists { existing: 1, .. })),
            (BrokerRequest::Metadata { topic: "nope".into() }, |e| matches!(e, BrokerError::UnknownTopic { .. })),
            (produce(1, None, None, &["v"]), |e| matches!(e, BrokerError::UnknownPartition { .. })),
            (produce(0, None, None, &[]), |e| matches!(e, BrokerError::InvalidRequest(_))),
            (produce(0, None, None, &["a", "b", "c"]), |e| matches!(e, BrokerError::LimitExceeded { .. })),
            (produce(0, None, Some("x"), &["v"]), |e| matches!(e, BrokerError::InvalidRequest(_))),
            (produce(0, stamp(id.0, id.1, 1), None, &["v"]), |e| matches!(e, BrokerError::InvalidRequest(_))),
            (produce(0, stamp(id.0, id.1, 1), Some("nope"), &["v"]), |e| matches!(e, BrokerError::UnknownTransactionalId(_))),
            (produce(0, stamp(y.producer_id, 0, 0), Some("y"), &["v"]), |e| matches!(e, BrokerError::LimitExceeded { .. })),
            (BrokerRequest::InitTransactions { transactional_id: String::new(), transaction_timeout_ms: None, token: None }, |e| matches!(e, BrokerError::InvalidRequest(_))),
            (BrokerRequest::InitTransactions { transactional_id: "z".into(), transaction_timeout_ms: Some(u64::MAX), token: None }, |e| matches!(e, BrokerError::InvalidRequest(_))),
            (end("nope", id, TxnOutcome::Commit), |e| matches!(e, BrokerError::UnknownTransactionalId(_))),
            (end("x", (id.0 + 1, id.1), TxnOutcome::Commit), |e| matches!(e, BrokerError::UnknownProducer { .. })),
        ];
        for (req, is) in cases {
            let shown = format!("{req:?}");
            let err = run(&mut b, req, 0).unwrap_err();
            assert!(is(&err), "{shown}: {err:?}");
        }
        assert_eq!(b.topics(), vec![(T.to_string(), 1)]);
        assert_eq!(b.log_end(T, PartitionId(0)), Some(Offset(1)));
        assert_eq!(b.open_transactions(), 1);
    }

    /// The fetch as it was first written: record by record, each copied on its own. The fetch
    /// that copies runs of records must answer exactly the same.
    fn fetch_one_by_one(b: &BrokerState, partition: PartitionId, from_offset: Offset, records_max: u32, bytes_max: u32, isolation: IsolationLevel) -> FetchResult {
        let p = b.partition(T, partition).unwrap();
        let lso = p.last_stable_offset();
        let end = match isolation {
            IsolationLevel::ReadUncommitted => p.log_end,
            IsolationLevel::ReadCommitted => lso,
        };
        let records_max = records_max.min(b.config.fetch_records_max) as usize;
        let bytes_max = bytes_max.min(b.config.fetch_bytes_max);
        let (mut offsets, mut records) = (OffsetRuns::new(), PackedRecords::new());
        let mut bytes = 0usize;
        let mut next = from_offset;
        let first = p.entries.partition_point(|e| e.next_offset() <= from_offset);
        'entries: for entry in &p.entries[first..] {
            if entry.base_offset() >= end {
                break;
            }
            match entry {
                Stored::Marker { .. } => next = entry.next_offset(),
                Stored::Batch { base_offset, fate, records: batch } => {
                    let visible = isolation == IsolationLevel::ReadUncommitted || matches!(fate, Fate::Plain | Fate::Decided(TxnOutcome::Commit));
                    for (i, record) in batch.iter().enumerate() {
                        let offset = Offset(base_offset.get() + i as u64);
                        if offset < from_offset {
                            continue;
                        }
                        if offset >= end {
                            break 'entries;
                        }
                        if visible {
                            if records.len() >= records_max || (!records.is_empty() && bytes + record.len() > bytes_max as usize) {
                                break 'entries;
                            }
                            bytes += record.len();
                            records.push(record).unwrap();
                            offsets.push(offset);
                        }
                        next = offset.next();
                    }
                }
            }
        }
        FetchResult { offsets, records, next_offset: next, high_watermark: p.log_end, last_stable_offset: lso }
    }

    /// One step of building a partition for the fetch property.
    #[derive(Clone, Debug)]
    enum Step {
        Plain(Vec<String>),
        Txn { tid: usize, values: Vec<String> },
        End { tid: usize, commit: bool },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let values = proptest::collection::vec("[a-z]{0,12}", 1..6);
        prop_oneof![
            values.clone().prop_map(Step::Plain),
            (0..2usize, values).prop_map(|(tid, values)| Step::Txn { tid, values }),
            (0..2usize, any::<bool>()).prop_map(|(tid, commit)| Step::End { tid, commit }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn a_fetch_copying_runs_answers_exactly_as_one_copying_records_one_by_one(
            steps in proptest::collection::vec(step(), 0..25),
            fetches in proptest::collection::vec((0u64..40, 0u32..12, 0u32..40, proptest::bool::ANY), 1..12),
        ) {
            let mut b = broker();
            let tids = ["a", "b"];
            let ids = [init(&mut b, tids[0]), init(&mut b, tids[1])];
            let mut seq = [0u32; 2];
            for s in steps {
                match s {
                    Step::Plain(values) => {
                        let values: Vec<&str> = values.iter().map(String::as_str).collect();
                        ok(&mut b, produce(0, None, None, &values));
                    }
                    Step::Txn { tid, values } => {
                        let values: Vec<&str> = values.iter().map(String::as_str).collect();
                        let (pid, epoch) = ids[tid];
                        ok(&mut b, produce(0, stamp(pid, epoch, seq[tid]), Some(tids[tid]), &values));
                        seq[tid] += values.len() as u32;
                    }
                    Step::End { tid, commit } => {
                        let outcome = if commit { TxnOutcome::Commit } else { TxnOutcome::Abort };
                        let _ = run(&mut b, end(tids[tid], ids[tid], outcome), 0);
                    }
                }
            }
            let log_end = b.log_end(T, PartitionId(0)).unwrap().get();
            for (from, records_max, bytes_max, committed) in fetches {
                let from = Offset(from.min(log_end));
                let isolation = if committed { IsolationLevel::ReadCommitted } else { IsolationLevel::ReadUncommitted };
                let fast = b.fetch(T, PartitionId(0), from, records_max, bytes_max, isolation).unwrap();
                let slow = fetch_one_by_one(&b, PartitionId(0), from, records_max, bytes_max, isolation);
                proptest::prop_assert_eq!(&fast, &slow, "from {} records_max {} bytes_max {} {:?}", from, records_max, bytes_max, isolation);
            }
        }
    }

}
