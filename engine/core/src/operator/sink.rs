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
//!    abort every transaction of the prefix named with a checkpoint `> n` whose subtask `j`
//!    satisfies `j % parallelism == owner` — the transactions written after the restored cut,
//!    including those of subtasks that no longer exist after a scale-down. Every `j` has exactly
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
use crate::state::OperatorStateMode;
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
        records: Vec<Vec<u8>>,
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
    /// Abort every unfinished transaction of `prefix` named with a checkpoint `> after` whose
    /// subtask `j` satisfies `j % parallelism == owner` (list them with
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
        records: Vec<Vec<u8>>,
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

/// Turns a record into the bytes the broker stores.
pub type RecordEncoder<T> = fn(&T) -> Result<Vec<u8>, String>;

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

fn write_pending(ctx: &mut OperatorContext<'_>, pending: &[PendingTransaction]) -> OperatorResult {
    ctx.operator_state.set_list(SINK_PENDING_STATE, OperatorStateMode::Split, pending).map_err(OperatorError::State)
}

fn read_pending(ctx: &mut OperatorContext<'_>) -> Result<Vec<PendingTransaction>, OperatorError> {
    ctx.operator_state.get_list(SINK_PENDING_STATE, OperatorStateMode::Split).map_err(OperatorError::State)
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
        let encoded = input.iter().map(self.encoder).collect::<Result<Vec<_>, _>>().map_err(|e| OperatorError::Codec(format!("sink {}: {e}", self.prefix)))?;
        self.records_written += encoded.len() as u64;
        let mut encoded = encoded.into_iter();
        loop {
            let records: Vec<Vec<u8>> = encoded.by_ref().take(self.write_records_max).collect();
            if records.is_empty() {
                break;
            }
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
