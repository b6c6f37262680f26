//! The `schedule` target's input: a bounded fault schedule plus swarm knobs, decoded from the
//! fuzz bytes with [`arbitrary`] and rendered as a **scenario TOML** — the one form every floe
//! tool reads. The target parses that text with `Scenario::parse` and resolves it, so the text
//! printed for a failing input *is* the reproduction: save it under `scenarios/regressions/` and
//! `floe run` it (see `fuzz/README.md`).
//!
//! The fault list comes first in [`ScheduleInput`] (a leading `u64` would eat short inputs and
//! leave every schedule empty). Every knob is bounded so that one input is a small world (at
//! most [`LINES_MAX`] input lines, [`FAULTS_PER_INPUT_MAX`] faults) and the target runs many
//! inputs a second. Checkpointing stays exactly-once and the sink transactional: with those
//! every checker must pass, whatever the faults (the at-least-once and plain-sink positive
//! controls live in `scenarios/controls/`).
//!
//! The mapping is total: every input renders to a scenario that parses (a unit test checks
//! this for random inputs; the target panics if it ever does not).

use arbitrary::Arbitrary;
use floe_sim::run::{run_seed_with, run_world, SimError};
use floe_sim::scenario::{Overrides, Scenario, WorldConfig};
use std::fmt::Write;

/// Most faults taken from one input (the rest are ignored).
pub const FAULTS_PER_INPUT_MAX: usize = 8;
/// Most input lines of one world.
pub const LINES_MAX: u64 = 300;
/// Most words per input line.
pub const WORDS_PER_LINE_MAX: u64 = 6;
/// Most task managers of one world.
pub const TASK_MANAGERS_MAX: u64 = 4;
/// Most slots per task manager.
pub const SLOTS_PER_TM_MAX: u64 = 2;
/// Most parallelism of one world.
pub const PARALLELISM_MAX: u64 = 4;
/// Latest time-triggered fault, in virtual ms since the start.
pub const FAULT_AT_MS_MAX: u64 = 5_000;
/// Longest fault (and crash down time), in ms.
pub const FAULT_DURATION_MS_MAX: u64 = 2_000;
/// Highest checkpoint id an event trigger names.
pub const TRIGGER_CHECKPOINT_MAX: u64 = 8;
/// The scenario name the rendered TOML carries.
pub const SCENARIO_NAME: &str = "fuzz-schedule";

/// One fuzz input of the `schedule` target.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct ScheduleInput {
    /// The faults (first, so that short inputs still make schedules); at most
    /// [`FAULTS_PER_INPUT_MAX`] are used.
    pub faults: Vec<FuzzFault>,
    /// Everything else the swarm would draw.
    pub knobs: Knobs,
}

/// One fault, in raw form (every field is mapped into its valid range when rendered).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct FuzzFault {
    /// When it fires.
    pub when: When,
    /// What it does.
    pub kind: Kind,
    /// Which node it hits (an index into the world's nodes, or the disk nodes for disk faults).
    pub node: u8,
    /// How long it lasts (mapped to `1..=FAULT_DURATION_MS_MAX`).
    pub duration_ms: u16,
}

/// When a fault fires.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// At a virtual time (mapped to `0..=FAULT_AT_MS_MAX`).
    At {
        /// Raw time, ms.
        at_ms: u16,
    },
    /// On a protocol event (`checkpoint_aligning`, `checkpoint_completed`, `sink_prepared`,
    /// `restore_begun`, by index).
    On {
        /// The event, by index.
        event: u8,
        /// Only for this checkpoint (mapped to `1..=TRIGGER_CHECKPOINT_MAX`).
        checkpoint: Option<u8>,
        /// Only for this subtask (mapped below the parallelism).
        subtask: Option<u8>,
        /// Delay after the event, ms.
        after_ms: u8,
    },
}

/// What a fault does (the scenario file's fault kinds).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Kill the node; restart it after a while (or when the schedule heals).
    Crash {
        /// Down time (mapped to `1..=FAULT_DURATION_MS_MAX`).
        restart_after_ms: Option<u16>,
    },
    /// Cut the node from one other node (or from everything else).
    Partition {
        /// The other side, by node index (`None` or the node itself: everything else).
        other: Option<u8>,
        /// Only the node → others direction.
        one_way: bool,
    },
    /// Nothing in or out of the node.
    Clog,
    /// Network latency `min_ms ..= min_ms + spread_ms`.
    Latency {
        /// Least latency (mapped to `1..=50`).
        min_ms: u8,
        /// Spread (mapped to `0..=200`).
        spread_ms: u8,
    },
    /// Packet loss in percent (mapped to `0..=30`).
    Loss {
        /// Percent.
        percent: u8,
    },
    /// Pause the node.
    Pause,
    /// The broker's or the blob store's disk fails writes.
    FailWrites,
    /// The broker's or the blob store's disk fails fsyncs.
    FailFsyncs,
    /// The broker's or the blob store's disk is slow.
    SlowWrites {
        /// Per write (mapped to `1..=100`).
        delay_ms: u8,
    },
    /// The blob store fails puts.
    BlobFailPuts,
    /// The blob store is slow to put.
    BlobSlowPuts {
        /// Per put (mapped to `1..=500`).
        delay_ms: u8,
    },
}

/// The swarm knobs, raw (each is mapped into a small valid range when rendered).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// The run's seed (madsim's and the workload's).
    pub seed: u64,
    /// `false`: word-count, `true`: two-shuffle.
    pub two_shuffle: bool,
    /// Input lines.
    pub lines: u16,
    /// Words per line.
    pub words_per_line: u8,
    /// Distinct words.
    pub vocabulary: u8,
    /// Zipf exponent, in hundredths.
    pub skew_hundredths: u8,
    /// Input partitions.
    pub partitions: u8,
    /// Task managers.
    pub task_managers: u8,
    /// Slots per task manager.
    pub slots_per_tm: u8,
    /// Parallelism.
    pub parallelism: u8,
    /// Max parallelism, by index into `[4, 16, 32, 128]`.
    pub max_parallelism: u8,
    /// Heartbeat timeout.
    pub heartbeat_timeout_ms: u16,
    /// Checkpoint interval.
    pub checkpoint_interval_ms: u16,
    /// Checkpoint timeout.
    pub checkpoint_timeout_ms: u16,
    /// Least pause between checkpoints.
    pub checkpoint_min_pause_ms: u8,
    /// `true`: two concurrent checkpoints.
    pub checkpoint_two_concurrent: bool,
    /// Tolerable checkpoint failures.
    pub checkpoint_tolerable_failures: u8,
    /// Broker transaction timeout, in seconds.
    pub transaction_timeout_secs: u8,
    /// Least network latency.
    pub latency_min_ms: u8,
    /// Latency spread.
    pub latency_spread_ms: u8,
    /// Packet loss in percent.
    pub packet_loss_percent: u8,
}

/// `lo + raw % (hi - lo + 1)`: a raw value mapped into `lo..=hi`.
fn within(raw: u64, lo: u64, hi: u64) -> u64 {
    debug_assert!(lo <= hi);
    lo + raw % (hi - lo + 1)
}

const EVENTS: [&str; 4] = ["checkpoint_aligning", "checkpoint_completed", "sink_prepared", "restore_begun"];

impl ScheduleInput {
    /// The seed the scenario is run with.
    pub fn seed(&self) -> u64 {
        self.knobs.seed
    }

    /// The scenario text of this input: every knob fixed, so `resolve` draws nothing but the
    /// workload lines and madsim's choices, both from the seed.
    pub fn to_scenario_toml(&self) -> String {
        let k = &self.knobs;
        let task_managers = within(k.task_managers.into(), 1, TASK_MANAGERS_MAX);
        let slots_per_tm = within(k.slots_per_tm.into(), 1, SLOTS_PER_TM_MAX);
        let parallelism = within(k.parallelism.into(), 1, (task_managers * slots_per_tm).min(PARALLELISM_MAX));
        let max_parallelism = [4, 16, 32, 128][usize::from(k.max_parallelism) % 4];
        debug_assert!(parallelism <= max_parallelism && parallelism <= task_managers * slots_per_tm);
        let latency_min_ms = within(k.latency_min_ms.into(), 1, 5);
        let mut t = String::new();
        // `write!` to a String cannot fail.
        let _ = writeln!(t, "name = \"{SCENARIO_NAME}\"");
        let _ = writeln!(t, "description = \"found by the schedule fuzz target (fuzz/README.md)\"");
        let _ = writeln!(t, "job = \"{}\"", if k.two_shuffle { "two-shuffle" } else { "word-count" });
        let _ = writeln!(t, "seeds = [{}]", k.seed);
        let _ = writeln!(t, "\n[workload]");
        let _ = writeln!(t, "lines = {}", within(k.lines.into(), 1, LINES_MAX));
        let _ = writeln!(t, "words_per_line = {}", within(k.words_per_line.into(), 1, WORDS_PER_LINE_MAX));
        let _ = writeln!(t, "vocabulary = {}", within(k.vocabulary.into(), 1, 100));
        let _ = writeln!(t, "skew = {:.2}", within(k.skew_hundredths.into(), 0, 150) as f64 / 100.0);
        let _ = writeln!(t, "partitions = {}", within(k.partitions.into(), 1, 4));
        let _ = writeln!(t, "\n[cluster]");
        let _ = writeln!(t, "task_managers = {task_managers}");
        let _ = writeln!(t, "slots_per_tm = {slots_per_tm}");
        let _ = writeln!(t, "parallelism = {parallelism}");
        let _ = writeln!(t, "max_parallelism = {max_parallelism}");
        let _ = writeln!(t, "heartbeat_timeout_ms = {}", within(k.heartbeat_timeout_ms.into(), 500, 3_000));
        let _ = writeln!(t, "\n[checkpoint]");
        let _ = writeln!(t, "interval_ms = {}", within(k.checkpoint_interval_ms.into(), 50, 500));
        let _ = writeln!(t, "timeout_ms = {}", within(k.checkpoint_timeout_ms.into(), 1_000, 10_000));
        let _ = writeln!(t, "min_pause_ms = {}", within(k.checkpoint_min_pause_ms.into(), 0, 100));
        let _ = writeln!(t, "max_concurrent = {}", if k.checkpoint_two_concurrent { 2 } else { 1 });
        let _ = writeln!(t, "tolerable_failures = {}", within(k.checkpoint_tolerable_failures.into(), 0, 2));
        let _ = writeln!(t, "mode = \"exactly-once\"");
        let _ = writeln!(t, "\n[sink]\nmode = \"transactional\"");
        let _ = writeln!(t, "\n[broker]");
        let _ = writeln!(t, "transaction_timeout_ms = {}", within(k.transaction_timeout_secs.into(), 30, 120) * 1_000);
        let _ = writeln!(t, "\n[network]");
        let _ = writeln!(
            t,
            "latency_ms = [{latency_min_ms}, {}]",
            latency_min_ms + within(k.latency_spread_ms.into(), 0, 20)
        );
        let _ = writeln!(t, "packet_loss = {:.2}", within(k.packet_loss_percent.into(), 0, 10) as f64 / 100.0);

        let mut nodes: Vec<String> = vec!["jm".into(), "broker".into(), "blob".into()];
        nodes.extend((0..task_managers).map(|i| format!("tm{i}")));
        let node_at = |raw: u8| nodes[usize::from(raw) % nodes.len()].as_str();
        let disk_node_at = |raw: u8| ["broker", "blob"][usize::from(raw) % 2];
        for f in self.faults.iter().take(FAULTS_PER_INPUT_MAX) {
            let _ = writeln!(t, "\n[[fault]]");
            match &f.when {
                When::At { at_ms } => {
                    let _ = writeln!(t, "at_ms = {}", within((*at_ms).into(), 0, FAULT_AT_MS_MAX));
                }
                When::On { event, checkpoint, subtask, after_ms } => {
                    let _ = writeln!(t, "on = \"{}\"", EVENTS[usize::from(*event) % EVENTS.len()]);
                    if let Some(c) = checkpoint {
                        let _ = writeln!(t, "checkpoint = {}", within((*c).into(), 1, TRIGGER_CHECKPOINT_MAX));
                    }
                    if let Some(s) = subtask {
                        let _ = writeln!(t, "subtask = {}", u64::from(*s) % parallelism);
                    }
                    let _ = writeln!(t, "after_ms = {after_ms}");
                }
            }
            let duration_ms = within(f.duration_ms.into(), 1, FAULT_DURATION_MS_MAX);
            let node = node_at(f.node);
            match &f.kind {
                Kind::Crash { restart_after_ms } => {
                    let _ = writeln!(t, "kind = \"crash\"\nnode = \"{node}\"");
                    if let Some(ms) = restart_after_ms {
                        let _ = writeln!(t, "restart_after_ms = {}", within((*ms).into(), 1, FAULT_DURATION_MS_MAX));
                    }
                }
                Kind::Partition { other, one_way } => {
                    let _ = writeln!(t, "kind = \"partition\"\nnode = \"{node}\"\none_way = {one_way}");
                    if let Some(o) = other.map(node_at).filter(|o| *o != node) {
                        let _ = writeln!(t, "others = [\"{o}\"]");
                    }
                }
                Kind::Clog => {
                    let _ = writeln!(t, "kind = \"clog\"\nnode = \"{node}\"");
                }
                Kind::Latency { min_ms, spread_ms } => {
                    let lo = within((*min_ms).into(), 1, 50);
                    let hi = lo + within((*spread_ms).into(), 0, 200);
                    let _ = writeln!(t, "kind = \"latency\"\nlatency_ms = [{lo}, {hi}]");
                }
                Kind::Loss { percent } => {
                    let _ =
                        writeln!(t, "kind = \"loss\"\nrate = {:.2}", within((*percent).into(), 0, 30) as f64 / 100.0);
                }
                Kind::Pause => {
                    let _ = writeln!(t, "kind = \"pause\"\nnode = \"{node}\"");
                }
                Kind::FailWrites => {
                    let _ = writeln!(t, "kind = \"fail_writes\"\nnode = \"{}\"", disk_node_at(f.node));
                }
                Kind::FailFsyncs => {
                    let _ = writeln!(t, "kind = \"fail_fsyncs\"\nnode = \"{}\"", disk_node_at(f.node));
                }
                Kind::SlowWrites { delay_ms } => {
                    let _ = writeln!(
                        t,
                        "kind = \"slow_writes\"\nnode = \"{}\"\ndelay_ms = {}",
                        disk_node_at(f.node),
                        within((*delay_ms).into(), 1, 100)
                    );
                }
                Kind::BlobFailPuts => {
                    let _ = writeln!(t, "kind = \"blob_fail_puts\"\nnode = \"blob\"");
                }
                Kind::BlobSlowPuts { delay_ms } => {
                    let _ = writeln!(
                        t,
                        "kind = \"blob_slow_puts\"\nnode = \"blob\"\ndelay_ms = {}",
                        within((*delay_ms).into(), 1, 500)
                    );
                }
            }
            if !matches!(f.kind, Kind::Crash { .. }) {
                let _ = writeln!(t, "duration_ms = {duration_ms}");
            }
        }
        let _ = writeln!(t, "\n[expect]\nverdict = \"pass\"");
        t
    }

    /// The parsed scenario and the world it resolves to. An error here is a bug of this
    /// mapping (every input must render to a valid scenario): the error text names the line.
    pub fn world(&self) -> Result<(Scenario, WorldConfig), String> {
        let text = self.to_scenario_toml();
        let scenario = Scenario::parse("fuzz-schedule.toml", &text).map_err(|e| format!("{e}\n{text}"))?;
        let world = scenario.resolve(self.seed(), Overrides::default());
        Ok((scenario, world))
    }
}

/// What one run of a schedule came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// This build cannot run worlds yet (`run_world` answers `ClusterUnavailable`).
    Skipped,
    /// Every checker passed.
    Passed,
    /// A checker failed, or the world panicked: the text says which, with the scenario.
    Failed(String),
}

/// Runs the input's world on a fresh thread (`run_seed_with`, as `floe run` does) and judges it
/// with every checker (`check_all`, through the report).
pub fn run(input: &ScheduleInput) -> Outcome {
    let (scenario, world) = match input.world() {
        Ok(sw) => sw,
        Err(e) => return Outcome::Failed(format!("the input rendered to an invalid scenario: {e}")),
    };
    debug_assert_eq!(world.seed, input.seed());
    match run_seed_with(&scenario, world.seed, Overrides::default(), None, run_world) {
        Err(SimError::ClusterUnavailable) => Outcome::Skipped,
        Err(e) => Outcome::Failed(failure_text(input, &format!("the world could not be judged: {e}"))),
        Ok(report) => {
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.passed())
                .flat_map(|c| c.violations.iter().map(move |v| format!("  {}: {v}", c.check)))
                .collect();
            if failed.is_empty() {
                Outcome::Passed
            } else {
                Outcome::Failed(failure_text(input, &format!("checkers failed:\n{}", failed.join("\n"))))
            }
        }
    }
}

/// The failure message: what failed, the scenario that reproduces it, and how to run it.
pub fn failure_text(input: &ScheduleInput, what: &str) -> String {
    format!(
        "{what}\n\n--- scenario (save as scenarios/regressions/<name>.toml) ---\n{}--- end of scenario ---\n\
         reproduce: floe run scenarios/regressions/<name>.toml --seed {}\n",
        input.to_scenario_toml(),
        input.seed()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbitrary::Unstructured;
    use floe_sim::scenario::{FaultKind, Trigger};
    use proptest::prelude::*;

    fn input_from(bytes: &[u8]) -> ScheduleInput {
        ScheduleInput::arbitrary_take_rest(Unstructured::new(bytes)).expect("arbitrary never fails on short input")
    }

    #[test]
    fn an_empty_input_is_a_calm_small_word_count() {
        let (scenario, world) = input_from(&[]).world().unwrap();
        assert!(scenario.faults.is_empty());
        assert_eq!(world.seed, 0);
        assert_eq!(world.job.name(), "word-count");
        assert_eq!((world.task_managers, world.parallelism), (1, 1));
        assert!((1..=LINES_MAX).contains(&world.workload.lines));
    }

    #[test]
    fn the_faults_come_first_so_a_short_input_makes_a_schedule() {
        // `Vec` length byte(s) then fault fields: a handful of bytes already give faults.
        let input = input_from(&[1, 0, 10, 0, 3, 200, 0, 1, 0, 7]);
        assert!(!input.faults.is_empty(), "{input:?}");
        let (scenario, _) = input.world().unwrap();
        assert_eq!(scenario.faults.len(), input.faults.len().min(FAULTS_PER_INPUT_MAX));
    }

    #[test]
    fn every_fault_kind_renders_to_a_parsable_fault_of_that_kind() {
        let kinds = [
            (Kind::Crash { restart_after_ms: Some(40_000) }, "crash"),
            (Kind::Crash { restart_after_ms: None }, "crash"),
            (Kind::Partition { other: Some(4), one_way: true }, "partition"),
            (Kind::Partition { other: Some(0), one_way: false }, "partition"),
            (Kind::Clog, "clog"),
            (Kind::Latency { min_ms: 255, spread_ms: 255 }, "latency"),
            (Kind::Loss { percent: 255 }, "loss"),
            (Kind::Pause, "pause"),
            (Kind::FailWrites, "fail_writes"),
            (Kind::FailFsyncs, "fail_fsyncs"),
            (Kind::SlowWrites { delay_ms: 0 }, "slow_writes"),
            (Kind::BlobFailPuts, "blob_fail_puts"),
            (Kind::BlobSlowPuts { delay_ms: 255 }, "blob_slow_puts"),
        ];
        let knobs = input_from(&[0; 64]).knobs;
        for (kind, name) in kinds {
            let fault = FuzzFault { when: When::At { at_ms: u16::MAX }, kind, node: 0, duration_ms: u16::MAX };
            let input = ScheduleInput { faults: vec![fault], knobs: knobs.clone() };
            let (scenario, _) = input.world().unwrap_or_else(|e| panic!("{name}: {e}"));
            let f = &scenario.faults[0];
            assert_eq!(f.kind.name(), name);
            assert!(matches!(f.trigger, Trigger::At { at_ms } if at_ms <= FAULT_AT_MS_MAX));
            assert!(f.duration_ms.is_none_or(|d| (1..=FAULT_DURATION_MS_MAX).contains(&d)), "{f:?}");
            if let FaultKind::Crash { restart_after_ms: Some(ms) } = f.kind {
                assert!(ms <= FAULT_DURATION_MS_MAX);
            }
        }
    }

    #[test]
    fn at_most_the_fault_limit_is_rendered() {
        let fault = FuzzFault { when: When::At { at_ms: 1 }, kind: Kind::Clog, node: 3, duration_ms: 5 };
        let input = ScheduleInput { faults: vec![fault; 3 * FAULTS_PER_INPUT_MAX], knobs: input_from(&[]).knobs };
        assert_eq!(input.world().unwrap().0.faults.len(), FAULTS_PER_INPUT_MAX);
    }

    #[test]
    fn without_a_cluster_a_run_is_skipped() {
        // Until `run_world` is wired to the cluster it answers `ClusterUnavailable`; once it is,
        // a calm one-line world must pass every checker.
        let mut input = input_from(&[]);
        input.knobs.lines = 0;
        assert!(matches!(run(&input), Outcome::Skipped | Outcome::Passed), "{:?}", run(&input));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_input_renders_to_a_small_valid_world(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let input = input_from(&bytes);
            let (scenario, world) = input.world().map_err(TestCaseError::fail)?;
            prop_assert_eq!(world.seed, input.seed());
            prop_assert!(world.workload.lines <= LINES_MAX);
            prop_assert!(u64::from(world.parallelism) <= PARALLELISM_MAX);
            prop_assert!(world.parallelism <= world.task_managers * world.slots_per_tm);
            prop_assert!(world.parallelism <= world.max_parallelism);
            prop_assert_eq!(scenario.faults.len(), input.faults.len().min(FAULTS_PER_INPUT_MAX));
            prop_assert_eq!(world.checkpoint_mode.name(), "exactly-once");
            prop_assert_eq!(world.sink_mode.name(), "transactional");
            // The text is the reproduction: rendering is deterministic.
            prop_assert_eq!(input.to_scenario_toml(), input.clone().to_scenario_toml());
        }
    }
}
