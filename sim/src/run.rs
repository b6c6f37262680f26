//! Running worlds: one scenario + one seed on a **fresh OS thread** with a fresh madsim runtime
//! (std `HashMap` order is deterministic only for the first runtime on a thread) and the trace
//! layer installed for that thread only; sweeps run many seeds on `jobs` threads at once.
//!
//! [`run_world`] (in [`crate::world`]) builds the world from a [`WorldConfig`] on the cluster's
//! `SimCluster` and returns its [`RunRecord`]; outside `--cfg madsim` it answers
//! [`SimError::ClusterUnavailable`].

use crate::checkers::CheckConfig;
use crate::record::RunRecord;
use crate::report::{judge, Report, RunFailure, SweepSummary};
use crate::scenario::{Overrides, Scenario, WorldConfig};
use crate::trace::{write_json_lines, TraceCapture, TraceConfig};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most worker threads of a sweep.
pub const SWEEP_JOBS_MAX: usize = 256;

/// Why a run could not be judged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// This build cannot run a world: it was built without `--cfg madsim` (the simulation).
    #[error("cannot run a world: this build has no simulator (build with --cfg madsim, the workspace default)")]
    ClusterUnavailable,
    /// The world panicked (a harness bug, or an engine assertion).
    #[error("seed {seed}: the run panicked: {message}")]
    Panicked {
        /// The seed.
        seed: u64,
        /// The panic message.
        message: String,
    },
    /// The trace could not be written.
    #[error("cannot write the trace to {file}: {reason}")]
    TraceFile {
        /// The file.
        file: String,
        /// The OS error.
        reason: String,
    },
}

pub use crate::world::run_world;

/// The command that reproduces a run.
pub fn repro(scenario: &Scenario, seed: u64, overrides: Overrides) -> String {
    format!("floe run {} --seed {seed}{}", scenario.cli_arg(), overrides.flags())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Runs `world` with `run` (normally [`run_world`]) on a fresh OS thread with a fresh trace
/// capture, and judges the record. The captured events go into the record when the world left
/// them empty; `trace` writes them as JSON lines.
pub fn run_seed_with(
    scenario: &Scenario,
    seed: u64,
    overrides: Overrides,
    trace: Option<&Path>,
    run: fn(&WorldConfig) -> Result<RunRecord, SimError>,
) -> Result<Report, SimError> {
    // Wall time of the run, for the report's `wall_secs` (outside the runtime: real time).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let world = scenario.resolve(seed, overrides);
    let capture = TraceCapture::new(TraceConfig::default());
    let thread_capture = capture.clone();
    let joined = std::thread::Builder::new()
        .name(format!("floe-seed-{seed}"))
        .spawn(move || thread_capture.install(|| run(&world)))
        .map_err(|e| SimError::Panicked { seed, message: format!("cannot spawn the run's thread: {e}") })?
        .join();
    let mut record = match joined {
        Ok(r) => r?,
        Err(p) => return Err(SimError::Panicked { seed, message: panic_message(p.as_ref()) }),
    };
    if record.events.is_empty() {
        record.events = capture.take_events();
    }
    if let Some(path) = trace {
        let file = std::fs::File::create(path)
            .map_err(|e| SimError::TraceFile { file: path.display().to_string(), reason: e.to_string() })?;
        write_json_lines(&record.events, std::io::BufWriter::new(file))
            .map_err(|e| SimError::TraceFile { file: path.display().to_string(), reason: e.to_string() })?;
    }
    let config = CheckConfig { liveness_bound_ms: scenario.liveness_bound_ms };
    Ok(judge(
        &record,
        scenario.job,
        &scenario.expect,
        &config,
        repro(scenario, seed, overrides),
        started.elapsed().as_secs_f64(),
    ))
}

/// Runs one seed of a scenario (see [`run_seed_with`]).
pub fn run_seed(
    scenario: &Scenario,
    seed: u64,
    overrides: Overrides,
    trace: Option<&Path>,
) -> Result<Report, SimError> {
    run_seed_with(scenario, seed, overrides, trace, run_world)
}

/// Runs `seeds` on `jobs` worker threads (each run on its own fresh thread), with a progress
/// bar on a terminal; returns the summary and every report, in seed order.
pub fn sweep_with(
    scenario: &Scenario,
    seeds: &[u64],
    jobs: usize,
    overrides: Overrides,
    run: fn(&WorldConfig) -> Result<RunRecord, SimError>,
) -> (SweepSummary, Vec<Report>) {
    // Wall time of the sweep, for `wall_secs` and `seeds_per_sec`.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let jobs = jobs.clamp(1, SWEEP_JOBS_MAX).min(seeds.len().max(1));
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(seeds.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(u64, Result<Report, SimError>)>> = Mutex::new(Vec::with_capacity(seeds.len()));
    let failures = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let r = run_seed_with(scenario, seed, overrides, None, run);
                if !matches!(&r, Ok(rep) if rep.passed()) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                bar.set_message(format!("{} failed", failures.load(Ordering::Relaxed)));
                bar.inc(1);
                results.lock().unwrap_or_else(|e| e.into_inner()).push((seed, r));
            });
        }
    });
    bar.finish_and_clear();
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let (mut reports, mut errors) = (Vec::new(), Vec::new());
    for (seed, r) in results {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => errors.push(RunFailure { seed, error: e.to_string() }),
        }
    }
    let summary = SweepSummary::new(&scenario.name, reports.clone(), errors, started.elapsed().as_secs_f64());
    reports.sort_by_key(|r| r.seed);
    (summary, reports)
}

/// The seeds a test sweeps: `FLOE_SEED=N` alone if set, else `FLOE_SEEDS` seeds (`default` when
/// unset) counting from 0. (The test suites' knob; `floe sweep` takes `--seeds`.)
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    match env("FLOE_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("FLOE_SEEDS").unwrap_or(default)).collect(),
    }
}

/// Runs a sweep with [`run_world`].
pub fn sweep(scenario: &Scenario, seeds: &[u64], jobs: usize, overrides: Overrides) -> (SweepSummary, Vec<Report>) {
    sweep_with(scenario, seeds, jobs, overrides, run_world)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::tests::good_word_count;

    fn fake_world(world: &WorldConfig) -> Result<RunRecord, SimError> {
        tracing::info!(checkpoint = 1, "checkpoint_completed");
        match world.seed {
            13 => panic!("boom"),
            s if s % 2 == 1 => {
                let mut r = good_word_count();
                r.seed = s;
                r.output[0].clear();
                Ok(r)
            }
            s => Ok(RunRecord { seed: s, ..good_word_count() }),
        }
    }

    fn scenario() -> Scenario {
        Scenario::parse("s.toml", "name = \"s\"\njob = \"word-count\"\n").unwrap()
    }

    #[cfg(not(madsim))]
    #[test]
    fn without_the_simulator_a_world_cannot_run() {
        assert_eq!(run_seed(&scenario(), 1, Overrides::default(), None), Err(SimError::ClusterUnavailable));
    }

    #[cfg(madsim)]
    #[test]
    fn a_calm_world_runs_on_the_cluster_and_passes_every_check() {
        let s = Scenario::parse(
            "calm.toml",
            "name = \"calm\"\njob = \"word-count\"\n[workload]\nlines = 200\npartitions = 2\n[cluster]\nparallelism = 2\n[checkpoint]\ninterval_ms = 100\n",
        )
        .unwrap();
        let r = run_seed(&s, 1, Overrides::default(), None).unwrap();
        assert_eq!(r.verdict, "pass", "{}", r.text());
        assert_eq!(r.records_in, 200);
        assert!(r.committed_out > 200 && r.checkpoints_completed >= 2, "{}", r.text());
    }

    #[test]
    fn a_run_is_judged_with_its_repro_and_a_panic_is_an_error_not_a_crash() {
        let r = run_seed_with(
            &scenario(),
            2,
            Overrides { sink: Some(crate::scenario::SinkMode::Plain), checkpointing: None },
            None,
            fake_world,
        )
        .unwrap();
        assert_eq!((r.verdict, r.repro.as_str()), ("pass", "floe run s --seed 2 --sink plain"));
        let bad = run_seed_with(&scenario(), 3, Overrides::default(), None, fake_world).unwrap();
        assert_eq!(bad.verdict, "fail");
        assert_eq!(
            run_seed_with(&scenario(), 13, Overrides::default(), None, fake_world),
            Err(SimError::Panicked { seed: 13, message: "boom".into() })
        );
    }

    #[test]
    fn the_trace_is_captured_on_the_runs_thread_and_written_as_json_lines() {
        fn no_events(world: &WorldConfig) -> Result<RunRecord, SimError> {
            let mut r = fake_world(world)?;
            r.events.clear();
            Ok(r)
        }
        let dir = std::env::temp_dir().join(format!("floe-sim-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let r = run_seed_with(&scenario(), 2, Overrides::default(), Some(&path), no_events).unwrap();
        assert_eq!(r.events, 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"at_ns\":") && text.contains("\"name\":\"checkpoint_completed\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sweep_runs_every_seed_once_and_lists_the_failing_ones() {
        let seeds: Vec<u64> = (0..16).collect();
        let (summary, reports) = sweep_with(&scenario(), &seeds, 4, Overrides::default(), fake_world);
        assert_eq!(summary.seeds, 16);
        assert_eq!(summary.failed_seeds, [1, 3, 5, 7, 9, 11, 15]);
        assert_eq!(summary.errors, [RunFailure { seed: 13, error: "seed 13: the run panicked: boom".into() }]);
        assert_eq!(
            reports.iter().map(|r| r.seed).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15]
        );
        assert_eq!(summary.violations_by_check["exactly_once"], 7);
    }
}
