//! The checkpoint coordinator: Flink's `CheckpointCoordinator` + `PendingCheckpoint` +
//! `CheckpointFailureManager`, as a pure synchronous state machine.
//!
//! Inputs come in with the current time (`now_ms`); [`CoordinatorCommand`]s come out and the job
//! manager carries them out. The life of checkpoint `n`:
//!
//! 1. **Trigger** ([`CheckpointCoordinator::tick`]): when `interval_ms` has passed since the last
//!    trigger, `min_pause_ms` since the last completion or abort, and fewer than `max_concurrent`
//!    checkpoints are pending. The first tick starts the schedule: the first periodic checkpoint
//!    is due `interval_ms` after it. [`CoordinatorCommand::Trigger`] goes to the source subtasks.
//! 2. **Acknowledge** ([`CheckpointCoordinator::on_ack`]): each planned subtask acknowledges
//!    once with its [`SubtaskStateHandle`]. A message from another attempt, for an unknown or
//!    finished checkpoint, or from a subtask outside the plan is ignored and counted
//!    ([`CheckpointCoordinator::stale_messages`]); so is a duplicate. A handle whose key groups do
//!    not cover the sender's range exactly aborts the checkpoint as a decline (it would not restore).
//! 3. **Persist**: once every planned subtask has acknowledged,
//!    [`CoordinatorCommand::PersistMetadata`]: the job manager writes the metadata durably, then the
//!    "latest" pointer, then calls [`CheckpointCoordinator::on_metadata_persisted`]. At most one
//!    metadata write is in flight (lowest checkpoint id first), so the pointer only moves forward.
//! 4. **Complete**, only after the write succeeded: the checkpoint becomes the latest completed
//!    one, older pending checkpoints are subsumed, the consecutive-failure counter resets,
//!    [`CoordinatorCommand::NotifyComplete`] is emitted, and completed checkpoints beyond
//!    `retained_completed_max` are discarded (never the latest).
//!
//! **Aborts** — expiry after `timeout_ms`, a decline, a failed metadata write, subsumption, the end
//! of the attempt — emit [`CoordinatorCommand::NotifyAborted`] and
//! [`CoordinatorCommand::DiscardAborted`] for the state already acknowledged. Expiry, declines and
//! failed writes are *failures*; when more than `tolerable_failures` happen in a row,
//! [`CoordinatorCommand::FailJob`] is emitted once and no checkpoint is triggered any more.
//!
//! **The metadata write is the commit point.** A checkpoint whose write is in flight is never
//! expired, declined or subsumed, and if the attempt ends meanwhile its state is *not* discarded:
//! the write may have landed (Flink's `PossibleInconsistentStateException`). So the job manager
//! reports `Err` from the write only when the "latest" pointer certainly does not name the
//! checkpoint.
//!
//! **Final checkpoint** (Flink's FLIP-147): once every source subtask reported end of input
//! ([`CheckpointCoordinator::on_end_of_input`]), no periodic checkpoint is triggered any more; a
//! final one (`is_final: true`) is triggered as soon as `max_concurrent` allows, ignoring interval
//! and pause, and again if it aborts. When it completes, `NotifyComplete` and then
//! [`CoordinatorCommand::JobFinished`] are emitted.
//!
//! **Attempts and ids.** A coordinator serves one attempt; a new attempt (or a recovered job
//! manager) builds a new one with [`CheckpointCoordinator::restored`], passing the latest
//! completed checkpoint and the next id. Ids never go backwards: the job manager must durably
//! record that an id is used before it sends that id's trigger (Flink's `CheckpointIDCounter`),
//! so a recovered job manager never reuses an id that a sink may have tied a transaction to.

mod metadata;

pub use metadata::{
    BlobRef, CheckpointMetadata, HandleError, KeyGroupSlice, KeyGroupStateRef, KeyedStateHandle, OperatorCheckpoint,
    RestoreError, SubtaskRestore, SubtaskStateHandle, METADATA_FORMAT_VERSION, METADATA_FORMAT_VERSION_V1, METADATA_MAGIC,
};

use crate::element::Barrier;
use crate::ids::{AttemptId, CheckpointId, OperatorId, SubtaskId};
use crate::key_groups::KeyGroupRange;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The largest `max_concurrent` a configuration may ask for (bounds the pending map).
pub const CHECKPOINTS_CONCURRENT_LIMIT: u32 = 64;
/// The largest `retained_completed_max` a configuration may ask for (bounds the retained list).
pub const CHECKPOINTS_RETAINED_LIMIT: u32 = 1024;
/// Reasons from remote subtasks and the blob store are cut to this many bytes.
pub const ABORT_REASON_BYTES_MAX: usize = 1024;

/// Checkpointing settings, with Flink's names and (where Flink has them) Flink's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointConfig {
    /// Time between two triggers. Flink has no default (checkpointing is off until set);
    /// floe's default is 1 s, a good pace for simulated jobs.
    pub interval_ms: u64,
    /// Least time between the end (completion or abort) of one checkpoint and the next trigger
    /// (Flink: 0).
    pub min_pause_ms: u64,
    /// Most checkpoints pending at once (Flink: 1).
    pub max_concurrent: u32,
    /// A checkpoint not complete this long after its trigger is aborted (Flink: 10 min).
    pub timeout_ms: u64,
    /// Consecutive failed checkpoints tolerated before the job is failed (Flink: 0).
    pub tolerable_failures: u32,
    /// Completed checkpoints kept; older ones are discarded (Flink's `state.checkpoints.num-retained`: 1).
    pub retained_completed_max: u32,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 1_000,
            min_pause_ms: 0,
            max_concurrent: 1,
            timeout_ms: 600_000,
            tolerable_failures: 0,
            retained_completed_max: 1,
        }
    }
}

impl CheckpointConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms == 0 {
            return Err(ConfigError::ZeroInterval);
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.max_concurrent == 0 || self.max_concurrent > CHECKPOINTS_CONCURRENT_LIMIT {
            return Err(ConfigError::MaxConcurrentOutOfRange { max_concurrent: self.max_concurrent });
        }
        if self.retained_completed_max == 0 || self.retained_completed_max > CHECKPOINTS_RETAINED_LIMIT {
            return Err(ConfigError::RetainedOutOfRange { retained_completed_max: self.retained_completed_max });
        }
        Ok(())
    }
}

/// A checkpoint configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `interval_ms` is 0.
    #[error("checkpoint interval must be above 0 ms")]
    ZeroInterval,
    /// `timeout_ms` is 0.
    #[error("checkpoint timeout must be above 0 ms")]
    ZeroTimeout,
    /// `max_concurrent` is 0 or above [`CHECKPOINTS_CONCURRENT_LIMIT`].
    #[error("max concurrent checkpoints {max_concurrent} is outside [1, {CHECKPOINTS_CONCURRENT_LIMIT}]")]
    MaxConcurrentOutOfRange {
        /// The value asked for.
        max_concurrent: u32,
    },
    /// `retained_completed_max` is 0 or above [`CHECKPOINTS_RETAINED_LIMIT`].
    #[error("retained completed checkpoints {retained_completed_max} is outside [1, {CHECKPOINTS_RETAINED_LIMIT}]")]
    RetainedOutOfRange {
        /// The value asked for.
        retained_completed_max: u32,
    },
}

/// An operator's parallelism and max parallelism, as the coordinator records them in metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperatorParallelism {
    /// Number of subtasks.
    pub parallelism: u32,
    /// Number of key groups (fixed for the job's life).
    pub max_parallelism: u32,
}

/// Who takes part in every checkpoint of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckpointPlan {
    /// The source subtasks: they receive the trigger and report end of input.
    pub sources: Vec<SubtaskId>,
    /// Every subtask; each must acknowledge a checkpoint for it to complete.
    pub all_subtasks: Vec<SubtaskId>,
    /// Every operator's parallelism; its subtasks `0..parallelism` must all be in `all_subtasks`.
    pub operators: BTreeMap<OperatorId, OperatorParallelism>,
}

impl CheckpointPlan {
    /// The plan with every subtask of `operators`, the subtasks of `source_operators` being the sources.
    pub fn from_operators(operators: BTreeMap<OperatorId, OperatorParallelism>, source_operators: &[OperatorId]) -> Self {
        let subtasks_of = |op: OperatorId, p: &OperatorParallelism| (0..p.parallelism).map(move |i| SubtaskId::new(op, i));
        let all_subtasks = operators.iter().flat_map(|(op, p)| subtasks_of(*op, p)).collect();
        let sources = operators
            .iter()
            .filter(|(op, _)| source_operators.contains(op))
            .flat_map(|(op, p)| subtasks_of(*op, p))
            .collect();
        CheckpointPlan { sources, all_subtasks, operators }
    }

    /// Checks that the plan is consistent.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.all_subtasks.is_empty() {
            return Err(PlanError::NoSubtasks);
        }
        if self.sources.is_empty() {
            return Err(PlanError::NoSources);
        }
        for (&operator, p) in &self.operators {
            if p.parallelism == 0 || p.parallelism > p.max_parallelism {
                return Err(PlanError::InvalidParallelism { operator, parallelism: p.parallelism, max_parallelism: p.max_parallelism });
            }
        }
        let mut seen = BTreeSet::new();
        for &s in &self.all_subtasks {
            let p = self.operators.get(&s.operator).ok_or(PlanError::UnknownOperator(s))?;
            if s.index.0 >= p.parallelism {
                return Err(PlanError::IndexOutOfRange { subtask: s, parallelism: p.parallelism });
            }
            if !seen.insert(s) {
                return Err(PlanError::DuplicateSubtask(s));
            }
        }
        for (&operator, p) in &self.operators {
            if let Some(missing) = (0..p.parallelism).map(|i| SubtaskId::new(operator, i)).find(|s| !seen.contains(s)) {
                return Err(PlanError::MissingSubtask(missing));
            }
        }
        let mut sources = BTreeSet::new();
        for &s in &self.sources {
            if !seen.contains(&s) {
                return Err(PlanError::SourceNotInPlan(s));
            }
            if !sources.insert(s) {
                return Err(PlanError::DuplicateSubtask(s));
            }
        }
        Ok(())
    }
}

/// A plan that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No subtask at all.
    #[error("the plan has no subtask")]
    NoSubtasks,
    /// No source subtask: nobody could inject a barrier.
    #[error("the plan has no source subtask")]
    NoSources,
    /// A subtask listed twice.
    #[error("{0} is listed twice")]
    DuplicateSubtask(SubtaskId),
    /// A subtask of an operator the plan does not describe.
    #[error("{0} belongs to an operator missing from the plan's operators")]
    UnknownOperator(SubtaskId),
    /// A subtask index at or above its operator's parallelism.
    #[error("{subtask} is outside its operator's parallelism {parallelism}")]
    IndexOutOfRange {
        /// The subtask.
        subtask: SubtaskId,
        /// Its operator's parallelism.
        parallelism: u32,
    },
    /// A subtask of a described operator is not listed.
    #[error("{0} is missing from the plan's subtasks")]
    MissingSubtask(SubtaskId),
    /// A source that is not one of the plan's subtasks.
    #[error("source {0} is not one of the plan's subtasks")]
    SourceNotInPlan(SubtaskId),
    /// Parallelism 0 or above the max parallelism.
    #[error("{operator} has parallelism {parallelism} and max parallelism {max_parallelism}")]
    InvalidParallelism {
        /// The operator.
        operator: OperatorId,
        /// Its parallelism.
        parallelism: u32,
        /// Its max parallelism.
        max_parallelism: u32,
    },
}

/// Why a coordinator could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// A bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A bad plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Checkpoint ids start at 1.
    #[error("checkpoint ids start at 1")]
    ZeroCheckpointId,
    /// The next id must be above the latest completed one: ids never go backwards.
    #[error("next checkpoint id {next} is not above the latest completed {latest}")]
    IdNotAfterLatest {
        /// The next id asked for.
        next: CheckpointId,
        /// The latest completed checkpoint.
        latest: CheckpointId,
    },
}

/// Why a checkpoint was aborted (Flink's `CheckpointFailureReason`, the ones floe has).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AbortReason {
    /// Not complete within `timeout_ms` of its trigger.
    Expired,
    /// A subtask declined it (or acknowledged state that cannot be restored).
    Declined {
        /// The subtask.
        subtask: SubtaskId,
        /// Its reason, cut to [`ABORT_REASON_BYTES_MAX`].
        reason: String,
    },
    /// A newer checkpoint completed first.
    Subsumed {
        /// The newer checkpoint.
        by: CheckpointId,
    },
    /// A subtask's alignment was overtaken by a newer barrier (Flink's
    /// `CHECKPOINT_DECLINED_SUBSUMED`): aborted, but not a failure — the newer checkpoint is
    /// already on its way.
    DeclinedSubsumed {
        /// The subtask.
        subtask: SubtaskId,
        /// The newer checkpoint whose barrier overtook this one.
        by: CheckpointId,
    },
    /// The metadata could not be written.
    MetadataWriteFailed {
        /// The blob store's reason, cut to [`ABORT_REASON_BYTES_MAX`].
        reason: String,
    },
    /// The attempt ended (failover, job-manager shutdown).
    AttemptEnded,
}

impl AbortReason {
    /// True when the abort counts towards `tolerable_failures` (as in Flink's
    /// `CheckpointFailureManager`: subsumption, a decline because a newer barrier overtook the
    /// alignment, and the end of the attempt do not).
    pub fn counts_as_failure(&self) -> bool {
        matches!(self, AbortReason::Expired | AbortReason::Declined { .. } | AbortReason::MetadataWriteFailed { .. })
    }
}

/// Aborted checkpoints, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AbortCounts {
    /// [`AbortReason::Expired`].
    pub expired: u64,
    /// [`AbortReason::Declined`].
    pub declined: u64,
    /// [`AbortReason::Subsumed`].
    pub subsumed: u64,
    /// [`AbortReason::DeclinedSubsumed`].
    pub declined_subsumed: u64,
    /// [`AbortReason::MetadataWriteFailed`].
    pub metadata_write_failed: u64,
    /// [`AbortReason::AttemptEnded`].
    pub attempt_ended: u64,
}

impl AbortCounts {
    fn record(&mut self, reason: &AbortReason) {
        let slot = match reason {
            AbortReason::Expired => &mut self.expired,
            AbortReason::Declined { .. } => &mut self.declined,
            AbortReason::Subsumed { .. } => &mut self.subsumed,
            AbortReason::DeclinedSubsumed { .. } => &mut self.declined_subsumed,
            AbortReason::MetadataWriteFailed { .. } => &mut self.metadata_write_failed,
            AbortReason::AttemptEnded => &mut self.attempt_ended,
        };
        *slot += 1;
    }

    /// All aborts.
    pub fn total(&self) -> u64 {
        self.expired + self.declined + self.subsumed + self.declined_subsumed + self.metadata_write_failed + self.attempt_ended
    }
}

/// What the coordinator asks the job manager to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorCommand {
    /// Send `barrier` to every source subtask of the plan.
    Trigger {
        /// The new checkpoint.
        checkpoint_id: CheckpointId,
        /// The barrier the sources inject.
        barrier: Barrier,
    },
    /// Write `metadata` durably, then the "latest" pointer, then report with
    /// [`CheckpointCoordinator::on_metadata_persisted`].
    PersistMetadata {
        /// The checkpoint.
        checkpoint_id: CheckpointId,
        /// What to write (see [`CheckpointMetadata::to_bytes`]).
        metadata: CheckpointMetadata,
    },
    /// The checkpoint is complete: tell every subtask (sinks commit).
    NotifyComplete {
        /// The checkpoint.
        checkpoint_id: CheckpointId,
    },
    /// The checkpoint is aborted: tell every subtask.
    NotifyAborted {
        /// The checkpoint.
        checkpoint_id: CheckpointId,
        /// Why.
        reason: AbortReason,
    },
    /// Delete a completed checkpoint that fell out of retention: its metadata blob and every
    /// blob it names ([`CheckpointMetadata::blobs`]). Never the latest completed checkpoint.
    Discard {
        /// The checkpoint to delete.
        metadata: CheckpointMetadata,
    },
    /// Delete the state acknowledged for an aborted checkpoint (no metadata names it).
    DiscardAborted {
        /// The checkpoint.
        checkpoint_id: CheckpointId,
        /// The handles acknowledged before the abort.
        handles: Vec<SubtaskStateHandle>,
    },
    /// Too many consecutive checkpoint failures: fail the job (emitted once).
    FailJob {
        /// Why.
        reason: String,
    },
    /// The final checkpoint completed: the job is finished.
    JobFinished {
        /// The final checkpoint.
        checkpoint_id: CheckpointId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for acknowledgements.
    Collecting,
    /// Every subtask acknowledged; waiting for the metadata-write slot.
    Acked,
    /// The metadata write is in flight.
    Persisting,
}

#[derive(Clone, Debug)]
struct PendingCheckpoint {
    triggered_at_ms: u64,
    is_final: bool,
    acks: BTreeMap<SubtaskId, SubtaskStateHandle>,
    stage: Stage,
    /// Built when the metadata write is issued.
    metadata: Option<CheckpointMetadata>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Triggering and completing checkpoints.
    Running,
    /// `FailJob` was emitted: no more triggers; pending checkpoints may still complete.
    JobFailed,
    /// `JobFinished` was emitted.
    Finished,
    /// The attempt ended: every message is stale.
    Ended,
}

/// The checkpoint coordinator of one attempt. See the module documentation.
#[derive(Clone, Debug)]
pub struct CheckpointCoordinator {
    config: CheckpointConfig,
    plan: CheckpointPlan,
    planned: BTreeSet<SubtaskId>,
    sources: BTreeSet<SubtaskId>,
    attempt: AttemptId,
    next_checkpoint_id: CheckpointId,
    pending: BTreeMap<CheckpointId, PendingCheckpoint>,
    /// Oldest first; the back is the latest completed checkpoint.
    completed: VecDeque<CheckpointMetadata>,
    persisting: Option<CheckpointId>,
    schedule_started_ms: Option<u64>,
    last_trigger_ms: Option<u64>,
    last_finished_ms: Option<u64>,
    ended_sources: BTreeSet<SubtaskId>,
    phase: Phase,
    completed_count: u64,
    abort_counts: AbortCounts,
    failed_consecutive: u32,
    stale_messages: u64,
}

impl CheckpointCoordinator {
    /// A coordinator for a fresh job: no completed checkpoint, ids from `first_checkpoint_id`.
    pub fn new(
        config: CheckpointConfig,
        plan: CheckpointPlan,
        attempt: AttemptId,
        first_checkpoint_id: CheckpointId,
    ) -> Result<Self, CoordinatorError> {
        Self::restored(config, plan, attempt, None, first_checkpoint_id)
    }

    /// A coordinator for a new attempt or a recovered job manager: `latest` is the latest
    /// completed checkpoint (read back from the blob store), `next_checkpoint_id` the first id
    /// this attempt may use (above every id ever triggered, not only the completed ones).
    pub fn restored(
        config: CheckpointConfig,
        plan: CheckpointPlan,
        attempt: AttemptId,
        latest: Option<CheckpointMetadata>,
        next_checkpoint_id: CheckpointId,
    ) -> Result<Self, CoordinatorError> {
        config.validate()?;
        plan.validate()?;
        if next_checkpoint_id.0 == 0 {
            return Err(CoordinatorError::ZeroCheckpointId);
        }
        if let Some(latest) = &latest {
            if next_checkpoint_id <= latest.checkpoint_id {
                return Err(CoordinatorError::IdNotAfterLatest { next: next_checkpoint_id, latest: latest.checkpoint_id });
            }
        }
        Ok(CheckpointCoordinator {
            config,
            planned: plan.all_subtasks.iter().copied().collect(),
            sources: plan.sources.iter().copied().collect(),
            plan,
            attempt,
            next_checkpoint_id,
            pending: BTreeMap::new(),
            completed: latest.into_iter().collect(),
            persisting: None,
            schedule_started_ms: None,
            last_trigger_ms: None,
            last_finished_ms: None,
            ended_sources: BTreeSet::new(),
            phase: Phase::Running,
            completed_count: 0,
            abort_counts: AbortCounts::default(),
            failed_consecutive: 0,
            stale_messages: 0,
        })
    }

    /// Advances time: expires pending checkpoints older than `timeout_ms`, then triggers a
    /// checkpoint if one is due.
    pub fn tick(&mut self, now_ms: u64) -> Vec<CoordinatorCommand> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Ended | Phase::Finished) {
            return out;
        }
        self.schedule_started_ms.get_or_insert(now_ms);
        let expired: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.stage != Stage::Persisting && now_ms.saturating_sub(p.triggered_at_ms) >= self.config.timeout_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.abort(now_ms, id, AbortReason::Expired, &mut out);
        }
        self.after_event(now_ms, &mut out);
        if self.phase == Phase::Running && !self.all_sources_ended() && self.pending.len() < self.config.max_concurrent as usize {
            if let Some(due_ms) = self.next_periodic_trigger_ms() {
                if now_ms >= due_ms {
                    self.trigger(now_ms, false, &mut out);
                }
            }
        }
        out
    }

    /// A subtask acknowledged checkpoint `checkpoint_id` with its state.
    pub fn on_ack(
        &mut self,
        now_ms: u64,
        attempt: AttemptId,
        checkpoint_id: CheckpointId,
        subtask: SubtaskId,
        handle: SubtaskStateHandle,
    ) -> Vec<CoordinatorCommand> {
        let mut out = Vec::new();
        if !self.accepts(attempt, checkpoint_id, subtask) {
            self.stale_messages += 1;
            return out;
        }
        let range = self.key_group_range_of(subtask);
        if let Err(e) = handle.validate(subtask, range) {
            let reason = AbortReason::Declined { subtask, reason: bounded(&format!("invalid state handle: {e}")) };
            self.abort(now_ms, checkpoint_id, reason, &mut out);
        } else {
            let planned = self.planned.len();
            let p = self.pending.get_mut(&checkpoint_id).expect("accepts() checked it is pending");
            let previous = p.acks.insert(subtask, handle);
            debug_assert!(previous.is_none());
            if p.acks.len() == planned {
                p.stage = Stage::Acked;
            }
        }
        self.after_event(now_ms, &mut out);
        out
    }

    /// A subtask declined checkpoint `checkpoint_id`: the checkpoint is aborted (a failure).
    pub fn on_decline(
        &mut self,
        now_ms: u64,
        attempt: AttemptId,
        checkpoint_id: CheckpointId,
        subtask: SubtaskId,
        reason: String,
    ) -> Vec<CoordinatorCommand> {
        self.decline(now_ms, attempt, checkpoint_id, subtask, AbortReason::Declined { subtask, reason: bounded(&reason) })
    }

    /// A subtask of `attempt` declined `checkpoint_id` because the barrier of the newer checkpoint
    /// `by` overtook its alignment. The checkpoint is aborted
    /// ([`AbortReason::DeclinedSubsumed`]) but it is not a failure: `tolerable_failures` is not
    /// charged (Flink ignores `CHECKPOINT_DECLINED_SUBSUMED` the same way).
    pub fn on_decline_subsumed(
        &mut self,
        now_ms: u64,
        attempt: AttemptId,
        checkpoint_id: CheckpointId,
        subtask: SubtaskId,
        by: CheckpointId,
    ) -> Vec<CoordinatorCommand> {
        self.decline(now_ms, attempt, checkpoint_id, subtask, AbortReason::DeclinedSubsumed { subtask, by })
    }

    fn decline(&mut self, now_ms: u64, attempt: AttemptId, checkpoint_id: CheckpointId, subtask: SubtaskId, reason: AbortReason) -> Vec<CoordinatorCommand> {
        let mut out = Vec::new();
        if !self.accepts(attempt, checkpoint_id, subtask) {
            self.stale_messages += 1;
            return out;
        }
        self.abort(now_ms, checkpoint_id, reason, &mut out);
        self.after_event(now_ms, &mut out);
        out
    }

    /// The job manager finished the metadata write (and the "latest" pointer) that
    /// [`CoordinatorCommand::PersistMetadata`] asked for. `Err` only when the pointer certainly
    /// does not name the checkpoint. A report for any other checkpoint is stale.
    pub fn on_metadata_persisted(&mut self, now_ms: u64, checkpoint_id: CheckpointId, result: Result<(), String>) -> Vec<CoordinatorCommand> {
        let mut out = Vec::new();
        if self.persisting != Some(checkpoint_id) {
            self.stale_messages += 1;
            return out;
        }
        match result {
            Ok(()) => self.complete(now_ms, checkpoint_id, &mut out),
            Err(reason) => {
                self.abort(now_ms, checkpoint_id, AbortReason::MetadataWriteFailed { reason: bounded(&reason) }, &mut out)
            }
        }
        self.after_event(now_ms, &mut out);
        out
    }

    /// A source subtask of `attempt` reached the end of its input. Once every source has, the
    /// final checkpoint is triggered (here or as soon as `max_concurrent` allows).
    pub fn on_end_of_input(&mut self, now_ms: u64, attempt: AttemptId, subtask: SubtaskId) -> Vec<CoordinatorCommand> {
        let mut out = Vec::new();
        if attempt != self.attempt || self.phase == Phase::Ended || !self.sources.contains(&subtask) {
            self.stale_messages += 1;
            return out;
        }
        self.ended_sources.insert(subtask);
        self.after_event(now_ms, &mut out);
        out
    }

    /// The attempt ends (failover or shutdown): every pending checkpoint is aborted with
    /// [`AbortReason::AttemptEnded`], and from now on every message is stale. The state of a
    /// checkpoint whose metadata write is in flight is not discarded: the write may have landed.
    pub fn on_attempt_ended(&mut self, now_ms: u64) -> Vec<CoordinatorCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Ended {
            return out;
        }
        let ids: Vec<CheckpointId> = self.pending.keys().copied().collect();
        for id in ids {
            self.abort(now_ms, id, AbortReason::AttemptEnded, &mut out);
        }
        self.phase = Phase::Ended;
        debug_assert!(self.pending.is_empty() && self.persisting.is_none());
        out
    }

    /// The latest completed checkpoint (possibly restored from an earlier attempt).
    pub fn latest_completed(&self) -> Option<&CheckpointMetadata> {
        self.completed.back()
    }

    /// The retained completed checkpoints, oldest first (the last is the latest).
    pub fn retained_completed(&self) -> impl Iterator<Item = &CheckpointMetadata> {
        self.completed.iter()
    }

    /// The pending checkpoints, in id order.
    pub fn pending_ids(&self) -> Vec<CheckpointId> {
        self.pending.keys().copied().collect()
    }

    /// The id the next trigger will use.
    pub fn next_checkpoint_id(&self) -> CheckpointId {
        self.next_checkpoint_id
    }

    /// The attempt this coordinator serves.
    pub fn attempt(&self) -> AttemptId {
        self.attempt
    }

    /// Checkpoints completed by this coordinator.
    pub fn completed_count(&self) -> u64 {
        self.completed_count
    }

    /// Checkpoints aborted by this coordinator, per reason.
    pub fn abort_counts(&self) -> AbortCounts {
        self.abort_counts
    }

    /// Failed checkpoints since the last completion.
    pub fn failed_consecutive(&self) -> u32 {
        self.failed_consecutive
    }

    /// Messages ignored: from another attempt, for an unknown or finished checkpoint, from a
    /// subtask outside the plan, duplicates, and metadata reports for no write in flight.
    pub fn stale_messages(&self) -> u64 {
        self.stale_messages
    }

    /// True once `JobFinished` was emitted.
    pub fn is_job_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// True once `FailJob` was emitted.
    pub fn has_failed_job(&self) -> bool {
        self.phase == Phase::JobFailed
    }

    /// True once every source subtask reported end of input.
    pub fn all_sources_ended(&self) -> bool {
        self.ended_sources.len() == self.sources.len()
    }

    /// The earliest time at which [`tick`](Self::tick) may have something to do (a trigger or an
    /// expiry), so a host can sleep until then; a time at or before now means "tick now".
    /// `None` when only a message can move the coordinator.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        if matches!(self.phase, Phase::Ended | Phase::Finished) {
            return None;
        }
        let expiry = self
            .pending
            .values()
            .filter(|p| p.stage != Stage::Persisting)
            .map(|p| p.triggered_at_ms.saturating_add(self.config.timeout_ms))
            .min();
        let can_trigger = self.phase == Phase::Running
            && !self.all_sources_ended()
            && self.pending.len() < self.config.max_concurrent as usize;
        let trigger = if !can_trigger {
            None
        } else if self.schedule_started_ms.is_none() {
            Some(0)
        } else {
            self.next_periodic_trigger_ms()
        };
        [expiry, trigger].into_iter().flatten().min()
    }

    // ---- internals ----

    /// When the next periodic checkpoint is due, ignoring `max_concurrent`.
    fn next_periodic_trigger_ms(&self) -> Option<u64> {
        let base_ms = self.last_trigger_ms.or(self.schedule_started_ms)?;
        let mut due_ms = base_ms.saturating_add(self.config.interval_ms);
        if let Some(finished_ms) = self.last_finished_ms {
            due_ms = due_ms.max(finished_ms.saturating_add(self.config.min_pause_ms));
        }
        Some(due_ms)
    }

    /// True when a message from `attempt`/`subtask` about `checkpoint_id` may take effect.
    fn accepts(&self, attempt: AttemptId, checkpoint_id: CheckpointId, subtask: SubtaskId) -> bool {
        if attempt != self.attempt || self.phase == Phase::Ended || !self.planned.contains(&subtask) {
            return false;
        }
        match self.pending.get(&checkpoint_id) {
            Some(p) => p.stage == Stage::Collecting && !p.acks.contains_key(&subtask),
            None => false,
        }
    }

    fn key_group_range_of(&self, subtask: SubtaskId) -> KeyGroupRange {
        let p = self.plan.operators[&subtask.operator];
        KeyGroupRange::for_operator_index(p.max_parallelism, p.parallelism, subtask.index)
    }

    fn trigger(&mut self, now_ms: u64, is_final: bool, out: &mut Vec<CoordinatorCommand>) {
        debug_assert!(self.phase == Phase::Running);
        debug_assert!(self.pending.len() < self.config.max_concurrent as usize);
        let checkpoint_id = self.next_checkpoint_id;
        debug_assert!(self.latest_completed().is_none_or(|l| l.checkpoint_id < checkpoint_id));
        self.next_checkpoint_id = checkpoint_id.next();
        self.last_trigger_ms = Some(now_ms);
        let pending = PendingCheckpoint {
            triggered_at_ms: now_ms,
            is_final,
            acks: BTreeMap::new(),
            stage: Stage::Collecting,
            metadata: None,
        };
        self.pending.insert(checkpoint_id, pending);
        out.push(CoordinatorCommand::Trigger {
            checkpoint_id,
            barrier: Barrier { checkpoint_id, triggered_at_ms: now_ms, is_final },
        });
    }

    /// Work that may follow any event: start the next metadata write; trigger the final
    /// checkpoint if every source ended and none is pending.
    fn after_event(&mut self, now_ms: u64, out: &mut Vec<CoordinatorCommand>) {
        if self.persisting.is_none() {
            if let Some((&id, p)) = self.pending.iter_mut().find(|(_, p)| p.stage == Stage::Acked) {
                let metadata = build_metadata(&self.plan, self.attempt, id, p, now_ms);
                p.stage = Stage::Persisting;
                p.metadata = Some(metadata.clone());
                self.persisting = Some(id);
                out.push(CoordinatorCommand::PersistMetadata { checkpoint_id: id, metadata });
            }
        }
        if self.phase == Phase::Running
            && self.all_sources_ended()
            && self.pending.len() < self.config.max_concurrent as usize
            && !self.pending.values().any(|p| p.is_final)
        {
            self.trigger(now_ms, true, out);
        }
    }

    fn complete(&mut self, now_ms: u64, checkpoint_id: CheckpointId, out: &mut Vec<CoordinatorCommand>) {
        let p = self.pending.remove(&checkpoint_id).expect("the persisting checkpoint is pending");
        assert_eq!(p.stage, Stage::Persisting, "only a persisted checkpoint completes");
        assert_eq!(p.acks.len(), self.planned.len(), "a checkpoint completes only with every acknowledgement");
        let metadata = p.metadata.expect("a persisting checkpoint has its metadata");
        debug_assert!(self.latest_completed().is_none_or(|l| l.checkpoint_id < checkpoint_id));
        self.persisting = None;
        self.completed_count += 1;
        self.failed_consecutive = 0;
        self.last_finished_ms = Some(now_ms);
        out.push(CoordinatorCommand::NotifyComplete { checkpoint_id });

        let older: Vec<CheckpointId> = self.pending.range(..checkpoint_id).map(|(&id, _)| id).collect();
        for id in older {
            self.abort(now_ms, id, AbortReason::Subsumed { by: checkpoint_id }, out);
        }

        let is_final = metadata.is_final;
        self.completed.push_back(metadata);
        while self.completed.len() > self.config.retained_completed_max as usize {
            let old = self.completed.pop_front().expect("longer than the retention limit, so not empty");
            debug_assert!(old.checkpoint_id < checkpoint_id);
            out.push(CoordinatorCommand::Discard { metadata: old });
        }
        if is_final {
            debug_assert!(self.pending.is_empty(), "nothing is triggered after the final checkpoint");
            self.phase = Phase::Finished;
            out.push(CoordinatorCommand::JobFinished { checkpoint_id });
        }
    }

    fn abort(&mut self, now_ms: u64, checkpoint_id: CheckpointId, reason: AbortReason, out: &mut Vec<CoordinatorCommand>) {
        let p = self.pending.remove(&checkpoint_id).expect("only pending checkpoints are aborted");
        let was_persisting = self.persisting == Some(checkpoint_id);
        debug_assert_eq!(was_persisting, p.stage == Stage::Persisting);
        debug_assert!(
            !was_persisting || matches!(reason, AbortReason::MetadataWriteFailed { .. } | AbortReason::AttemptEnded),
            "a checkpoint whose metadata write is in flight ends only by the write's outcome or the attempt's end"
        );
        if was_persisting {
            self.persisting = None;
        }
        self.abort_counts.record(&reason);
        self.last_finished_ms = Some(now_ms);
        let is_failure = reason.counts_as_failure();
        out.push(CoordinatorCommand::NotifyAborted { checkpoint_id, reason: reason.clone() });
        // The state of a checkpoint whose metadata write may have landed must survive.
        let outcome_unknown = was_persisting && reason == AbortReason::AttemptEnded;
        if !p.acks.is_empty() && !outcome_unknown {
            out.push(CoordinatorCommand::DiscardAborted { checkpoint_id, handles: p.acks.into_values().collect() });
        }
        if is_failure {
            self.failed_consecutive = self.failed_consecutive.saturating_add(1);
            if self.failed_consecutive > self.config.tolerable_failures && self.phase == Phase::Running {
                self.phase = Phase::JobFailed;
                out.push(CoordinatorCommand::FailJob {
                    reason: format!(
                        "{} consecutive checkpoint failures exceed the {} tolerated; the last: {checkpoint_id} {reason:?}",
                        self.failed_consecutive, self.config.tolerable_failures
                    ),
                });
            }
        }
    }
}

fn build_metadata(
    plan: &CheckpointPlan,
    attempt: AttemptId,
    checkpoint_id: CheckpointId,
    p: &PendingCheckpoint,
    now_ms: u64,
) -> CheckpointMetadata {
    let operators = plan
        .operators
        .iter()
        .map(|(&operator, par)| {
            // `acks` is ordered by (operator, index): this operator's handles come out in index order.
            let subtasks: Vec<SubtaskStateHandle> =
                p.acks.range(SubtaskId::new(operator, 0)..=SubtaskId::new(operator, u32::MAX)).map(|(_, h)| h.clone()).collect();
            debug_assert_eq!(subtasks.len() as u32, par.parallelism);
            (operator, OperatorCheckpoint { parallelism: par.parallelism, max_parallelism: par.max_parallelism, subtasks })
        })
        .collect();
    CheckpointMetadata { checkpoint_id, attempt, triggered_at_ms: p.triggered_at_ms, completed_at_ms: now_ms, is_final: p.is_final, operators }
}

/// `s` cut to [`ABORT_REASON_BYTES_MAX`] bytes, on a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= ABORT_REASON_BYTES_MAX {
        return s.to_owned();
    }
    let mut end = ABORT_REASON_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::metadata::tests::handle_for;
    use super::*;
    use proptest::prelude::*;

    const SRC: OperatorId = OperatorId(0);
    const SUM: OperatorId = OperatorId(1);
    const A1: AttemptId = AttemptId(1);

    /// Two sources (p 2, maxP 4) feeding a keyed sum (p 2, maxP 8): four subtasks.
    fn plan() -> CheckpointPlan {
        let operators = BTreeMap::from([
            (SRC, OperatorParallelism { parallelism: 2, max_parallelism: 4 }),
            (SUM, OperatorParallelism { parallelism: 2, max_parallelism: 8 }),
        ]);
        CheckpointPlan::from_operators(operators, &[SRC])
    }

    fn subtask(i: usize) -> SubtaskId {
        plan().all_subtasks[i]
    }

    fn handle(s: SubtaskId, cp: CheckpointId) -> SubtaskStateHandle {
        let p = plan().operators[&s.operator];
        handle_for(s.operator, s.index.0, p.parallelism, p.max_parallelism, &cp.to_string())
    }

    fn config() -> CheckpointConfig {
        CheckpointConfig { interval_ms: 100, min_pause_ms: 0, max_concurrent: 1, timeout_ms: 1_000, tolerable_failures: 0, retained_completed_max: 1 }
    }

    fn coordinator(config: CheckpointConfig) -> CheckpointCoordinator {
        CheckpointCoordinator::new(config, plan(), A1, CheckpointId::FIRST).unwrap()
    }

    /// One input to the coordinator; times in ms, checkpoints by number, subtasks by plan index.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Tick(u64),
        Ack(u64, u64, usize),
        AckAll(u64, u64),
        StaleAck(u64, u64, usize),
        Decline(u64, u64, usize),
        MetaOk(u64, u64),
        MetaErr(u64, u64),
        EndOfInput(u64, usize),
        AttemptEnded(u64),
    }

    fn apply(c: &mut CheckpointCoordinator, step: Step) -> Vec<CoordinatorCommand> {
        match step {
            Step::Tick(t) => c.tick(t),
            Step::Ack(t, cp, s) => c.on_ack(t, A1, CheckpointId(cp), subtask(s), handle(subtask(s), CheckpointId(cp))),
            Step::AckAll(t, cp) => (0..4).flat_map(|s| apply(c, Step::Ack(t, cp, s))).collect(),
            Step::StaleAck(t, cp, s) => c.on_ack(t, AttemptId(0), CheckpointId(cp), subtask(s), handle(subtask(s), CheckpointId(cp))),
            Step::Decline(t, cp, s) => c.on_decline(t, A1, CheckpointId(cp), subtask(s), "disk full".into()),
            Step::MetaOk(t, cp) => c.on_metadata_persisted(t, CheckpointId(cp), Ok(())),
            Step::MetaErr(t, cp) => c.on_metadata_persisted(t, CheckpointId(cp), Err("blob store down".into())),
            Step::EndOfInput(t, s) => c.on_end_of_input(t, A1, subtask(s)),
            Step::AttemptEnded(t) => c.on_attempt_ended(t),
        }
    }

    /// A command as a short line, so scripts read as tables.
    fn line(cmd: &CoordinatorCommand) -> String {
        match cmd {
            CoordinatorCommand::Trigger { checkpoint_id, barrier } => {
                assert_eq!(barrier.checkpoint_id, *checkpoint_id);
                format!("trigger {checkpoint_id}{}", if barrier.is_final { " final" } else { "" })
            }
            CoordinatorCommand::PersistMetadata { checkpoint_id, .. } => format!("persist {checkpoint_id}"),
            CoordinatorCommand::NotifyComplete { checkpoint_id } => format!("complete {checkpoint_id}"),
            CoordinatorCommand::NotifyAborted { checkpoint_id, reason } => {
                let why = match reason {
                    AbortReason::Expired => "expired".to_string(),
                    AbortReason::Declined { subtask, .. } => format!("declined by {subtask}"),
                    AbortReason::Subsumed { by } => format!("subsumed by {by}"),
                    AbortReason::DeclinedSubsumed { subtask, by } => format!("declined by {subtask}: overtaken by {by}"),
                    AbortReason::MetadataWriteFailed { .. } => "metadata write failed".to_string(),
                    AbortReason::AttemptEnded => "attempt ended".to_string(),
                };
                format!("abort {checkpoint_id} {why}")
            }
            CoordinatorCommand::Discard { metadata } => format!("discard {}", metadata.checkpoint_id),
            CoordinatorCommand::DiscardAborted { checkpoint_id, handles } => format!("discard aborted {checkpoint_id} ({})", handles.len()),
            CoordinatorCommand::FailJob { .. } => "fail job".to_string(),
            CoordinatorCommand::JobFinished { checkpoint_id } => format!("job finished {checkpoint_id}"),
        }
    }

    /// A script: each input with the commands it must produce.
    type Script = Vec<(Step, &'static [&'static str])>;
    /// A named script under a configuration.
    type Case = (&'static str, CheckpointConfig, Script);

    /// Runs a script of (input, the commands it must produce).
    fn script(name: &str, c: &mut CheckpointCoordinator, steps: &[(Step, &[&str])]) {
        for (n, (step, want)) in steps.iter().enumerate() {
            let got: Vec<String> = apply(c, *step).iter().map(line).collect();
            assert_eq!(got, *want, "{name}: step {n} {step:?}");
        }
    }

    #[test]
    fn trigger_timing_follows_interval_min_pause_and_max_concurrent() {
        let with = |f: fn(&mut CheckpointConfig)| {
            let mut c = config();
            f(&mut c);
            c
        };
        use Step::*;
        let cases: Vec<Case> = vec![
            ("the first checkpoint is due one interval after the first tick", config(), vec![
                (Tick(5), &[]),
                (Tick(104), &[]),
                (Tick(105), &["trigger cp1"]),
            ]),
            ("max_concurrent 1 holds the next trigger until the pending one ends", config(), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(200), &[]),
                (AckAll(250, 1), &["persist cp1"]),
                (Tick(255), &[]),
                (MetaOk(260, 1), &["complete cp1"]),
                (Tick(260), &["trigger cp2"]),
            ]),
            ("the interval counts from the last trigger, not the last tick", config(), vec![
                (Tick(0), &[]),
                (Tick(130), &["trigger cp1"]),
                (AckAll(140, 1), &["persist cp1"]),
                (MetaOk(150, 1), &["complete cp1"]),
                (Tick(229), &[]),
                (Tick(230), &["trigger cp2"]),
            ]),
            ("min pause counts from the last completion", with(|c| c.min_pause_ms = 80), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (AckAll(150, 1), &["persist cp1"]),
                (MetaOk(190, 1), &["complete cp1"]),
                (Tick(200), &[]),
                (Tick(269), &[]),
                (Tick(270), &["trigger cp2"]),
            ]),
            ("min pause counts from an abort too", with(|c| { c.min_pause_ms = 80; c.tolerable_failures = 5 }), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Decline(150, 1, 2), &["abort cp1 declined by op1#0"]),
                (Tick(229), &[]),
                (Tick(230), &["trigger cp2"]),
            ]),
            ("max_concurrent 2 lets two checkpoints run, not three", with(|c| c.max_concurrent = 2), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(200), &["trigger cp2"]),
                (Tick(300), &[]),
                (Tick(10_000), &["abort cp1 expired", "fail job", "abort cp2 expired"]),
            ]),
        ];
        for (name, config, steps) in cases {
            script(name, &mut coordinator(config), &steps);
        }
    }

    #[test]
    fn failures_aborts_and_subsumption() {
        let with = |f: fn(&mut CheckpointConfig)| {
            let mut c = config();
            f(&mut c);
            c
        };
        use Step::*;
        let cases: Vec<Case> = vec![
            ("a decline aborts, discards what was acked, and with 0 tolerated fails the job once", config(), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Ack(110, 1, 0), &[]),
                (StaleAck(115, 1, 3), &[]),
                (Decline(120, 1, 3), &["abort cp1 declined by op1#1", "discard aborted cp1 (1)", "fail job"]),
                (Tick(500), &[]),
                (Tick(5_000), &[]),
            ]),
            ("a checkpoint expires timeout_ms after its trigger", with(|c| c.tolerable_failures = 1), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(1_099), &[]),
                (Tick(1_100), &["abort cp1 expired", "trigger cp2"]),
                (Ack(1_150, 1, 0), &[]),
                (Tick(2_100), &["abort cp2 expired", "fail job"]),
            ]),
            ("a completion resets the consecutive failures", with(|c| c.tolerable_failures = 1), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Decline(110, 1, 0), &["abort cp1 declined by op0#0"]),
                (Tick(210), &["trigger cp2"]),
                (AckAll(220, 2), &["persist cp2"]),
                (MetaOk(230, 2), &["complete cp2"]),
                (Tick(310), &["trigger cp3"]),
                (Decline(320, 3, 1), &["abort cp3 declined by op0#1"]),
                (Tick(410), &["trigger cp4"]),
                (Decline(420, 4, 1), &["abort cp4 declined by op0#1", "fail job"]),
            ]),
            ("a failed metadata write aborts and discards every acked handle", config(), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (AckAll(110, 1), &["persist cp1"]),
                (MetaErr(120, 1), &["abort cp1 metadata write failed", "discard aborted cp1 (4)", "fail job"]),
            ]),
            ("a newer completion subsumes older pending checkpoints", with(|c| c.max_concurrent = 3), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(200), &["trigger cp2"]),
                (Tick(300), &["trigger cp3"]),
                (Ack(310, 1, 1), &[]),
                (AckAll(320, 2), &["persist cp2"]),
                (MetaOk(330, 2), &["complete cp2", "abort cp1 subsumed by cp2", "discard aborted cp1 (1)"]),
                (Ack(340, 1, 2), &[]),
                (AckAll(350, 3), &["persist cp3"]),
                (MetaOk(360, 3), &["complete cp3", "discard cp2"]),
            ]),
            ("one metadata write at a time; an acked checkpoint waits and may be subsumed", with(|c| c.max_concurrent = 2), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(200), &["trigger cp2"]),
                (AckAll(210, 2), &["persist cp2"]),
                (AckAll(220, 1), &[]),
                (MetaOk(230, 2), &["complete cp2", "abort cp1 subsumed by cp2", "discard aborted cp1 (4)"]),
            ]),
            ("when the write in flight fails, the waiting checkpoint is written next", with(|c| { c.max_concurrent = 2; c.tolerable_failures = 1 }), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(200), &["trigger cp2"]),
                (AckAll(210, 1), &["persist cp1"]),
                (AckAll(220, 2), &[]),
                (MetaErr(230, 1), &["abort cp1 metadata write failed", "discard aborted cp1 (4)", "persist cp2"]),
                (MetaOk(240, 2), &["complete cp2"]),
            ]),
            ("a checkpoint whose metadata write is in flight never expires", config(), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (AckAll(200, 1), &["persist cp1"]),
                (Tick(50_000), &[]),
                (MetaOk(50_001, 1), &["complete cp1"]),
            ]),
            ("the end of the attempt aborts everything but keeps state whose write may have landed", with(|c| c.max_concurrent = 2), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (Tick(200), &["trigger cp2"]),
                (AckAll(210, 1), &["persist cp1"]),
                (Ack(220, 2, 0), &[]),
                (AttemptEnded(230), &["abort cp1 attempt ended", "abort cp2 attempt ended", "discard aborted cp2 (1)"]),
                (MetaOk(240, 1), &[]),
                (Tick(10_000), &[]),
                (AckAll(10_000, 2), &[]),
                (AttemptEnded(10_001), &[]),
            ]),
            ("retention keeps the newest completed checkpoints", with(|c| c.retained_completed_max = 2), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (AckAll(110, 1), &["persist cp1"]),
                (MetaOk(120, 1), &["complete cp1"]),
                (Tick(200), &["trigger cp2"]),
                (AckAll(210, 2), &["persist cp2"]),
                (MetaOk(220, 2), &["complete cp2"]),
                (Tick(300), &["trigger cp3"]),
                (AckAll(310, 3), &["persist cp3"]),
                (MetaOk(320, 3), &["complete cp3", "discard cp1"]),
            ]),
        ];
        for (name, config, steps) in cases {
            script(name, &mut coordinator(config), &steps);
        }
    }

    #[test]
    fn the_final_checkpoint_finishes_the_job() {
        let with = |f: fn(&mut CheckpointConfig)| {
            let mut c = config();
            f(&mut c);
            c
        };
        use Step::*;
        let cases: Vec<Case> = vec![
            ("when every source ended, the final checkpoint is triggered at once", config(), vec![
                (Tick(0), &[]),
                (EndOfInput(10, 0), &[]),
                (EndOfInput(11, 0), &[]),
                (Tick(100), &["trigger cp1"]),
                (AckAll(110, 1), &["persist cp1"]),
                (MetaOk(120, 1), &["complete cp1"]),
                (EndOfInput(130, 1), &["trigger cp2 final"]),
                (AckAll(140, 2), &["persist cp2"]),
                (MetaOk(150, 2), &["complete cp2", "discard cp1", "job finished cp2"]),
                (Tick(10_000), &[]),
            ]),
            ("the final checkpoint waits for max_concurrent, not for interval or pause", with(|c| c.min_pause_ms = 1_000), vec![
                (Tick(0), &[]),
                (Tick(100), &["trigger cp1"]),
                (EndOfInput(110, 0), &[]),
                (EndOfInput(120, 1), &[]),
                (AckAll(130, 1), &["persist cp1"]),
                (MetaOk(140, 1), &["complete cp1", "trigger cp2 final"]),
                (AckAll(150, 2), &["persist cp2"]),
                (MetaOk(160, 2), &["complete cp2", "discard cp1", "job finished cp2"]),
            ]),
            ("an aborted final checkpoint is triggered again", with(|c| c.tolerable_failures = 1), vec![
                (EndOfInput(10, 0), &[]),
                (EndOfInput(10, 1), &["trigger cp1 final"]),
                (Decline(20, 1, 2), &["abort cp1 declined by op1#0", "trigger cp2 final"]),
                (Tick(2_000), &["abort cp2 expired", "fail job"]),
                (Tick(3_000), &[]),
            ]),
            ("no periodic checkpoint after every source ended", with(|c| c.max_concurrent = 2), vec![
                (Tick(0), &[]),
                (EndOfInput(10, 0), &[]),
                (EndOfInput(10, 1), &["trigger cp1 final"]),
                (Tick(100), &[]),
                (Tick(500), &[]),
                (AckAll(600, 1), &["persist cp1"]),
                (MetaOk(700, 1), &["complete cp1", "job finished cp1"]),
            ]),
        ];
        for (name, config, steps) in cases {
            script(name, &mut coordinator(config), &steps);
        }
    }

    #[test]
    fn ignored_messages_change_nothing_and_are_counted() {
        let mut c = coordinator(config());
        c.tick(0);
        assert_eq!(c.tick(100).iter().map(line).collect::<Vec<_>>(), vec!["trigger cp1"]);
        let cp1 = CheckpointId(1);
        let s0 = subtask(0);
        let outsider = SubtaskId::new(OperatorId(9), 0);
        let cases: Vec<(&str, Vec<CoordinatorCommand>)> = vec![
            ("an ack from another attempt", c.on_ack(110, AttemptId(0), cp1, s0, handle(s0, cp1))),
            ("a newer attempt is not this one either", c.on_ack(110, AttemptId(2), cp1, s0, handle(s0, cp1))),
            ("an ack for an unknown checkpoint", c.on_ack(110, A1, CheckpointId(9), s0, handle(s0, cp1))),
            ("an ack from a subtask outside the plan", c.on_ack(110, A1, cp1, outsider, SubtaskStateHandle::empty(outsider))),
            ("a decline from another attempt", c.on_decline(110, AttemptId(0), cp1, s0, "x".into())),
            ("a decline for an unknown checkpoint", c.on_decline(110, A1, CheckpointId(0), s0, "x".into())),
            ("a metadata report with no write in flight", c.on_metadata_persisted(110, cp1, Ok(()))),
            ("end of input from another attempt", c.on_end_of_input(110, AttemptId(0), s0)),
            ("end of input from a non-source", c.on_end_of_input(110, A1, subtask(2))),
        ];
        for (name, out) in &cases {
            assert!(out.is_empty(), "{name}: {out:?}");
        }
        assert_eq!(c.stale_messages(), cases.len() as u64);
        // A duplicate ack and a decline after an ack are ignored too.
        assert!(c.on_ack(120, A1, cp1, s0, handle(s0, cp1)).is_empty());
        assert!(c.on_ack(121, A1, cp1, s0, handle(s0, cp1)).is_empty());
        assert!(c.on_decline(122, A1, cp1, s0, "late".into()).is_empty());
        assert_eq!(c.stale_messages(), cases.len() as u64 + 2);
        assert_eq!(c.pending_ids(), vec![cp1]);
        assert_eq!(c.abort_counts().total(), 0);
    }

    #[test]
    fn a_decline_because_a_newer_barrier_overtook_the_alignment_is_no_failure() {
        // tolerable_failures 0: any counted failure fails the job.
        let mut c = coordinator(config());
        c.tick(0);
        c.tick(100);
        let got: Vec<String> = c.on_decline_subsumed(110, A1, CheckpointId(1), subtask(2), CheckpointId(2)).iter().map(line).collect();
        assert_eq!(got, vec!["abort cp1 declined by op1#0: overtaken by cp2"]);
        assert_eq!((c.abort_counts().declined_subsumed, c.failed_consecutive(), c.has_failed_job()), (1, 0, false));
        // The control: the same decline for any other reason fails the job.
        c.tick(200);
        let got: Vec<String> = c.on_decline(210, A1, CheckpointId(2), subtask(2), "disk full".into()).iter().map(line).collect();
        assert!(got.contains(&"fail job".to_string()), "{got:?}");
        assert_eq!(c.failed_consecutive(), 1);
    }

    #[test]
    fn an_ack_whose_state_cannot_be_restored_aborts_the_checkpoint() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 3, ..config() });
        c.tick(0);
        c.tick(100);
        let s = subtask(3);
        let mut bad = handle(s, CheckpointId(1));
        bad.keyed.as_mut().unwrap().key_groups.pop();
        let got: Vec<String> = c.on_ack(110, A1, CheckpointId(1), s, bad).iter().map(line).collect();
        assert_eq!(got, vec!["abort cp1 declined by op1#1"]);
        assert_eq!(c.abort_counts().declined, 1);
        assert_eq!(c.failed_consecutive(), 1);
    }

    #[test]
    fn persisted_metadata_holds_every_handle_in_subtask_order() {
        let mut c = coordinator(config());
        c.tick(0);
        c.tick(100);
        let mut out = Vec::new();
        for s in [3, 1, 2, 0] {
            out = apply(&mut c, Step::Ack(150 + s as u64, 1, s));
        }
        let [CoordinatorCommand::PersistMetadata { checkpoint_id, metadata }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(*checkpoint_id, CheckpointId(1));
        assert_eq!((metadata.attempt, metadata.triggered_at_ms, metadata.completed_at_ms, metadata.is_final), (A1, 100, 150, false));
        for (op, max_p) in [(SRC, 4), (SUM, 8)] {
            let o = &metadata.operators[&op];
            assert_eq!((o.parallelism, o.max_parallelism), (2, max_p));
            let order: Vec<SubtaskId> = o.subtasks.iter().map(|h| h.subtask).collect();
            assert_eq!(order, vec![SubtaskId::new(op, 0), SubtaskId::new(op, 1)]);
        }
        assert_eq!(CheckpointMetadata::from_bytes(&metadata.to_bytes().unwrap()).unwrap(), *metadata);
        assert_eq!(metadata.restore_assignment(SUM, 4).unwrap().len(), 4);
        c.on_metadata_persisted(160, CheckpointId(1), Ok(()));
        assert_eq!(c.latest_completed(), Some(metadata));
        assert_eq!(c.completed_count(), 1);
    }

    #[test]
    fn a_restored_coordinator_continues_the_ids_and_discards_the_old_latest() {
        let mut first = coordinator(config());
        script("first attempt", &mut first, &[
            (Step::Tick(0), &[]),
            (Step::Tick(100), &["trigger cp1"]),
            (Step::AckAll(110, 1), &["persist cp1"]),
            (Step::MetaOk(120, 1), &["complete cp1"]),
            (Step::Tick(200), &["trigger cp2"]),
            (Step::AttemptEnded(210), &["abort cp2 attempt ended"]),
        ]);
        let latest = first.latest_completed().cloned();
        let next = first.next_checkpoint_id();
        assert_eq!(next, CheckpointId(3));
        let mut second = CheckpointCoordinator::restored(config(), plan(), AttemptId(2), latest.clone(), next).unwrap();
        assert_eq!(second.latest_completed(), latest.as_ref());
        second.tick(1_000);
        let t = second.tick(1_100);
        assert_eq!(t.iter().map(line).collect::<Vec<_>>(), vec!["trigger cp3"]);
        // Acks of the old attempt for the new id are stale.
        let s0 = subtask(0);
        assert!(second.on_ack(1_110, A1, CheckpointId(3), s0, handle(s0, CheckpointId(3))).is_empty());
        assert_eq!(second.stale_messages(), 1);
        let acks: Vec<CoordinatorCommand> = (0..4)
            .flat_map(|i| second.on_ack(1_120, AttemptId(2), CheckpointId(3), subtask(i), handle(subtask(i), CheckpointId(3))))
            .collect();
        assert_eq!(acks.iter().map(line).collect::<Vec<_>>(), vec!["persist cp3"]);
        let done = second.on_metadata_persisted(1_130, CheckpointId(3), Ok(()));
        assert_eq!(done.iter().map(line).collect::<Vec<_>>(), vec!["complete cp3", "discard cp1"]);
    }

    #[test]
    fn bad_configurations_and_plans_are_typed_errors() {
        let latest = {
            let mut c = coordinator(config());
            for s in [Step::Tick(0), Step::Tick(100), Step::AckAll(110, 1), Step::MetaOk(120, 1)] {
                apply(&mut c, s);
            }
            c.latest_completed().cloned()
        };
        let mut dup = plan();
        dup.all_subtasks.push(subtask(0));
        let mut missing = plan();
        missing.all_subtasks.pop();
        let mut foreign_source = plan();
        foreign_source.sources.push(SubtaskId::new(OperatorId(9), 0));
        let mut no_sources = plan();
        no_sources.sources.clear();
        let mut beyond = plan();
        beyond.all_subtasks.push(SubtaskId::new(SUM, 2));
        let mut unknown_op = plan();
        unknown_op.all_subtasks.push(SubtaskId::new(OperatorId(9), 0));
        let mut zero_p = plan();
        zero_p.operators.get_mut(&SUM).unwrap().parallelism = 0;
        let cases: Vec<(&str, CheckpointConfig, CheckpointPlan, CheckpointId, CoordinatorError)> = vec![
            ("zero interval", CheckpointConfig { interval_ms: 0, ..config() }, plan(), CheckpointId(1), ConfigError::ZeroInterval.into()),
            ("zero timeout", CheckpointConfig { timeout_ms: 0, ..config() }, plan(), CheckpointId(1), ConfigError::ZeroTimeout.into()),
            ("zero concurrent", CheckpointConfig { max_concurrent: 0, ..config() }, plan(), CheckpointId(1), ConfigError::MaxConcurrentOutOfRange { max_concurrent: 0 }.into()),
            ("too many concurrent", CheckpointConfig { max_concurrent: 65, ..config() }, plan(), CheckpointId(1), ConfigError::MaxConcurrentOutOfRange { max_concurrent: 65 }.into()),
            ("zero retained", CheckpointConfig { retained_completed_max: 0, ..config() }, plan(), CheckpointId(1), ConfigError::RetainedOutOfRange { retained_completed_max: 0 }.into()),
            ("a subtask twice", config(), dup, CheckpointId(1), PlanError::DuplicateSubtask(subtask(0)).into()),
            ("a subtask missing", config(), missing, CheckpointId(1), PlanError::MissingSubtask(SubtaskId::new(SUM, 1)).into()),
            ("a source outside the plan", config(), foreign_source, CheckpointId(1), PlanError::SourceNotInPlan(SubtaskId::new(OperatorId(9), 0)).into()),
            ("no sources", config(), no_sources, CheckpointId(1), PlanError::NoSources.into()),
            ("an index beyond the parallelism", config(), beyond, CheckpointId(1), PlanError::IndexOutOfRange { subtask: SubtaskId::new(SUM, 2), parallelism: 2 }.into()),
            ("an unknown operator", config(), unknown_op, CheckpointId(1), PlanError::UnknownOperator(SubtaskId::new(OperatorId(9), 0)).into()),
            ("parallelism 0", config(), zero_p, CheckpointId(1), PlanError::InvalidParallelism { operator: SUM, parallelism: 0, max_parallelism: 8 }.into()),
            ("checkpoint id 0", config(), plan(), CheckpointId(0), CoordinatorError::ZeroCheckpointId),
            ("an id not above the latest", config(), plan(), CheckpointId(1), CoordinatorError::IdNotAfterLatest { next: CheckpointId(1), latest: CheckpointId(1) }),
        ];
        for (name, config, plan, next, want) in cases {
            let latest = if matches!(want, CoordinatorError::IdNotAfterLatest { .. }) { latest.clone() } else { None };
            let got = CheckpointCoordinator::restored(config, plan, A1, latest, next).unwrap_err();
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(CheckpointConfig::default().validate(), Ok(()));
        assert_eq!(CheckpointConfig::default().max_concurrent, 1);
        assert_eq!(CheckpointConfig::default().tolerable_failures, 0);
    }

    #[test]
    fn next_wakeup_names_the_next_trigger_or_expiry() {
        let mut c = coordinator(config());
        assert_eq!(c.next_wakeup_ms(), Some(0), "before the first tick: tick now");
        c.tick(50);
        assert_eq!(c.next_wakeup_ms(), Some(150));
        c.tick(150);
        assert_eq!(c.next_wakeup_ms(), Some(1_150), "max_concurrent reached: only the expiry");
        apply(&mut c, Step::AckAll(200, 1));
        assert_eq!(c.next_wakeup_ms(), None, "a write in flight neither expires nor lets a trigger through");
        apply(&mut c, Step::MetaOk(210, 1));
        assert_eq!(c.next_wakeup_ms(), Some(250));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(ABORT_REASON_BYTES_MAX);
        let cut = bounded(&long);
        assert!(cut.len() <= ABORT_REASON_BYTES_MAX && cut.len() >= ABORT_REASON_BYTES_MAX - 1);
        assert_eq!(bounded("short"), "short");
    }

    /// A random input for the property test; picks are taken modulo whatever exists.
    #[derive(Clone, Copy, Debug)]
    enum Op {
        Tick(u64),
        Ack(usize, usize),
        AckRest(usize),
        Decline(usize, usize),
        StaleAck(usize, usize),
        UnknownAck(usize),
        MetaOk(usize),
        MetaErr(usize),
        EndOfInput(usize),
        AttemptEnded,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..400).prop_map(Op::Tick),
            6 => (any::<usize>(), 0usize..4).prop_map(|(p, s)| Op::Ack(p, s)),
            3 => any::<usize>().prop_map(Op::AckRest),
            1 => (any::<usize>(), 0usize..4).prop_map(|(p, s)| Op::Decline(p, s)),
            1 => (any::<usize>(), 0usize..4).prop_map(|(p, s)| Op::StaleAck(p, s)),
            1 => (0usize..4).prop_map(Op::UnknownAck),
            3 => any::<usize>().prop_map(Op::MetaOk),
            1 => any::<usize>().prop_map(Op::MetaErr),
            1 => (0usize..2).prop_map(Op::EndOfInput),
        ]
    }

    fn any_config() -> impl Strategy<Value = CheckpointConfig> {
        (1u64..300, 0u64..200, 1u32..4, 100u64..1_500, 0u32..4, 1u32..4).prop_map(|(i, p, c, t, f, r)| CheckpointConfig {
            interval_ms: i,
            min_pause_ms: p,
            max_concurrent: c,
            timeout_ms: t,
            tolerable_failures: f,
            retained_completed_max: r,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever arrives in whatever order: a checkpoint completes only with an ack from every
        /// planned subtask and a successful metadata write for it, and only in the call that
        /// reported that write; completed ids strictly increase and complete once; the latest
        /// completed checkpoint is never discarded; FailJob and JobFinished come at most once.
        #[test]
        fn completion_needs_every_ack_and_a_durable_write(
            config in any_config(),
            ops in prop::collection::vec(op(), 1..120),
            end_at in prop::option::weighted(0.3, 0usize..120),
        ) {
            let mut c = coordinator(config);
            let mut now = 0u64;
            let mut acked: BTreeMap<CheckpointId, BTreeSet<SubtaskId>> = BTreeMap::new();
            let mut persist_requested: BTreeSet<CheckpointId> = BTreeSet::new();
            let mut completed: Vec<CheckpointId> = Vec::new();
            let mut aborted: BTreeSet<CheckpointId> = BTreeSet::new();
            let (mut fail_jobs, mut finished) = (0, 0);
            let mut ended = false;
            // Checkpoints whose metadata write was issued and has not been reported yet.
            let mut persisting: BTreeSet<CheckpointId> = BTreeSet::new();
            let all: BTreeSet<SubtaskId> = plan().all_subtasks.into_iter().collect();
            for (i, op) in ops.into_iter().enumerate() {
                let op = if end_at == Some(i) { Op::AttemptEnded } else { op };
                let pending = c.pending_ids();
                let pick = |p: usize| (!pending.is_empty()).then(|| pending[p % pending.len()]);
                let mut wrote_ok: Option<CheckpointId> = None;
                let out: Vec<CoordinatorCommand> = match op {
                    Op::Tick(dt) => { now += dt; c.tick(now) }
                    Op::Ack(p, s) => match pick(p) {
                        Some(id) => {
                            let out = c.on_ack(now, A1, id, subtask(s), handle(subtask(s), id));
                            acked.entry(id).or_default().insert(subtask(s));
                            out
                        }
                        None => vec![],
                    },
                    Op::AckRest(p) => match pick(p) {
                        Some(id) => (0..4).flat_map(|s| {
                            acked.entry(id).or_default().insert(subtask(s));
                            c.on_ack(now, A1, id, subtask(s), handle(subtask(s), id))
                        }).collect(),
                        None => vec![],
                    },
                    Op::Decline(p, s) => pick(p).map(|id| c.on_decline(now, A1, id, subtask(s), "no".into())).unwrap_or_default(),
                    Op::StaleAck(p, s) => pick(p).map(|id| c.on_ack(now, AttemptId(0), id, subtask(s), handle(subtask(s), id))).unwrap_or_default(),
                    Op::UnknownAck(s) => c.on_ack(now, A1, c.next_checkpoint_id(), subtask(s), handle(subtask(s), CheckpointId(0))),
                    Op::MetaOk(p) => match pick(p) {
                        Some(id) => { wrote_ok = Some(id); c.on_metadata_persisted(now, id, Ok(())) }
                        None => vec![],
                    },
                    Op::MetaErr(p) => pick(p).map(|id| c.on_metadata_persisted(now, id, Err("io".into()))).unwrap_or_default(),
                    Op::EndOfInput(s) => c.on_end_of_input(now, A1, subtask(s)),
                    Op::AttemptEnded => {
                        let out = c.on_attempt_ended(now);
                        // The state of the checkpoint whose write is in flight may be durable: never discarded.
                        for cmd in &out {
                            if let CoordinatorCommand::DiscardAborted { checkpoint_id, .. } = cmd {
                                prop_assert!(!persisting.contains(checkpoint_id), "{} discarded while its write may have landed", checkpoint_id);
                            }
                        }
                        ended = true;
                        out
                    }
                };
                if ended && !matches!(op, Op::AttemptEnded) {
                    prop_assert!(out.is_empty(), "{:?} after the attempt ended: {:?}", op, out);
                }
                for cmd in &out {
                    match cmd {
                        CoordinatorCommand::PersistMetadata { checkpoint_id, metadata } => {
                            prop_assert_eq!(acked.get(checkpoint_id), Some(&all), "{} persisted without every ack", checkpoint_id);
                            prop_assert_eq!(metadata.operators.values().map(|o| o.subtasks.len()).sum::<usize>(), all.len());
                            prop_assert!(persist_requested.insert(*checkpoint_id), "{} persisted twice", checkpoint_id);
                            prop_assert!(persisting.is_empty(), "a second metadata write while {:?} is in flight", persisting);
                            persisting.insert(*checkpoint_id);
                        }
                        CoordinatorCommand::NotifyComplete { checkpoint_id } => {
                            prop_assert_eq!(wrote_ok, Some(*checkpoint_id), "{} completed without its write succeeding", checkpoint_id);
                            prop_assert!(persist_requested.contains(checkpoint_id));
                            prop_assert_eq!(acked.get(checkpoint_id), Some(&all));
                            prop_assert!(completed.last().is_none_or(|last| last < checkpoint_id), "{} after {:?}", checkpoint_id, completed);
                            prop_assert!(!aborted.contains(checkpoint_id));
                            prop_assert!(persisting.remove(checkpoint_id));
                            completed.push(*checkpoint_id);
                        }
                        CoordinatorCommand::NotifyAborted { checkpoint_id, .. } => {
                            prop_assert!(!completed.contains(checkpoint_id), "{} aborted after completing", checkpoint_id);
                            prop_assert!(aborted.insert(*checkpoint_id), "{} aborted twice", checkpoint_id);
                            if !matches!(op, Op::AttemptEnded) {
                                persisting.remove(checkpoint_id);
                            }
                        }
                        CoordinatorCommand::Discard { metadata } => {
                            prop_assert_ne!(Some(metadata.checkpoint_id), c.latest_completed().map(|l| l.checkpoint_id));
                            prop_assert!(completed.contains(&metadata.checkpoint_id));
                        }
                        CoordinatorCommand::DiscardAborted { checkpoint_id, .. } => {
                            prop_assert!(aborted.contains(checkpoint_id));
                        }
                        CoordinatorCommand::FailJob { .. } => fail_jobs += 1,
                        CoordinatorCommand::JobFinished { checkpoint_id } => {
                            finished += 1;
                            prop_assert_eq!(completed.last(), Some(checkpoint_id));
                        }
                        CoordinatorCommand::Trigger { checkpoint_id, .. } => {
                            prop_assert!(completed.last().is_none_or(|last| last < checkpoint_id));
                        }
                    }
                }
                prop_assert!(fail_jobs <= 1 && finished <= 1);
                prop_assert!(c.pending_ids().len() <= config.max_concurrent as usize);
                prop_assert!(c.retained_completed().count() <= config.retained_completed_max as usize);
                prop_assert_eq!(c.latest_completed().map(|l| l.checkpoint_id), completed.last().copied());
            }
            prop_assert_eq!(c.completed_count(), completed.len() as u64);
            prop_assert_eq!(c.abort_counts().total(), aborted.len() as u64);
        }
    }
}
