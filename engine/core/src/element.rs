//! The closed set of things that travel on a channel. The barrier travels in-band, as data,
//! so it splits each channel's stream into "before checkpoint n" and "after checkpoint n".
//!
//! A bounded channel ends in two steps, as in Flink (FLIP-147, its `EndOfData` and
//! `EndOfPartitionEvent`): [`StreamElement::EndOfData`] says no record or watermark follows, but
//! barriers still may — the final checkpoint's barrier comes after it, so whatever the consumer
//! emits when its input ends is inside that checkpoint; [`StreamElement::EndOfPartition`] then
//! closes the channel.

use crate::ids::CheckpointId;
use serde::{Deserialize, Serialize};

/// Event time in milliseconds.
pub type Timestamp = i64;

/// A watermark: no record with an event time `<= timestamp` follows on this channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Watermark(pub Timestamp);

impl Watermark {
    /// The watermark before any has been seen.
    pub const MIN: Watermark = Watermark(i64::MIN);
    /// The watermark a finished input emits: event time has ended.
    pub const MAX: Watermark = Watermark(i64::MAX);
}

/// How the checkpoint a barrier belongs to treats alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckpointingMode {
    /// Aligned barriers: exactly-once state (the default).
    ExactlyOnce,
    /// Barriers are tracked but channels never block: records may be replayed after a restore.
    AtLeastOnce,
}

/// A checkpoint barrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Barrier {
    /// The checkpoint this barrier cuts.
    pub checkpoint_id: CheckpointId,
    /// When the coordinator triggered it (milliseconds of the coordinator's clock).
    pub triggered_at_ms: u64,
    /// True for the final checkpoint taken once every source has reached end of input.
    pub is_final: bool,
}

/// One element of a channel's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamElement<T> {
    /// A batch of records; records cross channels in batches.
    Records(Vec<T>),
    /// Event-time progress.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The producer on this channel has finished; nothing follows.
    EndOfPartition,
    /// The producer on this channel will send no more records or watermarks; barriers may still
    /// follow (the final checkpoint's), then [`StreamElement::EndOfPartition`] (Flink's `EndOfData`).
    // Declared last: the encodings of the older variants stay as they were.
    EndOfData,
}

impl<T> StreamElement<T> {
    /// True for everything that is not a record batch.
    pub fn is_event(&self) -> bool {
        !matches!(self, StreamElement::Records(_))
    }

    /// The number of records this element carries.
    pub fn record_count(&self) -> usize {
        match self {
            StreamElement::Records(r) => r.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn every_element_kind_round_trips_through_the_wire_codec() {
        let elements: Vec<StreamElement<(String, u64)>> = vec![
            StreamElement::Records(vec![("a".into(), 1), ("b".into(), 2)]),
            StreamElement::Watermark(Watermark(42)),
            StreamElement::Barrier(Barrier { checkpoint_id: CheckpointId(3), triggered_at_ms: 900, is_final: false }),
            StreamElement::EndOfData,
            StreamElement::EndOfPartition,
        ];
        for e in elements {
            let bytes = codec::to_bytes(&e).unwrap();
            let back: StreamElement<(String, u64)> = codec::from_bytes(&bytes).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn only_record_batches_carry_records() {
        assert_eq!(StreamElement::Records(vec![1, 2, 3]).record_count(), 3);
        assert!(!StreamElement::Records(vec![1]).is_event());
        assert!(StreamElement::<u8>::EndOfPartition.is_event());
        assert!(StreamElement::<u8>::EndOfData.is_event());
        assert_eq!(StreamElement::<u8>::EndOfData.record_count(), 0);
        assert_eq!(StreamElement::<u8>::Watermark(Watermark::MAX).record_count(), 0);
    }
}
