//! Bytes → (via `Arbitrary`) a bounded fault schedule plus swarm knobs → a scenario TOML →
//! `Scenario::parse` + `resolve` → `floe_sim::run::run_world` on a fresh thread → every checker
//! (`check_all`) must pass. Otherwise the target panics with the violations and the scenario
//! text that reproduces the failure (see `floe_fuzz::schedule` and `fuzz/README.md`).
//!
//! `FLOE_FUZZ_PRINT=1` prints the scenario of every input run (use it with one artifact file:
//! `FLOE_FUZZ_PRINT=1 RUSTFLAGS="--cfg madsim" cargo fuzz run -s none schedule <file>`).
//!
//! While `run_world` answers `SimError::ClusterUnavailable` (the cluster is not wired into the
//! simulator yet) every world is skipped: the target then still checks that every input maps to
//! a valid scenario and world.
#![no_main]

#[cfg(not(madsim))]
compile_error!("run with RUSTFLAGS=\"--cfg madsim\" (cargo-fuzz ignores .cargo/config.toml)");

use floe_fuzz::schedule::{self, Outcome, ScheduleInput};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Whether `FLOE_FUZZ_PRINT` is set (read once).
fn print_scenarios() -> bool {
    static PRINT: OnceLock<bool> = OnceLock::new();
    *PRINT.get_or_init(|| std::env::var_os("FLOE_FUZZ_PRINT").is_some_and(|v| !v.is_empty() && v != "0"))
}

fuzz_target!(|input: ScheduleInput| {
    if print_scenarios() {
        println!("# seed {}\n{}", input.seed(), input.to_scenario_toml());
    }
    match schedule::run(&input) {
        Outcome::Skipped | Outcome::Passed => {}
        Outcome::Failed(text) => panic!("{text}"),
    }
});
