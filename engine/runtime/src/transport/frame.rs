//! Checksummed, length-prefixed frames: the unit every floe connection carries.
//!
//! Layout (little endian): `len: u32 | crc32(body): u32 | body`, where `body` is one value in
//! floe's bincode 2 configuration ([`floe_core::codec`]). This plays the role of Flink's
//! `NettyMessage` framing (`NettyMessageEncoder` / `NettyMessageDecoder`): a frame header, then
//! one message, except that floe checksums every body because the simulator may corrupt bytes.
//!
//! A frame whose declared length exceeds [`FRAME_BYTES_MAX`], whose checksum does not match, or
//! whose body does not decode is a [`FrameError`]; decoding never panics, whatever the bytes.
//! The connection that delivered such a frame is closed by its owner (with a `tracing::warn!`):
//! a bad frame never reaches the application.
//!
//! [`FrameReader`] is the cancel-safe reader: its partial state lives in the reader, so it can
//! be used inside `tokio::select!` and under `tokio::time::timeout`. [`read_frame`] is the plain
//! one-shot form (not cancel-safe: a cancelled call may have consumed part of a frame).

use serde::{de::DeserializeOwned, Serialize};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame body accepted or produced, in bytes (16 MiB).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// Bytes in a frame before its body: `len: u32` and `crc32: u32`.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bytes a [`FrameReader`] asks its source for at a time (the buffer grows to a frame's size,
/// never beyond `FRAME_HEADER_BYTES + FRAME_BYTES_MAX`).
pub const FRAME_READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The frame body is larger than [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the limit of {FRAME_BYTES_MAX}")]
    Oversized {
        /// The declared (or attempted) body length.
        len: usize,
    },
    /// The body does not hash to the header's crc32.
    #[error("frame checksum mismatch: header says {expected:#010x}, body hashes to {actual:#010x}")]
    ChecksumMismatch {
        /// The crc32 in the header.
        expected: u32,
        /// The crc32 of the body received.
        actual: u32,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("frame body does not decode: {0}")]
    Decode(String),
    /// The value could not be encoded.
    #[error("frame body does not encode: {0}")]
    Encode(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {needed} bytes)")]
    TruncatedAtEof {
        /// Bytes of the frame present.
        got: usize,
        /// Bytes the frame needed.
        needed: usize,
    },
}

/// Appends one frame carrying `msg` to `out`. On error `out` is left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    // Reserve the frame's exact size first (a pass that only counts bytes: cheap, and a batch of
    // records is one byte string): a big frame grown from empty was copied at every doubling.
    let mut size = bincode::enc::write::SizeWriter::default();
    if bincode::serde::encode_into_writer(msg, &mut size, floe_core::codec::config()).is_ok() {
        out.reserve(FRAME_HEADER_BYTES + size.bytes_written.min(FRAME_BYTES_MAX));
    }
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    // Encode straight into `out` with floe's configuration: the same bytes as `codec::to_bytes`.
    if let Err(e) = bincode::serde::encode_into_std_write(msg, out, floe_core::codec::config()) {
        out.truncate(start);
        return Err(FrameError::Encode(e.to_string()));
    }
    let body_start = start + FRAME_HEADER_BYTES;
    let len = out.len() - body_start;
    if len > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(FrameError::Oversized { len });
    }
    let crc = crc32fast::hash(&out[body_start..]);
    let len_u32 = u32::try_from(len).expect("FRAME_BYTES_MAX fits in u32");
    out[start..start + 4].copy_from_slice(&len_u32.to_le_bytes());
    out[start + 4..body_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The total size (header + body) of the frame that `encode_frame(msg)` would produce.
pub fn frame_bytes_of<T: Serialize + ?Sized>(msg: &T) -> Result<usize, FrameError> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out)?;
    Ok(out.len())
}

/// Parses a frame header: the body length (checked against [`FRAME_BYTES_MAX`]) and its crc32.
fn parse_header(header: &[u8]) -> Result<(usize, u32), FrameError> {
    debug_assert!(header.len() >= FRAME_HEADER_BYTES);
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::Oversized { len });
    }
    Ok((len, crc))
}

/// Checks a body against its crc32 and decodes it.
fn check_and_decode<T: DeserializeOwned>(body: &[u8], expected: u32) -> Result<T, FrameError> {
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(FrameError::ChecksumMismatch { expected, actual });
    }
    floe_core::codec::from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Decodes the first frame of `bytes`: `Ok(None)` if `bytes` holds only part of a frame,
/// otherwise the value and the frame's total size in bytes. Never panics, whatever the bytes.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let (len, crc) = parse_header(bytes)?;
    let total = FRAME_HEADER_BYTES + len;
    if bytes.len() < total {
        return Ok(None);
    }
    let value = check_and_decode(&bytes[FRAME_HEADER_BYTES..total], crc)?;
    Ok(Some((value, total)))
}

/// Reads one frame: `Ok(None)` on a clean end of stream (before the first byte of a frame).
///
/// `buf` is scratch space reused between calls; it never grows beyond the frame's size, so at
/// most [`FRAME_BYTES_MAX`]. Not cancel-safe: use [`FrameReader`] inside `select!`/`timeout`.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < FRAME_HEADER_BYTES {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::TruncatedAtEof { got, needed: FRAME_HEADER_BYTES });
        }
        got += n;
    }
    let (len, crc) = parse_header(&header)?;
    buf.clear();
    buf.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(FrameError::TruncatedAtEof { got: FRAME_HEADER_BYTES + filled, needed: FRAME_HEADER_BYTES + len });
        }
        filled += n;
    }
    check_and_decode(buf, crc).map(Some)
}

/// A cancel-safe frame reader that owns its source and its buffer.
///
/// One read from the source may bring several frames (a simulated flush is one message); they
/// are returned one by one without further reads. The buffer never holds more than one frame
/// plus one read chunk beyond it.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// Whether the source reported end of stream.
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a source.
    pub fn new(inner: R) -> Self {
        Self { inner, buf: Vec::new(), start: 0, end: 0, eof: false }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Returns the next frame if it is already complete in the buffer, without reading.
    pub fn try_next<T: DeserializeOwned>(&mut self) -> Result<Option<(T, usize)>, FrameError> {
        match decode_frame(&self.buf[self.start..self.end])? {
            Some((value, used)) => {
                self.start += used;
                debug_assert!(self.start <= self.end);
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some((value, used)))
            }
            None => Ok(None),
        }
    }

    /// Reads the next frame and its total size in bytes; `Ok(None)` on a clean end of stream.
    /// Cancel-safe: a cancelled call loses nothing.
    pub async fn next_sized<T: DeserializeOwned>(&mut self) -> Result<Option<(T, usize)>, FrameError> {
        loop {
            if let Some(found) = self.try_next()? {
                return Ok(Some(found));
            }
            if self.eof {
                let got = self.buffered_bytes();
                if got == 0 {
                    return Ok(None);
                }
                let needed = if got < FRAME_HEADER_BYTES {
                    FRAME_HEADER_BYTES
                } else {
                    FRAME_HEADER_BYTES + parse_header(&self.buf[self.start..self.end])?.0
                };
                return Err(FrameError::TruncatedAtEof { got, needed });
            }
            self.fill().await?;
        }
    }

    /// Reads the next frame; `Ok(None)` on a clean end of stream. Cancel-safe.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        Ok(self.next_sized().await?.map(|(value, _)| value))
    }

    /// Reads once from the source into the buffer (cancel-safe: `read` consumes nothing
    /// when it is cancelled).
    async fn fill(&mut self) -> Result<(), FrameError> {
        // Room needed: the whole current frame if its header is known, else a chunk.
        let pending = self.end - self.start;
        let want = if pending >= FRAME_HEADER_BYTES {
            let (len, _) = parse_header(&self.buf[self.start..self.end])?;
            (FRAME_HEADER_BYTES + len).max(FRAME_READ_CHUNK_BYTES)
        } else {
            FRAME_READ_CHUNK_BYTES
        };
        if self.start > 0 && self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        if self.buf.len() < self.start + want {
            self.buf.resize(self.start + want, 0);
        }
        debug_assert!(self.buf.len() <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX + FRAME_READ_CHUNK_BYTES);
        if self.end == self.buf.len() {
            // The current frame is complete in the buffer; nothing to read (defensive).
            return Ok(());
        }
        let n = self.inner.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Ok(())
    }

    /// The source.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Gives the source back (dropping buffered bytes).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Rec = (String, u64);
    /// A table row: a case name, the bytes, and the error it must produce.
    type DamageCase = (&'static str, Vec<u8>, fn(&FrameError) -> bool);

    fn frames(values: &[Rec]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            encode_frame(v, &mut out).unwrap();
        }
        out
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        #[cfg(madsim)]
        {
            madsim::runtime::Runtime::new().block_on(f)
        }
        #[cfg(not(madsim))]
        {
            tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
        }
    }

    #[test]
    fn a_frame_decodes_to_the_value_encoded() {
        let values = vec![("a".to_string(), 1), ("".to_string(), u64::MAX), ("word".repeat(100), 7)];
        let bytes = frames(&values);
        let mut rest = &bytes[..];
        for v in &values {
            let (back, used) = decode_frame::<Rec>(rest).unwrap().unwrap();
            assert_eq!(&back, v);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert!(decode_frame::<Rec>(rest).unwrap().is_none());
    }

    #[test]
    fn the_header_carries_length_and_crc_little_endian() {
        let mut out = Vec::new();
        encode_frame(&7u8, &mut out).unwrap();
        assert_eq!(out.len(), FRAME_HEADER_BYTES + 1);
        assert_eq!(&out[0..4], &1u32.to_le_bytes());
        assert_eq!(&out[4..8], &crc32fast::hash(&[7]).to_le_bytes());
        assert_eq!(out[8], 7);
        assert_eq!(frame_bytes_of(&7u8).unwrap(), out.len());
    }

    #[test]
    fn every_kind_of_damage_is_a_typed_error() {
        let good = frames(&[("hello".to_string(), 42)]);
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        let mut oversized = good.clone();
        oversized[0..4].copy_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        // A valid frame whose body is a u8, read as a (String, u64).
        let mut wrong_type = Vec::new();
        encode_frame(&200u8, &mut wrong_type).unwrap();
        let cases: Vec<DamageCase> = vec![
            ("bit flip in body", flipped, |e| matches!(e, FrameError::ChecksumMismatch { .. })),
            ("oversized length", oversized, |e| matches!(e, FrameError::Oversized { len } if *len == FRAME_BYTES_MAX + 1)),
            ("wrong type", wrong_type, |e| matches!(e, FrameError::Decode(_))),
        ];
        for (name, bytes, is_expected) in cases {
            let err = decode_frame::<Rec>(&bytes).unwrap_err();
            assert!(is_expected(&err), "{name}: unexpected {err:?}");
            let err = block_on(async { FrameReader::new(&bytes[..]).next::<Rec>().await }).unwrap_err();
            assert!(is_expected(&err), "{name} (reader): unexpected {err:?}");
            let mut buf = Vec::new();
            let err = block_on(async { read_frame::<_, Rec>(&mut &bytes[..], &mut buf).await }).unwrap_err();
            assert!(is_expected(&err), "{name} (read_frame): unexpected {err:?}");
        }
    }

    #[test]
    fn an_oversized_value_is_refused_at_encode_and_leaves_the_buffer_untouched() {
        let mut out = vec![1, 2, 3];
        let big = vec![0u8; FRAME_BYTES_MAX + 1];
        assert!(matches!(encode_frame(&big, &mut out), Err(FrameError::Oversized { .. })));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn clean_eof_is_none_and_eof_inside_a_frame_is_truncated() {
        let good = frames(&[("x".to_string(), 1)]);
        // (bytes, expect clean None after the frames present)
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("empty stream", vec![], true),
            ("one whole frame", good.clone(), true),
            ("half a header", good[..3].to_vec(), false),
            ("header without body", good[..FRAME_HEADER_BYTES].to_vec(), false),
            ("one byte short", good[..good.len() - 1].to_vec(), false),
        ];
        for (name, bytes, clean) in cases {
            let whole_frames = usize::from(bytes.len() == good.len());
            let result = block_on(async {
                let mut reader = FrameReader::new(&bytes[..]);
                for _ in 0..whole_frames {
                    assert_eq!(reader.next::<Rec>().await.unwrap(), Some(("x".to_string(), 1)));
                }
                reader.next::<Rec>().await
            });
            let mut buf = Vec::new();
            let one_shot = block_on(async {
                let mut src = &bytes[..];
                for _ in 0..whole_frames {
                    read_frame::<_, Rec>(&mut src, &mut buf).await.unwrap();
                }
                read_frame::<_, Rec>(&mut src, &mut buf).await
            });
            if clean {
                assert!(matches!(result, Ok(None)), "{name}: {result:?}");
                assert!(matches!(one_shot, Ok(None)), "{name}: {one_shot:?}");
            } else {
                assert!(matches!(result, Err(FrameError::TruncatedAtEof { .. })), "{name}: {result:?}");
                assert!(matches!(one_shot, Err(FrameError::TruncatedAtEof { .. })), "{name}: {one_shot:?}");
            }
        }
    }

    #[test]
    fn a_reader_returns_many_frames_from_one_read_and_frames_split_across_reads() {
        let values: Vec<Rec> = (0..200).map(|i| (format!("key-{i}"), i)).collect();
        let bytes = frames(&values);
        // A source that hands out 7 bytes per read, so frames straddle reads.
        let (mut tx, rx) = tokio::io::duplex(7);
        let got = block_on(async move {
            let writer = async move {
                use tokio::io::AsyncWriteExt;
                tx.write_all(&bytes).await.unwrap();
                drop(tx);
            };
            let reader = async move {
                let mut reader = FrameReader::new(rx);
                let mut got = Vec::new();
                while let Some(v) = reader.next::<Rec>().await.unwrap() {
                    got.push(v);
                }
                got
            };
            tokio::join!(writer, reader).1
        });
        assert_eq!(got, values);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame::<Rec>(&bytes);
            let _ = decode_frame::<Vec<u32>>(&bytes);
            block_on(async {
                let mut reader = FrameReader::new(&bytes[..]);
                while let Ok(Some(_)) = reader.next::<Rec>().await {}
            });
        }

        #[test]
        fn a_valid_frame_with_any_header_byte_changed_is_rejected_or_incomplete(
            key in "[a-z]{0,12}", n in any::<u64>(), pos in 0usize..FRAME_HEADER_BYTES, xor in 1u8..,
        ) {
            let mut bytes = frames(&[(key, n)]);
            bytes[pos] ^= xor;
            // A changed length either asks for more bytes or mis-frames the body (crc or
            // decode error); a changed crc is a mismatch. Never a silent wrong value.
            prop_assert!(!matches!(decode_frame::<Rec>(&bytes), Ok(Some(_))));
        }

        #[test]
        fn frames_round_trip(values in proptest::collection::vec(("[a-z]{0,8}", any::<u64>()), 0..20)) {
            let bytes = frames(&values);
            let mut rest = &bytes[..];
            let mut back = Vec::new();
            while let Some((v, used)) = decode_frame::<Rec>(rest).unwrap() {
                back.push(v);
                rest = &rest[used..];
            }
            prop_assert_eq!(back, values);
        }
    }
}
