//! Keyed process: a user function with keyed state and timers, after a `key_by`
//! (Flink's `KeyedProcessOperator` running a `KeyedProcessFunction`).
//!
//! For every record the operator extracts its key, makes it the backend's current key, and calls
//! [`KeyedProcessFunction::process_element`]; state the function touches is scoped to that key.
//! A function may instead take the whole batch ([`KeyedProcessFunction::process_batch`]) when it
//! can give exactly the same state and outputs with less work per record: [`RunningCount`] does,
//! counting a batch through one [`ValueState::batch`](crate::state::ValueState::batch) (each key
//! group's table resolved once per batch, no key copied or set per word).
//! Watermarks fire the event-time timers that are due, processing time fires processing-time
//! timers; for each fired timer the timer's key becomes current and
//! [`KeyedProcessFunction::on_timer`] runs.

use super::{Data, Operator, OperatorContext, OperatorError, OperatorResult};
use crate::element::{Timestamp, Watermark};
use crate::key_groups::{Key, KeySelector};
use crate::state::{FiredTimer, KeyedStateBackend, ValueState, ValueStateDescriptor};
use std::marker::PhantomData;

/// What a keyed process function sees besides the record: its key, keyed state, time, timers.
pub struct KeyedContext<'a, K> {
    /// The current key.
    pub key: &'a K,
    /// Keyed state, scoped to `key`.
    pub state: &'a mut KeyedStateBackend,
    /// Processing time now.
    pub now_ms: u64,
    /// The operator's current event-time watermark.
    pub watermark: Timestamp,
}

impl<K> KeyedContext<'_, K> {
    /// Fires `on_timer` for this key once the watermark reaches `timestamp`.
    pub fn register_event_time_timer(&mut self, timestamp: Timestamp) {
        self.state.register_event_time_timer(timestamp);
    }

    /// Fires `on_timer` for this key once processing time reaches `timestamp_ms`.
    pub fn register_processing_time_timer(&mut self, timestamp_ms: u64) {
        self.state.register_processing_time_timer(timestamp_ms);
    }
}

/// A user function over a keyed stream.
pub trait KeyedProcessFunction: Send + 'static {
    /// The key type.
    type Key: Key;
    /// Input records.
    type In: Data;
    /// Output records.
    type Out: Data;

    /// Called once before any record, after the state was restored: register state here
    /// (`state.get_state(&descriptor)`) and keep the returned handles.
    fn open(&mut self, _state: &mut KeyedStateBackend) -> OperatorResult {
        Ok(())
    }

    /// Handles one record; state in `ctx.state` is scoped to `ctx.key`.
    fn process_element(&mut self, record: Self::In, ctx: &mut KeyedContext<'_, Self::Key>, out: &mut Vec<Self::Out>) -> OperatorResult;

    /// Handles a whole batch at once, if the function can: processes every record of `records`
    /// in order (draining it) and returns `Some`; or returns `None` (the default), leaving
    /// `records` as they are, and the operator calls [`process_element`](Self::process_element)
    /// per record under its key. A whole-batch path must leave the state, the outputs and their
    /// order exactly as the records one by one would (e.g. with
    /// [`ValueState::batch`](crate::state::ValueState::batch)); `selector` gives each record's key.
    fn process_batch<S: KeySelector<Self::In, Self::Key>>(
        &mut self,
        _records: &mut Vec<Self::In>,
        _selector: &S,
        _state: &mut KeyedStateBackend,
        _out: &mut Vec<Self::Out>,
    ) -> Option<OperatorResult> {
        None
    }

    /// A timer registered for `ctx.key` fired at `timestamp`.
    fn on_timer(&mut self, _timestamp: Timestamp, _ctx: &mut KeyedContext<'_, Self::Key>, _out: &mut Vec<Self::Out>) -> OperatorResult {
        Ok(())
    }
}

/// Runs a [`KeyedProcessFunction`], extracting each record's key with the `key_by` selector.
pub struct KeyedProcessOperator<F: KeyedProcessFunction, S> {
    function: F,
    key_selector: S,
    /// The current record's key, kept between records so a [`KeySelector`] can reuse its buffer.
    key: Option<F::Key>,
    watermark: Timestamp,
    _types: PhantomData<fn() -> F>,
}

impl<F: KeyedProcessFunction, S> KeyedProcessOperator<F, S> {
    /// Wraps `function`; `key_selector` must be the selector of the `key_by` before this operator.
    pub fn new(function: F, key_selector: S) -> Self {
        KeyedProcessOperator { function, key_selector, key: None, watermark: Watermark::MIN.0, _types: PhantomData }
    }

    fn fire(&mut self, state: &mut KeyedStateBackend, now_ms: u64, timers: Vec<FiredTimer>, out: &mut Vec<F::Out>) -> OperatorResult {
        for timer in timers {
            let key: F::Key = timer.key().map_err(|e| OperatorError::State(e.to_string()))?;
            state.set_current_key(&key);
            let mut kctx = KeyedContext { key: &key, state: &mut *state, now_ms, watermark: self.watermark };
            self.function.on_timer(timer.timestamp, &mut kctx, out)?;
        }
        Ok(())
    }
}

impl<F, S> Operator for KeyedProcessOperator<F, S>
where
    F: KeyedProcessFunction,
    S: KeySelector<F::In, F::Key>,
{
    type In = F::In;
    type Out = F::Out;

    fn initialize_state(&mut self, ctx: &mut OperatorContext<'_>, _restored_from: Option<crate::ids::CheckpointId>) -> OperatorResult {
        self.function.open(ctx.keyed())
    }

    fn process_batch(&mut self, ctx: &mut OperatorContext<'_>, input: Vec<F::In>, out: &mut Vec<F::Out>) -> OperatorResult {
        let now_ms = ctx.now_ms;
        let watermark = self.watermark;
        let state = ctx.keyed();
        let mut input = input;
        if let Some(result) = self.function.process_batch(&mut input, &self.key_selector, state, out) {
            return result;
        }
        for record in input {
            self.key_selector.key_into(&record, &mut self.key);
            let key = self.key.as_ref().expect("key_into sets the key");
            state.set_current_key(key);
            let mut kctx = KeyedContext { key, state: &mut *state, now_ms, watermark };
            self.function.process_element(record, &mut kctx, out)?;
        }
        Ok(())
    }

    fn process_watermark(&mut self, ctx: &mut OperatorContext<'_>, watermark: Watermark, out: &mut Vec<F::Out>) -> OperatorResult {
        if watermark.0 <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark.0;
        let now_ms = ctx.now_ms;
        let state = ctx.keyed();
        let fired = state.advance_watermark(watermark.0);
        self.fire(state, now_ms, fired, out)
    }

    fn advance_processing_time(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Vec<F::Out>) -> OperatorResult {
        let now_ms = ctx.now_ms;
        let state = ctx.keyed();
        let fired = state.advance_processing_time(now_ms);
        self.fire(state, now_ms, fired, out)
    }
}

/// Flink's classic stateful word count as a keyed process function: keeps a `ValueState<u64>`
/// count per word and emits `(word, running_count)` for every occurrence. The word is its own
/// key: a `String` by default, or any other [`Key`] such as an inline
/// [`CompactString`](crate::key_groups::CompactString) (whose state entries and output bytes
/// are a `String`'s).
pub struct RunningCount<W = String> {
    count: Option<ValueState<u64>>,
    _word: PhantomData<fn() -> W>,
}

impl<W> Clone for RunningCount<W> {
    fn clone(&self) -> Self {
        RunningCount { count: self.count, _word: PhantomData }
    }
}

impl<W> Default for RunningCount<W> {
    fn default() -> Self {
        RunningCount { count: None, _word: PhantomData }
    }
}

impl<W> std::fmt::Debug for RunningCount<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCount").field("count", &self.count).finish()
    }
}

impl<W> RunningCount<W> {
    /// The name of the count state.
    pub const STATE: &'static str = "count";
}

impl<W: Key> KeyedProcessFunction for RunningCount<W> {
    type Key = W;
    type In = W;
    type Out = (W, u64);

    fn open(&mut self, state: &mut KeyedStateBackend) -> OperatorResult {
        let count = state.get_state(&ValueStateDescriptor::<u64>::new(Self::STATE)).map_err(|e| OperatorError::State(e.to_string()))?;
        self.count = Some(count);
        Ok(())
    }

    fn process_element(&mut self, word: W, ctx: &mut KeyedContext<'_, W>, out: &mut Vec<(W, u64)>) -> OperatorResult {
        let count = self.count.ok_or_else(|| OperatorError::Protocol("process_element before open".into()))?;
        // One table lookup per record (read-modify-write), none more on a hit.
        let n = count.update_with(ctx.state, || 0, |n| {
            *n += 1;
            *n
        });
        out.push((word, n));
        Ok(())
    }

    /// The whole batch with one [`ValueState::batch`]: no current key set per word, each key
    /// group's table resolved once per batch; the same counts, outputs and order.
    fn process_batch<S: KeySelector<W, W>>(&mut self, records: &mut Vec<W>, selector: &S, state: &mut KeyedStateBackend, out: &mut Vec<(W, u64)>) -> Option<OperatorResult> {
        let Some(count) = self.count else {
            return Some(Err(OperatorError::Protocol("process_batch before open".into())));
        };
        let mut counts = count.batch(state);
        let mut scratch = None;
        out.reserve(records.len());
        for word in records.drain(..) {
            let key = selector.key_of(&word, &mut scratch);
            let n = match counts.update_with(key, || 0, |n| {
                *n += 1;
                *n
            }) {
                Ok(n) => n,
                Err(e) => return Some(Err(OperatorError::State(e.to_string()))),
            };
            out.push((word, n));
        }
        Some(Ok(()))
    }
}

/// Keyed functions for tests elsewhere in the crate.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// Emits every record unchanged (a keyed no-op).
    pub struct Forward<K, T>(PhantomData<fn() -> (K, T)>);

    impl<K, T> Default for Forward<K, T> {
        fn default() -> Self {
            Forward(PhantomData)
        }
    }

    impl<K, T> Clone for Forward<K, T> {
        fn clone(&self) -> Self {
            Forward(PhantomData)
        }
    }

    impl<K: Key, T: Data> KeyedProcessFunction for Forward<K, T> {
        type Key = K;
        type In = T;
        type Out = T;
        fn process_element(&mut self, record: T, _ctx: &mut KeyedContext<'_, K>, out: &mut Vec<T>) -> OperatorResult {
            out.push(record);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_groups::KeyGroupRange;
    use crate::operator::test_support::Harness;

    #[test]
    fn running_count_emits_each_words_running_count_in_order() {
        let mut h = Harness::keyed(KeyedProcessOperator::new(RunningCount::default(), |w: &String| w.clone()), 128, KeyGroupRange::all(128));
        h.initialize(None);
        let words = |ws: &[&str]| ws.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let got = h.batch(words(&["a", "b", "a", "a", "b", "c"]));
        let want: Vec<(String, u64)> = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("c", 1)].iter().map(|(w, n)| (w.to_string(), *n)).collect();
        assert_eq!(got, want);
        assert_eq!(h.batch(words(&["c"])), vec![("c".to_string(), 2)]);
    }

    #[test]
    fn an_inline_string_word_count_counts_and_snapshots_exactly_like_the_string_one() {
        use crate::ids::CheckpointId;
        use crate::key_groups::{CompactString, RecordIsKey};
        let words = ["to", "be", "or", "not", "to", "be", "straße", "a word longer than twenty-four bytes", "to", ""];
        let mut strings = Harness::keyed(KeyedProcessOperator::new(RunningCount::<String>::default(), RecordIsKey), 128, KeyGroupRange::all(128));
        let mut inline = Harness::keyed(KeyedProcessOperator::new(RunningCount::<CompactString>::default(), RecordIsKey), 128, KeyGroupRange::all(128));
        strings.initialize(None);
        inline.initialize(None);
        let want = strings.batch(words.iter().map(|w| w.to_string()).collect());
        let got = inline.batch(words.iter().map(|w| CompactString::new(w)).collect());
        assert_eq!(got.iter().map(|(w, n)| (w.to_string(), *n)).collect::<Vec<_>>(), want);
        assert_eq!(want.iter().filter(|(w, _)| w == "to").map(|(_, n)| *n).collect::<Vec<_>>(), vec![1, 2, 3]);
        // The state is keyed by the same bytes: the snapshots are the same blob.
        let blob = |backend: Option<&KeyedStateBackend>| backend.unwrap().snapshot(CheckpointId(1)).to_blob().unwrap().0;
        assert_eq!(blob(inline.keyed.as_ref()), blob(strings.keyed.as_ref()));
    }

    /// `RunningCount` without its whole-batch path: one `process_element` per word.
    #[derive(Clone, Default)]
    struct OneByOne(RunningCount<String>);
    impl KeyedProcessFunction for OneByOne {
        type Key = String;
        type In = String;
        type Out = (String, u64);
        fn open(&mut self, state: &mut KeyedStateBackend) -> OperatorResult {
            self.0.open(state)
        }
        fn process_element(&mut self, word: String, ctx: &mut KeyedContext<'_, String>, out: &mut Vec<(String, u64)>) -> OperatorResult {
            self.0.process_element(word, ctx, out)
        }
    }

    #[test]
    fn running_count_counts_a_batch_at_once_exactly_as_word_by_word() {
        use crate::ids::CheckpointId;
        use crate::key_groups::RecordIsKey;
        let batches: Vec<Vec<String>> = ["to be or not to be", "", "be a word longer than twenty four bytes be", "to to to"]
            .iter()
            .map(|line| line.split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect())
            .collect();
        let mut batched = Harness::keyed(KeyedProcessOperator::new(RunningCount::<String>::default(), RecordIsKey), 128, KeyGroupRange::all(128));
        let mut one_by_one = Harness::keyed(KeyedProcessOperator::new(OneByOne::default(), |w: &String| w.clone()), 128, KeyGroupRange::all(128));
        batched.initialize(None);
        one_by_one.initialize(None);
        let mut held = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(batched.batch(batch.clone()), one_by_one.batch(batch.clone()), "batch {i}");
            // A snapshot held across the next batch: both copy the same key groups on write.
            for h in [&batched.keyed, &one_by_one.keyed] {
                held.push(h.as_ref().unwrap().snapshot(CheckpointId(i as u64)));
            }
        }
        let state = |h: &Option<KeyedStateBackend>| {
            let b = h.as_ref().unwrap();
            (b.snapshot(CheckpointId(9)).to_blob().unwrap().0, b.key_group_copies(), b.current_key::<String>())
        };
        assert_eq!(state(&batched.keyed), state(&one_by_one.keyed));
        assert_eq!(state(&batched.keyed).2, Some("to".to_string()), "the last word is the current key");
    }

    #[test]
    fn a_word_routed_to_the_wrong_subtask_fails_the_batch_with_a_state_error() {
        use crate::key_groups::{key_group_for_key, RecordIsKey};
        let range = KeyGroupRange::new(0, 63);
        let foreign = (0..100).map(|i| format!("w{i}")).find(|w| !range.contains(key_group_for_key(w, 128))).unwrap();
        let mut h = Harness::keyed(KeyedProcessOperator::new(RunningCount::<String>::default(), RecordIsKey), 128, range);
        h.initialize(None);
        let mut out = Vec::new();
        let mut ctx = OperatorContext {
            now_ms: 0,
            subtask: crate::ids::SubtaskIndex(0),
            parallelism: 2,
            attempt: crate::ids::AttemptId(1),
            keyed: h.keyed.as_mut(),
            operator_state: &mut h.operator_state,
            commands: &mut h.commands,
        };
        let result = h.op.process_batch(&mut ctx, vec![foreign], &mut out);
        assert!(matches!(result, Err(OperatorError::State(ref e)) if e.contains("routed to the wrong subtask")), "{result:?}");
    }

    /// Emits each record with the key its context saw.
    #[derive(Clone, Default)]
    struct KeyEcho;
    impl KeyedProcessFunction for KeyEcho {
        type Key = String;
        type In = String;
        type Out = (String, String);
        fn open(&mut self, _state: &mut KeyedStateBackend) -> OperatorResult {
            Ok(())
        }
        fn process_element(&mut self, record: String, ctx: &mut KeyedContext<'_, String>, out: &mut Vec<(String, String)>) -> OperatorResult {
            assert_eq!(ctx.state.current_key::<String>().as_ref(), Some(ctx.key), "the backend's current key is the context's");
            out.push((ctx.key.clone(), record));
            Ok(())
        }
    }

    #[test]
    fn a_record_keyed_by_itself_is_processed_under_its_own_key() {
        let mut h = Harness::keyed(KeyedProcessOperator::new(KeyEcho, crate::key_groups::RecordIsKey), 128, KeyGroupRange::all(128));
        h.initialize(None);
        // Longer, shorter and equal keys in a row: the reused key buffer never leaks a previous key.
        let words: Vec<String> = ["straße", "a", "a", "", "a much longer word", "b"].iter().map(|w| w.to_string()).collect();
        let want: Vec<(String, String)> = words.iter().map(|w| (w.clone(), w.clone())).collect();
        assert_eq!(h.batch(words), want);
        let mut counts = Harness::keyed(KeyedProcessOperator::new(RunningCount::default(), crate::key_groups::RecordIsKey), 128, KeyGroupRange::all(128));
        counts.initialize(None);
        let got = counts.batch(["a", "b", "a"].iter().map(|w| w.to_string()).collect());
        assert_eq!(got, vec![("a".to_string(), 1), ("b".to_string(), 1), ("a".to_string(), 2)]);
    }

    /// Sums values per key and emits the sum when the event-time timer at the key's deadline fires.
    #[derive(Clone, Default)]
    struct SumUntil {
        sum: Option<ValueState<u64>>,
    }
    impl KeyedProcessFunction for SumUntil {
        type Key = String;
        type In = (String, i64, u64); // key, deadline, value
        type Out = (String, i64, u64);
        fn open(&mut self, state: &mut KeyedStateBackend) -> OperatorResult {
            self.sum = Some(state.get_state(&ValueStateDescriptor::new("sum")).map_err(|e| OperatorError::State(e.to_string()))?);
            Ok(())
        }
        fn process_element(&mut self, (_, deadline, v): Self::In, ctx: &mut KeyedContext<'_, String>, _out: &mut Vec<Self::Out>) -> OperatorResult {
            *self.sum.unwrap().get_or_insert_with(ctx.state, || 0) += v;
            ctx.register_event_time_timer(deadline);
            Ok(())
        }
        fn on_timer(&mut self, ts: Timestamp, ctx: &mut KeyedContext<'_, String>, out: &mut Vec<Self::Out>) -> OperatorResult {
            let sum = self.sum.unwrap();
            let total = sum.value(ctx.state).unwrap_or(0);
            sum.clear(ctx.state);
            out.push((ctx.key.clone(), ts, total));
            Ok(())
        }
    }

    #[test]
    fn event_time_timers_fire_per_key_when_the_watermark_passes_them() {
        let mut h = Harness::keyed(KeyedProcessOperator::new(SumUntil::default(), |r: &(String, i64, u64)| r.0.clone()), 128, KeyGroupRange::all(128));
        h.initialize(None);
        let rec = |k: &str, d: i64, v: u64| (k.to_string(), d, v);
        assert!(h.batch(vec![rec("a", 10, 1), rec("b", 20, 5), rec("a", 10, 2)]).is_empty());
        assert_eq!(h.watermark(9), vec![]);
        assert_eq!(h.watermark(10), vec![rec("a", 10, 3)]);
        assert_eq!(h.watermark(10), vec![], "a repeated watermark fires nothing");
        assert_eq!(h.watermark(100), vec![rec("b", 20, 5)]);
    }
}
