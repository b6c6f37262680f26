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
        PackedRecords { buf: Vec::with_capacity(bytes), count: 0 }
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
        Ok(())
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
    }

    /// Reads a batch from its record count and buffer, checking that the buffer splits into
    /// exactly `count` records.
    pub fn from_parts(count: u32, buf: Vec<u8>) -> Result<Self, PackedRecordsError> {
        let mut rest = buf.as_slice();
        for i in 0..count {
            let Some((_, tail)) = split_record(rest) else {
                return Err(PackedRecordsError::Corrupt(format!("record {i} of {count} runs past the end of {} bytes", buf.len())));
            };
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(PackedRecordsError::Corrupt(format!("{} bytes after the last of {count} records", rest.len())));
        }
        Ok(PackedRecords { buf, count })
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

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(batch) = codec::from_bytes::<PackedRecords>(&bytes) {
                prop_assert_eq!(batch.iter().count(), batch.len());
            }
        }
    }
}
