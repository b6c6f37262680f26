//! Determinism, checked rather than assumed: a faulty scenario (random crashes, partitions,
//! pauses, disk and blob faults drawn from the seed) run twice per seed gives the same trace
//! hash; different seeds give different hashes; and one sample passes madsim's own determinism
//! check (`Runtime::check_determinism`: the run replayed, every random draw compared).
//!
//! `FLOE_SEEDS=N` changes the seed count (default 50); a failing seed prints the command that
//! reruns it.

use floe_sim::run::{run_seed, seeds_from_env};
use floe_sim::scenario::{Overrides, Scenario};
use std::collections::BTreeMap;

/// A small world with random faults of every kind (the sweep benchmark's scenario): fast, and it
/// reaches the risky paths.
use floe_sim::bench::SMALL_SWEEP as FAULTY;

fn seeds() -> Vec<u64> {
    seeds_from_env(50)
}

#[test]
#[allow(clippy::assertions_on_constants, reason = "the constant is the build flag under test")]
fn this_test_binary_is_built_for_the_simulation() {
    assert!(cfg!(madsim), "build with --cfg madsim (the workspace default); RUSTFLAGS in the environment replaces it");
}

#[test]
fn each_seed_run_twice_gives_the_same_trace_and_different_seeds_differ() {
    let scenario = Scenario::parse("determinism.toml", FAULTY).unwrap();
    let seeds = seeds();
    let run = |seed: u64| run_seed(&scenario, seed, Overrides::default(), None).expect("the world runs");
    // Two worker threads (each run still gets its own fresh thread and runtime).
    let hashes: BTreeMap<u64, (String, String, u64)> = std::thread::scope(|s| {
        let halves: Vec<_> = [0, 1]
            .into_iter()
            .map(|half| {
                let seeds = &seeds;
                s.spawn(move || {
                    seeds
                        .iter()
                        .filter(|seed| *seed % 2 == half)
                        .map(|&seed| {
                            let (a, b) = (run(seed), run(seed));
                            (seed, (a.trace_hash, b.trace_hash, a.faults))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for (seed, (a, b, _)) in &hashes {
        assert_eq!(
            a, b,
            "seed {seed} is not deterministic; rerun it with: FLOE_SEED={seed} cargo test -p floe-sim --test determinism"
        );
    }
    let distinct: std::collections::BTreeSet<&String> = hashes.values().map(|(a, _, _)| a).collect();
    assert_eq!(distinct.len(), hashes.len(), "two seeds gave the same trace");
    if hashes.len() > 1 {
        assert!(hashes.values().any(|(_, _, faults)| *faults > 2), "the scenario injected faults");
    }
}

#[cfg(madsim)]
mod madsim_check {
    use super::*;
    use floe_sim::scenario::WorldConfig;
    use std::sync::Mutex;

    /// `check_determinism` takes a plain `fn`: the world it runs is passed through here.
    static WORLD: Mutex<Option<WorldConfig>> = Mutex::new(None);

    async fn sample() {
        let world = WORLD.lock().unwrap().clone().expect("set by the test");
        let record = floe_sim::world::world_future(world).await;
        assert!(record.finished, "the sample finishes");
    }

    #[test]
    fn a_faulty_sample_passes_madsims_determinism_check() {
        let seed = 7;
        let world = Scenario::parse("determinism.toml", FAULTY).unwrap().resolve(seed, Overrides::default());
        assert!(!world.faults.is_empty());
        *WORLD.lock().unwrap() = Some(world);
        // Panics at the first divergence of the two runs' random draws.
        madsim::runtime::Runtime::check_determinism(seed, madsim::Config::default(), sample);
    }
}
