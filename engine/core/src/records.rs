//! [`PackedRecords`]: a batch of encoded records in one buffer — what a sink hands the broker and
//! what the broker keeps, sends and writes to its log (the idea of Kafka's `RecordBatch` /
//! `MemoryRecords`: a produce request's records travel and are stored as one block of bytes).
//!
//! Each record is a 4-byte little-endian length followed by its bytes. A writer appends straight
//! into the buffer ([`PackedRecords::push_with`] reserves the length, lets the encoder append and
//! fills the length in), so a batch of `n` records costs one growing allocation instead of `n`.
//! On the wire and on disk a batch is its record count and its buffer as one byte string; reading
//! one back checks that the buffer splits into exactly that many records, so a corrupt batch is an
//! error and never a panic or a silently different batch.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of the length prefix of each record.
pub const RECORD_LENGTH_BYTES: usize = 4;

/// The largest record a batch holds (its length must fit the 4-byte prefix).
pub const RECORD_BYTES_MAX: usize = u32::MAX as usize;

/// A batch of encoded records in one buffer (see the module docs).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct PackedRecords {
    buf: Vec<u8>,
    count: u32,
    /// The length of the longest record (0 when empty): kept as records are added or checked,
    /// so a size limit is checked without a pass over the records.
    record_bytes_max: u32,
}

/// Why a batch could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedRecordsError {
    /// A record is longer than [`RECORD_BYTES_MAX`], or the batch would hold more than `u32::MAX` records.
    #[error("a record batch holds at most {} records of at most {RECORD_BYTES_MAX} bytes", u32::MAX)]
    TooLarge,
    /// The bytes do not split into the stated number of records.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
}

impl std::fmt::Debug for PackedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|r| String::from_utf8_lossy(r))).finish()
    }
}

impl PackedRecords {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` bytes of records (length prefixes included).
    pub fn with_capacity(bytes: usize) -> Self {
        PackedRecords { buf: Vec::with_capacity(bytes), count: 0, record_bytes_max: 0 }
    }

    /// A batch of `values`, in order.
    ///
    /// # Panics
    /// If a value is longer than [`RECORD_BYTES_MAX`] (4 GiB) or there are more than `u32::MAX`
    /// values: the caller holds them in memory, so this is a programming error.
    pub fn from_values<I>(values: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut out = PackedRecords::new();
        for v in values {
            out.push(v.as_ref()).expect("a record batch built from memory fits its limits");
        }
        out
    }

    /// Appends one record.
    pub fn push(&mut self, record: &[u8]) -> Result<(), PackedRecordsError> {
        self.push_with(|buf| {
            buf.extend_from_slice(record);
            Ok::<(), PackedRecordsError>(())
        })
    }

    /// Appends one record written by `encode`, which appends its bytes to the buffer it is given.
    /// If `encode` fails, the batch is left as it was and its error returned.
    pub fn push_with<E: From<PackedRecordsError>>(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        if self.count == u32::MAX {
            return Err(PackedRecordsError::TooLarge.into());
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; RECORD_LENGTH_BYTES]);
        if let Err(e) = encode(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let Ok(len) = u32::try_from(self.buf.len() - start - RECORD_LENGTH_BYTES) else {
            self.buf.truncate(start);
            return Err(PackedRecordsError::TooLarge.into());
        };
        self.buf[start..start + RECORD_LENGTH_BYTES].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        self.record_bytes_max = self.record_bytes_max.max(len);
        Ok(())
    }

    /// Appends a run of whole records taken from another batch ([`Iter::take_run_while`]) in one
    /// copy: the same batch as pushing its records one by one.
    pub fn extend_from_run(&mut self, run: RecordRun<'_>) -> Result<(), PackedRecordsError> {
        let count = self.count.checked_add(run.count).ok_or(PackedRecordsError::TooLarge)?;
        self.buf.extend_from_slice(run.bytes);
        self.count = count;
        self.record_bytes_max = self.record_bytes_max.max(run.record_bytes_max);
        Ok(())
    }

    /// The whole batch as one [`RecordRun`] (to append it elsewhere in one copy).
    pub fn as_run(&self) -> RecordRun<'_> {
        RecordRun { bytes: &self.buf, count: self.count, record_bytes_max: self.record_bytes_max }
    }

    /// The bytes of the records alone, without their length prefixes.
    pub fn payload_bytes_len(&self) -> usize {
        self.buf.len() - self.count as usize * RECORD_LENGTH_BYTES
    }

    /// The length of the longest record in the batch (0 when it is empty), without a pass over
    /// the records.
    pub fn record_bytes_max(&self) -> usize {
        self.record_bytes_max as usize
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of the records, length prefixes included.
    pub fn bytes_len(&self) -> usize {
        self.buf.len()
    }

    /// The records, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.buf }
    }

    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.record_bytes_max = 0;
    }

    /// Reads a batch from its record count and buffer, checking that the buffer splits into
    /// exactly `count` records.
    pub fn from_parts(count: u32, buf: Vec<u8>) -> Result<Self, PackedRecordsError> {
        let mut rest = buf.as_slice();
        let mut record_bytes_max = 0usize;
        for i in 0..count {
            let Some((record, tail)) = split_record(rest) else {
                return Err(PackedRecordsError::Corrupt(format!("record {i} of {count} runs past the end of {} bytes", buf.len())));
            };
            record_bytes_max = record_bytes_max.max(record.len());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(PackedRecordsError::Corrupt(format!("{} bytes after the last of {count} records", rest.len())));
        }
        let record_bytes_max = u32::try_from(record_bytes_max).expect("a record's length came from a 4-byte prefix");
        Ok(PackedRecords { buf, count, record_bytes_max })
    }
}

/// Splits the first record off `bytes`: `(record, rest)`, or `None` if it is cut short.
fn split_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (prefix, rest) = bytes.split_first_chunk::<RECORD_LENGTH_BYTES>()?;
    let len = u32::from_le_bytes(*prefix) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

impl From<PackedRecordsError> for crate::operator::OperatorError {
    fn from(e: PackedRecordsError) -> Self {
        crate::operator::OperatorError::Codec(e.to_string())
    }
}

/// The records of a [`PackedRecords`], in order.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    /// Takes the next records while `keep` accepts them, as one [`RecordRun`]; the first record
    /// `keep` refuses stays next. Walks only the length prefixes: the run's bytes are copied once,
    /// by [`PackedRecords::extend_from_run`].
    pub fn take_run_while(&mut self, mut keep: impl FnMut(&'a [u8]) -> bool) -> RecordRun<'a> {
        let start = self.rest;
        let (mut count, mut record_bytes_max) = (0u32, 0usize);
        while let Some((record, rest)) = split_record(self.rest) {
            if !keep(record) {
                break;
            }
            record_bytes_max = record_bytes_max.max(record.len());
            self.rest = rest;
            // A batch holds at most u32::MAX records, so neither count can overflow.
            count += 1;
        }
        let bytes = &start[..start.len() - self.rest.len()];
        let record_bytes_max = u32::try_from(record_bytes_max).expect("a record's length came from a 4-byte prefix");
        RecordRun { bytes, count, record_bytes_max }
    }
}

/// Consecutive whole records of a batch, taken by [`Iter::take_run_while`] (so its bytes always
/// split cleanly into its records) and appended elsewhere in one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRun<'a> {
    bytes: &'a [u8],
    count: u32,
    record_bytes_max: u32,
}

impl RecordRun<'_> {
    /// How many records the run holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the run holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The run's bytes, length prefixes included.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // A batch's buffer was checked when it was built or read, so it always splits cleanly.
        let (record, rest) = split_record(self.rest)?;
        self.rest = rest;
        Some(record)
    }
}

impl<'a> IntoIterator for &'a PackedRecords {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl Serialize for PackedRecords {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.count)?;
        t.serialize_element(&Bytes(&self.buf))?;
        t.end()
    }
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::codec::byte_buf::deserialize(deserializer).map(ByteBuf)
    }
}

impl<'de> Deserialize<'de> for PackedRecords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = PackedRecords;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record batch: a record count and a byte string")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PackedRecords, A::Error> {
                let count: u32 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let ByteBuf(buf) = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                PackedRecords::from_parts(count, buf).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_tuple(2, Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    #[test]
    fn records_come_back_in_order_with_their_bytes() {
        let values: [&[u8]; 4] = [b"", b"a", b"word", &[0u8; 300]];
        let batch = PackedRecords::from_values(values);
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.bytes_len(), 4 * RECORD_LENGTH_BYTES + 305);
        assert_eq!(batch.iter().collect::<Vec<_>>(), values);
        assert!(PackedRecords::new().is_empty());
        assert_eq!(PackedRecords::new().iter().count(), 0);
    }

    #[test]
    fn a_failed_encoder_leaves_the_batch_as_it_was() {
        let mut batch = PackedRecords::from_values([b"kept"]);
        let before = batch.clone();
        let r = batch.push_with(|buf| {
            buf.extend_from_slice(b"half-written");
            Err(PackedRecordsError::Corrupt("encoder failed".into()))
        });
        assert!(r.is_err());
        assert_eq!(batch, before);
        batch.push_with(|buf| {
            buf.extend_from_slice(b"next");
            Ok::<(), PackedRecordsError>(())
        })
        .unwrap();
        assert_eq!(batch.iter().collect::<Vec<_>>(), [&b"kept"[..], b"next"]);
    }

    #[test]
    fn a_batch_whose_bytes_do_not_split_into_its_count_is_refused() {
        let good = PackedRecords::from_values([&b"ab"[..], b"c"]);
        let cases: &[(u32, Vec<u8>, &str)] = &[
            (3, good.buf.clone(), "runs past the end"),
            (1, good.buf.clone(), "bytes after the last"),
            (2, good.buf[..good.buf.len() - 1].to_vec(), "runs past the end"),
            (1, vec![0xFF, 0xFF, 0xFF, 0xFF, 1], "runs past the end"),
            (1, vec![1, 0, 0], "runs past the end"),
        ];
        for (count, buf, want) in cases {
            let err = PackedRecords::from_parts(*count, buf.clone()).unwrap_err();
            assert!(err.to_string().contains(want), "{count} {buf:?}: {err}");
            let bytes = codec::to_bytes(&(count, serde_bytes_of(buf))).unwrap();
            assert!(codec::from_bytes::<PackedRecords>(&bytes).is_err(), "{count} {buf:?}");
        }
        assert_eq!(PackedRecords::from_parts(2, good.buf.clone()).unwrap(), good);
    }

    /// `buf` as a serde byte string (what a batch's buffer is on the wire).
    fn serde_bytes_of(buf: &[u8]) -> impl Serialize + '_ {
        Bytes(buf)
    }

    proptest! {
        #[test]
        fn a_batch_round_trips_through_the_codec(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..30)) {
            let batch = PackedRecords::from_values(&values);
            let bytes = codec::to_bytes(&batch).unwrap();
            let back: PackedRecords = codec::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &batch);
            prop_assert_eq!(back.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(), values);
        }

        /// Copying runs (cut at arbitrary places, some skipped) gives the same batch as pushing
        /// the kept records one by one, longest-record figure included.
        #[test]
        fn runs_copied_whole_equal_records_pushed_one_by_one(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..30),
            cuts in proptest::collection::vec((0usize..8, any::<bool>()), 0..12),
        ) {
            let batch = PackedRecords::from_values(&values);
            let (mut fast, mut slow) = (PackedRecords::from_values([b"head"]), PackedRecords::from_values([b"head"]));
            let mut it = batch.iter();
            let mut at = 0usize;
            for (n, keep) in cuts {
                let mut taken = 0;
                let run = it.take_run_while(|_| { taken += 1; taken <= n });
                let end = (at + n).min(values.len());
                prop_assert_eq!(run.len(), end - at);
                prop_assert_eq!(run.bytes_len(), values[at..end].iter().map(|v| v.len() + RECORD_LENGTH_BYTES).sum::<usize>());
                if keep {
                    fast.extend_from_run(run).unwrap();
                    for v in &values[at..end] {
                        slow.push(v).unwrap();
                    }
                }
                at = end;
            }
            prop_assert_eq!(it.map(<[u8]>::to_vec).collect::<Vec<_>>(), values[at..].to_vec());
            let mut whole = fast.clone();
            whole.extend_from_run(batch.as_run()).unwrap();
            let mut by_one = fast.clone();
            values.iter().for_each(|v| by_one.push(v).unwrap());
            prop_assert_eq!(&whole, &by_one);
            prop_assert_eq!(batch.payload_bytes_len(), values.iter().map(Vec::len).sum::<usize>());
            prop_assert_eq!(fast.record_bytes_max(), slow.record_bytes_max());
            prop_assert_eq!(&fast, &slow);
        }

        #[test]
        fn the_longest_record_is_known_however_the_batch_was_made(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..30)) {
            let batch = PackedRecords::from_values(&values);
            let want = values.iter().map(Vec::len).max().unwrap_or(0);
            prop_assert_eq!(batch.record_bytes_max(), want);
            let back: PackedRecords = codec::from_bytes(&codec::to_bytes(&batch).unwrap()).unwrap();
            prop_assert_eq!(back.record_bytes_max(), want);
            let mut cleared = batch.clone();
            cleared.clear();
            prop_assert_eq!(cleared.record_bytes_max(), 0);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(batch) = codec::from_bytes::<PackedRecords>(&bytes) {
                prop_assert_eq!(batch.iter().count(), batch.len());
            }
        }
    }
}
