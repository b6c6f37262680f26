//! floe-sim: the judge. It turns a scenario file and a seed into a world configuration (the
//! seed draws whatever the scenario leaves open), runs the world, and judges the outcome against
//! independent oracles and named invariants.
//!
//! | module | what |
//! |---|---|
//! | [`bench`] | `floe bench`: simulated records/s, simulated s per wall s, seeds/s |
//! | [`scenario`] | scenario files (TOML): parsing with file/line/field errors, swarm resolution |
//! | [`record`] | the [`record::RunRecord`]: what a run leaves behind for the judge |
//! | [`oracle`] | sequential models of each job, written without engine code |
//! | [`checkers`] | the named invariants (`exactly_once`, `consistent_cut`, ...) |
//! | [`sometimes`] | the catalog of risky situations a run reached |
//! | [`trace`] | the `tracing` layer: virtual time, node names, the trace hash |
//! | [`report`] | run reports (text and JSON) and sweep summaries |
//! | [`run`] | running one seed on a fresh thread, sweeps |
//! | [`world`] | `run_world`: a scenario on the engine's simulated cluster, faults and all |

pub mod bench;
pub mod checkers;
pub mod oracle;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sometimes;
pub mod trace;
pub mod world;
