//! Arbitrary bytes → floe's frame decoders (`transport::decode_frame` and the cancel-safe
//! `FrameReader`) for the messages that really travel: the cluster's RPC (`JmRequest`,
//! `TmRequest` and their responses, each as `(id, message)`), the broker's and the blob store's
//! RPC, and the data channel's handshake and elements.
//!
//! Input: `selector | chunk sizes... | 0x00 | stream`. The selector's low bits pick the message
//! type; its high bit says "the stream is a list of *bodies* separated by `#|`: frame each one
//! properly" (correct length and crc32), so the fuzzer reaches the bincode decoders instead of
//! stopping at the checksum. The chunk sizes (up to the first zero byte) cut the stream into the
//! reads `FrameReader` gets.
//!
//! Checked, for every input: nothing panics, and
//! * `FrameReader` over any chunking returns exactly what a `decode_frame` loop over the whole
//!   stream returns (same values, same sizes, same error), and ends with a clean `None` or a
//!   `TruncatedAtEof` that counts the bytes left;
//! * a prefix of a complete frame is incomplete (`Ok(None)`), never an error or a value;
//! * every decoded value re-encodes to a frame that decodes to the same value.
#![no_main]

#[cfg(not(madsim))]
compile_error!("run with RUSTFLAGS=\"--cfg madsim\" (cargo-fuzz ignores .cargo/config.toml)");

use floe_fuzz::bytes::{frame_body, poll_ready, split_blobs, ChunkedReader};
use floe_runtime::blob::{BlobRequest, BlobResponse};
use floe_runtime::broker::server::WireResponse;
use floe_runtime::broker::BrokerRequest;
use floe_runtime::cluster::protocol::{ChannelHello, JmRequest, JmResponse, TmRequest, TmResponse};
use floe_runtime::cluster::task_manager::wire::{ChannelElement, HelloReply};
use floe_runtime::transport::{decode_frame, encode_frame, FrameError, FrameReader, FRAME_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Most frames read from one input (each frame is at least 9 bytes, so inputs stay far below).
const FRAMES_PER_INPUT_MAX: usize = 100_000;

/// What reading a stream came to, frame by frame.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A value (its `Debug` form) and its frame's total size.
    Frame(String, usize),
    /// A clean end of stream.
    End,
    /// The stream ended inside a frame, with this many bytes of it.
    Truncated(usize),
    /// A bad frame.
    Error(String),
}

fn check<T: Serialize + DeserializeOwned + Debug>(stream: &[u8], chunk_sizes: &[u8]) {
    // The model: decode_frame over the whole stream.
    let mut expected = Vec::new();
    let mut pos = 0;
    loop {
        assert!(expected.len() <= FRAMES_PER_INPUT_MAX);
        match decode_frame::<T>(&stream[pos..]) {
            Ok(Some((value, used))) => {
                assert!(used > FRAME_HEADER_BYTES && used <= stream.len() - pos, "frame size {used} at {pos}");
                // Any strict prefix of a complete frame is incomplete.
                for cut in [0, FRAME_HEADER_BYTES - 1, FRAME_HEADER_BYTES, used - 1] {
                    let got = decode_frame::<T>(&stream[pos..pos + cut]);
                    assert!(matches!(got, Ok(None)), "prefix of {cut} of a {used}-byte frame gave {got:?}");
                }
                // Re-encoding gives a frame of the same value.
                let mut again = Vec::new();
                encode_frame(&value, &mut again).expect("a decoded value encodes");
                let (round, again_used) =
                    decode_frame::<T>(&again).expect("re-encoded frame decodes").expect("complete");
                assert_eq!(again_used, again.len());
                assert_eq!(format!("{round:?}"), format!("{value:?}"), "round trip changed the value");
                expected.push(Step::Frame(format!("{value:?}"), used));
                pos += used;
            }
            Ok(None) if pos == stream.len() => {
                expected.push(Step::End);
                break;
            }
            Ok(None) => {
                expected.push(Step::Truncated(stream.len() - pos));
                break;
            }
            Err(e) => {
                expected.push(Step::Error(e.to_string()));
                break;
            }
        }
    }

    // The reader, over the chunked stream.
    let mut reader = FrameReader::new(ChunkedReader::new(stream, chunk_sizes));
    let mut got = Vec::new();
    loop {
        assert!(got.len() <= FRAMES_PER_INPUT_MAX);
        match poll_ready(reader.next_sized::<T>()) {
            Ok(Some((value, used))) => got.push(Step::Frame(format!("{value:?}"), used)),
            Ok(None) => {
                got.push(Step::End);
                break;
            }
            Err(FrameError::TruncatedAtEof { got: have, needed }) => {
                assert!(have < needed, "truncated with {have} of {needed} bytes");
                got.push(Step::Truncated(have));
                break;
            }
            Err(e) => {
                got.push(Step::Error(e.to_string()));
                break;
            }
        }
    }
    assert_eq!(got, expected, "FrameReader disagrees with decode_frame (chunks {chunk_sizes:?})");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (chunk_sizes, stream) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&[][..], rest),
    };
    let framed;
    let stream = if selector & 0x80 != 0 {
        let mut out = Vec::with_capacity(stream.len() + 64);
        for body in split_blobs(stream) {
            frame_body(body, &mut out);
        }
        framed = out;
        &framed[..]
    } else {
        stream
    };
    match selector & 0x7f {
        0 => check::<(u64, JmRequest)>(stream, chunk_sizes),
        1 => check::<(u64, JmResponse)>(stream, chunk_sizes),
        2 => check::<(u64, TmRequest)>(stream, chunk_sizes),
        3 => check::<(u64, TmResponse)>(stream, chunk_sizes),
        4 => check::<(u64, BrokerRequest)>(stream, chunk_sizes),
        5 => check::<(u64, WireResponse)>(stream, chunk_sizes),
        6 => check::<(u64, BlobRequest)>(stream, chunk_sizes),
        7 => check::<(u64, BlobResponse)>(stream, chunk_sizes),
        8 => check::<ChannelHello>(stream, chunk_sizes),
        9 => check::<HelloReply>(stream, chunk_sizes),
        10 => check::<ChannelElement>(stream, chunk_sizes),
        _ => {}
    }
});
