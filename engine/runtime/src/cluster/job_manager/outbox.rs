//! Per-task-manager outboxes: the job manager's RPCs to one task manager go out one at a time,
//! in the order the job manager issued them (a deploy before its triggers, a notify before the
//! cancel that ends the job), from a task of their own so the job manager's actor never waits
//! on a task manager (Flink's `TaskExecutorGateway` calls are asynchronous too).
//!
//! Bounds: at most [`OUTBOX_QUEUE_MAX`] requests wait per task manager (more are dropped with a
//! warning: a task manager that far behind is cut off and its heartbeat will time out); each
//! call is bounded by the RPC timeout and retried at most [`OUTBOX_CALL_ATTEMPTS_MAX`] times
//! (notifications only). A queued request of an attempt older than the current one is skipped
//! (except `Cancel`, which is meant for old attempts).

use crate::cluster::protocol::{Incarnation, TmRequest, TmResponse};
use crate::cluster::TM_RPC_PORT;
use crate::transport::rpc::{RpcClient, RpcConfig};
use floe_core::ids::{AttemptId, CheckpointId, TaskManagerId};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Requests waiting per task manager.
pub const OUTBOX_QUEUE_MAX: usize = 256;
/// Attempts of a notification call (deploys, triggers and cancels are sent once).
pub const OUTBOX_CALL_ATTEMPTS_MAX: u32 = 3;

/// Which request a reply is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `Deploy`.
    Deploy,
    /// `TriggerCheckpoint`.
    Trigger,
    /// `NotifyComplete`.
    NotifyComplete,
    /// `NotifyAborted`.
    NotifyAborted,
    /// `Cancel`.
    Cancel,
}

impl RequestKind {
    /// The kind of `req`, with its attempt.
    pub fn of(req: &TmRequest) -> (RequestKind, AttemptId) {
        match req {
            TmRequest::Deploy { attempt, .. } => (RequestKind::Deploy, *attempt),
            TmRequest::TriggerCheckpoint { attempt, .. } => (RequestKind::Trigger, *attempt),
            TmRequest::NotifyComplete { attempt, .. } => (RequestKind::NotifyComplete, *attempt),
            TmRequest::NotifyAborted { attempt, .. } => (RequestKind::NotifyAborted, *attempt),
            TmRequest::Cancel { attempt } => (RequestKind::Cancel, *attempt),
        }
    }

    /// The checkpoint `req` is about, if any.
    pub fn checkpoint_of(req: &TmRequest) -> Option<CheckpointId> {
        match req {
            TmRequest::TriggerCheckpoint { barrier, .. } => Some(barrier.checkpoint_id),
            TmRequest::NotifyComplete { checkpoint_id, .. } | TmRequest::NotifyAborted { checkpoint_id, .. } => Some(*checkpoint_id),
            TmRequest::Deploy { .. } | TmRequest::Cancel { .. } => None,
        }
    }
}

/// How a call to a task manager ended.
#[derive(Clone, Debug)]
pub struct TmReply {
    /// The task manager.
    pub tm: TaskManagerId,
    /// Its incarnation when the request was queued.
    pub incarnation: Incarnation,
    /// The request's kind.
    pub kind: RequestKind,
    /// The request's attempt.
    pub attempt: AttemptId,
    /// The checkpoint a trigger or notification was about.
    pub checkpoint: Option<CheckpointId>,
    /// The answer, or the RPC error as text.
    pub result: Result<TmResponse, String>,
}

/// One task manager's outbox.
pub struct Outbox {
    tx: mpsc::Sender<TmRequest>,
    task: JoinHandle<()>,
    /// The incarnation it talks to.
    pub incarnation: Incarnation,
    /// The address it talks to.
    pub ip: IpAddr,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Outbox {
    /// Starts an outbox to `tm` at `ip`; replies go to `replies`. `fence` holds the current
    /// attempt: queued requests of older attempts are skipped.
    pub fn spawn(
        tm: TaskManagerId,
        incarnation: Incarnation,
        ip: IpAddr,
        rpc: RpcConfig,
        fence: Arc<AtomicU64>,
        replies: mpsc::UnboundedSender<TmReply>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<TmRequest>(OUTBOX_QUEUE_MAX);
        let client = RpcClient::<TmRequest, TmResponse>::new(SocketAddr::new(ip, TM_RPC_PORT), rpc);
        let task = tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let (kind, attempt) = RequestKind::of(&req);
                let checkpoint = RequestKind::checkpoint_of(&req);
                if kind != RequestKind::Cancel && attempt.0 < fence.load(Ordering::SeqCst) {
                    continue;
                }
                let attempts_max = match kind {
                    RequestKind::NotifyComplete | RequestKind::NotifyAborted => OUTBOX_CALL_ATTEMPTS_MAX,
                    _ => 1,
                };
                let mut result = Err(String::new());
                for _ in 0..attempts_max {
                    result = client.call(req.clone()).await.map_err(|e| e.to_string());
                    if result.is_ok() || attempt.0 < fence.load(Ordering::SeqCst) {
                        break;
                    }
                }
                if replies.send(TmReply { tm, incarnation, kind, attempt, checkpoint, result }).is_err() {
                    return;
                }
            }
        });
        Outbox { tx, task, incarnation, ip }
    }

    /// Queues `req`; false (and a warning) when the queue is full or the outbox stopped.
    pub fn send(&self, req: TmRequest) -> bool {
        match self.tx.try_send(req) {
            Ok(()) => true,
            Err(e) => {
                let (kind, attempt) = RequestKind::of(match &e {
                    mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
                });
                tracing::warn!(ip = %self.ip, ?kind, attempt = attempt.0, "task manager outbox full or closed; request dropped");
                false
            }
        }
    }
}
