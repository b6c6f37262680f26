//! Arbitrary bytes (as lossy UTF-8) → `Scenario::parse`, and, when it parses, `resolve` for a
//! few seeds and both override sets. Bad input must be a `ScenarioError` naming the file and a
//! line inside the text, never a panic (also not in `resolve`, whose draws must respect what the
//! file fixes).
#![no_main]

#[cfg(not(madsim))]
compile_error!("run with RUSTFLAGS=\"--cfg madsim\" (cargo-fuzz ignores .cargo/config.toml)");

use floe_sim::scenario::{CheckpointMode, Overrides, Scenario, ScenarioError, SinkMode};
use libfuzzer_sys::fuzz_target;

/// The file name errors must carry.
const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    match Scenario::parse(FILE, &text) {
        Err(ScenarioError::Syntax { file, line, column, .. }) => {
            assert_eq!(file, FILE);
            assert!((1..=lines).contains(&line) && column >= 1, "syntax error at {line}:{column} of {lines} lines");
        }
        Err(ScenarioError::Field { file, line, .. }) => {
            // (The field may be empty: `[''] ` is a TOML table whose key is the empty string.)
            assert_eq!(file, FILE);
            assert!((1..=lines).contains(&line), "field error at line {line} of {lines}");
        }
        Err(other) => panic!("parsing a text gave a {other:?}"),
        Ok(scenario) => {
            let overrides = [
                Overrides::default(),
                Overrides { checkpointing: Some(CheckpointMode::AtLeastOnce), sink: Some(SinkMode::Plain) },
            ];
            let seeds = [0, 1, u64::MAX, scenario.seeds.first().unwrap_or(0)];
            for seed in seeds {
                for o in overrides {
                    let world = scenario.resolve(seed, o);
                    assert_eq!(world.seed, seed);
                    assert!(world.parallelism >= 1 && world.parallelism <= world.max_parallelism, "{world:?}");
                    assert!(world.parallelism <= world.task_managers * world.slots_per_tm, "{world:?}");
                    assert!(world.faults.len() >= scenario.faults.len());
                    if let Some(p) = scenario.parallelism {
                        assert_eq!(world.parallelism, p);
                    }
                    if let Some(n) = scenario.task_managers {
                        assert_eq!(world.task_managers, n);
                    }
                    // Resolving is a function of the seed.
                    assert_eq!(scenario.resolve(seed, o), world);
                }
            }
        }
    }
});
