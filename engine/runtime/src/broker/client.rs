//! The broker's client: [`BrokerClient`] (one typed method per request, over
//! [`crate::transport::rpc::RpcClient`]) and [`Producer`], an idempotent or transactional
//! producer that keeps its sequence numbers and retries retriable failures with the *same*
//! sequence, so a retry after a lost answer or a broker restart never duplicates (Kafka's
//! `enable.idempotence`).

use super::protocol::*;
use super::server::WireResponse;
use crate::transport::rpc::{RpcClient, RpcConfig, RpcError};
use floe_core::ids::{Offset, PartitionId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A typed client of one broker.
#[derive(Clone, Debug)]
pub struct BrokerClient {
    rpc: RpcClient<BrokerRequest, WireResponse>,
}

fn unexpected(what: &str, got: BrokerResponse) -> BrokerError {
    BrokerError::Protocol(format!("expected {what}, got {got:?}"))
}

/// The broker's answer, or the transport failure as a broker error: `Timeout` or `Unavailable`
/// (the request may or may not have taken effect).
fn answer(result: Result<WireResponse, RpcError>) -> Result<BrokerResponse, BrokerError> {
    match result {
        Ok(answer) => answer,
        Err(RpcError::Timeout { .. }) => Err(BrokerError::Timeout),
        Err(e @ (RpcError::Io(_) | RpcError::Closed)) => Err(BrokerError::Unavailable(e.to_string())),
        Err(e @ RpcError::Frame(_)) => Err(BrokerError::InvalidRequest(e.to_string())),
    }
}

impl BrokerClient {
    /// A client of the broker at `addr` (connects lazily, reconnects after failures).
    pub fn new(addr: SocketAddr, config: RpcConfig) -> Self {
        BrokerClient { rpc: RpcClient::new(addr, config) }
    }

    /// Sends one request. Transport failures become `Timeout` or `Unavailable` (the request may
    /// or may not have taken effect).
    pub async fn call(&self, request: BrokerRequest) -> Result<BrokerResponse, BrokerError> {
        answer(self.rpc.call(request).await)
    }

    /// Sends one request without giving it up (a retry sends the same request again, uncopied).
    pub async fn call_ref(&self, request: &BrokerRequest) -> Result<BrokerResponse, BrokerError> {
        answer(self.rpc.call_ref(request).await)
    }

    /// Creates a topic (`Ok` if it exists with the same partition count).
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BrokerError> {
        match self.call(BrokerRequest::CreateTopic { topic: topic.into(), partitions }).await? {
            BrokerResponse::TopicCreated { .. } => Ok(()),
            other => Err(unexpected("TopicCreated", other)),
        }
    }

    /// A topic's partition count.
    pub async fn partitions(&self, topic: &str) -> Result<u32, BrokerError> {
        match self.call(BrokerRequest::Metadata { topic: topic.into() }).await? {
            BrokerResponse::Metadata { partitions } => Ok(partitions),
            other => Err(unexpected("Metadata", other)),
        }
    }

    /// A plain (non-idempotent) append; returns the first record's offset. A retry after a
    /// failure may duplicate: use a [`Producer`] where that matters.
    pub async fn produce(&self, topic: &str, partition: PartitionId, records: PackedRecords) -> Result<Offset, BrokerError> {
        self.produce_with(topic, partition, None, None, records).await.map(|(offset, _)| offset)
    }

    /// An append with a producer stamp and/or transactional id; returns (first offset, duplicate).
    pub async fn produce_with(
        &self,
        topic: &str,
        partition: PartitionId,
        producer: Option<ProducerStamp>,
        transactional_id: Option<&str>,
        records: PackedRecords,
    ) -> Result<(Offset, bool), BrokerError> {
        let request = BrokerRequest::Produce {
            topic: topic.into(),
            partition,
            producer,
            transactional_id: transactional_id.map(str::to_string),
            records,
        };
        self.produce_request(&request).await
    }

    /// Sends a `Produce` request built by the caller (kept for its retries); returns (first
    /// offset, duplicate).
    async fn produce_request(&self, request: &BrokerRequest) -> Result<(Offset, bool), BrokerError> {
        debug_assert!(matches!(request, BrokerRequest::Produce { .. }), "produce_request sends a Produce");
        match self.call_ref(request).await? {
            BrokerResponse::Produced { base_offset, duplicate } => Ok((base_offset, duplicate)),
            other => Err(unexpected("Produced", other)),
        }
    }

    /// A producer id for an idempotent producer (epoch 0).
    pub async fn init_producer_id(&self) -> Result<(ProducerId, ProducerEpoch), BrokerError> {
        match self.call(BrokerRequest::InitProducerId).await? {
            BrokerResponse::ProducerId { producer_id, epoch } => Ok((producer_id, epoch)),
            other => Err(unexpected("ProducerId", other)),
        }
    }

    /// Registers `transactional_id`, bumps its epoch (fencing older producers) and aborts its
    /// open transaction.
    pub async fn init_transactions(
        &self,
        transactional_id: &str,
        transaction_timeout_ms: Option<u64>,
    ) -> Result<(ProducerId, ProducerEpoch), BrokerError> {
        self.init_transactions_with_token(transactional_id, transaction_timeout_ms, None).await
    }

    /// [`init_transactions`](Self::init_transactions) ordered by `token` (see [`InitToken`]):
    /// retries with the same token are idempotent, older tokens are refused.
    pub async fn init_transactions_with_token(
        &self,
        transactional_id: &str,
        transaction_timeout_ms: Option<u64>,
        token: Option<InitToken>,
    ) -> Result<(ProducerId, ProducerEpoch), BrokerError> {
        let request = BrokerRequest::InitTransactions { transactional_id: transactional_id.into(), transaction_timeout_ms, token };
        match self.call(request).await? {
            BrokerResponse::ProducerId { producer_id, epoch } => Ok((producer_id, epoch)),
            other => Err(unexpected("ProducerId", other)),
        }
    }

    /// Pre-commits the open transaction.
    pub async fn prepare(&self, transactional_id: &str, producer_id: ProducerId, epoch: ProducerEpoch) -> Result<TxnState, BrokerError> {
        let request = BrokerRequest::Prepare { transactional_id: transactional_id.into(), producer_id, epoch };
        match self.call(request).await? {
            BrokerResponse::TransactionEnded { state } => Ok(state),
            other => Err(unexpected("TransactionEnded", other)),
        }
    }

    /// Commits or aborts the open transaction (idempotent).
    pub async fn end_transaction(
        &self,
        transactional_id: &str,
        producer_id: ProducerId,
        epoch: ProducerEpoch,
        outcome: TxnOutcome,
    ) -> Result<TxnState, BrokerError> {
        let request = BrokerRequest::EndTransaction { transactional_id: transactional_id.into(), producer_id, epoch, outcome };
        match self.call(request).await? {
            BrokerResponse::TransactionEnded { state } => Ok(state),
            other => Err(unexpected("TransactionEnded", other)),
        }
    }

    /// Commits the open transaction (idempotent).
    pub async fn commit(&self, transactional_id: &str, producer_id: ProducerId, epoch: ProducerEpoch) -> Result<TxnState, BrokerError> {
        self.end_transaction(transactional_id, producer_id, epoch, TxnOutcome::Commit).await
    }

    /// Aborts the open transaction (idempotent).
    pub async fn abort(&self, transactional_id: &str, producer_id: ProducerId, epoch: ProducerEpoch) -> Result<TxnState, BrokerError> {
        self.end_transaction(transactional_id, producer_id, epoch, TxnOutcome::Abort).await
    }

    /// Every transactional id starting with `prefix`, sorted, with its state.
    pub async fn list_transactions(&self, prefix: &str) -> Result<Vec<TxnListing>, BrokerError> {
        self.fence_and_list_transactions(prefix, None).await
    }

    /// [`list_transactions`](Self::list_transactions) after raising `fence` (see
    /// [`PrefixFence`]): the fence is durable when the listing answers.
    pub async fn fence_and_list_transactions(&self, prefix: &str, fence: Option<PrefixFence>) -> Result<Vec<TxnListing>, BrokerError> {
        match self.call(BrokerRequest::ListTransactions { prefix: prefix.into(), fence }).await? {
            BrokerResponse::Transactions(list) => Ok(list),
            other => Err(unexpected("Transactions", other)),
        }
    }

    /// Reads records of one partition.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        from_offset: Offset,
        records_max: u32,
        bytes_max: u32,
        isolation: IsolationLevel,
    ) -> Result<FetchResult, BrokerError> {
        let request = BrokerRequest::Fetch { topic: topic.into(), partition, from_offset, records_max, bytes_max, isolation };
        match self.call(request).await? {
            BrokerResponse::Fetched(result) => Ok(result),
            other => Err(unexpected("Fetched", other)),
        }
    }
}

/// How a [`Producer`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included.
    pub attempts_max: u32,
    /// Pause between attempts.
    pub backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts_max: 20, backoff_ms: 100 }
    }
}

/// An idempotent or transactional producer: it stamps every batch with its producer id, epoch
/// and the next sequence of that partition, and retries retriable errors with the same stamp.
#[derive(Clone, Debug)]
pub struct Producer {
    client: BrokerClient,
    producer_id: ProducerId,
    epoch: ProducerEpoch,
    transactional_id: Option<String>,
    sequences: BTreeMap<(String, PartitionId), u32>,
    retry: RetryPolicy,
    /// Set when a send gave up with its outcome unknown: reusing its sequence for other
    /// records could be mistaken for a retry, so the producer refuses to send again (Kafka
    /// likewise makes such an error fatal for the producer).
    poisoned: bool,
}

impl Producer {
    /// An idempotent producer with a fresh producer id.
    pub async fn idempotent(client: BrokerClient, retry: RetryPolicy) -> Result<Self, BrokerError> {
        let (producer_id, epoch) = with_retries(retry, || client.init_producer_id()).await?;
        Ok(Producer { client, producer_id, epoch, transactional_id: None, sequences: BTreeMap::new(), retry, poisoned: false })
    }

    /// A transactional producer: `init_transactions` (fencing every older producer of the id).
    pub async fn transactional(
        client: BrokerClient,
        transactional_id: &str,
        transaction_timeout_ms: Option<u64>,
        retry: RetryPolicy,
    ) -> Result<Self, BrokerError> {
        Self::transactional_with_token(client, transactional_id, transaction_timeout_ms, None, retry).await
    }

    /// [`transactional`](Self::transactional) whose init carries `token` — the same on every
    /// retry, so a retry that overtakes its own first attempt is not fenced by it.
    pub async fn transactional_with_token(
        client: BrokerClient,
        transactional_id: &str,
        transaction_timeout_ms: Option<u64>,
        token: Option<InitToken>,
        retry: RetryPolicy,
    ) -> Result<Self, BrokerError> {
        let (producer_id, epoch) =
            with_retries(retry, || client.init_transactions_with_token(transactional_id, transaction_timeout_ms, token)).await?;
        Ok(Producer {
            client,
            producer_id,
            epoch,
            transactional_id: Some(transactional_id.to_string()),
            sequences: BTreeMap::new(),
            retry,
            poisoned: false,
        })
    }

    /// Resumes a transactional producer whose id and epoch a snapshot recorded (to commit its
    /// prepared transaction after a restore, as Flink's `FlinkKafkaInternalProducer` does).
    pub fn resume(client: BrokerClient, transactional_id: &str, producer_id: ProducerId, epoch: ProducerEpoch, retry: RetryPolicy) -> Self {
        Producer { client, producer_id, epoch, transactional_id: Some(transactional_id.to_string()), sequences: BTreeMap::new(), retry, poisoned: false }
    }

    /// The producer id and epoch.
    pub fn id(&self) -> (ProducerId, ProducerEpoch) {
        (self.producer_id, self.epoch)
    }

    /// Appends a batch (into the open transaction, for a transactional producer); returns the
    /// first record's offset. Retries keep the batch's sequence, so they never duplicate.
    ///
    /// If the retries run out with the outcome unknown, the producer is poisoned: every later
    /// `send` fails with `InvalidRequest`, and the caller must create a new producer.
    pub async fn send(&mut self, topic: &str, partition: PartitionId, records: PackedRecords) -> Result<Offset, BrokerError> {
        if self.poisoned {
            return Err(BrokerError::InvalidRequest("producer poisoned: an earlier send's outcome is unknown".into()));
        }
        let key = (topic.to_string(), partition);
        let base_sequence = self.sequences.get(&key).copied().unwrap_or(0);
        let count = u32::try_from(records.len()).map_err(|_| BrokerError::InvalidRequest("too many records".into()))?;
        let stamp = Some(ProducerStamp { producer_id: self.producer_id, epoch: self.epoch, base_sequence });
        // One request for every attempt: a retry re-sends it, with the same stamp, uncopied.
        let request = BrokerRequest::Produce { topic: topic.into(), partition, producer: stamp, transactional_id: self.transactional_id.clone(), records };
        let client = &self.client;
        let answer = with_retries(self.retry, || client.produce_request(&request)).await;
        if answer.as_ref().is_err_and(BrokerError::is_retriable) {
            self.poisoned = true;
        }
        let (offset, _) = answer?;
        self.sequences.insert(key, base_sequence.wrapping_add(count));
        Ok(offset)
    }

    fn tid(&self) -> Result<&str, BrokerError> {
        self.transactional_id.as_deref().ok_or_else(|| BrokerError::InvalidRequest("not a transactional producer".into()))
    }

    /// Pre-commits the open transaction.
    pub async fn prepare(&self) -> Result<TxnState, BrokerError> {
        let tid = self.tid()?;
        with_retries(self.retry, || self.client.prepare(tid, self.producer_id, self.epoch)).await
    }

    /// Commits the open transaction (retried; commit is idempotent).
    pub async fn commit(&self) -> Result<TxnState, BrokerError> {
        let tid = self.tid()?;
        with_retries(self.retry, || self.client.commit(tid, self.producer_id, self.epoch)).await
    }

    /// Aborts the open transaction (retried; abort is idempotent).
    pub async fn abort(&self) -> Result<TxnState, BrokerError> {
        let tid = self.tid()?;
        with_retries(self.retry, || self.client.abort(tid, self.producer_id, self.epoch)).await
    }
}

async fn with_retries<T, F, Fut>(retry: RetryPolicy, mut attempt: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let attempts_max = retry.attempts_max.max(1);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Err(e) if e.is_retriable() && attempts < attempts_max => {
                tracing::debug!(error = %e, attempts, "retrying broker request");
                tokio::time::sleep(Duration::from_millis(retry.backoff_ms)).await;
            }
            other => return other,
        }
    }
}
