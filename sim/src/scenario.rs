//! Scenario files (TOML) and the swarm: a scenario names a job, its workload, the cluster shape,
//! the checkpoint settings, the sink, the network, a fault schedule (explicit, event-triggered or
//! drawn from the seed), its seeds and what is expected. **Whatever it leaves open is drawn from
//! the seed** ([`Scenario::resolve`], `rand_chacha` seeded from the run's seed), in the style of
//! TigerBeetle's VOPR swarm testing; the result is a fully determined [`WorldConfig`].
//!
//! ```toml
//! name = "crash-during-alignment"
//! description = "a task manager dies while checkpoint 3 is aligning"
//! job = "word-count"                      # word-count | two-shuffle
//! seeds = "0..20"                         # or [1, 2, 3]
//! [workload]   lines, words_per_line, vocabulary, skew (zipf exponent), partitions
//! [cluster]    task_managers, slots_per_tm, parallelism, max_parallelism, heartbeat_timeout_ms
//! [checkpoint] interval_ms, timeout_ms, min_pause_ms, max_concurrent, tolerable_failures,
//!              mode = "exactly-once" | "at-least-once"
//! [sink]       mode = "transactional" | "plain"
//! [broker]     transaction_timeout_ms
//! [network]    latency_ms = [1, 10], packet_loss = 0.0
//! [[fault]]    at_ms = 500 | on = "checkpoint_aligning" (checkpoint = 3, subtask = 1, after_ms = 0)
//!              kind = "crash" (restart_after_ms) | "partition" (others, one_way) | "clog"
//!                   | "latency" (latency_ms) | "loss" (rate) | "pause" | "fail_writes"
//!                   | "fail_fsyncs" | "slow_writes" (delay_ms) | "blob_fail_puts" | "blob_slow_puts" (delay_ms)
//!              node = "tm1" | nodes = ["jm", "tm0", "tm1", "broker", "blob"], duration_ms
//! [faults]     random = true, rate_per_sec, kinds = [...], window_ms = [a, b], duration_ms = [a, b]
//!              (a share of the random faults is placed at protocol moments: see
//!              [`RANDOM_EVENT_TRIGGERED_SHARE`])
//! [expect]     verdict = "pass" | fail = ["exactly_once"], liveness_bound_ms
//! ```
//!
//! Bad input is an error naming the file, the line and the field (from the TOML parser's spans),
//! and for an unknown job, node, fault kind, mode or field, the valid ones. It never panics.

use crate::checkers::CHECKS;
use crate::oracle::JobKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Most seeds a range may name.
pub const SEEDS_MAX: u64 = 100_000_000;
/// Most explicit faults a scenario may list.
pub const FAULTS_MAX: usize = 1_000;
/// Most task managers a world may have.
pub const TASK_MANAGERS_MAX: u32 = 64;
/// Most input lines a workload may have.
pub const WORKLOAD_LINES_MAX: u64 = 10_000_000;
/// Most random faults drawn for one run.
pub const RANDOM_FAULTS_MAX: u64 = 200;
/// The share of random faults placed at a protocol moment (a checkpoint aligning or completing,
/// a sink prepared, a restore begun) instead of at a random time — FoundationDB's BUGGIFY idea:
/// the moments where bugs hide are too brief for uniformly timed faults to hit often.
pub const RANDOM_EVENT_TRIGGERED_SHARE: f64 = 0.3;
/// Latest delay after its event for an event-placed random fault, ms.
pub const RANDOM_EVENT_AFTER_MS_MAX: u64 = 30;

/// Why a scenario could not be loaded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("{file}:{line}:{column}: invalid TOML: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A field is missing, of the wrong type, out of range or unknown.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Field {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The field's dotted path (`workload.skew`, `fault[1].node`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No scenario of that name.
    #[error("no scenario named '{name}' (looked for {name}.toml under {dir}); `floe list` shows the catalog")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The catalog directory searched.
        dir: String,
    },
    /// A command-line value is invalid.
    #[error("{0}")]
    Argument(String),
}

/// A cluster node, by name: `jm`, `tm0`, `tm1`, …, `broker`, `blob`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum NodeName {
    /// The job manager.
    Jm,
    /// Task manager `i`.
    Tm(u32),
    /// The broker.
    Broker,
    /// The blob store.
    Blob,
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeName::Jm => f.write_str("jm"),
            NodeName::Tm(i) => write!(f, "tm{i}"),
            NodeName::Broker => f.write_str("broker"),
            NodeName::Blob => f.write_str("blob"),
        }
    }
}

impl NodeName {
    /// Parses `jm`, `tmN`, `broker`, `blob`.
    pub fn parse(s: &str) -> Option<NodeName> {
        match s {
            "jm" => Some(NodeName::Jm),
            "broker" => Some(NodeName::Broker),
            "blob" => Some(NodeName::Blob),
            _ => {
                let digits = s.strip_prefix("tm")?;
                if digits.is_empty()
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || (digits.len() > 1 && digits.starts_with('0'))
                {
                    return None;
                }
                digits.parse().ok().filter(|i| *i < TASK_MANAGERS_MAX).map(NodeName::Tm)
            }
        }
    }

    /// The valid names for a cluster of `task_managers` (or of any size).
    pub fn valid_names(task_managers: Option<u32>) -> String {
        let tms = match task_managers {
            Some(0) => String::new(),
            Some(1) => "tm0, ".into(),
            Some(n) => format!("tm0..tm{}, ", n - 1),
            None => "tm0, tm1, …, ".into(),
        };
        format!("jm, {tms}broker, blob")
    }
}

/// Checkpointing mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CheckpointMode {
    /// Aligned barriers.
    ExactlyOnce,
    /// Barriers tracked, channels never blocked (the positive control).
    AtLeastOnce,
}

impl CheckpointMode {
    /// The names, in order.
    pub const NAMES: [(&'static str, CheckpointMode); 2] =
        [("exactly-once", CheckpointMode::ExactlyOnce), ("at-least-once", CheckpointMode::AtLeastOnce)];
    /// The scenario/CLI name.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, m)| *m == self).map_or("", |(n, _)| n)
    }
}

/// Sink mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SinkMode {
    /// Two-phase commit through broker transactions.
    Transactional,
    /// Plain writes (the positive control).
    Plain,
}

impl SinkMode {
    /// The names, in order.
    pub const NAMES: [(&'static str, SinkMode); 2] =
        [("transactional", SinkMode::Transactional), ("plain", SinkMode::Plain)];
    /// The scenario/CLI name.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, m)| *m == self).map_or("", |(n, _)| n)
    }
}

fn by_name<T: Copy>(names: &[(&'static str, T)], s: &str) -> Result<T, String> {
    names.iter().find(|(n, _)| *n == s).map(|(_, v)| *v).ok_or_else(|| {
        format!("unknown value '{s}'; valid values: {}", names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))
    })
}

/// Parses a `--checkpointing` value.
pub fn parse_checkpoint_mode(s: &str) -> Result<CheckpointMode, String> {
    by_name(&CheckpointMode::NAMES, s)
}

/// Parses a `--sink` value.
pub fn parse_sink_mode(s: &str) -> Result<SinkMode, String> {
    by_name(&SinkMode::NAMES, s)
}

/// A protocol event a fault can fire on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TriggerEvent {
    /// A subtask began aligning a checkpoint's barrier.
    CheckpointAligning,
    /// The job manager completed a checkpoint.
    CheckpointCompleted,
    /// A sink prepared its transaction.
    SinkPrepared,
    /// A subtask began restoring.
    RestoreBegun,
}

impl TriggerEvent {
    /// The names, in order (they are the trace event names).
    pub const NAMES: [(&'static str, TriggerEvent); 4] = [
        ("checkpoint_aligning", TriggerEvent::CheckpointAligning),
        ("checkpoint_completed", TriggerEvent::CheckpointCompleted),
        ("sink_prepared", TriggerEvent::SinkPrepared),
        ("restore_begun", TriggerEvent::RestoreBegun),
    ];
    /// The name.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, m)| *m == self).map_or("", |(n, _)| n)
    }
}

/// When a fault fires.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Trigger {
    /// At a virtual time (ms since the run's start).
    At {
        /// When.
        at_ms: u64,
    },
    /// On the first matching protocol event (then `after_ms` later).
    On {
        /// The event.
        event: TriggerEvent,
        /// Only for this checkpoint.
        checkpoint: Option<u64>,
        /// Only for this subtask index.
        subtask: Option<u32>,
        /// Delay after the event.
        after_ms: u64,
    },
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FaultKind {
    /// Kill the nodes; restart them after `restart_after_ms` (else when the schedule heals).
    Crash {
        /// Down time.
        restart_after_ms: Option<u64>,
    },
    /// Cut `nodes` from `others` (everything else when empty); `one_way`: only `nodes → others`.
    Partition {
        /// The other side.
        others: Vec<NodeName>,
        /// Only one direction.
        one_way: bool,
    },
    /// Clog the nodes (nothing in or out).
    Clog,
    /// Change the network latency range.
    Latency {
        /// Least latency.
        min_ms: u64,
        /// Most latency.
        max_ms: u64,
    },
    /// Change the packet loss rate.
    Loss {
        /// Loss rate in [0, 1).
        rate: f64,
    },
    /// Pause the nodes.
    Pause,
    /// The nodes' disks fail writes.
    FailWrites,
    /// The nodes' disks fail fsyncs.
    FailFsyncs,
    /// The nodes' disks are slow.
    SlowWrites {
        /// Added per write.
        delay_ms: u64,
    },
    /// The blob store fails puts.
    BlobFailPuts,
    /// The blob store is slow to put.
    BlobSlowPuts {
        /// Added per put.
        delay_ms: u64,
    },
}

/// The fault kind names, in order.
pub const FAULT_KINDS: [&str; 11] = [
    "crash",
    "partition",
    "clog",
    "latency",
    "loss",
    "pause",
    "fail_writes",
    "fail_fsyncs",
    "slow_writes",
    "blob_fail_puts",
    "blob_slow_puts",
];

impl FaultKind {
    /// The kind's name.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Crash { .. } => "crash",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Clog => "clog",
            FaultKind::Latency { .. } => "latency",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Pause => "pause",
            FaultKind::FailWrites => "fail_writes",
            FaultKind::FailFsyncs => "fail_fsyncs",
            FaultKind::SlowWrites { .. } => "slow_writes",
            FaultKind::BlobFailPuts => "blob_fail_puts",
            FaultKind::BlobSlowPuts { .. } => "blob_slow_puts",
        }
    }
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultSpec {
    /// When it fires.
    pub trigger: Trigger,
    /// What it does.
    pub kind: FaultKind,
    /// The nodes it hits (empty for network-wide kinds).
    pub nodes: Vec<NodeName>,
    /// How long it lasts (`None`: a crash without restart delay, healed at the end of the schedule).
    pub duration_ms: Option<u64>,
}

/// Random faults drawn from the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RandomFaults {
    /// Faults per simulated second of the window.
    pub rate_per_sec: Option<f64>,
    /// The kinds to draw from (all when `None`).
    pub kinds: Option<Vec<String>>,
    /// The window faults start in, ms.
    pub window_ms: Option<(u64, u64)>,
    /// The range of durations, ms.
    pub duration_ms: Option<(u64, u64)>,
}

/// Seeds to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Seeds {
    /// These seeds.
    List(Vec<u64>),
    /// `start..end`.
    Range(Range<u64>),
}

impl Seeds {
    /// Every seed, in order.
    pub fn to_vec(&self) -> Vec<u64> {
        match self {
            Seeds::List(v) => v.clone(),
            Seeds::Range(r) => r.clone().collect(),
        }
    }

    /// The first seed, if any.
    pub fn first(&self) -> Option<u64> {
        match self {
            Seeds::List(v) => v.first().copied(),
            Seeds::Range(r) => (!r.is_empty()).then_some(r.start),
        }
    }

    /// Parses `A..B` (B excluded), `A..=B`, or a single `A`.
    pub fn parse(s: &str) -> Result<Seeds, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{s}' is not a seed range: want A..B (e.g. 0..100) or a number"))
        };
        let range = if let Some((a, b)) = s.split_once("..=") {
            num(a)?..num(b)?.checked_add(1).ok_or_else(|| format!("'{s}': end too large"))?
        } else if let Some((a, b)) = s.split_once("..") {
            num(a)?..num(b)?
        } else {
            let a = num(s)?;
            a..a.saturating_add(1)
        };
        if range.is_empty() {
            return Err(format!("'{s}' is an empty seed range"));
        }
        if range.end - range.start > SEEDS_MAX {
            return Err(format!("'{s}' names more than {SEEDS_MAX} seeds"));
        }
        Ok(Seeds::Range(range))
    }
}

/// What the scenario expects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Expect {
    /// Every check holds.
    Pass,
    /// These checks must fail (a positive control).
    Fail(Vec<String>),
}

/// A parsed scenario: what the file fixes; `None` is drawn from the seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    /// Name (the file stem when not given).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Where it was read from (`None` for an inline text).
    pub path: Option<PathBuf>,
    /// The job.
    pub job: JobKind,
    /// Input lines.
    pub lines: Option<u64>,
    /// Words per line.
    pub words_per_line: Option<u32>,
    /// Distinct words.
    pub vocabulary: Option<u32>,
    /// Zipf exponent of word frequencies (0: uniform).
    pub skew: Option<f64>,
    /// Input partitions.
    pub partitions: Option<u32>,
    /// Task managers.
    pub task_managers: Option<u32>,
    /// Slots per task manager.
    pub slots_per_tm: Option<u32>,
    /// Parallelism of every operator.
    pub parallelism: Option<u32>,
    /// Max parallelism (key groups).
    pub max_parallelism: Option<u32>,
    /// The job manager's heartbeat timeout.
    pub heartbeat_timeout_ms: Option<u64>,
    /// Checkpoint interval.
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoint timeout.
    pub checkpoint_timeout_ms: Option<u64>,
    /// Least pause between checkpoints.
    pub checkpoint_min_pause_ms: Option<u64>,
    /// Most concurrent checkpoints.
    pub checkpoint_max_concurrent: Option<u32>,
    /// Consecutive checkpoint failures tolerated.
    pub checkpoint_tolerable_failures: Option<u32>,
    /// Checkpointing mode (default exactly-once).
    pub checkpoint_mode: CheckpointMode,
    /// Sink mode (default transactional).
    pub sink_mode: SinkMode,
    /// The broker's transaction timeout.
    pub transaction_timeout_ms: Option<u64>,
    /// Network latency range.
    pub latency_ms: Option<(u64, u64)>,
    /// Packet loss rate.
    pub packet_loss: Option<f64>,
    /// Explicit faults.
    pub faults: Vec<FaultSpec>,
    /// Random faults, when enabled.
    pub random_faults: Option<RandomFaults>,
    /// Seeds to run.
    pub seeds: Seeds,
    /// The expected verdict.
    pub expect: Expect,
    /// The liveness bound after healing.
    pub liveness_bound_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// The spanned reader.

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = offset - before.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

struct Cx<'t> {
    file: String,
    text: &'t str,
}

impl Cx<'_> {
    fn err(&self, span: &Range<usize>, field: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Field {
            file: self.file.clone(),
            line: line_col(self.text, span.start).0,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

type V<'i> = Spanned<DeValue<'i>>;

struct Tbl<'c, 'a, 'i> {
    cx: &'c Cx<'c>,
    path: String,
    table: &'a DeTable<'i>,
    span: Range<usize>,
    valid: &'static [&'static str],
}

type R<T> = Result<T, ScenarioError>;

/// A string value and where it is in the file.
type Located<'a> = (&'a str, Range<usize>);

impl<'c, 'a, 'i> Tbl<'c, 'a, 'i> {
    fn new(cx: &'c Cx<'c>, path: String, value: &'a V<'i>, valid: &'static [&'static str]) -> R<Self> {
        match value.get_ref() {
            DeValue::Table(table) => {
                let t = Tbl { cx, path, table, span: value.span(), valid };
                t.check_keys()?;
                Ok(t)
            }
            other => Err(cx.err(&value.span(), &path, format!("expected a table, found {}", other.type_str()))),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn check_keys(&self) -> R<()> {
        for (k, _) in self.table.iter() {
            if !self.valid.contains(&k.get_ref().as_ref()) {
                return Err(self.cx.err(
                    &k.span(),
                    &self.field(k.get_ref()),
                    format!("unknown field; valid fields: {}", self.valid.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a V<'i>> {
        debug_assert!(self.valid.contains(&key), "{key} is read but not declared valid");
        self.table.get(key)
    }

    fn missing(&self, key: &str) -> ScenarioError {
        self.cx.err(&self.span, &self.field(key), "missing (required)")
    }

    fn type_err(&self, key: &str, v: &V<'_>, want: &str) -> ScenarioError {
        self.cx.err(&v.span(), &self.field(key), format!("expected {want}, found {}", v.get_ref().type_str()))
    }

    fn u64(&self, key: &str) -> R<Option<u64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).map(Some).map_err(|_| {
                self.cx.err(
                    &v.span(),
                    &self.field(key),
                    format!("expected a non-negative integer, found {}", i.as_str()),
                )
            }),
            _ => Err(self.type_err(key, v, "a non-negative integer")),
        }
    }

    fn u32(&self, key: &str) -> R<Option<u32>> {
        let Some(n) = self.u64(key)? else { return Ok(None) };
        u32::try_from(n).map(Some).map_err(|_| {
            self.cx.err(
                &self.get(key).map_or(self.span.clone(), |v| v.span()),
                &self.field(key),
                format!("{n} is too large (at most {})", u32::MAX),
            )
        })
    }

    fn f64(&self, key: &str) -> R<Option<f64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let text = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', ""),
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().to_string(),
            _ => return Err(self.type_err(key, v, "a number")),
        };
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| self.cx.err(&v.span(), &self.field(key), format!("expected a finite number, found {text}")))
    }

    fn bool(&self, key: &str) -> R<Option<bool>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.get_ref().as_bool().map(Some).ok_or_else(|| self.type_err(key, v, "true or false"))
    }

    fn str(&self, key: &str) -> R<Option<(&'a str, Range<usize>)>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.get_ref().as_str().map(|s| Some((s, v.span()))).ok_or_else(|| self.type_err(key, v, "a string"))
    }

    fn strs(&self, key: &str) -> R<Option<Vec<Located<'a>>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let Some(items) = v.get_ref().as_array() else { return Err(self.type_err(key, v, "an array of strings")) };
        items
            .iter()
            .map(|item| {
                item.get_ref().as_str().map(|s| (s, item.span())).ok_or_else(|| self.type_err(key, item, "a string"))
            })
            .collect::<R<Vec<_>>>()
            .map(Some)
    }

    fn pair(&self, key: &str) -> R<Option<(u64, u64)>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad = || self.cx.err(&v.span(), &self.field(key), "expected [low, high] with 0 <= low <= high");
        let Some(items) = v.get_ref().as_array() else { return Err(bad()) };
        let nums: Vec<u64> = items
            .iter()
            .filter_map(|i| i.get_ref().as_integer().and_then(|n| u64::from_str_radix(n.as_str(), n.radix()).ok()))
            .collect();
        match nums[..] {
            [a, b] if items.len() == 2 && a <= b => Ok(Some((a, b))),
            _ => Err(bad()),
        }
    }

    fn sub(&self, key: &str, valid: &'static [&'static str]) -> R<Option<Tbl<'c, 'a, 'i>>> {
        self.get(key).map(|v| Tbl::new(self.cx, self.field(key), v, valid)).transpose()
    }

    fn check(&self, key: &str, ok: bool, message: impl Into<String>) -> R<()> {
        if ok {
            return Ok(());
        }
        let span = self.get(key).map_or(self.span.clone(), |v| v.span());
        Err(self.cx.err(&span, &self.field(key), message))
    }
}

const ROOT_FIELDS: &[&str] = &[
    "name",
    "description",
    "job",
    "seeds",
    "workload",
    "cluster",
    "checkpoint",
    "sink",
    "broker",
    "network",
    "fault",
    "faults",
    "expect",
];
const WORKLOAD_FIELDS: &[&str] = &["lines", "words_per_line", "vocabulary", "skew", "partitions"];
const CLUSTER_FIELDS: &[&str] =
    &["task_managers", "slots_per_tm", "parallelism", "max_parallelism", "heartbeat_timeout_ms"];
const CHECKPOINT_FIELDS: &[&str] =
    &["interval_ms", "timeout_ms", "min_pause_ms", "max_concurrent", "tolerable_failures", "mode"];
const SINK_FIELDS: &[&str] = &["mode"];
const BROKER_FIELDS: &[&str] = &["transaction_timeout_ms"];
const NETWORK_FIELDS: &[&str] = &["latency_ms", "packet_loss"];
const FAULT_FIELDS: &[&str] = &[
    "at_ms",
    "on",
    "checkpoint",
    "subtask",
    "delay_ms",
    "kind",
    "node",
    "nodes",
    "others",
    "one_way",
    "duration_ms",
    "restart_after_ms",
    "latency_ms",
    "rate",
    "after_ms",
];
const FAULTS_FIELDS: &[&str] = &["random", "rate_per_sec", "kinds", "window_ms", "duration_ms"];
const EXPECT_FIELDS: &[&str] = &["verdict", "fail", "liveness_bound_ms"];

fn positive(t: &Tbl<'_, '_, '_>, key: &str, v: Option<u64>) -> R<()> {
    t.check(key, v != Some(0), "must be at least 1")
}

impl Scenario {
    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Io { file: file.clone(), reason: e.to_string() })?;
        let mut s = Scenario::parse(&file, &text)?;
        if s.name.is_empty() {
            s.name = path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        }
        s.path = Some(path.to_path_buf());
        Ok(s)
    }

    /// Parses a scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let cx = Cx { file: file.to_string(), text };
        let doc = DeTable::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ScenarioError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().replace('\n', "; "),
            }
        })?;
        let root_value: V<'_> = Spanned::new(0..0, DeValue::Table(doc.get_ref().clone()));
        let root = Tbl::new(&cx, String::new(), &root_value, ROOT_FIELDS)?;
        let name = root.str("name")?.map_or(String::new(), |(s, _)| s.to_string());
        let description = root.str("description")?.map_or(String::new(), |(s, _)| s.to_string());
        let job = match root.str("job")? {
            None => return Err(root.missing("job")),
            Some((s, span)) => s.parse::<JobKind>().map_err(|e| cx.err(&span, "job", e))?,
        };
        let seeds = match root.get("seeds") {
            None => Seeds::Range(0..1),
            Some(v) => match v.get_ref() {
                DeValue::String(s) => Seeds::parse(s).map_err(|e| cx.err(&v.span(), "seeds", e))?,
                DeValue::Array(items) => Seeds::List(
                    items
                        .iter()
                        .map(|i| {
                            i.get_ref()
                                .as_integer()
                                .and_then(|n| u64::from_str_radix(n.as_str(), n.radix()).ok())
                                .ok_or_else(|| cx.err(&i.span(), "seeds", "expected a non-negative integer seed"))
                        })
                        .collect::<R<Vec<_>>>()?,
                ),
                DeValue::Integer(_) => Seeds::List(vec![root.u64("seeds")?.unwrap_or(0)]),
                _ => return Err(root.type_err("seeds", v, "a seed list [1, 2] or a range \"0..100\"")),
            },
        };
        let mut s = Scenario {
            name,
            description,
            path: None,
            job,
            lines: None,
            words_per_line: None,
            vocabulary: None,
            skew: None,
            partitions: None,
            task_managers: None,
            slots_per_tm: None,
            parallelism: None,
            max_parallelism: None,
            heartbeat_timeout_ms: None,
            checkpoint_interval_ms: None,
            checkpoint_timeout_ms: None,
            checkpoint_min_pause_ms: None,
            checkpoint_max_concurrent: None,
            checkpoint_tolerable_failures: None,
            checkpoint_mode: CheckpointMode::ExactlyOnce,
            sink_mode: SinkMode::Transactional,
            transaction_timeout_ms: None,
            latency_ms: None,
            packet_loss: None,
            faults: Vec::new(),
            random_faults: None,
            seeds,
            expect: Expect::Pass,
            liveness_bound_ms: crate::checkers::CheckConfig::default().liveness_bound_ms,
        };
        if let Some(w) = root.sub("workload", WORKLOAD_FIELDS)? {
            s.lines = w.u64("lines")?;
            w.check(
                "lines",
                s.lines.is_none_or(|n| (1..=WORKLOAD_LINES_MAX).contains(&n)),
                format!("must be in 1..={WORKLOAD_LINES_MAX}"),
            )?;
            s.words_per_line = w.u32("words_per_line")?;
            positive(&w, "words_per_line", s.words_per_line.map(u64::from))?;
            s.vocabulary = w.u32("vocabulary")?;
            positive(&w, "vocabulary", s.vocabulary.map(u64::from))?;
            s.skew = w.f64("skew")?;
            w.check(
                "skew",
                s.skew.is_none_or(|k| (0.0..=10.0).contains(&k)),
                "must be in 0.0..=10.0 (a zipf exponent)",
            )?;
            s.partitions = w.u32("partitions")?;
            w.check("partitions", s.partitions.is_none_or(|p| (1..=256).contains(&p)), "must be in 1..=256")?;
        }
        if let Some(c) = root.sub("cluster", CLUSTER_FIELDS)? {
            s.task_managers = c.u32("task_managers")?;
            c.check(
                "task_managers",
                s.task_managers.is_none_or(|n| (1..=TASK_MANAGERS_MAX).contains(&n)),
                format!("must be in 1..={TASK_MANAGERS_MAX}"),
            )?;
            s.slots_per_tm = c.u32("slots_per_tm")?;
            positive(&c, "slots_per_tm", s.slots_per_tm.map(u64::from))?;
            s.parallelism = c.u32("parallelism")?;
            positive(&c, "parallelism", s.parallelism.map(u64::from))?;
            s.max_parallelism = c.u32("max_parallelism")?;
            c.check(
                "max_parallelism",
                s.max_parallelism.is_none_or(|m| (1..=32_768).contains(&m)),
                "must be in 1..=32768 (Flink's bound)",
            )?;
            if let (Some(p), Some(m)) = (s.parallelism, s.max_parallelism) {
                c.check("parallelism", p <= m, format!("{p} is more than max_parallelism {m}"))?;
            }
            if let (Some(p), Some(t), Some(k)) = (s.parallelism, s.task_managers, s.slots_per_tm) {
                c.check(
                    "parallelism",
                    u64::from(p) <= u64::from(t) * u64::from(k),
                    format!("{p} needs more slots than {t} task managers × {k} slots"),
                )?;
            }
            s.heartbeat_timeout_ms = c.u64("heartbeat_timeout_ms")?;
            positive(&c, "heartbeat_timeout_ms", s.heartbeat_timeout_ms)?;
        }
        if let Some(c) = root.sub("checkpoint", CHECKPOINT_FIELDS)? {
            s.checkpoint_interval_ms = c.u64("interval_ms")?;
            positive(&c, "interval_ms", s.checkpoint_interval_ms)?;
            s.checkpoint_timeout_ms = c.u64("timeout_ms")?;
            positive(&c, "timeout_ms", s.checkpoint_timeout_ms)?;
            s.checkpoint_min_pause_ms = c.u64("min_pause_ms")?;
            s.checkpoint_max_concurrent = c.u32("max_concurrent")?;
            positive(&c, "max_concurrent", s.checkpoint_max_concurrent.map(u64::from))?;
            s.checkpoint_tolerable_failures = c.u32("tolerable_failures")?;
            if let Some((m, span)) = c.str("mode")? {
                s.checkpoint_mode = parse_checkpoint_mode(m).map_err(|e| cx.err(&span, "checkpoint.mode", e))?;
            }
        }
        if let Some(k) = root.sub("sink", SINK_FIELDS)? {
            if let Some((m, span)) = k.str("mode")? {
                s.sink_mode = parse_sink_mode(m).map_err(|e| cx.err(&span, "sink.mode", e))?;
            }
        }
        if let Some(b) = root.sub("broker", BROKER_FIELDS)? {
            s.transaction_timeout_ms = b.u64("transaction_timeout_ms")?;
            positive(&b, "transaction_timeout_ms", s.transaction_timeout_ms)?;
        }
        if let Some(n) = root.sub("network", NETWORK_FIELDS)? {
            s.latency_ms = n.pair("latency_ms")?;
            s.packet_loss = n.f64("packet_loss")?;
            n.check("packet_loss", s.packet_loss.is_none_or(|l| (0.0..1.0).contains(&l)), "must be in [0.0, 1.0)")?;
        }
        if let Some(v) = root.get("fault") {
            let Some(items) = v.get_ref().as_array() else {
                return Err(root.type_err("fault", v, "an array of tables ([[fault]])"));
            };
            root.check("fault", items.len() <= FAULTS_MAX, format!("at most {FAULTS_MAX} faults"))?;
            for (i, item) in items.iter().enumerate() {
                let f = Tbl::new(&cx, format!("fault[{i}]"), item, FAULT_FIELDS)?;
                s.faults.push(parse_fault(&f, s.task_managers)?);
            }
        }
        if let Some(f) = root.sub("faults", FAULTS_FIELDS)? {
            if f.bool("random")?.unwrap_or(false) {
                let rate_per_sec = f.f64("rate_per_sec")?;
                f.check(
                    "rate_per_sec",
                    rate_per_sec.is_none_or(|r| (0.0..=100.0).contains(&r)),
                    "must be in 0.0..=100.0",
                )?;
                let kinds = f
                    .strs("kinds")?
                    .map(|ks| {
                        ks.into_iter()
                            .map(|(k, span)| {
                                if FAULT_KINDS.contains(&k) {
                                    Ok(k.to_string())
                                } else {
                                    Err(cx.err(
                                        &span,
                                        "faults.kinds",
                                        format!("unknown fault kind '{k}'; valid kinds: {}", FAULT_KINDS.join(", ")),
                                    ))
                                }
                            })
                            .collect::<R<Vec<_>>>()
                    })
                    .transpose()?;
                f.check("kinds", kinds.as_ref().is_none_or(|k| !k.is_empty()), "must name at least one kind")?;
                s.random_faults = Some(RandomFaults {
                    rate_per_sec,
                    kinds,
                    window_ms: f.pair("window_ms")?,
                    duration_ms: f.pair("duration_ms")?,
                });
            } else {
                for key in ["rate_per_sec", "kinds", "window_ms", "duration_ms"] {
                    f.check(key, f.get(key).is_none(), "random faults are off: set `random = true`")?;
                }
            }
        }
        if let Some(e) = root.sub("expect", EXPECT_FIELDS)? {
            let verdict = e.str("verdict")?;
            let fail = e.strs("fail")?;
            s.expect = match (verdict, fail) {
                (Some((_, span)), Some(_)) => return Err(cx.err(&span, "expect.verdict", "give either `verdict = \"pass\"` or `fail = [...]`, not both")),
                (Some(("pass", _)), None) | (None, None) => Expect::Pass,
                (Some((v, span)), None) => return Err(cx.err(&span, "expect.verdict", format!("unknown verdict '{v}'; valid: pass (a positive control lists its failing checks: fail = [\"exactly_once\"])"))),
                (None, Some(checks)) => {
                    e.check("fail", !checks.is_empty(), "must name at least one check")?;
                    Expect::Fail(checks.into_iter().map(|(c, span)| if CHECKS.contains(&c) { Ok(c.to_string()) } else { Err(cx.err(&span, "expect.fail", format!("unknown check '{c}'; valid checks: {}", CHECKS.join(", ")))) }).collect::<R<Vec<_>>>()?)
                }
            };
            if let Some(b) = e.u64("liveness_bound_ms")? {
                positive(&e, "liveness_bound_ms", Some(b))?;
                s.liveness_bound_ms = b;
            }
        }
        Ok(s)
    }
}

fn parse_node(t: &Tbl<'_, '_, '_>, key: &str, s: &str, span: &Range<usize>, task_managers: Option<u32>) -> R<NodeName> {
    let node = NodeName::parse(s).ok_or_else(|| {
        t.cx.err(
            span,
            &t.field(key),
            format!("unknown node '{s}'; valid nodes: {}", NodeName::valid_names(task_managers)),
        )
    })?;
    if let (NodeName::Tm(i), Some(n)) = (node, task_managers) {
        if i >= n {
            return Err(t.cx.err(
                span,
                &t.field(key),
                format!(
                    "unknown node '{s}': the cluster has {n} task managers; valid nodes: {}",
                    NodeName::valid_names(task_managers)
                ),
            ));
        }
    }
    Ok(node)
}

fn parse_fault(f: &Tbl<'_, '_, '_>, task_managers: Option<u32>) -> R<FaultSpec> {
    let trigger = match (f.u64("at_ms")?, f.str("on")?) {
        (Some(_), Some((_, span))) => {
            return Err(f.cx.err(&span, &f.field("on"), "give either `at_ms` or `on`, not both"))
        }
        (None, None) => {
            return Err(f.cx.err(
                &f.span,
                &f.field("at_ms"),
                "missing: a fault needs `at_ms = <ms>` or `on = \"<event>\"`",
            ))
        }
        (Some(at_ms), None) => {
            for key in ["checkpoint", "subtask", "after_ms"] {
                f.check(key, f.get(key).is_none(), "only for event triggers (`on = ...`)")?;
            }
            Trigger::At { at_ms }
        }
        (None, Some((on, span))) => Trigger::On {
            event: by_name(&TriggerEvent::NAMES, on)
                .map_err(|e| f.cx.err(&span, &f.field("on"), e.replace("valid values", "valid events")))?,
            checkpoint: f.u64("checkpoint")?,
            subtask: f.u32("subtask")?,
            after_ms: f.u64("after_ms")?.unwrap_or(0),
        },
    };
    let kind_name = match f.str("kind")? {
        None => return Err(f.missing("kind")),
        Some((k, span)) => {
            if !FAULT_KINDS.contains(&k) {
                return Err(f.cx.err(
                    &span,
                    &f.field("kind"),
                    format!("unknown fault kind '{k}'; valid kinds: {}", FAULT_KINDS.join(", ")),
                ));
            }
            k
        }
    };
    let mut nodes = Vec::new();
    match (f.str("node")?, f.strs("nodes")?) {
        (Some(_), Some(_)) => {
            return Err(f.cx.err(
                &f.get("nodes").map_or(f.span.clone(), |v| v.span()),
                &f.field("nodes"),
                "give either `node` or `nodes`, not both",
            ))
        }
        (Some((n, span)), None) => nodes.push(parse_node(f, "node", n, &span, task_managers)?),
        (None, Some(list)) => {
            for (n, span) in list {
                nodes.push(parse_node(f, "nodes", n, &span, task_managers)?);
            }
        }
        (None, None) => {}
    }
    let duration_ms = f.u64("duration_ms")?;
    let delay = f.u64("delay_ms")?;
    // Kind-specific fields, and which kinds need nodes / a duration.
    let allowed: &[&str] = match kind_name {
        "crash" => &["restart_after_ms"],
        "partition" => &["others", "one_way"],
        "latency" => &["latency_ms"],
        "loss" => &["rate"],
        "slow_writes" | "blob_slow_puts" => &["delay_ms"],
        _ => &[],
    };
    for key in ["restart_after_ms", "others", "one_way", "latency_ms", "rate"] {
        f.check(key, allowed.contains(&key) || f.get(key).is_none(), format!("not a field of a `{kind_name}` fault"))?;
    }
    f.check(
        "delay_ms",
        allowed.contains(&"delay_ms") || delay.is_none(),
        format!("not a field of a `{kind_name}` fault"),
    )?;
    finish_fault(f, trigger, kind_name, nodes, duration_ms, delay, task_managers)
}

fn finish_fault(
    f: &Tbl<'_, '_, '_>,
    trigger: Trigger,
    kind_name: &str,
    mut nodes: Vec<NodeName>,
    duration_ms: Option<u64>,
    delay: Option<u64>,
    task_managers: Option<u32>,
) -> R<FaultSpec> {
    let kind = match kind_name {
        "crash" => FaultKind::Crash { restart_after_ms: f.u64("restart_after_ms")? },
        "partition" => {
            let mut others = Vec::new();
            for (n, span) in f.strs("others")?.unwrap_or_default() {
                others.push(parse_node(f, "others", n, &span, task_managers)?);
            }
            let overlap = others.iter().any(|o| nodes.contains(o));
            f.check("others", !overlap, "a node cannot be on both sides of a partition")?;
            FaultKind::Partition { others, one_way: f.bool("one_way")?.unwrap_or(false) }
        }
        "clog" => FaultKind::Clog,
        "latency" => {
            let (min_ms, max_ms) = f.pair("latency_ms")?.ok_or_else(|| f.missing("latency_ms"))?;
            FaultKind::Latency { min_ms, max_ms }
        }
        "loss" => {
            let rate = f.f64("rate")?.ok_or_else(|| f.missing("rate"))?;
            f.check("rate", (0.0..1.0).contains(&rate), "must be in [0.0, 1.0)")?;
            FaultKind::Loss { rate }
        }
        "pause" => FaultKind::Pause,
        "fail_writes" => FaultKind::FailWrites,
        "fail_fsyncs" => FaultKind::FailFsyncs,
        "slow_writes" => FaultKind::SlowWrites { delay_ms: delay.ok_or_else(|| f.missing("delay_ms"))? },
        "blob_fail_puts" => FaultKind::BlobFailPuts,
        "blob_slow_puts" => FaultKind::BlobSlowPuts { delay_ms: delay.ok_or_else(|| f.missing("delay_ms"))? },
        other => {
            return Err(f.cx.err(
                &f.span,
                &f.field("kind"),
                format!("unknown fault kind '{other}'; valid kinds: {}", FAULT_KINDS.join(", ")),
            ))
        }
    };
    let network_wide = matches!(kind, FaultKind::Latency { .. } | FaultKind::Loss { .. });
    let node_key = if f.get("nodes").is_some() { "nodes" } else { "node" };
    if network_wide {
        f.check(node_key, nodes.is_empty(), format!("a `{kind_name}` fault is network-wide: it takes no nodes"))?;
    } else if matches!(kind, FaultKind::BlobFailPuts | FaultKind::BlobSlowPuts { .. }) {
        f.check(
            node_key,
            nodes.iter().all(|n| *n == NodeName::Blob),
            format!("a `{kind_name}` fault hits the blob store only: node = \"blob\""),
        )?;
        nodes = vec![NodeName::Blob];
    } else {
        f.check(
            node_key,
            !nodes.is_empty(),
            format!(
                "a `{kind_name}` fault needs `node = \"...\"` or `nodes = [...]`; valid nodes: {}",
                NodeName::valid_names(task_managers)
            ),
        )?;
        if matches!(kind, FaultKind::FailWrites | FaultKind::FailFsyncs | FaultKind::SlowWrites { .. }) {
            f.check(
                node_key,
                nodes.iter().all(|n| matches!(n, NodeName::Broker | NodeName::Blob)),
                format!("a `{kind_name}` fault hits a disk: only broker and blob have one"),
            )?;
        }
    }
    let needs_duration = !matches!(kind, FaultKind::Crash { .. });
    if needs_duration && duration_ms.is_none() {
        return Err(f.missing("duration_ms"));
    }
    if !needs_duration {
        f.check("duration_ms", duration_ms.is_none(), "a crash lasts `restart_after_ms`, not `duration_ms`")?;
    }
    Ok(FaultSpec { trigger, kind, nodes, duration_ms })
}

// ---------------------------------------------------------------------------------------------
// The swarm.

/// Options given on the command line that override the scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    /// `--checkpointing`.
    pub checkpointing: Option<CheckpointMode>,
    /// `--sink`.
    pub sink: Option<SinkMode>,
}

impl Overrides {
    /// The flags that reproduce these overrides (` --checkpointing at-least-once`...).
    pub fn flags(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.checkpointing {
            s.push_str(&format!(" --checkpointing {}", m.name()));
        }
        if let Some(m) = self.sink {
            s.push_str(&format!(" --sink {}", m.name()));
        }
        s
    }
}

/// The workload, fully drawn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    /// Input lines.
    pub lines: u64,
    /// Words per line.
    pub words_per_line: u32,
    /// Distinct words.
    pub vocabulary: u32,
    /// Zipf exponent.
    pub skew: f64,
    /// Input partitions.
    pub partitions: u32,
}

/// A fully determined world: the scenario with everything it left open drawn from the seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorldConfig {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The job.
    pub job: JobKind,
    /// The workload.
    pub workload: Workload,
    /// Task managers.
    pub task_managers: u32,
    /// Slots per task manager.
    pub slots_per_tm: u32,
    /// Parallelism.
    pub parallelism: u32,
    /// Max parallelism.
    pub max_parallelism: u32,
    /// Heartbeat timeout.
    pub heartbeat_timeout_ms: u64,
    /// Checkpoint interval.
    pub checkpoint_interval_ms: u64,
    /// Checkpoint timeout.
    pub checkpoint_timeout_ms: u64,
    /// Least pause between checkpoints.
    pub checkpoint_min_pause_ms: u64,
    /// Most concurrent checkpoints.
    pub checkpoint_max_concurrent: u32,
    /// Tolerable checkpoint failures.
    pub checkpoint_tolerable_failures: u32,
    /// Checkpointing mode.
    pub checkpoint_mode: CheckpointMode,
    /// Sink mode.
    pub sink_mode: SinkMode,
    /// Broker transaction timeout.
    pub transaction_timeout_ms: u64,
    /// Network latency range.
    pub latency_ms: (u64, u64),
    /// Packet loss.
    pub packet_loss: f64,
    /// The fault schedule (explicit faults, then drawn ones, by trigger time).
    pub faults: Vec<FaultSpec>,
    /// The liveness bound after healing.
    pub liveness_bound_ms: u64,
    /// The overrides applied.
    pub overrides: Overrides,
}

/// The RNG streams of one seed: one per purpose, so adding a draw to one does not shift another.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Configuration draws.
    Config = 0,
    /// Workload lines.
    Workload = 1,
    /// Random faults.
    Faults = 2,
}

/// The seeded RNG of a stream.
pub fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream as u64);
    r
}

impl Scenario {
    /// Draws whatever the scenario leaves open from `seed`, applies the overrides.
    pub fn resolve(&self, seed: u64, overrides: Overrides) -> WorldConfig {
        let mut r = rng(seed, Stream::Config);
        let mut draw = |fixed: Option<u64>, lo: u64, hi: u64| fixed.unwrap_or_else(|| r.gen_range(lo..=hi));
        let lines = draw(self.lines, 100, 2_000);
        let words_per_line = draw(self.words_per_line.map(u64::from), 1, 12) as u32;
        let vocabulary = draw(self.vocabulary.map(u64::from), 10, 1_000) as u32;
        let partitions = draw(self.partitions.map(u64::from), 1, 4) as u32;
        // Faults may name task managers: the cluster has at least those.
        let named_tms = self.faults.iter().flat_map(|f| {
            f.nodes.iter().chain(match &f.kind {
                FaultKind::Partition { others, .. } => others.iter(),
                _ => [].iter(),
            })
        });
        let tms_min = named_tms
            .filter_map(|n| if let NodeName::Tm(i) = n { Some(u64::from(*i) + 1) } else { None })
            .max()
            .unwrap_or(1);
        let task_managers = draw(self.task_managers.map(u64::from), tms_min, tms_min.max(4)) as u32;
        let slots_per_tm = draw(self.slots_per_tm.map(u64::from), 1, 4) as u32;
        let slots = u64::from(task_managers) * u64::from(slots_per_tm);
        let max_parallelism_fixed = self.max_parallelism.map(u64::from);
        let parallelism = draw(
            self.parallelism.map(u64::from),
            1,
            slots.min(8).min(max_parallelism_fixed.unwrap_or(u64::MAX)).max(1),
        ) as u32;
        let max_parallelism = match self.max_parallelism {
            Some(m) => m,
            None => {
                let choices: Vec<u32> = [parallelism, 16, 32, 128].into_iter().filter(|m| *m >= parallelism).collect();
                choices[r.gen_range(0..choices.len())]
            }
        };
        let mut draw = |fixed: Option<u64>, lo: u64, hi: u64| fixed.unwrap_or_else(|| r.gen_range(lo..=hi));
        let heartbeat_timeout_ms = draw(self.heartbeat_timeout_ms, 500, 3_000);
        let checkpoint_interval_ms = draw(self.checkpoint_interval_ms, 50, 500);
        let checkpoint_timeout_ms = draw(self.checkpoint_timeout_ms, 1_000, 10_000);
        let checkpoint_min_pause_ms = draw(self.checkpoint_min_pause_ms, 0, 100);
        let checkpoint_max_concurrent = draw(self.checkpoint_max_concurrent.map(u64::from), 1, 2) as u32;
        let checkpoint_tolerable_failures = draw(self.checkpoint_tolerable_failures.map(u64::from), 0, 2) as u32;
        let transaction_timeout_ms = draw(self.transaction_timeout_ms, 30_000, 120_000);
        let latency_ms = self.latency_ms.unwrap_or_else(|| {
            let lo = r.gen_range(1..=5);
            (lo, lo + r.gen_range(0..=20))
        });
        let skew = self.skew.unwrap_or_else(|| (r.gen_range(0..=150) as f64) / 100.0);
        let packet_loss =
            self.packet_loss
                .unwrap_or_else(|| if r.gen_bool(0.5) { 0.0 } else { (r.gen_range(0..=10) as f64) / 100.0 });
        let mut faults = self.faults.clone();
        if let Some(random) = &self.random_faults {
            faults.extend(draw_random_faults(random, seed, task_managers));
        }
        WorldConfig {
            scenario: self.name.clone(),
            seed,
            job: self.job,
            workload: Workload { lines, words_per_line, vocabulary, skew, partitions },
            task_managers,
            slots_per_tm,
            parallelism,
            max_parallelism,
            heartbeat_timeout_ms,
            checkpoint_interval_ms,
            checkpoint_timeout_ms,
            checkpoint_min_pause_ms,
            checkpoint_max_concurrent,
            checkpoint_tolerable_failures,
            checkpoint_mode: overrides.checkpointing.unwrap_or(self.checkpoint_mode),
            sink_mode: overrides.sink.unwrap_or(self.sink_mode),
            transaction_timeout_ms,
            latency_ms,
            packet_loss,
            faults,
            liveness_bound_ms: self.liveness_bound_ms,
            overrides,
        }
    }

    /// The argument that names this scenario on the command line (its name when it is in the
    /// catalog, else its path).
    pub fn cli_arg(&self) -> String {
        match &self.path {
            Some(p)
                if find_in_catalog(&self.name).as_deref().map(Path::canonicalize).and_then(Result::ok)
                    == p.canonicalize().ok() =>
            {
                self.name.clone()
            }
            Some(p) => p.display().to_string(),
            None => self.name.clone(),
        }
    }
}

fn draw_random_faults(random: &RandomFaults, seed: u64, task_managers: u32) -> Vec<FaultSpec> {
    let mut r = rng(seed, Stream::Faults);
    let kinds: Vec<String> =
        random.kinds.clone().unwrap_or_else(|| FAULT_KINDS.iter().map(|k| k.to_string()).collect());
    let (start, end) = random.window_ms.unwrap_or((200, 200 + r.gen_range(1_000..=10_000)));
    let (dur_lo, dur_hi) = random.duration_ms.unwrap_or((50, r.gen_range(100..=3_000)));
    let rate = random.rate_per_sec.unwrap_or_else(|| (r.gen_range(1..=20) as f64) / 10.0);
    let expected = rate * (end - start) as f64 / 1000.0;
    let count = ((expected * (0.5 + r.gen::<f64>())).round() as u64).min(RANDOM_FAULTS_MAX);
    let all_nodes: Vec<NodeName> = [NodeName::Jm, NodeName::Broker, NodeName::Blob]
        .into_iter()
        .chain((0..task_managers).map(NodeName::Tm))
        .collect();
    let mut faults = Vec::new();
    for _ in 0..count {
        let at_ms = r.gen_range(start..=end);
        let duration = r.gen_range(dur_lo..=dur_hi);
        let kind_name = kinds[r.gen_range(0..kinds.len())].as_str();
        let pick = |r: &mut ChaCha8Rng, from: &[NodeName]| from[r.gen_range(0..from.len())];
        let (kind, nodes) = match kind_name {
            "crash" => (FaultKind::Crash { restart_after_ms: Some(duration) }, vec![pick(&mut r, &all_nodes)]),
            "partition" => {
                let n = pick(&mut r, &all_nodes);
                (FaultKind::Partition { others: vec![], one_way: r.gen_bool(0.3) }, vec![n])
            }
            "clog" => (FaultKind::Clog, vec![pick(&mut r, &all_nodes)]),
            "latency" => {
                let lo = r.gen_range(1..=50);
                (FaultKind::Latency { min_ms: lo, max_ms: lo + r.gen_range(0..=200) }, vec![])
            }
            "loss" => (FaultKind::Loss { rate: (r.gen_range(1..=30) as f64) / 100.0 }, vec![]),
            "pause" => (FaultKind::Pause, vec![pick(&mut r, &all_nodes)]),
            "fail_writes" => (FaultKind::FailWrites, vec![pick(&mut r, &[NodeName::Broker, NodeName::Blob])]),
            "fail_fsyncs" => (FaultKind::FailFsyncs, vec![pick(&mut r, &[NodeName::Broker, NodeName::Blob])]),
            "slow_writes" => (
                FaultKind::SlowWrites { delay_ms: r.gen_range(1..=100) },
                vec![pick(&mut r, &[NodeName::Broker, NodeName::Blob])],
            ),
            "blob_fail_puts" => (FaultKind::BlobFailPuts, vec![NodeName::Blob]),
            _ => (FaultKind::BlobSlowPuts { delay_ms: r.gen_range(1..=500) }, vec![NodeName::Blob]),
        };
        let duration_ms = (!matches!(kind, FaultKind::Crash { .. })).then_some(duration);
        let trigger = if r.gen_bool(RANDOM_EVENT_TRIGGERED_SHARE) {
            let (_, event) = TriggerEvent::NAMES[r.gen_range(0..TriggerEvent::NAMES.len())];
            let checkpoint = r.gen_bool(0.7).then(|| r.gen_range(1..=5));
            Trigger::On { event, checkpoint, subtask: None, after_ms: r.gen_range(0..=RANDOM_EVENT_AFTER_MS_MAX) }
        } else {
            Trigger::At { at_ms }
        };
        faults.push(FaultSpec { trigger, kind, nodes, duration_ms });
    }
    faults.sort_by_key(|f| match f.trigger {
        Trigger::At { at_ms } => at_ms,
        Trigger::On { .. } => 0,
    });
    faults
}

/// The workload's lines: words drawn from a zipf distribution over `w0 .. w{vocabulary-1}`
/// (exponent `skew`), with some capitals and punctuation so the tokenizer is exercised.
pub fn generate_lines(workload: &Workload, seed: u64) -> Vec<String> {
    let mut lines = Vec::with_capacity(workload.lines as usize);
    for_each_line(workload, seed, |_, line| lines.push(line));
    lines
}

/// The workload's lines already split round-robin over `partitions` (line `i` to partition
/// `i % partitions`): exactly `split_round_robin(generate_lines(workload, seed), partitions)`,
/// without the intermediate list.
pub fn generate_partitioned(workload: &Workload, seed: u64, partitions: u32) -> Vec<Vec<String>> {
    let n = partitions.max(1) as usize;
    let mut out: Vec<Vec<String>> = (0..n).map(|p| Vec::with_capacity((workload.lines as usize).saturating_sub(p).div_ceil(n))).collect();
    for_each_line(workload, seed, |i, line| out[i % n].push(line));
    out
}

/// Draws the workload's lines in order and hands each, with its index, to `emit`.
fn for_each_line(workload: &Workload, seed: u64, mut emit: impl FnMut(usize, String)) {
    let mut r = rng(seed, Stream::Workload);
    let zipf = Zipf::new(workload.vocabulary, workload.skew);
    // Each rank's digits, written once (formatting them per word was most of the generation).
    let ranks: Vec<String> = (0..zipf.ranks()).map(|k| k.to_string()).collect();
    const SEPARATORS: [&str; 5] = [" ", " ", " ", ", ", "! "];
    /// Bytes reserved per word of a line (a guess: it grows for long words).
    const LINE_BYTES_GUESS_PER_WORD: usize = 8;
    for i in 0..workload.lines as usize {
        let mut line = String::with_capacity(LINE_BYTES_GUESS_PER_WORD * workload.words_per_line as usize);
        for w in 0..workload.words_per_line {
            let k = zipf.rank(r.gen::<f64>());
            if w > 0 {
                line.push_str(SEPARATORS[r.gen_range(0..SEPARATORS.len())]);
            }
            line.push(if r.gen_bool(0.1) { 'W' } else { 'w' });
            line.push_str(&ranks[k]);
        }
        emit(i, line);
    }
}

/// Buckets of [`Zipf`]'s guide table: a power of two, so `u * ZIPF_GUIDE_BUCKETS` is exact.
const ZIPF_GUIDE_BUCKETS: usize = 1 << 14;

/// Zipf ranks by inversion of the cumulative weights (`P(rank k) ∝ 1 / (k+1)^skew`): the first
/// rank whose cumulative weight reaches `u * total`.
///
/// A guide table holds the rank of each bucket's lower edge `j / B`. The rank is monotone in `u`
/// and `u * B` is exact (`B` a power of two), so every `u` of bucket `j` has a rank in
/// `guide[j] ..= guide[j + 1]`: when the two are equal (most buckets) that is the rank, else a
/// binary search over that short range finds it. The answer is checked against its neighbours
/// and the whole table searched when the check fails, so it is always the plain search's answer.
struct Zipf {
    cumulative: Vec<f64>,
    total: f64,
    /// `guide[j]`: the rank for `u = j / ZIPF_GUIDE_BUCKETS` (the first rank of bucket `j`);
    /// `ZIPF_GUIDE_BUCKETS + 1` entries.
    guide: Vec<u32>,
}

impl Zipf {
    fn new(vocabulary: u32, skew: f64) -> Self {
        let mut cumulative = Vec::with_capacity(vocabulary as usize);
        let mut total = 0.0;
        for k in 0..vocabulary {
            total += 1.0 / f64::from(k + 1).powf(skew);
            cumulative.push(total);
        }
        let mut z = Zipf { cumulative, total, guide: Vec::new() };
        // Ranks are below `vocabulary: u32`, so they fit a u32.
        z.guide = (0..=ZIPF_GUIDE_BUCKETS).map(|j| z.search(j as f64 / ZIPF_GUIDE_BUCKETS as f64 * total, 0, z.cumulative.len()) as u32).collect();
        z
    }

    fn ranks(&self) -> usize {
        self.cumulative.len().max(1)
    }

    /// The first rank in `lo..hi` whose cumulative weight reaches `x` (`hi` if none).
    fn search(&self, x: f64, lo: usize, hi: usize) -> usize {
        lo + self.cumulative[lo..hi].partition_point(|c| *c < x)
    }

    /// The rank the guide table gives for `u` in `[0, 1)` (unchecked): `guide[j]` when bucket
    /// `j` holds one rank, else a search of `guide[j] ..= guide[j + 1]`.
    fn guided(&self, u: f64) -> usize {
        let x = u * self.total;
        let n = self.cumulative.len();
        let j = ((u * ZIPF_GUIDE_BUCKETS as f64) as usize).min(ZIPF_GUIDE_BUCKETS - 1);
        let (lo, hi) = (self.guide[j] as usize, self.guide[j + 1] as usize);
        if lo == hi {
            lo
        } else {
            self.search(x, lo.min(n), (hi + 1).min(n))
        }
    }

    /// The rank drawn by `u` in `[0, 1)`.
    fn rank(&self, u: f64) -> usize {
        let x = u * self.total;
        let n = self.cumulative.len();
        let mut k = self.guided(u);
        let first_reaching = (k == 0 || self.cumulative.get(k - 1).is_some_and(|c| *c < x)) && self.cumulative.get(k).is_none_or(|c| *c >= x);
        if !first_reaching {
            k = self.search(x, 0, n);
        }
        debug_assert_eq!(k, self.search(x, 0, n));
        k.min(n.saturating_sub(1))
    }
}

/// Splits lines round-robin over `partitions`, as the harness produces them.
pub fn split_round_robin(lines: Vec<String>, partitions: u32) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); partitions.max(1) as usize];
    let n = out.len();
    for (i, line) in lines.into_iter().enumerate() {
        out[i % n].push(line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The catalog.

/// The scenario catalog directory: `$FLOE_SCENARIOS`, else the nearest `scenarios/` from the
/// current directory up, else the one in this source tree.
pub fn catalog_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLOE_SCENARIOS") {
        return PathBuf::from(d);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join("scenarios");
            if candidate.is_dir() {
                return candidate;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// Every `.toml` under `dir`, sorted, at most `SCENARIO_FILES_MAX`.
pub fn catalog_files(dir: &Path) -> Vec<PathBuf> {
    const SCENARIO_FILES_MAX: usize = 10_000;
    const DEPTH_MAX: usize = 8;
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && depth < DEPTH_MAX {
                stack.push((p, depth + 1));
            } else if p.extension().is_some_and(|x| x == "toml") && out.len() < SCENARIO_FILES_MAX {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A catalog scenario by file name (`random-faults`) or by its path in the catalog, with or
/// without `.toml` (`swarm/random-faults`, as `floe list` shows it).
fn find_in_catalog(name: &str) -> Option<PathBuf> {
    let dir = catalog_dir();
    let wanted = name.strip_suffix(".toml").unwrap_or(name);
    catalog_files(&dir).into_iter().find(|p| {
        let in_catalog = p.strip_prefix(&dir).unwrap_or(p).with_extension("");
        p.file_stem().is_some_and(|s| s == wanted) || in_catalog == Path::new(wanted)
    })
}

/// Resolves a command-line argument: an existing path, else a scenario of the catalog by name
/// or by its path in the catalog (`scenarios/**/<name>.toml`), else a path that does not exist
/// (and says so).
pub fn load_arg(arg: &str) -> Result<Scenario, ScenarioError> {
    let path = Path::new(arg);
    if path.exists() {
        return Scenario::load(path);
    }
    if let Some(p) = find_in_catalog(arg) {
        return Scenario::load(&p);
    }
    if arg.ends_with(".toml") {
        return Scenario::load(path);
    }
    Err(ScenarioError::NotFound { name: arg.to_string(), dir: catalog_dir().display().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const GOOD: &str = r#"
name = "t"
description = "a test"
job = "word-count"
seeds = [1, 2]
[workload]
lines = 10
partitions = 2
[cluster]
task_managers = 2
slots_per_tm = 2
parallelism = 3
[checkpoint]
interval_ms = 100
mode = "exactly-once"
[sink]
mode = "plain"
[network]
latency_ms = [1, 10]
packet_loss = 0.05
[[fault]]
at_ms = 500
kind = "crash"
node = "tm1"
restart_after_ms = 300
[[fault]]
on = "checkpoint_aligning"
checkpoint = 3
subtask = 1
kind = "partition"
nodes = ["jm"]
others = ["tm0", "tm1"]
one_way = true
duration_ms = 1000
[expect]
fail = ["exactly_once"]
"#;

    #[test]
    fn a_full_scenario_parses() {
        let s = Scenario::parse("t.toml", GOOD).unwrap();
        assert_eq!(
            (s.name.as_str(), s.job, s.sink_mode, s.parallelism),
            ("t", JobKind::WordCount, SinkMode::Plain, Some(3))
        );
        assert_eq!(s.seeds, Seeds::List(vec![1, 2]));
        assert_eq!(s.expect, Expect::Fail(vec!["exactly_once".into()]));
        assert_eq!(
            s.faults[0],
            FaultSpec {
                trigger: Trigger::At { at_ms: 500 },
                kind: FaultKind::Crash { restart_after_ms: Some(300) },
                nodes: vec![NodeName::Tm(1)],
                duration_ms: None
            }
        );
        assert_eq!(
            s.faults[1],
            FaultSpec {
                trigger: Trigger::On {
                    event: TriggerEvent::CheckpointAligning,
                    checkpoint: Some(3),
                    subtask: Some(1),
                    after_ms: 0
                },
                kind: FaultKind::Partition { others: vec![NodeName::Tm(0), NodeName::Tm(1)], one_way: true },
                nodes: vec![NodeName::Jm],
                duration_ms: Some(1000)
            }
        );
    }

    #[test]
    fn malformed_scenarios_name_the_file_line_and_field() {
        let cases: &[(&str, &str)] = &[
            ("job = \"word-count\"\n[workload]\nlines = \"many\"\n", "bad.toml:3: field `workload.lines`: expected a non-negative integer, found string"),
            ("[workload]\nlines = 3\n", "bad.toml:1: field `job`: missing (required)"),
            ("job = \"wordcount\"\n", "bad.toml:1: field `job`: unknown job 'wordcount'; valid jobs: word-count, two-shuffle"),
            ("job = \"word-count\"\n\n[cluster]\ntask_managers = 2\nparalelism = 3\n", "bad.toml:5: field `cluster.paralelism`: unknown field; valid fields: task_managers, slots_per_tm, parallelism, max_parallelism, heartbeat_timeout_ms"),
            ("job = \"word-count\"\n[[fault]]\nat_ms = 5\nkind = \"explode\"\nnode = \"tm0\"\n", "bad.toml:4: field `fault[0].kind`: unknown fault kind 'explode'; valid kinds: crash, partition, clog, latency, loss, pause, fail_writes, fail_fsyncs, slow_writes, blob_fail_puts, blob_slow_puts"),
            ("job = \"word-count\"\n[[fault]]\nat_ms = 5\nkind = \"crash\"\nnode = \"tm9\"\n[cluster]\ntask_managers = 2\n", "bad.toml:5: field `fault[0].node`: unknown node 'tm9': the cluster has 2 task managers; valid nodes: jm, tm0..tm1, broker, blob"),
            ("job = \"word-count\"\n[[fault]]\nat_ms = 5\nkind = \"crash\"\nnode = \"worker\"\n", "bad.toml:5: field `fault[0].node`: unknown node 'worker'; valid nodes: jm, tm0, tm1, …, broker, blob"),
            ("job = \"word-count\"\n[[fault]]\nat_ms = 5\nkind = \"pause\"\nnode = \"jm\"\n", "bad.toml:2: field `fault[0].duration_ms`: missing (required)"),
            ("job = \"word-count\"\n[[fault]]\nkind = \"pause\"\nnode = \"jm\"\nduration_ms = 5\n", "bad.toml:2: field `fault[0].at_ms`: missing: a fault needs `at_ms = <ms>` or `on = \"<event>\"`"),
            ("job = \"word-count\"\n[[fault]]\non = \"checkpoint_started\"\nkind = \"crash\"\nnode = \"jm\"\n", "bad.toml:3: field `fault[0].on`: unknown value 'checkpoint_started'; valid events: checkpoint_aligning, checkpoint_completed, sink_prepared, restore_begun"),
            ("job = \"word-count\"\n[[fault]]\nat_ms = 1\nkind = \"fail_writes\"\nnode = \"tm0\"\nduration_ms = 5\n", "bad.toml:5: field `fault[0].node`: a `fail_writes` fault hits a disk: only broker and blob have one"),
            ("job = \"word-count\"\n[checkpoint]\nmode = \"exactly_once\"\n", "bad.toml:3: field `checkpoint.mode`: unknown value 'exactly_once'; valid values: exactly-once, at-least-once"),
            ("job = \"word-count\"\n[sink]\nmode = \"2pc\"\n", "bad.toml:3: field `sink.mode`: unknown value '2pc'; valid values: transactional, plain"),
            ("job = \"word-count\"\n[cluster]\ntask_managers = 1\nslots_per_tm = 2\nparallelism = 3\n", "bad.toml:5: field `cluster.parallelism`: 3 needs more slots than 1 task managers × 2 slots"),
            ("job = \"word-count\"\n[network]\npacket_loss = 1.5\n", "bad.toml:3: field `network.packet_loss`: must be in [0.0, 1.0)"),
            ("job = \"word-count\"\n[network]\nlatency_ms = [10, 1]\n", "bad.toml:3: field `network.latency_ms`: expected [low, high] with 0 <= low <= high"),
            ("job = \"word-count\"\n[expect]\nfail = [\"exactly-once\"]\n", "bad.toml:3: field `expect.fail`: unknown check 'exactly-once'; valid checks: exactly_once, consistent_cut, commit_after_complete, no_zombie_effects, checkpoint_monotone, liveness, no_hanging_transactions"),
            ("job = \"word-count\"\nseeds = \"5..2\"\n", "bad.toml:2: field `seeds`: '5..2' is an empty seed range"),
            ("job = \"word-count\"\n[workload]\nlines = -3\n", "bad.toml:3: field `workload.lines`: expected a non-negative integer, found -3"),
            ("job = \"word-count\"\n[faults]\nrate_per_sec = 2.0\n", "bad.toml:3: field `faults.rate_per_sec`: random faults are off: set `random = true`"),
            ("job = \"word-count\"\nworkload = 3\n", "bad.toml:2: field `workload`: expected a table, found integer"),
            ("job = \"word-count\"\n[workload\n", "bad.toml:2:10: invalid TOML: unclosed table, expected `]`"),
        ];
        for (text, want) in cases {
            let got = Scenario::parse("bad.toml", text).map(|_| ()).unwrap_err().to_string();
            assert_eq!(got, *want, "{text}");
        }
    }

    #[test]
    fn the_seed_draws_what_the_scenario_leaves_open_and_only_that() {
        let open = Scenario::parse("o.toml", "job = \"two-shuffle\"\n[faults]\nrandom = true\n").unwrap();
        let a = open.resolve(1, Overrides::default());
        assert_eq!(a, open.resolve(1, Overrides::default()), "same seed, same world");
        let worlds: Vec<WorldConfig> = (0..20).map(|s| open.resolve(s, Overrides::default())).collect();
        let distinct = |f: fn(&WorldConfig) -> u64| worlds.iter().map(f).collect::<BTreeSet<_>>().len();
        assert!(distinct(|w| u64::from(w.parallelism)) > 1);
        assert!(distinct(|w| w.checkpoint_interval_ms) > 1);
        assert!(distinct(|w| w.faults.len() as u64) > 1);
        for w in &worlds {
            assert!(w.parallelism <= w.task_managers * w.slots_per_tm && w.parallelism <= w.max_parallelism, "{w:?}");
            assert!(w.latency_ms.0 <= w.latency_ms.1);
        }
        let fixed = Scenario::parse("f.toml", GOOD).unwrap();
        for seed in 0..10 {
            let w = fixed.resolve(seed, Overrides { checkpointing: Some(CheckpointMode::AtLeastOnce), sink: None });
            assert_eq!(
                (w.task_managers, w.slots_per_tm, w.parallelism, w.checkpoint_interval_ms, w.workload.lines),
                (2, 2, 3, 100, 10)
            );
            assert_eq!(
                (w.checkpoint_mode, w.sink_mode, w.latency_ms, w.packet_loss),
                (CheckpointMode::AtLeastOnce, SinkMode::Plain, (1, 10), 0.05)
            );
            assert_eq!(w.faults, fixed.faults);
        }
    }

    #[test]
    fn faults_naming_a_task_manager_make_the_swarm_draw_enough_of_them() {
        let s =
            Scenario::parse("f.toml", "job = \"word-count\"\n[[fault]]\nat_ms = 1\nkind = \"crash\"\nnode = \"tm5\"\n")
                .unwrap();
        assert!((0..20).all(|seed| s.resolve(seed, Overrides::default()).task_managers >= 6));
    }

    #[test]
    fn the_workload_is_seeded_skewed_and_split_round_robin() {
        let w = Workload { lines: 400, words_per_line: 5, vocabulary: 50, skew: 1.2, partitions: 3 };
        let lines = generate_lines(&w, 9);
        assert_eq!(lines, generate_lines(&w, 9));
        assert_ne!(lines, generate_lines(&w, 10));
        let counts = crate::oracle::expected_state(JobKind::WordCount, std::slice::from_ref(&lines), None).word_counts;
        assert!(counts.values().all(|_| true) && counts.len() <= 50);
        assert!(counts["w0"] > counts.get("w40").copied().unwrap_or(0) * 5, "zipf: the top word dominates");
        assert_eq!(counts.values().sum::<u64>(), 2_000);
        let parts = split_round_robin(lines.clone(), 3);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [134, 133, 133]);
        assert_eq!(parts[1][0], lines[1]);
    }

    #[test]
    fn partitioned_generation_is_the_round_robin_split_of_the_lines() {
        for (lines, partitions) in [(0, 3), (1, 4), (400, 3), (401, 4), (7, 1), (5, 0)] {
            let w = Workload { lines, words_per_line: 4, vocabulary: 30, skew: 1.0, partitions: 3 };
            assert_eq!(generate_partitioned(&w, 4, partitions), split_round_robin(generate_lines(&w, 4), partitions), "{lines} lines over {partitions}");
        }
    }

    /// The plain inversion the guide table shortcuts.
    fn plain_rank(z: &Zipf, u: f64) -> usize {
        z.search(u * z.total, 0, z.cumulative.len()).min(z.cumulative.len().saturating_sub(1))
    }

    #[test]
    fn zipf_ranks_at_bucket_edges_are_the_plain_search() {
        for (vocabulary, skew) in [(1, 1.0), (2, 0.0), (1000, 1.0), (50, 1.2), (70_000, 0.5), (3, 10.0)] {
            let z = Zipf::new(vocabulary, skew);
            for j in 0..ZIPF_GUIDE_BUCKETS {
                let edge = j as f64 / ZIPF_GUIDE_BUCKETS as f64;
                for u in [edge, f64::from_bits(edge.to_bits() + 1), (edge + 1.0 / ZIPF_GUIDE_BUCKETS as f64).next_down()] {
                    assert_eq!(z.rank(u), plain_rank(&z, u), "vocabulary {vocabulary}, skew {skew}, u {u}");
                    // The guide alone is exact: the check behind it never has to fall back.
                    assert_eq!(z.guided(u).min(z.ranks() - 1), plain_rank(&z, u), "vocabulary {vocabulary}, skew {skew}, u {u}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn zipf_rank_is_the_plain_search(vocabulary in 0u32..5_000, skew in 0.0f64..4.0, us in proptest::collection::vec(0.0f64..1.0, 1..200)) {
            let z = Zipf::new(vocabulary, skew);
            for u in us {
                proptest::prop_assert_eq!(z.rank(u), plain_rank(&z, u), "u {}", u);
                proptest::prop_assert_eq!(z.guided(u).min(z.ranks() - 1), plain_rank(&z, u), "u {}", u);
            }
        }
    }

    #[test]
    fn seed_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(Seeds::parse("3..6").unwrap().to_vec(), [3, 4, 5]);
        assert_eq!(Seeds::parse("3..=4").unwrap().to_vec(), [3, 4]);
        assert_eq!(Seeds::parse("7").unwrap().to_vec(), [7]);
        assert_eq!(
            Seeds::parse("x..3").unwrap_err(),
            "'x..3' is not a seed range: want A..B (e.g. 0..100) or a number"
        );
        assert!(Seeds::parse("0..18446744073709551615").is_err());
    }

    #[test]
    fn every_example_scenario_parses_and_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let files = catalog_files(&dir);
        assert!(files.len() >= 6, "{files:?}");
        for f in files {
            let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
            assert!(!s.description.is_empty(), "{} has a description", f.display());
            let w = s.resolve(s.seeds.first().unwrap_or(0), Overrides::default());
            assert!(w.parallelism <= w.task_managers * w.slots_per_tm, "{}", f.display());
        }
    }

    #[test]
    fn node_names_parse_strictly() {
        let cases: &[(&str, Option<NodeName>)] = &[
            ("jm", Some(NodeName::Jm)),
            ("tm0", Some(NodeName::Tm(0))),
            ("tm12", Some(NodeName::Tm(12))),
            ("tm01", None),
            ("tm", None),
            ("tm-1", None),
            ("TM0", None),
            ("blob", Some(NodeName::Blob)),
        ];
        for (s, want) in cases {
            assert_eq!(NodeName::parse(s), *want, "{s}");
        }
    }
}
