//! Benchmark: a keyed word count through the engine path on one thread —
//! barrier aligner (2 channels, exactly-once, a checkpoint every 100k records) → keyed process
//! (`RunningCount`, a `ValueState<u64>` per word) → heap keyed state, with a copy-on-write snapshot
//! capture at every aligned barrier — against a plain `HashMap<String, u64>` counting loop over
//! the same records, in the same process.
//!
//! `cargo bench -p floe-core --bench keyed_count` prints both rates and their ratio.
//! The target: the engine path reaches at least a quarter of the plain loop.

#![allow(clippy::disallowed_methods)] // a benchmark measures wall-clock time: Instant::now is its point

use floe_core::aligner::{AlignerConfig, AlignerOutput, BarrierAligner};
use floe_core::element::{Barrier, StreamElement};
use floe_core::ids::{AttemptId, ChannelIndex, CheckpointId, SubtaskIndex};
use floe_core::key_groups::KeyGroupRange;
use floe_core::operator::keyed_process::{KeyedProcessOperator, RunningCount};
use floe_core::operator::{Operator, OperatorContext};
use floe_core::state::{KeyedStateBackend, OperatorStateStore};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

const RECORDS: usize = 4_000_000;
const BATCH: usize = 1024;
const VOCABULARY: u64 = 50_000;
const CHECKPOINT_EVERY: usize = 100_000;
const ROUNDS: usize = 3;

/// Deterministic skewed words (xorshift; a benchmark needs no seeded RNG crate).
fn words() -> Vec<Vec<String>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let all: Vec<String> = (0..RECORDS)
        .map(|_| {
            let r = next();
            // Roughly Zipf-like: small ids are far more frequent.
            let id = (r % VOCABULARY) >> (next() % 8);
            format!("word{id}")
        })
        .collect();
    all.chunks(BATCH).map(<[String]>::to_vec).collect()
}

fn plain_loop(batches: Vec<Vec<String>>) -> u64 {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut emitted = 0u64;
    for batch in batches {
        for word in batch {
            let n = counts.entry(word).or_insert(0);
            *n += 1;
            emitted += *n;
        }
    }
    emitted
}

fn engine_path(batches: Vec<Vec<String>>) -> u64 {
    let max_parallelism = 128;
    let mut backend = KeyedStateBackend::new(max_parallelism, KeyGroupRange::all(max_parallelism));
    let mut operator_state = OperatorStateStore::new();
    let mut commands = Vec::new();
    let mut op = KeyedProcessOperator::new(RunningCount::default(), |w: &String| w.clone());
    let mut aligner: BarrierAligner<String> = BarrierAligner::new(2, AlignerConfig::default());
    let mut emitted = 0u64;
    let mut out = Vec::with_capacity(BATCH);
    let mut snapshots = 0u64;
    macro_rules! ctx {
        () => {
            OperatorContext {
                now_ms: 0,
                subtask: SubtaskIndex(0),
                parallelism: 1,
                attempt: AttemptId(1),
                keyed: Some(&mut backend),
                operator_state: &mut operator_state,
                commands: &mut commands,
            }
        };
    }
    op.initialize_state(&mut ctx!(), None).unwrap();
    let mut since_barrier = 0;
    let mut next_checkpoint = CheckpointId::FIRST;
    for (i, batch) in batches.into_iter().enumerate() {
        let channel = ChannelIndex((i % 2) as u32);
        since_barrier += batch.len();
        aligner.push(channel, StreamElement::Records(batch), BATCH * 16).unwrap();
        if since_barrier >= CHECKPOINT_EVERY {
            since_barrier = 0;
            let barrier = Barrier { checkpoint_id: next_checkpoint, triggered_at_ms: 0, is_final: false };
            next_checkpoint = next_checkpoint.next();
            aligner.push(ChannelIndex(0), StreamElement::Barrier(barrier), 0).unwrap();
            aligner.push(ChannelIndex(1), StreamElement::Barrier(barrier), 0).unwrap();
        }
        while let Some(output) = aligner.poll() {
            match output {
                AlignerOutput::Records { records, .. } => {
                    op.process_batch(&mut ctx!(), records, &mut out).unwrap();
                    emitted += out.drain(..).map(|(_, n)| n).sum::<u64>();
                }
                AlignerOutput::Checkpoint(barrier) => {
                    op.snapshot_state(&mut ctx!(), barrier.checkpoint_id).unwrap();
                    black_box(backend.snapshot(barrier.checkpoint_id));
                    snapshots += 1;
                }
                _ => {}
            }
        }
    }
    assert!(snapshots > 0);
    emitted
}

fn rate(records: usize, secs: f64) -> f64 {
    records as f64 / secs
}

fn main() {
    let input = words();
    let mut best_plain = f64::MAX;
    let mut best_engine = f64::MAX;
    for _ in 0..ROUNDS {
        let batches = input.clone();
        let t = Instant::now();
        let a = black_box(plain_loop(batches));
        best_plain = best_plain.min(t.elapsed().as_secs_f64());

        let batches = input.clone();
        let t = Instant::now();
        let b = black_box(engine_path(batches));
        best_engine = best_engine.min(t.elapsed().as_secs_f64());
        assert_eq!(a, b, "the engine and the plain loop disagree on the running counts");
    }
    let (plain, engine) = (rate(RECORDS, best_plain), rate(RECORDS, best_engine));
    println!("keyed_count: {RECORDS} records, {VOCABULARY} words max, batches of {BATCH}, checkpoint every {CHECKPOINT_EVERY}");
    println!("  plain HashMap loop : {:>12.0} records/s", plain);
    println!("  engine path        : {:>12.0} records/s (aligner -> keyed process -> heap state, COW capture)", engine);
    println!("  ratio engine/plain : {:.3} (target >= 0.25)", engine / plain);
}
