//! The "sometimes" catalog: how often a run reached the risky situations that find deep bugs —
//! stateright's `sometimes` properties, the dual of the checkers' `always`. A sweep that never
//! crashes a task manager mid-alignment has not tested alignment recovery, whatever its verdict.
//! Counts come from the trace and the fault log; a sweep sums them ([`add`]).
//!
//! | situation | counted when |
//! |---|---|
//! | `crash_during_alignment` | a crash hits a task manager while a checkpoint is aligning (some `checkpoint_aligning{n}` seen, `n` not yet completed, expired or aborted) |
//! | `crash_between_complete_and_commit` | a crash hits after the latest `checkpoint_completed{n}` and before every commit of `n` is done (a commit of `n` comes later, or none came yet) |
//! | `jm_crash_mid_checkpoint` | the job manager crashes while a triggered checkpoint is pending |
//! | `restore_from_checkpoint_2_plus` | a `deployed` restores from checkpoint ≥ 2 |
//! | `checkpoint_expired`, `zombie_fenced`, `transaction_timed_out`, `stale_message`, `checkpoint_declined`, `alignment_buffer_full` | each such trace event; derived from the cluster's events where it has no event of that name: `checkpoint_aborted{reason: Expired}`, `subtask_failed{reason: "… timed out and was aborted by the broker"}`, `checkpoint_declined{reason: "… AlignmentBufferFull …"}` |
//! | `final_checkpoint_retried` | a `checkpoint_triggered{is_final}` after an earlier final one of the same attempt (the first expired or was declined) |
//! | `restarts` | each `deployed` after the first |

use crate::checkers::txn_checkpoint;
use crate::record::{RunRecord, TraceEvent};
use crate::trace::names;
use std::collections::{BTreeMap, BTreeSet};

/// Every situation, in report order.
pub const SITUATIONS: [&str; 13] = [
    "crash_during_alignment",
    "crash_between_complete_and_commit",
    "jm_crash_mid_checkpoint",
    "restore_from_checkpoint_2_plus",
    "checkpoint_expired",
    "zombie_fenced",
    "zombie_commit_of_completed",
    "transaction_timed_out",
    "stale_message",
    "checkpoint_declined",
    "alignment_buffer_full",
    "final_checkpoint_retried",
    "restarts",
];

/// The situations of issue 5's list that random faults must reach in a sweep of a few hundred
/// seeds (`transaction_timed_out` is left to the `broker/transaction-timeout-shorter-than-downtime`
/// scenario: a timeout after a completed checkpoint loses data by design, FLINK-7784).
pub const RANDOM_FAULTS_MUST_REACH: [&str; 6] = [
    SITUATIONS[0],
    SITUATIONS[1],
    SITUATIONS[2],
    SITUATIONS[3],
    SITUATIONS[4],
    SITUATIONS[5],
];

/// Counts per situation (every situation present, 0 when never reached).
pub type Sometimes = BTreeMap<String, u64>;

/// A catalog with every situation at 0.
pub fn empty() -> Sometimes {
    SITUATIONS.iter().map(|s| (s.to_string(), 0)).collect()
}

/// Adds `other` into `total`.
pub fn add(total: &mut Sometimes, other: &Sometimes) {
    for (k, v) in other {
        *total.entry(k.clone()).or_insert(0) += v;
    }
}

fn field_has(e: &TraceEvent, key: &str, needle: &str) -> bool {
    e.fields.get(key).is_some_and(|v| v.contains(needle))
}

fn at_ms(e: &TraceEvent) -> u64 {
    e.at_ns / 1_000_000
}

/// The situations one run reached.
pub fn count(record: &RunRecord) -> Sometimes {
    let mut out = empty();
    let mut bump = |k: &str| *out.entry(k.to_string()).or_insert(0) += 1;
    let mut deployed = 0u64;
    let mut newest_attempt: Option<u64> = None;
    let mut final_triggered: BTreeSet<Option<u64>> = BTreeSet::new();
    for e in &record.events {
        match e.name.as_str() {
            // A second final checkpoint of the same attempt: the first expired or was declined.
            names::CHECKPOINT_TRIGGERED if field_has(e, "is_final", "true") && !final_triggered.insert(e.id_field("attempt")) => {
                bump("final_checkpoint_retried")
            }
            // A sink of an older attempt re-committing a completed checkpoint's transaction
            // (idempotent; see `checkers::no_zombie_effects`).
            names::SINK_COMMITTED if e.id_field("attempt").zip(newest_attempt).is_some_and(|(a, n)| a < n) => {
                bump("zombie_commit_of_completed")
            }
            names::CHECKPOINT_EXPIRED => bump("checkpoint_expired"),
            // The cluster reports an expiry as `checkpoint_aborted{reason: Expired}`.
            names::CHECKPOINT_ABORTED if field_has(e, "reason", "Expired") => bump("checkpoint_expired"),
            // A sink whose transaction the broker timed out fails its subtask with the broker's error.
            names::SUBTASK_FAILED if field_has(e, "reason", "timed out and was aborted by the broker") => {
                bump("transaction_timed_out")
            }
            names::ZOMBIE_FENCED => bump("zombie_fenced"),
            names::TXN_TIMED_OUT => bump("transaction_timed_out"),
            names::STALE_MESSAGE => bump("stale_message"),
            names::CHECKPOINT_DECLINED => {
                bump("checkpoint_declined");
                // The aligner's bound: the task declines with `AlignmentBufferFull`.
                if field_has(e, "reason", "AlignmentBufferFull") {
                    bump("alignment_buffer_full");
                }
            }
            names::ALIGNMENT_BUFFER_FULL => bump("alignment_buffer_full"),
            names::DEPLOYED => {
                newest_attempt = newest_attempt.max(e.id_field("attempt"));
                deployed += 1;
                if deployed > 1 {
                    bump("restarts");
                }
                if e.id_field("restored_from").is_some_and(|c| c >= 2) {
                    bump("restore_from_checkpoint_2_plus");
                }
            }
            _ => {}
        }
    }
    for fault in record.faults.iter().filter(|f| f.kind == "crash") {
        let t = fault.at_ms;
        let before = record.events.iter().take_while(|e| at_ms(e) <= t);
        // Checkpoints aligning / triggered and not yet ended at t.
        let (mut aligning, mut triggered, mut completed) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut committed_before: BTreeSet<u64> = BTreeSet::new();
        for e in before {
            let n = e.id_field("checkpoint");
            match (e.name.as_str(), n) {
                (names::CHECKPOINT_ALIGNING, Some(n)) => {
                    aligning.insert(n);
                }
                (names::CHECKPOINT_TRIGGERED, Some(n)) => {
                    triggered.insert(n);
                }
                (names::CHECKPOINT_COMPLETED, Some(n)) => {
                    completed.insert(n);
                    aligning.remove(&n);
                    triggered.remove(&n);
                }
                (names::CHECKPOINT_EXPIRED | names::CHECKPOINT_ABORTED, Some(n)) => {
                    aligning.remove(&n);
                    triggered.remove(&n);
                }
                (names::SINK_COMMITTED, _) => {
                    if let Some(c) = e.fields.get("txn").and_then(|t| txn_checkpoint(t)) {
                        committed_before.insert(c);
                    }
                }
                _ => {}
            }
        }
        let committed_after: BTreeSet<u64> = record
            .events
            .iter()
            .filter(|e| at_ms(e) > t && e.name == names::SINK_COMMITTED)
            .filter_map(|e| e.fields.get("txn").and_then(|t| txn_checkpoint(t)))
            .collect();
        let hits_tm = fault.nodes.iter().any(|n| n.starts_with("tm"));
        let hits_jm = fault.nodes.iter().any(|n| n == "jm");
        if hits_tm && !aligning.is_empty() {
            bump("crash_during_alignment");
        }
        if hits_jm && !triggered.is_empty() {
            bump("jm_crash_mid_checkpoint");
        }
        // The latest completed checkpoint's commits are not all done yet.
        if completed.last().is_some_and(|n| !committed_before.contains(n) || committed_after.contains(n)) {
            bump("crash_between_complete_and_commit");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::tests::good_word_count;
    use crate::record::FaultLogEntry;

    fn crash(at_ms: u64, node: &str) -> FaultLogEntry {
        FaultLogEntry { at_ms, kind: "crash".into(), nodes: vec![node.into()] }
    }

    #[test]
    fn a_quiet_run_reaches_only_its_restart() {
        let c = count(&good_word_count());
        let reached: Vec<(&str, u64)> = c.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(reached, [("restarts", 1)]);
        assert_eq!(c.len(), SITUATIONS.len());
    }

    #[test]
    fn crashes_are_classified_by_what_was_in_flight() {
        // good_word_count: aligning cp1 at 90, completed cp1 at 100, commit of cp1 at 101.
        let cases: &[(u64, &str, &[&str])] = &[
            (92, "tm0", &["crash_during_alignment"]),
            (100, "tm0", &["crash_between_complete_and_commit"]),
            (120, "tm0", &[]),
            (92, "broker", &[]),
        ];
        for (t, node, want) in cases {
            let mut r = good_word_count();
            r.faults = vec![crash(*t, node)];
            let c = count(&r);
            let reached: Vec<&str> =
                c.iter().filter(|(k, v)| **v > 0 && *k != "restarts").map(|(k, _)| k.as_str()).collect();
            assert_eq!(reached, *want, "crash of {node} at {t}");
        }
        let mut r = good_word_count();
        r.events.insert(1, TraceEvent::at_ms(80, "jm", "checkpoint_triggered", &[("checkpoint", "1")]));
        r.faults = vec![crash(85, "jm")];
        assert_eq!(count(&r)["jm_crash_mid_checkpoint"], 1);
    }

    #[test]
    fn event_situations_are_counted_and_sweeps_sum_them() {
        let mut r = good_word_count();
        r.events.push(TraceEvent::at_ms(300, "jm", "checkpoint_expired", &[("checkpoint", "3")]));
        r.events.push(TraceEvent::at_ms(301, "tm0", "zombie_fenced", &[("attempt", "1")]));
        r.events.push(TraceEvent::at_ms(302, "jm", "deployed", &[("attempt", "3"), ("restored_from", "2")]));
        let c = count(&r);
        assert_eq!(
            (c["checkpoint_expired"], c["zombie_fenced"], c["restore_from_checkpoint_2_plus"], c["restarts"]),
            (1, 1, 1, 2)
        );
        assert_eq!(c["final_checkpoint_retried"], 0, "no final checkpoint was triggered twice");
        let final_trigger = |t, checkpoint, attempt| {
            TraceEvent::at_ms(t, "jm", "checkpoint_triggered", &[("attempt", attempt), ("checkpoint", checkpoint), ("is_final", "true")])
        };
        r.events.push(final_trigger(400, "5", "3"));
        r.events.push(final_trigger(500, "6", "4")); // a new attempt's first final checkpoint
        assert_eq!(count(&r)["final_checkpoint_retried"], 0);
        r.events.push(final_trigger(600, "7", "4"));
        assert_eq!(count(&r)["final_checkpoint_retried"], 1);
        let mut total = empty();
        add(&mut total, &c);
        add(&mut total, &c);
        assert_eq!(total["restarts"], 4);
    }
}
