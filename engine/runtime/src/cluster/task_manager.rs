//! The task manager: Flink's `TaskExecutor` with its network stack — slots, deployments, one
//! task per subtask, data channels between subtasks, sources that read the broker and sinks that
//! write it through two-phase commit.
//!
//! A task manager node runs three things:
//!
//! * the control RPC server on `TM_RPC_PORT` ([`TmRequest`]): `Deploy` cancels every subtask of
//!   an older attempt (its task is dropped, its channels close), builds the execution graph from
//!   the [`JobSpec`] with the registry and starts one task per deployed subtask (state restore
//!   happens inside the task, so the RPC answers at once); `TriggerCheckpoint`, `NotifyComplete`
//!   and `NotifyAborted` are queued into the subtasks' control channels, in order with everything
//!   else they do; `Cancel` stops an attempt. Anything for an attempt older than the newest seen is
//!   answered [`TmResponse::Stale`] and has no effect (`zombie_fenced`);
//! * the data acceptor on `TM_DATA_PORT`: a producer subtask connects, sends a [`ChannelHello`],
//!   and the connection is handed to the consumer subtask of that attempt (waiting up to
//!   [`CONSUMER_WAIT_MS`] for its deployment; another attempt is refused and the connection closed);
//! * registration and heartbeats to the job manager: `Register` until accepted, then `Heartbeat`
//!   every `heartbeat_interval_ms` (re-registering on `RegisterAgain`, backing off up to
//!   [`HEARTBEAT_BACKOFF_MAX_MS`] while the job manager is unreachable).
//!
//! The subtask loop is in [`subtask`], the sink's broker side in [`sink_io`], snapshot blobs in
//! [`state_io`], and the channel wire format and handshake in [`wire`].

pub mod sink_io;
pub mod state_io;
pub mod subtask;
pub mod wire;

use crate::blob::BlobClient;
use crate::broker::BrokerClient;
use crate::cluster::jobs::{JobRegistry, JobSpec};
use crate::cluster::protocol::{ChannelHello, Incarnation, JmRequest, JmResponse, TmRequest, TmResponse};
use crate::cluster::{TM_DATA_PORT, TM_RPC_PORT};
use crate::transport::channel::DataReceiver;
use crate::transport::{serve, RpcClient, RpcConfig};
use floe_core::element::Barrier;
use floe_core::ids::{AttemptId, ChannelIndex, CheckpointId, SubtaskId, TaskManagerId};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use wire::{ChannelElement, HelloReply};

/// How long a `NotifyComplete` waits for the subtasks to carry it out (below the JM's call
/// timeout, so the JM hears an answer).
pub const COMMIT_CONFIRM_MS: u64 = 750;
/// Control messages waiting for one subtask; more are refused (the JM retries or times out).
pub const CONTROL_QUEUE_MAX: usize = 256;
/// A data connection waits this long for its consumer subtask to be deployed.
pub const CONSUMER_WAIT_MS: u64 = 10_000;
/// How often a waiting data connection looks for its consumer again.
pub const CONSUMER_POLL_MS: u64 = 10;
/// Data-connection handshakes in progress at once; further connections wait to be served.
pub const HANDSHAKES_PENDING_MAX: usize = 256;
/// The longest pause between registration / heartbeat attempts while the JM is unreachable.
pub const HEARTBEAT_BACKOFF_MAX_MS: u64 = 1_000;
/// A message to the job manager (ack, decline, failure, end of input) is tried this many times.
pub const JM_CALL_ATTEMPTS_MAX: u32 = 10;
/// Pause between those attempts.
pub const JM_CALL_BACKOFF_MS: u64 = 100;

/// A task manager's settings.
#[derive(Clone)]
pub struct TaskManagerConfig {
    /// Which task manager.
    pub id: TaskManagerId,
    /// This process's incarnation (bumps on every restart).
    pub incarnation: Incarnation,
    /// The IP it serves on (`TM_RPC_PORT`, `TM_DATA_PORT`).
    pub ip: IpAddr,
    /// Slots offered.
    pub slots: u32,
    /// The job manager's RPC address.
    pub jm: SocketAddr,
    /// The broker.
    pub broker: SocketAddr,
    /// The blob store.
    pub blob: SocketAddr,
    /// The jobs this binary can run.
    pub registry: JobRegistry,
    /// Heartbeat period (default 100 ms).
    pub heartbeat_interval_ms: u64,
    /// A task manager that has not heard from the job manager for this long cancels every
    /// subtask it runs (Flink's TaskExecutor does the same when its job-manager heartbeat times
    /// out): cut off by a partition, it would otherwise go on as a zombie — opening transactions
    /// that no restore fences — until a cancel reaches it. Keep it at most the job manager's
    /// heartbeat timeout, so the zombie is gone before the job manager redeploys (default 1 000 ms).
    pub jm_silence_ms_max: u64,
    /// RPC settings (JM, broker and blob clients).
    pub rpc: RpcConfig,
}

impl TaskManagerConfig {
    /// A configuration with the default heartbeat interval (100 ms) and RPC settings.
    #[allow(clippy::too_many_arguments)]
    pub fn new(id: TaskManagerId, incarnation: Incarnation, ip: IpAddr, slots: u32, jm: SocketAddr, broker: SocketAddr, blob: SocketAddr, registry: JobRegistry) -> Self {
        TaskManagerConfig { id, incarnation, ip, slots, jm, broker, blob, registry, heartbeat_interval_ms: 100, jm_silence_ms_max: 1_000, rpc: RpcConfig::default() }
    }
}

/// Runs a task manager until the node is killed (or a listener fails).
pub async fn run_task_manager(config: TaskManagerConfig) -> std::io::Result<()> {
    let rpc_listener = TcpListener::bind(SocketAddr::new(config.ip, TM_RPC_PORT)).await?;
    let data_listener = TcpListener::bind(SocketAddr::new(config.ip, TM_DATA_PORT)).await?;
    let tm = Arc::new(TaskManager::new(config));
    let _heartbeats = AbortOnDrop(tokio::spawn(register_and_heartbeat(tm.clone())));
    let _silence = AbortOnDrop(tokio::spawn(watch_jm_silence(tm.clone())));
    let _data = AbortOnDrop(tokio::spawn(accept_data(data_listener, tm.clone())));
    serve(rpc_listener, move |request: TmRequest| {
        let tm = tm.clone();
        async move {
            match request {
                TmRequest::NotifyComplete { attempt, checkpoint_id } => tm.notify_complete(attempt, checkpoint_id).await,
                other => tm.handle(other),
            }
        }
    })
    .await
}

/// A spawned task that is aborted when this guard is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message from the RPC server into one subtask's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Inject this barrier (sources).
    Trigger(Barrier),
    /// Checkpoint complete.
    Complete(floe_core::ids::CheckpointId),
    /// Checkpoint aborted.
    Aborted(floe_core::ids::CheckpointId),
}

/// An accepted input channel, handed to its consumer subtask.
pub(crate) struct InputChannel {
    index: ChannelIndex,
    receiver: DataReceiver<ChannelElement>,
}

struct SubtaskHandle {
    attempt: AttemptId,
    control: mpsc::Sender<Control>,
    inputs: mpsc::Sender<InputChannel>,
    /// (edge, producer) → the channel's index in this subtask's input gate.
    gate: BTreeMap<(usize, SubtaskId), ChannelIndex>,
    /// The newest checkpoint whose completion the subtask has carried out (sink commits done).
    completed: watch::Receiver<u64>,
    _task: AbortOnDrop,
}

#[derive(Default)]
struct TmState {
    /// The newest attempt this TM has heard of: anything older is stale.
    newest_attempt: Option<AttemptId>,
    /// The attempt whose subtasks run here.
    running_attempt: Option<AttemptId>,
    subtasks: BTreeMap<SubtaskId, SubtaskHandle>,
    /// When the job manager last answered a registration or heartbeat (`None`: since the start).
    jm_heard_at: Option<tokio::time::Instant>,
}

/// What a data connection's hello leads to.
enum Verdict {
    Attach(mpsc::Sender<InputChannel>, ChannelIndex),
    Refuse(String, bool),
    Wait,
}

/// A task manager's shared state (the RPC handler, the acceptor and the heartbeat task share it).
struct TaskManager {
    config: TaskManagerConfig,
    /// For heartbeats and registration.
    jm_heartbeat: RpcClient<JmRequest, JmResponse>,
    /// For subtask messages (acks, declines, failures, end of input).
    jm: RpcClient<JmRequest, JmResponse>,
    broker: BrokerClient,
    blob: BlobClient,
    state: Mutex<TmState>,
}

impl TaskManager {
    fn new(config: TaskManagerConfig) -> Self {
        TaskManager {
            jm_heartbeat: RpcClient::new(config.jm, config.rpc.clone()),
            jm: RpcClient::new(config.jm, config.rpc.clone()),
            broker: BrokerClient::new(config.broker, config.rpc.clone()),
            blob: BlobClient::new(config.blob, config.rpc.clone()),
            config,
            state: Mutex::new(TmState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(Stale)` (and a `zombie_fenced` event) if `attempt` is older than the newest seen.
    fn fence(state: &TmState, attempt: AttemptId, what: &str) -> Option<TmResponse> {
        if state.newest_attempt.is_some_and(|newest| attempt < newest) {
            tracing::info!(event = "zombie_fenced", attempt = attempt.0, what, newest = state.newest_attempt.map(|a| a.0));
            return Some(TmResponse::Stale);
        }
        None
    }

    fn handle(&self, request: TmRequest) -> TmResponse {
        match request {
            TmRequest::Deploy { attempt, job, restored_from, subtasks, locations } => self.deploy(attempt, job, restored_from, subtasks, locations),
            TmRequest::TriggerCheckpoint { attempt, barrier, sources } => {
                let state = self.lock();
                if let Some(stale) = Self::fence(&state, attempt, "trigger") {
                    return stale;
                }
                if state.running_attempt != Some(attempt) {
                    return TmResponse::Error(format!("{attempt} is not running here"));
                }
                for source in sources {
                    match state.subtasks.get(&source) {
                        Some(h) if h.attempt == attempt => {
                            if h.control.try_send(Control::Trigger(barrier)).is_err() {
                                tracing::warn!(subtask = %source, checkpoint = barrier.checkpoint_id.0, "trigger not delivered: the subtask is gone or busy");
                            }
                        }
                        _ => tracing::warn!(subtask = %source, "trigger for a subtask that does not run here"),
                    }
                }
                TmResponse::Ok
            }
            TmRequest::NotifyComplete { attempt, checkpoint_id } => self.notify(attempt, Control::Complete(checkpoint_id), "notify_complete"),
            TmRequest::NotifyAborted { attempt, checkpoint_id } => self.notify(attempt, Control::Aborted(checkpoint_id), "notify_aborted"),
            TmRequest::Cancel { attempt } => {
                let mut state = self.lock();
                if let Some(stale) = Self::fence(&state, attempt, "cancel") {
                    return stale;
                }
                state.newest_attempt = Some(attempt);
                state.subtasks.retain(|_, h| h.attempt > attempt);
                if state.running_attempt.is_some_and(|a| a <= attempt) {
                    state.running_attempt = None;
                }
                TmResponse::Ok
            }
        }
    }

    /// Delivers a completion to every subtask of `attempt` and answers only once each has carried
    /// it out — its sink's commits are done — or after [`COMMIT_CONFIRM_MS`] with an error. The job
    /// manager reads `Ok` as "committed": after the final checkpoint it then finishes the job and
    /// cancels the subtasks, which must not cut a commit short.
    async fn notify_complete(&self, attempt: AttemptId, checkpoint_id: CheckpointId) -> TmResponse {
        let response = self.notify(attempt, Control::Complete(checkpoint_id), "notify_complete");
        if response != TmResponse::Ok {
            return response;
        }
        let waiting: Vec<(SubtaskId, watch::Receiver<u64>)> =
            self.lock().subtasks.iter().filter(|(_, h)| h.attempt == attempt).map(|(s, h)| (*s, h.completed.clone())).collect();
        if waiting.is_empty() {
            // The job manager sends this only to the hosts of the attempt's subtasks: none here
            // means they were cancelled (self-fenced) or this process restarted since, and
            // nothing carried the completion out. Confirming it would let the job finish with
            // its final transactions never committed (late-final-completion-after-self-fence).
            return TmResponse::Error(format!("no subtask of {attempt} runs here: the completion of {checkpoint_id} was not carried out"));
        }
        let confirmed = async {
            for (subtask, mut completed) in waiting {
                if completed.wait_for(|done| *done >= checkpoint_id.0).await.is_err() {
                    return Err(subtask);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_millis(COMMIT_CONFIRM_MS), confirmed).await {
            Ok(Ok(())) => TmResponse::Ok,
            Ok(Err(subtask)) => TmResponse::Error(format!("{subtask} ended before carrying out the completion of {checkpoint_id}")),
            Err(_) => TmResponse::Error(format!("the completion of {checkpoint_id} was not carried out within {COMMIT_CONFIRM_MS} ms")),
        }
    }

    /// Cancels every running subtask on the task manager's own authority, logging `event`:
    /// `tm_self_fenced` when the job manager has been silent for too long (`silent_ms`, see
    /// [`TaskManagerConfig::jm_silence_ms_max`]), `tm_unknown_to_jm` when it answered
    /// `RegisterAgain`. Newer deploys are still accepted.
    fn cancel_all(&self, event: &'static str, silent_ms: Option<u64>) {
        let mut state = self.lock();
        if state.subtasks.is_empty() {
            return;
        }
        tracing::warn!(event, tm = self.config.id.0, attempt = state.running_attempt.map(|a| a.0), silent_ms, subtasks = state.subtasks.len());
        state.subtasks.clear();
        state.running_attempt = None;
    }

    fn notify(&self, attempt: AttemptId, control: Control, what: &str) -> TmResponse {
        let state = self.lock();
        if let Some(stale) = Self::fence(&state, attempt, what) {
            return stale;
        }
        for (subtask, h) in state.subtasks.iter().filter(|(_, h)| h.attempt == attempt) {
            if h.control.try_send(control).is_err() {
                tracing::warn!(subtask = %subtask, ?control, "notification not delivered: the subtask is gone or busy");
            }
        }
        TmResponse::Ok
    }

    fn deploy(&self, attempt: AttemptId, job: JobSpec, restored_from: Option<floe_core::ids::CheckpointId>, subtasks: Vec<crate::cluster::protocol::SubtaskDeployment>, locations: BTreeMap<SubtaskId, SocketAddr>) -> TmResponse {
        let mut state = self.lock();
        if let Some(stale) = Self::fence(&state, attempt, "deploy") {
            return stale;
        }
        if state.running_attempt == Some(attempt) {
            // A repeated Deploy (the JM retried after a lost answer): already running.
            return TmResponse::Ok;
        }
        let graph = match self.config.registry.build(&job) {
            Ok(g) => Arc::new(g.expand()),
            Err(e) => return TmResponse::Error(e.to_string()),
        };
        // Cancel everything older before anything new starts.
        state.subtasks.clear();
        state.newest_attempt = Some(attempt);
        state.running_attempt = Some(attempt);
        for deployment in subtasks {
            let subtask = deployment.subtask;
            let gate: BTreeMap<(usize, SubtaskId), ChannelIndex> = graph.inputs_of(subtask).into_iter().map(|c| ((c.edge, c.producer), c.input_index)).collect();
            let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_MAX);
            let (inputs_tx, inputs_rx) = mpsc::channel(gate.len().max(1));
            let (completed_tx, completed_rx) = watch::channel(0);
            let setup = subtask::SubtaskSetup {
                attempt,
                job: job.clone(),
                graph: graph.clone(),
                deployment,
                restored_from,
                locations: locations.clone(),
                jm: self.jm.clone(),
                broker: self.broker.clone(),
                blob: self.blob.clone(),
                control: control_rx,
                inputs: inputs_rx,
                completed: completed_tx,
            };
            let jm = self.jm.clone();
            let task = tokio::spawn(async move {
                if let Err(reason) = subtask::run_subtask(setup).await {
                    tracing::info!(event = "subtask_failed", attempt = attempt.0, subtask = %subtask, reason = %reason);
                    call_jm(&jm, JmRequest::SubtaskFailed { attempt, subtask, reason }).await;
                }
            });
            state.subtasks.insert(subtask, SubtaskHandle { attempt, control: control_tx, inputs: inputs_tx, gate, completed: completed_rx, _task: AbortOnDrop(task) });
        }
        TmResponse::Ok
    }

    fn verdict(&self, hello: &ChannelHello) -> Verdict {
        let state = self.lock();
        if state.newest_attempt.is_some_and(|newest| hello.attempt < newest) {
            return Verdict::Refuse(format!("{} is stale", hello.attempt), true);
        }
        match state.subtasks.get(&hello.consumer) {
            Some(h) if h.attempt == hello.attempt => match h.gate.get(&(hello.edge, hello.producer)) {
                Some(index) => Verdict::Attach(h.inputs.clone(), *index),
                None => Verdict::Refuse(format!("{} has no input channel from {} on edge {}", hello.consumer, hello.producer, hello.edge), false),
            },
            _ => Verdict::Wait,
        }
    }
}

/// Cancels every subtask as soon as the job manager has been silent for more than
/// [`TaskManagerConfig::jm_silence_ms_max`] (see [`TaskManager::cancel_all`]). A task of its own,
/// on a timer: checked only between heartbeats, the deadline slipped by a blocked heartbeat call
/// (up to the RPC timeout) plus the backoff, and a zombie cut off by a partition kept running
/// past the job manager's redeploy — retrying a sink's `init_transactions` that fenced the new
/// attempt's prepared transaction of the same id (proptest seed 1), or opening a transaction in
/// an id the restore had not seen (seed 3).
async fn watch_jm_silence(tm: Arc<TaskManager>) {
    let max_ms = tm.config.jm_silence_ms_max;
    #[allow(clippy::disallowed_methods, reason = "tokio's clock: madsim's virtual clock under simulation")]
    let started = tokio::time::Instant::now();
    loop {
        let heard = tm.lock().jm_heard_at.unwrap_or(started);
        #[allow(clippy::disallowed_methods, reason = "tokio's clock: madsim's virtual clock under simulation")]
        let silent_ms = heard.elapsed().as_millis() as u64;
        let pause_ms = if silent_ms > max_ms {
            tm.cancel_all("tm_self_fenced", Some(silent_ms));
            tm.config.heartbeat_interval_ms.max(1)
        } else {
            max_ms - silent_ms + 1
        };
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
}

/// Sends a subtask's message to the job manager, retrying transport failures a bounded number of
/// times (a lost ack only means the checkpoint times out).
pub(crate) async fn call_jm(jm: &RpcClient<JmRequest, JmResponse>, request: JmRequest) {
    call_jm_attempts(jm, request, JM_CALL_ATTEMPTS_MAX).await
}

/// Sends `request` until the job manager answers, however long it is unreachable — for a state
/// change that must not be lost (a source's end of input: without it the final checkpoint is
/// never triggered and the job never finishes; Flink's TaskExecutor likewise retries
/// `updateTaskExecutionState`). Bounded by the caller's lifetime: it runs as a subtask's
/// background task, which ends with the subtask, and a task manager cut off from the job manager
/// for `jm_silence_ms_max` cancels its subtasks.
pub(crate) async fn call_jm_until_answered(jm: &RpcClient<JmRequest, JmResponse>, request: JmRequest) {
    call_jm_attempts(jm, request, u32::MAX).await
}

async fn call_jm_attempts(jm: &RpcClient<JmRequest, JmResponse>, request: JmRequest, attempts_max: u32) {
    for attempt in 1..=attempts_max {
        match jm.call(request.clone()).await {
            Ok(JmResponse::Error(e)) => {
                tracing::warn!(error = %e, "the job manager refused a message");
                return;
            }
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, attempt, "message to the job manager failed");
                tokio::time::sleep(Duration::from_millis(JM_CALL_BACKOFF_MS)).await;
            }
        }
    }
}

async fn register_and_heartbeat(tm: Arc<TaskManager>) {
    let interval_ms = tm.config.heartbeat_interval_ms.max(1);
    let mut registered = false;
    let mut backoff_ms = interval_ms;
    loop {
        let request = if registered {
            let running_attempt = tm.lock().running_attempt;
            JmRequest::Heartbeat { tm: tm.config.id, incarnation: tm.config.incarnation, running_attempt }
        } else {
            JmRequest::Register { tm: tm.config.id, incarnation: tm.config.incarnation, addr: tm.config.ip, slots: tm.config.slots }
        };
        let answer = tm.jm_heartbeat.call(request).await;
        if answer.is_ok() {
            #[allow(clippy::disallowed_methods, reason = "tokio's clock: madsim's virtual clock under simulation")]
            let now = tokio::time::Instant::now();
            tm.lock().jm_heard_at = Some(now);
        }
        match answer {
            Ok(JmResponse::Ok) => {
                if !registered {
                    tracing::info!(event = "tm_registered_at_jm", tm = tm.config.id.0, incarnation = tm.config.incarnation);
                }
                registered = true;
                backoff_ms = interval_ms;
            }
            Ok(JmResponse::RegisterAgain) => {
                // The job manager does not know this task manager: it restarted, or declared us
                // lost and failed the job over. Either way whatever runs here belongs to an
                // attempt it will never confirm — cancel it now, before it opens transactions a
                // newer attempt's restore did not see (Flink's TaskExecutor fails a job's tasks
                // when it loses that job's leader).
                tm.cancel_all("tm_unknown_to_jm", None);
                registered = false;
                continue;
            }
            Ok(other) => tracing::debug!(?other, "unexpected heartbeat answer"),
            Err(e) => {
                tracing::debug!(error = %e, "job manager unreachable");
                backoff_ms = (backoff_ms * 2).min(HEARTBEAT_BACKOFF_MAX_MS.max(interval_ms));
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}

async fn accept_data(listener: TcpListener, tm: Arc<TaskManager>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_PENDING_MAX));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let tm = tm.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = on_data_connection(&tm, stream).await {
                        tracing::debug!(error = %e, "data connection handshake failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "data accept failed");
                tokio::time::sleep(Duration::from_millis(CONSUMER_POLL_MS)).await;
            }
        }
    }
}

async fn on_data_connection(tm: &TaskManager, mut stream: TcpStream) -> Result<(), wire::HandshakeError> {
    let hello: ChannelHello = wire::read_one(&mut stream).await?;
    #[allow(clippy::disallowed_methods)] // virtual time under madsim (processing time is the host clock)
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CONSUMER_WAIT_MS);
    let (inputs, index) = loop {
        match tm.verdict(&hello) {
            Verdict::Attach(inputs, index) => break (inputs, index),
            Verdict::Refuse(why, stale) => {
                if stale {
                    tracing::info!(event = "zombie_fenced", attempt = hello.attempt.0, what = "data_channel");
                }
                return wire::write_one(&mut stream, &HelloReply::Refused(why)).await;
            }
            #[allow(clippy::disallowed_methods)] // virtual time under madsim (processing time is the host clock)
            Verdict::Wait if tokio::time::Instant::now() >= deadline => {
                let why = format!("{} of {} was not deployed within {CONSUMER_WAIT_MS} ms", hello.consumer, hello.attempt);
                return wire::write_one(&mut stream, &HelloReply::Refused(why)).await;
            }
            Verdict::Wait => tokio::time::sleep(Duration::from_millis(CONSUMER_POLL_MS)).await,
        }
    };
    wire::write_one(&mut stream, &HelloReply::Accepted).await?;
    let receiver = wire::accept_channel(stream);
    if inputs.try_send(InputChannel { index, receiver }).is_err() {
        // The consumer is gone or already running with this channel: dropping the receiver
        // closes the connection, and the producer fails (the job restarts).
        tracing::warn!(consumer = %hello.consumer, producer = %hello.producer, "data channel not taken by its consumer");
    }
    Ok(())
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;
    use crate::cluster::sim::simulate;
    use floe_core::ids::OperatorId;
    use std::sync::atomic::{AtomicBool, Ordering};

    const SILENCE_MS: u64 = 600;

    /// Sets its flag when dropped: a task holding it was aborted.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A task manager running one idle subtask of attempt 1; the flag says when its task ended.
    fn tm_with_a_subtask() -> (Arc<TaskManager>, Arc<AtomicBool>) {
        let addr = |last: u8| SocketAddr::new(IpAddr::from([10, 0, 0, last]), 1);
        let mut config = TaskManagerConfig::new(TaskManagerId(0), 1, IpAddr::from([10, 0, 1, 1]), 1, addr(1), addr(2), addr(3), JobRegistry::builtin());
        config.jm_silence_ms_max = SILENCE_MS;
        let tm = Arc::new(TaskManager::new(config));
        let ended = Arc::new(AtomicBool::new(false));
        let guard = Dropped(ended.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let (control, _) = mpsc::channel(1);
        let (inputs, _) = mpsc::channel(1);
        let (_, completed) = watch::channel(0);
        let handle = SubtaskHandle { attempt: AttemptId(1), control, inputs, gate: BTreeMap::new(), completed, _task: AbortOnDrop(task) };
        let mut state = tm.lock();
        state.running_attempt = Some(AttemptId(1));
        state.subtasks.insert(SubtaskId::new(OperatorId(3), 0), handle);
        drop(state);
        (tm, ended)
    }

    #[test]
    fn a_task_manager_cancels_its_subtasks_on_time_once_the_job_manager_falls_silent() {
        // (ms the job manager keeps answering, ms after its last answer we look, still running?)
        let table: [(u64, u64, bool); 4] = [(0, SILENCE_MS - 10, true), (0, SILENCE_MS + 10, false), (1_000, SILENCE_MS - 10, true), (1_000, SILENCE_MS + 10, false)];
        for (answering_ms, look_after_ms, running) in table {
            let ended = simulate(3, Duration::from_secs(60), "cargo test -p floe-runtime task_manager", move || async move {
                let (tm, ended) = tm_with_a_subtask();
                let _watch = AbortOnDrop(tokio::spawn(watch_jm_silence(tm.clone())));
                // Heartbeat answers every 50 ms for `answering_ms`, then nothing.
                let mut answered_ms = 0;
                while answered_ms < answering_ms {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    answered_ms += 50;
                    #[allow(clippy::disallowed_methods, reason = "tokio's clock: madsim's virtual clock under simulation")]
                    let now = tokio::time::Instant::now();
                    tm.lock().jm_heard_at = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(look_after_ms)).await;
                tokio::task::yield_now().await;
                let ended = ended.load(Ordering::SeqCst);
                assert_eq!(tm.lock().subtasks.is_empty(), ended, "the handle goes with its task");
                ended
            });
            assert_eq!(!ended, running, "answering {answering_ms} ms, looking {look_after_ms} ms after the last answer");
        }
    }
}
