//! The broker's on-disk logs: what an entry is, how it is framed, and how a log is scanned on
//! recovery.
//!
//! Two kinds of log, both append-only files of framed entries:
//!
//! - the **metadata log** (`meta.log`), playing the part of Kafka's `__transaction_state` topic and
//!   its controller metadata: topics, producer-id allocations and every transaction state change;
//! - one **partition log** per topic partition (`p/<topic>/<partition>.log`): record batches and
//!   transaction markers (Kafka's control records), each at its own offsets.
//!
//! Every entry is one [`floe_core::codec::seal`] envelope (magic, version, length, crc32, body), so
//! a scan can tell a complete entry from a torn one. A crash can only damage the tail (bytes that
//! were never fsynced): a scan stops at the first entry that is partial, fails its crc or does not
//! decode, and reports the valid prefix; recovery truncates the file to it.

use super::protocol::{PackedRecords, ProducerEpoch, ProducerId, ProducerStamp, TxnEndReason, TxnOutcome};
use floe_core::codec::{self, ENVELOPE_HEADER_BYTES};
use floe_core::ids::{Offset, PartitionId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::sync::Arc;

/// Magic of a partition-log entry.
pub const PARTITION_MAGIC: [u8; 4] = *b"FBPL";
/// Magic of a metadata-log entry.
pub const META_MAGIC: [u8; 4] = *b"FBML";
/// The format version of both logs. 2: a batch's records are one [`PackedRecords`] block (they
/// were a sequence of keyed records), and an init records its fencing token.
pub const LOG_FORMAT_VERSION: u16 = 2;
/// The metadata log's path on the broker's disk.
pub const META_LOG_PATH: &str = "meta.log";

/// The path of a partition's log file.
pub fn partition_log_path(topic: &str, partition: PartitionId) -> String {
    format!("p/{topic}/{}.log", partition.get())
}

/// One entry of a partition log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionEntry {
    /// A batch of records at `base_offset..base_offset + records.len()`.
    Batch {
        /// The first record's offset.
        base_offset: Offset,
        /// The producer that wrote it (idempotent or transactional), if any.
        producer: Option<ProducerStamp>,
        /// Set when the batch belongs to a transaction of `producer`: that transaction's number
        /// (per transactional id, counting every transaction it ever opened).
        transaction: Option<u64>,
        /// The records: shared between the partition's in-memory log and the entry staged for the
        /// disk, so appending a batch never copies its records (encoded as a plain [`PackedRecords`]).
        #[serde(with = "shared_records")]
        records: Arc<PackedRecords>,
    },
    /// A transaction marker (Kafka's control record): ends `producer_id`'s open transaction in
    /// this partition. Takes one offset.
    Marker {
        /// The marker's offset.
        offset: Offset,
        /// The producer whose transaction ends.
        producer_id: ProducerId,
        /// Its epoch.
        epoch: ProducerEpoch,
        /// The number of the transaction that ends.
        transaction: u64,
        /// Commit or abort.
        outcome: TxnOutcome,
    },
}

/// Serde for [`PartitionEntry::Batch`]'s shared records: the same bytes as a [`PackedRecords`].
mod shared_records {
    use super::PackedRecords;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(records: &Arc<PackedRecords>, serializer: S) -> Result<S::Ok, S::Error> {
        records.as_ref().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<PackedRecords>, D::Error> {
        PackedRecords::deserialize(deserializer).map(Arc::new)
    }
}

impl PartitionEntry {
    /// The first offset this entry occupies.
    pub fn base_offset(&self) -> Offset {
        match self {
            PartitionEntry::Batch { base_offset, .. } => *base_offset,
            PartitionEntry::Marker { offset, .. } => *offset,
        }
    }

    /// The offset after this entry.
    pub fn next_offset(&self) -> Offset {
        match self {
            PartitionEntry::Batch { base_offset, records, .. } => Offset(base_offset.get() + records.len() as u64),
            PartitionEntry::Marker { offset, .. } => offset.next(),
        }
    }
}

/// One entry of the metadata log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaEntry {
    /// A topic was created.
    CreateTopic {
        /// Its name.
        topic: String,
        /// Its partition count.
        partitions: u32,
    },
    /// A producer id was handed to an idempotent producer.
    AllocateProducerId {
        /// The id.
        producer_id: ProducerId,
    },
    /// `init_transactions`: the transactional id now has this producer id and epoch.
    InitTransactions {
        /// The transactional id.
        transactional_id: String,
        /// Its producer id.
        producer_id: ProducerId,
        /// Its new epoch.
        epoch: ProducerEpoch,
        /// Its transaction timeout.
        transaction_timeout_ms: u64,
        /// The init's token, if it carried one.
        token: Option<crate::broker::protocol::InitToken>,
    },
    /// A partition joined the open transaction (opening it if none was).
    AddPartition {
        /// The transactional id.
        transactional_id: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionId,
    },
    /// The open transaction was pre-committed.
    Prepare {
        /// The transactional id.
        transactional_id: String,
    },
    /// The open transaction's fate is decided; markers follow in its partitions.
    Decide {
        /// The transactional id.
        transactional_id: String,
        /// Commit or abort.
        outcome: TxnOutcome,
        /// Why.
        reason: TxnEndReason,
    },
    /// A [`crate::broker::protocol::PrefixFence`] was raised (appended last: logs written
    /// before it existed still read).
    FencePrefix {
        /// The fenced prefix.
        prefix: String,
        /// Its generation.
        generation: u64,
    },
}

/// Frames one entry (a sealed envelope).
pub fn frame<T: Serialize>(magic: [u8; 4], entry: &T) -> Vec<u8> {
    codec::seal_value(magic, LOG_FORMAT_VERSION, entry).expect("log entries always encode")
}

/// Appends the frame of one entry to `out` (the same bytes as [`frame`], no intermediate buffer).
pub fn frame_into<T: Serialize>(out: &mut Vec<u8>, magic: [u8; 4], entry: &T) {
    codec::seal_value_into(out, magic, LOG_FORMAT_VERSION, entry).expect("log entries always encode")
}

/// Bytes to reserve for the frame of `entry`: exact for a marker's order of size, and for a batch
/// its records plus room for the header and the fields around them (a hint: framing never
/// depends on it).
pub fn framed_bytes_hint(entry: &PartitionEntry) -> usize {
    /// The envelope's header and every field of an entry but a batch's record bytes, at most.
    const ENTRY_FIELDS_BYTES_MAX: usize = 64;
    ENVELOPE_HEADER_BYTES
        + ENTRY_FIELDS_BYTES_MAX
        + match entry {
            PartitionEntry::Batch { records, .. } => records.bytes_len(),
            PartitionEntry::Marker { .. } => 0,
        }
}

/// Why a scan stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TornReason {
    /// The last entry's header or body is incomplete.
    Partial,
    /// An entry failed its checksum, magic or version check, or did not decode.
    Corrupt(String),
}

/// The result of scanning a log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan<T> {
    /// The complete entries, in order.
    pub entries: Vec<T>,
    /// For each entry, the byte position just after it (where a truncation keeping it ends).
    pub ends: Vec<usize>,
    /// Bytes of the valid prefix (the length to truncate the file to).
    pub valid_bytes: usize,
    /// Set when bytes after the valid prefix were found, and why they were rejected.
    pub torn: Option<TornReason>,
}

/// Scans a log file's bytes. Never panics, whatever the bytes.
pub fn scan<T: DeserializeOwned>(magic: [u8; 4], bytes: &[u8]) -> Scan<T> {
    let mut entries = Vec::new();
    let mut ends = Vec::new();
    let mut pos = 0usize;
    let mut torn = None;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let magic_len = rest.len().min(magic.len());
        if rest[..magic_len] != magic[..magic_len] {
            torn = Some(TornReason::Corrupt("bad magic".into()));
            break;
        }
        if rest.len() < ENVELOPE_HEADER_BYTES {
            torn = Some(TornReason::Partial);
            break;
        }
        let body_len = u32::from_le_bytes([rest[6], rest[7], rest[8], rest[9]]) as usize;
        let Some(frame_len) = ENVELOPE_HEADER_BYTES.checked_add(body_len) else {
            torn = Some(TornReason::Corrupt("length overflow".into()));
            break;
        };
        if rest.len() < frame_len {
            // A torn length field can also claim more than the file holds: either way the
            // tail is incomplete.
            torn = Some(TornReason::Partial);
            break;
        }
        match codec::open_value::<T>(magic, LOG_FORMAT_VERSION, &rest[..frame_len]) {
            Ok(entry) => {
                entries.push(entry);
                pos += frame_len;
                ends.push(pos);
            }
            Err(e) => {
                torn = Some(TornReason::Corrupt(e.to_string()));
                break;
            }
        }
    }
    debug_assert!(pos <= bytes.len());
    debug_assert_eq!(torn.is_none(), pos == bytes.len());
    Scan { entries, ends, valid_bytes: pos, torn }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(base: u64, n: usize) -> PartitionEntry {
        PartitionEntry::Batch {
            base_offset: Offset(base),
            producer: None,
            transaction: None,
            records: Arc::new(PackedRecords::from_values((0..n).map(|i| vec![i as u8; 3]))),
        }
    }

    fn two_entries() -> (Vec<u8>, usize) {
        let mut bytes = frame(PARTITION_MAGIC, &batch(0, 2));
        let first = bytes.len();
        bytes.extend(frame(PARTITION_MAGIC, &batch(2, 1)));
        (bytes, first)
    }

    #[test]
    fn a_clean_log_scans_to_every_entry() {
        let (bytes, _) = two_entries();
        let scan = scan::<PartitionEntry>(PARTITION_MAGIC, &bytes);
        assert_eq!(scan.entries, vec![batch(0, 2), batch(2, 1)]);
        assert_eq!(scan.valid_bytes, bytes.len());
        assert_eq!(scan.torn, None);
    }

    #[test]
    fn every_kind_of_torn_tail_stops_the_scan_at_the_last_complete_entry() {
        let (good, first) = two_entries();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut garbage = good[..first].to_vec();
        garbage.extend([0xAB; 40]);
        let mut zeros = good[..first].to_vec();
        zeros.extend([0u8; 30]);
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("header cut", good[..first + 5].to_vec(), true),
            ("body cut", good[..good.len() - 1].to_vec(), true),
            ("bad crc at the end", flipped, false),
            ("garbage after", garbage, false),
            ("zero fill after", zeros, false),
        ];
        for (name, bytes, partial) in cases {
            let scan = scan::<PartitionEntry>(PARTITION_MAGIC, &bytes);
            assert_eq!(scan.entries, vec![batch(0, 2)], "{name}");
            assert_eq!(scan.valid_bytes, first, "{name}");
            match (partial, &scan.torn) {
                (true, Some(TornReason::Partial)) | (false, Some(TornReason::Corrupt(_))) => {}
                (_, other) => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_meta_entry_is_not_read_as_a_partition_entry() {
        let bytes = frame(META_MAGIC, &MetaEntry::AllocateProducerId { producer_id: 1 });
        let scan = scan::<PartitionEntry>(PARTITION_MAGIC, &bytes);
        assert!(scan.entries.is_empty());
        assert!(matches!(scan.torn, Some(TornReason::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn any_prefix_of_a_log_scans_to_a_prefix_of_its_entries(cut in 0usize..400, n in 1usize..6) {
            let entries: Vec<PartitionEntry> = (0..n).map(|i| batch(i as u64 * 3, 3)).collect();
            let bytes: Vec<u8> = entries.iter().flat_map(|e| frame(PARTITION_MAGIC, e)).collect();
            let cut = cut.min(bytes.len());
            let scan = scan::<PartitionEntry>(PARTITION_MAGIC, &bytes[..cut]);
            prop_assert!(scan.entries.len() <= entries.len());
            prop_assert_eq!(&scan.entries[..], &entries[..scan.entries.len()]);
            prop_assert!(scan.valid_bytes <= cut);
            prop_assert_eq!(scan.torn.is_none(), scan.valid_bytes == cut);
        }
    }
}
