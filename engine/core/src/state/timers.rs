//! Timers per key and namespace (Flink's `InternalTimerService` / `InternalTimerServiceImpl`).
//!
//! A timer is `(timestamp, key, namespace)` in one of two time domains. It is registered for the
//! backend's current key and namespace; registering the same timer twice keeps one. Timers live
//! in their key group's table ([`KeyedStateBackend`]), so they are copied on write, snapshotted
//! and restored (and rescaled) with the key group's state.
//!
//! [`KeyedStateBackend::advance_watermark`] fires every event-time timer with
//! `timestamp <= watermark`, and [`KeyedStateBackend::advance_processing_time`] every
//! processing-time timer with `timestamp <= now_ms`, each exactly once (it is removed as it fires),
//! in `(timestamp, key group, key bytes, namespace bytes)` order. The watermark only goes up; a
//! lower one fires nothing. Registering a timer at or below the current watermark is allowed: it
//! fires at the next advance, as in Flink. The current watermark and processing time are not part
//! of snapshots: after a restore the operator's next watermark fires every restored timer it passes.
//!
//! Firing scans each key group's earliest timer: O(number of key groups + fired · log n) per
//! advance. The backend exposes the timer counts ([`KeyedStateBackend::event_time_timer_count`]);
//! bounding them is the operator's business.

use super::backend::{KeyedStateBackend, TimerKey};
use crate::codec::{self, CodecError};
use crate::ids::KeyGroup;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimeDomain {
    /// Fires when the watermark passes its timestamp.
    EventTime,
    /// Fires when the (caller's) wall clock passes its timestamp.
    ProcessingTime,
}

/// A timer that fired: when, in which domain, for which key and namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FiredTimer {
    /// The timer's timestamp in milliseconds (event time, or processing time as `i64`).
    pub timestamp: i64,
    /// The key group of the timer's key.
    pub key_group: KeyGroup,
    /// The serialized key.
    pub key_bytes: Vec<u8>,
    /// The serialized namespace (empty for the void namespace).
    pub namespace_bytes: Vec<u8>,
    /// Which clock fired it.
    pub domain: TimeDomain,
}

impl FiredTimer {
    /// The timer's key, typed.
    pub fn key<K: DeserializeOwned>(&self) -> Result<K, CodecError> {
        codec::from_bytes(&self.key_bytes)
    }

    /// The timer's namespace, typed.
    pub fn namespace<N: DeserializeOwned>(&self) -> Result<N, CodecError> {
        codec::from_bytes(&self.namespace_bytes)
    }
}

fn processing_ms_to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl KeyedStateBackend {
    fn current_timer(&self, timestamp: i64) -> (usize, TimerKey) {
        let (index, key, namespace) = self.current_key_and_namespace();
        (index, TimerKey { timestamp, key: key.into(), namespace: namespace.into() })
    }

    fn timers_mut(&mut self, index: usize, domain: TimeDomain) -> &mut BTreeSet<TimerKey> {
        let kg = self.key_group_mut(index);
        match domain {
            TimeDomain::EventTime => &mut kg.event_timers,
            TimeDomain::ProcessingTime => &mut kg.processing_timers,
        }
    }

    fn register_timer(&mut self, domain: TimeDomain, timestamp: i64) {
        let (index, timer) = self.current_timer(timestamp);
        let kg = &self.key_groups[index];
        let set = match domain {
            TimeDomain::EventTime => &kg.event_timers,
            TimeDomain::ProcessingTime => &kg.processing_timers,
        };
        if !set.contains(&timer) {
            self.timers_mut(index, domain).insert(timer);
        }
    }

    fn delete_timer(&mut self, domain: TimeDomain, timestamp: i64) {
        let (index, timer) = self.current_timer(timestamp);
        let kg = &self.key_groups[index];
        let set = match domain {
            TimeDomain::EventTime => &kg.event_timers,
            TimeDomain::ProcessingTime => &kg.processing_timers,
        };
        if set.contains(&timer) {
            self.timers_mut(index, domain).remove(&timer);
        }
    }

    /// Registers an event-time timer for the current key and namespace (idempotent).
    pub fn register_event_time_timer(&mut self, timestamp: i64) {
        self.register_timer(TimeDomain::EventTime, timestamp);
    }

    /// Registers a processing-time timer for the current key and namespace (idempotent).
    pub fn register_processing_time_timer(&mut self, timestamp_ms: u64) {
        self.register_timer(TimeDomain::ProcessingTime, processing_ms_to_i64(timestamp_ms));
    }

    /// Deletes the current key and namespace's event-time timer at `timestamp`, if any.
    pub fn delete_event_time_timer(&mut self, timestamp: i64) {
        self.delete_timer(TimeDomain::EventTime, timestamp);
    }

    /// Deletes the current key and namespace's processing-time timer at `timestamp_ms`, if any.
    pub fn delete_processing_time_timer(&mut self, timestamp_ms: u64) {
        self.delete_timer(TimeDomain::ProcessingTime, processing_ms_to_i64(timestamp_ms));
    }

    /// Advances the watermark and returns (and removes) every event-time timer with
    /// `timestamp <= watermark`, in `(timestamp, key group, key, namespace)` order.
    pub fn advance_watermark(&mut self, watermark: i64) -> Vec<FiredTimer> {
        if watermark <= self.watermark && self.watermark != i64::MIN {
            return Vec::new();
        }
        self.watermark = self.watermark.max(watermark);
        self.fire(TimeDomain::EventTime, watermark)
    }

    /// Advances processing time and returns (and removes) every processing-time timer with
    /// `timestamp <= now_ms`, in `(timestamp, key group, key, namespace)` order.
    pub fn advance_processing_time(&mut self, now_ms: u64) -> Vec<FiredTimer> {
        self.processing_time_ms = self.processing_time_ms.max(now_ms);
        self.fire(TimeDomain::ProcessingTime, processing_ms_to_i64(now_ms))
    }

    /// The highest watermark seen (`i64::MIN` before the first).
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }

    /// The highest processing time seen, in milliseconds.
    pub fn current_processing_time_ms(&self) -> u64 {
        self.processing_time_ms
    }

    /// Number of registered event-time timers.
    pub fn event_time_timer_count(&self) -> usize {
        self.key_groups.iter().map(|kg| kg.event_timers.len()).sum()
    }

    /// Number of registered processing-time timers.
    pub fn processing_time_timer_count(&self) -> usize {
        self.key_groups.iter().map(|kg| kg.processing_timers.len()).sum()
    }

    /// Makes a fired timer's key and namespace the current ones (before calling `on_timer`).
    pub fn set_current_key_from_timer(&mut self, timer: &FiredTimer) {
        self.set_current_key_bytes(timer.key_group, &timer.key_bytes, &timer.namespace_bytes);
    }

    fn fire(&mut self, domain: TimeDomain, up_to: i64) -> Vec<FiredTimer> {
        let mut fired = Vec::new();
        for index in 0..self.key_groups.len() {
            let kg = &self.key_groups[index];
            let set = match domain {
                TimeDomain::EventTime => &kg.event_timers,
                TimeDomain::ProcessingTime => &kg.processing_timers,
            };
            if set.first().is_none_or(|t| t.timestamp > up_to) {
                continue;
            }
            let key_group = KeyGroup(self.range.start + index as u32);
            let set = self.timers_mut(index, domain);
            while let Some(first) = set.first() {
                if first.timestamp > up_to {
                    break;
                }
                let timer = set.pop_first().expect("first exists");
                fired.push(FiredTimer {
                    timestamp: timer.timestamp,
                    key_group,
                    key_bytes: timer.key.into(),
                    namespace_bytes: timer.namespace.into(),
                    domain,
                });
            }
        }
        // Per key group the order is (timestamp, key, namespace); merge across key groups.
        fired.sort_by(|a, b| {
            (a.timestamp, a.key_group, &a.key_bytes, &a.namespace_bytes).cmp(&(
                b.timestamp,
                b.key_group,
                &b.key_bytes,
                &b.namespace_bytes,
            ))
        });
        debug_assert!(fired.iter().all(|t| t.timestamp <= up_to));
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_groups::{key_group_for_key, KeyGroupRange};

    fn fired_summary(fired: &[FiredTimer]) -> Vec<(i64, i32, u8)> {
        fired
            .iter()
            .map(|t| (t.timestamp, t.key::<i32>().unwrap(), if t.namespace_bytes.is_empty() { 0 } else { t.namespace::<u8>().unwrap() }))
            .collect()
    }

    #[test]
    fn the_watermark_fires_timers_up_to_it_once_in_timestamp_order() {
        let mut be = KeyedStateBackend::new(64, KeyGroupRange::all(64));
        for (key, ts) in [(1, 30), (2, 10), (3, 20), (1, 10), (4, 50), (2, 10)] {
            be.set_current_key(&key);
            be.register_event_time_timer(ts);
        }
        assert_eq!(be.event_time_timer_count(), 5, "the duplicate (2, 10) is one timer");
        // (watermark, timers fired)
        let table: &[(i64, &[(i64, i32)])] = &[
            (5, &[]),
            (20, &[(10, 1), (10, 2), (20, 3)]),
            (20, &[]),
            (15, &[]),
            (49, &[(30, 1)]),
            (i64::MAX, &[(50, 4)]),
        ];
        for &(wm, want) in table {
            let fired = be.advance_watermark(wm);
            assert!(fired.iter().all(|t| t.domain == TimeDomain::EventTime));
            let got: Vec<(i64, i32)> = fired_summary(&fired).into_iter().map(|(ts, k, _)| (ts, k)).collect();
            // Same timestamp: ordered by key group, then key bytes.
            let mut want = want.to_vec();
            want.sort_by_key(|&(ts, k)| (ts, key_group_for_key(&k, 64), crate::codec::to_bytes(&k).unwrap()));
            assert_eq!(got, want, "watermark {wm}");
        }
        assert_eq!(be.current_watermark(), i64::MAX);
        assert_eq!(be.event_time_timer_count(), 0);
    }

    #[test]
    fn timers_are_per_key_and_namespace_and_can_be_deleted() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        be.set_current_key(&1i32);
        be.register_event_time_timer(5);
        be.set_current_namespace(&7u8);
        be.register_event_time_timer(5);
        be.register_event_time_timer(6);
        be.delete_event_time_timer(6);
        be.delete_event_time_timer(99); // absent: no-op
        be.set_current_key(&2i32);
        be.register_event_time_timer(5);
        be.set_void_namespace();
        be.delete_event_time_timer(5); // key 2, void namespace: none registered
        assert_eq!(be.event_time_timer_count(), 3);
        let mut got = fired_summary(&be.advance_watermark(10));
        got.sort();
        assert_eq!(got, vec![(5, 1, 0), (5, 1, 7), (5, 2, 7)]);
    }

    #[test]
    fn processing_time_timers_fire_on_processing_time_only() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        be.set_current_key(&1i32);
        be.register_processing_time_timer(100);
        be.register_processing_time_timer(100);
        be.register_event_time_timer(100);
        be.register_processing_time_timer(200);
        be.delete_processing_time_timer(200);
        assert_eq!((be.processing_time_timer_count(), be.event_time_timer_count()), (1, 1));
        assert!(be.advance_processing_time(99).is_empty());
        let fired = be.advance_processing_time(100);
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].timestamp, fired[0].domain), (100, TimeDomain::ProcessingTime));
        assert_eq!(be.current_processing_time_ms(), 100);
        assert_eq!(be.event_time_timer_count(), 1, "event-time timers are untouched");
        assert!(be.advance_processing_time(u64::MAX).is_empty());
    }

    #[test]
    fn a_timer_below_the_watermark_fires_at_the_next_advance() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        be.set_current_key(&3i32);
        assert!(be.advance_watermark(100).is_empty());
        be.register_event_time_timer(50);
        assert!(be.advance_watermark(100).is_empty(), "the same watermark is no advance");
        assert_eq!(fired_summary(&be.advance_watermark(101)), vec![(50, 3, 0)]);
    }

    #[test]
    fn a_fired_timer_restores_its_key_and_namespace() {
        let mut be = KeyedStateBackend::new(16, KeyGroupRange::all(16));
        be.set_current_key(&"k".to_string());
        be.set_current_namespace(&(0i64, 10i64));
        be.register_event_time_timer(10);
        be.set_current_key(&"other".to_string());
        be.set_void_namespace();
        let fired = be.advance_watermark(10);
        be.set_current_key_from_timer(&fired[0]);
        assert_eq!(be.current_key::<String>(), Some("k".to_string()));
        assert_eq!(be.current_key_group(), Some(key_group_for_key(&"k".to_string(), 16)));
        assert_eq!(fired[0].namespace::<(i64, i64)>(), Ok((0, 10)));
        assert_eq!(be.current_namespace_bytes(), &fired[0].namespace_bytes[..]);
    }
}
