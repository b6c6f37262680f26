//! What an operator emits when its input ends is committed (Flink's FLIP-147, `EndOfData`).
//!
//! A job registered here, `tally`, counts the words each of its subtasks saw behind a shuffle and
//! emits one `("#total-i", n)` record per subtask from `end_of_input`; another shuffle takes those
//! records to the sink. `EndOfData` must flow through the graph ahead of the final checkpoint's
//! barrier, so that output lands in a transaction the final checkpoint commits. Before it did,
//! the totals reached the sink after the final checkpoint and were silently lost.
//!
//! A checkpoint taken after a subtask's `EndOfData` already holds what its `end_of_input` emitted
//! (in that checkpoint's sink transactions, which it commits). A job restored from it must not
//! run `end_of_input` again (FLIP-147's "finished on restore"): before it did, a task manager lost
//! between the final checkpoint's completion and its commit notification made the restored tally
//! subtasks emit their totals a second time, and both copies were committed.
//!
//! Every test runs on a fresh OS thread with a fresh runtime; a failure prints the seed and the
//! command that reruns it (`FLOE_SEED=N cargo test -p floe-runtime --test end_of_data <name>`).
#![cfg(madsim)]

use floe_core::codec;
use floe_core::graph::{JobGraph, StreamEnvironment};
use floe_core::ids::{CheckpointId, Offset, PartitionId};
use floe_core::operator::sink::TwoPhaseCommitSinkWriter;
use floe_core::operator::source::{SourceReader, SourceSpec};
use floe_core::operator::{Operator, OperatorContext, OperatorError, OperatorResult};
use floe_core::state::OperatorListState;
use floe_runtime::cluster::jobs::{words, JobError, JobRegistry, JobSpec};
use floe_runtime::cluster::protocol::JobState;
use floe_runtime::cluster::sim::{simulate, test_seeds, ClusterNode, SimCluster, SimClusterConfig};
use floe_runtime::disk::TornTail;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const INPUT_PARTITIONS: u32 = 3;
const PARALLELISM: u32 = 2;
const TOTAL_PREFIX: &str = "#total-";

/// Counts the words it sees, passes each on as `(word, 0)`, and at the end of its input emits
/// `("#total-<subtask>", count)`. The count is checkpointed (list state), so a restore resumes it.
#[derive(Default)]
struct Tally {
    count: u64,
    state: Option<OperatorListState<u64>>,
}

impl Operator for Tally {
    type In = String;
    type Out = (String, u64);

    fn initialize_state(&mut self, ctx: &mut OperatorContext<'_>, _restored_from: Option<CheckpointId>) -> OperatorResult {
        let state = ctx.operator_state.list_state::<u64>("tally-count").map_err(|e| OperatorError::State(e.to_string()))?;
        self.count = state.get_ref(ctx.operator_state).iter().sum();
        self.state = Some(state);
        Ok(())
    }

    fn process_batch(&mut self, _ctx: &mut OperatorContext<'_>, input: Vec<String>, out: &mut Vec<(String, u64)>) -> OperatorResult {
        self.count += input.len() as u64;
        out.extend(input.into_iter().map(|w| (w, 0)));
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut OperatorContext<'_>, _id: CheckpointId) -> OperatorResult {
        let state = self.state.as_ref().ok_or_else(|| OperatorError::Protocol("snapshot before initialize".into()))?;
        state.update(ctx.operator_state, vec![self.count]);
        Ok(())
    }

    fn end_of_input(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Vec<(String, u64)>) -> OperatorResult {
        out.push((format!("{TOTAL_PREFIX}{}", ctx.subtask.0), self.count));
        Ok(())
    }
}

fn decode_line(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

fn encode_pair(record: &(String, u64), out: &mut Vec<u8>) -> Result<(), String> {
    codec::append_bytes(out, record).map_err(|e| e.to_string())
}

/// lines → words → rebalance → tally → rebalance → two-phase-commit sink.
fn tally_job(spec: &JobSpec) -> Result<JobGraph, JobError> {
    let env = StreamEnvironment::new(spec.name.clone());
    env.set_parallelism(spec.parallelism);
    env.set_max_parallelism(spec.max_parallelism);
    let source = SourceSpec {
        topic: spec.input_topic.clone(),
        partitions: spec.input_partitions,
        stopping: spec.stopping_offsets.as_ref().map(|ends| ends.iter().enumerate().map(|(p, o)| (PartitionId(p as u32), Offset(*o))).collect()),
    };
    let prefix = spec.sink_prefix();
    let mode = spec.sink_mode;
    env.add_source("lines", move || SourceReader::new(source.clone(), decode_line).expect("a valid source spec"))
        .flat_map("split", |line: String, out: &mut Vec<String>| out.extend(words(&line)))
        .rebalance()
        .transform("tally", Tally::default)
        .rebalance()
        .add_sink("sink", move || TwoPhaseCommitSinkWriter::new(prefix.clone(), mode, encode_pair).expect("a valid sink prefix"));
    env.build().map_err(|error| JobError::Graph { job: spec.job.clone(), error })
}

fn sim(test: &str, seed: u64, f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
    install_trace_forwarding();
    simulate(seed, Duration::from_secs(900), &format!("FLOE_SEED={seed} cargo test -p floe-runtime --test end_of_data {test}"), f)
}

/// Deterministic input lines drawn from the seed (xorshift; no engine code).
fn input_lines(seed: u64, n: usize) -> Vec<String> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n).map(|_| (0..1 + next() % 6).map(|_| format!("W{}", next() % 40)).collect::<Vec<_>>().join(", ")).collect()
}

/// When the test kills task manager 1 (and restarts it 500 ms later).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Crash {
    /// No crash.
    Never,
    /// Once the job manager reports a completed checkpoint (polled).
    AfterAFirstCheckpoint,
    /// The instant a final checkpoint completes — after every subtask's `end_of_input` and
    /// before the job manager's commit notification can reach the task manager, so the job
    /// restores from that final checkpoint.
    WhenAFinalCheckpointCompletes,
}

/// What the cluster's trace events told the test.
#[derive(Default, Debug)]
struct Seen {
    /// Checkpoints triggered as final.
    final_checkpoints: BTreeSet<u64>,
    /// The first final checkpoint that completed.
    final_completed: Option<u64>,
    /// `(attempt, subtask)` of every `end_of_input` event.
    end_of_input: Vec<(u64, String)>,
    /// The checkpoint of every `restore_begun` event.
    restored_from: BTreeSet<u64>,
}

/// Records the events the test acts on and wakes the fault task when a final checkpoint
/// completes (in the same virtual instant: nothing else has run yet).
#[derive(Clone, Default)]
struct Watcher {
    seen: Arc<Mutex<Seen>>,
    final_completed: Arc<Notify>,
}

thread_local! {
    /// The watcher of the simulation running on this thread (every task of a madsim runtime
    /// runs on the thread that called `block_on`).
    static WATCHER: std::cell::RefCell<Option<Watcher>> = const { std::cell::RefCell::new(None) };
}

/// The one global subscriber, installed before any test's simulation starts: it hands each
/// event to its thread's [`Watcher`], if any. (A scoped `set_default` per test is not enough:
/// tracing caches each callsite's interest process-wide, and a callsite first hit by a parallel
/// test while no subscriber wanted it can stay disabled for good.)
struct ForwardToWatcher;

impl<S: tracing::Subscriber> Layer<S> for ForwardToWatcher {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        WATCHER.with(|w| {
            if let Some(w) = w.borrow().as_ref() {
                w.on_event(event, ctx);
            }
        });
    }
}

fn install_trace_forwarding() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ForwardToWatcher));
    });
}

#[derive(Default)]
struct Fields {
    event: Option<String>,
    checkpoint: Option<u64>,
    attempt: Option<u64>,
    subtask: Option<String>,
    is_final: bool,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "event" => self.event = Some(format!("{value:?}").trim_matches('"').to_string()),
            "subtask" => self.subtask = Some(format!("{value:?}")),
            // `restore_begun` names it as an `Option<u64>`: "Some(9)".
            "checkpoint" => self.checkpoint = format!("{value:?}").trim_start_matches("Some(").trim_end_matches(')').parse().ok(),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event" {
            self.event = Some(value.to_string());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "checkpoint" => self.checkpoint = Some(value),
            "attempt" => self.attempt = Some(value),
            _ => {}
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "is_final" {
            self.is_final = value;
        }
    }
}

impl Watcher {
    fn on_event<S: tracing::Subscriber>(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let mut seen = self.seen.lock().expect("the watcher's lock");
        match (f.event.as_deref(), f.checkpoint) {
            (Some("checkpoint_triggered"), Some(id)) if f.is_final => {
                seen.final_checkpoints.insert(id);
            }
            (Some("checkpoint_completed"), Some(id)) if seen.final_completed.is_none() && seen.final_checkpoints.contains(&id) => {
                seen.final_completed = Some(id);
                self.final_completed.notify_one();
            }
            (Some("end_of_input"), _) => seen.end_of_input.push((f.attempt.unwrap_or(0), f.subtask.unwrap_or_default())),
            (Some("restore_begun"), Some(id)) => {
                seen.restored_from.insert(id);
            }
            _ => {}
        }
    }
}

/// Runs the tally job over `lines` on two TMs of one slot each (each TM runs one subtask of
/// every vertex), the input written in ten waves 50 ms apart; TM 1 is killed as `crash` says
/// and restarted 500 ms later. Returns the committed output and the restarts the job made.
async fn run_tally(seed: u64, lines: Vec<String>, crash: Crash, watcher: &Watcher) -> (Vec<Vec<Vec<u8>>>, u64) {
    let mut registry = JobRegistry::builtin();
    registry.register("tally", tally_job);
    let cluster = SimCluster::start(SimClusterConfig { seed, task_managers: PARALLELISM, slots_per_tm: 1, ..SimClusterConfig::default() }, registry);
    let mut ends = vec![0u64; INPUT_PARTITIONS as usize];
    for i in 0..lines.len() {
        ends[i % INPUT_PARTITIONS as usize] += 1;
    }
    let _ = cluster.produce_lines("lines", INPUT_PARTITIONS, Vec::new()).await;
    let spec = JobSpec { job: "tally".into(), stopping_offsets: Some(ends), ..JobSpec::word_count("tally", "lines", INPUT_PARTITIONS, "out", PARALLELISM) };
    cluster.submit(spec).await;
    let unit = 10 * INPUT_PARTITIONS as usize;
    assert_eq!(lines.len() % unit, 0, "waves of whole rounds keep the round-robin placement");
    let feed = async {
        for wave in lines.chunks(lines.len() / 10) {
            let _ = cluster.produce_lines("lines", INPUT_PARTITIONS, wave.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let fault = async {
        match crash {
            Crash::Never => return,
            Crash::AfterAFirstCheckpoint => {
                for _ in 0..6_000 {
                    if cluster.status().await.is_some_and(|s| s.latest_checkpoint.is_some()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Crash::WhenAFinalCheckpointCompletes => watcher.final_completed.notified().await,
        }
        cluster.kill(ClusterNode::TaskManager(1), TornTail::None);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.restart(ClusterNode::TaskManager(1));
    };
    tokio::join!(feed, fault);
    let status = cluster.wait_for_end(Duration::from_secs(300)).await.expect("the job manager answers");
    assert_eq!(status.state, JobState::Finished, "the job did not finish: {status:?}");
    (cluster.read_committed("out").await, status.restarts)
}

/// Every word passed on exactly as often as the input has it, and one total per tally subtask,
/// exactly once, summing to the number of words.
fn check_tally(output: &[Vec<Vec<u8>>], lines: &[String]) {
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        for w in words(line) {
            *expected.entry(w).or_insert(0) += 1;
        }
    }
    let (mut passed, mut totals): (BTreeMap<String, u64>, BTreeMap<String, Vec<u64>>) = (BTreeMap::new(), BTreeMap::new());
    for partition in output {
        for bytes in partition {
            let (key, n): (String, u64) = codec::from_bytes(bytes).expect("a decodable record");
            if key.starts_with(TOTAL_PREFIX) {
                totals.entry(key).or_default().push(n);
            } else {
                assert_eq!(n, 0, "{key}");
                *passed.entry(key).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(passed, expected, "the words passed through");
    let names: Vec<String> = (0..PARALLELISM).map(|i| format!("{TOTAL_PREFIX}{i}")).collect();
    assert_eq!(totals.keys().cloned().collect::<Vec<_>>(), names, "one committed total per tally subtask, emitted at end of input: {totals:?}");
    for (name, values) in &totals {
        assert_eq!(values.len(), 1, "{name} committed {} times: {values:?}", values.len());
    }
    let sum: u64 = totals.values().flatten().sum();
    assert_eq!(sum, expected.values().sum::<u64>(), "the totals add up to the words in the input: {totals:?}");
}

#[test]
fn output_emitted_at_end_of_input_behind_a_shuffle_is_committed_exactly_once() {
    for seed in test_seeds(1, 2) {
        sim("output_emitted_at_end_of_input_behind_a_shuffle_is_committed_exactly_once", seed, move || {
            Box::pin(async move {
                let lines = input_lines(seed, 600);
                let (output, restarts) = run_tally(seed, lines.clone(), Crash::Never, &Watcher::default()).await;
                assert_eq!(restarts, 0);
                check_tally(&output, &lines);
            })
        });
    }
}

#[test]
fn end_of_input_output_is_committed_exactly_once_after_a_task_manager_crash_and_restore() {
    for seed in test_seeds(21, 2) {
        sim("end_of_input_output_is_committed_exactly_once_after_a_task_manager_crash_and_restore", seed, move || {
            Box::pin(async move {
                let lines = input_lines(seed, 600);
                let (output, restarts) = run_tally(seed, lines.clone(), Crash::AfterAFirstCheckpoint, &Watcher::default()).await;
                assert!(restarts >= 1, "the crash must cause a restart");
                check_tally(&output, &lines);
            })
        });
    }
}

#[test]
fn a_job_restored_from_its_final_checkpoint_does_not_run_end_of_input_again() {
    for seed in test_seeds(41, 3) {
        sim("a_job_restored_from_its_final_checkpoint_does_not_run_end_of_input_again", seed, move || {
            Box::pin(async move {
                let watcher = Watcher::default();
                WATCHER.with(|w| *w.borrow_mut() = Some(watcher.clone()));
                let lines = input_lines(seed, 600);
                let (output, restarts) = run_tally(seed, lines.clone(), Crash::WhenAFinalCheckpointCompletes, &watcher).await;
                let seen = watcher.seen.lock().expect("the watcher's lock");
                let final_id = seen.final_completed.expect("a final checkpoint completed");
                assert!(restarts >= 1, "the crash must cause a restart: {seen:?}");
                assert!(seen.restored_from.contains(&final_id), "the job restored from the final checkpoint {final_id}: {seen:?}");
                // Every subtask's input ended in the first attempt, before the final checkpoint;
                // the restored attempt still sent EndOfData on (its end_of_input event).
                let attempts: BTreeSet<u64> = seen.end_of_input.iter().map(|(a, _)| *a).collect();
                assert!(attempts.len() >= 2, "end of data in the first attempt and again after the restore: {seen:?}");
                check_tally(&output, &lines);
            })
        });
    }
}
