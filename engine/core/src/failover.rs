//! Failure detection and restart decisions: Flink's `HeartbeatManager` (timeout side) and its
//! `RestartBackoffTimeStrategy`s, plus the attempt fence that makes zombies harmless.
//!
//! - [`HeartbeatMonitor`] watches targets (task managers, the job manager): a target whose last
//!   heartbeat is `heartbeat_timeout_ms` old is reported by [`HeartbeatMonitor::expired`] once,
//!   and stays dead (its late heartbeats are ignored) until it registers again. A partition does
//!   not break a simulated TCP connection, so heartbeats are the only liveness signal.
//! - [`RestartStrategy`] is the configuration (serde), [`RestartBackoff`] the state machine:
//!   [`RestartBackoff::on_failure`] answers [`RestartDecision::RestartAt`] with a time and a new,
//!   strictly greater [`AttemptId`], or [`RestartDecision::GiveUp`]. The exponential-delay
//!   strategy is the default, as in Flink ≥ 1.19 (FLIP-364). Its jitter needs randomness, which
//!   floe-core never draws: the caller passes `jitter_unit` in `[0, 1)` from the run's seeded RNG.
//! - A failure reported while a restart is already scheduled (`now_ms < at_ms`) belongs to the
//!   same incident: it is merged into it and returns the same decision without being counted
//!   (Flink does this for the exponential strategy; floe does it for every strategy, so two task
//!   managers timing out together cost one restart, not two).
//! - [`AttemptFence`] tells whether a message belongs to the current attempt: anything from an
//!   older one (a zombie after a healed partition) is stale and must have no effect.

use crate::ids::AttemptId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Flink's default heartbeat timeout (`heartbeat.timeout`: 50 s).
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = 50_000;
/// Most targets one monitor watches.
pub const HEARTBEAT_TARGETS_MAX: usize = 1 << 16;
/// The largest `failures_per_interval_max` a failure-rate strategy may ask for (bounds its window).
pub const FAILURE_RATE_FAILURES_MAX: u32 = 1 << 16;

/// A restart or heartbeat configuration that cannot work.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FailoverConfigError {
    /// A heartbeat timeout of 0.
    #[error("heartbeat timeout must be above 0 ms")]
    ZeroHeartbeatTimeout,
    /// An exponential backoff starting at 0 or beyond its maximum.
    #[error("initial backoff {initial_backoff_ms} ms must be in [1, backoff_max_ms = {backoff_max_ms}]")]
    BackoffOutOfRange {
        /// The initial backoff.
        initial_backoff_ms: u64,
        /// The maximum backoff.
        backoff_max_ms: u64,
    },
    /// A multiplier below 1 or not finite.
    #[error("backoff multiplier {0} must be finite and at least 1")]
    BadMultiplier(f64),
    /// A jitter factor outside `[0, 1]`.
    #[error("jitter factor {0} must be in [0, 1]")]
    BadJitterFactor(f64),
    /// A reset threshold of 0.
    #[error("reset backoff threshold must be above 0 ms")]
    ZeroResetThreshold,
    /// `attempts_before_reset_max` of 0.
    #[error("attempts before reset must be at least 1")]
    ZeroAttemptsBeforeReset,
    /// A failure-rate window of 0 ms.
    #[error("failure-rate interval must be above 0 ms")]
    ZeroFailureInterval,
    /// `failures_per_interval_max` outside `[1, FAILURE_RATE_FAILURES_MAX]`.
    #[error("failures per interval {0} must be in [1, {FAILURE_RATE_FAILURES_MAX}]")]
    FailuresPerIntervalOutOfRange(u32),
}

/// Why a heartbeat target could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// The monitor already watches [`HEARTBEAT_TARGETS_MAX`] targets.
    #[error("the monitor already watches {HEARTBEAT_TARGETS_MAX} targets")]
    TooManyTargets,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    last_heartbeat_ms: u64,
    /// Reported by `expired`; dead until registered again.
    expired: bool,
}

/// Detects targets whose heartbeats stopped (the timeout side of Flink's `HeartbeatManager`).
#[derive(Clone, Debug)]
pub struct HeartbeatMonitor<Id: Ord + Copy> {
    heartbeat_timeout_ms: u64,
    targets: BTreeMap<Id, Target>,
}

impl<Id: Ord + Copy> HeartbeatMonitor<Id> {
    /// A monitor that declares a target dead `heartbeat_timeout_ms` after its last heartbeat.
    pub fn new(heartbeat_timeout_ms: u64) -> Result<Self, FailoverConfigError> {
        if heartbeat_timeout_ms == 0 {
            return Err(FailoverConfigError::ZeroHeartbeatTimeout);
        }
        Ok(HeartbeatMonitor { heartbeat_timeout_ms, targets: BTreeMap::new() })
    }

    /// The timeout.
    pub fn heartbeat_timeout_ms(&self) -> u64 {
        self.heartbeat_timeout_ms
    }

    /// Starts (or restarts) watching `id`, as if it had just sent a heartbeat. A target that
    /// expired is watched afresh.
    pub fn register(&mut self, id: Id, now_ms: u64) -> Result<(), HeartbeatError> {
        if !self.targets.contains_key(&id) && self.targets.len() >= HEARTBEAT_TARGETS_MAX {
            return Err(HeartbeatError::TooManyTargets);
        }
        self.targets.insert(id, Target { last_heartbeat_ms: now_ms, expired: false });
        Ok(())
    }

    /// A heartbeat from `id`. Returns false (and changes nothing) when `id` is not watched or
    /// already expired: a dead target stays dead until it registers again.
    pub fn on_heartbeat(&mut self, id: Id, now_ms: u64) -> bool {
        match self.targets.get_mut(&id) {
            Some(t) if !t.expired => {
                t.last_heartbeat_ms = t.last_heartbeat_ms.max(now_ms);
                true
            }
            _ => false,
        }
    }

    /// Stops watching `id`; returns whether it was watched.
    pub fn unregister(&mut self, id: Id) -> bool {
        self.targets.remove(&id).is_some()
    }

    /// The targets whose last heartbeat is at least `heartbeat_timeout_ms` old, in id order;
    /// each is reported once until it registers again.
    pub fn expired(&mut self, now_ms: u64) -> Vec<Id> {
        let timeout_ms = self.heartbeat_timeout_ms;
        let mut out = Vec::new();
        for (&id, t) in self.targets.iter_mut() {
            if !t.expired && now_ms.saturating_sub(t.last_heartbeat_ms) >= timeout_ms {
                t.expired = true;
                out.push(id);
            }
        }
        out
    }

    /// The earliest time at which [`expired`](Self::expired) would report a target, so a host
    /// can sleep exactly that long; `None` when no live target is watched.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.targets.values().filter(|t| !t.expired).map(|t| t.last_heartbeat_ms.saturating_add(self.heartbeat_timeout_ms)).min()
    }

    /// True when `id` is watched and not expired.
    pub fn is_alive(&self, id: Id) -> bool {
        self.targets.get(&id).is_some_and(|t| !t.expired)
    }

    /// Number of watched targets, expired ones included.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// How the job restarts after a failure (Flink's `restart-strategy.type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RestartStrategy {
    /// Restart `delay_ms` after each failure, at most `attempts_max` times in the job's life
    /// (Flink's defaults: 1 attempt, 1 s).
    FixedDelay {
        /// Restarts allowed.
        attempts_max: u32,
        /// Delay before each restart.
        delay_ms: u64,
    },
    /// Restart after a backoff that starts at `initial_backoff_ms` and grows by `multiplier` per
    /// failure up to `backoff_max_ms`, with ± `jitter_factor` jitter (never above the maximum);
    /// after `reset_backoff_threshold_ms` without failure since the last restart, the backoff and
    /// the attempt count start over. More than `attempts_before_reset_max` restarts without a
    /// reset give up. The default, with Flink's defaults.
    ExponentialDelay {
        /// First backoff (Flink: 1 s).
        initial_backoff_ms: u64,
        /// Largest backoff (Flink: 1 min).
        backoff_max_ms: u64,
        /// Growth per failure (Flink: 1.5).
        multiplier: f64,
        /// Quiet time after which the backoff resets (Flink: 1 h).
        reset_backoff_threshold_ms: u64,
        /// Jitter as a fraction of the backoff (Flink: 0.1).
        jitter_factor: f64,
        /// Restarts allowed between two resets (Flink: unlimited, `i32::MAX`; here `u32::MAX`).
        attempts_before_reset_max: u32,
    },
    /// Restart `delay_ms` after each failure unless more than `failures_per_interval_max`
    /// failures fall in the last `interval_ms` (Flink's defaults: 1 per 1 min, 1 s delay).
    FailureRate {
        /// Failures tolerated within one interval.
        failures_per_interval_max: u32,
        /// The sliding window.
        interval_ms: u64,
        /// Delay before each restart.
        delay_ms: u64,
    },
    /// Never restart: the first failure fails the job.
    NoRestart,
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialDelay {
            initial_backoff_ms: 1_000,
            backoff_max_ms: 60_000,
            multiplier: 1.5,
            reset_backoff_threshold_ms: 3_600_000,
            jitter_factor: 0.1,
            attempts_before_reset_max: u32::MAX,
        }
    }
}

impl RestartStrategy {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), FailoverConfigError> {
        match *self {
            RestartStrategy::FixedDelay { .. } | RestartStrategy::NoRestart => Ok(()),
            RestartStrategy::ExponentialDelay {
                initial_backoff_ms,
                backoff_max_ms,
                multiplier,
                reset_backoff_threshold_ms,
                jitter_factor,
                attempts_before_reset_max,
            } => {
                if initial_backoff_ms == 0 || initial_backoff_ms > backoff_max_ms {
                    return Err(FailoverConfigError::BackoffOutOfRange { initial_backoff_ms, backoff_max_ms });
                }
                if !multiplier.is_finite() || multiplier < 1.0 {
                    return Err(FailoverConfigError::BadMultiplier(multiplier));
                }
                if !(0.0..=1.0).contains(&jitter_factor) {
                    return Err(FailoverConfigError::BadJitterFactor(jitter_factor));
                }
                if reset_backoff_threshold_ms == 0 {
                    return Err(FailoverConfigError::ZeroResetThreshold);
                }
                if attempts_before_reset_max == 0 {
                    return Err(FailoverConfigError::ZeroAttemptsBeforeReset);
                }
                Ok(())
            }
            RestartStrategy::FailureRate { failures_per_interval_max, interval_ms, .. } => {
                if interval_ms == 0 {
                    return Err(FailoverConfigError::ZeroFailureInterval);
                }
                if failures_per_interval_max == 0 || failures_per_interval_max > FAILURE_RATE_FAILURES_MAX {
                    return Err(FailoverConfigError::FailuresPerIntervalOutOfRange(failures_per_interval_max));
                }
                Ok(())
            }
        }
    }
}

/// What to do about a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartDecision {
    /// Redeploy the whole job as `attempt` at `at_ms`, from the latest completed checkpoint.
    RestartAt {
        /// When.
        at_ms: u64,
        /// The new attempt (greater than every earlier one).
        attempt: AttemptId,
    },
    /// The strategy is exhausted: fail the job for good.
    GiveUp {
        /// Why.
        reason: String,
    },
}

/// The restart state machine of one job (Flink's `RestartBackoffTimeStrategy` instances).
#[derive(Clone, Debug)]
pub struct RestartBackoff {
    strategy: RestartStrategy,
    /// The attempt running now (or the one the scheduled restart will deploy).
    current_attempt: AttemptId,
    /// The restart decided and not yet due: `(at_ms, attempt)`.
    scheduled: Option<(u64, AttemptId)>,
    /// When the last restart was (or is) due.
    last_restart_ms: Option<u64>,
    /// Restarts counted by the strategy (all of them, or since the last reset for exponential).
    restarts_counted: u32,
    /// Exponential: the backoff before jitter.
    backoff_ms: u64,
    /// Failure rate: the failure times in the window, oldest first (at most `failures_per_interval_max`).
    failure_times_ms: VecDeque<u64>,
    gave_up: Option<String>,
}

impl RestartBackoff {
    /// A fresh strategy state for a job whose running attempt is `AttemptId(0)`.
    pub fn new(strategy: RestartStrategy) -> Result<Self, FailoverConfigError> {
        Self::with_current_attempt(strategy, AttemptId::default())
    }

    /// A fresh strategy state for a job whose running attempt is `current` (e.g. after a
    /// job-manager recovery, so new attempts keep going up).
    pub fn with_current_attempt(strategy: RestartStrategy, current: AttemptId) -> Result<Self, FailoverConfigError> {
        strategy.validate()?;
        Ok(RestartBackoff {
            strategy,
            current_attempt: current,
            scheduled: None,
            last_restart_ms: None,
            restarts_counted: 0,
            backoff_ms: 0,
            failure_times_ms: VecDeque::new(),
            gave_up: None,
        })
    }

    /// The strategy.
    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// The latest attempt decided (the running one, or the one a scheduled restart deploys).
    pub fn current_attempt(&self) -> AttemptId {
        self.current_attempt
    }

    /// Restarts the strategy currently counts against its limit.
    pub fn restarts_counted(&self) -> u32 {
        self.restarts_counted
    }

    /// A failure at `now_ms`. `jitter_unit` is a uniform draw in `[0, 1)` from the caller's
    /// seeded RNG (only the exponential strategy uses it; out-of-range values are clamped and
    /// NaN means no jitter). Once the strategy gave up, every later failure gives up too.
    pub fn on_failure(&mut self, now_ms: u64, jitter_unit: f64) -> RestartDecision {
        if let Some(reason) = &self.gave_up {
            return RestartDecision::GiveUp { reason: reason.clone() };
        }
        if let Some((at_ms, attempt)) = self.scheduled {
            if now_ms < at_ms {
                return RestartDecision::RestartAt { at_ms, attempt };
            }
        }
        let delay = match self.strategy.clone() {
            RestartStrategy::NoRestart => Err("the restart strategy is NoRestart".to_string()),
            RestartStrategy::FixedDelay { attempts_max, delay_ms } => {
                if self.restarts_counted < attempts_max {
                    self.restarts_counted += 1;
                    Ok(delay_ms)
                } else {
                    Err(format!("fixed-delay restart strategy used all {attempts_max} restart attempts"))
                }
            }
            RestartStrategy::ExponentialDelay {
                initial_backoff_ms,
                backoff_max_ms,
                multiplier,
                reset_backoff_threshold_ms,
                jitter_factor,
                attempts_before_reset_max,
            } => {
                let quiet = self.last_restart_ms.is_none_or(|at| now_ms.saturating_sub(at) >= reset_backoff_threshold_ms);
                if quiet {
                    self.backoff_ms = initial_backoff_ms;
                    self.restarts_counted = 0;
                } else {
                    let grown = (self.backoff_ms as f64 * multiplier).min(backoff_max_ms as f64);
                    self.backoff_ms = (grown as u64).clamp(initial_backoff_ms, backoff_max_ms);
                }
                debug_assert!(initial_backoff_ms <= self.backoff_ms && self.backoff_ms <= backoff_max_ms);
                if self.restarts_counted < attempts_before_reset_max {
                    self.restarts_counted += 1;
                    Ok(jittered(self.backoff_ms, jitter_factor, jitter_unit, backoff_max_ms))
                } else {
                    Err(format!("exponential-delay restart strategy used all {attempts_before_reset_max} restart attempts before a reset"))
                }
            }
            RestartStrategy::FailureRate { failures_per_interval_max, interval_ms, delay_ms } => {
                while self.failure_times_ms.front().is_some_and(|&t| now_ms.saturating_sub(t) >= interval_ms) {
                    self.failure_times_ms.pop_front();
                }
                if self.failure_times_ms.len() < failures_per_interval_max as usize {
                    self.failure_times_ms.push_back(now_ms);
                    self.restarts_counted += 1;
                    Ok(delay_ms)
                } else {
                    Err(format!("more than {failures_per_interval_max} failures within {interval_ms} ms"))
                }
            }
        };
        debug_assert!(self.failure_times_ms.len() <= FAILURE_RATE_FAILURES_MAX as usize);
        match delay {
            Ok(delay_ms) => {
                let at_ms = now_ms.saturating_add(delay_ms);
                let attempt = self.current_attempt.next();
                debug_assert!(attempt > self.current_attempt);
                self.current_attempt = attempt;
                self.scheduled = Some((at_ms, attempt));
                self.last_restart_ms = Some(at_ms);
                RestartDecision::RestartAt { at_ms, attempt }
            }
            Err(reason) => {
                self.gave_up = Some(reason.clone());
                RestartDecision::GiveUp { reason }
            }
        }
    }
}

/// `backoff_ms` moved by `(2u - 1) * jitter_factor * backoff_ms`, capped at `cap_ms`.
fn jittered(backoff_ms: u64, jitter_factor: f64, jitter_unit: f64, cap_ms: u64) -> u64 {
    let unit = if jitter_unit.is_nan() { 0.5 } else { jitter_unit.clamp(0.0, 1.0) };
    let offset = (2.0 * unit - 1.0) * jitter_factor * backoff_ms as f64;
    let delay = (backoff_ms as f64 + offset).round().max(0.0);
    (delay as u64).min(cap_ms)
}

/// Which attempt is current: messages of older attempts are stale and must have no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptFence {
    current: AttemptId,
}

impl AttemptFence {
    /// A fence at `current`.
    pub fn new(current: AttemptId) -> Self {
        AttemptFence { current }
    }

    /// The current attempt.
    pub fn current(&self) -> AttemptId {
        self.current
    }

    /// True for a message of an older attempt (a zombie's).
    pub fn is_stale(&self, attempt: AttemptId) -> bool {
        attempt < self.current
    }

    /// True only for the current attempt: what a receiver should accept.
    pub fn is_current(&self, attempt: AttemptId) -> bool {
        attempt == self.current
    }

    /// Moves to the next attempt and returns it.
    pub fn advance(&mut self) -> AttemptId {
        self.current = self.current.next();
        self.current
    }

    /// Moves forward to `attempt` (e.g. one decided by [`RestartBackoff`]); returns false and
    /// stays put if `attempt` is not newer.
    pub fn advance_to(&mut self, attempt: AttemptId) -> bool {
        if attempt > self.current {
            self.current = attempt;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Hb {
        Register(u32, u64),
        Beat(u32, u64, bool),
        Unregister(u32, bool),
        Expired(u64, &'static [u32]),
        Deadline(Option<u64>),
        Alive(u32, bool),
    }

    #[test]
    fn heartbeat_monitor_reports_each_silent_target_once() {
        use Hb::*;
        let cases: Vec<(&str, Vec<Hb>)> = vec![
            ("a silent target expires exactly one timeout after registering", vec![
                Register(1, 0),
                Deadline(Some(100)),
                Expired(99, &[]),
                Expired(100, &[1]),
                Expired(500, &[]),
                Deadline(None),
            ]),
            ("a heartbeat pushes the deadline back", vec![
                Register(1, 0),
                Beat(1, 60, true),
                Deadline(Some(160)),
                Expired(159, &[]),
                Expired(160, &[1]),
            ]),
            ("an out-of-order heartbeat never moves the deadline earlier", vec![
                Register(1, 0),
                Beat(1, 80, true),
                Beat(1, 30, true),
                Expired(179, &[]),
                Expired(180, &[1]),
            ]),
            ("a dead target stays dead until it registers again", vec![
                Register(1, 0),
                Expired(100, &[1]),
                Beat(1, 101, false),
                Alive(1, false),
                Expired(1_000, &[]),
                Register(1, 1_000),
                Alive(1, true),
                Expired(1_100, &[1]),
            ]),
            ("several targets expire together, in id order", vec![
                Register(3, 0),
                Register(1, 10),
                Register(2, 20),
                Beat(2, 90, true),
                Deadline(Some(100)),
                Expired(150, &[1, 3]),
                Deadline(Some(190)),
                Expired(190, &[2]),
            ]),
            ("unregistered and unknown targets are never reported", vec![
                Register(1, 0),
                Unregister(1, true),
                Unregister(1, false),
                Beat(7, 10, false),
                Expired(1_000, &[]),
                Deadline(None),
            ]),
        ];
        for (name, steps) in cases {
            let mut m = HeartbeatMonitor::<u32>::new(100).unwrap();
            for (n, step) in steps.iter().enumerate() {
                match *step {
                    Register(id, t) => m.register(id, t).unwrap(),
                    Beat(id, t, want) => assert_eq!(m.on_heartbeat(id, t), want, "{name}: step {n}"),
                    Unregister(id, want) => assert_eq!(m.unregister(id), want, "{name}: step {n}"),
                    Expired(t, want) => assert_eq!(m.expired(t), want, "{name}: step {n}"),
                    Deadline(want) => assert_eq!(m.next_deadline_ms(), want, "{name}: step {n}"),
                    Alive(id, want) => assert_eq!(m.is_alive(id), want, "{name}: step {n}"),
                }
            }
        }
        assert_eq!(HeartbeatMonitor::<u32>::new(0).unwrap_err(), FailoverConfigError::ZeroHeartbeatTimeout);
    }

    #[test]
    fn the_monitor_refuses_targets_beyond_its_limit() {
        let mut m = HeartbeatMonitor::<u32>::new(100).unwrap();
        for id in 0..HEARTBEAT_TARGETS_MAX as u32 {
            m.register(id, 0).unwrap();
        }
        assert_eq!(m.register(u32::MAX, 0), Err(HeartbeatError::TooManyTargets));
        assert_eq!(m.register(5, 50), Ok(()), "re-registering a watched target is always fine");
        assert_eq!(m.len(), HEARTBEAT_TARGETS_MAX);
    }

    /// A decision as a short line: `restart @at attemptN` or `give up`.
    fn line(d: &RestartDecision) -> String {
        match d {
            RestartDecision::RestartAt { at_ms, attempt } => format!("restart @{at_ms} {attempt}"),
            RestartDecision::GiveUp { .. } => "give up".to_string(),
        }
    }

    fn exponential(initial: u64, max: u64, multiplier: f64, reset: u64, jitter: f64, attempts: u32) -> RestartStrategy {
        RestartStrategy::ExponentialDelay {
            initial_backoff_ms: initial,
            backoff_max_ms: max,
            multiplier,
            reset_backoff_threshold_ms: reset,
            jitter_factor: jitter,
            attempts_before_reset_max: attempts,
        }
    }

    #[test]
    fn restart_strategies_decide_as_flink_does() {
        /// A named strategy with each failure (at, jitter unit) and the decision it must get.
        type Case = (&'static str, RestartStrategy, Vec<(u64, f64, &'static str)>);
        let cases: Vec<Case> = vec![
            ("fixed delay restarts attempts_max times, then gives up for good", RestartStrategy::FixedDelay { attempts_max: 3, delay_ms: 500 }, vec![
                (0, 0.0, "restart @500 attempt1"),
                (1_000, 0.0, "restart @1500 attempt2"),
                (2_000, 0.0, "restart @2500 attempt3"),
                (3_000, 0.0, "give up"),
                (90_000, 0.0, "give up"),
            ]),
            ("a failure while a restart is scheduled joins it", RestartStrategy::FixedDelay { attempts_max: 2, delay_ms: 500 }, vec![
                (0, 0.0, "restart @500 attempt1"),
                (200, 0.0, "restart @500 attempt1"),
                (499, 0.0, "restart @500 attempt1"),
                (500, 0.0, "restart @1000 attempt2"),
                (2_000, 0.0, "give up"),
            ]),
            ("exponential delay grows by the multiplier up to the cap, and resets after a quiet period", exponential(1_000, 5_000, 2.0, 60_000, 0.1, u32::MAX), vec![
                (0, 0.5, "restart @1000 attempt1"),
                (1_000, 0.5, "restart @3000 attempt2"),
                (3_000, 0.5, "restart @7000 attempt3"),
                (7_000, 0.5, "restart @12000 attempt4"),
                (12_000, 0.5, "restart @17000 attempt5"),
                (76_999, 0.5, "restart @81999 attempt6"),
                (141_999, 0.5, "restart @142999 attempt7"),
            ]),
            ("exponential jitter moves the delay by up to ±jitter_factor, never above the cap", exponential(1_000, 2_000, 2.0, 60_000, 0.1, u32::MAX), vec![
                (0, 0.0, "restart @900 attempt1"),
                (900, 0.999_999, "restart @2900 attempt2"),
                (2_900, 0.0, "restart @4700 attempt3"),
                (4_700, 0.999_999, "restart @6700 attempt4"),
            ]),
            ("exponential delay gives up after attempts_before_reset_max restarts without a reset", exponential(100, 1_000, 1.5, 10_000, 0.0, 2), vec![
                (0, 0.0, "restart @100 attempt1"),
                (100, 0.0, "restart @250 attempt2"),
                (250, 0.0, "give up"),
                (50_000, 0.0, "give up"),
            ]),
            ("failure rate tolerates failures_per_interval_max failures in a sliding window", RestartStrategy::FailureRate { failures_per_interval_max: 2, interval_ms: 10_000, delay_ms: 100 }, vec![
                (0, 0.0, "restart @100 attempt1"),
                (5_000, 0.0, "restart @5100 attempt2"),
                (10_000, 0.0, "restart @10100 attempt3"),
                (14_999, 0.0, "give up"),
            ]),
            ("failure rate gives up on a burst", RestartStrategy::FailureRate { failures_per_interval_max: 2, interval_ms: 10_000, delay_ms: 100 }, vec![
                (0, 0.0, "restart @100 attempt1"),
                (1_000, 0.0, "restart @1100 attempt2"),
                (2_000, 0.0, "give up"),
            ]),
            ("no restart gives up at once", RestartStrategy::NoRestart, vec![(0, 0.0, "give up")]),
        ];
        for (name, strategy, steps) in cases {
            let mut b = RestartBackoff::new(strategy).unwrap();
            for (n, (at, jitter, want)) in steps.into_iter().enumerate() {
                assert_eq!(line(&b.on_failure(at, jitter)), want, "{name}: step {n}");
            }
        }
    }

    #[test]
    fn the_default_is_flinks_exponential_delay() {
        let RestartStrategy::ExponentialDelay { initial_backoff_ms, backoff_max_ms, multiplier, reset_backoff_threshold_ms, jitter_factor, attempts_before_reset_max } =
            RestartStrategy::default()
        else {
            panic!("the default must be exponential delay")
        };
        assert_eq!((initial_backoff_ms, backoff_max_ms, reset_backoff_threshold_ms), (1_000, 60_000, 3_600_000));
        assert_eq!((multiplier, jitter_factor, attempts_before_reset_max), (1.5, 0.1, u32::MAX));
        let mut b = RestartBackoff::new(RestartStrategy::default()).unwrap();
        let delays: Vec<u64> = (0..12)
            .scan(0u64, |now, _| {
                let RestartDecision::RestartAt { at_ms, .. } = b.on_failure(*now, 0.5) else { return None };
                let delay = at_ms - *now;
                *now = at_ms;
                Some(delay)
            })
            .collect();
        assert_eq!(delays, vec![1_000, 1_500, 2_250, 3_375, 5_062, 7_593, 11_389, 17_083, 25_624, 38_436, 57_654, 60_000]);
    }

    #[test]
    fn odd_jitter_units_never_panic() {
        for unit in [f64::NAN, -3.0, 7.0, f64::INFINITY, f64::NEG_INFINITY] {
            let mut b = RestartBackoff::new(exponential(1_000, 5_000, 2.0, 60_000, 0.5, 10)).unwrap();
            let RestartDecision::RestartAt { at_ms, .. } = b.on_failure(0, unit) else { panic!() };
            assert!((500..=1_500).contains(&at_ms), "{unit}: {at_ms}");
        }
    }

    #[test]
    fn a_recovered_job_manager_continues_the_attempts() {
        let mut b = RestartBackoff::with_current_attempt(RestartStrategy::FixedDelay { attempts_max: 5, delay_ms: 0 }, AttemptId(41)).unwrap();
        assert_eq!(b.on_failure(10, 0.0), RestartDecision::RestartAt { at_ms: 10, attempt: AttemptId(42) });
        assert_eq!(b.on_failure(10, 0.0), RestartDecision::RestartAt { at_ms: 10, attempt: AttemptId(43) }, "a zero delay merges nothing");
        assert_eq!(b.current_attempt(), AttemptId(43));
        assert_eq!(b.restarts_counted(), 2);
    }

    #[test]
    fn bad_strategies_are_typed_errors() {
        let cases: Vec<(RestartStrategy, FailoverConfigError)> = vec![
            (exponential(0, 10, 1.5, 1, 0.1, 1), FailoverConfigError::BackoffOutOfRange { initial_backoff_ms: 0, backoff_max_ms: 10 }),
            (exponential(20, 10, 1.5, 1, 0.1, 1), FailoverConfigError::BackoffOutOfRange { initial_backoff_ms: 20, backoff_max_ms: 10 }),
            (exponential(1, 10, 0.5, 1, 0.1, 1), FailoverConfigError::BadMultiplier(0.5)),
            (exponential(1, 10, f64::INFINITY, 1, 0.1, 1), FailoverConfigError::BadMultiplier(f64::INFINITY)),
            (exponential(1, 10, 1.5, 1, 1.5, 1), FailoverConfigError::BadJitterFactor(1.5)),
            (exponential(1, 10, 1.5, 0, 0.1, 1), FailoverConfigError::ZeroResetThreshold),
            (exponential(1, 10, 1.5, 1, 0.1, 0), FailoverConfigError::ZeroAttemptsBeforeReset),
            (RestartStrategy::FailureRate { failures_per_interval_max: 1, interval_ms: 0, delay_ms: 0 }, FailoverConfigError::ZeroFailureInterval),
            (RestartStrategy::FailureRate { failures_per_interval_max: 0, interval_ms: 1, delay_ms: 0 }, FailoverConfigError::FailuresPerIntervalOutOfRange(0)),
            (
                RestartStrategy::FailureRate { failures_per_interval_max: FAILURE_RATE_FAILURES_MAX + 1, interval_ms: 1, delay_ms: 0 },
                FailoverConfigError::FailuresPerIntervalOutOfRange(FAILURE_RATE_FAILURES_MAX + 1),
            ),
        ];
        for (strategy, want) in cases {
            assert_eq!(RestartBackoff::new(strategy.clone()).unwrap_err(), want, "{strategy:?}");
        }
        let nan = exponential(1, 10, 1.5, 1, f64::NAN, 1).validate().unwrap_err();
        assert!(matches!(nan, FailoverConfigError::BadJitterFactor(j) if j.is_nan()));
    }

    #[test]
    fn strategies_round_trip_through_the_codec() {
        for s in [RestartStrategy::default(), RestartStrategy::NoRestart, RestartStrategy::FixedDelay { attempts_max: 2, delay_ms: 9 }] {
            let back: RestartStrategy = codec::from_bytes(&codec::to_bytes(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn the_fence_rejects_older_attempts() {
        let mut fence = AttemptFence::new(AttemptId(1));
        let cases = [(AttemptId(0), true, false), (AttemptId(1), false, true), (AttemptId(2), false, false)];
        for (attempt, stale, current) in cases {
            assert_eq!((fence.is_stale(attempt), fence.is_current(attempt)), (stale, current), "{attempt}");
        }
        assert_eq!(fence.advance(), AttemptId(2));
        assert!(fence.is_stale(AttemptId(1)));
        assert!(!fence.advance_to(AttemptId(2)));
        assert!(!fence.advance_to(AttemptId(1)));
        assert!(fence.advance_to(AttemptId(5)));
        assert_eq!(fence.current(), AttemptId(5));
        assert!(fence.is_stale(AttemptId(4)));
    }

    fn any_strategy() -> impl Strategy<Value = RestartStrategy> {
        prop_oneof![
            (0u32..5, 0u64..2_000).prop_map(|(a, d)| RestartStrategy::FixedDelay { attempts_max: a, delay_ms: d }),
            (1u64..2_000, 0u64..20_000, 1.0f64..3.0, 1u64..50_000, 0.0f64..=1.0, 1u32..8).prop_map(|(i, extra, m, r, j, a)| exponential(i, i + extra, m, r, j, a)),
            (1u32..4, 1u64..20_000, 0u64..2_000).prop_map(|(f, i, d)| RestartStrategy::FailureRate { failures_per_interval_max: f, interval_ms: i, delay_ms: d }),
            Just(RestartStrategy::NoRestart),
        ]
    }

    proptest! {
        /// Whatever the strategy and the failure times: a new restart has a strictly greater
        /// attempt and is never due before the failure; a merged failure repeats the scheduled
        /// decision; an exponential delay stays within [initial·(1−jitter), max]; giving up is final.
        #[test]
        fn attempts_only_go_up_and_giving_up_is_final(strategy in any_strategy(), gaps in prop::collection::vec((0u64..30_000, 0.0f64..1.0), 1..40)) {
            let mut b = RestartBackoff::new(strategy.clone()).unwrap();
            let (mut now, mut last): (u64, Option<(u64, AttemptId)>) = (0, None);
            let mut gave_up = false;
            for (gap, jitter) in gaps {
                now += gap;
                match b.on_failure(now, jitter) {
                    RestartDecision::RestartAt { at_ms, attempt } => {
                        prop_assert!(!gave_up, "restarted after giving up");
                        match last {
                            Some((last_at, last_attempt)) if now < last_at => prop_assert_eq!((at_ms, attempt), (last_at, last_attempt)),
                            _ => {
                                prop_assert!(at_ms >= now);
                                prop_assert!(last.is_none_or(|(_, a)| attempt > a));
                                if let RestartStrategy::ExponentialDelay { initial_backoff_ms, backoff_max_ms, jitter_factor, .. } = strategy {
                                    let low = (initial_backoff_ms as f64 * (1.0 - jitter_factor)).floor() as u64;
                                    prop_assert!(low <= at_ms - now && at_ms - now <= backoff_max_ms, "delay {} outside [{}, {}]", at_ms - now, low, backoff_max_ms);
                                }
                            }
                        }
                        last = Some((at_ms, attempt));
                    }
                    RestartDecision::GiveUp { .. } => gave_up = true,
                }
            }
        }
    }
}
