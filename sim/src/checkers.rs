//! The checkers: named invariants over a [`RunRecord`], each reported separately.
//!
//! | check | holds when |
//! |---|---|
//! | `exactly_once` | the committed output equals the oracle's: for each word `w` seen `n` times, `(w,1)..(w,n)` each exactly once, in order within an output partition; for `two-shuffle` each record in bucket `k % BUCKETS` and each bucket's running sum rising by exactly each record's count |
//! | `consistent_cut` | every completed checkpoint's keyed state equals the oracle's after that checkpoint's source offsets (Chandy–Lamport / ABS: the state is a cut of the input) |
//! | `commit_after_complete` | every `sink_committed` of transaction `{prefix}-{subtask}-{n}` comes after some `checkpoint_completed{m}` with `m >= n` (the barrier that pre-committed it; Flink's `TwoPhaseCommitSinkFunction` commits in `notifyCheckpointComplete`) |
//! | `no_zombie_effects` | no `ack_accepted` of an attempt older than the newest deployed one, and no `sink_committed` of such an attempt for a checkpoint that had not completed (Flink's `ExecutionAttemptID` fencing; a zombie re-committing a completed checkpoint's transaction is idempotent and only counted) |
//! | `checkpoint_monotone` | completed checkpoint ids only go up, and every `deployed{restored_from}` names the latest completed checkpoint at that time (`CheckpointCoordinator.restoreLatestCheckpointedState`) |
//! | `liveness` | the job finished within a bound after the last fault healed |
//! | `no_hanging_transactions` | no transaction is left open on the broker after the run (`open_transaction_at_end`): a finished job commits or aborts all it began, and one left open — a zombie's, or a late request's (Kafka's KIP-890 "hanging transactions") — holds back the last stable offset, so read-committed consumers see nothing written after it until the broker's transaction timeout |
//!
//! A checker returns violations as text: the first line of a failing `exactly_once` is a summary
//! (lost / duplicated / unexpected / out of order), then the first items with the input lines
//! that produced them. Each check keeps at most [`VIOLATIONS_PER_CHECK_MAX`] lines. A committed
//! record that does not decode is a violation, never a panic.

use crate::oracle::{expected_output, expected_state, ExpectedOutput, JobKind, PrefixWalker, BUCKETS};
use crate::record::{CommittedRecords, RunRecord, TraceEvent};
use crate::trace::names;
use serde::Serialize;
use rustc_hash::FxHashMap;
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Violation lines kept per check (later ones are counted in a final "… and N more" line).
pub const VIOLATIONS_PER_CHECK_MAX: usize = 10;

/// Every check, in report order.
pub const CHECKS: [&str; 7] = [
    "exactly_once",
    "consistent_cut",
    "commit_after_complete",
    "no_zombie_effects",
    "checkpoint_monotone",
    "liveness",
    "no_hanging_transactions",
];

/// Knobs of the checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// The job must finish within this long after the last fault healed.
    pub liveness_bound_ms: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig { liveness_bound_ms: 120_000 }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// The check's name (one of [`CHECKS`]).
    pub check: &'static str,
    /// What went wrong; empty when the check holds.
    pub violations: Vec<String>,
}

impl CheckOutcome {
    /// Whether the check holds.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs every check.
pub fn check_all(record: &RunRecord, job: JobKind, config: &CheckConfig) -> Vec<CheckOutcome> {
    let outcome = |check: &'static str, v: Violations| CheckOutcome { check, violations: v.finish() };
    vec![
        outcome("exactly_once", exactly_once(record, job)),
        outcome("consistent_cut", consistent_cut(record, job)),
        outcome("commit_after_complete", commit_after_complete(record)),
        outcome("no_zombie_effects", no_zombie_effects(record)),
        outcome("checkpoint_monotone", checkpoint_monotone(record)),
        outcome("liveness", liveness(record, config)),
        outcome("no_hanging_transactions", no_hanging_transactions(record)),
    ]
}

/// A bounded list of violation lines.
#[derive(Debug, Default)]
pub struct Violations {
    lines: Vec<String>,
    dropped: u64,
}

impl Violations {
    fn push(&mut self, line: String) {
        if self.lines.len() < VIOLATIONS_PER_CHECK_MAX {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines, with a final count of the ones dropped.
    pub fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines.push(format!("… and {} more", self.dropped));
        }
        self.lines
    }
}

/// Milliseconds as seconds with three decimals (`12.345s`).
pub fn fmt_ms(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

fn fmt_event_time(e: &TraceEvent) -> String {
    format!("{} on {}", fmt_ms(e.at_ns / 1_000_000), e.node)
}

/// A committed record's place: output partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OutAt {
    partition: usize,
    offset: usize,
}

impl fmt::Display for OutAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "out{}@{}", self.partition, self.offset)
    }
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let (value, used) = bincode::serde::borrow_decode_from_slice::<T, _>(bytes, bincode::config::standard().with_limit::<{ 1 << 30 }>())
        .map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(value)
}

/// `exactly_once`: the committed output against the oracle.
pub fn exactly_once(record: &RunRecord, job: JobKind) -> Violations {
    let mut v = Violations::default();
    let expected = expected_state(job, &record.input, None);
    // Where each occurrence comes from: only needed to explain a violation, so built on the first.
    let explained: OnceCell<ExpectedOutput> = OnceCell::new();
    let provenance = |w: &str, k: u64| explained.get_or_init(|| expected_output(job, &record.input)).provenance(w, k);
    // Per word, the counts committed, with their places, in output order.
    // (Hashed for speed; the words are visited in sorted order below.)
    let mut per_word: FxHashMap<&str, Vec<(u64, OutAt)>> = FxHashMap::default();
    let mut decode_errors = Vec::new();
    let mut bucket_errors = Vec::new();
    // two-shuffle: per (output partition, bucket), the running sum so far.
    let mut bucket_sums: BTreeMap<(usize, u64), (u64, OutAt)> = BTreeMap::new();
    for (p, records) in record.output.iter().enumerate() {
        for (o, bytes) in records.iter().enumerate() {
            let at = OutAt { partition: p, offset: o };
            match job {
                JobKind::WordCount => match decode::<(&str, u64)>(bytes) {
                    Ok((w, k)) => per_word.entry(w).or_default().push((k, at)),
                    Err(e) => decode_errors.push(format!("{at} does not decode as (String, u64): {e}")),
                },
                JobKind::TwoShuffle => match decode::<(u64, &str, u64, u64)>(bytes) {
                    Ok((b, w, k, s)) => {
                        if b != k % BUCKETS {
                            bucket_errors.push(format!(
                                "{at} ({b}, {w}, {k}, {s}) is in bucket {b}, want {k} % {BUCKETS} = {}",
                                k % BUCKETS
                            ));
                        }
                        let (prev, prev_at) =
                            bucket_sums.get(&(p, b)).copied().map_or((0, None), |(s, a)| (s, Some(a)));
                        if s != prev.saturating_add(k) {
                            let after =
                                prev_at.map_or("at the start of the partition".to_string(), |a| format!("after {a}"));
                            bucket_errors.push(format!("bucket {b}'s running sum breaks at {at}: ({b}, {w}, {k}, {s}) {after} with sum {prev}, want {}", prev.saturating_add(k)));
                        }
                        bucket_sums.insert((p, b), (s, at));
                        per_word.entry(w).or_default().push((k, at));
                    }
                    Err(e) => decode_errors.push(format!("{at} does not decode as (u64, String, u64, u64): {e}")),
                },
            }
        }
    }
    let (mut lost, mut duplicated, mut unexpected, mut reordered) = (0u64, 0u64, 0u64, 0u64);
    let mut items = Vec::new();
    let words: BTreeSet<&str> = per_word.keys().copied().chain(expected.word_counts.keys().map(String::as_str)).collect();
    for w in words {
        let n = expected.word_counts.get(w).copied().unwrap_or(0);
        let seen = per_word.get(w).map(Vec::as_slice).unwrap_or_default();
        // first_at[k - 1]: where (w, k) was first committed.
        let mut first_at: Vec<Option<OutAt>> = vec![None; usize::try_from(n).expect("a count of words held in memory")];
        let mut last_in_partition: BTreeMap<usize, (u64, OutAt)> = BTreeMap::new();
        for &(k, at) in seen {
            if k == 0 || k > n {
                unexpected += 1;
                items.push(format!("unexpected ({w},{k}) at {at}: the input holds '{w}' {n} times"));
                continue;
            }
            let slot = &mut first_at[(k - 1) as usize];
            if let Some(first) = slot {
                duplicated += 1;
                items.push(format!("duplicated ({w},{k}) at {at}, first at {first}; produced by {}", provenance(w, k)));
            } else {
                *slot = Some(at);
            }
            if let Some(&(prev, prev_at)) = last_in_partition.get(&at.partition) {
                if k < prev {
                    reordered += 1;
                    items.push(format!("out of order: ({w},{k}) at {at} after ({w},{prev}) at {prev_at}"));
                }
            }
            last_in_partition.insert(at.partition, (k, at));
        }
        let missing: Vec<u64> = (1..=n).filter(|k| first_at[(k - 1) as usize].is_none()).collect();
        if let Some(&k) = missing.first() {
            lost += missing.len() as u64;
            let more =
                if missing.len() > 1 { format!(" (and {} more of '{w}')", missing.len() - 1) } else { String::new() };
            items.push(format!("missing ({w},{k}){more}; produced by {}", provenance(w, k)));
        }
    }
    let failed =
        !decode_errors.is_empty() || !bucket_errors.is_empty() || lost + duplicated + unexpected + reordered > 0;
    if failed {
        let committed: usize = record.output.iter().map(CommittedRecords::len).sum();
        v.push(format!(
            "{} records expected, {committed} committed: {lost} lost, {duplicated} duplicated, {unexpected} unexpected, {reordered} out of order, {} undecodable, {} bucket errors",
            expected.word_counts.values().sum::<u64>(),
            decode_errors.len(),
            bucket_errors.len()
        ));
    }
    for line in decode_errors.into_iter().chain(items).chain(bucket_errors) {
        v.push(line);
    }
    v
}

fn fmt_offsets(offsets: &BTreeMap<u32, u64>) -> String {
    let parts: Vec<String> = offsets.iter().map(|(p, o)| format!("p{p}@{o}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// The first key where two maps differ (a missing key reads as 0), and how many differ.
fn first_difference<K: Ord + Clone>(got: &BTreeMap<K, u64>, want: &BTreeMap<K, u64>) -> Option<(K, u64, u64, usize)> {
    let keys: BTreeSet<&K> = got.keys().chain(want.keys()).collect();
    let diffs: Vec<(K, u64, u64)> = keys
        .into_iter()
        .filter_map(|k| {
            let (g, w) = (got.get(k).copied().unwrap_or(0), want.get(k).copied().unwrap_or(0));
            (g != w).then(|| (k.clone(), g, w))
        })
        .collect();
    let n = diffs.len();
    diffs.into_iter().next().map(|(k, g, w)| (k, g, w, n))
}

/// `consistent_cut`: each completed checkpoint's state against the oracle's after its offsets.
pub fn consistent_cut(record: &RunRecord, job: JobKind) -> Violations {
    let mut v = Violations::default();
    let mut oracle = PrefixWalker::new(job, &record.input);
    for cp in &record.checkpoints {
        let offsets = fmt_offsets(&cp.source_offsets);
        let mut past_end = false;
        for (p, o) in &cp.source_offsets {
            let len = record.input.get(*p as usize).map_or(0, |l| l.len() as u64);
            if *o > len {
                past_end = true;
                v.push(format!(
                    "checkpoint {} (offsets {offsets}): offset p{p}@{o} is past the input's end ({len} lines)",
                    cp.id
                ));
            }
        }
        if past_end {
            continue;
        }
        let want = oracle.state_at(&cp.source_offsets);
        if let Some((w, g, o, n)) = first_difference(&cp.word_counts, &want.word_counts) {
            let more = if n > 1 { format!(" ({} more words differ)", n - 1) } else { String::new() };
            v.push(format!(
                "checkpoint {} (offsets {offsets}): count of '{w}' is {g}, the oracle's is {o}{more}",
                cp.id
            ));
        }
        if job == JobKind::TwoShuffle {
            if let Some((b, g, o, n)) = first_difference(&cp.bucket_sums, &want.bucket_sums) {
                let more = if n > 1 { format!(" ({} more buckets differ)", n - 1) } else { String::new() };
                v.push(format!(
                    "checkpoint {} (offsets {offsets}): sum of bucket {b} is {g}, the oracle's is {o}{more}",
                    cp.id
                ));
            }
        }
    }
    v
}

/// The checkpoint a transaction id `{prefix}-{subtask}-{checkpoint}` belongs to.
pub fn txn_checkpoint(txn: &str) -> Option<u64> {
    let mut parts = txn.rsplitn(3, '-');
    let checkpoint = parts.next()?.parse().ok()?;
    let _subtask: u64 = parts.next()?.parse().ok()?;
    let prefix = parts.next()?;
    (!prefix.is_empty()).then_some(checkpoint)
}

/// `commit_after_complete`: no transaction commits before its checkpoint completed.
///
/// A transaction named `n` holds the records after barrier `n - 1` and is pre-committed at the
/// first barrier `m >= n` (checkpoint ids may skip, e.g. after a job-manager restart reserves a
/// new block), so its commit is legal once some checkpoint `m >= n` completed. A checkpoint is
/// known complete from `checkpoint_completed{m}`, or from `jm_recovered{latest: m}` (the metadata
/// was durable when a job manager crashed before announcing it).
pub fn commit_after_complete(record: &RunRecord) -> Violations {
    let mut v = Violations::default();
    let mut completed_max: Option<u64> = None;
    for e in &record.events {
        match e.name.as_str() {
            names::CHECKPOINT_COMPLETED => completed_max = completed_max.max(e.id_field("checkpoint")),
            names::JM_RECOVERED => completed_max = completed_max.max(e.id_field("latest")),
            names::SINK_COMMITTED => {
                let txn = e.fields.get("txn").map(String::as_str).unwrap_or("");
                match txn_checkpoint(txn) {
                    None => v.push(format!(
                        "sink_committed at {} names no transaction of the form prefix-subtask-checkpoint: {txn:?}",
                        fmt_event_time(e)
                    )),
                    Some(n) if completed_max.is_none_or(|m| m < n) => v.push(format!(
                        "transaction {txn} committed at {} before checkpoint {n} completed",
                        fmt_event_time(e)
                    )),
                    Some(_) => {}
                }
            }
            _ => {}
        }
    }
    v
}

/// `no_zombie_effects`: nothing from an attempt older than the newest deployed one takes effect.
///
/// Effects are what could change the outcome: the coordinator accepting a zombie's ack
/// (`ack_accepted`), and a zombie sink committing a transaction whose checkpoint has not
/// completed (`sink_committed`). A zombie committing the transaction of a *completed* checkpoint
/// is not an effect: that transaction belongs to the exactly-once output, the new attempt commits
/// it too on restore (commit is idempotent at the broker), and Flink's committers behave the same
/// way; the "sometimes" catalog counts it (`zombie_commit_of_completed`). A zombie's snapshot
/// blob is named by its attempt and never referenced by a checkpoint the coordinator completes,
/// so writing it is not an effect either.
pub fn no_zombie_effects(record: &RunRecord) -> Violations {
    let mut v = Violations::default();
    let mut current: Option<(u64, &TraceEvent)> = None;
    let mut completed_max: Option<u64> = None;
    for e in &record.events {
        match e.name.as_str() {
            names::DEPLOYED => match e.id_field("attempt") {
                Some(a) if current.is_none_or(|(c, _)| a > c) => current = Some((a, e)),
                Some(_) => {}
                None => v.push(format!("deployed at {} has no attempt", fmt_event_time(e))),
            },
            names::CHECKPOINT_COMPLETED => completed_max = completed_max.max(e.id_field("checkpoint")),
            names::JM_RECOVERED => completed_max = completed_max.max(e.id_field("latest")),
            names::SINK_COMMITTED | names::ACK_ACCEPTED => {
                let zombie = match (e.id_field("attempt"), current) {
                    (None, _) => {
                        v.push(format!("{} at {} has no attempt: cannot tell a zombie", e.name, fmt_event_time(e)));
                        continue;
                    }
                    (Some(a), Some((c, deployed))) if a < c => Some((a, c, deployed)),
                    _ => None,
                };
                let Some((a, c, deployed)) = zombie else { continue };
                if e.name == names::SINK_COMMITTED {
                    let of_completed = e.fields.get("txn").and_then(|t| txn_checkpoint(t)).is_some_and(|n| completed_max.is_some_and(|m| n <= m));
                    if of_completed {
                        continue;
                    }
                }
                let what = e.fields.get("txn").or_else(|| e.fields.get("checkpoint")).map(|s| format!(" ({s})")).unwrap_or_default();
                v.push(format!(
                    "{}{what} from attempt {a} at {}, after attempt {c} was deployed at {}",
                    e.name,
                    fmt_event_time(e),
                    fmt_ms(deployed.at_ns / 1_000_000)
                ));
            }
            _ => {}
        }
    }
    v
}

/// `checkpoint_monotone`: completed ids go up; restores use the latest completed checkpoint.
pub fn checkpoint_monotone(record: &RunRecord) -> Violations {
    let mut v = Violations::default();
    let mut latest: Option<u64> = None;
    for e in &record.events {
        match e.name.as_str() {
            names::CHECKPOINT_COMPLETED => match e.id_field("checkpoint") {
                None => v.push(format!("checkpoint_completed at {} has no checkpoint id", fmt_event_time(e))),
                Some(n) => {
                    if let Some(l) = latest.filter(|l| n <= *l) {
                        v.push(format!("checkpoint {n} completed at {} after checkpoint {l}", fmt_event_time(e)));
                    }
                    latest = latest.max(Some(n));
                }
            },
            names::JM_RECOVERED => {
                // A recovered job manager knows the latest checkpoint from the blob store: it may
                // be newer than the last announced (the old one died after the metadata write),
                // never older.
                let recovered = e.id_field("latest");
                if recovered < latest {
                    v.push(format!(
                        "the job manager recovered at {} with latest checkpoint {:?}, but checkpoint {} had completed",
                        fmt_event_time(e),
                        recovered,
                        latest.unwrap_or(0)
                    ));
                }
                latest = latest.max(recovered);
            }
            names::DEPLOYED => {
                let restored = e.id_field("restored_from");
                if restored != latest {
                    let show = |c: Option<u64>| c.map_or("no checkpoint".to_string(), |c| format!("checkpoint {c}"));
                    let attempt = e.id_field("attempt").map_or(String::new(), |a| format!("attempt {a} "));
                    v.push(format!(
                        "{attempt}deployed at {} restored from {}, the latest completed is {}",
                        fmt_event_time(e),
                        show(restored),
                        show(latest)
                    ));
                }
            }
            _ => {}
        }
    }
    v
}

/// `no_hanging_transactions`: nothing left open on the broker after the run.
pub fn no_hanging_transactions(record: &RunRecord) -> Violations {
    let mut v = Violations::default();
    for e in record.events.iter().filter(|e| e.name == names::OPEN_TRANSACTION_AT_END) {
        let field = |k: &str| e.fields.get(k).map_or("?", String::as_str);
        v.push(format!(
            "transaction {} left {} after the run: it holds back read-committed consumers of its partitions until the broker's transaction timeout",
            field("txn"),
            field("state")
        ));
    }
    v
}

/// `liveness`: the job finished within the bound after healing.
pub fn liveness(record: &RunRecord, config: &CheckConfig) -> Violations {
    let mut v = Violations::default();
    let bound = fmt_ms(config.liveness_bound_ms);
    if !record.finished {
        v.push(format!(
            "the job did not finish: healed at {}, the run ended at {} (bound {bound} after healing)",
            fmt_ms(record.healed_at_ms),
            fmt_ms(record.sim_ms)
        ));
    } else {
        let at = record.finished_at_ms.unwrap_or(record.sim_ms);
        let took = at.saturating_sub(record.healed_at_ms);
        if took > config.liveness_bound_ms {
            v.push(format!(
                "the job finished {} after healing (at {}), over the bound of {bound}",
                fmt_ms(took),
                fmt_ms(at)
            ));
        }
    }
    debug_assert!(!v.is_empty() || record.finished);
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::CheckpointView;

    fn enc<T: serde::Serialize>(t: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(t, bincode::config::standard()).unwrap()
    }

    fn ev(at_ms: u64, node: &str, name: &str, fields: &[(&str, &str)]) -> TraceEvent {
        TraceEvent::at_ms(at_ms, node, name, fields)
    }

    /// A correct word-count run: input "a b a" | "b c", two output partitions, one restore.
    pub(crate) fn good_word_count() -> RunRecord {
        let input = vec![vec!["a b a".to_string()], vec!["b c".to_string()]];
        let out0 = vec![enc(&("a".to_string(), 1u64)), enc(&("a".to_string(), 2u64)), enc(&("c".to_string(), 1u64))];
        let out1 = vec![enc(&("b".to_string(), 1u64)), enc(&("b".to_string(), 2u64))];
        RunRecord {
            scenario: "hand-made".into(),
            seed: 7,
            job: "word-count".into(),
            input,
            output: vec![out0.into(), out1.into()],
            events: vec![
                ev(0, "jm", "deployed", &[("attempt", "1"), ("restored_from", "none")]),
                ev(90, "tm0", "alignment_started", &[("checkpoint", "1"), ("subtask", "count#0"), ("attempt", "1")]),
                ev(95, "tm0", "snapshot_written", &[("checkpoint", "1"), ("subtask", "count#0"), ("attempt", "1")]),
                ev(96, "jm", "ack_accepted", &[("checkpoint", "1"), ("subtask", "count#0"), ("attempt", "1")]),
                ev(100, "jm", "checkpoint_completed", &[("checkpoint", "1")]),
                ev(101, "tm0", "sink_committed", &[("txn", "wc-sink-0-1"), ("attempt", "1")]),
                ev(150, "jm", "deployed", &[("attempt", "2"), ("restored_from", "1")]),
                ev(200, "jm", "checkpoint_completed", &[("checkpoint", "2")]),
                ev(201, "tm1", "sink_committed", &[("txn", "wc-sink-1-2"), ("attempt", "2")]),
                ev(202, "tm0", "sink_committed", &[("txn", "wc-sink-0-2"), ("attempt", "2")]),
            ],
            checkpoints: vec![
                CheckpointView {
                    id: 1,
                    source_offsets: BTreeMap::from([(0, 1), (1, 0)]),
                    word_counts: BTreeMap::from([("a".into(), 2), ("b".into(), 1)]),
                    bucket_sums: BTreeMap::new(),
                },
                CheckpointView {
                    id: 2,
                    source_offsets: BTreeMap::from([(0, 1), (1, 1)]),
                    word_counts: BTreeMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]),
                    bucket_sums: BTreeMap::new(),
                },
            ],
            faults: vec![],
            finished: true,
            finished_at_ms: Some(210),
            healed_at_ms: 120,
            sim_ms: 300,
            restarts: 1,
            checkpoints_completed: 2,
        }
    }

    fn failing(record: &RunRecord, job: JobKind) -> Vec<(&'static str, Vec<String>)> {
        check_all(record, job, &CheckConfig { liveness_bound_ms: 1_000 })
            .into_iter()
            .filter(|o| !o.passed())
            .map(|o| (o.check, o.violations))
            .collect()
    }

    #[test]
    fn a_correct_word_count_run_passes_every_check() {
        assert_eq!(failing(&good_word_count(), JobKind::WordCount), vec![]);
    }

    #[test]
    fn a_zombie_committing_an_incomplete_checkpoint_is_caught_as_a_zombie_and_as_an_early_commit() {
        let mut r = good_word_count();
        r.events.push(ev(250, "tm1", "sink_committed", &[("txn", "wc-sink-1-3"), ("attempt", "1")]));
        let got = failing(&r, JobKind::WordCount);
        assert_eq!(
            got,
            vec![
                ("commit_after_complete", vec!["transaction wc-sink-1-3 committed at 0.250s on tm1 before checkpoint 3 completed".to_string()]),
                ("no_zombie_effects", vec!["sink_committed (wc-sink-1-3) from attempt 1 at 0.250s on tm1, after attempt 2 was deployed at 0.150s".to_string()]),
            ]
        );
    }

    #[test]
    fn a_zombie_recommitting_a_completed_checkpoint_or_writing_a_snapshot_is_no_effect() {
        let mut r = good_word_count();
        r.events.push(ev(250, "tm1", "sink_committed", &[("txn", "wc-sink-1-1"), ("attempt", "1")]));
        r.events.push(ev(260, "tm1", "snapshot_written", &[("checkpoint", "3"), ("attempt", "1")]));
        assert_eq!(failing(&r, JobKind::WordCount), vec![]);
    }

    #[test]
    fn each_broken_record_fails_exactly_its_check_with_the_right_detail() {
        type Break = fn(&mut RunRecord);
        let cases: Vec<(&str, Break, &str, &[&str])> = vec![
            ("lost record", |r| { r.output[1].edit(Vec::pop); }, "exactly_once", &["5 records expected, 4 committed: 1 lost, 0 duplicated, 0 unexpected, 0 out of order, 0 undecodable, 0 bucket errors", "missing (b,2); produced by one of the input lines holding 'b': p0@0, p1@0"]),
            ("duplicate", |r| r.output[0].edit(|v| v.push(v[0].clone())), "exactly_once", &["5 records expected, 6 committed: 0 lost, 1 duplicated, 0 unexpected, 1 out of order, 0 undecodable, 0 bucket errors", "duplicated (a,1) at out0@3, first at out0@0; produced by input line p0@0", "out of order: (a,1) at out0@3 after (a,2) at out0@1"]),
            ("reordered per key", |r| r.output[0].edit(|v| v.swap(0, 1)), "exactly_once", &["5 records expected, 5 committed: 0 lost, 0 duplicated, 0 unexpected, 1 out of order, 0 undecodable, 0 bucket errors", "out of order: (a,1) at out0@1 after (a,2) at out0@0"]),
            ("undecodable", |r| r.output[1].edit(|v| v[0] = vec![0xff]), "exactly_once", &["5 records expected, 5 committed: 1 lost, 0 duplicated, 0 unexpected, 0 out of order, 1 undecodable, 0 bucket errors"]),
            ("unexpected word", |r| r.output[1].edit(|v| v.push(enc(&("zz".to_string(), 1u64)))), "exactly_once", &["5 records expected, 6 committed: 0 lost, 0 duplicated, 1 unexpected, 0 out of order, 0 undecodable, 0 bucket errors", "unexpected (zz,1) at out1@2: the input holds 'zz' 0 times"]),
            ("inconsistent cut", |r| { r.checkpoints[0].word_counts.insert("b".into(), 2); }, "consistent_cut", &["checkpoint 1 (offsets p0@1 p1@0): count of 'b' is 2, the oracle's is 1"]),
            ("cut past the input", |r| { r.checkpoints[1].source_offsets.insert(1, 5); }, "consistent_cut", &["checkpoint 2 (offsets p0@1 p1@5): offset p1@5 is past the input's end (1 lines)"]),
            ("commit before complete", |r| r.events.swap(7, 8), "commit_after_complete", &["transaction wc-sink-1-2 committed at 0.201s on tm1 before checkpoint 2 completed"]),
            ("bad txn id", |r| { r.events[5].fields.insert("txn".into(), "nodash".into()); }, "commit_after_complete", &["sink_committed at 0.101s on tm0 names no transaction of the form prefix-subtask-checkpoint: \"nodash\""]),
            ("zombie ack accepted", |r| r.events.push(ev(260, "jm", "ack_accepted", &[("checkpoint", "3"), ("attempt", "1")])), "no_zombie_effects", &["ack_accepted (3) from attempt 1 at 0.260s on jm, after attempt 2 was deployed at 0.150s"]),
            ("non-monotone checkpoint", |r| r.events.push(ev(260, "jm", "checkpoint_completed", &[("checkpoint", "2")])), "checkpoint_monotone", &["checkpoint 2 completed at 0.260s on jm after checkpoint 2"]),
            ("wrong restore", |r| { r.events[6].fields.insert("restored_from".into(), "none".into()); }, "checkpoint_monotone", &["attempt 2 deployed at 0.150s on jm restored from no checkpoint, the latest completed is checkpoint 1"]),
            ("not finished", |r| { r.finished = false; r.finished_at_ms = None; }, "liveness", &["the job did not finish: healed at 0.120s, the run ended at 0.300s (bound 1.000s after healing)"]),
            ("finished too late", |r| r.finished_at_ms = Some(5_000), "liveness", &["the job finished 4.880s after healing (at 5.000s), over the bound of 1.000s"]),
            ("hanging transaction", |r| r.events.push(ev(400, "main", "open_transaction_at_end", &[("txn", "wc-sink-0-3"), ("state", "Ongoing")])), "no_hanging_transactions", &["transaction wc-sink-0-3 left Ongoing after the run: it holds back read-committed consumers of its partitions until the broker's transaction timeout"]),
        ];
        for (what, break_it, check, want) in cases {
            let mut r = good_word_count();
            break_it(&mut r);
            let got = failing(&r, JobKind::WordCount);
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(got.len(), 1, "{what}: exactly one check fails: {got:#?}");
            assert_eq!(got[0].0, check, "{what}");
            assert_eq!(got[0].1[..want.len()], want[..], "{what}: {:#?}", got[0].1);
        }
    }

    /// A correct two-shuffle run over "a a" | "a b": a → 1,2,3 (buckets 1,2,3), b → 1 (bucket 1).
    fn good_two_shuffle() -> RunRecord {
        let r = |b: u64, w: &str, k: u64, s: u64| enc(&(b, w.to_string(), k, s));
        RunRecord {
            job: "two-shuffle".into(),
            input: vec![vec!["a a".into()], vec!["a b".into()]],
            // Buckets 1 and 3 on out0, bucket 2 on out1.
            output: vec![vec![r(1, "a", 1, 1), r(3, "a", 3, 3), r(1, "b", 1, 2)].into(), vec![r(2, "a", 2, 2)].into()],
            checkpoints: vec![CheckpointView {
                id: 1,
                source_offsets: BTreeMap::from([(0, 1)]),
                word_counts: BTreeMap::from([("a".into(), 2)]),
                bucket_sums: BTreeMap::from([(1, 1), (2, 2)]),
            }],
            events: vec![ev(0, "jm", "deployed", &[("attempt", "1"), ("restored_from", "none")])],
            finished: true,
            finished_at_ms: Some(10),
            ..RunRecord::default()
        }
    }

    #[test]
    fn two_shuffle_checks_buckets_and_running_sums() {
        assert_eq!(failing(&good_two_shuffle(), JobKind::TwoShuffle), vec![]);
        let mut wrong_bucket = good_two_shuffle();
        wrong_bucket.output[0].edit(|v| v[1] = enc(&(2u64, "a".to_string(), 3u64, 3u64)));
        let got = failing(&wrong_bucket, JobKind::TwoShuffle);
        assert_eq!(got[0].0, "exactly_once");
        assert!(got[0].1.contains(&"out0@1 (2, a, 3, 3) is in bucket 2, want 3 % 8 = 3".to_string()), "{got:#?}");
        let mut wrong_sum = good_two_shuffle();
        wrong_sum.output[0].edit(|v| v[2] = enc(&(1u64, "b".to_string(), 1u64, 1u64)));
        let got = failing(&wrong_sum, JobKind::TwoShuffle);
        assert!(
            got[0].1.contains(
                &"bucket 1's running sum breaks at out0@2: (1, b, 1, 1) after out0@0 with sum 1, want 2".to_string()
            ),
            "{got:#?}"
        );
        let mut wrong_cut = good_two_shuffle();
        wrong_cut.checkpoints[0].bucket_sums.insert(2, 5);
        assert_eq!(
            failing(&wrong_cut, JobKind::TwoShuffle),
            vec![(
                "consistent_cut",
                vec!["checkpoint 1 (offsets p0@1): sum of bucket 2 is 5, the oracle's is 2".to_string()]
            )]
        );
    }

    #[test]
    fn violations_are_bounded() {
        let mut r = good_word_count();
        r.output = vec![CommittedRecords::default()];
        r.input = vec![(0..50).map(|i| format!("w{i}")).collect()];
        let got = exactly_once(&r, JobKind::WordCount).finish();
        assert_eq!(got.len(), VIOLATIONS_PER_CHECK_MAX + 1);
        assert_eq!(got.last().unwrap(), "… and 41 more");
    }

    #[test]
    fn transaction_ids_name_their_checkpoint() {
        let cases: &[(&str, Option<u64>)] = &[
            ("wc-sink-0-3", Some(3)),
            ("a-b-c-12-40", Some(40)),
            ("sink-x-3", None),
            ("0-3", None),
            ("-0-3", None),
            ("", None),
        ];
        for (txn, want) in cases {
            assert_eq!(txn_checkpoint(txn), *want, "{txn}");
        }
    }

    use proptest::prelude::*;

    /// The committed output a correct word count produces: per word, `(w,1)..(w,n)` in one
    /// output partition chosen by the word.
    fn correct_output(input: &[Vec<String>], partitions: usize) -> Vec<CommittedRecords> {
        let mut out = vec![Vec::new(); partitions];
        let state = crate::oracle::expected_state(JobKind::WordCount, input, None);
        for (w, n) in &state.word_counts {
            let p = w.len() % partitions;
            for k in 1..=*n {
                out[p].push(enc(&(w.clone(), k)));
            }
        }
        out.into_iter().map(CommittedRecords::from).collect()
    }

    proptest! {
        #[test]
        fn a_correct_output_passes_and_losing_or_duplicating_any_record_fails(
            input in prop::collection::vec(prop::collection::vec("[a-d ,.]{1,10}", 1..6), 1..4),
            partitions in 1usize..4,
            pick in any::<prop::sample::Index>(),
            duplicate in any::<bool>(),
        ) {
            let mut r = RunRecord { input: input.clone(), output: correct_output(&input, partitions), ..RunRecord::default() };
            prop_assert!(exactly_once(&r, JobKind::WordCount).is_empty());
            let places: Vec<(usize, usize)> = r.output.iter().enumerate().flat_map(|(p, recs)| (0..recs.len()).map(move |o| (p, o))).collect();
            prop_assume!(!places.is_empty());
            let (p, o) = places[pick.index(places.len())];
            if duplicate {
                r.output[p].edit(|v| v.insert(o + 1, v[o].clone()));
            } else {
                r.output[p].edit(|v| v.remove(o));
            }
            let v = exactly_once(&r, JobKind::WordCount).finish();
            prop_assert!(!v.is_empty());
            let want = if duplicate { "1 duplicated" } else { "1 lost" };
            prop_assert!(v[0].contains(want), "{v:?}");
        }
    }
}
