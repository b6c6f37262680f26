//! The job manager's owner task: every piece of state, every decision, one event at a time.
//!
//! Inputs: RPC requests (with a reply channel), outcomes of the ordered HA writer, replies of the
//! task-manager outboxes, and time (heartbeat deadlines, the restart delay, the coordinator's
//! next wakeup). Nothing here awaits a remote call: sends are queued to outboxes and workers.
//!
//! Job phases: `Submitting` (ha/job being written) → `WaitingForSlots` → `Deploying` (ha/job with
//! the new attempt being written) → `Running` → `Finishing` (final checkpoint complete, waiting
//! for every commit notification to be confirmed, then ha/finished) → `Finished`; a failure in
//! `Running`/`Finishing` → `Restarting` (the restart delay) → `WaitingForSlots` → ...; a restart
//! strategy that gives up, or state that cannot be restored → `Failed`.

use super::ha::{self, GcWorker, HaDone, HaJobPurpose, HaJobRecord, HaOp, HaWorker};
use super::outbox::{Outbox, RequestKind, TmReply};
use super::scheduler::{assign_slots, place, Placement, Topology};
use super::JobManagerConfig;
use crate::blob::BlobClient;
use crate::cluster::jobs::JobSpec;
use crate::cluster::protocol::{Incarnation, JmRequest, JmResponse, JobState, JobStatusReport, TmRequest, TmResponse};
use floe_core::coordinator::{CheckpointCoordinator, CheckpointMetadata, CheckpointPlan, CoordinatorCommand};
use floe_core::failover::{HeartbeatMonitor, RestartBackoff, RestartDecision};
use floe_core::ids::{AttemptId, CheckpointId, SubtaskId, TaskManagerId};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Pause before a deploy is tried again after its `ha/job` write failed.
pub const DEPLOY_RETRY_DELAY_MS: u64 = 500;
/// Task managers known at once (registrations beyond are refused).
pub const TASK_MANAGERS_MAX: usize = 4_096;
/// Clients waiting on one submission.
pub const SUBMIT_WAITERS_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Submitting,
    WaitingForSlots,
    Deploying { attempt: AttemptId, slots: Vec<TaskManagerId> },
    Running,
    Finishing { checkpoint: CheckpointId, notify_pending: BTreeSet<TaskManagerId> },
    Restarting { at_ms: u64 },
    Finished,
    Failed(String),
}

struct RunningAttempt {
    attempt: AttemptId,
    placement: Placement,
    incarnations: BTreeMap<TaskManagerId, Incarnation>,
    coordinator: CheckpointCoordinator,
    deploys_pending: BTreeSet<TaskManagerId>,
}

impl RunningAttempt {
    fn hosts(&self) -> impl Iterator<Item = TaskManagerId> + '_ {
        self.placement.per_tm.keys().copied()
    }
}

struct Job {
    spec: JobSpec,
    topology: Topology,
    plan: CheckpointPlan,
    phase: Phase,
    /// The attempt the next deploy uses.
    next_attempt: AttemptId,
    /// The id the next coordinator starts at.
    next_checkpoint_id: CheckpointId,
    /// What the newest `ha/job` write asked for (attempts / checkpoint ids below are reserved).
    attempts_recorded: AttemptId,
    checkpoints_recorded: CheckpointId,
    /// What a durable `ha/job` reserves: only ids below these may be used.
    attempts_durable: AttemptId,
    checkpoints_durable: CheckpointId,
    latest: Option<CheckpointMetadata>,
    backoff: RestartBackoff,
    running: Option<RunningAttempt>,
    last_attempt: AttemptId,
    /// A metadata write is in flight (its outcome decides the restore point of the next deploy).
    persisting: Option<CheckpointId>,
    submit_waiters: Vec<oneshot::Sender<JmResponse>>,
}

impl Job {
    fn record(&self) -> HaJobRecord {
        HaJobRecord { spec: self.spec.clone(), next_attempt: self.attempts_recorded, next_checkpoint_id: self.checkpoints_recorded }
    }

    /// The first checkpoint id the next attempt's coordinator uses.
    fn first_checkpoint_of_next_attempt(&self) -> CheckpointId {
        self.next_checkpoint_id.max(self.latest.as_ref().map_or(CheckpointId::FIRST, |l| l.checkpoint_id.next()))
    }

    /// Asks the next `ha/job` write to reserve ids up to `checkpoint` + the reservation block.
    fn reserve_checkpoints_from(&mut self, checkpoint: CheckpointId) {
        self.checkpoints_recorded = self.checkpoints_recorded.max(CheckpointId(checkpoint.0 + ha::CHECKPOINT_IDS_RESERVED_PER_WRITE));
    }
}

struct TmEntry {
    incarnation: Incarnation,
    ip: IpAddr,
    slots: u32,
    outbox: Outbox,
    /// The newest attempt a `Cancel` was queued for.
    cancelled_up_to: AttemptId,
    /// When it last registered or sent a heartbeat.
    last_heartbeat_ms: u64,
    /// When a call to it last failed at the RPC level (unreachable, reset, timed out): it gets
    /// no slots until it heartbeats after that.
    unreachable_at_ms: Option<u64>,
}

impl TmEntry {
    fn reachable(&self) -> bool {
        self.unreachable_at_ms.is_none_or(|at| self.last_heartbeat_ms > at)
    }
}

/// The job manager's state (see the module documentation).
pub struct JobMaster {
    config: JobManagerConfig,
    started: Instant,
    rng: ChaCha8Rng,
    blob: BlobClient,
    ha_tx: mpsc::Sender<HaOp>,
    gc_tx: mpsc::Sender<String>,
    ha_rx: mpsc::UnboundedReceiver<HaDone>,
    replies_tx: mpsc::UnboundedSender<TmReply>,
    replies_rx: mpsc::UnboundedReceiver<TmReply>,
    _workers: Vec<AbortOnDrop>,
    fence: Arc<AtomicU64>,
    tms: BTreeMap<TaskManagerId, TmEntry>,
    heartbeats: HeartbeatMonitor<TaskManagerId>,
    job: Option<Job>,
    /// Why recovery found a job it cannot run (no spec to show).
    recovery_failure: Option<String>,
    checkpoints_completed: u64,
    restarts: u64,
    fatal: Option<String>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn build_job(config: &JobManagerConfig, spec: &JobSpec) -> Result<(Topology, CheckpointPlan, RestartBackoff), String> {
    let graph = config.registry.build(spec).map_err(|e| e.to_string())?;
    let topology = Topology::from_graph(&graph.expand());
    let plan = topology.checkpoint_plan();
    plan.validate().map_err(|e| format!("job '{}': {e}", spec.job))?;
    let backoff = RestartBackoff::new(spec.restart.clone()).map_err(|e| format!("job '{}': restart strategy: {e}", spec.job))?;
    Ok((topology, plan, backoff))
}

impl JobMaster {
    /// A job manager with no job yet; [`run`](Self::run) recovers and serves.
    pub fn new(config: JobManagerConfig, blob: BlobClient) -> Self {
        let (ha_done_tx, ha_rx) = mpsc::unbounded_channel();
        let (ha_tx, ha_task) = HaWorker::spawn(blob.clone(), ha_done_tx);
        let (gc_tx, gc_task) = GcWorker::spawn(blob.clone());
        let (replies_tx, replies_rx) = mpsc::unbounded_channel();
        let heartbeats = HeartbeatMonitor::new(config.heartbeat_timeout_ms).expect("run_job_manager checked the timeout");
        // tokio's clock: virtual under madsim.
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        JobMaster {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            started,
            blob,
            ha_tx,
            gc_tx,
            ha_rx,
            replies_tx,
            replies_rx,
            _workers: vec![AbortOnDrop(ha_task), AbortOnDrop(gc_task)],
            fence: Arc::new(AtomicU64::new(0)),
            tms: BTreeMap::new(),
            heartbeats,
            job: None,
            recovery_failure: None,
            checkpoints_completed: 0,
            restarts: 0,
            fatal: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Recovers the job from the blob store, then handles events until a fatal error.
    pub async fn run(mut self, mut requests: mpsc::Receiver<(JmRequest, oneshot::Sender<JmResponse>)>) -> io::Result<()> {
        self.recover().await?;
        loop {
            let now = self.now_ms();
            self.on_time(now);
            if let Some(fatal) = self.fatal.take() {
                tracing::error!(error = %fatal, "job manager stops");
                return Err(io::Error::other(fatal));
            }
            let wake_ms = self.next_wakeup_ms().map(|w| w.max(now + 1));
            let started = self.started;
            let sleep = async move {
                match wake_ms {
                    Some(ms) => tokio::time::sleep_until(started + Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = self.ha_rx.recv() => self.on_ha_done(done),
                Some(reply) = self.replies_rx.recv() => self.on_tm_reply(reply),
                Some((req, reply)) = requests.recv() => self.on_request(req, reply),
                _ = sleep => {}
            }
        }
    }

    // ---- recovery ----

    async fn recover(&mut self) -> io::Result<()> {
        let blob = self.blob.clone();
        let read = |key: String| {
            let blob = blob.clone();
            async move {
                ha::get_retrying(&blob, &key, ha::RECOVERY_READ_ATTEMPTS_MAX).await.map_err(|e| (key, e))
            }
        };
        let fatal = |(key, e): (String, crate::blob::BlobError)| io::Error::other(format!("cannot read {key} to recover: {e}"));
        let Some(name) = read(ha::CURRENT_JOB_KEY.to_string()).await.map_err(fatal)? else {
            tracing::info!("no job to recover");
            return Ok(());
        };
        let name = match String::from_utf8(name) {
            Ok(n) => n,
            Err(_) => {
                self.recovery_failed("the current-job key is not UTF-8".into());
                return Ok(());
            }
        };
        let record = match read(ha::ha_job_key(&name)).await {
            Ok(Some(bytes)) => match HaJobRecord::from_bytes(&bytes) {
                Ok(r) => r,
                Err(e) => {
                self.recovery_failed(format!("{}: {e}", ha::ha_job_key(&name)));
                return Ok(());
            }
            },
            Ok(None) => {
                self.recovery_failed(format!("{} is missing", ha::ha_job_key(&name)));
                return Ok(());
            }
            Err((key, e @ crate::blob::BlobError::Corrupt { .. })) => {
                self.recovery_failed(format!("{key}: {e}"));
                return Ok(());
            }
            Err(e) => return Err(fatal(e)),
        };
        let (topology, plan, _) = match build_job(&self.config, &record.spec) {
            Ok(b) => b,
            Err(e) => {
                self.recovery_failed(e);
                return Ok(());
            }
        };
        let backoff = RestartBackoff::with_current_attempt(record.spec.restart.clone(), AttemptId(record.next_attempt.0.saturating_sub(1)))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut job = Job {
            spec: record.spec.clone(),
            topology,
            plan,
            phase: Phase::WaitingForSlots,
            next_attempt: record.next_attempt,
            next_checkpoint_id: record.next_checkpoint_id,
            attempts_recorded: record.next_attempt,
            checkpoints_recorded: record.next_checkpoint_id,
            attempts_durable: record.next_attempt,
            checkpoints_durable: record.next_checkpoint_id,
            latest: None,
            backoff,
            running: None,
            last_attempt: AttemptId(record.next_attempt.0.saturating_sub(1)),
            persisting: None,
            submit_waiters: Vec::new(),
        };
        // The latest completed checkpoint: a damaged or missing one fails the job loudly.
        let latest_result: Result<Option<CheckpointMetadata>, String> = match read(ha::ha_latest_key(&name)).await {
            Ok(None) => Ok(None),
            Ok(Some(key)) => match String::from_utf8(key) {
                Err(_) => Err(format!("{} is not UTF-8", ha::ha_latest_key(&name))),
                Ok(key) => match read(key.clone()).await {
                    Ok(Some(bytes)) => CheckpointMetadata::from_bytes(&bytes).map(Some).map_err(|e| format!("latest checkpoint {key}: {e}")),
                    Ok(None) => Err(format!("latest checkpoint {key} is missing")),
                    Err((_, e @ crate::blob::BlobError::Corrupt { .. })) => Err(format!("latest checkpoint {key}: {e}")),
                    Err(e) => return Err(fatal(e)),
                },
            },
            Err((key, e @ crate::blob::BlobError::Corrupt { .. })) => Err(format!("{key}: {e}")),
            Err(e) => return Err(fatal(e)),
        };
        // Every id that has blobs was used: never use it again (belt and braces over ha/job).
        let used_max = ha::list_retrying(&self.blob, &format!("{name}/chk-"), ha::RECOVERY_READ_ATTEMPTS_MAX)
            .await
            .map_err(|e| io::Error::other(format!("cannot list {name}'s checkpoints to recover: {e}")))?
            .iter()
            .filter_map(|k| ha::checkpoint_of_key(&name, k))
            .max();
        if let Some(used) = used_max {
            job.next_checkpoint_id = job.next_checkpoint_id.max(used.next());
        }
        let finished = read(ha::ha_finished_key(&name)).await.map_err(fatal)?;
        let failed = read(ha::ha_failed_key(&name)).await.map_err(fatal)?;
        match latest_result {
            Ok(latest) => {
                if let Some(l) = &latest {
                    job.next_checkpoint_id = job.next_checkpoint_id.max(l.checkpoint_id.next());
                }
                job.checkpoints_recorded = job.next_checkpoint_id;
                job.checkpoints_durable = job.next_checkpoint_id;
                tracing::info!(event = "jm_recovered", job = %name, latest = ?latest.as_ref().map(|l| l.checkpoint_id.0),
                    next_attempt = job.next_attempt.0, next_checkpoint = job.next_checkpoint_id.0);
                job.latest = latest;
                if let Some(reason) = failed {
                    job.phase = Phase::Failed(String::from_utf8_lossy(&reason).into_owned());
                } else if finished.is_some() {
                    job.phase = Phase::Finished;
                }
            }
            Err(reason) => {
                tracing::error!(event = "job_failed", job = %name, reason = %reason);
                job.phase = Phase::Failed(reason);
            }
        }
        self.job = Some(job);
        Ok(())
    }

    fn recovery_failed(&mut self, reason: String) {
        tracing::error!(event = "job_failed", reason = %reason);
        self.recovery_failure = Some(reason);
    }

    // ---- time ----

    fn next_wakeup_ms(&self) -> Option<u64> {
        let mut wake = self.heartbeats.next_deadline_ms();
        if let Some(job) = &self.job {
            if let Phase::Restarting { at_ms } = job.phase {
                wake = Some(wake.map_or(at_ms, |w| w.min(at_ms)));
            }
            if let (Phase::Running, Some(r)) = (&job.phase, &job.running) {
                if r.deploys_pending.is_empty() {
                    if let Some(c) = r.coordinator.next_wakeup_ms() {
                        wake = Some(wake.map_or(c, |w| w.min(c)));
                    }
                }
            }
        }
        wake
    }

    fn on_time(&mut self, now: u64) {
        for tm in self.heartbeats.expired(now) {
            tracing::warn!(event = "tm_lost", tm = tm.0);
            if self.hosts_current_attempt(tm) {
                self.failover(now, format!("{tm} lost (no heartbeat for {} ms)", self.config.heartbeat_timeout_ms));
            }
        }
        if let Some(job) = &mut self.job {
            if let Phase::Restarting { at_ms } = job.phase {
                if now >= at_ms {
                    job.phase = Phase::WaitingForSlots;
                    self.try_deploy(now);
                }
            }
        }
        let cmds = match &mut self.job {
            Some(Job { phase: Phase::Running, running: Some(r), .. })
                if r.deploys_pending.is_empty() && r.coordinator.next_wakeup_ms().is_some_and(|w| w <= now) =>
            {
                r.coordinator.tick(now)
            }
            _ => Vec::new(),
        };
        self.apply(now, cmds);
    }

    fn hosts_current_attempt(&self, tm: TaskManagerId) -> bool {
        self.job.as_ref().is_some_and(|j| {
            matches!(j.phase, Phase::Running | Phase::Finishing { .. }) && j.running.as_ref().is_some_and(|r| r.placement.per_tm.contains_key(&tm))
        })
    }

    fn running_attempt(&self) -> Option<AttemptId> {
        self.job.as_ref().and_then(|j| j.running.as_ref()).map(|r| r.attempt)
    }

    fn jitter_unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    // ---- requests ----

    fn on_request(&mut self, req: JmRequest, reply: oneshot::Sender<JmResponse>) {
        let now = self.now_ms();
        let resp = match req {
            JmRequest::SubmitJob(spec) => return self.on_submit(now, spec, reply),
            JmRequest::JobStatus => JmResponse::Status(self.status()),
            JmRequest::Register { tm, incarnation, addr, slots } => self.on_register(now, tm, incarnation, addr, slots),
            JmRequest::Heartbeat { tm, incarnation, running_attempt } => self.on_heartbeat(now, tm, incarnation, running_attempt),
            JmRequest::Acknowledge { attempt, checkpoint_id, subtask, handle } => {
                let response = self.with_current(now, "ack", attempt, |c| c.on_ack(now, attempt, checkpoint_id, subtask, handle));
                if matches!(response, JmResponse::Ok) {
                    tracing::info!(event = "ack_accepted", attempt = attempt.0, checkpoint = checkpoint_id.0, subtask = %subtask);
                }
                response
            }
            JmRequest::Decline { attempt, checkpoint_id, subtask, reason, overtaken_by } => self.with_current(now, "decline", attempt, |c| match overtaken_by {
                Some(by) => c.on_decline_subsumed(now, attempt, checkpoint_id, subtask, by),
                None => c.on_decline(now, attempt, checkpoint_id, subtask, reason),
            }),
            JmRequest::EndOfInput { attempt, subtask } => {
                self.with_current(now, "end_of_input", attempt, |c| c.on_end_of_input(now, attempt, subtask))
            }
            JmRequest::SubtaskFailed { attempt, subtask, reason } => {
                if self.running_attempt() == Some(attempt) && self.hosts_any() {
                    self.failover(now, format!("{subtask} failed: {reason}"));
                    JmResponse::Ok
                } else {
                    self.stale("subtask_failed", attempt)
                }
            }
        };
        let _ = reply.send(resp);
    }

    fn hosts_any(&self) -> bool {
        self.job.as_ref().is_some_and(|j| matches!(j.phase, Phase::Running | Phase::Finishing { .. }))
    }

    fn stale(&self, kind: &str, attempt: AttemptId) -> JmResponse {
        tracing::info!(event = "stale_message", kind, attempt = attempt.0);
        JmResponse::Stale
    }

    /// Feeds a message of `attempt` to the current coordinator, or answers `Stale`.
    fn with_current(
        &mut self,
        now: u64,
        kind: &str,
        attempt: AttemptId,
        f: impl FnOnce(&mut CheckpointCoordinator) -> Vec<CoordinatorCommand>,
    ) -> JmResponse {
        let cmds = match &mut self.job {
            Some(Job { phase: Phase::Running | Phase::Finishing { .. }, running: Some(r), .. }) if r.attempt == attempt => f(&mut r.coordinator),
            _ => return self.stale(kind, attempt),
        };
        self.apply(now, cmds);
        JmResponse::Ok
    }

    fn status(&self) -> JobStatusReport {
        let (state, attempt, latest) = match &self.job {
            None => match &self.recovery_failure {
                Some(r) => (JobState::Failed(r.clone()), AttemptId(0), None),
                None => (JobState::NoJob, AttemptId(0), None),
            },
            Some(job) => {
                let state = match &job.phase {
                    Phase::Submitting | Phase::WaitingForSlots => JobState::WaitingForSlots,
                    Phase::Deploying { .. } | Phase::Running | Phase::Finishing { .. } => JobState::Running,
                    Phase::Restarting { .. } => JobState::Restarting,
                    Phase::Finished => JobState::Finished,
                    Phase::Failed(r) => JobState::Failed(r.clone()),
                };
                (state, job.last_attempt, job.latest.as_ref().map(|l| l.checkpoint_id))
            }
        };
        JobStatusReport { state, attempt, latest_checkpoint: latest, checkpoints_completed: self.checkpoints_completed, restarts: self.restarts }
    }

    fn on_submit(&mut self, now: u64, spec: JobSpec, reply: oneshot::Sender<JmResponse>) {
        if let Some(job) = &mut self.job {
            if job.spec == spec {
                if job.phase == Phase::Submitting {
                    if job.submit_waiters.len() < SUBMIT_WAITERS_MAX {
                        job.submit_waiters.push(reply);
                    } else {
                        let _ = reply.send(JmResponse::Error("too many clients wait on this submission; retry".into()));
                    }
                } else {
                    let _ = reply.send(JmResponse::Ok);
                }
                return;
            }
            let ended = matches!(job.phase, Phase::Finished | Phase::Failed(_));
            if !ended || job.spec.name == spec.name {
                let why = if ended { "already ran" } else { "is running; one job at a time" };
                let _ = reply.send(JmResponse::Error(format!("job '{}' {why}", job.spec.name)));
                return;
            }
        }
        let (topology, plan, backoff) = match build_job(&self.config, &spec) {
            Ok(b) => b,
            Err(e) => {
                let _ = reply.send(JmResponse::Error(e));
                return;
            }
        };
        tracing::info!(event = "job_submitted", job = %spec.name, slots_needed = topology.slots_needed());
        let job = Job {
            spec,
            topology,
            plan,
            phase: Phase::Submitting,
            next_attempt: AttemptId(1),
            next_checkpoint_id: CheckpointId::FIRST,
            // The submission's write already reserves the first attempt and a block of ids.
            attempts_recorded: AttemptId(2),
            checkpoints_recorded: CheckpointId(CheckpointId::FIRST.0 + ha::CHECKPOINT_IDS_RESERVED_PER_WRITE),
            attempts_durable: AttemptId(1),
            checkpoints_durable: CheckpointId::FIRST,
            latest: None,
            backoff,
            running: None,
            last_attempt: AttemptId(0),
            persisting: None,
            submit_waiters: vec![reply],
        };
        let op = HaOp::WriteJob { record: job.record(), purpose: HaJobPurpose::Submit };
        self.job = Some(job);
        self.recovery_failure = None;
        if self.ha_tx.try_send(op).is_err() {
            self.on_ha_done_job(now, HaJobPurpose::Submit, Err("the HA queue is full".into()));
        }
    }

    fn on_register(&mut self, now: u64, tm: TaskManagerId, incarnation: Incarnation, ip: IpAddr, slots: u32) -> JmResponse {
        let mut restarted_host = false;
        match self.tms.get(&tm) {
            Some(e) if incarnation < e.incarnation => return JmResponse::Stale,
            Some(e) if incarnation == e.incarnation && e.ip == ip && e.slots == slots => {
                if let Some(e) = self.tms.get_mut(&tm) {
                    e.last_heartbeat_ms = now;
                }
                let was_alive = self.heartbeats.is_alive(tm);
                let _ = self.heartbeats.register(tm, now);
                if !was_alive {
                    tracing::info!(event = "tm_registered", tm = tm.0, incarnation, slots);
                }
                self.try_deploy(now);
                return JmResponse::Ok;
            }
            Some(e) => {
                restarted_host = e.incarnation != incarnation
                    && self.job.as_ref().and_then(|j| j.running.as_ref()).is_some_and(|r| r.incarnations.get(&tm) == Some(&e.incarnation));
            }
            None if self.tms.len() >= TASK_MANAGERS_MAX => return JmResponse::Error("too many task managers".into()),
            None => {}
        }
        if self.heartbeats.register(tm, now).is_err() {
            return JmResponse::Error("too many task managers".into());
        }
        let outbox = Outbox::spawn(tm, incarnation, ip, self.config.rpc.clone(), self.fence.clone(), self.replies_tx.clone());
        let cancelled_up_to = self.tms.get(&tm).map_or(AttemptId(0), |e| e.cancelled_up_to);
        self.tms.insert(tm, TmEntry { incarnation, ip, slots, outbox, cancelled_up_to, last_heartbeat_ms: now, unreachable_at_ms: None });
        tracing::info!(event = "tm_registered", tm = tm.0, incarnation, slots);
        if restarted_host && self.hosts_current_attempt(tm) {
            self.failover(now, format!("{tm} restarted (incarnation {incarnation}); its subtasks died with the old one"));
        }
        self.try_deploy(now);
        JmResponse::Ok
    }

    fn on_heartbeat(&mut self, now: u64, tm: TaskManagerId, incarnation: Incarnation, running_attempt: Option<AttemptId>) -> JmResponse {
        let current = self.running_attempt();
        let Some(e) = self.tms.get_mut(&tm) else { return JmResponse::RegisterAgain };
        if incarnation < e.incarnation {
            return JmResponse::Stale;
        }
        if incarnation > e.incarnation || !self.heartbeats.on_heartbeat(tm, now) {
            return JmResponse::RegisterAgain;
        }
        let was_reachable = e.reachable();
        e.last_heartbeat_ms = now;
        // A task manager still running an attempt that is over: cancel it (once per attempt).
        // Sent again on every such heartbeat (Cancel is idempotent): a cancel sent while the task
        // manager was cut off may never have arrived, and its zombie would go on opening
        // transactions.
        if let Some(a) = running_attempt {
            if Some(a) != current {
                e.cancelled_up_to = e.cancelled_up_to.max(a);
                tracing::info!(event = "zombie_cancelled", tm = tm.0, attempt = a.0);
                e.outbox.send(TmRequest::Cancel { attempt: a });
            }
        }
        // A task manager that a failed call took out of scheduling is back: a job waiting for
        // slots may deploy now (nothing else would wake it: the task manager does not register
        // again, it only heartbeats).
        if !was_reachable {
            self.try_deploy(now);
        }
        JmResponse::Ok
    }

    // ---- scheduling ----

    fn try_deploy(&mut self, now: u64) {
        let offers: Vec<(TaskManagerId, u32)> =
            self.tms.iter().filter(|(id, e)| self.heartbeats.is_alive(**id) && e.reachable()).map(|(id, e)| (*id, e.slots)).collect();
        let Some(job) = &mut self.job else { return };
        if job.phase != Phase::WaitingForSlots || job.persisting.is_some() {
            // A metadata write in flight decides the restore point: its outcome re-runs this.
            return;
        }
        let Some(slots) = assign_slots(&offers, job.topology.slots_needed()) else { return };
        let attempt = job.next_attempt;
        job.next_attempt = attempt.next();
        job.phase = Phase::Deploying { attempt, slots: slots.clone() };
        if attempt < job.attempts_durable {
            // A durable record already reserves this attempt.
            return self.start_attempt(now, attempt, slots);
        }
        job.attempts_recorded = job.attempts_recorded.max(attempt.next());
        let first = job.first_checkpoint_of_next_attempt();
        job.reserve_checkpoints_from(first);
        let op = HaOp::WriteJob { record: job.record(), purpose: HaJobPurpose::Deploy { attempt } };
        if self.ha_tx.try_send(op).is_err() {
            self.on_ha_done_job(now, HaJobPurpose::Deploy { attempt }, Err("the HA queue is full".into()));
        }
    }

    /// `ha/job` names `attempt` as used: deploy it on `slots`.
    fn start_attempt(&mut self, now: u64, attempt: AttemptId, slots: Vec<TaskManagerId>) {
        let Some(job) = &mut self.job else { return };
        if slots.iter().any(|tm| !self.heartbeats.is_alive(*tm) || !self.tms[tm].reachable()) {
            job.phase = Phase::WaitingForSlots;
            self.try_deploy(now);
            return;
        }
        let ips: BTreeMap<TaskManagerId, IpAddr> = self.tms.iter().map(|(id, e)| (*id, e.ip)).collect();
        let placement = match place(&job.topology, &slots, &ips, job.latest.as_ref()) {
            Ok(p) => p,
            Err(e) => return self.fail_job(now, e.to_string()),
        };
        let latest_id = job.latest.as_ref().map(|l| l.checkpoint_id);
        job.next_checkpoint_id = job.first_checkpoint_of_next_attempt();
        let coordinator =
            match CheckpointCoordinator::restored(job.spec.checkpoint, job.plan.clone(), attempt, job.latest.clone(), job.next_checkpoint_id) {
                Ok(c) => c,
                Err(e) => return self.fail_job(now, format!("checkpoint coordinator: {e}")),
            };
        self.fence.store(attempt.0, Ordering::SeqCst);
        let mut incarnations = BTreeMap::new();
        let mut unsent = None;
        for (tm, subtasks) in &placement.per_tm {
            let entry = &self.tms[tm];
            incarnations.insert(*tm, entry.incarnation);
            let req = TmRequest::Deploy {
                attempt,
                job: job.spec.clone(),
                restored_from: latest_id,
                subtasks: subtasks.clone(),
                locations: placement.locations.clone(),
            };
            if !entry.outbox.send(req) {
                unsent = Some(*tm);
            }
        }
        tracing::info!(event = "deployed", attempt = attempt.0, restored_from = ?latest_id.map(|c| c.0), task_managers = placement.per_tm.len());
        let deploys_pending = placement.per_tm.keys().copied().collect();
        job.running = Some(RunningAttempt { attempt, placement, incarnations, coordinator, deploys_pending });
        job.phase = Phase::Running;
        job.last_attempt = attempt;
        if let Some(tm) = unsent {
            self.failover(now, format!("the deploy to {tm} could not be queued"));
        }
    }

    // ---- failover ----

    fn failover(&mut self, now: u64, reason: String) {
        let jitter = self.jitter_unit();
        let Some(job) = &mut self.job else { return };
        if !matches!(job.phase, Phase::Running | Phase::Finishing { .. }) {
            return;
        }
        let Some(mut running) = job.running.take() else { return };
        let attempt = running.attempt;
        let ended = running.coordinator.on_attempt_ended(now);
        self.fence.store(attempt.0 + 1, Ordering::SeqCst);
        self.restarts += 1;
        let decision = job.backoff.on_failure(now, jitter);
        match decision {
            RestartDecision::RestartAt { at_ms, .. } => {
                tracing::warn!(event = "failover", attempt = attempt.0, reason = %reason, restart_in_ms = at_ms.saturating_sub(now));
                job.phase = Phase::Restarting { at_ms };
                self.apply_ended(ended);
                self.cancel_all(attempt);
            }
            RestartDecision::GiveUp { reason: why } => {
                tracing::warn!(event = "failover", attempt = attempt.0, reason = %reason, restart_in_ms = "never");
                self.apply_ended(ended);
                self.cancel_all(attempt);
                self.fail_job(now, format!("{why}; last failure: {reason}"));
            }
        }
    }

    /// The commands of a coordinator whose attempt ended: aborts are recorded, acknowledged
    /// state is discarded; nothing is sent to the task managers (they are cancelled).
    fn apply_ended(&mut self, cmds: Vec<CoordinatorCommand>) {
        for cmd in cmds {
            match cmd {
                CoordinatorCommand::NotifyAborted { checkpoint_id, reason } => {
                    tracing::info!(event = "checkpoint_aborted", checkpoint = checkpoint_id.0, reason = ?reason);
                }
                CoordinatorCommand::DiscardAborted { handles, .. } => {
                    for h in &handles {
                        for b in h.blobs() {
                            self.gc(b.key.clone());
                        }
                    }
                }
                other => debug_assert!(false, "an ending attempt emits only aborts and discards, not {other:?}"),
            }
        }
    }

    fn cancel_all(&mut self, attempt: AttemptId) {
        for e in self.tms.values_mut() {
            e.cancelled_up_to = e.cancelled_up_to.max(attempt);
            e.outbox.send(TmRequest::Cancel { attempt });
        }
    }

    fn fail_job(&mut self, now: u64, reason: String) {
        let Some(job) = &mut self.job else { return };
        let ended = job.running.take().map(|mut r| (r.attempt, r.coordinator.on_attempt_ended(now)));
        job.phase = Phase::Failed(reason.clone());
        let name = job.spec.name.clone();
        tracing::error!(event = "job_failed", job = %name, reason = %reason);
        if let Some((attempt, cmds)) = ended {
            self.fence.store(attempt.0 + 1, Ordering::SeqCst);
            self.apply_ended(cmds);
            self.cancel_all(attempt);
        }
        let _ = self.ha_tx.try_send(HaOp::WriteFailed { job: name, reason });
    }

    fn gc(&self, key: String) {
        if self.gc_tx.try_send(key).is_err() {
            tracing::debug!("deletion queue full; a discarded blob leaks");
        }
    }

    // ---- coordinator commands ----

    fn send_to_hosts(&self, req: TmRequest) {
        let Some(r) = self.job.as_ref().and_then(|j| j.running.as_ref()) else { return };
        for tm in r.hosts() {
            if let Some(e) = self.tms.get(&tm) {
                e.outbox.send(req.clone());
            }
        }
    }

    fn apply(&mut self, now: u64, cmds: Vec<CoordinatorCommand>) {
        let mut queue: VecDeque<CoordinatorCommand> = cmds.into();
        let mut fail: Option<String> = None;
        while let Some(cmd) = queue.pop_front() {
            let Some(job) = &mut self.job else { return };
            let Some(r) = &mut job.running else { return };
            let attempt = r.attempt;
            match cmd {
                CoordinatorCommand::Trigger { checkpoint_id, barrier } => {
                    tracing::info!(event = "checkpoint_triggered", attempt = attempt.0, checkpoint = checkpoint_id.0, is_final = barrier.is_final);
                    job.next_checkpoint_id = job.next_checkpoint_id.max(r.coordinator.next_checkpoint_id());
                    if checkpoint_id < job.checkpoints_durable {
                        // A durable record reserves the id: trigger now.
                        for (tm, sources) in &r.placement.sources_per_tm {
                            if let Some(e) = self.tms.get(tm) {
                                e.outbox.send(TmRequest::TriggerCheckpoint { attempt, barrier, sources: sources.clone() });
                            }
                        }
                        let extension_in_flight = job.checkpoints_recorded > job.checkpoints_durable;
                        if !extension_in_flight && checkpoint_id.0 + ha::CHECKPOINT_IDS_RESERVED_PER_WRITE / 2 >= job.checkpoints_durable.0 {
                            job.reserve_checkpoints_from(checkpoint_id.next());
                            let _ = self.ha_tx.try_send(HaOp::WriteJob { record: job.record(), purpose: HaJobPurpose::Reserve });
                        }
                    } else {
                        job.reserve_checkpoints_from(checkpoint_id.next());
                        let op = HaOp::WriteJob { record: job.record(), purpose: HaJobPurpose::Trigger { attempt, barrier } };
                        if self.ha_tx.try_send(op).is_err() {
                            queue.extend(self.decline_trigger(now, attempt, checkpoint_id, "the HA queue is full"));
                        }
                    }
                }
                CoordinatorCommand::PersistMetadata { checkpoint_id, metadata } => {
                    job.persisting = Some(checkpoint_id);
                    let op = HaOp::PersistMetadata { attempt, job: job.spec.name.clone(), metadata };
                    if self.ha_tx.try_send(op).is_err() {
                        job.persisting = None;
                        queue.extend(r.coordinator.on_metadata_persisted(now, checkpoint_id, Err("the HA queue is full".into())));
                    }
                }
                CoordinatorCommand::NotifyComplete { checkpoint_id } => {
                    tracing::info!(event = "checkpoint_completed", attempt = attempt.0, checkpoint = checkpoint_id.0);
                    self.checkpoints_completed += 1;
                    self.send_to_hosts(TmRequest::NotifyComplete { attempt, checkpoint_id });
                }
                CoordinatorCommand::NotifyAborted { checkpoint_id, reason } => {
                    tracing::info!(event = "checkpoint_aborted", attempt = attempt.0, checkpoint = checkpoint_id.0, reason = ?reason);
                    self.send_to_hosts(TmRequest::NotifyAborted { attempt, checkpoint_id });
                }
                CoordinatorCommand::Discard { metadata } => {
                    for key in ha::discard_keys(&job.spec.name, &metadata) {
                        self.gc(key);
                    }
                }
                CoordinatorCommand::DiscardAborted { handles, .. } => {
                    for h in &handles {
                        for b in h.blobs() {
                            self.gc(b.key.clone());
                        }
                    }
                }
                CoordinatorCommand::FailJob { reason } => fail = Some(reason),
                CoordinatorCommand::JobFinished { checkpoint_id } => {
                    let notify_pending = r.hosts().collect();
                    job.phase = Phase::Finishing { checkpoint: checkpoint_id, notify_pending };
                }
            }
        }
        if let Some(reason) = fail {
            self.failover(now, reason);
        }
    }

    /// The trigger of `checkpoint_id` could not be sent: the checkpoint is declined on behalf of
    /// its first source (a checkpoint failure, as in Flink's trigger failures).
    fn decline_trigger(&mut self, now: u64, attempt: AttemptId, checkpoint_id: CheckpointId, why: &str) -> Vec<CoordinatorCommand> {
        let Some(r) = self.job.as_mut().and_then(|j| j.running.as_mut()).filter(|r| r.attempt == attempt) else { return Vec::new() };
        let Some(source) = r.coordinator_first_source() else { return Vec::new() };
        r.coordinator.on_decline(now, attempt, checkpoint_id, source, format!("trigger not delivered: {why}"))
    }

    // ---- worker and outbox outcomes ----

    fn on_ha_done(&mut self, done: HaDone) {
        let now = self.now_ms();
        match done {
            HaDone::JobWritten { purpose, job, next_attempt, next_checkpoint_id, result } => {
                if let Some(j) = self.job.as_mut().filter(|j| j.spec.name == job) {
                    if result.is_ok() {
                        j.attempts_durable = j.attempts_durable.max(next_attempt);
                        j.checkpoints_durable = j.checkpoints_durable.max(next_checkpoint_id);
                    }
                    self.on_ha_done_job(now, purpose, result.map_err(|e| e.to_string()));
                }
            }
            HaDone::MetadataPersisted { attempt, metadata, result } => self.on_metadata_persisted(now, attempt, metadata, result),
            HaDone::FinishedWritten { checkpoint, result } => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not write ha/finished; a restarted job manager re-runs the final checkpoint");
                }
                let Some(job) = &mut self.job else { return };
                if !matches!(job.phase, Phase::Finishing { checkpoint: c, .. } if c == checkpoint) {
                    return;
                }
                job.phase = Phase::Finished;
                tracing::info!(event = "job_finished", job = %job.spec.name, checkpoint = checkpoint.0);
                if let Some(r) = job.running.take() {
                    self.fence.store(r.attempt.0 + 1, Ordering::SeqCst);
                    self.cancel_all(r.attempt);
                }
            }
            HaDone::FailedWritten { result } => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not record the job's failure");
                }
            }
            HaDone::Fatal(reason) => self.fatal = Some(reason),
        }
    }

    fn on_ha_done_job(&mut self, now: u64, purpose: HaJobPurpose, result: Result<(), String>) {
        let Some(job) = &mut self.job else { return };
        match purpose {
            HaJobPurpose::Submit => {
                if job.phase != Phase::Submitting {
                    return;
                }
                let waiters = std::mem::take(&mut job.submit_waiters);
                match result {
                    Ok(()) => {
                        job.phase = Phase::WaitingForSlots;
                        for w in waiters {
                            let _ = w.send(JmResponse::Ok);
                        }
                        self.try_deploy(now);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record the submitted job");
                        for w in waiters {
                            let _ = w.send(JmResponse::Error(format!("could not record the job in the blob store: {e}")));
                        }
                        self.job = None;
                    }
                }
            }
            HaJobPurpose::Deploy { attempt } => {
                let Phase::Deploying { attempt: a, slots } = &job.phase else { return };
                if *a != attempt {
                    return;
                }
                match result {
                    Ok(()) => {
                        let slots = slots.clone();
                        self.start_attempt(now, attempt, slots);
                    }
                    Err(e) => {
                        tracing::warn!(attempt = attempt.0, error = %e, "could not record the attempt; deploy retried later");
                        job.phase = Phase::Restarting { at_ms: now + DEPLOY_RETRY_DELAY_MS };
                    }
                }
            }
            HaJobPurpose::Reserve => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "could not reserve checkpoint ids ahead; the next trigger writes");
                    job.checkpoints_recorded = job.checkpoints_durable.max(job.next_checkpoint_id);
                }
            }
            HaJobPurpose::Trigger { attempt, barrier } => {
                let Some(r) = job.running.as_ref().filter(|r| r.attempt == attempt) else { return };
                if !r.coordinator.pending_ids().contains(&barrier.checkpoint_id) {
                    return;
                }
                match result {
                    Ok(()) => {
                        for (tm, sources) in &r.placement.sources_per_tm {
                            if let Some(e) = self.tms.get(tm) {
                                e.outbox.send(TmRequest::TriggerCheckpoint { attempt, barrier, sources: sources.clone() });
                            }
                        }
                    }
                    Err(e) => {
                        let cmds = self.decline_trigger(now, attempt, barrier.checkpoint_id, &format!("could not record the checkpoint id: {e}"));
                        self.apply(now, cmds);
                    }
                }
            }
        }
    }

    fn on_metadata_persisted(&mut self, now: u64, attempt: AttemptId, metadata: CheckpointMetadata, result: Result<(), String>) {
        let Some(job) = &mut self.job else { return };
        let checkpoint_id = metadata.checkpoint_id;
        if job.persisting == Some(checkpoint_id) {
            job.persisting = None;
        }
        if result.is_ok() {
            tracing::info!(event = "metadata_written", attempt = attempt.0, checkpoint = checkpoint_id.0);
            if job.latest.as_ref().is_none_or(|l| l.checkpoint_id < checkpoint_id) {
                job.latest = Some(metadata);
            }
        }
        let cmds = match job.running.as_mut() {
            Some(r) if r.attempt == attempt => r.coordinator.on_metadata_persisted(now, checkpoint_id, result),
            _ => {
                // The attempt ended while the write was in flight; the pointer names it now, so
                // the next deploy restores from it.
                if result.is_ok() {
                    tracing::info!(event = "checkpoint_completed", attempt = attempt.0, checkpoint = checkpoint_id.0, after_attempt_ended = true);
                    self.checkpoints_completed += 1;
                }
                Vec::new()
            }
        };
        self.apply(now, cmds);
        self.try_deploy(now);
    }

    fn on_tm_reply(&mut self, reply: TmReply) {
        let now = self.now_ms();
        if reply.result.is_err() {
            if let Some(e) = self.tms.get_mut(&reply.tm).filter(|e| e.incarnation == reply.incarnation) {
                e.unreachable_at_ms = Some(now);
            }
        }
        let current = self.running_attempt();
        if current != Some(reply.attempt) {
            return;
        }
        let ok = matches!(reply.result, Ok(TmResponse::Ok));
        if !ok {
            tracing::debug!(tm = reply.tm.0, kind = ?reply.kind, attempt = reply.attempt.0, result = ?reply.result, "task manager call failed");
        }
        match reply.kind {
            RequestKind::Deploy => {
                if ok {
                    if let Some(r) = self.job.as_mut().and_then(|j| j.running.as_mut()) {
                        r.deploys_pending.remove(&reply.tm);
                    }
                } else {
                    self.failover(now, format!("the deploy to {} failed: {:?}", reply.tm, reply.result));
                }
            }
            RequestKind::Trigger => {
                if !ok {
                    if let Some(cp) = reply.checkpoint {
                        let pending = self.job.as_ref().and_then(|j| j.running.as_ref()).is_some_and(|r| r.coordinator.pending_ids().contains(&cp));
                        if pending {
                            let cmds = self.decline_trigger(now, reply.attempt, cp, &format!("{}: {:?}", reply.tm, reply.result));
                            self.apply(now, cmds);
                        }
                    }
                }
            }
            RequestKind::NotifyComplete => {
                let Some(job) = &mut self.job else { return };
                let Phase::Finishing { checkpoint, notify_pending } = &mut job.phase else { return };
                if reply.checkpoint != Some(*checkpoint) {
                    return;
                }
                if !ok {
                    // The final commit may not have happened: restore from the final checkpoint
                    // and let the new attempt commit it.
                    self.failover(now, format!("the final commit notification to {} failed: {:?}", reply.tm, reply.result));
                    return;
                }
                notify_pending.remove(&reply.tm);
                if notify_pending.is_empty() {
                    let op = HaOp::WriteFinished { job: job.spec.name.clone(), checkpoint: *checkpoint };
                    if self.ha_tx.try_send(op).is_err() {
                        tracing::warn!("HA queue full; ha/finished not written");
                    }
                }
            }
            RequestKind::NotifyAborted | RequestKind::Cancel => {}
        }
    }
}

impl RunningAttempt {
    fn coordinator_first_source(&self) -> Option<SubtaskId> {
        self.placement.sources_per_tm.values().flatten().min().copied()
    }
}
