//! The exactly-once sink writer: the pure half of Flink's `TwoPhaseCommitSinkFunction` and of the
//! `KafkaSink` exactly-once writer (`KafkaWriter` + `KafkaCommitter`).
//!
//! # Transactions, one per subtask and checkpoint
//!
//! Records go into a broker transaction named by a [`TransactionalId`]
//! `"{prefix}-{subtask}-{checkpoint}"`. The transaction that collects the records after barrier
//! `n - 1` is named with `n`; the first one of a fresh job with `1`, the first one after a restore
//! from checkpoint `n` with `n + 1`. The subtask index in the name keeps ids unique across
//! subtasks (FLINK-7978); the names a writer uses only go up (a transaction named `c` is
//! pre-committed at a barrier `m >= c` and the next one is named `m + 1`).
//!
//! The life of a transaction, as [`SinkCommand`]s the runtime carries out in order:
//!
//! 1. [`SinkCommand::Begin`]: `init_transactions(id)` (fences every older producer of the id and
//!    aborts its unfinished transaction) and begin;
//! 2. [`SinkCommand::Write`] for each batch of records ([`Operator::process_batch`]);
//! 3. at barrier `n` ([`Operator::snapshot_state`]): [`SinkCommand::PreCommit`] (flush and
//!    prepare), then the transaction is recorded as pending `(n, id)` in the list state
//!    [`SINK_PENDING_STATE`] together with every earlier pending one, and the next transaction
//!    (named `n + 1`) begins. The task acknowledges the barrier only after the pre-commit is done
//!    (FLINK-5701: an acknowledged checkpoint must not lose buffered records);
//! 4. when checkpoint `n` completes ([`Operator::notify_checkpoint_complete`]):
//!    [`SinkCommand::Commit`] for every pending transaction of a checkpoint `<= n` — completing
//!    `n` subsumes every earlier checkpoint whose notification was lost;
//! 5. an aborted checkpoint commits nothing: its transactions stay pending until a later
//!    checkpoint completes.
//!
//! The runtime must carry out the commands of one subtask in order and finish each before the
//! next barrier is acknowledged: then a commit emitted before snapshot `n + 1` is done at the
//! broker when `n + 1` completes, which is what lets the writer forget committed transactions.
//!
//! # Recovery ([`Operator::initialize_state`])
//!
//! Restoring checkpoint `n`, each subtask gets an even share of the old pending transactions
//! (list state, Flink's round-robin split, so rescaling works) and:
//!
//! 1. emits [`SinkCommand::Commit`] for each of them: the restored snapshot names them, the
//!    checkpoint completed, so they must be committed even if the notification never arrived
//!    (commit is idempotent at the broker);
//! 2. emits [`SinkCommand::AbortLater`] `{ prefix, after: n, owner: subtask, parallelism }`:
//!    fence every transactional id of the prefix named with a checkpoint `> n` whose subtask `j`
//!    satisfies `j % parallelism == owner`, aborting its unfinished transaction — the
//!    transactions written after the restored cut, including those of subtasks that no longer
//!    exist after a scale-down. Fencing covers ids without an open transaction too: a zombie
//!    that initialized one could otherwise still open a transaction in it. Every `j` has exactly
//!    one owner, and the owner of a live subtask `j < parallelism` is `j` itself, so no subtask
//!    aborts another's new transaction. A fresh start uses `after = 0`;
//! 3. begins the transaction named `n + 1`. If an aborted transaction had that name, `Begin` is
//!    a new transaction with a new epoch: the id never carries data from before the restore into
//!    a commit (FLINK-8132), and any zombie producer of the id is fenced.
//!
//! # Plain mode (the positive control)
//!
//! [`SinkMode::Plain`] writes every batch at once with [`SinkCommand::PlainWrite`]: no
//! transactions, no state. That is at-least-once: after a restore the replayed records are
//! written again, which is what the simulator's `exactly_once` checker must catch.

use super::{Data, Operator, OperatorCommand, OperatorContext, OperatorError, OperatorResult};
use crate::ids::CheckpointId;
use crate::records::{PackedRecords, RECORD_LENGTH_BYTES};
use crate::state::OperatorListState;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The name of the list state holding the pending (pre-committed, not yet committed) transactions.
pub const SINK_PENDING_STATE: &str = "sink-pending-transactions";

/// Default bound on pending transactions: reaching it means checkpoints have stopped completing,
/// and the writer fails rather than hold transactions open at the broker without end.
pub const PENDING_TRANSACTIONS_MAX_DEFAULT: usize = 64;

/// Default bound on the records of one [`SinkCommand::Write`] / [`SinkCommand::PlainWrite`].
pub const WRITE_RECORDS_MAX_DEFAULT: usize = 4096;

/// The name of one transaction: `"{prefix}-{subtask}-{checkpoint}"`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransactionalId {
    /// The sink's prefix (may itself contain `-`).
    pub prefix: String,
    /// The index of the subtask that opened the transaction.
    pub subtask: u32,
    /// The checkpoint whose barrier will pre-commit it (the first checkpoint after its records).
    pub checkpoint: CheckpointId,
}

impl TransactionalId {
    /// Builds an id.
    pub fn new(prefix: impl Into<String>, subtask: u32, checkpoint: CheckpointId) -> Self {
        TransactionalId { prefix: prefix.into(), subtask, checkpoint }
    }

    /// `"{prefix}-{subtask}-"`: what every id of `subtask` under `prefix` starts with (and, the
    /// number being canonical and ended by `-`, no other subtask's id of that prefix).
    pub fn subtask_prefix(prefix: &str, subtask: u32) -> String {
        format!("{prefix}-{subtask}-")
    }

    /// Parses the string form `"{prefix}-{subtask}-{checkpoint}"`: a non-empty prefix, then two
    /// canonical decimal numbers (no sign, no leading zero). Anything else is an error.
    pub fn parse(s: &str) -> Result<Self, TransactionalIdError> {
        let malformed = || TransactionalIdError::Malformed { id: s.to_string() };
        let mut parts = s.rsplitn(3, '-');
        let checkpoint = parts.next().ok_or_else(malformed)?;
        let subtask = parts.next().ok_or_else(malformed)?;
        let prefix = parts.next().ok_or_else(malformed)?;
        if prefix.is_empty() {
            return Err(TransactionalIdError::EmptyPrefix { id: s.to_string() });
        }
        let subtask = parse_canonical(subtask).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
            TransactionalIdError::BadNumber { id: s.to_string(), field: "subtask", text: subtask.to_string() }
        })?;
        let checkpoint = parse_canonical(checkpoint).ok_or_else(|| TransactionalIdError::BadNumber {
            id: s.to_string(),
            field: "checkpoint",
            text: checkpoint.to_string(),
        })?;
        Ok(TransactionalId { prefix: prefix.to_string(), subtask, checkpoint: CheckpointId(checkpoint) })
    }
}

/// A canonical decimal `u64`: digits only, no leading zero (except `"0"`), no overflow.
fn parse_canonical(text: &str) -> Option<u64> {
    let canonical = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

impl fmt::Display for TransactionalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.prefix, self.subtask, self.checkpoint.0)
    }
}

impl fmt::Debug for TransactionalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for TransactionalId {
    type Err = TransactionalIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransactionalId::parse(s)
    }
}

/// Why a string is not a [`TransactionalId`] (or a prefix is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionalIdError {
    /// Fewer than three `-`-separated parts.
    #[error("transactional id {id:?} is not of the form prefix-subtask-checkpoint")]
    Malformed {
        /// The input.
        id: String,
    },
    /// The prefix is empty.
    #[error("transactional id {id:?} has an empty prefix")]
    EmptyPrefix {
        /// The input.
        id: String,
    },
    /// A number part is not a canonical decimal of its type.
    #[error("transactional id {id:?}: {field} {text:?} is not a canonical decimal number")]
    BadNumber {
        /// The input.
        id: String,
        /// `"subtask"` or `"checkpoint"`.
        field: &'static str,
        /// The offending part.
        text: String,
    },
}

/// Exactly-once (two-phase commit) or the at-least-once positive control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SinkMode {
    /// Broker transactions committed on checkpoint completion: exactly-once.
    Transactional,
    /// Immediate, non-transactional writes: at-least-once (duplicates on replay).
    Plain,
}

/// A sink writer's request to the runtime, carried out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkCommand {
    /// `init_transactions(id)` (fence older producers of the id, abort its unfinished
    /// transaction), then begin a transaction.
    Begin {
        /// The transaction.
        id: TransactionalId,
    },
    /// Produce records into the open transaction `id`.
    Write {
        /// The transaction.
        id: TransactionalId,
        /// Encoded records, in order.
        records: PackedRecords,
    },
    /// Flush and prepare `id`; the barrier is acknowledged only after this is done.
    PreCommit {
        /// The transaction.
        id: TransactionalId,
    },
    /// Commit the prepared transaction `id` (idempotent: committing a committed one is fine).
    Commit {
        /// The transaction.
        id: TransactionalId,
    },
    /// Fence every transactional id of `prefix` named with a checkpoint `> after` whose subtask
    /// `j` satisfies `j % parallelism == owner`, aborting its unfinished transaction (list them with
    /// `list_transactions(prefix)`; see [`SinkCommand::aborts`]).
    AbortLater {
        /// The sink's transactional-id prefix.
        prefix: String,
        /// The restored checkpoint (0 on a fresh start).
        after: CheckpointId,
        /// The subtask index responsible.
        owner: u32,
        /// The current parallelism of the sink.
        parallelism: u32,
    },
    /// Plain mode: write records at once, outside any transaction.
    PlainWrite {
        /// Encoded records, in order.
        records: PackedRecords,
    },
}

impl SinkCommand {
    /// True if this is an [`SinkCommand::AbortLater`] that covers `id`.
    pub fn aborts(&self, id: &TransactionalId) -> bool {
        match self {
            SinkCommand::AbortLater { prefix, after, owner, parallelism } => {
                *parallelism > 0 && id.prefix == *prefix && id.checkpoint > *after && id.subtask % parallelism == *owner
            }
            _ => false,
        }
    }
}

/// A pre-committed transaction waiting for its checkpoint to complete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PendingTransaction {
    /// The checkpoint whose barrier pre-committed it.
    pub checkpoint: CheckpointId,
    /// The transaction.
    pub id: TransactionalId,
}

/// Turns a record into the bytes the broker stores, appending them to the buffer it is given.
pub type RecordEncoder<T> = fn(&T, &mut Vec<u8>) -> Result<(), String>;

/// Bytes reserved per record when a write command's batch is allocated (a guess; it grows).
const ENCODED_RECORD_BYTES_GUESS: usize = RECORD_LENGTH_BYTES + 12;

/// The pure half of an exactly-once sink subtask. See the [module documentation](self).
pub struct TwoPhaseCommitSinkWriter<T> {
    prefix: String,
    mode: SinkMode,
    encoder: RecordEncoder<T>,
    write_records_max: usize,
    pending_transactions_max: usize,
    /// This subtask's index; `None` until `initialize_state`.
    subtask: Option<u32>,
    /// The transaction records go into (transactional mode, after initialization).
    open: Option<TransactionalId>,
    /// Pre-committed, not yet committed, in checkpoint order.
    pending: Vec<PendingTransaction>,
    records_written: u64,
}

impl<T> fmt::Debug for TwoPhaseCommitSinkWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoPhaseCommitSinkWriter")
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("subtask", &self.subtask)
            .field("open", &self.open)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<T> TwoPhaseCommitSinkWriter<T> {
    /// A writer whose transactions are named `"{prefix}-{subtask}-{checkpoint}"`.
    pub fn new(prefix: impl Into<String>, mode: SinkMode, encoder: RecordEncoder<T>) -> Result<Self, TransactionalIdError> {
        let prefix = prefix.into();
        // The prefix must survive the round trip through the string form.
        let probe = TransactionalId::new(prefix.clone(), 0, CheckpointId::FIRST);
        if TransactionalId::parse(&probe.to_string())? != probe {
            return Err(TransactionalIdError::Malformed { id: probe.to_string() });
        }
        Ok(TwoPhaseCommitSinkWriter {
            prefix,
            mode,
            encoder,
            write_records_max: WRITE_RECORDS_MAX_DEFAULT,
            pending_transactions_max: PENDING_TRANSACTIONS_MAX_DEFAULT,
            subtask: None,
            open: None,
            pending: Vec::new(),
            records_written: 0,
        })
    }

    /// Sets the most records per write command (at least 1).
    pub fn with_write_records_max(mut self, write_records_max: usize) -> Self {
        self.write_records_max = write_records_max.max(1);
        self
    }

    /// Sets the most pending transactions before the writer fails (at least 1).
    pub fn with_pending_transactions_max(mut self, pending_transactions_max: usize) -> Self {
        self.pending_transactions_max = pending_transactions_max.max(1);
        self
    }

    /// The transactional-id prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Transactional or plain.
    pub fn mode(&self) -> SinkMode {
        self.mode
    }

    /// The pre-committed transactions not yet committed, in checkpoint order.
    pub fn pending(&self) -> &[PendingTransaction] {
        &self.pending
    }

    /// The transaction records currently go into (transactional mode, after initialization).
    pub fn open_transaction(&self) -> Option<&TransactionalId> {
        self.open.as_ref()
    }

    /// Records handed to the runtime in write commands since this writer was created.
    pub fn records_written(&self) -> u64 {
        self.records_written
    }

    fn subtask(&self, what: &str) -> Result<u32, OperatorError> {
        self.subtask.ok_or_else(|| OperatorError::Protocol(format!("sink: {what} before initialize_state")))
    }

    fn begin(&mut self, ctx: &mut OperatorContext<'_>, subtask: u32, checkpoint: CheckpointId) {
        debug_assert!(self.open.is_none(), "one open transaction at a time");
        let id = TransactionalId::new(self.prefix.clone(), subtask, checkpoint);
        ctx.commands.push(OperatorCommand::Sink(SinkCommand::Begin { id: id.clone() }));
        self.open = Some(id);
    }
}

/// The list state of pending transactions (registered on first use).
fn pending_state(ctx: &mut OperatorContext<'_>) -> Result<OperatorListState<PendingTransaction>, OperatorError> {
    ctx.operator_state.list_state(SINK_PENDING_STATE).map_err(|e| OperatorError::State(format!("{SINK_PENDING_STATE}: {e}")))
}

fn write_pending(ctx: &mut OperatorContext<'_>, pending: &[PendingTransaction]) -> OperatorResult {
    let state = pending_state(ctx)?;
    state.update(ctx.operator_state, pending.to_vec());
    Ok(())
}

fn read_pending(ctx: &mut OperatorContext<'_>) -> Result<Vec<PendingTransaction>, OperatorError> {
    let state = pending_state(ctx)?;
    Ok(state.get(ctx.operator_state))
}

impl<T: Data> Operator for TwoPhaseCommitSinkWriter<T> {
    type In = T;
    type Out = ();

    /// Commits the restored pending transactions, aborts the later ones of this subtask's share
    /// of the prefix and begins the first transaction (transactional mode; plain mode does nothing).
    fn initialize_state(&mut self, ctx: &mut OperatorContext<'_>, restored_from: Option<CheckpointId>) -> OperatorResult {
        if self.subtask.is_some() {
            return Err(OperatorError::Protocol("sink: initialize_state called twice".into()));
        }
        if ctx.parallelism == 0 || ctx.subtask.0 >= ctx.parallelism {
            return Err(OperatorError::Protocol(format!("sink: subtask {} at parallelism {}", ctx.subtask, ctx.parallelism)));
        }
        let subtask = ctx.subtask.0;
        if self.mode == SinkMode::Plain {
            self.subtask = Some(subtask);
            return Ok(());
        }
        let after = restored_from.unwrap_or(CheckpointId(0));
        let mut restored = read_pending(ctx)?;
        restored.sort();
        if let Some(late) = restored.iter().find(|p| p.checkpoint > after || p.id.checkpoint > after) {
            return Err(OperatorError::State(format!(
                "{SINK_PENDING_STATE}: restored transaction {} of checkpoint {} is later than the restored checkpoint {after}",
                late.id, late.checkpoint
            )));
        }
        for pending in restored {
            ctx.commands.push(OperatorCommand::Sink(SinkCommand::Commit { id: pending.id }));
        }
        // Committed (or about to be, in command order): nothing of the restored share stays pending.
        write_pending(ctx, &[])?;
        ctx.commands.push(OperatorCommand::Sink(SinkCommand::AbortLater {
            prefix: self.prefix.clone(),
            after,
            owner: subtask,
            parallelism: ctx.parallelism,
        }));
        self.subtask = Some(subtask);
        self.begin(ctx, subtask, after.next());
        Ok(())
    }

    /// Encodes the batch and writes it into the open transaction (or plainly), in commands of at
    /// most `write_records_max` records. An encoding error emits nothing.
    fn process_batch(&mut self, ctx: &mut OperatorContext<'_>, input: Vec<T>, _out: &mut Vec<()>) -> OperatorResult {
        self.subtask("process_batch")?;
        if input.is_empty() {
            return Ok(());
        }
        // Encode straight into the commands' record batches (no list of the whole batch to split,
        // no allocation per record).
        let chunk_records_max = self.write_records_max.max(1);
        let mut chunks: Vec<PackedRecords> = Vec::with_capacity(input.len().div_ceil(chunk_records_max));
        let (encoder, prefix) = (self.encoder, &self.prefix);
        for chunk in input.chunks(chunk_records_max) {
            let mut records = PackedRecords::with_capacity(chunk.len() * ENCODED_RECORD_BYTES_GUESS);
            for record in chunk {
                records.push_with(|buf| encoder(record, buf).map_err(|e| OperatorError::Codec(format!("sink {prefix}: {e}"))))?;
            }
            chunks.push(records);
        }
        self.records_written += input.len() as u64;
        for records in chunks {
            let command = match self.mode {
                SinkMode::Plain => SinkCommand::PlainWrite { records },
                SinkMode::Transactional => {
                    let id = self.open.clone().expect("an initialized transactional writer has an open transaction");
                    SinkCommand::Write { id, records }
                }
            };
            ctx.commands.push(OperatorCommand::Sink(command));
        }
        Ok(())
    }

    /// Pre-commits the open transaction, records it as pending for checkpoint `id` and begins the
    /// next one (named `id + 1`).
    fn snapshot_state(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult {
        let subtask = self.subtask("snapshot_state")?;
        if self.mode == SinkMode::Plain {
            return Ok(());
        }
        let open = self.open.take().expect("an initialized transactional writer has an open transaction");
        let previous = self.pending.last().map(|p| p.checkpoint);
        if id < open.checkpoint || previous.is_some_and(|p| id <= p) {
            let message = format!("sink: barrier {id} after transaction {open} and pending checkpoint {previous:?}");
            self.open = Some(open);
            return Err(OperatorError::Protocol(message));
        }
        if self.pending.len() >= self.pending_transactions_max {
            let message = format!(
                "sink {}: {} transactions pending, the bound: checkpoints are not completing",
                self.prefix,
                self.pending.len()
            );
            self.open = Some(open);
            return Err(OperatorError::State(message));
        }
        ctx.commands.push(OperatorCommand::Sink(SinkCommand::PreCommit { id: open.clone() }));
        self.pending.push(PendingTransaction { checkpoint: id, id: open });
        write_pending(ctx, &self.pending)?;
        self.begin(ctx, subtask, id.next());
        debug_assert!(self.pending.windows(2).all(|w| w[0].checkpoint < w[1].checkpoint));
        Ok(())
    }

    /// Commits every pending transaction of a checkpoint `<= id`.
    fn notify_checkpoint_complete(&mut self, ctx: &mut OperatorContext<'_>, id: CheckpointId) -> OperatorResult {
        self.subtask("notify_checkpoint_complete")?;
        let done = self.pending.partition_point(|p| p.checkpoint <= id);
        for pending in self.pending.drain(..done) {
            ctx.commands.push(OperatorCommand::Sink(SinkCommand::Commit { id: pending.id }));
        }
        Ok(())
    }

    /// Nothing is committed: the pending transactions wait for a later checkpoint.
    fn notify_checkpoint_aborted(&mut self, _ctx: &mut OperatorContext<'_>, _id: CheckpointId) -> OperatorResult {
        self.subtask("notify_checkpoint_aborted")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AttemptId, SubtaskIndex};
    use crate::state::{redistribute, OperatorStateStore};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn encode_u64(v: &u64, out: &mut Vec<u8>) -> Result<(), String> {
        if *v == u64::MAX {
            return Err("u64::MAX is not encodable".into());
        }
        out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn decode_u64(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }

    fn tid(s: &str) -> TransactionalId {
        TransactionalId::parse(s).unwrap()
    }

    /// One sink subtask: its writer, operator state store, emitted commands, and (for the broker
    /// model) the producer epoch it got for each transactional id.
    struct Subtask {
        writer: TwoPhaseCommitSinkWriter<u64>,
        store: OperatorStateStore,
        commands: Vec<OperatorCommand>,
        index: u32,
        parallelism: u32,
        epochs: BTreeMap<String, u64>,
    }

    impl Subtask {
        fn new(mode: SinkMode, index: u32, parallelism: u32, store: OperatorStateStore) -> Self {
            let writer = TwoPhaseCommitSinkWriter::new("sink", mode, encode_u64).unwrap();
            Subtask { writer, store, commands: vec![], index, parallelism, epochs: BTreeMap::new() }
        }

        fn with<R>(&mut self, f: impl FnOnce(&mut TwoPhaseCommitSinkWriter<u64>, &mut OperatorContext<'_>) -> R) -> R {
            let mut ctx = OperatorContext {
                now_ms: 0,
                subtask: SubtaskIndex(self.index),
                parallelism: self.parallelism,
                attempt: AttemptId(1),
                keyed: None,
                operator_state: &mut self.store,
                commands: &mut self.commands,
            };
            f(&mut self.writer, &mut ctx)
        }

        fn apply(&mut self, event: &Event) -> OperatorResult {
            match event {
                Event::Init(restored) => self.with(|w, ctx| w.initialize_state(ctx, restored.map(CheckpointId))),
                Event::Batch(records) => self.with(|w, ctx| w.process_batch(ctx, records.to_vec(), &mut vec![])),
                Event::Snapshot(n) => self.with(|w, ctx| w.snapshot_state(ctx, CheckpointId(*n))),
                Event::Complete(n) => self.with(|w, ctx| w.notify_checkpoint_complete(ctx, CheckpointId(*n))),
                Event::Aborted(n) => self.with(|w, ctx| w.notify_checkpoint_aborted(ctx, CheckpointId(*n))),
                Event::EndOfInput => self.with(|w, ctx| w.end_of_input(ctx, &mut vec![])),
            }
        }

        fn take_rendered(&mut self) -> Vec<String> {
            self.commands.drain(..).map(|c| render(&c)).collect()
        }

        fn take_sink_commands(&mut self) -> Vec<SinkCommand> {
            self.commands
                .drain(..)
                .map(|c| match c {
                    OperatorCommand::Sink(c) => c,
                    other => panic!("unexpected command {other:?}"),
                })
                .collect()
        }
    }

    fn render(command: &OperatorCommand) -> String {
        let values = |records: &PackedRecords| records.iter().map(decode_u64).collect::<Vec<_>>();
        match command {
            OperatorCommand::Sink(SinkCommand::Begin { id }) => format!("begin {id}"),
            OperatorCommand::Sink(SinkCommand::Write { id, records }) => format!("write {id} {:?}", values(records)),
            OperatorCommand::Sink(SinkCommand::PreCommit { id }) => format!("precommit {id}"),
            OperatorCommand::Sink(SinkCommand::Commit { id }) => format!("commit {id}"),
            OperatorCommand::Sink(SinkCommand::AbortLater { prefix, after, owner, parallelism }) => {
                format!("abort {prefix} >{} {owner}%{parallelism}", after.0)
            }
            OperatorCommand::Sink(SinkCommand::PlainWrite { records }) => format!("plain {:?}", values(records)),
            other => panic!("unexpected command {other:?}"),
        }
    }

    #[derive(Clone, Debug)]
    enum Event {
        Init(Option<u64>),
        Batch(&'static [u64]),
        Snapshot(u64),
        Complete(u64),
        Aborted(u64),
        EndOfInput,
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

    #[test]
    fn transactional_ids_round_trip_through_their_string_form() {
        let cases: &[(&str, u32, u64, &str)] = &[
            ("sink", 0, 1, "sink-0-1"),
            ("word-count-out", 3, 12, "word-count-out-3-12"),
            ("x", 4_294_967_295, u64::MAX, "x-4294967295-18446744073709551615"),
            ("a--b", 10, 0, "a--b-10-0"),
        ];
        for &(prefix, subtask, checkpoint, text) in cases {
            let id = TransactionalId::new(prefix, subtask, CheckpointId(checkpoint));
            assert_eq!(id.to_string(), text);
            assert_eq!(TransactionalId::parse(text), Ok(id.clone()));
            assert_eq!(text.parse::<TransactionalId>(), Ok(id));
        }
    }

    #[test]
    fn anything_else_is_not_a_transactional_id() {
        let malformed = |id: &str| TransactionalIdError::Malformed { id: id.into() };
        let bad = |id: &str, field: &'static str, text: &str| TransactionalIdError::BadNumber { id: id.into(), field, text: text.into() };
        let cases: Vec<(&str, TransactionalIdError)> = vec![
            ("", malformed("")),
            ("sink", malformed("sink")),
            ("sink-1", malformed("sink-1")),
            ("-1-2", TransactionalIdError::EmptyPrefix { id: "-1-2".into() }),
            ("sink-01-2", bad("sink-01-2", "subtask", "01")),
            ("sink-1-02", bad("sink-1-02", "checkpoint", "02")),
            ("sink-1-+2", bad("sink-1-+2", "checkpoint", "+2")),
            ("sink-x-2", bad("sink-x-2", "subtask", "x")),
            ("sink-1-", bad("sink-1-", "checkpoint", "")),
            ("sink--2", bad("sink--2", "subtask", "")),
            ("sink-1-2 ", bad("sink-1-2 ", "checkpoint", "2 ")),
            ("sink-4294967296-1", bad("sink-4294967296-1", "subtask", "4294967296")),
            ("sink-1-18446744073709551616", bad("sink-1-18446744073709551616", "checkpoint", "18446744073709551616")),
        ];
        for (text, want) in cases {
            assert_eq!(TransactionalId::parse(text), Err(want), "{text:?}");
        }
        assert!(TwoPhaseCommitSinkWriter::<u64>::new("", SinkMode::Transactional, encode_u64).is_err());
    }

    #[test]
    fn each_event_sequence_emits_exactly_these_commands() {
        use Event::*;
        type Case = (&'static str, SinkMode, u32, u32, Vec<Event>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            ("a fresh start aborts leftovers and begins transaction 1", SinkMode::Transactional, 0, 1, vec![Init(None)], vec![
                "abort sink >0 0%1",
                "begin sink-0-1",
            ]),
            ("a subtask's ids carry its index", SinkMode::Transactional, 2, 3, vec![Init(None), Batch(&[5])], vec![
                "abort sink >0 2%3",
                "begin sink-2-1",
                "write sink-2-1 [5]",
            ]),
            (
                "a barrier pre-commits, begins the next, and completion commits",
                SinkMode::Transactional, 0, 1,
                vec![Init(None), Batch(&[1, 2]), Snapshot(1), Batch(&[3]), Complete(1)],
                vec!["abort sink >0 0%1", "begin sink-0-1", "write sink-0-1 [1, 2]", "precommit sink-0-1", "begin sink-0-2", "write sink-0-2 [3]", "commit sink-0-1"],
            ),
            (
                "completing 2 subsumes 1 whose notification was lost",
                SinkMode::Transactional, 0, 1,
                vec![Init(None), Snapshot(1), Snapshot(2), Complete(2)],
                vec!["abort sink >0 0%1", "begin sink-0-1", "precommit sink-0-1", "begin sink-0-2", "precommit sink-0-2", "begin sink-0-3", "commit sink-0-1", "commit sink-0-2"],
            ),
            (
                "completing 1 commits only what is at most 1",
                SinkMode::Transactional, 0, 1,
                vec![Init(None), Snapshot(1), Snapshot(2), Complete(1), Complete(2), Complete(2)],
                vec!["abort sink >0 0%1", "begin sink-0-1", "precommit sink-0-1", "begin sink-0-2", "precommit sink-0-2", "begin sink-0-3", "commit sink-0-1", "commit sink-0-2"],
            ),
            (
                "an aborted checkpoint commits nothing; the next completion commits it",
                SinkMode::Transactional, 0, 1,
                vec![Init(None), Batch(&[1]), Snapshot(1), Aborted(1), Batch(&[2]), Snapshot(2), Complete(2)],
                vec!["abort sink >0 0%1", "begin sink-0-1", "write sink-0-1 [1]", "precommit sink-0-1", "begin sink-0-2", "write sink-0-2 [2]", "precommit sink-0-2", "begin sink-0-3", "commit sink-0-1", "commit sink-0-2"],
            ),
            (
                "checkpoint ids may skip: the next transaction is named after the barrier",
                SinkMode::Transactional, 0, 1,
                vec![Init(Some(3)), Snapshot(6), Complete(6)],
                vec!["abort sink >3 0%1", "begin sink-0-4", "precommit sink-0-4", "begin sink-0-7", "commit sink-0-4"],
            ),
            (
                "empty batches, aborts of unknown checkpoints and end of input emit nothing",
                SinkMode::Transactional, 0, 1,
                vec![Init(None), Batch(&[]), Aborted(7), Complete(0), EndOfInput],
                vec!["abort sink >0 0%1", "begin sink-0-1"],
            ),
            (
                "plain mode writes at once and never transacts",
                SinkMode::Plain, 0, 1,
                vec![Init(None), Batch(&[1, 2]), Snapshot(1), Batch(&[3]), Complete(1), EndOfInput],
                vec!["plain [1, 2]", "plain [3]"],
            ),
        ];
        for (name, mode, index, parallelism, events, want) in cases {
            let mut s = Subtask::new(mode, index, parallelism, OperatorStateStore::new());
            for event in &events {
                s.apply(event).unwrap_or_else(|e| panic!("{name}: {event:?}: {e}"));
            }
            assert_eq!(s.take_rendered(), want, "{name}");
        }
    }

    #[test]
    fn large_batches_are_split_into_bounded_writes() {
        let mut s = Subtask::new(SinkMode::Transactional, 0, 1, OperatorStateStore::new());
        s.writer = TwoPhaseCommitSinkWriter::new("sink", SinkMode::Transactional, encode_u64).unwrap().with_write_records_max(2);
        s.apply(&Event::Init(None)).unwrap();
        s.apply(&Event::Batch(&[1, 2, 3, 4, 5])).unwrap();
        assert_eq!(s.take_rendered()[2..], ["write sink-0-1 [1, 2]", "write sink-0-1 [3, 4]", "write sink-0-1 [5]"]);
        assert_eq!(s.writer.records_written(), 5);
    }

    #[test]
    fn a_restore_commits_what_the_snapshot_names_and_aborts_later_transactions() {
        let mut old = Subtask::new(SinkMode::Transactional, 0, 1, OperatorStateStore::new());
        for event in [Event::Init(None), Event::Batch(&[1]), Event::Snapshot(4), Event::Batch(&[2]), Event::Snapshot(5), Event::Batch(&[3])] {
            old.apply(&event).unwrap();
        }
        assert_eq!(old.writer.pending().iter().map(|p| (p.checkpoint.0, p.id.to_string())).collect::<Vec<_>>(), vec![
            (4, "sink-0-1".to_string()),
            (5, "sink-0-5".to_string()),
        ]);
        assert_eq!(old.writer.open_transaction(), Some(&tid("sink-0-6")));
        let snapshot = snapshot_store(&old.store);
        let store = restored_stores(&[snapshot], 1).pop().unwrap();
        let mut new = Subtask::new(SinkMode::Transactional, 0, 1, store);
        new.apply(&Event::Init(Some(5))).unwrap();
        // sink-0-6 (with record 3) is named > 5: aborted, then its name begins a new transaction.
        assert_eq!(new.take_rendered(), ["commit sink-0-1", "commit sink-0-5", "abort sink >5 0%1", "begin sink-0-6"]);
        assert!(new.writer.pending().is_empty(), "the restored transactions are committed, not pending");
        // The next snapshot no longer names them.
        new.apply(&Event::Snapshot(6)).unwrap();
        let again = restored_stores(&[snapshot_store(&new.store)], 1).pop().unwrap();
        let mut third = Subtask::new(SinkMode::Transactional, 0, 1, again);
        third.apply(&Event::Init(Some(6))).unwrap();
        assert_eq!(third.take_rendered(), ["commit sink-0-6", "abort sink >6 0%1", "begin sink-0-7"]);
    }

    #[test]
    fn a_rescaled_restore_commits_every_pending_transaction_once_and_covers_every_old_subtask() {
        // Four old subtasks, each with two pending transactions.
        let mut snapshots = vec![];
        let mut want = BTreeSet::new();
        for index in 0..4 {
            let mut s = Subtask::new(SinkMode::Transactional, index, 4, OperatorStateStore::new());
            for event in [Event::Init(None), Event::Snapshot(1), Event::Snapshot(2)] {
                s.apply(&event).unwrap();
            }
            want.extend(s.writer.pending().iter().map(|p| p.id.to_string()));
            snapshots.push(snapshot_store(&s.store));
        }
        assert_eq!(want.len(), 8);
        for parallelism in [1, 2, 3, 4, 6] {
            let mut committed = BTreeSet::new();
            let mut abort_owner = BTreeMap::new();
            for (index, store) in restored_stores(&snapshots, parallelism).into_iter().enumerate() {
                let mut s = Subtask::new(SinkMode::Transactional, index as u32, parallelism, store);
                s.apply(&Event::Init(Some(2))).unwrap();
                let commands = s.take_sink_commands();
                for c in &commands {
                    if let SinkCommand::Commit { id } = c {
                        assert!(committed.insert(id.to_string()), "{id} committed twice at parallelism {parallelism}");
                    }
                }
                // Which old and new subtask's later transactions this subtask aborts.
                for j in 0..8 {
                    let later = TransactionalId::new("sink", j, CheckpointId(3));
                    if commands.iter().any(|c| c.aborts(&later)) {
                        assert!(abort_owner.insert(j, index).is_none(), "subtask {j}'s transactions have two owners");
                    }
                    let restored = TransactionalId::new("sink", j, CheckpointId(2));
                    assert!(!commands.iter().any(|c| c.aborts(&restored)), "never abort what the checkpoint holds");
                }
                assert_eq!(commands.last(), Some(&SinkCommand::Begin { id: TransactionalId::new("sink", index as u32, CheckpointId(3)) }));
            }
            assert_eq!(committed, want, "parallelism {parallelism}");
            assert_eq!(abort_owner.len(), 8, "every old or new subtask's later transactions have an owner");
            for j in 0..parallelism {
                assert_eq!(abort_owner[&j], j as usize, "a live subtask aborts only its own");
            }
        }
    }

    #[test]
    fn abort_later_covers_exactly_the_later_transactions_of_its_share() {
        let command = SinkCommand::AbortLater { prefix: "sink".into(), after: CheckpointId(5), owner: 1, parallelism: 2 };
        let cases: &[(&str, bool)] = &[
            ("sink-1-6", true),
            ("sink-3-9", true),
            ("sink-1-5", false),
            ("sink-0-6", false),
            ("sink-2-6", false),
            ("other-1-6", false),
            ("sink-x-1-6", false),
        ];
        for &(id, want) in cases {
            assert_eq!(command.aborts(&tid(id)), want, "{id}");
        }
        assert!(!SinkCommand::Commit { id: tid("sink-1-6") }.aborts(&tid("sink-1-6")));
    }

    #[test]
    fn calls_out_of_protocol_order_are_errors_that_change_nothing() {
        for mode in [SinkMode::Transactional, SinkMode::Plain] {
            let mut s = Subtask::new(mode, 0, 1, OperatorStateStore::new());
            for event in [Event::Batch(&[1]), Event::Snapshot(1), Event::Complete(1), Event::Aborted(1)] {
                assert!(matches!(s.apply(&event), Err(OperatorError::Protocol(_))), "{mode:?} {event:?} before init");
            }
            s.apply(&Event::Init(None)).unwrap();
            assert!(matches!(s.apply(&Event::Init(None)), Err(OperatorError::Protocol(_))));
        }
        let mut s = Subtask::new(SinkMode::Transactional, 0, 1, OperatorStateStore::new());
        s.apply(&Event::Init(Some(4))).unwrap();
        // The open transaction is named 5: barrier 4 (or 3) comes from before the restore.
        assert!(matches!(s.apply(&Event::Snapshot(4)), Err(OperatorError::Protocol(_))));
        s.apply(&Event::Snapshot(5)).unwrap();
        assert!(matches!(s.apply(&Event::Snapshot(5)), Err(OperatorError::Protocol(_))), "a repeated barrier");
        assert_eq!(s.writer.open_transaction(), Some(&tid("sink-0-6")), "a refused barrier leaves the open transaction");
        let mut bad = Subtask::new(SinkMode::Transactional, 1, 1, OperatorStateStore::new());
        assert!(matches!(bad.apply(&Event::Init(None)), Err(OperatorError::Protocol(_))));
    }

    #[test]
    fn an_unencodable_record_is_a_codec_error_and_writes_nothing() {
        for mode in [SinkMode::Transactional, SinkMode::Plain] {
            let mut s = Subtask::new(mode, 0, 1, OperatorStateStore::new());
            s.apply(&Event::Init(None)).unwrap();
            s.commands.clear();
            assert!(matches!(s.apply(&Event::Batch(&[1, u64::MAX])), Err(OperatorError::Codec(_))));
            assert!(s.commands.is_empty(), "{mode:?}");
            assert_eq!(s.writer.records_written(), 0);
        }
    }

    #[test]
    fn too_many_pending_transactions_fail_the_writer() {
        let mut s = Subtask::new(SinkMode::Transactional, 0, 1, OperatorStateStore::new());
        s.writer = TwoPhaseCommitSinkWriter::new("sink", SinkMode::Transactional, encode_u64).unwrap().with_pending_transactions_max(2);
        s.apply(&Event::Init(None)).unwrap();
        s.apply(&Event::Snapshot(1)).unwrap();
        s.apply(&Event::Snapshot(2)).unwrap();
        assert!(matches!(s.apply(&Event::Snapshot(3)), Err(OperatorError::State(_))));
        assert_eq!(s.writer.pending().len(), 2);
        s.apply(&Event::Complete(2)).unwrap();
        s.apply(&Event::Snapshot(3)).unwrap();
    }

    #[test]
    fn restored_transactions_later_than_the_restored_checkpoint_are_a_state_error() {
        let mut old = Subtask::new(SinkMode::Transactional, 0, 1, OperatorStateStore::new());
        old.apply(&Event::Init(None)).unwrap();
        old.apply(&Event::Snapshot(3)).unwrap();
        for restored_from in [None, Some(2)] {
            let store = restored_stores(&[snapshot_store(&old.store)], 1).pop().unwrap();
            let mut s = Subtask::new(SinkMode::Transactional, 0, 1, store);
            assert!(matches!(s.apply(&Event::Init(restored_from)), Err(OperatorError::State(_))), "{restored_from:?}");
            assert!(s.commands.is_empty());
        }
    }

    // ---- the broker model and the exactly-once property ----

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum TxnState {
        Open,
        Prepared,
        Committed,
        Aborted,
    }

    #[derive(Debug)]
    struct Txn {
        epoch: u64,
        state: TxnState,
        records: Vec<u64>,
    }

    /// A Kafka-like broker, as the brief describes it: the latest transaction of each id, with
    /// `init_transactions` fencing (an epoch per id), prepare, idempotent commit and abort, and
    /// the committed output. Anything that would lose data or break the protocol is an `Err`.
    #[derive(Default)]
    struct Broker {
        txns: BTreeMap<String, Txn>,
        committed: Vec<u64>,
        fenced: u64,
    }

    impl Broker {
        /// Carries out one command for a producer whose epochs are `epochs`; `Ok(false)` if the
        /// producer was fenced.
        fn apply(&mut self, epochs: &mut BTreeMap<String, u64>, command: SinkCommand) -> Result<bool, String> {
            match command {
                SinkCommand::Begin { id } => {
                    let key = id.to_string();
                    let epoch = match self.txns.get(&key) {
                        Some(t) if t.state == TxnState::Committed => return Err(format!("{key} begun again after its commit")),
                        Some(t) => t.epoch + 1,
                        None => 1,
                    };
                    self.txns.insert(key.clone(), Txn { epoch, state: TxnState::Open, records: vec![] });
                    epochs.insert(key, epoch);
                }
                SinkCommand::Write { id, records } => {
                    let key = id.to_string();
                    match self.txns.get_mut(&key) {
                        Some(t) if t.state == TxnState::Open && epochs.get(&key) == Some(&t.epoch) => {
                            t.records.extend(records.iter().map(decode_u64));
                        }
                        _ => {
                            self.fenced += 1;
                            return Ok(false);
                        }
                    }
                }
                SinkCommand::PreCommit { id } => {
                    let key = id.to_string();
                    match self.txns.get_mut(&key) {
                        Some(t) if t.state == TxnState::Open && epochs.get(&key) == Some(&t.epoch) => t.state = TxnState::Prepared,
                        _ => {
                            self.fenced += 1;
                            return Ok(false);
                        }
                    }
                }
                SinkCommand::Commit { id } => {
                    let key = id.to_string();
                    let t = self.txns.get_mut(&key).ok_or_else(|| format!("commit of unknown {key}"))?;
                    match t.state {
                        TxnState::Prepared => {
                            t.state = TxnState::Committed;
                            self.committed.extend(t.records.iter().copied());
                        }
                        TxnState::Committed => {}
                        TxnState::Open | TxnState::Aborted => return Err(format!("commit of {key} in state {:?}", t.state)),
                    }
                }
                ref abort @ SinkCommand::AbortLater { ref prefix, .. } => {
                    for (key, t) in &mut self.txns {
                        let id = TransactionalId::parse(key).map_err(|e| e.to_string())?;
                        if id.prefix != *prefix || !abort.aborts(&id) {
                            continue;
                        }
                        match t.state {
                            TxnState::Open | TxnState::Prepared => {
                                t.state = TxnState::Aborted;
                                t.epoch += 1;
                            }
                            TxnState::Aborted => {}
                            TxnState::Committed => return Err(format!("abort covers committed {key}")),
                        }
                    }
                }
                SinkCommand::PlainWrite { records } => self.committed.extend(records.iter().map(decode_u64)),
            }
            Ok(true)
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// The source emits this many records; record `r` goes to subtask `r % parallelism`.
        Batch(u64),
        /// Barrier of the next checkpoint id at every subtask.
        Snapshot,
        /// The latest snapshotted checkpoint completes; its notification arrives or is lost.
        Complete { notified: bool },
        /// The latest snapshotted checkpoint is aborted.
        Abort,
        /// Every subtask fails; the job restores the last completed checkpoint at this parallelism.
        Crash(u32),
        /// The writers of the previous attempt (zombies) write this many records of their own.
        Zombie(u64),
    }

    /// Values zombies write: never to be committed.
    const ZOMBIE_RECORD_MIN: u64 = 1 << 40;

    struct CheckpointRecord {
        id: u64,
        position: u64,
        snapshots: Vec<Vec<u8>>,
    }

    struct World {
        mode: SinkMode,
        broker: Broker,
        subtasks: Vec<Subtask>,
        zombies: Vec<Subtask>,
        position: u64,
        next_checkpoint: u64,
        in_progress: Option<CheckpointRecord>,
        completed: Option<CheckpointRecord>,
        zombie_next: u64,
        /// How often each input record was given to a live writer, over all attempts.
        processed: BTreeMap<u64, u32>,
    }

    impl World {
        fn new(mode: SinkMode, parallelism: u32) -> Self {
            let mut world = World {
                mode,
                broker: Broker::default(),
                subtasks: vec![],
                zombies: vec![],
                position: 0,
                next_checkpoint: 1,
                in_progress: None,
                completed: None,
                zombie_next: ZOMBIE_RECORD_MIN,
                processed: BTreeMap::new(),
            };
            world.deploy(parallelism);
            world
        }

        fn deploy(&mut self, parallelism: u32) {
            let (restored_from, stores) = match &self.completed {
                Some(c) => (Some(c.id), restored_stores(&c.snapshots, parallelism)),
                None => (None, (0..parallelism).map(|_| OperatorStateStore::new()).collect()),
            };
            self.subtasks = stores.into_iter().enumerate().map(|(i, store)| Subtask::new(self.mode, i as u32, parallelism, store)).collect();
            for i in 0..self.subtasks.len() {
                self.subtasks[i].with(|w, ctx| w.initialize_state(ctx, restored_from.map(CheckpointId))).unwrap();
                self.flush_live(i);
            }
        }

        /// Carries out subtask `i`'s commands; a live writer must never be fenced.
        fn flush_live(&mut self, i: usize) {
            let s = &mut self.subtasks[i];
            for command in s.take_sink_commands() {
                let rendered = format!("{command:?}");
                let accepted = self.broker.apply(&mut s.epochs, command).unwrap_or_else(|e| panic!("broker: {e}"));
                assert!(accepted, "a live writer was fenced at {rendered}");
            }
        }

        fn step(&mut self, step: &Step) {
            let parallelism = self.subtasks.len() as u64;
            match *step {
                Step::Batch(n) => {
                    let mut shares = vec![vec![]; self.subtasks.len()];
                    for r in self.position..self.position + n {
                        shares[(r % parallelism) as usize].push(r);
                        *self.processed.entry(r).or_default() += 1;
                    }
                    self.position += n;
                    for (i, share) in shares.into_iter().enumerate() {
                        self.subtasks[i].with(|w, ctx| w.process_batch(ctx, share, &mut vec![])).unwrap();
                        self.flush_live(i);
                    }
                }
                Step::Snapshot => {
                    let id = self.next_checkpoint;
                    self.next_checkpoint += 1;
                    let mut snapshots = vec![];
                    for i in 0..self.subtasks.len() {
                        self.subtasks[i].with(|w, ctx| w.snapshot_state(ctx, CheckpointId(id))).unwrap();
                        self.flush_live(i);
                        snapshots.push(snapshot_store(&self.subtasks[i].store));
                    }
                    self.in_progress = Some(CheckpointRecord { id, position: self.position, snapshots });
                }
                Step::Complete { notified } => {
                    if let Some(c) = self.in_progress.take() {
                        let id = c.id;
                        self.completed = Some(c);
                        if notified {
                            for i in 0..self.subtasks.len() {
                                self.subtasks[i].with(|w, ctx| w.notify_checkpoint_complete(ctx, CheckpointId(id))).unwrap();
                                self.flush_live(i);
                            }
                        }
                    }
                }
                Step::Abort => {
                    if let Some(c) = self.in_progress.take() {
                        for i in 0..self.subtasks.len() {
                            self.subtasks[i].with(|w, ctx| w.notify_checkpoint_aborted(ctx, CheckpointId(c.id))).unwrap();
                            self.flush_live(i);
                        }
                    }
                }
                Step::Crash(parallelism) => {
                    self.in_progress = None;
                    let restart_position = self.completed.as_ref().map_or(0, |c| c.position);
                    self.position = restart_position;
                    self.zombies = std::mem::take(&mut self.subtasks);
                    self.deploy(parallelism);
                }
                Step::Zombie(n) => {
                    if self.mode == SinkMode::Plain {
                        return; // plain writes have no fencing: zombies are out of scope there
                    }
                    for z in &mut self.zombies {
                        let records: Vec<u64> = (self.zombie_next..self.zombie_next + n).collect();
                        self.zombie_next += n;
                        z.with(|w, ctx| w.process_batch(ctx, records, &mut vec![])).unwrap();
                        for command in z.take_sink_commands() {
                            let accepted = self.broker.apply(&mut z.epochs, command).unwrap_or_else(|e| panic!("broker: {e}"));
                            assert!(!accepted, "a zombie write took effect");
                        }
                    }
                }
            }
            self.check_safety();
        }

        /// At all times: nothing committed twice (transactional mode), nothing committed that
        /// is not before the last completed checkpoint's barrier, nothing from a zombie.
        fn check_safety(&self) {
            let cut = self.completed.as_ref().map_or(0, |c| c.position);
            let mut seen = BTreeSet::new();
            for &r in &self.broker.committed {
                assert!(r < ZOMBIE_RECORD_MIN, "zombie record {r} committed");
                if self.mode == SinkMode::Transactional {
                    assert!(seen.insert(r), "record {r} committed twice");
                    assert!(r < cut, "record {r} committed, but the last completed checkpoint cut at {cut}");
                }
            }
        }

        /// The final checkpoint: every record processed is committed.
        fn finish(&mut self) {
            self.step(&Step::Snapshot);
            self.step(&Step::Complete { notified: true });
        }
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..6).prop_map(Step::Batch),
            2 => Just(Step::Snapshot),
            2 => any::<bool>().prop_map(|notified| Step::Complete { notified }),
            1 => Just(Step::Abort),
            1 => (1u32..4).prop_map(Step::Crash),
            1 => (1u64..3).prop_map(Step::Zombie),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn committed_output_is_exactly_the_input_before_the_last_completed_barrier(
            parallelism in 1u32..4,
            steps in proptest::collection::vec(step_strategy(), 0..40),
        ) {
            let mut world = World::new(SinkMode::Transactional, parallelism);
            for step in &steps {
                world.step(step);
            }
            world.finish();
            let mut committed = world.broker.committed.clone();
            committed.sort_unstable();
            prop_assert_eq!(committed, (0..world.position).collect::<Vec<_>>());

            // The same run with the plain sink loses nothing either, but it duplicates exactly
            // when a restore replayed a record to the writers (which the transactional sink absorbed).
            let mut plain = World::new(SinkMode::Plain, parallelism);
            for step in &steps {
                plain.step(step);
            }
            plain.finish();
            let distinct: BTreeSet<u64> = plain.broker.committed.iter().copied().collect();
            prop_assert!((0..plain.position).all(|r| distinct.contains(&r)));
            let replayed = world.processed.values().any(|&n| n > 1);
            prop_assert_eq!(distinct.len() < plain.broker.committed.len(), replayed);
        }
    }

    #[test]
    fn the_plain_sink_duplicates_what_a_restore_replays_and_the_transactional_one_does_not() {
        let steps = [
            Step::Batch(3),
            Step::Snapshot,
            Step::Complete { notified: true },
            Step::Batch(2),
            Step::Snapshot,
            Step::Crash(2),
            Step::Zombie(2),
            Step::Batch(4),
        ];
        let mut committed = BTreeMap::new();
        for mode in [SinkMode::Transactional, SinkMode::Plain] {
            let mut world = World::new(mode, 1);
            for step in &steps {
                world.step(step);
            }
            world.finish();
            assert_eq!(world.position, 7);
            let mut c = world.broker.committed.clone();
            c.sort_unstable();
            committed.insert(format!("{mode:?}"), c);
        }
        assert_eq!(committed["Transactional"], vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(committed["Plain"], vec![0, 1, 2, 3, 3, 4, 4, 5, 6], "records 3 and 4 were written, then replayed");
    }
}
