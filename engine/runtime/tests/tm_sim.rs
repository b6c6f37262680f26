//! The task manager under madsim, driven by a small stand-in for the job manager written here
//! (it plays the JM's part of the protocol: registration, deploy, trigger, collect acks, write
//! nothing but keep the checkpoint metadata in memory, notify, redeploy from the latest
//! checkpoint after a failure). The broker and the blob store are the real ones.
//!
//! Every test runs on a fresh OS thread with a fresh runtime; a failure prints the seed
//! (`FLOE_SEED=N cargo test -p floe-runtime --test tm_sim <name>` reruns it).
#![cfg(madsim)]

use floe_core::coordinator::{CheckpointMetadata, OperatorCheckpoint, SubtaskStateHandle};
use floe_core::element::Barrier;
use floe_core::graph::ExecutionGraph;
use floe_core::ids::{AttemptId, CheckpointId, Offset, OperatorId, PartitionId, SubtaskId, TaskManagerId};
use floe_runtime::cluster::sim::{simulate, test_seeds};
use floe_runtime::blob::{run_blob_server, BlobFaults};
use floe_runtime::broker::{run_broker_server, BrokerClient, BrokerConfig, IsolationLevel, Producer, Record, RetryPolicy};
mod common;

use common::{check_word_count, expected_counts};
use floe_runtime::cluster::jobs::{JobRegistry, JobSpec};
use floe_runtime::cluster::protocol::{JmRequest, JmResponse, SubtaskDeployment, TmRequest, TmResponse};
use floe_runtime::cluster::task_manager::{run_task_manager, TaskManagerConfig};
use floe_runtime::cluster::{JM_RPC_PORT, TM_DATA_PORT, TM_RPC_PORT};
use floe_runtime::disk::SimDisk;
use floe_runtime::transport::{serve, RpcClient, RpcConfig};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const JM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 9092);
const BLOB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 9000);
const INPUT_PARTITIONS: u32 = 3;

fn tm_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, (i + 1) as u8))
}

fn rpc() -> RpcConfig {
    RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() }
}

fn sim<F, Fut>(test: &str, seed: u64, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    simulate(seed, Duration::from_secs(900), &format!("FLOE_SEED={seed} cargo test -p floe-runtime --test tm_sim {test}"), f)
}

fn seeds(first: u64, count: u64) -> Vec<u64> {
    test_seeds(first, count)
}

fn input_lines(seed: u64, n: usize) -> Vec<String> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n).map(|_| (0..1 + next() % 6).map(|_| format!("W{}", next() % 40)).collect::<Vec<_>>().join(", ")).collect()
}

/// What the stand-in job manager has heard.
#[derive(Default)]
struct Inbox {
    registered: BTreeMap<TaskManagerId, u64>,
    acks: BTreeMap<(AttemptId, CheckpointId), Vec<SubtaskStateHandle>>,
    declines: Vec<(AttemptId, CheckpointId, String)>,
    failures: Vec<(AttemptId, SubtaskId, String)>,
    end_of_input: BTreeSet<(AttemptId, SubtaskId)>,
    /// Checkpoints the driver triggered, in order.
    triggered: Vec<CheckpointId>,
}

type SharedInbox = Arc<Mutex<Inbox>>;

fn handle_jm(inbox: &SharedInbox, request: JmRequest) -> JmResponse {
    let mut i = inbox.lock().unwrap();
    match request {
        JmRequest::Register { tm, incarnation, .. } => {
            i.registered.insert(tm, incarnation);
        }
        JmRequest::Heartbeat { tm, .. } => {
            if !i.registered.contains_key(&tm) {
                return JmResponse::RegisterAgain;
            }
        }
        JmRequest::Acknowledge { attempt, checkpoint_id, handle, .. } => i.acks.entry((attempt, checkpoint_id)).or_default().push(handle),
        JmRequest::Decline { attempt, checkpoint_id, reason, .. } => i.declines.push((attempt, checkpoint_id, reason)),
        JmRequest::SubtaskFailed { attempt, subtask, reason } => i.failures.push((attempt, subtask, reason)),
        JmRequest::EndOfInput { attempt, subtask } => {
            i.end_of_input.insert((attempt, subtask));
        }
        JmRequest::SubmitJob(_) | JmRequest::JobStatus => return JmResponse::Error("not here".into()),
    }
    JmResponse::Ok
}

struct World {
    tms: Vec<NodeHandle>,
    client: NodeHandle,
    inbox: SharedInbox,
    blob_faults: BlobFaults,
}

fn start_world(task_managers: u32, slots: u32) -> World {
    let h = Handle::current();
    let broker_disk = SimDisk::new();
    h.create_node()
        .name("broker")
        .ip(BROKER.ip())
        .init(move || {
            let disk = broker_disk.clone();
            async move {
                let _ = run_broker_server(BROKER, disk, BrokerConfig::default()).await;
            }
        })
        .build();
    let (blob_disk, blob_faults) = (SimDisk::new(), BlobFaults::new());
    let faults = blob_faults.clone();
    h.create_node()
        .name("blob")
        .ip(BLOB.ip())
        .init(move || {
            let (disk, faults) = (blob_disk.clone(), faults.clone());
            async move {
                let _ = run_blob_server(BLOB, disk, faults).await;
            }
        })
        .build();
    let inbox: SharedInbox = Arc::default();
    let jm_inbox = inbox.clone();
    h.create_node()
        .name("jm")
        .ip(IpAddr::V4(JM_IP))
        .init(move || {
            let inbox = jm_inbox.clone();
            async move {
                let listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(JM_IP), JM_RPC_PORT)).await.unwrap();
                let _ = serve(listener, move |req: JmRequest| {
                    let inbox = inbox.clone();
                    async move { handle_jm(&inbox, req) }
                })
                .await;
            }
        })
        .build();
    let tms = (0..task_managers)
        .map(|i| {
            let incarnation = Arc::new(std::sync::atomic::AtomicU64::new(0));
            h.create_node()
                .name(format!("tm{i}"))
                .ip(tm_ip(i))
                .init(move || {
                    let mut config = TaskManagerConfig::new(
                        TaskManagerId(i),
                        incarnation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                        tm_ip(i),
                        slots,
                        SocketAddr::new(IpAddr::V4(JM_IP), JM_RPC_PORT),
                        BROKER,
                        BLOB,
                        JobRegistry::builtin(),
                    );
                    config.rpc = rpc();
                    async move {
                        let _ = run_task_manager(config).await;
                    }
                })
                .build()
        })
        .collect();
    let client = h.create_node().name("client").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 1))).build();
    World { tms, client, inbox, blob_faults }
}

async fn retry<T, E: std::fmt::Debug, Fut: Future<Output = Result<T, E>>>(mut op: impl FnMut() -> Fut) -> T {
    for _ in 0..400 {
        match op().await {
            Ok(v) => return v,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("gave up retrying");
}

/// Writes lines round-robin over the input partitions; `first` is the global index of the first.
async fn produce(producer: &mut Producer, lines: &[String], first: usize) {
    let mut per: Vec<Vec<Record>> = vec![Vec::new(); INPUT_PARTITIONS as usize];
    for (k, line) in lines.iter().enumerate() {
        per[(first + k) % INPUT_PARTITIONS as usize].push(Record::value(line.clone().into_bytes()));
    }
    for (p, records) in per.into_iter().enumerate() {
        if !records.is_empty() {
            producer.send("lines", PartitionId(p as u32), records.into_iter().collect()).await.expect("idempotent producer delivers");
        }
    }
}

async fn read_committed(client: &BrokerClient, topic: &str, partitions: u32) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let (mut records, mut from) = (Vec::new(), Offset(0));
        loop {
            let f = retry(|| client.fetch(topic, PartitionId(p), from, 4096, 4 << 20, IsolationLevel::ReadCommitted)).await;
            records.extend(f.records.iter().map(<[u8]>::to_vec));
            if f.next_offset <= from {
                break;
            }
            from = f.next_offset;
        }
        out.push(records);
    }
    out
}

/// The stand-in job manager's driver: places subtask `i` of every vertex on TM `i % tms`.
struct Driver {
    spec: JobSpec,
    graph: ExecutionGraph,
    tms: Vec<RpcClient<TmRequest, TmResponse>>,
    inbox: SharedInbox,
    attempt: AttemptId,
    next_checkpoint: CheckpointId,
    latest: Option<CheckpointMetadata>,
    restarts: u32,
    completed: u32,
    /// The checkpoint each redeploy restored from.
    restored_from: Vec<Option<CheckpointId>>,
}

impl Driver {
    fn new(spec: JobSpec, tms: u32, inbox: SharedInbox) -> Self {
        let graph = JobRegistry::builtin().build(&spec).unwrap().expand();
        let tms = (0..tms).map(|i| RpcClient::new(SocketAddr::new(tm_ip(i), TM_RPC_PORT), rpc())).collect();
        Driver { spec, graph, tms, inbox, attempt: AttemptId(0), next_checkpoint: CheckpointId(1), latest: None, restarts: 0, completed: 0, restored_from: Vec::new() }
    }

    fn host(&self, s: SubtaskId) -> usize {
        s.index.0 as usize % self.tms.len()
    }

    async fn deploy(&mut self) {
        self.attempt = self.attempt.next();
        if self.attempt > AttemptId(1) {
            self.restored_from.push(self.latest.as_ref().map(|m| m.checkpoint_id));
        }
        let locations: BTreeMap<SubtaskId, SocketAddr> = self.graph.subtasks().into_iter().map(|s| (s, SocketAddr::new(tm_ip(self.host(s) as u32), TM_DATA_PORT))).collect();
        let mut per_tm: Vec<Vec<SubtaskDeployment>> = vec![Vec::new(); self.tms.len()];
        for v in &self.graph.vertices {
            let restore = self.latest.as_ref().map(|m| m.restore_assignment(v.id, v.parallelism).unwrap());
            for i in 0..v.parallelism {
                let subtask = SubtaskId::new(v.id, i);
                per_tm[self.host(subtask)].push(SubtaskDeployment { subtask, restore: restore.as_ref().map(|r| r[i as usize].clone()) });
            }
        }
        for (tm, subtasks) in self.tms.iter().zip(per_tm) {
            let request = TmRequest::Deploy { attempt: self.attempt, job: self.spec.clone(), restored_from: self.latest.as_ref().map(|m| m.checkpoint_id), subtasks, locations: locations.clone() };
            let answer = retry(|| tm.call(request.clone())).await;
            assert_eq!(answer, TmResponse::Ok);
        }
    }

    fn failed(&self) -> bool {
        self.inbox.lock().unwrap().failures.iter().any(|(a, _, _)| *a == self.attempt)
    }

    fn all_sources_ended(&self) -> bool {
        let inbox = self.inbox.lock().unwrap();
        self.graph.source_subtasks().iter().all(|s| inbox.end_of_input.contains(&(self.attempt, *s)))
    }

    /// Triggers one checkpoint and waits for it; `Some(true)` if it completed and was final.
    async fn checkpoint(&mut self, wait_ms: u64) -> Option<bool> {
        let id = self.next_checkpoint;
        self.next_checkpoint = id.next();
        let is_final = self.all_sources_ended();
        let barrier = Barrier { checkpoint_id: id, triggered_at_ms: 0, is_final };
        self.inbox.lock().unwrap().triggered.push(id);
        for (t, tm) in self.tms.iter().enumerate() {
            let sources: Vec<SubtaskId> = self.graph.source_subtasks().into_iter().filter(|s| self.host(*s) == t).collect();
            if !sources.is_empty() {
                let _ = tm.call(TmRequest::TriggerCheckpoint { attempt: self.attempt, barrier, sources }).await;
            }
        }
        let want = self.graph.subtasks().len();
        for _ in 0..wait_ms / 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.failed() {
                return None;
            }
            let acks = self.inbox.lock().unwrap().acks.get(&(self.attempt, id)).cloned().unwrap_or_default();
            if acks.len() == want {
                let operators = self
                    .graph
                    .vertices
                    .iter()
                    .map(|v| (v.id, OperatorCheckpoint { parallelism: v.parallelism, max_parallelism: v.max_parallelism, subtasks: acks.iter().filter(|h| h.subtask.operator == v.id).cloned().collect() }))
                    .collect::<BTreeMap<OperatorId, _>>();
                self.completed += 1;
                self.latest = Some(CheckpointMetadata { checkpoint_id: id, attempt: self.attempt, triggered_at_ms: 0, completed_at_ms: 0, is_final, operators });
                for tm in &self.tms {
                    let _ = tm.call(TmRequest::NotifyComplete { attempt: self.attempt, checkpoint_id: id }).await;
                }
                return Some(is_final);
            }
        }
        for tm in &self.tms {
            let _ = tm.call(TmRequest::NotifyAborted { attempt: self.attempt, checkpoint_id: id }).await;
        }
        Some(false)
    }

    /// Runs the job to its final checkpoint, redeploying from the latest checkpoint on failure.
    async fn run_to_end(&mut self, interval_ms: u64) {
        self.deploy().await;
        for _ in 0..2_000 {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            if self.failed() {
                self.restarts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.deploy().await;
                continue;
            }
            match self.checkpoint(5_000).await {
                Some(true) => {
                    // Let the final notifications commit.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
                Some(false) => {}
                None => {
                    self.restarts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.deploy().await;
                }
            }
        }
        panic!("the job did not finish");
    }
}

/// What the stand-in job manager saw of a run.
#[derive(Debug)]
struct Stats {
    restarts: u32,
    completed: u32,
    restored_from: Vec<Option<CheckpointId>>,
}

fn spec(lines: usize, parallelism: u32) -> JobSpec {
    let mut ends = vec![0u64; INPUT_PARTITIONS as usize];
    for i in 0..lines {
        ends[i % INPUT_PARTITIONS as usize] += 1;
    }
    JobSpec { stopping_offsets: Some(ends), ..JobSpec::word_count("wc", "lines", INPUT_PARTITIONS, "counts", parallelism) }
}

/// A bounded word count, no faults except what `fault` injects (run on the test's node while the
/// job runs); returns the restarts the driver made.
async fn word_count(seed: u64, task_managers: u32, parallelism: u32, fault: impl FnOnce(World) -> std::pin::Pin<Box<dyn Future<Output = World>>> + 'static) -> Stats {
    let world = start_world(task_managers, 2);
    let lines = input_lines(seed, 600);
    let expected = expected_counts(&lines);
    let inbox = world.inbox.clone();
    let feed_lines = lines.clone();
    let job = spec(lines.len(), parallelism);
    let broker = BrokerClient::new(BROKER, rpc());
    let b = broker.clone();
    // Input in waves, 50 ms apart, so the job takes several checkpoints on the way.
    world.client.spawn(async move {
        retry(|| b.create_topic("lines", INPUT_PARTITIONS)).await;
        let mut producer = retry(|| Producer::idempotent(b.clone(), RetryPolicy { attempts_max: 1_000, backoff_ms: 50 })).await;
        for (w, wave) in feed_lines.chunks(60).enumerate() {
            produce(&mut producer, wave, w * 60).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let restarts = world
        .client
        .spawn(async move {
            // Wait for every TM to register.
            for _ in 0..200 {
                if inbox.lock().unwrap().registered.len() == task_managers as usize {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut driver = Driver::new(job, task_managers, inbox);
            driver.run_to_end(100).await;
            Stats { restarts: driver.restarts, completed: driver.completed, restored_from: driver.restored_from }
        });
    let world = fault(world).await;
    let restarts = restarts.await.unwrap();
    let output = world.client.spawn(async move { read_committed(&broker, "counts", parallelism).await }).await.unwrap();
    check_word_count(&output, &expected);
    restarts
}

#[test]
fn a_one_tm_word_count_commits_exactly_the_expected_counts() {
    for seed in seeds(1, 2) {
        sim("a_one_tm_word_count_commits_exactly_the_expected_counts", seed, move || async move {
            let stats = word_count(seed, 1, 2, |w| Box::pin(async move { w })).await;
            assert_eq!(stats.restarts, 0);
            assert!(stats.completed >= 3, "several checkpoints, the final one included: {stats:?}");
        });
    }
}

#[test]
fn a_two_tm_word_count_commits_exactly_the_expected_counts() {
    for seed in seeds(11, 2) {
        sim("a_two_tm_word_count_commits_exactly_the_expected_counts", seed, move || async move {
            let stats = word_count(seed, 2, 2, |w| Box::pin(async move { w })).await;
            assert_eq!(stats.restarts, 0);
            assert!(stats.completed >= 3, "several checkpoints, the final one included: {stats:?}");
        });
    }
}

#[test]
fn a_tm_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    for seed in seeds(21, 2) {
        sim("a_tm_killed_and_restarted_mid_stream_loses_and_duplicates_nothing", seed, move || async move {
            let stats = word_count(seed, 2, 2, |w| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let h = Handle::current();
                    h.kill(w.tms[1].id());
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    h.restart(w.tms[1].id());
                    w
                })
            })
            .await;
            assert!(stats.restarts >= 1, "the kill must cause a restart: {stats:?}");
            assert!(stats.restored_from.iter().any(Option::is_some), "a restart restores from a completed checkpoint: {stats:?}");
        });
    }
}

#[test]
fn a_tm_killed_while_a_checkpoint_is_aligning_loses_and_duplicates_nothing() {
    for seed in seeds(31, 3) {
        sim("a_tm_killed_while_a_checkpoint_is_aligning_loses_and_duplicates_nothing", seed, move || async move {
            let stats = word_count(seed, 2, 2, move |w| {
                Box::pin(async move {
                    // Kill TM 1 a few milliseconds after checkpoint 2 was triggered: its barriers
                    // are on their way and the consumers are aligning.
                    while !w.inbox.lock().unwrap().triggered.contains(&CheckpointId(2)) {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(1 + seed % 4)).await;
                    let h = Handle::current();
                    h.kill(w.tms[1].id());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    h.restart(w.tms[1].id());
                    w
                })
            })
            .await;
            assert!(stats.restarts >= 1, "the kill must cause a restart: {stats:?}");
        });
    }
}

#[test]
fn records_keep_flowing_while_a_snapshot_write_is_slow() {
    for seed in seeds(41, 2) {
        sim("records_keep_flowing_while_a_snapshot_write_is_slow", seed, move || async move {
            let world = start_world(1, 2);
            let lines = input_lines(seed, 3_000);
            let broker = BrokerClient::new(BROKER, rpc());
            let (b, feed) = (broker.clone(), lines.clone());
            world.client.spawn(async move {
                retry(|| b.create_topic("lines", INPUT_PARTITIONS)).await;
                let mut producer = retry(|| Producer::idempotent(b.clone(), RetryPolicy { attempts_max: 1_000, backoff_ms: 50 })).await;
                for (w, wave) in feed.chunks(20).enumerate() {
                    produce(&mut producer, wave, w * 20).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let (inbox, faults) = (world.inbox.clone(), world.blob_faults.clone());
            let job = spec(lines.len(), 2);
            world
                .client
                .spawn(async move {
                    while inbox.lock().unwrap().registered.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let mut driver = Driver::new(job, 1, inbox.clone());
                    driver.deploy().await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    assert_eq!(driver.checkpoint(5_000).await, Some(false), "checkpoint 1 completes");
                    // Every put now takes 800 ms (below the RPC timeout): checkpoint 2's writes are slow.
                    faults.set_put_latency_ms(800);
                    let id = driver.next_checkpoint;
                    let written = |b: &BrokerClient| {
                        let b = b.clone();
                        async move {
                            let mut total = 0;
                            for p in 0..2 {
                                total += retry(|| b.fetch("counts", PartitionId(p), Offset(0), 1, 1 << 10, IsolationLevel::ReadUncommitted)).await.high_watermark.0;
                            }
                            total
                        }
                    };
                    let trigger = tokio::spawn(async move {
                        let completed = driver.checkpoint(10_000).await;
                        (driver, completed)
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let before = written(&broker).await;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let after = written(&broker).await;
                    let acks = inbox.lock().unwrap().acks.get(&(AttemptId(1), id)).map_or(0, Vec::len);
                    assert!(acks < 4, "checkpoint {id} is still being written ({acks} acks)");
                    assert!(after > before, "the sink wrote {before} records before and {after} after: processing stopped during the slow write");
                    let (_, completed) = trigger.await.unwrap();
                    assert_eq!(completed, Some(false), "the slow checkpoint still completes");
                })
                .await
                .unwrap();
        });
    }
}
