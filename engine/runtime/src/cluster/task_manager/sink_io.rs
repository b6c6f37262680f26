//! Carries out a sink writer's [`SinkCommand`]s against the broker, in order (the I/O half of
//! Flink's `KafkaWriter` / `KafkaCommitter` and `TwoPhaseCommitSinkFunction`).
//!
//! * Every init carries an [`InitToken`] (this attempt, a per-subtask counter): its retries are
//!   idempotent, and an init of an older attempt still in the network is refused by the broker
//!   once a newer attempt touched the id.
//! * `Begin{id}` → `init_transactions(id)` (fences every older producer of the id, aborts its
//!   unfinished transaction); the producer id and epoch are kept for the id's later commands.
//! * `Write{id, records}` → transactional produce to the output topic, partition = subtask index.
//! * `PreCommit{id}` → `prepare` (the barrier is acknowledged only after this returns).
//! * `Commit{id}` → commit with the producer held for the id, or — after a restore, for an id
//!   this subtask did not open — with the producer id and epoch `list_transactions` reports
//!   (commit is idempotent, so committing a committed transaction is fine).
//! * `AbortLater{..}` → raise a [`PrefixFence`] over this subtask's ids at this attempt and, in
//!   the same request, `list_transactions(prefix)`; then fence each listed id that
//!   [`SinkCommand::aborts`] covers, open or not (`init_transactions`: a new epoch aborts an open
//!   transaction and rejects the old producer's later writes, so a zombie can neither reopen it
//!   nor open one in an id it had initialized). The prefix fence stops a zombie of an older
//!   attempt from initializing an id that did not exist yet at the listing.
//! * `PlainWrite{records}` → idempotent produce outside any transaction (the at-least-once control).
//!
//! Transient broker errors are retried ([`SINK_RETRY`]); a permanent one (fenced, timed out,
//! aborted, a commit the broker refuses) is a [`SinkFailure`]: the subtask fails and the job
//! restarts from its latest completed checkpoint.

use crate::broker::{BrokerClient, BrokerError, InitToken, PrefixFence, Producer, RetryPolicy, TxnState};
use floe_core::ids::{AttemptId, PartitionId, SubtaskId};
use floe_core::operator::{SinkCommand, TransactionalId};
use std::collections::BTreeMap;
use std::time::Duration;

/// How sink broker calls are retried: transient errors only, a bounded number of times.
pub const SINK_RETRY: RetryPolicy = RetryPolicy { attempts_max: 50, backoff_ms: 100 };

/// At most this many transactions are open (begun, not yet committed or aborted) per subtask.
pub const OPEN_TRANSACTIONS_MAX: usize = 128;

/// A sink command that could not be carried out: the subtask fails.
#[derive(Debug, thiserror::Error)]
#[error("sink {command}: {error}")]
pub struct SinkFailure {
    /// Which command.
    pub command: String,
    /// The broker's answer.
    pub error: String,
}

fn fail(command: impl Into<String>, error: impl std::fmt::Display) -> SinkFailure {
    SinkFailure { command: command.into(), error: error.to_string() }
}

/// The broker side of one sink subtask.
pub struct SinkIo {
    client: BrokerClient,
    topic: String,
    partition: PartitionId,
    attempt: AttemptId,
    subtask: SubtaskId,
    /// Transactions this subtask began (and has not finished), by id.
    open: BTreeMap<String, Producer>,
    /// The producer of plain writes (created on first use).
    plain: Option<Producer>,
    /// Records written so far (transactional or plain).
    pub records_written: u64,
    /// Init calls made so far: the sequence of the next [`InitToken`].
    inits: u64,
}

impl SinkIo {
    /// The sink I/O of `subtask` writing partition `subtask.index` of `topic`.
    pub fn new(client: BrokerClient, topic: String, attempt: AttemptId, subtask: SubtaskId) -> Self {
        SinkIo { client, topic, partition: PartitionId(subtask.index.0), attempt, subtask, open: BTreeMap::new(), plain: None, records_written: 0, inits: 0 }
    }

    /// Creates the output topic with `partitions` partitions unless it exists (idempotent).
    pub async fn ensure_topic(&self, partitions: u32) -> Result<(), SinkFailure> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.client.create_topic(&self.topic, partitions).await {
                Ok(()) | Err(BrokerError::TopicExists { .. }) => return Ok(()),
                Err(e) if e.is_retriable() && attempts < SINK_RETRY.attempts_max => {
                    tokio::time::sleep(Duration::from_millis(SINK_RETRY.backoff_ms)).await;
                }
                Err(e) => return Err(fail(format!("create topic {}", self.topic), e)),
            }
        }
    }

    /// Carries out one command.
    pub async fn run(&mut self, command: SinkCommand) -> Result<(), SinkFailure> {
        let (attempt, subtask) = (self.attempt.0, self.subtask.to_string());
        match command {
            SinkCommand::Begin { id } => {
                let tid = id.to_string();
                if self.open.len() >= OPEN_TRANSACTIONS_MAX {
                    return Err(fail(format!("begin {tid}"), format!("{} transactions open, the bound", self.open.len())));
                }
                let token = self.next_token();
                let producer = Producer::transactional_with_token(self.client.clone(), &tid, None, Some(token), SINK_RETRY)
                    .await
                    .map_err(|e| fail(format!("begin {tid}"), e))?;
                self.open.insert(tid, producer);
            }
            SinkCommand::Write { id, records } => {
                let tid = id.to_string();
                let producer = self.open.get_mut(&tid).ok_or_else(|| fail(format!("write {tid}"), "no such open transaction"))?;
                let n = records.len() as u64;
                producer.send(&self.topic, self.partition, records).await.map_err(|e| fail(format!("write {tid}"), e))?;
                self.records_written += n;
            }
            SinkCommand::PreCommit { id } => {
                let tid = id.to_string();
                let producer = self.open.get(&tid).ok_or_else(|| fail(format!("pre-commit {tid}"), "no such open transaction"))?;
                producer.prepare().await.map_err(|e| fail(format!("pre-commit {tid}"), e))?;
                tracing::info!(event = "sink_prepared", attempt, subtask = %subtask, txn = %tid);
            }
            SinkCommand::Commit { id } => {
                let tid = id.to_string();
                let state = match self.open.remove(&tid) {
                    Some(producer) => producer.commit().await.map_err(|e| fail(format!("commit {tid}"), e))?,
                    None => self.commit_restored(&id).await?,
                };
                if !matches!(state, TxnState::CompleteCommit | TxnState::Empty) {
                    return Err(fail(format!("commit {tid}"), format!("the broker left it {state:?}")));
                }
                tracing::info!(event = "sink_committed", attempt, subtask = %subtask, txn = %tid);
            }
            command @ SinkCommand::AbortLater { .. } => {
                let SinkCommand::AbortLater { prefix, owner, .. } = &command else { unreachable!("matched above") };
                // The fence first, in the same step as the listing: a zombie of an older attempt
                // (cut off from the job manager, not from the broker) could otherwise initialize
                // the id of a later checkpoint after the listing, open a transaction nobody ever
                // ends, and hold back every read-committed consumer (random-faults seed 7664).
                let fence = PrefixFence { prefix: TransactionalId::subtask_prefix(prefix, *owner), generation: self.attempt.0 };
                let listing = with_retries(|| self.client.fence_and_list_transactions(prefix, Some(fence.clone())))
                    .await
                    .map_err(|e| fail(format!("fence and list transactions {prefix}"), e))?;
                for row in listing {
                    let Ok(id) = TransactionalId::parse(&row.transactional_id) else { continue };
                    if !command.aborts(&id) {
                        continue;
                    }
                    // Fence, do not just abort, and every covered id whatever its state (Flink's
                    // `TransactionAborter` likewise runs `initTransactions` on each id after the
                    // restored checkpoint): a new epoch aborts an open transaction AND rejects any
                    // later write of the producer that opened or only initialized it. Otherwise a
                    // zombie's write — still running, or delayed in a partitioned link — reopens
                    // the id and holds back every read-committed consumer until the broker's
                    // transaction timeout (Kafka's hanging transactions, KIP-890;
                    // jm-crash-recovered-commits-invisible, late-write-reopens-initialized-transaction).
                    let token = self.next_token();
                    let result = with_retries(|| self.client.init_transactions_with_token(&row.transactional_id, None, Some(token))).await;
                    match result {
                        Ok(_) => tracing::info!(event = "sink_aborted", attempt, subtask = %subtask, txn = %row.transactional_id),
                        // Someone (a newer Begin) bumped the epoch since the listing: it is theirs now.
                        Err(BrokerError::Fenced { .. } | BrokerError::StaleInit { .. } | BrokerError::PrefixFenced { .. }) => {}
                        Err(e) => return Err(fail(format!("abort {}", row.transactional_id), e)),
                    }
                }
            }
            SinkCommand::PlainWrite { records } => {
                if self.plain.is_none() {
                    self.plain = Some(Producer::idempotent(self.client.clone(), SINK_RETRY).await.map_err(|e| fail("plain producer", e))?);
                }
                let n = records.len() as u64;
                let producer = self.plain.as_mut().expect("created above");
                producer.send(&self.topic, self.partition, records).await.map_err(|e| fail("plain write", e))?;
                self.records_written += n;
            }
        }
        Ok(())
    }

    /// The token of this subtask's next init: its attempt, then a counter. Every retry of one
    /// init carries the same token (a late duplicate cannot fence its own producer), and an init
    /// of an older attempt still in the network is refused once a newer attempt touched the id.
    fn next_token(&mut self) -> InitToken {
        self.inits += 1;
        InitToken { generation: self.attempt.0, sequence: self.inits }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<crate::broker::TxnListing>, SinkFailure> {
        with_retries(|| self.client.list_transactions(prefix)).await.map_err(|e| fail(format!("list transactions {prefix}"), e))
    }

    /// Commits a transaction this subtask did not open (named by a restored snapshot).
    async fn commit_restored(&self, id: &TransactionalId) -> Result<TxnState, SinkFailure> {
        let tid = id.to_string();
        let listing = self.list(&tid).await?;
        let row = listing.into_iter().find(|r| r.transactional_id == tid).ok_or_else(|| fail(format!("commit {tid}"), "the broker does not know the transaction"))?;
        with_retries(|| self.client.commit(&tid, row.producer_id, row.epoch)).await.map_err(|e| fail(format!("commit {tid}"), e))
    }
}

async fn with_retries<T, Fut: std::future::Future<Output = Result<T, BrokerError>>>(mut op: impl FnMut() -> Fut) -> Result<T, BrokerError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await {
            Err(e) if e.is_retriable() && attempts < SINK_RETRY.attempts_max => {
                tokio::time::sleep(Duration::from_millis(SINK_RETRY.backoff_ms)).await;
            }
            other => return other,
        }
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;
    use crate::broker::{run_broker_server, BrokerConfig, IsolationLevel, PackedRecords};
    use crate::cluster::sim::simulate;
    use crate::disk::SimDisk;
    use crate::transport::RpcConfig;
    use floe_core::ids::{CheckpointId, OperatorId};
    use madsim::runtime::Handle;
    use std::net::SocketAddr;

    const TOPIC: &str = "out";
    const PREFIX: &str = "floe-sink";

    fn broker_addr() -> SocketAddr {
        "10.0.0.1:9092".parse().expect("a socket address")
    }

    fn client() -> BrokerClient {
        BrokerClient::new(broker_addr(), RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() })
    }

    /// What a zombie of the old attempt did with one transactional id before the restore.
    #[derive(Clone, Copy, Debug)]
    enum Zombie {
        /// `init_transactions` only: the id is `Empty`, the producer holds its current epoch.
        Initialized,
        /// Wrote one record: the transaction is open.
        Wrote,
        /// Wrote and prepared.
        Prepared,
    }

    #[test]
    fn a_restore_fences_every_later_id_of_its_share_so_a_zombie_opens_no_transaction_in_it() {
        // (id, partition, what the zombie did, covered by AbortLater{after: 1, owner: 0, parallelism: 2}).
        let table: [(&str, u32, Zombie, bool); 5] = [
            // Named by the restored checkpoint: it is committed by the restore, never fenced.
            ("floe-sink-0-1", 0, Zombie::Prepared, false),
            // The bug: initialized, not yet written; its delayed write must be refused.
            ("floe-sink-0-2", 0, Zombie::Initialized, true),
            ("floe-sink-0-3", 0, Zombie::Wrote, true),
            ("floe-sink-0-4", 0, Zombie::Prepared, true),
            // Another owner's share: untouched.
            ("floe-sink-1-2", 1, Zombie::Initialized, false),
        ];
        simulate(7, Duration::from_secs(60), "cargo test -p floe-runtime sink_io", move || async move {
            let disk = SimDisk::new();
            let _broker = Handle::current()
                .create_node()
                .name("broker")
                .ip(broker_addr().ip())
                .init(move || {
                    let disk = disk.clone();
                    async move {
                        let _ = run_broker_server(broker_addr(), disk, BrokerConfig::default()).await;
                    }
                })
                .build();
            let node = Handle::current().create_node().name("tm").ip("10.0.1.1".parse().expect("an ip")).build();
            node.spawn(async move {
                let c = client();
                let mut sink = SinkIo::new(c.clone(), TOPIC.into(), AttemptId(2), SubtaskId::new(OperatorId(3), 0));
                sink.ensure_topic(2).await.expect("the topic");
                let mut zombies = Vec::new();
                for (tid, partition, zombie, _) in table {
                    let mut producer = Producer::transactional(c.clone(), tid, None, SINK_RETRY).await.expect("init");
                    if matches!(zombie, Zombie::Wrote | Zombie::Prepared) {
                        producer.send(TOPIC, PartitionId(partition), PackedRecords::from_values([format!("{tid}-before")])).await.expect("write");
                    }
                    if matches!(zombie, Zombie::Prepared) {
                        producer.prepare().await.expect("prepare");
                    }
                    zombies.push(producer);
                }
                let restore = SinkCommand::AbortLater { prefix: PREFIX.into(), after: CheckpointId(1), owner: 0, parallelism: 2 };
                sink.run(restore).await.expect("abort later");
                for ((tid, partition, zombie, covered), producer) in table.into_iter().zip(zombies.iter_mut()) {
                    let late = producer.send(TOPIC, PartitionId(partition), PackedRecords::from_values([format!("{tid}-late")])).await;
                    match (covered, zombie) {
                        (true, _) => assert!(matches!(late, Err(BrokerError::Fenced { .. })), "{tid} ({zombie:?}): {late:?}"),
                        // A prepared transaction takes no writes, fenced or not.
                        (false, Zombie::Prepared) => assert!(late.is_err(), "{tid} ({zombie:?}): {late:?}"),
                        (false, _) => assert!(late.is_ok(), "{tid} ({zombie:?}): {late:?}"),
                    }
                }
                // The restored checkpoint's transaction still commits.
                assert_eq!(zombies[0].commit().await.expect("commit"), TxnState::CompleteCommit);
                // Nothing holds back a read-committed consumer of the share's partition.
                let fetched = c.fetch(TOPIC, PartitionId(0), floe_core::ids::Offset(0), 100, 1 << 20, IsolationLevel::ReadCommitted).await.expect("fetch");
                assert_eq!(fetched.last_stable_offset, fetched.high_watermark, "an open transaction holds partition 0 back");
                let values: Vec<Vec<u8>> = fetched.records.iter().map(<[u8]>::to_vec).collect();
                assert_eq!(values, vec![b"floe-sink-0-1-before".to_vec()]);
            })
            .await
            .expect("the test task");
        });
    }
}
