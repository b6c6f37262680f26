//! Operators: the trait every operator implements, in the style of Flink's `StreamOperator` and
//! `KeyedProcessFunction`, and the built-ins.
//!
//! An operator is a synchronous state machine driven by its task. The task calls, in this order:
//!
//! 1. [`Operator::initialize_state`] once, after the state stores were restored (or left empty);
//! 2. then, any number of times and in stream order, [`Operator::process_batch`],
//!    [`Operator::process_watermark`], [`Operator::on_timer`];
//! 3. [`Operator::snapshot_state`] when the task's barrier aligner says checkpoint `n` is aligned
//!    (before any element after barrier `n` is processed);
//! 4. [`Operator::notify_checkpoint_complete`] / [`Operator::notify_checkpoint_aborted`] when the
//!    coordinator says so (possibly for an older checkpoint than the last snapshot);
//! 5. [`Operator::end_of_input`] once, when every input channel's data has ended (Flink's
//!    `endInput` on `EndOfData`, FLIP-147): before the final checkpoint's barrier, so what it
//!    emits is committed by that checkpoint.
//!
//! Operators never do I/O. Where an operator needs the outside world (a sink's broker
//! transactions, a source's fetches), it pushes an [`OperatorCommand`] into its context and the
//! runtime carries it out, in order.
//!
//! Batches in, batches out: `process_batch` takes a `Vec<In>` and appends to a `Vec<Out>`, so a
//! chain of operators hands whole batches along and the per-record cost stays low.

pub mod filter;
pub mod flat_map;
pub mod keyed_process;
pub mod map;
pub mod sink;
pub mod source;
#[cfg(test)]
pub(crate) mod test_support;

use crate::element::{Timestamp, Watermark};
use crate::ids::{AttemptId, CheckpointId, SubtaskIndex};
use crate::state::{FiredTimer, KeyedStateBackend, OperatorStateStore};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

pub use sink::{SinkCommand, TransactionalId};
pub use source::SourceCommand;

/// What records are made of: anything serializable, cloneable and sendable.
pub trait Data: Serialize + DeserializeOwned + Clone + Debug + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Debug + Send + 'static> Data for T {}

/// Something an operator asks its runtime to do, carried out in the order emitted.
#[derive(Clone, Debug, PartialEq)]
pub enum OperatorCommand {
    /// A source reader's request.
    Source(SourceCommand),
    /// A two-phase-commit sink's request.
    Sink(SinkCommand),
}

/// Where an operator runs and what it may touch.
pub struct OperatorContext<'a> {
    /// Processing time, from the host's clock (simulated under madsim).
    pub now_ms: u64,
    /// This subtask's index.
    pub subtask: SubtaskIndex,
    /// The operator's parallelism in this deployment.
    pub parallelism: u32,
    /// The deployment this subtask belongs to.
    pub attempt: AttemptId,
    /// Keyed state, for operators after a `key_by`; `None` elsewhere.
    pub keyed: Option<&'a mut KeyedStateBackend>,
    /// This operator's list and union-list state.
    pub operator_state: &'a mut OperatorStateStore,
    /// Requests for the runtime.
    pub commands: &'a mut Vec<OperatorCommand>,
}

impl OperatorContext<'_> {
    /// The keyed state backend. Panics with a clear message if the operator is not keyed:
    /// that is a job-graph bug, caught by validation before any subtask runs.
    pub fn keyed(&mut self) -> &mut KeyedStateBackend {
        self.keyed.as_deref_mut().expect("keyed state used by an operator that is not after a key_by")
    }
}

/// Why an operator could not go on. The task fails; the job restarts from a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// State could not be read or restored.
    #[error("state: {0}")]
    State(String),
    /// A record could not be decoded or encoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The operator's own logic failed.
    #[error("{0}")]
    User(String),
    /// The runtime broke the operator protocol (a bug in the host, surfaced instead of ignored).
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The result of operator calls.
pub type OperatorResult = Result<(), OperatorError>;

/// An operator: typed input and output records, driven by its task.
pub trait Operator: Send + 'static {
    /// Input record type.
    type In: Data;
    /// Output record type.
    type Out: Data;

    /// Called once before any element, after the state stores were restored (if restoring).
    fn initialize_state(&mut self, _ctx: &mut OperatorContext<'_>, _restored_from: Option<CheckpointId>) -> OperatorResult {
        Ok(())
    }

    /// Processes a batch of records, appending results to `out`.
    fn process_batch(&mut self, ctx: &mut OperatorContext<'_>, input: Vec<Self::In>, out: &mut Vec<Self::Out>) -> OperatorResult;

    /// Event time advanced to `watermark`. Output records go to `out`; the task forwards the
    /// watermark itself after this returns.
    fn process_watermark(&mut self, _ctx: &mut OperatorContext<'_>, _watermark: Watermark, _out: &mut Vec<Self::Out>) -> OperatorResult {
        Ok(())
    }

    /// Processing time advanced to `ctx.now_ms`: fire due processing-time timers.
    fn advance_processing_time(&mut self, _ctx: &mut OperatorContext<'_>, _out: &mut Vec<Self::Out>) -> OperatorResult {
        Ok(())
    }

    /// A timer fired (keyed operators).
    fn on_timer(&mut self, _ctx: &mut OperatorContext<'_>, _timer: &FiredTimer, _out: &mut Vec<Self::Out>) -> OperatorResult {
        Ok(())
    }

    /// Checkpoint `id` is aligned at this task: put everything that must survive a failure into
    /// the state stores (keyed state is captured by the task right after this returns).
    fn snapshot_state(&mut self, _ctx: &mut OperatorContext<'_>, _id: CheckpointId) -> OperatorResult {
        Ok(())
    }

    /// Checkpoint `id` is complete (its metadata is durable). May arrive late or be skipped:
    /// completing `id` implies every earlier checkpoint is subsumed.
    fn notify_checkpoint_complete(&mut self, _ctx: &mut OperatorContext<'_>, _id: CheckpointId) -> OperatorResult {
        Ok(())
    }

    /// Checkpoint `id` was aborted.
    fn notify_checkpoint_aborted(&mut self, _ctx: &mut OperatorContext<'_>, _id: CheckpointId) -> OperatorResult {
        Ok(())
    }

    /// Every input has ended; flush whatever is buffered.
    fn end_of_input(&mut self, _ctx: &mut OperatorContext<'_>, _out: &mut Vec<Self::Out>) -> OperatorResult {
        Ok(())
    }
}

/// The event time of the latest watermark an operator has seen, for operators that need it.
pub type CurrentWatermark = Timestamp;
