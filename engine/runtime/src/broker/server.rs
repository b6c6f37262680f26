//! The broker as a network service: [`run_broker_server`] recovers a [`Broker`] from its disk,
//! then serves [`BrokerRequest`]s over [`crate::transport::rpc`].
//!
//! One task owns the broker (no locks around the state). Connection handlers queue requests to
//! it through a bounded channel ([`BrokerConfig::request_queue_max`]; a full queue answers
//! `Unavailable` at once). The owner takes everything queued (up to
//! [`BrokerConfig::group_commit_requests_max`]) as one group commit — requests that arrive while
//! a batch is being fsynced form the next batch — and every
//! [`BrokerConfig::expiry_check_interval_ms`] it aborts expired transactions. Time is the host's
//! monotonic clock (`tokio::time::Instant`, virtual under madsim), in ms since the server started.

use super::protocol::{BrokerError, BrokerRequest, BrokerResponse};
use super::state::BrokerConfig;
use super::store::Broker;
use crate::disk::Disk;
use crate::transport::rpc::serve;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Recovery attempts (e.g. while the disk fails writes) before the server gives up.
pub const RECOVERY_ATTEMPTS_MAX: u32 = 600;

/// Pause between recovery attempts, in milliseconds.
const RECOVERY_RETRY_BACKOFF_MS: u64 = 100;

/// What a handler sends to the broker task.
type Queued = (BrokerRequest, oneshot::Sender<Result<BrokerResponse, BrokerError>>);

/// What the server answers on the wire.
pub type WireResponse = Result<BrokerResponse, BrokerError>;

/// Recovers the broker from `disk` (retrying up to [`RECOVERY_ATTEMPTS_MAX`] times), listens on `addr` and serves until the task is dropped (a
/// killed node) or the listener fails for good.
pub async fn run_broker_server<D: Disk>(addr: SocketAddr, disk: D, config: BrokerConfig) -> io::Result<()> {
    #[allow(clippy::disallowed_methods)] // tokio::time::Instant: virtual time under madsim
    let started = Instant::now();
    let mut attempts = 0u32;
    let (broker, report) = loop {
        attempts += 1;
        match Broker::open(disk.clone(), config.clone(), elapsed_ms(started)).await {
            Ok(opened) => break opened,
            Err(e) if attempts < RECOVERY_ATTEMPTS_MAX => {
                tracing::warn!(error = %e, attempts, "broker recovery failed; retrying");
                tokio::time::sleep(Duration::from_millis(RECOVERY_RETRY_BACKOFF_MS)).await;
            }
            Err(e) => return Err(io::Error::other(e)),
        }
    };
    tracing::info!(%addr, ?report, "broker recovered");
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, broker, config, started).await
}

/// Serves an already-recovered broker on `listener` (for callers that bind port 0 themselves).
pub async fn serve_on<D: Disk>(listener: TcpListener, broker: Broker<D>, config: BrokerConfig, started: Instant) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Queued>(config.request_queue_max.max(1));
    let owner = tokio::spawn(own_broker(broker, rx, config, started));
    let _abort_owner = AbortOnDrop(owner);
    serve(listener, move |req: BrokerRequest| {
        let tx = tx.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            match tx.try_send((req, reply)) {
                Ok(()) => answer.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("broker stopped".into()))),
                Err(mpsc::error::TrySendError::Full(_)) => Err(BrokerError::Unavailable("request queue full".into())),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(BrokerError::Unavailable("broker stopped".into())),
            }
        }
    })
    .await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn own_broker<D: Disk>(mut broker: Broker<D>, mut rx: mpsc::Receiver<Queued>, config: BrokerConfig, started: Instant) {
    let batch_max = config.group_commit_requests_max.max(1);
    let mut expiry = tokio::time::interval(Duration::from_millis(config.expiry_check_interval_ms.max(1)));
    loop {
        // `biased`: tokio's select! otherwise picks a random branch first, from a thread-local RNG
        // seeded by a process-wide counter — the same seed would take another path in the
        // second simulation of a process (found by the determinism test, seed 40).
        tokio::select! {
            biased;
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < batch_max {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let answers = broker.execute(requests, elapsed_ms(started)).await;
                debug_assert_eq!(answers.len(), replies.len());
                for (answer, reply) in answers.into_iter().zip(replies) {
                    // The caller may have given up (timeout); its answer is simply dropped.
                    let _ = reply.send(answer);
                }
            }
            _ = expiry.tick() => {
                match broker.expire_transactions(elapsed_ms(started)).await {
                    Ok(expired) if !expired.is_empty() => tracing::info!(?expired, "transactions timed out"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiring transactions failed"),
                }
            }
        }
    }
}
