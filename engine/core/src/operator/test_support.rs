//! A harness that drives one operator outside any runtime, for tests.

use super::{Operator, OperatorCommand, OperatorContext};
use crate::element::Watermark;
use crate::ids::{AttemptId, CheckpointId, SubtaskIndex};
use crate::key_groups::KeyGroupRange;
use crate::state::{KeyedStateBackend, OperatorStateStore};

/// Drives one operator with its own state stores.
pub struct Harness<O: Operator> {
    /// The operator under test.
    pub op: O,
    /// Its keyed state, if keyed.
    pub keyed: Option<KeyedStateBackend>,
    /// Its operator state.
    pub operator_state: OperatorStateStore,
    /// Commands emitted so far.
    pub commands: Vec<OperatorCommand>,
    /// Processing time.
    pub now_ms: u64,
    /// Subtask index and parallelism.
    pub subtask: (u32, u32),
}

impl<O: Operator> Harness<O> {
    /// An unkeyed operator, subtask 0 of 1.
    pub fn new(op: O) -> Self {
        Harness { op, keyed: None, operator_state: OperatorStateStore::new(), commands: Vec::new(), now_ms: 0, subtask: (0, 1) }
    }

    /// A keyed operator owning `range`.
    pub fn keyed(op: O, max_parallelism: u32, range: KeyGroupRange) -> Self {
        Harness { keyed: Some(KeyedStateBackend::new(max_parallelism, range)), ..Harness::new(op) }
    }

    fn with_ctx<R>(&mut self, f: impl FnOnce(&mut O, &mut OperatorContext<'_>) -> R) -> R {
        let mut ctx = OperatorContext {
            now_ms: self.now_ms,
            subtask: SubtaskIndex(self.subtask.0),
            parallelism: self.subtask.1,
            attempt: AttemptId(1),
            keyed: self.keyed.as_mut(),
            operator_state: &mut self.operator_state,
            commands: &mut self.commands,
        };
        f(&mut self.op, &mut ctx)
    }

    /// `initialize_state`.
    pub fn initialize(&mut self, restored_from: Option<CheckpointId>) {
        self.with_ctx(|op, ctx| op.initialize_state(ctx, restored_from)).expect("initialize_state");
    }

    /// `process_batch`, returning the output.
    pub fn batch(&mut self, input: Vec<O::In>) -> Vec<O::Out> {
        let mut out = Vec::new();
        self.with_ctx(|op, ctx| op.process_batch(ctx, input, &mut out)).expect("process_batch");
        out
    }

    /// `process_watermark`, returning the output.
    pub fn watermark(&mut self, ts: i64) -> Vec<O::Out> {
        let mut out = Vec::new();
        self.with_ctx(|op, ctx| op.process_watermark(ctx, Watermark(ts), &mut out)).expect("process_watermark");
        out
    }
}

/// Runs an unkeyed operator over batches and returns everything it emitted.
pub fn run_batches<O: Operator>(op: O, batches: Vec<Vec<O::In>>) -> Vec<O::Out> {
    let mut h = Harness::new(op);
    h.initialize(None);
    batches.into_iter().flat_map(|b| h.batch(b)).collect()
}
