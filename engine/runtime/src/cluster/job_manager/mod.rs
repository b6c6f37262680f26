//! The job manager: Flink's `Dispatcher` + `JobMaster` + the host of the `CheckpointCoordinator`
//! + the HA services, for one job at a time.
//!
//! * **One owner task.** Every piece of state lives in one actor ([`actor`]) fed by an mpsc from
//!   the RPC handlers, by the replies of the task-manager outboxes and of the HA writer, and by
//!   timers (`tokio::time`). No lock is held across an await; events are handled in one order.
//!   `now_ms` is the time since the job manager started (virtual under madsim).
//! * **Submission** builds the job graph from the registry (an error is answered at once), writes
//!   `{job}/ha/job` then `_jm/current`, answers, and schedules.
//! * **Scheduling** ([`scheduler`]): slot sharing, slots of live task managers in (id, slot)
//!   order, deploy with the restore assignment of the latest completed checkpoint. `ha/job` with
//!   the bumped attempt is durable before any `Deploy` leaves.
//! * **Checkpoints**: floe-core's coordinator decides; the job manager carries out its commands.
//!   A trigger leaves only once a durable `ha/job` reserves its id (ids are reserved a block at a
//!   time, so a slow blob store does not hold up every trigger); a checkpoint completes only after
//!   `_metadata` and then `ha/latest` are durable ([`ha`]).
//! * **Failure detection**: heartbeat timeouts, `SubtaskFailed`, a task manager re-registering
//!   with a new incarnation, a refused or failed deploy, too many failed checkpoints. Failover is
//!   global: cancel everything, wait for the restart strategy's delay (jitter from a ChaCha RNG
//!   seeded with [`JobManagerConfig::seed`]), redeploy a new attempt from the latest completed
//!   checkpoint. Messages of older attempts are answered `Stale` and have no effect.
//! * **Recovery (HA)**: a (re)started job manager reads `_jm/current`, then that job's `ha/job`,
//!   `ha/finished`, `ha/failed` and `ha/latest`, and recovers a running job with a new attempt
//!   and checkpoint ids above every id used before. A damaged or missing latest checkpoint fails
//!   the job loudly (`job_failed`); it never restarts empty (FLINK-34518).
//! * **End**: after the final checkpoint completes and every task manager confirmed its commit
//!   notification, `ha/finished` is written, the job is `Finished`, the task managers are told to
//!   cancel.

pub mod actor;
pub mod ha;
pub mod outbox;
pub mod scheduler;

use crate::blob::BlobClient;
use crate::cluster::jobs::{JobRegistry, JobSpec};
use crate::cluster::protocol::{JmRequest, JmResponse, JobStatusReport};
use crate::cluster::JM_RPC_PORT;
use crate::transport::rpc::{serve, RpcClient, RpcConfig, RpcError};
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the actor; further RPC handlers wait (and their callers time out).
pub const REQUEST_QUEUE_MAX: usize = 4_096;
/// The blob client's call timeout is at least this long: HA writes are retried on timeouts, and a
/// slow store should not make every write time out.
pub const BLOB_CALL_TIMEOUT_MS_MIN: u64 = 10_000;

/// The job manager's settings.
#[derive(Clone)]
pub struct JobManagerConfig {
    /// This node's IP (the RPC server binds `ip:JM_RPC_PORT`).
    pub ip: IpAddr,
    /// The broker (unused by the job manager itself; kept for symmetry and future use).
    pub broker: SocketAddr,
    /// The blob store.
    pub blob: SocketAddr,
    /// The jobs this binary can run.
    pub registry: JobRegistry,
    /// A task manager silent this long is lost (default 1 000 ms).
    pub heartbeat_timeout_ms: u64,
    /// RPC settings (task managers, blob store).
    pub rpc: RpcConfig,
    /// Seed of the restart jitter; the job manager draws no other randomness.
    pub seed: u64,
}

impl JobManagerConfig {
    /// Settings with the defaults: heartbeat timeout 1 s, default RPC settings, seed 0.
    pub fn new(ip: IpAddr, broker: SocketAddr, blob: SocketAddr, registry: JobRegistry) -> Self {
        JobManagerConfig { ip, broker, blob, registry, heartbeat_timeout_ms: 1_000, rpc: RpcConfig::default(), seed: 0 }
    }
}

impl std::fmt::Debug for JobManagerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManagerConfig")
            .field("ip", &self.ip)
            .field("blob", &self.blob)
            .field("jobs", &self.registry.names())
            .field("heartbeat_timeout_ms", &self.heartbeat_timeout_ms)
            .field("rpc", &self.rpc)
            .field("seed", &self.seed)
            .finish()
    }
}

/// Runs a job manager until the task is dropped (the node is killed). Returns an error only
/// when it cannot start (bind, an unreadable HA store) or stops on a fatal error (the outcome
/// of a checkpoint-pointer write is unknown).
pub async fn run_job_manager(config: JobManagerConfig) -> io::Result<()> {
    if config.heartbeat_timeout_ms == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "heartbeat_timeout_ms must be above 0"));
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.ip, JM_RPC_PORT)).await?;
    let (req_tx, req_rx) = mpsc::channel::<(JmRequest, oneshot::Sender<JmResponse>)>(REQUEST_QUEUE_MAX);
    let server = tokio::spawn(serve(listener, move |req: JmRequest| {
        let tx = req_tx.clone();
        async move {
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send((req, reply_tx)).await.is_err() {
                return JmResponse::Error("the job manager is stopping".into());
            }
            reply_rx.await.unwrap_or_else(|_| JmResponse::Error("the job manager dropped the request".into()))
        }
    }));
    struct AbortOnDrop(tokio::task::JoinHandle<io::Result<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _server = AbortOnDrop(server);
    let blob_rpc = RpcConfig { call_timeout_ms: config.rpc.call_timeout_ms.max(BLOB_CALL_TIMEOUT_MS_MIN), ..config.rpc.clone() };
    let blob = BlobClient::new(config.blob, blob_rpc);
    actor::JobMaster::new(config, blob).run(req_rx).await
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The job manager could not be reached or did not answer in time.
    #[error("job manager unreachable: {0}")]
    Rpc(#[from] RpcError),
    /// The job manager refused the request.
    #[error("job manager refused: {0}")]
    Refused(String),
    /// The job manager answered something this call does not expect.
    #[error("unexpected answer from the job manager: {0:?}")]
    Unexpected(JmResponse),
}

/// A client of the job manager (Flink's `RestClusterClient`, over floe's RPC).
#[derive(Clone, Debug)]
pub struct JobClient {
    rpc: RpcClient<JmRequest, JmResponse>,
}

impl JobClient {
    /// A client of the job manager at `jm` (connects lazily).
    pub fn new(jm: SocketAddr, rpc: RpcConfig) -> Self {
        JobClient { rpc: RpcClient::new(jm, rpc) }
    }

    /// Submits a job; `Ok` once it is durably recorded. Submitting the running job again is a
    /// no-op; another job while one runs is refused.
    pub async fn submit(&self, spec: JobSpec) -> Result<(), ClientError> {
        match self.rpc.call(JmRequest::SubmitJob(spec)).await? {
            JmResponse::Ok => Ok(()),
            JmResponse::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// The job's status.
    pub async fn status(&self) -> Result<JobStatusReport, ClientError> {
        match self.rpc.call(JmRequest::JobStatus).await? {
            JmResponse::Status(s) => Ok(s),
            JmResponse::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Unexpected(other)),
        }
    }
}
