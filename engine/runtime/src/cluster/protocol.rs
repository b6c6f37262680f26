//! Messages between the job manager (JM), task managers (TMs) and clients.
//!
//! All control traffic is request/response over [`crate::transport::rpc`] (one connection per
//! client; calls time out, because a partition never breaks a simulated TCP connection).
//!
//! * TM → JM ([`JmRequest`], served by the JM on `JM_RPC_PORT`): registration, heartbeats,
//!   checkpoint acks and declines, subtask failures, end of input, job submission and status.
//! * JM → TM ([`TmRequest`], served by each TM on `TM_RPC_PORT`): deploy, trigger a checkpoint
//!   at the sources, notify complete / aborted, cancel an attempt.
//! * Producer subtask → consumer TM (data, `TM_DATA_PORT`): a [`ChannelHello`] naming the
//!   attempt and channel, then `StreamElement<Vec<u8>>`-style frames (see the task manager).
//!
//! **Fencing**: every message about running work carries the [`AttemptId`] it belongs to. A TM
//! drops anything for an attempt older than the newest it has seen; the JM's coordinator ignores
//! acks, declines and end-of-input from any attempt but the current one; a consumer refuses a
//! data channel from another attempt. So a zombie (a TM cut off by a partition that keeps
//! running) has no effect once the job moved on.

use crate::cluster::jobs::JobSpec;
use floe_core::coordinator::{SubtaskRestore, SubtaskStateHandle};
use floe_core::element::Barrier;
use floe_core::ids::{AttemptId, CheckpointId, SubtaskId, TaskManagerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A task manager's incarnation: bumps every time its process (node) starts, so the JM can
/// tell a restarted TM from a delayed message of the old one.
pub type Incarnation = u64;

/// What a task manager asks of the job manager (or a client asks).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum JmRequest {
    /// A TM offers its slots.
    Register {
        /// Which TM.
        tm: TaskManagerId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Its IP; control on `TM_RPC_PORT`, data on `TM_DATA_PORT`.
        addr: std::net::IpAddr,
        /// Slots offered (each runs one subtask of every vertex: Flink's slot sharing).
        slots: u32,
    },
    /// A TM is alive; it lists what it runs.
    Heartbeat {
        /// Which TM.
        tm: TaskManagerId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// The attempt it runs subtasks of, if any.
        running_attempt: Option<AttemptId>,
    },
    /// A subtask's snapshot for a checkpoint is durable in the blob store.
    Acknowledge {
        /// Attempt of the subtask.
        attempt: AttemptId,
        /// Checkpoint.
        checkpoint_id: CheckpointId,
        /// The subtask.
        subtask: SubtaskId,
        /// Where its state is.
        handle: SubtaskStateHandle,
    },
    /// A subtask could not take part in a checkpoint.
    Decline {
        /// Attempt of the subtask.
        attempt: AttemptId,
        /// Checkpoint.
        checkpoint_id: CheckpointId,
        /// The subtask.
        subtask: SubtaskId,
        /// Why.
        reason: String,
        /// Set when the barrier of this newer checkpoint overtook the alignment: not a failure.
        overtaken_by: Option<CheckpointId>,
    },
    /// A subtask failed: the job must fail over.
    SubtaskFailed {
        /// Attempt of the subtask.
        attempt: AttemptId,
        /// The subtask.
        subtask: SubtaskId,
        /// Why.
        reason: String,
    },
    /// A source subtask reached the end of its (bounded) input.
    EndOfInput {
        /// Attempt of the subtask.
        attempt: AttemptId,
        /// The source subtask.
        subtask: SubtaskId,
    },
    /// A client submits a job. Submitting the same job again while it runs is a no-op.
    SubmitJob(JobSpec),
    /// A client asks how the job is doing.
    JobStatus,
}

/// The job manager's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JmResponse {
    /// Accepted.
    Ok,
    /// The JM does not know this TM (e.g. the JM restarted): register again.
    RegisterAgain,
    /// The message was for an attempt that is no longer current; it had no effect.
    Stale,
    /// The job's state.
    Status(JobStatusReport),
    /// The request was refused.
    Error(String),
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// No job submitted.
    NoJob,
    /// Waiting for enough slots.
    WaitingForSlots,
    /// Deployed and running.
    Running,
    /// Failing over: waiting for the restart delay.
    Restarting,
    /// Every source ended and the final checkpoint completed.
    Finished,
    /// The restart strategy gave up.
    Failed(String),
}

/// The job's status as the JM sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatusReport {
    /// State.
    pub state: JobState,
    /// Current attempt.
    pub attempt: AttemptId,
    /// Latest completed checkpoint.
    pub latest_checkpoint: Option<CheckpointId>,
    /// Checkpoints completed in this JM's lifetime (not across JM restarts).
    pub checkpoints_completed: u64,
    /// Restarts (failovers) in this JM's lifetime.
    pub restarts: u64,
}

/// One subtask to run, and what to restore it from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubtaskDeployment {
    /// The subtask.
    pub subtask: SubtaskId,
    /// State to restore (`None` on a fresh start).
    pub restore: Option<SubtaskRestore>,
}

/// What the job manager asks of a task manager.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant, reason = "a Deploy is sent once per attempt; boxing buys nothing")]
pub enum TmRequest {
    /// Run these subtasks of this attempt. Cancels every subtask of an older attempt first.
    Deploy {
        /// The attempt.
        attempt: AttemptId,
        /// The job (the TM builds the same execution graph from it).
        job: JobSpec,
        /// The checkpoint restored from, if any.
        restored_from: Option<CheckpointId>,
        /// This TM's subtasks.
        subtasks: Vec<SubtaskDeployment>,
        /// Where every subtask of the attempt runs (TM data address), so producers can connect.
        locations: BTreeMap<SubtaskId, SocketAddr>,
    },
    /// Inject this barrier at these source subtasks.
    TriggerCheckpoint {
        /// The attempt.
        attempt: AttemptId,
        /// The barrier.
        barrier: Barrier,
        /// The source subtasks on this TM.
        sources: Vec<SubtaskId>,
    },
    /// Checkpoint complete: sinks commit.
    NotifyComplete {
        /// The attempt.
        attempt: AttemptId,
        /// The checkpoint.
        checkpoint_id: CheckpointId,
    },
    /// Checkpoint aborted.
    NotifyAborted {
        /// The attempt.
        attempt: AttemptId,
        /// The checkpoint.
        checkpoint_id: CheckpointId,
    },
    /// Stop every subtask of this attempt and older ones.
    Cancel {
        /// The attempt.
        attempt: AttemptId,
    },
}

/// A task manager's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TmResponse {
    /// Done.
    Ok,
    /// The request was for an attempt older than the TM's newest: ignored.
    Stale,
    /// Refused.
    Error(String),
}

/// The first frame on a data connection: which channel of which attempt this is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHello {
    /// The attempt of the producer.
    pub attempt: AttemptId,
    /// The edge index in the execution graph.
    pub edge: usize,
    /// The producing subtask.
    pub producer: SubtaskId,
    /// The consuming subtask.
    pub consumer: SubtaskId,
}
