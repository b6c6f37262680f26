//! The world: one [`WorldConfig`] run on the engine's real cluster ([`SimCluster`]: a job manager,
//! task managers, a broker and a blob store as madsim nodes under one seed), with the input fed
//! in waves while the job runs, the fault schedule injected (at times, or on protocol events),
//! everything healed, the job driven to its end, and what it left behind read back into a
//! [`RunRecord`] for the judge.
//!
//! A run is TigerBeetle's VOPR shape: seed → swarm options ([`crate::scenario::Scenario::resolve`])
//! → the **safety phase** (input + faults) → heal → the **liveness phase** (the job must finish
//! within the scenario's bound) → read back the committed output (read committed) and every
//! completed checkpoint (metadata `{job}/chk-N/_metadata` and its subtask blobs, decoded with the
//! engine's own state code — the *oracle* stays engine-free).
//!
//! Event-triggered faults ("crash tm1 while checkpoint 3 is aligning") are woken by a
//! `tracing` layer ([`Watcher`]) that sees the cluster's protocol events as they happen
//! (`alignment_started`, `checkpoint_completed`, `sink_prepared`, `restore_begun`), with optional
//! checkpoint and subtask filters. A trigger that never fires (its checkpoint never came) gives up
//! when the job finishes, at [`TRIGGER_WAIT_MS_MAX`], or [`TRIGGER_WAIT_WHILE_DOWN_MS_MAX`] after a
//! crash that waits for the heal.
//!
//! Every injected fault (and each heal) goes into [`RunRecord::faults`] with its virtual time.
//! At the end every node is killed and the runtime sleeps 1 ms, so no task is leaked (MADSIM.md).

use crate::record::RunRecord;
use crate::run::SimError;
use crate::scenario::WorldConfig;

/// Waves the input is written in while the job runs.
pub const WAVES: usize = 10;
/// How long an event-triggered fault waits for its event (virtual ms since the run's start).
pub const TRIGGER_WAIT_MS_MAX: u64 = 60_000;
/// While a node crashed without a restart delay is down (it comes back when the schedule heals),
/// an event-triggered fault waits at most this long after that crash. Its event may need the
/// down node (a restore needs the job manager), and the heal waits for every fault: without this
/// bound the node stayed down for [`TRIGGER_WAIT_MS_MAX`], longer than any transaction timeout
/// the swarm draws (≥ 30 s) — a loss by design (FLINK-7784), not a finding.
pub const TRIGGER_WAIT_WHILE_DOWN_MS_MAX: u64 = 10_000;
/// How often the harness tries to read a store back after the run (100 ms apart).
pub const READ_BACK_ATTEMPTS_MAX: u32 = 100;
/// The hard bound on a run's virtual time beyond the liveness bound (madsim's time limit).
pub const TIME_LIMIT_SLACK_MS: u64 = 120_000;
/// The job's name: the prefix of its checkpoint blobs and its sinks' transactional ids.
pub const JOB_NAME: &str = "floe";
/// The input topic.
pub const INPUT_TOPIC: &str = "lines";
/// The output topic.
pub const OUTPUT_TOPIC: &str = "counts";
/// Completed checkpoints the coordinator retains (all of them, for `consistent_cut`).
pub const CHECKPOINTS_RETAINED: u32 = 1_024;

/// Builds and runs one world on the current thread (a fresh OS thread per run: see
/// [`crate::run`]); returns what it left behind.
pub fn run_world(world: &WorldConfig) -> Result<RunRecord, SimError> {
    #[cfg(madsim)]
    {
        sim::run(world)
    }
    #[cfg(not(madsim))]
    {
        let _ = world;
        Err(SimError::ClusterUnavailable)
    }
}

#[cfg(madsim)]
pub use sim::{world_future, Watcher};

#[cfg(madsim)]
mod sim {
    use super::*;
    use crate::checkers::txn_checkpoint;
    use crate::oracle::JobKind;
    use crate::record::{parse_id, CheckpointView, CommittedRecords, FaultLogEntry};
    use crate::scenario::{
        generate_partitioned, CheckpointMode, FaultKind, FaultSpec, NodeName, SinkMode, Trigger,
        TriggerEvent,
    };
    use crate::trace::{names, TraceCapture, TraceConfig};
    use floe_core::codec;
    use floe_core::coordinator::{CheckpointConfig, CheckpointMetadata};
    use floe_core::element::CheckpointingMode;
    use floe_core::failover::RestartStrategy;
    use floe_core::ids::OperatorId;
    use floe_core::key_groups::KeyGroupRange;
    use floe_core::operator::sink::SinkMode as EngineSinkMode;
    use floe_core::operator::source::{PartitionOffset, SOURCE_OFFSETS_STATE};
    use floe_core::state::{redistribute, KeyedStateBackend, OperatorStateStore, ValueStateDescriptor};
    use floe_runtime::blob::{BlobClient, BlobFaultSettings};
    use floe_runtime::broker::BrokerConfig;
    use floe_runtime::cluster::jobs::{JobRegistry, JobSpec};
    use floe_runtime::cluster::protocol::JobState;
    use floe_core::records::PackedRecords;
    use floe_runtime::cluster::sim::{pack_produce_batches, ClusterNode, SimCluster, SimClusterConfig};
    use floe_runtime::cluster::task_manager::state_io::{check_blob, OPERATOR_BLOB_MAGIC, OPERATOR_BLOB_VERSION};
    use floe_runtime::disk::{DiskFaults, TornTail};
    use floe_runtime::transport::RpcConfig;
    use madsim::net::NetSim;
    use madsim::runtime::{Handle, Runtime};
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    pub(super) fn run(world: &WorldConfig) -> Result<RunRecord, SimError> {
        // The subscriber goes in before the runtime exists, so madsim's node spans (the main
        // node's too) are known to it and every event is tagged with its node.
        let capture = TraceCapture::new(TraceConfig::default());
        let watcher = Watcher::default();
        let subscriber = tracing_subscriber::registry().with(capture.layer()).with(watcher.clone());
        let world = world.clone();
        Ok(tracing::subscriber::with_default(subscriber, move || {
            let mut rt = Runtime::with_seed_and_config(world.seed, madsim::Config::default());
            rt.set_time_limit(Duration::from_millis(
                world.liveness_bound_ms.saturating_add(TRIGGER_WAIT_MS_MAX).saturating_add(TIME_LIMIT_SLACK_MS),
            ));
            rt.block_on(async move {
                let record = drive(&world, watcher).await;
                finish_record(record, &capture)
            })
        }))
    }

    /// A protocol event a trigger can match.
    #[derive(Clone, Debug)]
    struct Seen {
        name: &'static str,
        checkpoint: Option<u64>,
        subtask: Option<u32>,
    }

    #[derive(Default)]
    struct WatchState {
        seen: Vec<Seen>,
        finished_at_ns: Option<u64>,
    }

    /// A `tracing` layer that keeps the protocol events fault triggers wait on and wakes them.
    #[derive(Clone, Default)]
    pub struct Watcher {
        state: Arc<Mutex<WatchState>>,
        notify: Arc<tokio::sync::Notify>,
    }

    /// Most trigger-relevant events kept (later ones are dropped: triggers then give up).
    const WATCHED_EVENTS_MAX: usize = 1_000_000;

    impl Watcher {
        fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// The index of the first event at or after `from` matching the trigger.
        fn find(&self, from: usize, event: TriggerEvent, checkpoint: Option<u64>, subtask: Option<u32>) -> Option<usize> {
            let name = trigger_name(event);
            let s = self.lock();
            s.seen.iter().enumerate().skip(from).find_map(|(i, e)| {
                (e.name == name
                    && checkpoint.is_none_or(|c| e.checkpoint == Some(c))
                    && subtask.is_none_or(|t| e.subtask == Some(t)))
                .then_some(i)
            })
        }

        fn finished_at_ms(&self) -> Option<u64> {
            self.lock().finished_at_ns.map(|ns| ns / 1_000_000)
        }
    }

    /// The trace event a trigger waits for.
    fn trigger_name(event: TriggerEvent) -> &'static str {
        match event {
            TriggerEvent::CheckpointAligning => names::CHECKPOINT_ALIGNING,
            TriggerEvent::CheckpointCompleted => names::CHECKPOINT_COMPLETED,
            TriggerEvent::SinkPrepared => names::SINK_PREPARED,
            TriggerEvent::RestoreBegun => names::RESTORE_BEGUN,
        }
    }

    #[derive(Default)]
    struct Fields {
        event: Option<String>,
        checkpoint: Option<String>,
        subtask: Option<String>,
        txn: Option<String>,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.set(field, value.to_string());
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.set(field, value.to_string());
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            self.set(field, value.to_string());
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.set(field, format!("{value:?}").trim_matches('"').to_string());
        }
    }

    impl Fields {
        fn set(&mut self, field: &Field, value: String) {
            match field.name() {
                "event" | "message" if self.event.is_none() => self.event = Some(value),
                "checkpoint" => self.checkpoint = Some(value),
                "subtask" => self.subtask = Some(value),
                "txn" => self.txn = Some(value),
                _ => {}
            }
        }
    }

    /// The subtask index of `op3#1` (after the `#`), or of a bare number.
    pub(super) fn subtask_index(s: &str) -> Option<u32> {
        let tail = s.rsplit_once('#').map_or(s, |(_, t)| t);
        parse_id(tail).and_then(|i| u32::try_from(i).ok())
    }

    /// The subtask index of a transaction id `{prefix}-{subtask}-{checkpoint}`.
    pub(super) fn txn_subtask(txn: &str) -> Option<u32> {
        txn.rsplit('-').nth(1)?.parse().ok()
    }

    impl<S: tracing::Subscriber> Layer<S> for Watcher {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            let mut f = Fields::default();
            event.record(&mut f);
            let Some(name) = f.event.as_deref() else { return };
            let name = match name {
                names::CHECKPOINT_ALIGNING => names::CHECKPOINT_ALIGNING,
                names::CHECKPOINT_COMPLETED => names::CHECKPOINT_COMPLETED,
                names::SINK_PREPARED => names::SINK_PREPARED,
                names::RESTORE_BEGUN => names::RESTORE_BEGUN,
                names::JOB_FINISHED => {
                    let now = madsim::time::TimeHandle::try_current()
                        .map_or(0, |h| u64::try_from(h.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    self.lock().finished_at_ns.get_or_insert(now);
                    self.notify.notify_waiters();
                    return;
                }
                _ => return,
            };
            let txn = f.txn.as_deref();
            let checkpoint = f.checkpoint.as_deref().and_then(parse_id).or_else(|| txn.and_then(txn_checkpoint));
            let subtask = f.subtask.as_deref().and_then(subtask_index).or_else(|| txn.and_then(txn_subtask));
            {
                let mut s = self.lock();
                if s.seen.len() < WATCHED_EVENTS_MAX {
                    s.seen.push(Seen { name, checkpoint, subtask });
                }
            }
            self.notify.notify_waiters();
        }
    }

    #[allow(clippy::disallowed_methods, reason = "tokio's clock is madsim's virtual clock here")]
    fn now_ms() -> u64 {
        madsim::time::TimeHandle::try_current().map_or(0, |h| u64::try_from(h.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn cluster_node(n: NodeName) -> ClusterNode {
        match n {
            NodeName::Jm => ClusterNode::JobManager,
            NodeName::Tm(i) => ClusterNode::TaskManager(i),
            NodeName::Broker => ClusterNode::Broker,
            NodeName::Blob => ClusterNode::BlobStore,
        }
    }

    fn node_name(n: ClusterNode) -> NodeName {
        match n {
            ClusterNode::JobManager => NodeName::Jm,
            ClusterNode::TaskManager(i) => NodeName::Tm(i),
            ClusterNode::Broker => NodeName::Broker,
            ClusterNode::BlobStore => NodeName::Blob,
        }
    }

    /// The world while it runs: the cluster, the fault log, what is down.
    struct Stage {
        cluster: SimCluster,
        base_latency_ms: (u64, u64),
        base_loss: f64,
        faults: Mutex<Vec<FaultLogEntry>>,
        /// Nodes crashed and not yet restarted.
        down: Mutex<BTreeSet<ClusterNode>>,
        /// When a node crashed without a restart delay, if one is down waiting for the heal.
        down_until_heal_since_ms: Mutex<Option<u64>>,
        /// Nodes paused and not yet resumed.
        paused: Mutex<BTreeSet<ClusterNode>>,
        torn: Mutex<rand_chacha::ChaCha8Rng>,
    }

    impl Stage {
        fn log(&self, kind: &str, nodes: &[ClusterNode]) {
            let nodes = nodes.iter().map(|n| node_name(*n).to_string()).collect();
            let entry = FaultLogEntry { at_ms: now_ms(), kind: kind.to_string(), nodes };
            tracing::info!(event = "fault_injected", kind, nodes = ?entry.nodes);
            self.faults.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        }

        fn exists(&self, n: ClusterNode) -> bool {
            self.cluster.nodes().contains(&n)
        }

        fn crash(&self, n: ClusterNode) {
            let torn = match n {
                ClusterNode::Broker | ClusterNode::BlobStore => {
                    let mut r = self.torn.lock().unwrap_or_else(|e| e.into_inner());
                    if r.gen_bool(0.5) {
                        TornTail::KeepPrefix { bytes: r.gen_range(0..4_096) }
                    } else {
                        TornTail::None
                    }
                }
                _ => TornTail::None,
            };
            self.paused.lock().unwrap_or_else(|e| e.into_inner()).remove(&n);
            self.down.lock().unwrap_or_else(|e| e.into_inner()).insert(n);
            self.cluster.kill(n, torn);
        }

        fn restart(&self, n: ClusterNode) {
            if self.down.lock().unwrap_or_else(|e| e.into_inner()).remove(&n) {
                self.cluster.restart(n);
                self.log("restart", &[n]);
            }
        }

        fn pause(&self, n: ClusterNode) {
            if !self.down.lock().unwrap_or_else(|e| e.into_inner()).contains(&n) {
                self.paused.lock().unwrap_or_else(|e| e.into_inner()).insert(n);
                Handle::current().pause(self.cluster.node(n).id());
            }
        }

        fn resume(&self, n: ClusterNode) {
            if self.paused.lock().unwrap_or_else(|e| e.into_inner()).remove(&n) {
                Handle::current().resume(self.cluster.node(n).id());
            }
        }

        fn links(&self, nodes: &[ClusterNode], others: &[ClusterNode], one_way: bool) -> Vec<(ClusterNode, ClusterNode)> {
            let others: Vec<ClusterNode> = if others.is_empty() {
                self.cluster.nodes().into_iter().filter(|n| !nodes.contains(n)).collect()
            } else {
                others.to_vec()
            };
            let mut out = Vec::new();
            for a in nodes {
                for b in &others {
                    if a != b {
                        out.push((*a, *b));
                        if !one_way {
                            out.push((*b, *a));
                        }
                    }
                }
            }
            out
        }

        fn set_links(&self, links: &[(ClusterNode, ClusterNode)], clogged: bool) {
            let net = NetSim::current();
            for (a, b) in links {
                let (a, b) = (self.cluster.node(*a).id(), self.cluster.node(*b).id());
                if clogged {
                    net.clog_link(a, b);
                } else {
                    net.unclog_link(a, b);
                }
            }
        }

        fn set_network(&self, latency_ms: (u64, u64), loss: f64) {
            NetSim::current().update_config(|c| {
                c.packet_loss_rate = loss;
                c.send_latency = Duration::from_millis(latency_ms.0)..Duration::from_millis(latency_ms.1.max(latency_ms.0 + 1));
            });
        }

        fn set_disk(&self, n: ClusterNode, faults: DiskFaults) {
            match n {
                ClusterNode::Broker => self.cluster.broker_disk.set_faults(faults),
                ClusterNode::BlobStore => self.cluster.blob_disk.set_faults(faults),
                _ => {}
            }
        }

        /// Heals everything: restarts what is down, resumes what is paused, unclogs every link
        /// and node, restores the network, the disks and the blob store.
        fn heal_all(&self) {
            let nodes = self.cluster.nodes();
            let net = NetSim::current();
            for a in &nodes {
                net.unclog_node(self.cluster.node(*a).id());
                for b in &nodes {
                    net.unclog_link(self.cluster.node(*a).id(), self.cluster.node(*b).id());
                }
            }
            self.set_network(self.base_latency_ms, self.base_loss);
            self.cluster.broker_disk.set_faults(DiskFaults::default());
            self.cluster.blob_disk.set_faults(DiskFaults::default());
            self.cluster.blob_faults.set(BlobFaultSettings::default());
            let paused: Vec<ClusterNode> = self.paused.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
            for n in paused {
                self.resume(n);
            }
            let down: Vec<ClusterNode> = self.down.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
            for n in down {
                self.restart(n);
            }
            self.log("heal", &[]);
        }
    }

    /// Waits for a fault's trigger; `false` if it never fired (the job finished first, or the
    /// wait bound passed).
    async fn wait_trigger(stage: &Stage, watcher: &Watcher, trigger: &Trigger) -> bool {
        match trigger {
            Trigger::At { at_ms } => {
                let now = now_ms();
                if *at_ms > now {
                    tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
                }
                true
            }
            Trigger::On { event, checkpoint, subtask, after_ms } => {
                loop {
                    let notified = watcher.notify.notified();
                    if watcher.find(0, *event, *checkpoint, *subtask).is_some() {
                        break;
                    }
                    let now = now_ms();
                    let down_since = *stage.down_until_heal_since_ms.lock().unwrap_or_else(|e| e.into_inner());
                    let deadline = down_since
                        .map_or(TRIGGER_WAIT_MS_MAX, |since| TRIGGER_WAIT_MS_MAX.min(since + TRIGGER_WAIT_WHILE_DOWN_MS_MAX));
                    if watcher.finished_at_ms().is_some() || now >= deadline {
                        return false;
                    }
                    // Woken by an event, by a crash that awaits the heal (it may shorten the
                    // deadline), or at the deadline.
                    let _ = tokio::time::timeout(Duration::from_millis(deadline - now), notified).await;
                }
                if *after_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(*after_ms)).await;
                }
                true
            }
        }
    }

    /// Injects one fault, waits out its duration and undoes it. Crashes without a restart delay
    /// stay down until [`Stage::heal_all`].
    async fn inject(stage: Arc<Stage>, watcher: Watcher, fault: FaultSpec) {
        if !wait_trigger(&stage, &watcher, &fault.trigger).await {
            return;
        }
        let nodes: Vec<ClusterNode> = fault.nodes.iter().map(|n| cluster_node(*n)).filter(|n| stage.exists(*n)).collect();
        let hold = |ms: Option<u64>| async move {
            if let Some(ms) = ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        };
        let kind = fault.kind.name();
        match &fault.kind {
            FaultKind::Crash { restart_after_ms } => {
                for n in &nodes {
                    stage.crash(*n);
                }
                stage.log(kind, &nodes);
                if let Some(ms) = restart_after_ms.or(fault.duration_ms) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    for n in &nodes {
                        stage.restart(*n);
                    }
                } else {
                    stage.down_until_heal_since_ms.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(now_ms());
                    watcher.notify.notify_waiters();
                }
            }
            FaultKind::Partition { others, one_way } => {
                let others: Vec<ClusterNode> = others.iter().map(|n| cluster_node(*n)).filter(|n| stage.exists(*n)).collect();
                let links = stage.links(&nodes, &others, *one_way);
                stage.set_links(&links, true);
                stage.log(if *one_way { "partition_one_way" } else { "partition" }, &nodes);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    stage.set_links(&links, false);
                    stage.log("heal_partition", &nodes);
                }
            }
            FaultKind::Clog => {
                let net = NetSim::current();
                for n in &nodes {
                    net.clog_node(stage.cluster.node(*n).id());
                }
                stage.log(kind, &nodes);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    for n in &nodes {
                        net.unclog_node(stage.cluster.node(*n).id());
                    }
                    stage.log("unclog", &nodes);
                }
            }
            FaultKind::Latency { min_ms, max_ms } => {
                stage.set_network((*min_ms, *max_ms), stage.base_loss);
                stage.log(kind, &[]);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    stage.set_network(stage.base_latency_ms, stage.base_loss);
                    stage.log("latency_restored", &[]);
                }
            }
            FaultKind::Loss { rate } => {
                stage.set_network(stage.base_latency_ms, *rate);
                stage.log(kind, &[]);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    stage.set_network(stage.base_latency_ms, stage.base_loss);
                    stage.log("loss_restored", &[]);
                }
            }
            FaultKind::Pause => {
                for n in &nodes {
                    stage.pause(*n);
                }
                stage.log(kind, &nodes);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    for n in &nodes {
                        stage.resume(*n);
                    }
                    stage.log("resume", &nodes);
                }
            }
            FaultKind::FailWrites | FaultKind::FailFsyncs | FaultKind::SlowWrites { .. } => {
                let faults = match fault.kind {
                    FaultKind::FailWrites => DiskFaults { fail_writes: true, ..DiskFaults::default() },
                    FaultKind::FailFsyncs => DiskFaults { fail_fsyncs: true, ..DiskFaults::default() },
                    FaultKind::SlowWrites { delay_ms } => DiskFaults { latency_ms: delay_ms, ..DiskFaults::default() },
                    _ => DiskFaults::default(),
                };
                let disks: Vec<ClusterNode> =
                    nodes.iter().copied().filter(|n| matches!(n, ClusterNode::Broker | ClusterNode::BlobStore)).collect();
                for n in &disks {
                    stage.set_disk(*n, faults);
                }
                stage.log(kind, &disks);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    for n in &disks {
                        stage.set_disk(*n, DiskFaults::default());
                    }
                    stage.log("disk_healed", &disks);
                }
            }
            FaultKind::BlobFailPuts | FaultKind::BlobSlowPuts { .. } => {
                match fault.kind {
                    FaultKind::BlobSlowPuts { delay_ms } => stage.cluster.blob_faults.set_put_latency_ms(delay_ms),
                    _ => stage.cluster.blob_faults.set_fail_puts(true),
                }
                stage.log(kind, &[ClusterNode::BlobStore]);
                hold(fault.duration_ms).await;
                if fault.duration_ms.is_some() {
                    stage.cluster.blob_faults.set(BlobFaultSettings::default());
                    stage.log("blob_healed", &[ClusterNode::BlobStore]);
                }
            }
        }
    }

    /// The engine's job spec for a world.
    pub(crate) fn job_spec(world: &WorldConfig, stopping: Vec<u64>) -> JobSpec {
        JobSpec {
            job: world.job.name().to_string(),
            name: JOB_NAME.to_string(),
            input_topic: INPUT_TOPIC.to_string(),
            input_partitions: world.workload.partitions,
            stopping_offsets: Some(stopping),
            output_topic: OUTPUT_TOPIC.to_string(),
            parallelism: world.parallelism,
            max_parallelism: world.max_parallelism,
            sink_mode: match world.sink_mode {
                SinkMode::Transactional => EngineSinkMode::Transactional,
                SinkMode::Plain => EngineSinkMode::Plain,
            },
            checkpointing: match world.checkpoint_mode {
                CheckpointMode::ExactlyOnce => CheckpointingMode::ExactlyOnce,
                CheckpointMode::AtLeastOnce => CheckpointingMode::AtLeastOnce,
            },
            checkpoint: CheckpointConfig {
                interval_ms: world.checkpoint_interval_ms,
                min_pause_ms: world.checkpoint_min_pause_ms,
                max_concurrent: world.checkpoint_max_concurrent,
                timeout_ms: world.checkpoint_timeout_ms,
                tolerable_failures: world.checkpoint_tolerable_failures,
                retained_completed_max: CHECKPOINTS_RETAINED,
            },
            restart: RestartStrategy::FixedDelay { attempts_max: 1_000, delay_ms: 200 },
            alignment_buffer_bytes_max: 64 << 20,
        }
    }

    /// The whole run as one future, without a trace of its own: for
    /// `Runtime::check_determinism`, which makes its own runtimes on its own threads (so no
    /// subscriber can be installed before madsim makes its spans). Event-triggered faults never
    /// fire here (nothing watches the events); timed ones do.
    pub async fn world_future(world: WorldConfig) -> RunRecord {
        drive(&world, Watcher::default()).await
    }

    /// Puts the captured trace into the record, with the counts derived from it.
    fn finish_record(mut record: RunRecord, capture: &TraceCapture) -> RunRecord {
        record.events = capture.take_events();
        record.restarts = record.events.iter().filter(|e| e.name == names::DEPLOYED).count().saturating_sub(1) as u64;
        record.checkpoints_completed = record
            .events
            .iter()
            .filter(|e| e.name == names::CHECKPOINT_COMPLETED)
            .filter_map(|e| e.id_field("checkpoint"))
            .collect::<BTreeSet<_>>()
            .len() as u64;
        record
    }

    async fn drive(world: &WorldConfig, watcher: Watcher) -> RunRecord {
        let partitions = world.workload.partitions.max(1);
        // Generated split (line i in partition i % partitions) and shared with the feed, which
        // packs each wave's slice of each partition straight into the produce batches.
        let input = Arc::new(generate_partitioned(&world.workload, world.seed, partitions));
        let total_lines: usize = input.iter().map(Vec::len).sum();
        let stopping: Vec<u64> = input.iter().map(|p| p.len() as u64).collect();
        let config = SimClusterConfig {
            task_managers: world.task_managers,
            slots_per_tm: world.slots_per_tm,
            broker: BrokerConfig { transaction_timeout_ms: world.transaction_timeout_ms, ..BrokerConfig::default() },
            heartbeat_timeout_ms: world.heartbeat_timeout_ms,
            heartbeat_interval_ms: (world.heartbeat_timeout_ms / 5).clamp(20, 200),
            rpc: RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() },
            seed: world.seed,
        };
        let cluster = SimCluster::start(config, JobRegistry::builtin());
        let stage = Arc::new(Stage {
            cluster,
            base_latency_ms: world.latency_ms,
            base_loss: world.packet_loss,
            faults: Mutex::new(Vec::new()),
            down: Mutex::new(BTreeSet::new()),
            down_until_heal_since_ms: Mutex::new(None),
            paused: Mutex::new(BTreeSet::new()),
            torn: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(world.seed ^ 0x7042_7a11)),
        });
        stage.set_network(world.latency_ms, world.packet_loss);
        let spec = job_spec(world, stopping);
        let _ = stage.cluster.produce_lines(INPUT_TOPIC, partitions, Vec::new()).await;
        stage.cluster.submit(spec).await;

        // The schedule: one task per fault on the (never killed) main node.
        let tasks: Vec<_> = world
            .faults
            .iter()
            .cloned()
            .map(|f| tokio::spawn(inject(stage.clone(), watcher.clone(), f)))
            .collect();
        // The input, in waves; each wave a multiple of the partitions long, so round-robin per
        // wave is round-robin overall and the stopping offsets computed up front hold.
        let unit = partitions as usize;
        let per_wave = total_lines.div_ceil(WAVES).div_ceil(unit).max(1) * unit;
        let gap_ms = (world.checkpoint_interval_ms / 2).clamp(25, 250);
        let feed = {
            let (stage, input) = (stage.clone(), input.clone());
            tokio::spawn(async move {
                for start in (0..total_lines).step_by(per_wave) {
                    let batches = wave_batches(&input, start / unit, (start + per_wave) / unit);
                    let _ = stage.cluster.produce_batches(INPUT_TOPIC, partitions, batches).await;
                    tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                }
            })
        };
        let mut aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        aborts.push(feed.abort_handle());
        for t in tasks {
            let _ = t.await;
        }
        if !world.faults.is_empty() {
            stage.heal_all();
        }
        let healed_at_ms = now_ms();
        let _ = feed.await;

        // Liveness: the job must finish within the bound after healing.
        let status = stage.cluster.wait_for_end(Duration::from_millis(world.liveness_bound_ms)).await;
        let finished = status.as_ref().is_some_and(|s| s.state == JobState::Finished);
        let finished_at_ms = if finished { watcher.finished_at_ms().or(Some(now_ms())) } else { None };
        let output = stage.cluster.read_committed_batches(OUTPUT_TOPIC).await;
        report_open_transactions(&stage.cluster).await;
        let checkpoints = read_checkpoints(&stage.cluster, world).await;
        let sim_ms = now_ms();

        // Tear down: kill every node, stop our tasks, and let the runtime drop them.
        for a in aborts {
            a.abort();
        }
        for n in stage.cluster.nodes() {
            Handle::current().kill(stage.cluster.node(n).id());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let faults = std::mem::take(&mut *stage.faults.lock().unwrap_or_else(|e| e.into_inner()));
        RunRecord {
            scenario: world.scenario.clone(),
            seed: world.seed,
            job: world.job.name().to_string(),
            input: Arc::try_unwrap(input).unwrap_or_else(|shared| (*shared).clone()),
            output: output.into_iter().map(CommittedRecords::from_blocks).collect(),
            events: Vec::new(),
            checkpoints,
            faults,
            finished,
            finished_at_ms,
            healed_at_ms,
            sim_ms,
            restarts: 0,
            checkpoints_completed: 0,
        }
    }

    /// One wave's produce batches: per partition, its lines `lo..hi` (clamped to its length) in
    /// chunks of [`floe_runtime::cluster::sim::PRODUCE_BATCH_RECORDS`]. A wave of the round-robin input starting at a
    /// multiple of the partitions is exactly that slice of every partition, so the broker gets
    /// the batches `produce_lines` would have made of the wave's lines.
    fn wave_batches(input: &[Vec<String>], lo: usize, hi: usize) -> Vec<Vec<PackedRecords>> {
        input
            .iter()
            .map(|lines| {
                let (lo, hi) = (lo.min(lines.len()), hi.min(lines.len()));
                pack_produce_batches(&lines[lo..hi])
            })
            .collect()
    }

    /// Emits `open_transaction_at_end` for every transaction still open on the broker once the
    /// run is over. A finished job commits or aborts everything it began, so one left open is a
    /// hanging transaction (a zombie's, Kafka's KIP-890 case): it holds back the last stable
    /// offset, and read-committed consumers see nothing written after it until the broker's
    /// transaction timeout aborts it. `exactly_once` catches it only when committed output lies
    /// behind it; `no_hanging_transactions` every time.
    async fn report_open_transactions(cluster: &SimCluster) {
        let client = cluster.broker_client();
        let listing = cluster.on_client(async move { read_back(|| client.list_transactions("")).await.unwrap_or_default() }).await;
        for row in listing.into_iter().filter(|r| r.state.is_open()) {
            tracing::info!(event = names::OPEN_TRANSACTION_AT_END, txn = %row.transactional_id, state = ?row.state);
        }
    }

    /// Runs `op` until it succeeds, at most [`READ_BACK_ATTEMPTS_MAX`] times 100 ms apart: after
    /// healing, every store comes back. `None` if it never answered.
    async fn read_back<T, E, Fut: std::future::Future<Output = Result<T, E>>>(mut op: impl FnMut() -> Fut) -> Option<T> {
        for _ in 0..READ_BACK_ATTEMPTS_MAX {
            match op().await {
                Ok(value) => return Some(value),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        None
    }

    /// Reads a blob, retrying while the store is unreachable.
    async fn get(client: &BlobClient, key: &str) -> Option<Vec<u8>> {
        read_back(|| client.get(key)).await.flatten()
    }

    /// Every checkpoint whose metadata is in the blob store, decoded: the source offsets and
    /// the keyed state (word counts; bucket sums for two-shuffle).
    async fn read_checkpoints(cluster: &SimCluster, world: &WorldConfig) -> Vec<CheckpointView> {
        let client = cluster.blob_client();
        let job = world.job;
        let spec = job_spec(world, vec![0; world.workload.partitions.max(1) as usize]);
        cluster
            .on_client(async move {
                let mut keys = Vec::new();
                for _ in 0..100 {
                    match client.list(&format!("{JOB_NAME}/chk-")).await {
                        Ok(k) => {
                            keys = k;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                let mut ids: Vec<u64> = keys
                    .iter()
                    .filter_map(|k| k.strip_suffix("/_metadata"))
                    .filter_map(|k| k.rsplit_once("chk-").and_then(|(_, n)| n.parse().ok()))
                    .collect();
                ids.sort_unstable();
                let Ok(graph) = JobRegistry::builtin().build(&spec) else { return Vec::new() };
                let exec = graph.expand();
                let source = exec.vertices.iter().find(|v| v.is_source).map(|v| (v.id, v.operators[0]));
                let count_vertex = exec.vertices.iter().find(|v| v.name.starts_with("count")).map(|v| v.id);
                let bucket_vertex = exec.vertices.iter().find(|v| v.name.starts_with("bucket-sum")).map(|v| v.id);
                let mut out = Vec::new();
                for id in ids {
                    let Some(bytes) = get(&client, &format!("{JOB_NAME}/chk-{id}/_metadata")).await else { continue };
                    let Ok(meta) = CheckpointMetadata::from_bytes(&bytes) else { continue };
                    let mut view = CheckpointView { id, ..CheckpointView::default() };
                    if let Some((vertex, op)) = source {
                        view.source_offsets = source_offsets(&client, &meta, vertex, op).await;
                    }
                    if let Some(v) = count_vertex {
                        view.word_counts = keyed_counts::<String>(&client, &meta, v, "count").await;
                    }
                    if job == JobKind::TwoShuffle {
                        if let Some(v) = bucket_vertex {
                            view.bucket_sums = keyed_counts::<u64>(&client, &meta, v, "bucket-sum").await;
                        }
                    }
                    out.push(view);
                }
                out
            })
            .await
    }

    async fn source_offsets(client: &BlobClient, meta: &CheckpointMetadata, vertex: OperatorId, op: OperatorId) -> BTreeMap<u32, u64> {
        let mut per_subtask = Vec::new();
        if let Some(cp) = meta.operators.get(&vertex) {
            for h in &cp.subtasks {
                let Some(blob) = &h.operator else { continue };
                let Some(bytes) = get(client, &blob.key).await else { continue };
                if check_blob(blob, &bytes).is_err() {
                    continue;
                }
                let Ok(map) = codec::open_value::<BTreeMap<OperatorId, Vec<u8>>>(OPERATOR_BLOB_MAGIC, OPERATOR_BLOB_VERSION, &bytes)
                else {
                    continue;
                };
                if let Some(b) = map.get(&op) {
                    per_subtask.push(b.clone());
                }
            }
        }
        let mut offsets = BTreeMap::new();
        let Ok(mut shares) = redistribute(&per_subtask, 1) else { return offsets };
        let Some(share) = shares.pop() else { return offsets };
        let mut store = OperatorStateStore::new();
        if store.restore(&share).is_err() {
            return offsets;
        }
        if let Ok(state) = store.union_list_state::<PartitionOffset>(SOURCE_OFFSETS_STATE) {
            for item in state.get(&store) {
                offsets.insert(item.partition.0, item.next.0);
            }
        }
        offsets
    }

    async fn keyed_counts<K: floe_core::key_groups::Key + Ord>(
        client: &BlobClient,
        meta: &CheckpointMetadata,
        vertex: OperatorId,
        state: &str,
    ) -> BTreeMap<K, u64> {
        let Some(cp) = meta.operators.get(&vertex) else { return BTreeMap::new() };
        let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for h in &cp.subtasks {
            let Some(k) = &h.keyed else { continue };
            if blobs.contains_key(&k.blob.key) {
                continue;
            }
            let Some(bytes) = get(client, &k.blob.key).await else { return BTreeMap::new() };
            if check_blob(&k.blob, &bytes).is_err() {
                return BTreeMap::new();
            }
            blobs.insert(k.blob.key.clone(), bytes);
        }
        let mut slices: Vec<&[u8]> = Vec::new();
        for h in &cp.subtasks {
            let Some(k) = &h.keyed else { continue };
            let blob = &blobs[&k.blob.key];
            for s in k.key_groups.iter().filter(|s| s.len > 0) {
                let (start, len) = (s.offset as usize, s.len as usize);
                if let Some(slice) = start.checked_add(len).and_then(|end| blob.get(start..end)) {
                    slices.push(slice);
                }
            }
        }
        let max_parallelism = cp.max_parallelism.max(1);
        let mut backend = KeyedStateBackend::new(max_parallelism, KeyGroupRange::all(max_parallelism));
        if backend.restore(slices).is_err() {
            return BTreeMap::new();
        }
        let Ok(value) = backend.get_state(&ValueStateDescriptor::<u64>::new(state)) else { return BTreeMap::new() };
        let Ok(keys) = backend.try_keys::<K>(state) else { return BTreeMap::new() };
        // The keys come sorted and distinct: the map is bulk-built from them in one pass
        // instead of searched once per key.
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            backend.set_current_key(&key);
            if let Some(v) = value.value(&backend) {
                entries.push((key, v));
            }
        }
        BTreeMap::from_iter(entries)
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use super::sim::{subtask_index, txn_subtask};
    use super::*;
    use crate::oracle::expected_state;
    use crate::scenario::{Overrides, Scenario};

    fn world(text: &str, seed: u64) -> WorldConfig {
        Scenario::parse("w.toml", text).unwrap().resolve(seed, Overrides::default())
    }

    /// Runs a world on a fresh thread (as `run_seed` does).
    fn run(w: WorldConfig) -> RunRecord {
        #[allow(clippy::disallowed_methods, reason = "a fresh OS thread per simulation (MADSIM.md)")]
        std::thread::spawn(move || run_world(&w)).join().unwrap().unwrap()
    }

    const SMALL: &str = "name = \"small\"\njob = \"two-shuffle\"\n[workload]\nlines = 240\npartitions = 3\n\
        [cluster]\ntask_managers = 2\nslots_per_tm = 1\nparallelism = 2\n[checkpoint]\ninterval_ms = 100\n";

    #[test]
    fn subtasks_and_transactions_name_their_subtask_index() {
        let cases: &[(&str, Option<u32>)] = &[("op3#1", Some(1)), ("op12#0", Some(0)), ("7", Some(7)), ("op3#", None)];
        for (s, want) in cases {
            assert_eq!(subtask_index(s), *want, "{s}");
        }
        assert_eq!(txn_subtask("floe-sink-2-17"), Some(2));
        assert_eq!(txn_subtask("17"), None);
    }

    #[test]
    fn every_completed_checkpoint_is_read_back_as_a_consistent_cut() {
        let r = run(world(SMALL, 3));
        assert!(r.finished, "{r:?}");
        assert!(r.checkpoints.len() >= 2, "checkpoints read back: {}", r.checkpoints.len());
        assert_eq!(r.checkpoints.len() as u64, r.checkpoints_completed);
        let last = r.checkpoints.last().unwrap();
        // The final checkpoint covers the whole input, so its state is the oracle's for all of it.
        let ends: std::collections::BTreeMap<u32, u64> =
            r.input.iter().enumerate().map(|(p, l)| (p as u32, l.len() as u64)).collect();
        assert_eq!(last.source_offsets, ends);
        let want = expected_state(crate::oracle::JobKind::TwoShuffle, &r.input, None);
        assert_eq!((&last.word_counts, &last.bucket_sums), (&want.word_counts, &want.bucket_sums));
        // Earlier ones are partial cuts: offsets only grow.
        for pair in r.checkpoints.windows(2) {
            assert!(pair[0].id < pair[1].id);
            assert!(pair[0].source_offsets.iter().all(|(p, o)| pair[1].source_offsets.get(p).is_some_and(|n| n >= o)));
        }
    }

    #[test]
    fn an_event_triggered_crash_fires_when_its_checkpoint_completes_and_is_healed() {
        let text = format!(
            "{SMALL}[[fault]]\non = \"checkpoint_completed\"\ncheckpoint = 2\nafter_ms = 10\nkind = \"crash\"\nnode = \"tm1\"\nrestart_after_ms = 200\n"
        );
        let r = run(world(&text, 4));
        let completed_2 = r
            .events
            .iter()
            .find(|e| e.name == "checkpoint_completed" && e.id_field("checkpoint") == Some(2))
            .expect("checkpoint 2 completed");
        let kinds: Vec<(&str, u64)> = r.faults.iter().map(|f| (f.kind.as_str(), f.at_ms)).collect();
        assert_eq!(kinds.iter().map(|k| k.0).collect::<Vec<_>>(), ["crash", "restart", "heal"], "{kinds:?}");
        assert_eq!(kinds[0].1, completed_2.at_ns / 1_000_000 + 10);
        assert_eq!(kinds[1].1, kinds[0].1 + 200);
        assert_eq!(r.faults[0].nodes, ["tm1"]);
        assert!(r.restarts >= 1 && r.finished, "tm1 hosted subtasks: the job restarted and finished");
    }

    #[test]
    fn a_trigger_whose_event_never_comes_gives_up_when_the_job_finishes() {
        let text = format!("{SMALL}[[fault]]\non = \"restore_begun\"\nkind = \"crash\"\nnode = \"jm\"\n");
        let r = run(world(&text, 5));
        assert!(r.finished);
        assert_eq!(r.faults.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(), ["heal"]);
        assert_eq!(r.restarts, 0);
    }
}
