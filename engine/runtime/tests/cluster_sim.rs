//! The cluster under madsim: a job manager, task managers, a broker and a blob store as nodes of
//! one simulated world; Flink's word count (and the two-shuffle job) run with crashes injected,
//! and the committed output is checked against counts computed here, independently, from the
//! input.
//!
//! Every test runs on a fresh OS thread with a fresh runtime; a failure prints the seed and the
//! command that reruns it (`FLOE_SEED=N cargo test -p floe-runtime --test cluster_sim <name>`).
#![cfg(madsim)]

mod common;

use common::{check_word_count, expected_counts};
use floe_runtime::cluster::jobs::{decode_bucket_record, JobRegistry, JobSpec, BUCKETS};
use floe_runtime::cluster::protocol::{JobState, JobStatusReport};
use floe_runtime::cluster::sim::{ClusterNode, SimCluster, SimClusterConfig, simulate, test_seeds};
use floe_runtime::disk::TornTail;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn sim<F, Fut>(test: &str, seed: u64, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    simulate(seed, Duration::from_secs(900), &format!("FLOE_SEED={seed} cargo test -p floe-runtime --test cluster_sim {test}"), f)
}

fn seeds(first: u64, count: u64) -> Vec<u64> {
    test_seeds(first, count)
}

/// Deterministic input lines drawn from the seed.
fn input_lines(seed: u64, lines: usize) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xF10E);
    let vocabulary: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
    (0..lines)
        .map(|_| {
            let n = rng.gen_range(1..=8);
            (0..n).map(|_| vocabulary[rng.gen_range(0..vocabulary.len()).min(rng.gen_range(0..vocabulary.len()))].to_uppercase()).collect::<Vec<_>>().join(" ,")
        })
        .collect()
}

/// How often each word occurs in the input: counted here, without engine code.
/// Checks the two-shuffle job: every `(w, k)` for `k in 1..=n_w` exactly once, in bucket
/// `k % BUCKETS`, and per bucket the running sums go up by exactly each record's count.
fn check_two_shuffle(output: &[Vec<Vec<u8>>], expected: &BTreeMap<String, u64>) {
    let mut pairs: BTreeMap<(String, u64), u32> = BTreeMap::new();
    let mut sums: BTreeMap<u64, u64> = BTreeMap::new();
    for partition in output {
        for bytes in partition {
            let (bucket, word, count, sum) = decode_bucket_record(bytes).expect("decodable record");
            assert_eq!(bucket, count % BUCKETS, "({word}, {count}) in bucket {bucket}");
            let last = sums.entry(bucket).or_insert(0);
            assert_eq!(sum, *last + count, "bucket {bucket}: running sum {sum} after {last} with count {count}");
            *last = sum;
            *pairs.entry((word, count)).or_insert(0) += 1;
        }
    }
    for (pair, times) in &pairs {
        assert_eq!(*times, 1, "{pair:?} committed {times} times");
    }
    let want: usize = expected.values().map(|n| *n as usize).sum();
    assert_eq!(pairs.len(), want, "committed pairs");
    for (w, n) in expected {
        for k in 1..=*n {
            assert!(pairs.contains_key(&(w.clone(), k)), "({w}, {k}) was lost");
        }
    }
}

/// A captured trace: event names as they happen, shared with the test's fault logic.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn count(&self, name: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| e.as_str() == name).count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        struct Name(Option<String>);
        impl tracing::field::Visit for Name {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "event" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "event" {
                    self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
                }
            }
        }
        let mut name = Name(None);
        event.record(&mut name);
        if let Some(n) = name.0 {
            self.0.lock().unwrap().push(n);
        }
    }
}

struct World {
    cluster: SimCluster,
    spec: JobSpec,
    lines: Vec<String>,
    events: Events,
}

const INPUT_PARTITIONS: u32 = 3;
const WAVES: usize = 10;

/// Starts a cluster, submits a bounded job over `lines`, and writes the input in waves 50 ms
/// apart in the background, so the job runs for a while and takes several checkpoints.
async fn start(job: &str, seed: u64, task_managers: u32, parallelism: u32, lines: Vec<String>, events: Events) -> World {
    let cluster = SimCluster::start(SimClusterConfig { task_managers, seed, ..SimClusterConfig::default() }, JobRegistry::builtin());
    // Stopping offsets: the lines are written round-robin over the partitions, wave by wave.
    let mut ends = vec![0u64; INPUT_PARTITIONS as usize];
    for i in 0..lines.len() {
        ends[i % INPUT_PARTITIONS as usize] += 1;
    }
    let _ = cluster.produce_lines("lines", INPUT_PARTITIONS, Vec::new()).await;
    let spec = JobSpec { job: job.into(), stopping_offsets: Some(ends), ..JobSpec::word_count("wc", "lines", INPUT_PARTITIONS, "counts", parallelism) };
    cluster.submit(spec.clone()).await;
    World { cluster, spec, lines, events }
}

impl World {
    async fn feed(&self) {
        self.feed_every(Duration::from_millis(50)).await
    }

    /// Writes the input in `WAVES` waves, `gap` apart. Each wave is a multiple of the partitions
    /// long, so round-robin placement per wave is round-robin placement overall.
    async fn feed_every(&self, gap: Duration) {
        let per_wave = self.lines.len().div_ceil(WAVES);
        for wave in self.lines.chunks(per_wave) {
            let _ = self.cluster.produce_lines("lines", INPUT_PARTITIONS, wave.to_vec()).await;
            tokio::time::sleep(gap).await;
        }
    }

    async fn finish(&self) -> JobStatusReport {
        let status = self.cluster.wait_for_end(Duration::from_secs(300)).await.expect("the job manager answers");
        assert_eq!(status.state, JobState::Finished, "the job did not finish: {status:?}");
        status
    }

    async fn check(&self, status: &JobStatusReport) {
        let output = self.cluster.read_committed("counts").await;
        let expected = expected_counts(&self.lines);
        match self.spec.job.as_str() {
            "word-count" => check_word_count(&output, &expected),
            _ => check_two_shuffle(&output, &expected),
        }
        assert!(status.latest_checkpoint.is_some_and(|c| c.0 >= 2), "at least checkpoint 2 must complete: {status:?}");
    }
}

fn lines_per_wave_multiple(lines: usize) -> usize {
    // Waves are chunks of a multiple of the partitions, so round-robin placement per wave equals
    // round-robin placement overall and the stopping offsets computed up front hold.
    let unit = WAVES * INPUT_PARTITIONS as usize;
    lines.div_ceil(unit) * unit
}

fn with_trace<F: Future<Output = ()>>(events: &Events, f: F) -> impl Future<Output = ()> {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let dispatch = tracing::Dispatch::new(subscriber);
    async move {
        let _guard = tracing::dispatcher::set_default(&dispatch);
        f.await
    }
}

#[allow(clippy::too_many_arguments, reason = "a test table row, spelled out")]
fn scenario(test: &'static str, job: &'static str, first_seed: u64, count: u64, task_managers: u32, parallelism: u32, lines: usize, faults: fn(&World) -> std::pin::Pin<Box<dyn Future<Output = ()> + '_>>) {
    for seed in seeds(first_seed, count) {
        sim(test, seed, move || {
            let events = Events::default();
            let lines = input_lines(seed, lines_per_wave_multiple(lines));
            with_trace(&events.clone(), async move {
                let world = start(job, seed, task_managers, parallelism, lines, events).await;
                let feed = world.feed();
                let fault = faults(&world);
                tokio::join!(feed, fault);
                let status = world.finish().await;
                world.check(&status).await;
            })
        });
    }
}

async fn wait_for(events: &Events, name: &str, at_least: usize) {
    for _ in 0..600_000 {
        if events.count(name) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{name} never happened {at_least} times");
}

#[test]
fn word_count_without_faults_is_exactly_once() {
    scenario("word_count_without_faults_is_exactly_once", "word-count", 1, 3, 2, 2, 3_000, |_| Box::pin(async {}));
}

#[test]
fn two_shuffle_without_faults_is_exactly_once() {
    scenario("two_shuffle_without_faults_is_exactly_once", "two-shuffle", 11, 2, 3, 3, 3_000, |_| Box::pin(async {}));
}

#[test]
fn a_task_manager_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    scenario("a_task_manager_killed_mid_stream_and_restarted_loses_and_duplicates_nothing", "word-count", 21, 3, 2, 2, 3_000, |w| {
        Box::pin(async move {
            wait_for(&w.events, "checkpoint_completed", 1).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            w.cluster.kill(ClusterNode::TaskManager(1), TornTail::None);
            tokio::time::sleep(Duration::from_millis(500)).await;
            w.cluster.restart(ClusterNode::TaskManager(1));
        })
    });
}

#[test]
fn a_task_manager_killed_while_a_checkpoint_aligns_loses_and_duplicates_nothing() {
    scenario("a_task_manager_killed_while_a_checkpoint_aligns_loses_and_duplicates_nothing", "two-shuffle", 31, 3, 2, 2, 3_000, |w| {
        Box::pin(async move {
            let before = w.events.count("alignment_started");
            wait_for(&w.events, "checkpoint_completed", 1).await;
            wait_for(&w.events, "alignment_started", before + 1).await;
            w.cluster.kill(ClusterNode::TaskManager(0), TornTail::None);
            tokio::time::sleep(Duration::from_millis(300)).await;
            w.cluster.restart(ClusterNode::TaskManager(0));
        })
    });
}

#[test]
fn the_job_manager_killed_and_restarted_recovers_the_job() {
    scenario("the_job_manager_killed_and_restarted_recovers_the_job", "word-count", 41, 3, 2, 2, 3_000, |w| {
        Box::pin(async move {
            wait_for(&w.events, "checkpoint_completed", 2).await;
            w.cluster.kill(ClusterNode::JobManager, TornTail::None);
            tokio::time::sleep(Duration::from_millis(400)).await;
            w.cluster.restart(ClusterNode::JobManager);
        })
    });
}

#[test]
fn the_broker_restarted_mid_stream_loses_and_duplicates_nothing() {
    scenario("the_broker_restarted_mid_stream_loses_and_duplicates_nothing", "word-count", 51, 3, 2, 2, 3_000, |w| {
        Box::pin(async move {
            wait_for(&w.events, "checkpoint_completed", 1).await;
            w.cluster.kill(ClusterNode::Broker, TornTail::None);
            tokio::time::sleep(Duration::from_millis(300)).await;
            w.cluster.restart(ClusterNode::Broker);
        })
    });
}

#[test]
fn records_flow_while_a_snapshot_write_is_slow() {
    for seed in seeds(61, 1) {
        sim("records_flow_while_a_snapshot_write_is_slow", seed, move || {
            let events = Events::default();
            let lines = input_lines(seed, lines_per_wave_multiple(3_000));
            with_trace(&events.clone(), async move {
                let world = start("word-count", seed, 2, 2, lines, events.clone()).await;
                // Slow, but below the RPC call timeout (1 s), so the puts succeed late.
                world.cluster.blob_faults.set_put_latency_ms(800);
                let feed = world.feed_every(Duration::from_millis(300));
                let observe = async {
                    // While the first snapshot writes are outstanding (0.8 s each), the sinks keep
                    // writing into their open transactions: uncommitted output grows.
                    wait_for(&events, "snapshot_taken", 1).await;
                    let written_before = events.count("snapshot_written");
                    let a = uncommitted(&world.cluster).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let b = uncommitted(&world.cluster).await;
                    assert_eq!(events.count("snapshot_written"), written_before, "the slow write finished too early for this test to show anything");
                    assert!(b > a, "no records flowed during a slow snapshot write: {a} -> {b}");
                    world.cluster.blob_faults.set_put_latency_ms(0);
                };
                tokio::join!(feed, observe);
                let status = world.finish().await;
                world.check(&status).await;
            })
        });
    }
}

/// Records in the output topic, committed or not.
async fn uncommitted(cluster: &SimCluster) -> u64 {
    use floe_core::ids::{Offset, PartitionId};
    use floe_runtime::broker::IsolationLevel;
    let client = cluster.broker_client();
    cluster
        .on_client(async move {
            let mut total = 0;
            let partitions = client.partitions("counts").await.unwrap_or(0);
            for p in 0..partitions {
                if let Ok(f) = client.fetch("counts", PartitionId(p), Offset(0), 1, 1 << 20, IsolationLevel::ReadUncommitted).await {
                    total += f.high_watermark.0;
                }
            }
            total
        })
        .await
}
