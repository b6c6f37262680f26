//! Reports: one run's verdict (a stable text form for snapshots and people, a JSON form for
//! tools) and a sweep's summary. The text form holds no wall time, so it is the same for the same
//! seed on any machine; both forms end with the repro command.
//!
//! The verdict follows the scenario's expectation: `pass` when every check holds — or, for a
//! positive control (`[expect] fail = [...]`), when every check it names failed (the judge
//! caught the bug it was shown).

use crate::checkers::{check_all, fmt_ms, CheckConfig, CheckOutcome};
use crate::oracle::JobKind;
use crate::record::RunRecord;
use crate::scenario::Expect;
use crate::sometimes::{self, Sometimes};
use crate::trace::trace_hash;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One violation, flattened for JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The check.
    pub check: String,
    /// What went wrong.
    pub detail: String,
}

/// One run's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The job.
    pub job: String,
    /// `pass` or `fail` (against the expectation).
    pub verdict: &'static str,
    /// What was expected: `pass`, or the checks a positive control must fail.
    pub expected: Vec<String>,
    /// Every check's outcome, in order.
    pub checks: Vec<CheckOutcome>,
    /// Every violation, flattened.
    pub violations: Vec<Violation>,
    /// The trace hash, 16 hex digits.
    pub trace_hash: String,
    /// Input lines.
    pub records_in: u64,
    /// Committed output records.
    pub committed_out: u64,
    /// Checkpoints completed.
    pub checkpoints_completed: u64,
    /// Failovers.
    pub restarts: u64,
    /// Faults injected.
    pub faults: u64,
    /// Trace events.
    pub events: u64,
    /// Virtual time, s.
    pub sim_secs: f64,
    /// Wall time, s (not in the text form).
    pub wall_secs: f64,
    /// The risky situations reached.
    pub sometimes: Sometimes,
    /// The command that reproduces this run.
    pub repro: String,
}

/// Judges a record: every check, the "sometimes" catalog, the verdict.
pub fn judge(
    record: &RunRecord,
    job: JobKind,
    expect: &Expect,
    config: &CheckConfig,
    repro: String,
    wall_secs: f64,
) -> Report {
    let checks = check_all(record, job, config);
    let violations: Vec<Violation> = checks
        .iter()
        .flat_map(|c| c.violations.iter().map(|d| Violation { check: c.check.to_string(), detail: d.clone() }))
        .collect();
    let (verdict, expected) = match expect {
        Expect::Pass => (if violations.is_empty() { "pass" } else { "fail" }, vec!["pass".to_string()]),
        Expect::Fail(must) => {
            let caught = must.iter().all(|m| checks.iter().any(|c| c.check == m && !c.passed()));
            (if caught { "pass" } else { "fail" }, must.clone())
        }
    };
    Report {
        scenario: record.scenario.clone(),
        seed: record.seed,
        job: job.name().to_string(),
        verdict,
        expected,
        checks,
        violations,
        trace_hash: format!("{:016x}", trace_hash(&record.events)),
        records_in: record.input.iter().map(|p| p.len() as u64).sum(),
        committed_out: record.output.iter().map(|p| p.len() as u64).sum(),
        checkpoints_completed: record.checkpoints_completed,
        restarts: record.restarts,
        faults: record.faults.len() as u64,
        events: record.events.len() as u64,
        sim_secs: record.sim_ms as f64 / 1000.0,
        wall_secs,
        sometimes: sometimes::count(record),
        repro,
    }
}

impl Report {
    /// Whether the verdict is `pass`.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// The stable text form (no wall time).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario  {}", self.scenario);
        let _ = writeln!(s, "seed      {}", self.seed);
        let _ = writeln!(s, "job       {}", self.job);
        let _ = writeln!(s, "verdict   {}", self.verdict.to_uppercase());
        let _ = writeln!(s, "expected  {}", self.expected.join(", "));
        let _ = writeln!(s, "checks");
        for c in &self.checks {
            let _ = writeln!(s, "  {:<24}{}", c.check, if c.passed() { "ok" } else { "FAILED" });
            for v in &c.violations {
                let _ = writeln!(s, "      {v}");
            }
        }
        let _ = writeln!(
            s,
            "counts    records_in {}  committed_out {}  checkpoints {}  restarts {}  faults {}  events {}",
            self.records_in, self.committed_out, self.checkpoints_completed, self.restarts, self.faults, self.events
        );
        let _ = writeln!(s, "sim time  {}", fmt_ms((self.sim_secs * 1000.0).round() as u64));
        let _ = writeln!(s, "trace     {}", self.trace_hash);
        let reached: Vec<String> =
            self.sometimes.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            s,
            "sometimes {}",
            if reached.is_empty() { "none reached".to_string() } else { reached.join(", ") }
        );
        let _ = writeln!(s, "repro     {}", self.repro);
        s
    }

    /// The JSON form (one object, pretty-printed when `pretty`).
    pub fn json(&self, pretty: bool) -> String {
        let r = if pretty { serde_json::to_string_pretty(self) } else { serde_json::to_string(self) };
        r.unwrap_or_else(|e| format!("{{\"error\":\"report does not serialize: {e}\"}}"))
    }
}

/// A run that could not be judged (e.g. the world could not be built).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunFailure {
    /// The seed.
    pub seed: u64,
    /// Why.
    pub error: String,
}

/// A sweep's summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepSummary {
    /// The scenario.
    pub scenario: String,
    /// Seeds run.
    pub seeds: u64,
    /// Seeds whose verdict is `fail`, ascending.
    pub failed_seeds: Vec<u64>,
    /// Their repro commands, in the same order.
    pub repros: Vec<String>,
    /// Seeds that could not run, with why.
    pub errors: Vec<RunFailure>,
    /// Per check, the runs it failed in.
    pub violations_by_check: BTreeMap<String, u64>,
    /// The "sometimes" catalog summed over the runs.
    pub sometimes: Sometimes,
    /// Wall time, s.
    pub wall_secs: f64,
    /// Seeds per wall second.
    pub seeds_per_sec: f64,
}

impl SweepSummary {
    /// Sums reports (in seed order) and failures.
    pub fn new(scenario: &str, mut reports: Vec<Report>, mut errors: Vec<RunFailure>, wall_secs: f64) -> SweepSummary {
        reports.sort_by_key(|r| r.seed);
        errors.sort_by_key(|e| e.seed);
        let mut violations_by_check: BTreeMap<String, u64> =
            crate::checkers::CHECKS.iter().map(|c| (c.to_string(), 0)).collect();
        let mut total = sometimes::empty();
        for r in &reports {
            for c in r.checks.iter().filter(|c| !c.passed()) {
                *violations_by_check.entry(c.check.to_string()).or_insert(0) += 1;
            }
            sometimes::add(&mut total, &r.sometimes);
        }
        let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed()).collect();
        let seeds = (reports.len() + errors.len()) as u64;
        SweepSummary {
            scenario: scenario.to_string(),
            seeds,
            failed_seeds: failed.iter().map(|r| r.seed).collect(),
            repros: failed.iter().map(|r| r.repro.clone()).collect(),
            errors,
            violations_by_check,
            sometimes: total,
            wall_secs,
            seeds_per_sec: if wall_secs > 0.0 { seeds as f64 / wall_secs } else { 0.0 },
        }
    }

    /// The text form (ends with wall time and speed).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario  {}", self.scenario);
        let _ = writeln!(
            s,
            "seeds     {} run, {} failed, {} could not run",
            self.seeds,
            self.failed_seeds.len(),
            self.errors.len()
        );
        let by_check: Vec<String> =
            self.violations_by_check.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "failed    {}", if by_check.is_empty() { "none".to_string() } else { by_check.join(", ") });
        let _ = writeln!(
            s,
            "sometimes {}",
            self.sometimes.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        );
        for e in self.errors.iter().take(10) {
            let _ = writeln!(s, "error     seed {}: {}", e.seed, e.error);
        }
        for r in &self.repros {
            let _ = writeln!(s, "repro     {r}");
        }
        let _ = writeln!(s, "wall      {:.2}s, {:.1} seeds/s", self.wall_secs, self.seeds_per_sec);
        s
    }

    /// The JSON form.
    pub fn json(&self, pretty: bool) -> String {
        let r = if pretty { serde_json::to_string_pretty(self) } else { serde_json::to_string(self) };
        r.unwrap_or_else(|e| format!("{{\"error\":\"summary does not serialize: {e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::tests::good_word_count;

    fn broken() -> RunRecord {
        let mut r = good_word_count();
        r.output[1].edit(Vec::pop);
        r.events.swap(7, 8);
        r
    }

    #[test]
    fn the_text_and_json_of_a_failing_run_are_stable() {
        let report = judge(
            &broken(),
            JobKind::WordCount,
            &Expect::Pass,
            &CheckConfig::default(),
            "floe run hand-made --seed 7".into(),
            0.0,
        );
        assert_eq!(report.verdict, "fail");
        insta::assert_snapshot!("report_failing_text", report.text());
        insta::assert_snapshot!("report_failing_json", report.json(true));
    }

    #[test]
    fn a_passing_run_reads_pass_and_a_positive_control_passes_when_its_check_fails() {
        let ok = judge(&good_word_count(), JobKind::WordCount, &Expect::Pass, &CheckConfig::default(), "r".into(), 0.0);
        assert_eq!((ok.verdict, ok.violations.len()), ("pass", 0));
        insta::assert_snapshot!("report_passing_text", ok.text());
        let control = |e: &[&str], r: &RunRecord| {
            judge(
                r,
                JobKind::WordCount,
                &Expect::Fail(e.iter().map(|s| s.to_string()).collect()),
                &CheckConfig::default(),
                "r".into(),
                0.0,
            )
            .verdict
        };
        assert_eq!(control(&["exactly_once"], &broken()), "pass", "the control caught its bug");
        assert_eq!(control(&["exactly_once", "commit_after_complete"], &broken()), "pass");
        assert_eq!(control(&["exactly_once"], &good_word_count()), "fail", "a control that catches nothing fails");
        assert_eq!(control(&["exactly_once", "liveness"], &broken()), "fail");
    }

    #[test]
    fn a_sweep_sums_its_runs() {
        let mk = |seed: u64, r: RunRecord| {
            let mut r = r;
            r.seed = seed;
            judge(
                &r,
                JobKind::WordCount,
                &Expect::Pass,
                &CheckConfig::default(),
                format!("floe run x --seed {seed}"),
                0.0,
            )
        };
        let reports = vec![mk(3, broken()), mk(1, good_word_count()), mk(2, broken())];
        let s = SweepSummary::new("x", reports, vec![RunFailure { seed: 4, error: "no cluster".into() }], 2.0);
        assert_eq!((s.seeds, s.failed_seeds.clone(), s.seeds_per_sec), (4, vec![2, 3], 2.0));
        assert_eq!(s.repros, ["floe run x --seed 2", "floe run x --seed 3"]);
        assert_eq!(
            (
                s.violations_by_check["exactly_once"],
                s.violations_by_check["commit_after_complete"],
                s.violations_by_check["liveness"]
            ),
            (2, 2, 0)
        );
        assert_eq!(s.sometimes["restarts"], 3);
        let json: serde_json::Value = serde_json::from_str(&s.json(false)).unwrap();
        for key in
            ["scenario", "seeds", "failed_seeds", "violations_by_check", "sometimes", "wall_secs", "seeds_per_sec"]
        {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
