//! Byte helpers for the decoder targets.
//!
//! * [`split_blobs`] cuts one fuzz input into several blobs at [`BLOB_SEPARATOR`], so one input
//!   can carry the several snapshots a restore or a redistribution takes.
//! * [`frame_body`] wraps a body in a valid frame header (length and crc32), so the fuzzer reaches
//!   the bincode decoders behind the checksum instead of stopping at it; likewise the snapshot
//!   target seals bodies with `codec::seal`.
//! * [`ChunkedReader`] is an `AsyncRead` that is always ready and hands out its bytes in chunks
//!   of fuzz-chosen sizes, so `FrameReader`'s buffering (frames split across reads, several
//!   frames in one read) is exercised; [`poll_ready`] drives a future that must never wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// What separates blobs in one fuzz input.
pub const BLOB_SEPARATOR: &[u8] = b"#|";

/// Most blobs taken from one input (the rest of the input stays in the last blob).
pub const BLOBS_MAX: usize = 16;

/// Splits `data` at every [`BLOB_SEPARATOR`], into at most [`BLOBS_MAX`] blobs.
pub fn split_blobs(data: &[u8]) -> Vec<&[u8]> {
    let mut blobs = Vec::new();
    let mut rest = data;
    while blobs.len() + 1 < BLOBS_MAX {
        match rest.windows(BLOB_SEPARATOR.len()).position(|w| w == BLOB_SEPARATOR) {
            Some(at) => {
                blobs.push(&rest[..at]);
                rest = &rest[at + BLOB_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    blobs.push(rest);
    debug_assert!(!blobs.is_empty() && blobs.len() <= BLOBS_MAX);
    blobs
}

/// Appends `body` as one well-formed frame (`len | crc32 | body`, as `transport::frame` writes).
/// Bodies above `FRAME_BYTES_MAX` cannot come from a fuzz input of sane size; they are framed
/// with their true length anyway (the decoder must then refuse them).
pub fn frame_body(body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// An always-ready reader that returns `data` in chunks whose sizes cycle through `chunk_sizes`
/// (a size of 0 counts as 1, so a read returns 0 bytes only at the end).
#[derive(Debug)]
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    chunk_sizes: &'a [u8],
    reads: usize,
}

impl<'a> ChunkedReader<'a> {
    /// A reader over `data`; an empty `chunk_sizes` reads everything at once.
    pub fn new(data: &'a [u8], chunk_sizes: &'a [u8]) -> Self {
        ChunkedReader { data, chunk_sizes, reads: 0 }
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let chunk = if self.chunk_sizes.is_empty() {
            self.data.len()
        } else {
            usize::from(self.chunk_sizes[self.reads % self.chunk_sizes.len()]).max(1)
        };
        let n = chunk.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        self.reads += 1;
        Poll::Ready(Ok(()))
    }
}

/// Polls `fut` once with a no-op waker and returns its output. Panics if it is not ready: the
/// futures given here only read from a [`ChunkedReader`], which is always ready, so waiting
/// would mean a lost wake-up.
pub fn poll_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future over an always-ready reader returned Pending"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn blobs_are_cut_at_every_separator() {
        let table: &[(&[u8], &[&[u8]])] = &[
            (b"", &[b""]),
            (b"abc", &[b"abc"]),
            (b"a#|b", &[b"a", b"b"]),
            (b"#|", &[b"", b""]),
            (b"a#|#|b#", &[b"a", b"", b"b#"]),
        ];
        for (input, want) in table {
            assert_eq!(split_blobs(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn blobs_beyond_the_limit_stay_in_the_last_one() {
        let input = b"x#|".repeat(BLOBS_MAX + 3);
        let blobs = split_blobs(&input);
        assert_eq!(blobs.len(), BLOBS_MAX);
        assert!(blobs[..BLOBS_MAX - 1].iter().all(|b| *b == b"x"));
        assert_eq!(blobs[BLOBS_MAX - 1], b"x#|".repeat(4).as_slice());
    }

    #[test]
    fn a_framed_body_decodes_as_a_frame() {
        let mut out = Vec::new();
        let body = floe_core::codec::to_bytes(&(7u64, "seven".to_string())).unwrap();
        frame_body(&body, &mut out);
        let (value, used): ((u64, String), usize) = floe_runtime::transport::decode_frame(&out).unwrap().unwrap();
        assert_eq!((value, used), ((7, "seven".to_string()), out.len()));
    }

    #[test]
    fn the_chunked_reader_hands_out_its_bytes_in_the_chunk_sizes_given() {
        let data: Vec<u8> = (0..10).collect();
        for (sizes, want) in
            [(&[][..], vec![10]), (&[3][..], vec![3, 3, 3, 1]), (&[0, 2][..], vec![1, 2, 1, 2, 1, 2, 1])]
        {
            let mut r = ChunkedReader::new(&data, sizes);
            let mut got = Vec::new();
            let mut all = Vec::new();
            loop {
                let mut buf = [0u8; 64];
                let n = poll_ready(r.read(&mut buf)).unwrap();
                if n == 0 {
                    break;
                }
                got.push(n);
                all.extend_from_slice(&buf[..n]);
            }
            assert_eq!((got, &all), (want, &data), "sizes {sizes:?}");
        }
    }
}
