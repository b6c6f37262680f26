//! A whole cluster as madsim nodes under one seed: broker and blob store on simulated disks owned
//! here (outside the nodes, so synced bytes survive a kill), a job manager and task managers — the
//! world the cluster tests and the simulator run jobs in.
//!
//! ```text
//! 10.0.0.1  job manager          10.0.0.2  broker (:9092)     10.0.0.3  blob store (:9000)
//! 10.0.1.i  task manager i       10.0.9.1  client (the test's calls run here)
//! ```
//!
//! Killing the broker or blob store crashes its disk: every unsynced byte is lost. A task manager
//! restarted gets a new incarnation. Always kill before restart (madsim's `restart` alone keeps
//! the old sockets).

use crate::blob::{run_blob_server, BlobClient, BlobFaults};
use crate::broker::{run_broker_server, BrokerClient, BrokerConfig, IsolationLevel, PackedRecords};
use crate::cluster::job_manager::{run_job_manager, JobClient, JobManagerConfig};
use crate::cluster::jobs::{JobRegistry, JobSpec};
use crate::cluster::protocol::{JobState, JobStatusReport};
use crate::cluster::task_manager::{run_task_manager, TaskManagerConfig};
use crate::cluster::JM_RPC_PORT;
use crate::disk::{SimDisk, TornTail};
use crate::transport::RpcConfig;
use floe_core::ids::{Offset, PartitionId, TaskManagerId};
use madsim::runtime::{Handle, NodeHandle};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The job manager's IP.
pub const JM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The broker's address.
pub const BROKER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 9092);
/// The blob store's address.
pub const BLOB_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 9000);
/// The client node's IP.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);

/// The IP of task manager `i`.
pub fn tm_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, (i + 1) as u8))
}

/// The cluster's shape and timing.
#[derive(Clone, Debug)]
pub struct SimClusterConfig {
    /// Task managers.
    pub task_managers: u32,
    /// Slots per task manager.
    pub slots_per_tm: u32,
    /// The broker's settings (transaction timeout...).
    pub broker: BrokerConfig,
    /// The job manager's heartbeat timeout.
    pub heartbeat_timeout_ms: u64,
    /// Task managers' heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// RPC settings for every node.
    pub rpc: RpcConfig,
    /// Seed for the job manager's restart jitter.
    pub seed: u64,
}

impl Default for SimClusterConfig {
    fn default() -> Self {
        SimClusterConfig {
            task_managers: 2,
            slots_per_tm: 2,
            broker: BrokerConfig::default(),
            heartbeat_timeout_ms: 1_000,
            heartbeat_interval_ms: 100,
            rpc: RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() },
            seed: 0,
        }
    }
}

/// A node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterNode {
    /// The job manager.
    JobManager,
    /// Task manager `i`.
    TaskManager(u32),
    /// The broker.
    Broker,
    /// The blob store.
    BlobStore,
}

/// The running cluster.
pub struct SimCluster {
    config: SimClusterConfig,
    jm: NodeHandle,
    tms: Vec<NodeHandle>,
    broker: NodeHandle,
    blob: NodeHandle,
    client: NodeHandle,
    /// The broker's disk (harness-owned).
    pub broker_disk: SimDisk,
    /// The blob store's disk (harness-owned).
    pub blob_disk: SimDisk,
    /// The blob store's fault knobs.
    pub blob_faults: BlobFaults,
    tm_incarnations: Vec<Arc<AtomicU64>>,
}

impl SimCluster {
    /// Builds every node and starts it. Call inside a madsim runtime.
    pub fn start(config: SimClusterConfig, registry: JobRegistry) -> SimCluster {
        let handle = Handle::current();
        let broker_disk = SimDisk::new();
        let blob_disk = SimDisk::new();
        let blob_faults = BlobFaults::new();
        let broker = {
            let (disk, cfg) = (broker_disk.clone(), config.broker.clone());
            handle
                .create_node()
                .name("broker")
                .ip(BROKER_ADDR.ip())
                .init(move || {
                    let (disk, cfg) = (disk.clone(), cfg.clone());
                    async move {
                        if let Err(e) = run_broker_server(BROKER_ADDR, disk, cfg).await {
                            tracing::warn!(error = %e, "broker stopped");
                        }
                    }
                })
                .build()
        };
        let blob = {
            let (disk, faults) = (blob_disk.clone(), blob_faults.clone());
            handle
                .create_node()
                .name("blob")
                .ip(BLOB_ADDR.ip())
                .init(move || {
                    let (disk, faults) = (disk.clone(), faults.clone());
                    async move {
                        if let Err(e) = run_blob_server(BLOB_ADDR, disk, faults).await {
                            tracing::warn!(error = %e, "blob store stopped");
                        }
                    }
                })
                .build()
        };
        let jm = {
            let jm_config = JobManagerConfig {
                ip: IpAddr::V4(JM_IP),
                broker: BROKER_ADDR,
                blob: BLOB_ADDR,
                registry: registry.clone(),
                heartbeat_timeout_ms: config.heartbeat_timeout_ms,
                rpc: config.rpc.clone(),
                seed: config.seed,
            };
            handle
                .create_node()
                .name("jm")
                .ip(IpAddr::V4(JM_IP))
                .init(move || {
                    let cfg = jm_config.clone();
                    async move {
                        if let Err(e) = run_job_manager(cfg).await {
                            tracing::warn!(error = %e, "job manager stopped");
                        }
                    }
                })
                .build()
        };
        let mut tms = Vec::new();
        let mut tm_incarnations = Vec::new();
        for i in 0..config.task_managers {
            let incarnation = Arc::new(AtomicU64::new(0));
            tm_incarnations.push(incarnation.clone());
            let base = TaskManagerConfig {
                id: TaskManagerId(i),
                incarnation: 0,
                ip: tm_ip(i),
                slots: config.slots_per_tm,
                jm: jm_addr(),
                broker: BROKER_ADDR,
                blob: BLOB_ADDR,
                registry: registry.clone(),
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                jm_silence_ms_max: config.heartbeat_timeout_ms,
                rpc: config.rpc.clone(),
            };
            tms.push(
                handle
                    .create_node()
                    .name(format!("tm{i}"))
                    .ip(tm_ip(i))
                    .init(move || {
                        let cfg = TaskManagerConfig { incarnation: incarnation.fetch_add(1, Ordering::Relaxed) + 1, ..base.clone() };
                        async move {
                            if let Err(e) = run_task_manager(cfg).await {
                                tracing::warn!(error = %e, "task manager stopped");
                            }
                        }
                    })
                    .build(),
            );
        }
        let client = handle.create_node().name("client").ip(IpAddr::V4(CLIENT_IP)).build();
        SimCluster { config, jm, tms, broker, blob, client, broker_disk, blob_disk, blob_faults, tm_incarnations }
    }

    /// The cluster's configuration.
    pub fn config(&self) -> &SimClusterConfig {
        &self.config
    }

    /// The madsim node of a cluster node.
    pub fn node(&self, node: ClusterNode) -> &NodeHandle {
        match node {
            ClusterNode::JobManager => &self.jm,
            ClusterNode::TaskManager(i) => &self.tms[i as usize],
            ClusterNode::Broker => &self.broker,
            ClusterNode::BlobStore => &self.blob,
        }
    }

    /// Every node, in a fixed order.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let mut out = vec![ClusterNode::JobManager, ClusterNode::Broker, ClusterNode::BlobStore];
        out.extend((0..self.tms.len() as u32).map(ClusterNode::TaskManager));
        out
    }

    /// Kills a node (its futures are dropped). The broker's and blob store's disks lose every
    /// unsynced byte (`torn` decides whether a prefix of unsynced tails survives).
    pub fn kill(&self, node: ClusterNode, torn: TornTail) {
        Handle::current().kill(self.node(node).id());
        match node {
            ClusterNode::Broker => self.broker_disk.crash(torn),
            ClusterNode::BlobStore => self.blob_disk.crash(torn),
            _ => {}
        }
    }

    /// Restarts a killed node (kills it first if it is running).
    pub fn restart(&self, node: ClusterNode) {
        let h = Handle::current();
        h.kill(self.node(node).id());
        h.restart(self.node(node).id());
    }

    /// Incarnations started so far by task manager `i`.
    pub fn tm_incarnation(&self, i: u32) -> u64 {
        self.tm_incarnations[i as usize].load(Ordering::Relaxed)
    }

    /// Runs `f` on the client node and waits for it.
    pub async fn on_client<T: Send + 'static, F: Future<Output = T> + Send + 'static>(&self, f: F) -> T {
        self.client.spawn(f).await.expect("the client node is never killed")
    }

    /// A broker client for the client node.
    pub fn broker_client(&self) -> BrokerClient {
        BrokerClient::new(BROKER_ADDR, self.config.rpc.clone())
    }

    /// A blob client for the client node.
    pub fn blob_client(&self) -> BlobClient {
        BlobClient::new(BLOB_ADDR, self.config.rpc.clone())
    }

    /// A job client for the client node.
    pub fn job_client(&self) -> JobClient {
        JobClient::new(jm_addr(), self.config.rpc.clone())
    }

    /// Creates `topic` with `partitions` and writes `lines` round-robin over the partitions,
    /// retrying until the broker has acknowledged each batch. Returns each partition's end
    /// offset (the stopping offsets of a bounded job over exactly these lines).
    pub async fn produce_lines(&self, topic: &str, partitions: u32, lines: Vec<String>) -> Vec<u64> {
        let n = partitions.max(1) as usize;
        let mut per_partition: Vec<Vec<String>> = vec![Vec::new(); partitions as usize];
        for (i, line) in lines.into_iter().enumerate() {
            per_partition[i % n].push(line);
        }
        let batches = per_partition.iter().map(|lines| pack_produce_batches(lines)).collect();
        self.produce_batches(topic, partitions, batches).await
    }

    /// Creates `topic` with `partitions` (unless it exists) and sends `batches[p]` to partition
    /// `p` in order, partition by partition, with one idempotent producer, retrying until the
    /// broker has acknowledged each batch. Returns each partition's end offset after its last
    /// batch (0 for a partition given none). [`Self::produce_lines`] is this over its lines
    /// split round-robin and chunked by [`PRODUCE_BATCH_RECORDS`]; callers that hold the lines
    /// already split pack them with [`pack_produce_batches`] and skip the copies.
    pub async fn produce_batches(&self, topic: &str, partitions: u32, batches: Vec<Vec<PackedRecords>>) -> Vec<u64> {
        let client = self.broker_client();
        let topic = topic.to_string();
        self.on_client(async move {
            retry_forever(|| client.create_topic(&topic, partitions), |e| matches!(e, crate::broker::BrokerError::TopicExists { .. })).await;
            let mut ends = Vec::new();
            let mut producer = loop {
                match crate::broker::Producer::idempotent(client.clone(), crate::broker::RetryPolicy { attempts_max: 1_000, backoff_ms: 50 }).await {
                    Ok(p) => break p,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            for (p, records) in batches.into_iter().enumerate() {
                let mut end = 0;
                for batch in records {
                    let len = batch.len() as u64;
                    let offset = producer.send(&topic, PartitionId(p as u32), batch).await.expect("an idempotent producer with retries delivers");
                    end = offset.0 + len;
                }
                ends.push(end);
            }
            ends
        })
        .await
    }

    /// Submits a job (retrying until the job manager answers).
    pub async fn submit(&self, spec: JobSpec) {
        let client = self.job_client();
        self.on_client(async move {
            loop {
                match client.submit(spec.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "submit retry");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .await
    }

    /// The job's status, or `None` if the job manager does not answer.
    pub async fn status(&self) -> Option<JobStatusReport> {
        let client = self.job_client();
        self.on_client(async move { client.status().await.ok() }).await
    }

    /// Polls the status every 100 ms until the job finished or failed, or `timeout` passes.
    #[allow(clippy::disallowed_methods, reason = "tokio's clock is madsim's virtual clock here")]
    pub async fn wait_for_end(&self, timeout: Duration) -> Option<JobStatusReport> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(s) = self.status().await {
                if matches!(s.state, JobState::Finished | JobState::Failed(_)) {
                    return Some(s);
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// Every committed record of `topic`, per partition, in offset order (read committed).
    pub async fn read_committed(&self, topic: &str) -> Vec<Vec<Vec<u8>>> {
        let batches = self.read_committed_batches(topic).await;
        batches.into_iter().map(|blocks| blocks.iter().flat_map(PackedRecords::iter).map(<[u8]>::to_vec).collect()).collect()
    }

    /// Every committed record of `topic`, per partition, in offset order (read committed), as
    /// the non-empty record blocks the fetches returned: the records are never copied out.
    pub async fn read_committed_batches(&self, topic: &str) -> Vec<Vec<PackedRecords>> {
        let client = self.broker_client();
        let topic = topic.to_string();
        self.on_client(async move {
            let partitions = retry_forever(|| client.partitions(&topic), |e| matches!(e, crate::broker::BrokerError::UnknownTopic { .. })).await.unwrap_or(0);
            let mut out = Vec::new();
            for p in 0..partitions {
                let mut blocks = Vec::new();
                let mut from = Offset(0);
                loop {
                    let fetched = retry_forever(|| client.fetch(&topic, PartitionId(p), from, 4096, 4 << 20, IsolationLevel::ReadCommitted), |_| false)
                        .await
                        .expect("fetch is retried until it succeeds");
                    if !fetched.records.is_empty() {
                        blocks.push(fetched.records);
                    }
                    if fetched.next_offset <= from {
                        break;
                    }
                    from = fetched.next_offset;
                }
                out.push(blocks);
            }
            out
        })
        .await
    }
}

/// Records per produce request of [`SimCluster::produce_lines`] (per partition, a chunk of its
/// lines). Kafka's producer sends each partition's accumulated batches in requests of up to
/// `max.request.size` (1 MiB); 4096 of the simulator's lines are ~100 KiB. (It was 256: the
/// 100k-line benchmark then spent most of its simulated time producing its input one 6 KiB
/// request after another.)
pub const PRODUCE_BATCH_RECORDS: usize = 4096;

/// One partition's `lines` as its produce batches: chunks of [`PRODUCE_BATCH_RECORDS`], each
/// packed by [`pack_lines`] (what [`SimCluster::produce_lines`] sends for that partition).
pub fn pack_produce_batches(lines: &[String]) -> Vec<PackedRecords> {
    lines.chunks(PRODUCE_BATCH_RECORDS).map(pack_lines).collect()
}

/// One batch of `lines`, in order, in a buffer of exactly their size (no regrowth).
pub fn pack_lines(lines: &[String]) -> PackedRecords {
    let bytes: usize = lines.iter().map(|l| l.len() + floe_core::records::RECORD_LENGTH_BYTES).sum();
    let mut batch = PackedRecords::with_capacity(bytes);
    for line in lines {
        batch.push(line.as_bytes()).expect("a record batch built from memory fits its limits");
    }
    batch
}

/// The job manager's RPC address.
pub fn jm_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(JM_IP), JM_RPC_PORT)
}

/// Retries `op` every 50 ms until it succeeds (`Some(value)`) or fails with an error `accept`
/// says is final-and-fine (`None`).
async fn retry_forever<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(mut op: impl FnMut() -> Fut, accept: impl Fn(&E) -> bool) -> Option<T> {
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) if accept(&e) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs `f` in a fresh madsim runtime seeded with `seed`, on a fresh OS thread (MADSIM.md: std
/// `HashMap` order is deterministic only for the first runtime on a thread), bounded by
/// `time_limit` of simulated time. If it panics, prints `seed` and `rerun` — the one command that
/// reproduces the failure — and resumes the panic.
pub fn simulate<T, F, Fut>(seed: u64, time_limit: Duration, rerun: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    #[allow(clippy::disallowed_methods, reason = "a fresh OS thread per simulation (MADSIM.md)")]
    let outcome = std::thread::spawn(move || {
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(time_limit);
        rt.block_on(f())
    })
    .join();
    match outcome {
        Ok(value) => value,
        Err(panic) => {
            eprintln!("failed with seed {seed}; rerun it with: {rerun}");
            std::panic::resume_unwind(panic)
        }
    }
}

/// The seeds a test runs: `FLOE_SEED` alone if it is set, else `count` seeds from `first`.
pub fn test_seeds(first: u64, count: u64) -> Vec<u64> {
    match std::env::var("FLOE_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (first..first + count).collect(),
    }
}
