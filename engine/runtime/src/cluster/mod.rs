//! The cluster: a job manager and task managers that deploy a job, move records between
//! subtasks, take aligned checkpoints, commit output through two-phase commit, and recover from
//! crashes — floe-core's state machines put to work in real hosts.
//!
//! | module | what |
//! |---|---|
//! | [`protocol`] | every message between job manager, task managers and clients |
//! | [`jobs`] | jobs as Rust code registered by name (the word count, the two-shuffle job) |
//! | [`job_manager`] | scheduling, the checkpoint coordinator, failure detection, HA recovery |
//! | [`task_manager`] | slots, deployment, the subtask loops, data channels, sources and sinks |
//! | `sim` | (under `--cfg madsim`) the whole cluster as madsim nodes: the world tests run jobs in |
//!
//! Addresses: every node has one IP; the job manager serves its RPC on [`JM_RPC_PORT`]; a task
//! manager serves control RPC on [`TM_RPC_PORT`] and data channels on [`TM_DATA_PORT`].

pub mod job_manager;
pub mod jobs;
pub mod protocol;
#[cfg(madsim)]
pub mod sim;
pub mod task_manager;

/// The job manager's RPC port.
pub const JM_RPC_PORT: u16 = 6123;
/// A task manager's control RPC port.
pub const TM_RPC_PORT: u16 = 6121;
/// A task manager's data-channel port (producer subtasks connect here).
pub const TM_DATA_PORT: u16 = 6122;
