//! Every scenario file of the catalog (`scenarios/**/*.toml`) against its insta snapshot.
//!
//! For each file, its FIRST seed runs once through [`run_seed_with`] with the engine's simulated
//! cluster ([`run_world`]), and the report's stable text form ([`Report::text`]: no wall time)
//! is compared with `tests/tests/snapshots/scenarios__scenario@<folder>__<file>.toml.snap`. The
//! snapshot starts with the scenario's file and its **outcome** against the file's `[expect]`:
//! `as expected: every check holds`, or for a positive control `as expected: caught by
//! exactly_once` — a control that passes every check is a blind judge and fails this test.
//!
//! A changed report (another trace hash, other counts, another verdict) fails the test: review
//! it with `cargo insta review`, or regenerate every snapshot with
//! `INSTA_UPDATE=always cargo test -p floe-tests --test scenarios` and read the diff. In CI
//! (`CI=true` / `INSTA_UPDATE=no`) a changed or missing snapshot is a failure.
//!
//! The runs are independent, so they run first on [`RUN_THREADS`] threads (each run still gets
//! its own fresh OS thread and madsim runtime); `insta::glob!` then compares them in file order.
//! A scenario whose `description` starts with `OPEN BUG` documents a known engine bug: its
//! snapshot records the failing verdict, and the test does not fail on it.

use floe_sim::report::Report;
use floe_sim::run::{run_seed_with, run_world};
use floe_sim::scenario::{catalog_files, Expect, Overrides, Scenario};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Worker threads running scenarios at once (the CI machine has 2 cores).
const RUN_THREADS: usize = 2;

/// The description prefix of a regression scenario whose bug is not fixed yet.
const OPEN_BUG: &str = "OPEN BUG";

fn catalog() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").canonicalize().expect("the scenarios/ folder exists")
}

/// One scenario's run: its report, or why it could not run.
type Outcome = Result<(Scenario, Report), String>;

fn run_file(path: &Path) -> Outcome {
    let scenario = Scenario::load(path).map_err(|e| e.to_string())?;
    let seed = scenario.seeds.first().ok_or_else(|| format!("{}: names no seed", path.display()))?;
    let report =
        run_seed_with(&scenario, seed, Overrides::default(), None, run_world).map_err(|e| e.to_string())?;
    Ok((scenario, report))
}

/// Runs every catalog file on [`RUN_THREADS`] threads; keyed by canonical path.
fn run_catalog(files: &[PathBuf]) -> BTreeMap<PathBuf, Outcome> {
    let next = Mutex::new(files.iter());
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..RUN_THREADS {
            s.spawn(|| loop {
                let Some(path) = next.lock().unwrap_or_else(|e| e.into_inner()).next().cloned() else { break };
                let outcome = run_file(&path);
                results.lock().unwrap_or_else(|e| e.into_inner()).insert(path, outcome);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The outcome line: what the file expects, and whether the run met it.
fn outcome_line(scenario: &Scenario, report: &Report) -> String {
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.passed()).map(|c| c.check).collect();
    match (&scenario.expect, report.passed()) {
        (_, false) if scenario.description.starts_with(OPEN_BUG) => {
            format!("OPEN BUG, still failing: {}", failed.join(", "))
        }
        (Expect::Pass, true) => "as expected: every check holds".to_string(),
        (Expect::Fail(must), true) => format!("as expected: caught by {}", must.join(", ")),
        (Expect::Pass, false) => format!("NOT as expected: failed {}", failed.join(", ")),
        (Expect::Fail(must), false) => {
            format!("NOT as expected: {} not caught (failed: {})", must.join(", "), failed.join(", "))
        }
    }
}

#[test]
fn scenario() {
    let root = catalog();
    let files: Vec<PathBuf> =
        catalog_files(&root).into_iter().map(|p| p.canonicalize().expect("a listed file exists")).collect();
    assert!(files.len() >= 20, "the catalog has at least 20 scenarios, found {}", files.len());
    let results = run_catalog(&files);
    let unexpected = Mutex::new(Vec::new());
    insta::glob!("../../scenarios", "**/*.toml", |path| {
        let path = path.canonicalize().expect("the globbed file exists");
        let relative = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
        let (scenario, report) = match results.get(&path) {
            Some(Ok(r)) => r,
            Some(Err(e)) => panic!("{relative}: could not run: {e}"),
            None => panic!("{relative}: globbed by insta but not listed by catalog_files"),
        };
        assert!(!scenario.description.is_empty(), "{relative}: every scenario says what it probes");
        let outcome = outcome_line(scenario, report);
        if !report.passed() && scenario.description.starts_with(OPEN_BUG) {
            eprintln!("{relative}: {outcome} ({})", report.repro);
        } else if !report.passed() {
            unexpected.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                "{relative}: {outcome}\n{}",
                report.text()
            ));
        }
        let text = format!("file      {relative}\noutcome   {outcome}\n{}", report.text());
        insta::assert_snapshot!(text);
    });
    let unexpected = unexpected.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(unexpected.is_empty(), "scenarios not as their files expect:\n{}", unexpected.join("\n"));
}
