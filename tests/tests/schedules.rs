//! proptest fault schedules: random bounded schedules (at most [`FAULTS_MAX`] faults — crash and
//! restart of any node, partitions, clogs, pauses, latency and loss, disk and blob-store faults;
//! each timed or fired on a protocol event) over BOTH registered jobs, on a small fixed world.
//! The property: every checker passes.
//!
//! The madsim seed is drawn with `no_shrink()` (a different seed is a different world, not a
//! simpler one); the schedule shrinks: fewer faults, earlier times, shorter durations, simpler
//! kinds. A failure prints the shrunk schedule as a scenario TOML file that reproduces it (also
//! written under the system temp dir) and the `floe run` command.
//!
//! - `FLOE_PROPTEST_CASES=N`: cases of the property (default [`CASES_DEFAULT`]: about 10 s in
//!   debug on 2 cores; 1,000 cases in release take a few minutes).
//! - `FLOE_PROPTEST_SEED=N`: proptest's own RNG seed (default fixed, so CI is reproducible);
//!   `FLOE_PROPTEST_SEED=random` draws one.
//!
//! The controls show the property can fail: with at-least-once checkpointing forced, or with the
//! plain sink, proptest must find a failing schedule and shrink it to at most 3 faults.

use floe_sim::oracle::JobKind;
use floe_sim::report::Report;
use floe_sim::run::{run_seed_with, run_world};
use floe_sim::scenario::{
    CheckpointMode, FaultKind, FaultSpec, NodeName, Overrides, Scenario, SinkMode, Trigger, TriggerEvent,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use std::fmt::Write;

/// Most faults in one schedule.
const FAULTS_MAX: usize = 6;
/// Cases when `FLOE_PROPTEST_CASES` is not set.
const CASES_DEFAULT: u32 = 16;
/// Most shrink steps (each one runs a world).
const SHRINK_ITERS_MAX: u32 = 256;
/// Cases a control may take to find its failure.
const CONTROL_CASES_MAX: u32 = 64;
/// Most faults the shrunk schedule of a control may keep.
const CONTROL_SHRUNK_FAULTS_MAX: usize = 3;
/// proptest's RNG seed when `FLOE_PROPTEST_SEED` is not set.
const PROPTEST_SEED_DEFAULT: u64 = 0x5eed_f10e;

/// The fixed world every schedule runs on: small and fast, two task managers so alignment spans
/// machines, a transaction timeout far above any downtime a schedule can cause (FLINK-7784 is
/// its own scenario), a liveness bound short enough that a hang costs little.
fn base_toml(job: JobKind) -> String {
    format!(
        r#"name = "proptest-schedule"
description = "A fault schedule found and shrunk by tests/tests/schedules.rs."
job = "{job}"
[workload]
lines = 240
words_per_line = 4
vocabulary = 60
skew = 0.8
partitions = 2
[cluster]
task_managers = 2
slots_per_tm = 2
parallelism = 2
max_parallelism = 32
heartbeat_timeout_ms = 600
[checkpoint]
interval_ms = 100
timeout_ms = 2000
min_pause_ms = 0
max_concurrent = 1
tolerable_failures = 3
[broker]
transaction_timeout_ms = 60000
[network]
latency_ms = [1, 10]
packet_loss = 0.0
[expect]
verdict = "pass"
liveness_bound_ms = 30000
"#,
        job = job.name()
    )
}

/// One case: a job, a madsim seed and a schedule.
#[derive(Clone, Debug)]
struct Case {
    job: JobKind,
    seed: u64,
    faults: Vec<FaultSpec>,
}

fn node() -> impl Strategy<Value = NodeName> {
    prop_oneof![Just(NodeName::Tm(0)), Just(NodeName::Tm(1)), Just(NodeName::Jm), Just(NodeName::Broker), Just(NodeName::Blob)]
}

fn disk_node() -> impl Strategy<Value = NodeName> {
    prop_oneof![Just(NodeName::Broker), Just(NodeName::Blob)]
}

fn trigger() -> impl Strategy<Value = Trigger> {
    let event = prop_oneof![
        Just(TriggerEvent::CheckpointAligning),
        Just(TriggerEvent::CheckpointCompleted),
        Just(TriggerEvent::SinkPrepared),
        Just(TriggerEvent::RestoreBegun),
    ];
    prop_oneof![
        (0u64..3_000).prop_map(|at_ms| Trigger::At { at_ms }),
        (event, proptest::option::of(1u64..6), 0u64..300).prop_map(|(event, checkpoint, after_ms)| Trigger::On {
            event,
            checkpoint,
            subtask: None,
            after_ms
        }),
    ]
}

/// A fault: the simplest kinds first (proptest shrinks a `prop_oneof!` towards its first arm).
fn fault() -> impl Strategy<Value = FaultSpec> {
    let duration = 10u64..2_000;
    let spec = |trigger, kind, nodes: Vec<NodeName>, duration_ms| FaultSpec { trigger, kind, nodes, duration_ms };
    prop_oneof![
        (trigger(), node(), duration.clone()).prop_map(move |(t, n, d)| spec(
            t,
            FaultKind::Crash { restart_after_ms: Some(d) },
            vec![n],
            None
        )),
        (trigger(), node(), proptest::option::of(node()), any::<bool>(), duration.clone()).prop_map(
            move |(t, n, other, one_way, d)| {
                let others = other.filter(|o| *o != n).into_iter().collect();
                spec(t, FaultKind::Partition { others, one_way }, vec![n], Some(d))
            }
        ),
        (trigger(), node(), duration.clone()).prop_map(move |(t, n, d)| spec(t, FaultKind::Pause, vec![n], Some(d))),
        (trigger(), node(), duration.clone()).prop_map(move |(t, n, d)| spec(t, FaultKind::Clog, vec![n], Some(d))),
        (trigger(), 1u64..50, 0u64..200, duration.clone()).prop_map(move |(t, lo, extra, d)| spec(
            t,
            FaultKind::Latency { min_ms: lo, max_ms: lo + extra },
            vec![],
            Some(d)
        )),
        (trigger(), 1u32..30, duration.clone()).prop_map(move |(t, pct, d)| spec(
            t,
            FaultKind::Loss { rate: f64::from(pct) / 100.0 },
            vec![],
            Some(d)
        )),
        (trigger(), disk_node(), duration.clone()).prop_map(move |(t, n, d)| spec(t, FaultKind::FailWrites, vec![n], Some(d))),
        (trigger(), disk_node(), duration.clone()).prop_map(move |(t, n, d)| spec(t, FaultKind::FailFsyncs, vec![n], Some(d))),
        (trigger(), disk_node(), 1u64..100, duration.clone()).prop_map(move |(t, n, delay_ms, d)| spec(
            t,
            FaultKind::SlowWrites { delay_ms },
            vec![n],
            Some(d)
        )),
        (trigger(), duration.clone()).prop_map(move |(t, d)| spec(t, FaultKind::BlobFailPuts, vec![NodeName::Blob], Some(d))),
        (trigger(), 1u64..500, duration).prop_map(move |(t, delay_ms, d)| spec(
            t,
            FaultKind::BlobSlowPuts { delay_ms },
            vec![NodeName::Blob],
            Some(d)
        )),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(JobKind::WordCount), Just(JobKind::TwoShuffle)],
        any::<u64>().no_shrink(),
        proptest::collection::vec(fault(), 0..=FAULTS_MAX),
    )
        .prop_map(|(job, seed, faults)| Case { job, seed, faults })
}

fn quoted(nodes: &[NodeName]) -> String {
    nodes.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// One `[[fault]]` table.
fn fault_toml(f: &FaultSpec) -> String {
    let mut s = String::from("\n[[fault]]\n");
    match &f.trigger {
        Trigger::At { at_ms } => {
            let _ = writeln!(s, "at_ms = {at_ms}");
        }
        Trigger::On { event, checkpoint, subtask, after_ms } => {
            let _ = writeln!(s, "on = \"{}\"", event.name());
            if let Some(c) = checkpoint {
                let _ = writeln!(s, "checkpoint = {c}");
            }
            if let Some(t) = subtask {
                let _ = writeln!(s, "subtask = {t}");
            }
            let _ = writeln!(s, "after_ms = {after_ms}");
        }
    }
    let _ = writeln!(s, "kind = \"{}\"", f.kind.name());
    if !f.nodes.is_empty() {
        let _ = writeln!(s, "nodes = [{}]", quoted(&f.nodes));
    }
    match &f.kind {
        FaultKind::Crash { restart_after_ms: Some(ms) } => {
            let _ = writeln!(s, "restart_after_ms = {ms}");
        }
        FaultKind::Partition { others, one_way } => {
            if !others.is_empty() {
                let _ = writeln!(s, "others = [{}]", quoted(others));
            }
            let _ = writeln!(s, "one_way = {one_way}");
        }
        FaultKind::Latency { min_ms, max_ms } => {
            let _ = writeln!(s, "latency_ms = [{min_ms}, {max_ms}]");
        }
        FaultKind::Loss { rate } => {
            let _ = writeln!(s, "rate = {rate:?}");
        }
        FaultKind::SlowWrites { delay_ms } | FaultKind::BlobSlowPuts { delay_ms } => {
            let _ = writeln!(s, "delay_ms = {delay_ms}");
        }
        _ => {}
    }
    if let Some(d) = f.duration_ms {
        let _ = writeln!(s, "duration_ms = {d}");
    }
    s
}

/// The case as a scenario file (the base world, its seed, its schedule).
fn case_toml(case: &Case) -> String {
    let mut s = base_toml(case.job).replace(
        "job = ",
        &format!("seeds = [{}]\njob = ", case.seed),
    );
    for f in &case.faults {
        s.push_str(&fault_toml(f));
    }
    s
}

/// Parses the case's TOML (so what is printed is exactly what ran) and runs it.
fn run_case(case: &Case, overrides: Overrides) -> Result<Report, TestCaseError> {
    let toml = case_toml(case);
    let scenario = Scenario::parse("proptest-schedule.toml", &toml)
        .map_err(|e| TestCaseError::fail(format!("the generated scenario does not parse: {e}\n{toml}")))?;
    assert_eq!(scenario.faults, case.faults, "the TOML round-trips the schedule");
    run_seed_with(&scenario, case.seed, overrides, None, run_world)
        .map_err(|e| TestCaseError::fail(format!("the world could not run: {e}\n{toml}")))
}

/// The property: every checker passes. A failure carries the scenario that reproduces it.
fn every_check_passes(case: &Case, overrides: Overrides) -> Result<(), TestCaseError> {
    let report = run_case(case, overrides)?;
    if report.violations.is_empty() {
        return Ok(());
    }
    Err(TestCaseError::fail(report.text()))
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|s| s.parse().ok())
}

fn config(cases: u32) -> Config {
    let rng_seed = match std::env::var("FLOE_PROPTEST_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        _ => RngSeed::Fixed(env_u64("FLOE_PROPTEST_SEED").unwrap_or(PROPTEST_SEED_DEFAULT)),
    };
    Config {
        cases,
        max_shrink_iters: SHRINK_ITERS_MAX,
        failure_persistence: None,
        rng_seed,
        ..Config::default()
    }
}

/// Writes the shrunk scenario where `floe run` can read it; returns the file and the command.
fn save(name: &str, case: &Case, overrides: Overrides) -> String {
    let path = std::env::temp_dir().join(format!("floe-{name}.toml"));
    let toml = case_toml(case);
    let written = std::fs::write(&path, &toml).is_ok();
    format!(
        "shrunk schedule ({} faults), as a scenario file{}:\n{toml}\nreproduce: cargo run --release -p floe-sim --bin floe -- run {} --seed {}{}",
        case.faults.len(),
        if written { format!(" (written to {})", path.display()) } else { String::new() },
        path.display(),
        case.seed,
        overrides.flags()
    )
}

/// Runs the property over `cases` cases; the shrunk failing case, if any.
fn search(cases: u32, overrides: Overrides) -> Result<(), (String, Case)> {
    let mut runner = TestRunner::new(config(cases));
    match runner.run(&case(), |c| every_check_passes(&c, overrides)) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, case)) => Err((reason.to_string(), case)),
        Err(TestError::Abort(reason)) => panic!("proptest aborted: {reason}"),
    }
}

#[test]
fn every_check_passes_under_random_fault_schedules() {
    let cases = env_u64("FLOE_PROPTEST_CASES").map_or(CASES_DEFAULT, |n| u32::try_from(n).unwrap_or(u32::MAX));
    if let Err((reason, case)) = search(cases, Overrides::default()) {
        panic!(
            "a fault schedule broke a check:\n{reason}\n{}",
            save("proptest-schedule", &case, Overrides::default())
        );
    }
}

/// A control: with `overrides` the judge must catch some schedule, shrunk to few faults.
fn control_is_found(name: &str, overrides: Overrides) {
    let Err((reason, case)) = search(CONTROL_CASES_MAX, overrides) else {
        panic!("{name}: no failing schedule in {CONTROL_CASES_MAX} cases: the judge is blind");
    };
    let shrunk = save(name, &case, overrides);
    eprintln!("{name}: proptest found and shrank a failure:\n{reason}\n{shrunk}");
    assert!(
        case.faults.len() <= CONTROL_SHRUNK_FAULTS_MAX,
        "{name}: the shrunk schedule keeps {} faults (want <= {CONTROL_SHRUNK_FAULTS_MAX}):\n{shrunk}",
        case.faults.len()
    );
}

#[test]
fn at_least_once_checkpointing_is_found_and_shrunk() {
    control_is_found(
        "proptest-at-least-once",
        Overrides { checkpointing: Some(CheckpointMode::AtLeastOnce), sink: None },
    );
}

#[test]
fn the_plain_sink_is_found_and_shrunk() {
    control_is_found("proptest-plain-sink", Overrides { checkpointing: None, sink: Some(SinkMode::Plain) });
}

#[test]
fn a_schedule_round_trips_through_its_scenario_file() {
    let mut runner = TestRunner::new(config(64));
    runner
        .run(&case(), |c| {
            let parsed = Scenario::parse("s.toml", &case_toml(&c)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.faults, c.faults);
            prop_assert_eq!(parsed.job, c.job);
            prop_assert_eq!(parsed.seeds.first(), Some(c.seed));
            Ok(())
        })
        .unwrap();
}
