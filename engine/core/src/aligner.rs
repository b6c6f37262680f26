//! Barrier alignment for one input gate: the part of a task that turns `n` interleaved input
//! channels into one ordered sequence of "process these records", "the watermark advanced",
//! "snapshot now for checkpoint n", "end of data" and "end of input".
//!
//! It follows Flink's `SingleCheckpointBarrierHandler` (aligned, exactly-once),
//! `CheckpointBarrierTracker` (at-least-once) and `StatusWatermarkValve` (watermark combining),
//! as a pure synchronous state machine: [`BarrierAligner::push`] an element that arrived on a
//! channel, then [`BarrierAligner::poll`] until `None` and carry out each [`AlignerOutput`] in order.
//!
//! # Exactly-once ([`CheckpointingMode::ExactlyOnce`])
//!
//! When barrier `n` arrives on channel `c`, `c` is *blocked*: the runtime should stop reading it
//! (and stop granting it credit, see [`BarrierAligner::is_blocked`]). Whatever still arrives on a
//! blocked channel is buffered in arrival order — the buffer is only a safety net, bounded by
//! [`AlignerConfig::alignment_buffer_bytes_max`] and [`ALIGNMENT_BUFFER_ELEMENTS_MAX`]. Once barrier
//! `n` has arrived on every channel that has not finished, the aligner outputs
//! [`AlignerOutput::Checkpoint`] and then releases the buffered elements, per channel in arrival
//! order, exactly as if they had arrived now. So every record output before `Checkpoint(n)` was sent
//! before barrier `n` on its channel, and every record output after it was sent after (the bug class
//! of FLINK-17568).
//!
//! - A finished channel ([`StreamElement::EndOfPartition`]) counts as aligned: if the last
//!   unaligned channel finishes, the checkpoint completes.
//! - A newer barrier `m > n` on an unblocked channel while `n` is aligning means `n` can no longer
//!   complete here (that channel skipped it): `n` is aborted
//!   ([`AbortReason::Subsumed`]), everything buffered for `n` is released in order, and only then is
//!   barrier `m` processed, which starts aligning `m` with its channel blocked.
//! - A barrier whose id is not newer than the newest checkpoint this gate has started (completed,
//!   aborted, or still aligning but older) is obsolete and ignored: it neither blocks nor buffers
//!   (FLINK-20654).
//! - If buffering an element would exceed the bound, the checkpoint is aborted
//!   ([`AbortReason::AlignmentBufferFull`]), everything is released in order, nothing stays blocked,
//!   and the element that did not fit is processed after the released ones.
//! - A blocked channel's elements are buffered whatever they are: records, watermarks, a later
//!   barrier, its end of data or its end of partition are all "after barrier `n`" and take effect on
//!   release.
//!
//! # At-least-once ([`CheckpointingMode::AtLeastOnce`])
//!
//! Nothing blocks and nothing is buffered. Barrier `n` is counted per channel and
//! `Checkpoint(n)` is output when it has been seen on every unfinished channel; a newer barrier
//! aborts the older pending checkpoint. Records that arrive after barrier `n` on a fast channel pass
//! through *before* `Checkpoint(n)`: after a restore from `n` they are processed again. That is the
//! at-least-once hazard, and the tests below show it happens.
//!
//! # End of data, end of input (FLIP-147: Flink's `EndOfData`, `CheckpointedInputGate`)
//!
//! A bounded input ends in two steps. [`StreamElement::EndOfData`] on a channel means its producer
//! sends no more records or watermarks; the channel stays open — barriers still come and align
//! as usual (it must still deliver the final checkpoint's barrier) — until its
//! [`StreamElement::EndOfPartition`]. EndOfData takes effect in channel order like any element (a
//! blocked channel buffers it). A channel that finishes without an EndOfData (an older producer, an
//! input that failed over) has ended its data too.
//!
//! Once every channel's data has ended, the aligner outputs [`AlignerOutput::Watermark`]`(MAX)`
//! (unless the gate's watermark already is MAX) and then [`AlignerOutput::EndOfData`], once: the
//! task ends its operators' input (their output flows on, into the checkpoint whose barrier
//! follows) and forwards EndOfData. Once every channel has finished, [`AlignerOutput::EndOfInput`]
//! follows, once and last: the task closes its outputs. Like a record, the gate's EndOfData is
//! "before checkpoint `n`" exactly when every channel ended its data before barrier `n` (or
//! finished without it): in exactly-once mode it is output before `Checkpoint(n)` then, and after
//! it otherwise.
//!
//! # Watermarks (`StatusWatermarkValve`)
//!
//! Each channel's watermark only goes up (a lower one is ignored). The gate's watermark is the
//! minimum over the channels whose data has not ended; an ended channel's event time has ended and
//! no longer holds the gate back, so once every channel's data has ended the gate's watermark is
//! [`Watermark::MAX`]. [`AlignerOutput::Watermark`] is output only when the gate's watermark
//! increases. Watermarks are delivered on the same path as records, so a blocked channel's
//! watermark waits in the buffer.
//!
//! # Protocol violations
//!
//! An element on a channel that does not exist, anything after `EndOfPartition` on a channel, a
//! record, watermark or second EndOfData after `EndOfData` on a channel, or a barrier whose id is
//! not greater than the previous barrier on the same channel is refused with a typed
//! [`AlignerError`] from [`BarrierAligner::push`], before any state changes. Checked at
//! arrival, so a violation is reported even while the channel is blocked.
//!
//! # Output queue bound
//!
//! Outputs wait in a queue until polled. Poll until `None` after each push: the queue then never
//! holds more than the outputs of one pushed element plus those of the released alignment buffer,
//! which is bounded above.

use crate::element::{Barrier, CheckpointingMode, StreamElement, Watermark};
use crate::ids::{ChannelIndex, CheckpointId};
use std::collections::VecDeque;
use thiserror::Error;

/// At most this many elements wait in the alignment buffer, whatever their sizes (a zero-byte
/// element still costs memory). Buffering one more aborts the alignment like a full byte budget.
pub const ALIGNMENT_BUFFER_ELEMENTS_MAX: usize = 1 << 16;

/// The default alignment buffer budget: 64 MiB.
pub const ALIGNMENT_BUFFER_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// How a gate's aligner treats barriers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlignerConfig {
    /// Exactly-once (aligned: block and buffer) or at-least-once (count barriers only).
    pub mode: CheckpointingMode,
    /// Exactly-once only: the most bytes (as reported by the caller on `push`) that may wait in the
    /// alignment buffer. Buffering beyond it aborts the alignment.
    pub alignment_buffer_bytes_max: usize,
}

impl AlignerConfig {
    /// Aligned, exactly-once checkpoints with the given buffer budget.
    pub const fn exactly_once(alignment_buffer_bytes_max: usize) -> Self {
        AlignerConfig { mode: CheckpointingMode::ExactlyOnce, alignment_buffer_bytes_max }
    }

    /// At-least-once checkpoints: barriers are counted, channels never block (no buffer is used).
    pub const fn at_least_once() -> Self {
        AlignerConfig { mode: CheckpointingMode::AtLeastOnce, alignment_buffer_bytes_max: 0 }
    }
}

impl Default for AlignerConfig {
    /// Exactly-once with [`ALIGNMENT_BUFFER_BYTES_MAX_DEFAULT`].
    fn default() -> Self {
        AlignerConfig::exactly_once(ALIGNMENT_BUFFER_BYTES_MAX_DEFAULT)
    }
}

/// Why this gate gave up on a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// A newer barrier arrived on a channel that had not delivered this checkpoint's barrier.
    Subsumed {
        /// The newer checkpoint.
        by: CheckpointId,
    },
    /// Buffering the next element would have exceeded the alignment buffer's bound
    /// (bytes or [`ALIGNMENT_BUFFER_ELEMENTS_MAX`]).
    AlignmentBufferFull {
        /// The bytes the buffer would have held with that element.
        bytes: usize,
    },
}

/// What the task must do next; carry these out in the order [`BarrierAligner::poll`] returns them.
#[derive(Clone, Debug, PartialEq)]
pub enum AlignerOutput<T> {
    /// Hand these records (never empty) from `channel` to the operator.
    Records {
        /// The channel they arrived on.
        channel: ChannelIndex,
        /// The records, in the order they were sent.
        records: Vec<T>,
    },
    /// The gate's combined watermark advanced to this value.
    Watermark(Watermark),
    /// The barrier has arrived on every unfinished channel: snapshot now, before carrying out any
    /// later output of this aligner, then forward the barrier downstream.
    Checkpoint(Barrier),
    /// This gate will not take part in the checkpoint; the task should decline it.
    CheckpointAborted {
        /// The aborted checkpoint.
        checkpoint_id: CheckpointId,
        /// Why.
        reason: AbortReason,
    },
    /// Every channel's data has ended (its `EndOfData` took effect, or it finished): no record or
    /// watermark follows, only checkpoints and [`AlignerOutput::EndOfInput`]. Output once, right
    /// after `Watermark(MAX)`. The task ends its operators' input and forwards `EndOfData`.
    EndOfData,
    /// Every channel has delivered its end of partition (output once, and last, after
    /// [`AlignerOutput::EndOfData`]).
    EndOfInput,
}

/// A protocol violation by the caller or an upstream producer. The push that returns it changes
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AlignerError {
    /// A gate must have at least one channel.
    #[error("an input gate needs at least one channel")]
    NoChannels,
    /// The channel index is outside `[0, num_channels)`.
    #[error("{channel} is not a channel of this gate ({num_channels} channels)")]
    UnknownChannel {
        /// The offending channel.
        channel: ChannelIndex,
        /// The gate's channel count.
        num_channels: u32,
    },
    /// Something arrived after the channel's `EndOfPartition`.
    #[error("an element arrived on {channel} after its end of partition")]
    ElementAfterEndOfPartition {
        /// The offending channel.
        channel: ChannelIndex,
    },
    /// A record, a watermark or a second end of data arrived after the channel's `EndOfData`.
    #[error("a record, watermark or second end of data arrived on {channel} after its end of data")]
    ElementAfterEndOfData {
        /// The offending channel.
        channel: ChannelIndex,
    },
    /// The same barrier arrived twice on one channel.
    #[error("barrier {checkpoint_id} arrived twice on {channel}")]
    DuplicateBarrier {
        /// The offending channel.
        channel: ChannelIndex,
        /// The repeated checkpoint.
        checkpoint_id: CheckpointId,
    },
    /// A barrier older than one the channel already delivered.
    #[error("barrier {checkpoint_id} arrived on {channel} after the newer barrier {previous}")]
    BarrierOutOfOrder {
        /// The offending channel.
        channel: ChannelIndex,
        /// The late barrier's checkpoint.
        checkpoint_id: CheckpointId,
        /// The newer barrier the channel delivered before it.
        previous: CheckpointId,
    },
}

/// An element that has arrived but not yet taken effect (buffered, or queued for processing).
#[derive(Debug)]
struct Pending<T> {
    channel: ChannelIndex,
    element: StreamElement<T>,
    size_bytes: usize,
}

/// Per-channel state. The `*_arrived` fields describe what the channel has *sent* (checked on
/// push); the others describe what has *taken effect* (a blocked channel's elements have arrived
/// but not taken effect).
#[derive(Clone, Debug)]
struct Channel {
    last_barrier_arrived: Option<CheckpointId>,
    data_end_arrived: bool,
    end_arrived: bool,
    /// Its `EndOfData` took effect (a finished channel's data has ended too, see
    /// [`Channel::data_over`]).
    data_ended: bool,
    finished: bool,
    watermark: Watermark,
}

impl Channel {
    /// No record or watermark will take effect on this channel any more.
    fn data_over(&self) -> bool {
        self.data_ended || self.finished
    }
}

/// The checkpoint this gate is aligning (exactly-once) or counting (at-least-once).
#[derive(Clone, Debug)]
struct Alignment {
    /// The first barrier of this checkpoint that took effect.
    barrier: Barrier,
    /// Which channels' barriers took effect; in exactly-once mode, exactly the blocked channels.
    arrived: Vec<bool>,
}

impl Alignment {
    fn id(&self) -> CheckpointId {
        self.barrier.checkpoint_id
    }
}

/// The barrier aligner of one input gate; see the [module docs](self).
#[derive(Debug)]
pub struct BarrierAligner<T> {
    config: AlignerConfig,
    channels: Vec<Channel>,
    /// The checkpoint being aligned, if any.
    alignment: Option<Alignment>,
    /// The newest checkpoint id this gate has started (aligning, completed or aborted).
    newest_started: Option<CheckpointId>,
    /// Elements of blocked channels, in arrival order.
    buffer: VecDeque<Pending<T>>,
    buffered_bytes: usize,
    /// Elements to process before `push` returns: the pushed one, or released ones.
    work: VecDeque<Pending<T>>,
    output: VecDeque<AlignerOutput<T>>,
    /// The gate's watermark as last output.
    watermark: Watermark,
    end_of_data_emitted: bool,
    end_of_input_emitted: bool,
}

impl<T> BarrierAligner<T> {
    /// A gate of `num_channels` channels, or [`AlignerError::NoChannels`] for zero.
    pub fn try_new(num_channels: u32, config: AlignerConfig) -> Result<Self, AlignerError> {
        if num_channels == 0 {
            return Err(AlignerError::NoChannels);
        }
        let channel = Channel {
            last_barrier_arrived: None,
            data_end_arrived: false,
            end_arrived: false,
            data_ended: false,
            finished: false,
            watermark: Watermark::MIN,
        };
        Ok(BarrierAligner {
            config,
            channels: vec![channel; num_channels as usize],
            alignment: None,
            newest_started: None,
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            work: VecDeque::new(),
            output: VecDeque::new(),
            watermark: Watermark::MIN,
            end_of_data_emitted: false,
            end_of_input_emitted: false,
        })
    }

    /// A gate of `num_channels` channels.
    ///
    /// # Panics
    /// If `num_channels` is zero (use [`BarrierAligner::try_new`] to get an error instead).
    pub fn new(num_channels: u32, config: AlignerConfig) -> Self {
        match Self::try_new(num_channels, config) {
            Ok(aligner) => aligner,
            Err(e) => panic!("BarrierAligner::new: {e}"),
        }
    }

    /// The number of input channels of this gate.
    pub fn num_channels(&self) -> u32 {
        self.channels.len() as u32
    }

    /// The configuration this aligner runs with.
    pub fn config(&self) -> AlignerConfig {
        self.config
    }

    /// An element arrived on `channel`; `size_bytes` is its encoded size, charged against the
    /// alignment buffer if the channel is blocked. Poll afterwards.
    ///
    /// A protocol violation is refused with an error and changes nothing.
    pub fn push(
        &mut self,
        channel: ChannelIndex,
        element: StreamElement<T>,
        size_bytes: usize,
    ) -> Result<(), AlignerError> {
        self.check_arrival(channel, &element)?;
        debug_assert!(self.work.is_empty(), "work is drained before push returns");
        self.work.push_back(Pending { channel, element, size_bytes });
        while let Some(pending) = self.work.pop_front() {
            self.dispatch(pending);
        }
        self.check_invariants();
        Ok(())
    }

    /// The next thing the task must do, in order; `None` when there is nothing to do until the
    /// next push.
    pub fn poll(&mut self) -> Option<AlignerOutput<T>> {
        self.output.pop_front()
    }

    /// True if `channel` is blocked by an alignment in progress: the runtime should stop reading
    /// it and stop granting it credit. Always false in at-least-once mode and for unknown channels.
    pub fn is_blocked(&self, channel: ChannelIndex) -> bool {
        if self.config.mode != CheckpointingMode::ExactlyOnce {
            return false;
        }
        match &self.alignment {
            Some(a) => a.arrived.get(channel.0 as usize).copied().unwrap_or(false),
            None => false,
        }
    }

    /// True once `channel`'s `EndOfPartition` has taken effect.
    pub fn is_finished(&self, channel: ChannelIndex) -> bool {
        self.channels.get(channel.0 as usize).is_some_and(|c| c.finished)
    }

    /// The checkpoint being aligned (exactly-once) or counted (at-least-once), if any.
    pub fn aligning(&self) -> Option<CheckpointId> {
        self.alignment.as_ref().map(Alignment::id)
    }

    /// Bytes waiting in the alignment buffer (as reported on push).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Elements waiting in the alignment buffer.
    pub fn buffered_elements(&self) -> usize {
        self.buffer.len()
    }

    /// Outputs waiting to be polled.
    pub fn pending_outputs(&self) -> usize {
        self.output.len()
    }

    /// The gate's watermark as last output ([`Watermark::MIN`] before the first).
    pub fn watermark(&self) -> Watermark {
        self.watermark
    }

    /// True once `channel`'s data has ended: its `EndOfData` (or `EndOfPartition`) took effect.
    pub fn is_data_ended(&self, channel: ChannelIndex) -> bool {
        self.channels.get(channel.0 as usize).is_some_and(Channel::data_over)
    }

    /// True once [`AlignerOutput::EndOfData`] has been output.
    pub fn is_end_of_data(&self) -> bool {
        self.end_of_data_emitted
    }

    /// True once [`AlignerOutput::EndOfInput`] has been output.
    pub fn is_end_of_input(&self) -> bool {
        self.end_of_input_emitted
    }

    /// Checks the arrival against the channel's protocol and records it. Changes nothing on error.
    fn check_arrival(&mut self, channel: ChannelIndex, element: &StreamElement<T>) -> Result<(), AlignerError> {
        let num_channels = self.num_channels();
        let state =
            self.channels.get_mut(channel.0 as usize).ok_or(AlignerError::UnknownChannel { channel, num_channels })?;
        if state.end_arrived {
            return Err(AlignerError::ElementAfterEndOfPartition { channel });
        }
        match element {
            StreamElement::Barrier(barrier) => {
                let checkpoint_id = barrier.checkpoint_id;
                match state.last_barrier_arrived {
                    Some(previous) if previous == checkpoint_id => {
                        return Err(AlignerError::DuplicateBarrier { channel, checkpoint_id });
                    }
                    Some(previous) if previous > checkpoint_id => {
                        return Err(AlignerError::BarrierOutOfOrder { channel, checkpoint_id, previous });
                    }
                    _ => state.last_barrier_arrived = Some(checkpoint_id),
                }
            }
            StreamElement::EndOfPartition => state.end_arrived = true,
            StreamElement::EndOfData | StreamElement::Records(_) | StreamElement::Watermark(_)
                if state.data_end_arrived =>
            {
                return Err(AlignerError::ElementAfterEndOfData { channel });
            }
            StreamElement::EndOfData => state.data_end_arrived = true,
            StreamElement::Records(_) | StreamElement::Watermark(_) => {}
        }
        Ok(())
    }

    /// Lets one arrived element take effect, or buffers it if its channel is blocked.
    fn dispatch(&mut self, pending: Pending<T>) {
        if self.is_blocked(pending.channel) {
            self.buffer_or_abort(pending);
            return;
        }
        let channel = pending.channel;
        match pending.element {
            StreamElement::Records(records) => {
                if !records.is_empty() {
                    self.output.push_back(AlignerOutput::Records { channel, records });
                }
            }
            StreamElement::Watermark(watermark) => self.on_watermark(channel, watermark),
            StreamElement::Barrier(barrier) => self.on_barrier(channel, barrier, pending.size_bytes),
            StreamElement::EndOfData => self.on_end_of_data(channel),
            StreamElement::EndOfPartition => self.on_end_of_partition(channel),
        }
    }

    fn buffer_or_abort(&mut self, pending: Pending<T>) {
        debug_assert_eq!(self.config.mode, CheckpointingMode::ExactlyOnce);
        let bytes = self.buffered_bytes.saturating_add(pending.size_bytes);
        let fits = bytes <= self.config.alignment_buffer_bytes_max && self.buffer.len() < ALIGNMENT_BUFFER_ELEMENTS_MAX;
        if fits {
            self.buffered_bytes = bytes;
            self.buffer.push_back(pending);
        } else {
            // The element that did not fit goes right after the released ones.
            self.abort(AbortReason::AlignmentBufferFull { bytes }, Some(pending));
        }
    }

    fn on_watermark(&mut self, channel: ChannelIndex, watermark: Watermark) {
        let state = &mut self.channels[channel.0 as usize];
        debug_assert!(!state.finished, "nothing takes effect after end of partition");
        debug_assert!(!state.data_ended, "no watermark takes effect after end of data");
        if watermark > state.watermark {
            state.watermark = watermark;
            self.advance_watermark();
        }
    }

    /// Outputs the gate's watermark if it increased.
    fn advance_watermark(&mut self) {
        let combined =
            self.channels.iter().filter(|c| !c.data_over()).map(|c| c.watermark).min().unwrap_or(Watermark::MAX);
        if combined > self.watermark {
            self.watermark = combined;
            self.output.push_back(AlignerOutput::Watermark(combined));
        }
    }

    fn on_barrier(&mut self, channel: ChannelIndex, barrier: Barrier, size_bytes: usize) {
        let id = barrier.checkpoint_id;
        match &mut self.alignment {
            Some(a) if id == a.id() => {
                let slot = &mut a.arrived[channel.0 as usize];
                debug_assert!(!*slot, "a channel whose barrier took effect is blocked or counted");
                *slot = true;
                self.complete_if_aligned();
            }
            Some(a) if id > a.id() => {
                // `channel` skipped the aligning checkpoint: it cannot complete here. Release what
                // was buffered for it first, then let this barrier start its own alignment.
                let requeued = Pending { channel, element: StreamElement::Barrier(barrier), size_bytes };
                self.abort(AbortReason::Subsumed { by: id }, Some(requeued));
            }
            Some(_) => {} // older than the aligning checkpoint: obsolete
            None if self.newest_started.is_none_or(|newest| id > newest) => {
                let mut arrived = vec![false; self.channels.len()];
                arrived[channel.0 as usize] = true;
                self.newest_started = Some(id);
                self.alignment = Some(Alignment { barrier, arrived });
                self.complete_if_aligned();
            }
            None => {} // completed, aborted or skipped: obsolete (FLINK-20654)
        }
    }

    fn on_end_of_data(&mut self, channel: ChannelIndex) {
        let state = &mut self.channels[channel.0 as usize];
        debug_assert!(!state.finished, "nothing takes effect after end of partition");
        debug_assert!(!state.data_ended, "end of data arrives once per channel");
        state.data_ended = true;
        self.advance_watermark();
        self.end_data_if_over();
    }

    /// Outputs [`AlignerOutput::EndOfData`] (once) when every channel's data has ended; the
    /// watermark went to MAX just before.
    fn end_data_if_over(&mut self) {
        if self.end_of_data_emitted || !self.channels.iter().all(Channel::data_over) {
            return;
        }
        debug_assert_eq!(self.watermark, Watermark::MAX, "the gate's event time ended first");
        self.end_of_data_emitted = true;
        self.output.push_back(AlignerOutput::EndOfData);
    }

    fn on_end_of_partition(&mut self, channel: ChannelIndex) {
        let state = &mut self.channels[channel.0 as usize];
        debug_assert!(!state.finished);
        state.finished = true;
        // The watermark this channel no longer holds back, and the end of data its finishing
        // completes, were caused by elements before any pending barrier: output them before the
        // checkpoint.
        self.advance_watermark();
        self.end_data_if_over();
        self.complete_if_aligned();
        if self.channels.iter().all(|c| c.finished) {
            debug_assert!(self.alignment.is_none(), "a finished gate has nothing to align");
            debug_assert!(self.buffer.is_empty() && self.work.is_empty());
            debug_assert!(!self.end_of_input_emitted, "end of partition arrives once per channel");
            debug_assert!(self.end_of_data_emitted, "end of data comes before end of input");
            self.end_of_input_emitted = true;
            self.output.push_back(AlignerOutput::EndOfInput);
        }
    }

    fn complete_if_aligned(&mut self) {
        let Some(a) = &self.alignment else { return };
        let aligned = a.arrived.iter().zip(&self.channels).all(|(&arrived, c)| arrived || c.finished);
        if aligned {
            let barrier = a.barrier;
            self.alignment = None;
            self.output.push_back(AlignerOutput::Checkpoint(barrier));
            self.release(None);
        }
    }

    /// Aborts the aligning checkpoint and releases the buffer, then `then`.
    fn abort(&mut self, reason: AbortReason, then: Option<Pending<T>>) {
        let Some(a) = self.alignment.take() else {
            unreachable!("abort is only called while aligning");
        };
        self.output.push_back(AlignerOutput::CheckpointAborted { checkpoint_id: a.id(), reason });
        self.release(then);
    }

    /// Puts every buffered element, then `then`, at the front of the work queue: they arrived
    /// before everything still queued there, and each channel's elements stay in arrival order.
    fn release(&mut self, then: Option<Pending<T>>) {
        debug_assert!(self.alignment.is_none(), "release unblocks every channel");
        if let Some(pending) = then {
            self.work.push_front(pending);
        }
        while let Some(pending) = self.buffer.pop_back() {
            self.work.push_front(pending);
        }
        self.buffered_bytes = 0;
    }

    fn check_invariants(&self) {
        debug_assert!(self.work.is_empty());
        debug_assert!(self.buffered_bytes <= self.config.alignment_buffer_bytes_max);
        debug_assert!(self.buffer.len() <= ALIGNMENT_BUFFER_ELEMENTS_MAX);
        if self.config.mode == CheckpointingMode::AtLeastOnce {
            debug_assert!(self.buffer.is_empty(), "at-least-once never buffers");
        }
        if self.alignment.is_none() {
            debug_assert!(self.buffer.is_empty(), "only an alignment holds buffered elements");
        }
        if let Some(a) = &self.alignment {
            debug_assert_eq!(Some(a.id()), self.newest_started);
            debug_assert!(a.arrived.iter().any(|&arrived| arrived));
            if self.config.mode == CheckpointingMode::ExactlyOnce {
                for (arrived, c) in a.arrived.iter().zip(&self.channels) {
                    debug_assert!(!(*arrived && c.finished), "a blocked channel cannot finish");
                }
            }
        }
        if let Some(last) = self.buffer.back() {
            debug_assert!(self.is_blocked(last.channel), "only blocked channels have buffered elements");
        }
        if self.end_of_data_emitted {
            debug_assert_eq!(self.watermark, Watermark::MAX);
            debug_assert!(self.channels.iter().all(Channel::data_over));
        } else {
            debug_assert!(!self.channels.iter().all(Channel::data_over), "end of data is output when due");
        }
        for c in &self.channels {
            debug_assert!(!c.data_ended || c.data_end_arrived, "end of data takes effect after it arrives");
            debug_assert!(!c.finished || c.end_arrived, "end of partition takes effect after it arrives");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    // ---- notation for the tables ----------------------------------------------------------

    /// One table step: an element arriving on a channel.
    type Step = (u32, StreamElement<u32>);

    /// Records (each record costs 10 bytes of alignment buffer).
    fn r(records: &[u32]) -> StreamElement<u32> {
        StreamElement::Records(records.to_vec())
    }

    fn b(id: u64) -> StreamElement<u32> {
        StreamElement::Barrier(Barrier { checkpoint_id: CheckpointId(id), triggered_at_ms: 0, is_final: false })
    }

    fn w(timestamp: i64) -> StreamElement<u32> {
        StreamElement::Watermark(Watermark(timestamp))
    }

    fn eop() -> StreamElement<u32> {
        StreamElement::EndOfPartition
    }

    fn eod() -> StreamElement<u32> {
        StreamElement::EndOfData
    }

    /// The size a table step charges: 10 bytes per record, 1 byte per event.
    fn size_of(element: &StreamElement<u32>) -> usize {
        match element {
            StreamElement::Records(records) => 10 * records.len(),
            _ => 1,
        }
    }

    fn render(output: &AlignerOutput<u32>) -> String {
        match output {
            AlignerOutput::Records { channel, records } => format!("{channel} {records:?}"),
            AlignerOutput::Watermark(Watermark::MAX) => "wm max".to_string(),
            AlignerOutput::Watermark(Watermark(t)) => format!("wm {t}"),
            AlignerOutput::Checkpoint(barrier) => format!("{}", barrier.checkpoint_id),
            AlignerOutput::CheckpointAborted { checkpoint_id, reason: AbortReason::Subsumed { by } } => {
                format!("abort {checkpoint_id}: subsumed by {by}")
            }
            AlignerOutput::CheckpointAborted { checkpoint_id, reason: AbortReason::AlignmentBufferFull { bytes } } => {
                format!("abort {checkpoint_id}: buffer full at {bytes} B")
            }
            AlignerOutput::EndOfData => "end of data".to_string(),
            AlignerOutput::EndOfInput => "end".to_string(),
        }
    }

    fn drain(aligner: &mut BarrierAligner<u32>, into: &mut Vec<String>) {
        while let Some(output) = aligner.poll() {
            into.push(render(&output));
        }
    }

    /// Pushes every step (polling after each) and returns the rendered outputs.
    fn run(aligner: &mut BarrierAligner<u32>, steps: Vec<Step>) -> Vec<String> {
        let mut outputs = Vec::new();
        for (channel, element) in steps {
            let size = size_of(&element);
            aligner.push(ChannelIndex(channel), element, size).expect("a well-formed step");
            drain(aligner, &mut outputs);
        }
        outputs
    }

    const EO: AlignerConfig = AlignerConfig::exactly_once(1 << 20);
    const ALO: AlignerConfig = AlignerConfig::at_least_once();

    struct Case {
        name: &'static str,
        channels: u32,
        config: AlignerConfig,
        steps: Vec<Step>,
        expected: &'static [&'static str],
    }

    fn check_cases(cases: Vec<Case>) {
        for case in cases {
            let mut aligner = BarrierAligner::new(case.channels, case.config);
            let got = run(&mut aligner, case.steps);
            assert_eq!(got, case.expected, "case: {}", case.name);
        }
    }

    // ---- exactly-once ------------------------------------------------------------------------

    #[test]
    fn exactly_once_holds_post_barrier_elements_until_every_channel_is_aligned() {
        check_cases(vec![
            Case {
                name: "a one-channel gate completes at once and never blocks",
                channels: 1,
                config: EO,
                steps: vec![(0, r(&[1])), (0, b(1)), (0, r(&[2])), (0, eop())],
                expected: &["ch0 [1]", "cp1", "ch0 [2]", "wm max", "end of data", "end"],
            },
            Case {
                name: "two channels: each channel's post-barrier records wait for the checkpoint",
                channels: 2,
                config: EO,
                steps: vec![
                    (0, r(&[1])),
                    (0, b(1)),
                    (0, r(&[2])),
                    (1, r(&[3])),
                    (1, b(1)),
                    (1, r(&[4])),
                    (0, eop()),
                    (1, eop()),
                ],
                expected: &["ch0 [1]", "ch1 [3]", "cp1", "ch0 [2]", "ch1 [4]", "wm max", "end of data", "end"],
            },
            Case {
                name: "three channels interleaved: released in arrival order, per channel in order",
                channels: 3,
                config: EO,
                steps: vec![
                    (0, b(1)),
                    (0, r(&[10])),
                    (1, r(&[20])),
                    (1, b(1)),
                    (1, r(&[21])),
                    (0, r(&[11])),
                    (2, r(&[30])),
                    (2, b(1)),
                    (2, r(&[31])),
                ],
                expected: &["ch1 [20]", "ch2 [30]", "cp1", "ch0 [10]", "ch1 [21]", "ch0 [11]", "ch2 [31]"],
            },
            Case {
                name: "a barrier behind a blocked channel's buffer starts the next alignment on release",
                channels: 2,
                config: EO,
                steps: vec![(0, b(1)), (0, r(&[1])), (0, b(2)), (0, r(&[2])), (1, b(1)), (1, r(&[3])), (1, b(2))],
                expected: &["cp1", "ch0 [1]", "ch1 [3]", "cp2", "ch0 [2]"],
            },
            Case {
                name: "an empty record batch is not handed to the operator",
                channels: 1,
                config: EO,
                steps: vec![(0, r(&[])), (0, r(&[7]))],
                expected: &["ch0 [7]"],
            },
        ]);
    }

    #[test]
    fn a_newer_barrier_cancels_the_older_alignment() {
        check_cases(vec![
            Case {
                name: "the older checkpoint's buffer is released before the newer one blocks",
                channels: 2,
                config: EO,
                steps: vec![(0, b(1)), (0, r(&[1])), (1, b(2)), (1, r(&[2])), (0, b(2)), (0, r(&[3]))],
                expected: &["abort cp1: subsumed by cp2", "ch0 [1]", "cp2", "ch1 [2]", "ch0 [3]"],
            },
            Case {
                name: "an obsolete barrier neither blocks nor leaves the next checkpoint short (FLINK-20654)",
                channels: 3,
                config: EO,
                steps: vec![
                    (0, b(1)),
                    (0, r(&[1])),
                    (1, b(2)),
                    (2, b(1)), // obsolete: cp1 was aborted
                    (2, r(&[2])),
                    (0, b(2)),
                    (2, r(&[3])),
                    (2, b(2)),
                    (0, r(&[4])),
                ],
                expected: &["abort cp1: subsumed by cp2", "ch0 [1]", "ch2 [2]", "ch2 [3]", "cp2", "ch0 [4]"],
            },
            Case {
                name: "a barrier older than the aligning one is ignored",
                channels: 2,
                config: EO,
                steps: vec![(0, b(3)), (1, b(2)), (1, r(&[1])), (1, b(3))],
                expected: &["ch1 [1]", "cp3"],
            },
            Case {
                name: "a completed checkpoint's barrier id is never started again",
                channels: 1,
                config: EO,
                steps: vec![(0, b(2)), (0, r(&[1]))],
                expected: &["cp2", "ch0 [1]"],
            },
        ]);
    }

    #[test]
    fn a_finished_channel_counts_as_aligned() {
        check_cases(vec![
            Case {
                name: "a channel finished before the barrier is not waited for",
                channels: 2,
                config: EO,
                steps: vec![(0, eop()), (1, b(1)), (1, r(&[1]))],
                expected: &["cp1", "ch1 [1]"],
            },
            Case {
                name: "the last unaligned channel finishing completes the checkpoint",
                channels: 3,
                config: EO,
                steps: vec![(0, b(1)), (0, r(&[1])), (1, r(&[2])), (1, b(1)), (2, r(&[3])), (2, eop())],
                expected: &["ch1 [2]", "ch2 [3]", "cp1", "ch0 [1]"],
            },
            Case {
                name: "a blocked channel's end of partition waits in the buffer",
                channels: 2,
                config: EO,
                steps: vec![(0, b(1)), (0, eop()), (1, r(&[1])), (1, b(1)), (1, eop())],
                expected: &["ch1 [1]", "cp1", "wm max", "end of data", "end"],
            },
            Case {
                name: "end of input is output once, after the final checkpoint",
                channels: 2,
                config: EO,
                steps: vec![(0, b(5)), (0, eop()), (1, b(5)), (1, eop())],
                expected: &["cp5", "wm max", "end of data", "end"],
            },
        ]);
    }

    #[test]
    fn end_of_data_takes_effect_in_channel_order_and_is_output_once_every_channel_has_ended() {
        check_cases(vec![
            Case {
                name: "every channel's end of data outputs the MAX watermark, then end of data, once",
                channels: 2,
                config: EO,
                steps: vec![
                    (0, r(&[1])),
                    (0, eod()),
                    (1, w(3)),
                    (1, eod()),
                    (0, b(1)),
                    (1, b(1)),
                    (0, eop()),
                    (1, eop()),
                ],
                expected: &["ch0 [1]", "wm 3", "wm max", "end of data", "cp1", "end"],
            },
            Case {
                name: "a barrier after end of data still blocks and aligns: the final checkpoint follows end of data",
                channels: 2,
                config: EO,
                steps: vec![(0, eod()), (0, b(2)), (1, r(&[5])), (1, eod()), (1, b(2)), (0, eop()), (1, eop())],
                expected: &["ch1 [5]", "wm max", "end of data", "cp2", "end"],
            },
            Case {
                name: "a blocked channel's end of data waits in the buffer and follows the checkpoint",
                channels: 2,
                config: EO,
                steps: vec![(0, b(1)), (0, eod()), (1, r(&[1])), (1, eod()), (1, b(1)), (0, eop()), (1, eop())],
                expected: &["ch1 [1]", "cp1", "wm max", "end of data", "end"],
            },
            Case {
                name: "a channel that finishes without end of data has ended its data too",
                channels: 2,
                config: EO,
                steps: vec![(0, eod()), (1, r(&[1])), (1, eop()), (0, eop())],
                expected: &["ch1 [1]", "wm max", "end of data", "end"],
            },
            Case {
                name: "the last channel finishing outputs end of data before the checkpoint it completes",
                channels: 2,
                config: EO,
                steps: vec![(0, eod()), (0, b(1)), (1, eop()), (0, eop())],
                expected: &["wm max", "end of data", "cp1", "end"],
            },
            Case {
                name: "a gate whose watermark already is MAX outputs only end of data",
                channels: 1,
                config: EO,
                steps: vec![(0, w(i64::MAX)), (0, eod()), (0, b(1)), (0, eop())],
                expected: &["wm max", "end of data", "cp1", "end"],
            },
            Case {
                name: "at-least-once: end of data is not held back by a barrier",
                channels: 2,
                config: ALO,
                steps: vec![(0, b(1)), (0, eod()), (1, eod()), (1, b(1)), (0, eop()), (1, eop())],
                expected: &["wm max", "end of data", "cp1", "end"],
            },
        ]);
        let mut aligner = BarrierAligner::<u32>::new(2, EO);
        run(&mut aligner, vec![(0, eod())]);
        assert!(aligner.is_data_ended(ChannelIndex(0)));
        assert!(!aligner.is_finished(ChannelIndex(0)), "the channel stays open for barriers");
        assert!(!aligner.is_end_of_data());
        run(&mut aligner, vec![(0, b(1)), (1, eop())]);
        assert!(aligner.is_end_of_data() && !aligner.is_end_of_input());
        assert!(aligner.is_data_ended(ChannelIndex(1)), "a finished channel's data has ended");
        assert!(!aligner.is_data_ended(ChannelIndex(9)));
    }

    #[test]
    fn a_full_alignment_buffer_aborts_the_checkpoint_and_releases_everything_in_order() {
        check_cases(vec![
            Case {
                name: "the element that does not fit follows the released ones; the channel unblocks",
                channels: 2,
                config: AlignerConfig::exactly_once(25),
                steps: vec![
                    (0, b(1)),
                    (0, r(&[1])),
                    (0, r(&[2])),
                    (1, r(&[9])),
                    (0, r(&[3])),
                    (0, r(&[4])),
                    (1, b(1)), // obsolete now
                    (1, r(&[5])),
                    (0, b(2)),
                    (1, b(2)),
                ],
                expected: &[
                    "ch1 [9]",
                    "abort cp1: buffer full at 30 B",
                    "ch0 [1]",
                    "ch0 [2]",
                    "ch0 [3]",
                    "ch0 [4]",
                    "ch1 [5]",
                    "cp2",
                ],
            },
            Case {
                name: "a zero budget aborts on the first buffered element",
                channels: 2,
                config: AlignerConfig::exactly_once(0),
                steps: vec![(0, b(1)), (0, w(4)), (1, w(3)), (1, b(1))],
                expected: &["abort cp1: buffer full at 1 B", "wm 3"],
            },
            Case {
                name: "overflow while aligning the barrier released from a previous buffer",
                channels: 2,
                config: AlignerConfig::exactly_once(10),
                steps: vec![(0, b(1)), (0, b(2)), (0, r(&[1])), (1, b(1))],
                // ch0's b2 and [1] (11 B) do not fit: cp1 aborts, b2 (cp2 > cp1) starts on release,
                // and [1] is buffered again for cp2.
                expected: &["abort cp1: buffer full at 11 B"],
            },
        ]);
    }

    #[test]
    fn blocked_state_and_buffer_follow_the_alignment() {
        let mut aligner = BarrierAligner::<u32>::new(2, AlignerConfig::exactly_once(100));
        let ch0 = ChannelIndex(0);
        let ch1 = ChannelIndex(1);
        // (aligning, ch0 blocked, ch1 blocked, buffered bytes) after the step
        type After = (Option<u64>, bool, bool, usize);
        let table: Vec<(Step, After)> = vec![
            ((0, r(&[1])), (None, false, false, 0)),
            ((0, b(1)), (Some(1), true, false, 0)),
            ((0, r(&[2, 3])), (Some(1), true, false, 20)),
            ((1, r(&[4])), (Some(1), true, false, 20)),
            ((0, w(8)), (Some(1), true, false, 21)),
            ((1, b(1)), (None, false, false, 0)),
            ((1, b(2)), (Some(2), false, true, 0)),
            ((1, r(&[5])), (Some(2), false, true, 10)),
            ((0, b(3)), (Some(3), true, false, 0)),
        ];
        for (i, ((channel, element), (aligning, blocked0, blocked1, bytes))) in table.into_iter().enumerate() {
            let size = size_of(&element);
            aligner.push(ChannelIndex(channel), element, size).unwrap();
            while aligner.poll().is_some() {}
            assert_eq!(aligner.aligning(), aligning.map(CheckpointId), "step {i}");
            assert_eq!(aligner.is_blocked(ch0), blocked0, "step {i}");
            assert_eq!(aligner.is_blocked(ch1), blocked1, "step {i}");
            assert_eq!(aligner.buffered_bytes(), bytes, "step {i}");
        }
        assert!(!aligner.is_blocked(ChannelIndex(7)), "an unknown channel is never blocked");
    }

    #[test]
    fn the_buffer_is_also_bounded_by_its_element_count() {
        let mut aligner = BarrierAligner::<u32>::new(2, AlignerConfig::exactly_once(usize::MAX));
        aligner.push(ChannelIndex(0), b(1), 0).unwrap();
        for i in 0..ALIGNMENT_BUFFER_ELEMENTS_MAX {
            aligner.push(ChannelIndex(0), r(&[i as u32]), 0).unwrap();
        }
        assert!(aligner.poll().is_none());
        assert_eq!(aligner.buffered_elements(), ALIGNMENT_BUFFER_ELEMENTS_MAX);
        aligner.push(ChannelIndex(0), r(&[u32::MAX]), 0).unwrap();
        assert_eq!(
            aligner.poll(),
            Some(AlignerOutput::CheckpointAborted {
                checkpoint_id: CheckpointId(1),
                reason: AbortReason::AlignmentBufferFull { bytes: 0 },
            })
        );
        assert_eq!(aligner.pending_outputs(), ALIGNMENT_BUFFER_ELEMENTS_MAX + 1);
        assert_eq!(aligner.buffered_elements(), 0);
        assert!(!aligner.is_blocked(ChannelIndex(0)));
    }

    // ---- at-least-once -------------------------------------------------------------------------

    #[test]
    fn at_least_once_counts_barriers_without_blocking() {
        check_cases(vec![
            Case {
                name: "a fast channel's post-barrier records pass before the checkpoint (the hazard)",
                channels: 2,
                config: ALO,
                steps: vec![(0, r(&[1])), (0, b(1)), (0, r(&[2])), (1, r(&[3])), (1, b(1)), (1, r(&[4]))],
                expected: &["ch0 [1]", "ch0 [2]", "ch1 [3]", "cp1", "ch1 [4]"],
            },
            Case {
                name: "a newer barrier aborts the older pending checkpoint",
                channels: 2,
                config: ALO,
                steps: vec![(0, b(1)), (0, b(2)), (1, b(1)), (1, b(2))],
                expected: &["abort cp1: subsumed by cp2", "cp2"],
            },
            Case {
                name: "a finished channel counts as having seen the barrier",
                channels: 3,
                config: ALO,
                steps: vec![(0, b(1)), (1, eop()), (2, r(&[1])), (2, b(1)), (0, eop()), (2, eop())],
                expected: &["ch2 [1]", "cp1", "wm max", "end of data", "end"],
            },
            Case {
                name: "a one-channel gate completes at once",
                channels: 1,
                config: ALO,
                steps: vec![(0, b(1)), (0, r(&[1]))],
                expected: &["cp1", "ch0 [1]"],
            },
        ]);
        let mut aligner = BarrierAligner::<u32>::new(2, ALO);
        run(&mut aligner, vec![(0, b(1)), (0, r(&[1]))]);
        assert_eq!(aligner.aligning(), Some(CheckpointId(1)));
        assert!(!aligner.is_blocked(ChannelIndex(0)), "at-least-once never blocks");
        assert_eq!(aligner.buffered_bytes(), 0);
    }

    // ---- watermarks ----------------------------------------------------------------------------

    #[test]
    fn the_gate_watermark_is_the_minimum_over_unfinished_channels() {
        check_cases(vec![
            Case {
                name: "min combining; a channel's lower watermark is ignored; finishing releases the min",
                channels: 2,
                config: EO,
                steps: vec![
                    (0, w(5)),
                    (1, w(3)),
                    (1, w(7)),
                    (0, w(4)),
                    (0, w(9)),
                    (1, eop()),
                    (0, w(9)),
                    (0, w(12)),
                    (0, eop()),
                ],
                expected: &["wm 3", "wm 5", "wm 7", "wm 9", "wm 12", "wm max", "end of data", "end"],
            },
            Case {
                name: "a blocked channel's watermark waits in the buffer",
                channels: 2,
                config: EO,
                steps: vec![(0, w(1)), (1, w(1)), (0, b(1)), (0, w(5)), (1, w(6)), (1, b(1))],
                expected: &["wm 1", "cp1", "wm 5"],
            },
            Case {
                name: "a watermark freed by a finishing channel comes before the checkpoint it completes",
                channels: 2,
                config: EO,
                steps: vec![(0, w(2)), (1, w(1)), (0, b(1)), (1, eop())],
                expected: &["wm 1", "wm 2", "cp1"],
            },
            Case {
                name: "at-least-once watermarks are not held back by barriers",
                channels: 2,
                config: ALO,
                steps: vec![(0, b(1)), (0, w(5)), (1, w(6))],
                expected: &["wm 5"],
            },
        ]);
    }

    // ---- protocol violations -------------------------------------------------------------------

    #[test]
    fn protocol_violations_are_typed_errors_that_change_nothing() {
        let ch = ChannelIndex;
        let cp = CheckpointId;
        // (name, config, steps before, the refused step, its error)
        type Violation = (&'static str, AlignerConfig, Vec<Step>, Step, AlignerError);
        let cases: Vec<Violation> = vec![
            (
                "an unknown channel",
                EO,
                vec![],
                (2, r(&[1])),
                AlignerError::UnknownChannel { channel: ch(2), num_channels: 2 },
            ),
            (
                "a second barrier n while blocked on n",
                EO,
                vec![(0, b(1))],
                (0, b(1)),
                AlignerError::DuplicateBarrier { channel: ch(0), checkpoint_id: cp(1) },
            ),
            (
                "a second barrier n in at-least-once mode",
                ALO,
                vec![(0, b(1)), (1, b(1))],
                (0, b(1)),
                AlignerError::DuplicateBarrier { channel: ch(0), checkpoint_id: cp(1) },
            ),
            (
                "a barrier older than the channel's previous one",
                EO,
                vec![(0, b(3)), (1, b(3))],
                (0, b(2)),
                AlignerError::BarrierOutOfOrder { channel: ch(0), checkpoint_id: cp(2), previous: cp(3) },
            ),
            (
                "a record after end of partition",
                EO,
                vec![(0, eop())],
                (0, r(&[1])),
                AlignerError::ElementAfterEndOfPartition { channel: ch(0) },
            ),
            (
                "a record after end of partition that is still buffered",
                EO,
                vec![(0, b(1)), (0, eop())],
                (0, r(&[1])),
                AlignerError::ElementAfterEndOfPartition { channel: ch(0) },
            ),
            (
                "a record after end of data",
                EO,
                vec![(0, eod())],
                (0, r(&[1])),
                AlignerError::ElementAfterEndOfData { channel: ch(0) },
            ),
            (
                "a watermark after an end of data that is still buffered",
                EO,
                vec![(0, b(1)), (0, eod())],
                (0, w(1)),
                AlignerError::ElementAfterEndOfData { channel: ch(0) },
            ),
            (
                "a second end of data",
                ALO,
                vec![(1, eod()), (1, b(1))],
                (1, eod()),
                AlignerError::ElementAfterEndOfData { channel: ch(1) },
            ),
            (
                "an end of data after end of partition",
                EO,
                vec![(0, eop())],
                (0, eod()),
                AlignerError::ElementAfterEndOfPartition { channel: ch(0) },
            ),
            (
                "a second end of partition",
                ALO,
                vec![(1, eop())],
                (1, eop()),
                AlignerError::ElementAfterEndOfPartition { channel: ch(1) },
            ),
        ];
        for (name, config, before, (channel, bad), error) in cases {
            let mut aligner = BarrierAligner::new(2, config);
            run(&mut aligner, before);
            let (aligning, bytes) = (aligner.aligning(), aligner.buffered_bytes());
            let blocked = [aligner.is_blocked(ch(0)), aligner.is_blocked(ch(1))];
            assert_eq!(aligner.push(ch(channel), bad, 1), Err(error), "case: {name}");
            assert_eq!(aligner.poll(), None, "case: {name}");
            assert_eq!(aligner.aligning(), aligning, "case: {name}");
            assert_eq!(aligner.buffered_bytes(), bytes, "case: {name}");
            assert_eq!([aligner.is_blocked(ch(0)), aligner.is_blocked(ch(1))], blocked, "case: {name}");
        }
        assert_eq!(BarrierAligner::<u32>::try_new(0, EO).err(), Some(AlignerError::NoChannels));
        let message = AlignerError::DuplicateBarrier { channel: ch(1), checkpoint_id: cp(4) }.to_string();
        assert_eq!(message, "barrier cp4 arrived twice on ch1");
    }

    #[test]
    fn the_gate_keeps_working_after_a_refused_element() {
        let mut aligner = BarrierAligner::new(2, EO);
        let mut outputs = run(&mut aligner, vec![(0, b(1)), (0, r(&[1]))]);
        assert!(aligner.push(ChannelIndex(0), b(1), 1).is_err());
        outputs.extend(run(&mut aligner, vec![(1, b(1))]));
        assert_eq!(outputs, ["cp1", "ch0 [1]"]);
    }

    // ---- properties ------------------------------------------------------------------------------

    /// A record of the generated streams: which channel sent it, its position among that channel's
    /// records, and the newest barrier id sent before it on that channel (0: none).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Tag {
        channel: u32,
        seq: u32,
        last_barrier: u64,
    }

    #[derive(Clone, Debug)]
    enum Item {
        Records(u8),
        Watermark(i64),
    }

    /// One generated channel: its segments of items, whether each barrier between two segments is
    /// sent, and after which segment its data ends (if it sends an end of data).
    type ChannelScript = (Vec<Vec<Item>>, Vec<bool>, Option<usize>);

    /// One generated gate: per channel, `k + 1` segments of items separated by barriers 1..=k
    /// (some possibly skipped), maybe an end of data after the items of one segment (the later
    /// segments' items are then not sent, their barriers are), then end of partition; and an
    /// interleaving schedule.
    #[derive(Clone, Debug)]
    struct Scenario {
        channels: Vec<ChannelScript>,
        schedule: Vec<u32>,
        honour_blocking: bool,
        alignment_buffer_bytes_max: usize,
    }

    struct Streams {
        elements: Vec<Vec<(StreamElement<Tag>, usize)>>,
        barriers: Vec<BTreeSet<u64>>,
        records: BTreeSet<Tag>,
        barrier_ids_max: u64,
        /// Per channel, the newest barrier sent before its data ended (its end of data, or its end
        /// of partition without one); 0: none.
        data_end_last_barrier: Vec<u64>,
    }

    impl Scenario {
        fn streams(&self) -> Streams {
            let mut streams = Streams {
                elements: Vec::new(),
                barriers: Vec::new(),
                records: BTreeSet::new(),
                barrier_ids_max: 0,
                data_end_last_barrier: Vec::new(),
            };
            for (channel, (segments, present, data_end)) in self.channels.iter().enumerate() {
                let channel = channel as u32;
                let (mut elements, mut barriers) = (Vec::new(), BTreeSet::new());
                let (mut seq, mut last_barrier) = (0, 0);
                let mut data_end_last_barrier = None;
                for (epoch, segment) in segments.iter().enumerate() {
                    if epoch > 0 && present[epoch - 1] {
                        last_barrier = epoch as u64;
                        barriers.insert(last_barrier);
                        let barrier =
                            Barrier { checkpoint_id: CheckpointId(last_barrier), triggered_at_ms: 0, is_final: false };
                        elements.push((StreamElement::Barrier(barrier), 1));
                    }
                    if data_end_last_barrier.is_some() {
                        continue; // data ended: only barriers follow
                    }
                    for item in segment {
                        match item {
                            Item::Records(count) => {
                                let tags: Vec<Tag> = (0..*count)
                                    .map(|_| {
                                        seq += 1;
                                        Tag { channel, seq, last_barrier }
                                    })
                                    .collect();
                                streams.records.extend(tags.iter().copied());
                                elements.push((StreamElement::Records(tags), 8 * *count as usize));
                            }
                            Item::Watermark(t) => elements.push((StreamElement::Watermark(Watermark(*t)), 1)),
                        }
                    }
                    if *data_end == Some(epoch) {
                        data_end_last_barrier = Some(last_barrier);
                        elements.push((StreamElement::EndOfData, 1));
                    }
                }
                elements.push((StreamElement::EndOfPartition, 1));
                streams.data_end_last_barrier.push(data_end_last_barrier.unwrap_or(last_barrier));
                streams.barrier_ids_max = streams.barrier_ids_max.max(segments.len() as u64 - 1);
                streams.elements.push(elements);
                streams.barriers.push(barriers);
            }
            streams
        }
    }

    fn scenario(channels_max: u32, barriers_min: usize, may_skip: bool) -> impl Strategy<Value = Scenario> {
        (1..=channels_max, barriers_min..=4usize).prop_flat_map(move |(n, k)| {
            let item = prop_oneof![
                3 => (1u8..=3).prop_map(Item::Records),
                1 => (0i64..20).prop_map(Item::Watermark),
            ];
            let present = if may_skip { prop::bool::weighted(0.8).boxed() } else { Just(true).boxed() };
            let channel = (
                prop::collection::vec(prop::collection::vec(item, 0..4), k + 1),
                prop::collection::vec(present, k),
                prop::option::weighted(0.7, 0..=k),
            );
            (
                prop::collection::vec(channel, n as usize),
                prop::collection::vec(any::<u32>(), 100),
                any::<bool>(),
                prop_oneof![Just(usize::MAX), 0usize..64],
            )
                .prop_map(|(channels, schedule, honour_blocking, alignment_buffer_bytes_max)| Scenario {
                    channels,
                    schedule,
                    honour_blocking,
                    alignment_buffer_bytes_max,
                })
        })
    }

    struct Outcome {
        outputs: Vec<AlignerOutput<Tag>>,
        buffered_bytes_max: usize,
        ever_blocked: bool,
    }

    /// Feeds the streams in the scenario's interleaving; a runtime that honours blocking never reads
    /// a blocked channel. Err if it cannot make progress (a deadlock) or a push is refused.
    fn drive(scenario: &Scenario, streams: &Streams, mode: CheckpointingMode) -> Result<Outcome, String> {
        let config = AlignerConfig { mode, alignment_buffer_bytes_max: scenario.alignment_buffer_bytes_max };
        let mut aligner = BarrierAligner::new(streams.elements.len() as u32, config);
        let mut next = vec![0usize; streams.elements.len()];
        let mut outcome = Outcome { outputs: Vec::new(), buffered_bytes_max: 0, ever_blocked: false };
        for step in 0.. {
            let remaining: Vec<u32> =
                (0..next.len() as u32).filter(|&c| next[c as usize] < streams.elements[c as usize].len()).collect();
            if remaining.is_empty() {
                break;
            }
            let eligible: Vec<u32> = remaining
                .iter()
                .copied()
                .filter(|&c| !scenario.honour_blocking || !aligner.is_blocked(ChannelIndex(c)))
                .collect();
            if eligible.is_empty() {
                return Err(format!("deadlock: every channel with input left is blocked at step {step}"));
            }
            let pick = scenario.schedule.get(step).copied().unwrap_or(0) as usize % eligible.len();
            let channel = eligible[pick];
            let (element, size) = streams.elements[channel as usize][next[channel as usize]].clone();
            next[channel as usize] += 1;
            aligner.push(ChannelIndex(channel), element, size).map_err(|e| e.to_string())?;
            outcome.buffered_bytes_max = outcome.buffered_bytes_max.max(aligner.buffered_bytes());
            outcome.ever_blocked |= (0..next.len() as u32).any(|c| aligner.is_blocked(ChannelIndex(c)));
            while let Some(output) = aligner.poll() {
                outcome.outputs.push(output);
            }
        }
        if aligner.aligning().is_some() || aligner.buffered_bytes() != 0 || !aligner.is_end_of_input() {
            return Err("the gate did not wind down after end of input".to_string());
        }
        Ok(outcome)
    }

    /// (a) of the brief: every record output before `Checkpoint(n)` was sent before barrier n on
    /// its channel, and every record output after it was sent after. The same for the gate's end
    /// of data, which is "sent after barrier n" when some channel ended its data after barrier n.
    fn check_consistent_cut(streams: &Streams, outputs: &[AlignerOutput<Tag>]) -> Result<(), String> {
        let checkpoints: Vec<(usize, u64)> = outputs
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                AlignerOutput::Checkpoint(b) => Some((i, b.checkpoint_id.0)),
                _ => None,
            })
            .collect();
        for (i, output) in outputs.iter().enumerate() {
            if let AlignerOutput::EndOfData = output {
                for &(at, n) in &checkpoints {
                    let sent_after = (0..streams.barriers.len())
                        .any(|c| streams.barriers[c].contains(&n) && n <= streams.data_end_last_barrier[c]);
                    if i < at && sent_after {
                        return Err(format!("end of data, sent after barrier {n}, was output before cp{n}"));
                    }
                    if i > at && !sent_after {
                        return Err(format!("end of data, sent before barrier {n}, was output after cp{n}"));
                    }
                }
            }
            let AlignerOutput::Records { records, .. } = output else { continue };
            for tag in records {
                for &(at, n) in &checkpoints {
                    let sent_after = streams.barriers[tag.channel as usize].contains(&n) && n <= tag.last_barrier;
                    if i < at && sent_after {
                        return Err(format!("{tag:?}, sent after barrier {n}, was output before cp{n}"));
                    }
                    if i > at && !sent_after {
                        return Err(format!("{tag:?}, sent before barrier {n}, was output after cp{n}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// (b) per-channel order, (c) every record exactly once, and the shape of the other outputs.
    fn check_order_and_completeness(streams: &Streams, outputs: &[AlignerOutput<Tag>]) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        let mut last_seq: BTreeMap<u32, u32> = BTreeMap::new();
        let (mut watermark, mut checkpoint) = (Watermark::MIN, None);
        let mut aborted = BTreeSet::new();
        let mut end_of_data = false;
        for (i, output) in outputs.iter().enumerate() {
            let is_data = matches!(output, AlignerOutput::Records { .. } | AlignerOutput::Watermark(_));
            if end_of_data && is_data {
                return Err(format!("{output:?} was output after end of data"));
            }
            match output {
                AlignerOutput::Records { channel, records } => {
                    if records.is_empty() {
                        return Err("an empty batch was output".to_string());
                    }
                    for tag in records {
                        if tag.channel != channel.0 {
                            return Err(format!("{tag:?} output as from {channel}"));
                        }
                        if !seen.insert(*tag) {
                            return Err(format!("{tag:?} output twice"));
                        }
                        let last = last_seq.insert(tag.channel, tag.seq).unwrap_or(0);
                        if tag.seq <= last {
                            return Err(format!("{tag:?} output after seq {last} of its channel"));
                        }
                    }
                }
                AlignerOutput::Watermark(w) => {
                    if *w <= watermark {
                        return Err(format!("watermark went from {watermark:?} to {w:?}"));
                    }
                    watermark = *w;
                }
                AlignerOutput::Checkpoint(b) => {
                    let id = b.checkpoint_id;
                    if checkpoint.is_some_and(|c| id <= c) || aborted.contains(&id) {
                        return Err(format!("{id} completed out of order or after its abort"));
                    }
                    checkpoint = Some(id);
                }
                AlignerOutput::CheckpointAborted { checkpoint_id, .. } => {
                    if checkpoint == Some(*checkpoint_id) || !aborted.insert(*checkpoint_id) {
                        return Err(format!("{checkpoint_id} aborted twice or after completing"));
                    }
                }
                AlignerOutput::EndOfData => {
                    if end_of_data || watermark != Watermark::MAX {
                        return Err("end of data output twice, or before the MAX watermark".to_string());
                    }
                    end_of_data = true;
                }
                AlignerOutput::EndOfInput => {
                    if i + 1 != outputs.len() || !end_of_data {
                        return Err("end of input was not the last output, or came before end of data".to_string());
                    }
                }
            }
        }
        if outputs.last() != Some(&AlignerOutput::EndOfInput) {
            return Err("no end of input".to_string());
        }
        if seen != streams.records {
            return Err(format!("{} records sent, {} output", streams.records.len(), seen.len()));
        }
        if watermark != Watermark::MAX {
            return Err("a finished gate's watermark is MAX".to_string());
        }
        Ok(())
    }

    fn completed(outputs: &[AlignerOutput<Tag>]) -> Vec<u64> {
        outputs
            .iter()
            .filter_map(|o| match o {
                AlignerOutput::Checkpoint(b) => Some(b.checkpoint_id.0),
                _ => None,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn exactly_once_outputs_a_consistent_cut_in_order_and_complete(case in scenario(4, 0, true)) {
            let streams = case.streams();
            let outcome = drive(&case, &streams, CheckpointingMode::ExactlyOnce).map_err(TestCaseError::fail)?;
            check_consistent_cut(&streams, &outcome.outputs).map_err(TestCaseError::fail)?;
            check_order_and_completeness(&streams, &outcome.outputs).map_err(TestCaseError::fail)?;
            prop_assert!(outcome.buffered_bytes_max <= case.alignment_buffer_bytes_max);
            if case.honour_blocking {
                prop_assert_eq!(outcome.buffered_bytes_max, 0, "a runtime that honours blocking never fills the buffer");
            }
            let all_barriers = streams.barriers.iter().all(|b| b.len() as u64 == streams.barrier_ids_max);
            if all_barriers && case.alignment_buffer_bytes_max == usize::MAX {
                let every: Vec<u64> = (1..=streams.barrier_ids_max).collect();
                prop_assert_eq!(completed(&outcome.outputs), every, "every checkpoint completes");
            }
        }

        #[test]
        fn at_least_once_keeps_order_and_completeness_without_blocking(case in scenario(4, 0, true)) {
            let streams = case.streams();
            let outcome = drive(&case, &streams, CheckpointingMode::AtLeastOnce).map_err(TestCaseError::fail)?;
            check_order_and_completeness(&streams, &outcome.outputs).map_err(TestCaseError::fail)?;
            prop_assert!(!outcome.ever_blocked);
            prop_assert_eq!(outcome.buffered_bytes_max, 0);
            let all_barriers = streams.barriers.iter().all(|b| b.len() as u64 == streams.barrier_ids_max);
            if all_barriers && streams.barrier_ids_max > 0 {
                prop_assert_eq!(completed(&outcome.outputs).last().copied(), Some(streams.barrier_ids_max));
            }
        }
    }

    #[test]
    fn proptest_finds_at_least_once_breaking_the_consistent_cut() {
        use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
        let config = Config { cases: 512, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        let result = runner.run(&scenario(3, 1, false), |case| {
            let streams = case.streams();
            let outcome = drive(&case, &streams, CheckpointingMode::AtLeastOnce).map_err(TestCaseError::fail)?;
            check_consistent_cut(&streams, &outcome.outputs).map_err(TestCaseError::fail)?;
            Ok(())
        });
        match result {
            Err(TestError::Fail(reason, minimal)) => {
                let message = reason.to_string();
                assert!(message.contains("sent after barrier"), "unexpected failure: {message}");
                // The shrunk counterexample needs at least two channels: one fast, one slow.
                assert!(minimal.channels.len() >= 2, "{minimal:?}");
            }
            other => panic!("at-least-once was expected to break the cut: {other:?}"),
        }
    }
}
