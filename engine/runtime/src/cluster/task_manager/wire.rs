//! What travels on a data channel between two subtasks, and the handshake that opens it (Flink's
//! `PartitionRequest` + the network stack's `BufferOrEvent`).
//!
//! A producer subtask connects to the consumer TM's `TM_DATA_PORT`, writes one frame with a
//! [`ChannelHello`] and waits for one [`HelloReply`] frame. Both frames are read with
//! [`read_frame`], which takes exactly one frame off the stream, so nothing that follows is lost
//! when the stream is handed to [`DataSender`] / [`DataReceiver`]. Then the producer sends
//! [`ChannelElement`]s, framed and credit-controlled by the channel.

use crate::cluster::protocol::ChannelHello;
use crate::transport::channel::{ChannelConfig, ChannelError, DataReceiver, DataSender};
use crate::transport::frame::{encode_frame, read_frame, FrameError};
use floe_core::element::{Barrier, StreamElement, Watermark};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One element of a data channel. Records travel as one encoded batch (`EdgeFns::encode`), so a
/// channel's frames never need the record type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelElement {
    /// An encoded batch of records of the channel's edge type.
    Records(#[serde(with = "floe_core::codec::byte_buf")] Vec<u8>),
    /// Event-time progress.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The producer has finished; nothing follows.
    EndOfPartition,
    /// No record or watermark follows; barriers may, then [`ChannelElement::EndOfPartition`]
    /// (FLIP-147's `EndOfData`: the final checkpoint's barrier comes after it).
    // Declared last: the encodings of the older variants stay as they were.
    EndOfData,
}

impl ChannelElement {
    /// The aligner's view of this element (a record batch is one opaque "record") and the
    /// bytes it charges against the alignment buffer.
    pub fn into_stream_element(self) -> (StreamElement<Vec<u8>>, usize) {
        match self {
            ChannelElement::Records(bytes) => {
                let size = bytes.len();
                (StreamElement::Records(vec![bytes]), size)
            }
            ChannelElement::Watermark(w) => (StreamElement::Watermark(w), 0),
            ChannelElement::Barrier(b) => (StreamElement::Barrier(b), 0),
            ChannelElement::EndOfData => (StreamElement::EndOfData, 0),
            ChannelElement::EndOfPartition => (StreamElement::EndOfPartition, 0),
        }
    }
}

/// The consumer TM's answer to a [`ChannelHello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The channel is attached to the consumer subtask: send.
    Accepted,
    /// Refused (another attempt, an unknown channel, the consumer never appeared).
    Refused(String),
}

/// The channel settings of every data channel.
pub fn channel_config() -> ChannelConfig {
    ChannelConfig {
        credit_window_bytes: CREDIT_WINDOW_BYTES,
        auto_grant: true,
        flush_bytes: FLUSH_BYTES,
        heartbeat_interval_ms: CHANNEL_HEARTBEAT_INTERVAL_MS,
        read_timeout_ms: CHANNEL_READ_TIMEOUT_MS,
    }
}

/// A consumer grants each channel this many bytes in flight (also the largest batch frame).
pub const CREDIT_WINDOW_BYTES: u64 = 4 << 20;
/// A producer flushes a channel once this many bytes are buffered (and whenever it goes idle).
pub const FLUSH_BYTES: usize = 64 << 10;
/// Idle channels send a heartbeat this often.
pub const CHANNEL_HEARTBEAT_INTERVAL_MS: u64 = 200;
/// A channel that hears nothing for this long fails (a partitioned or dead peer).
pub const CHANNEL_READ_TIMEOUT_MS: u64 = 3_000;
/// The handshake (hello, reply) must complete within this time.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// A producer tries to connect this many times before its subtask fails.
pub const CONNECT_ATTEMPTS_MAX: u32 = 100;
/// Pause between connection attempts.
pub const CONNECT_BACKOFF_MS: u64 = 50;

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Connecting, reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A handshake frame was bad.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the stream during the handshake.
    #[error("closed during the handshake")]
    Closed,
    /// The handshake took longer than [`HELLO_TIMEOUT_MS`].
    #[error("handshake timed out")]
    Timeout,
    /// The consumer refused the channel.
    #[error("refused: {0}")]
    Refused(String),
}

/// Writes one frame and flushes it.
pub async fn write_one<T: Serialize>(stream: &mut TcpStream, msg: &T) -> Result<(), HandshakeError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads exactly one frame, within [`HELLO_TIMEOUT_MS`].
pub async fn read_one<T: serde::de::DeserializeOwned>(stream: &mut TcpStream) -> Result<T, HandshakeError> {
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), read_frame::<_, T>(stream, &mut buf)).await {
        Err(_) => Err(HandshakeError::Timeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(HandshakeError::Closed),
        Ok(Ok(Some(v))) => Ok(v),
    }
}

/// Opens the producer's end of a channel: connect (retrying), hello, wait for the reply.
pub async fn connect_channel(addr: SocketAddr, hello: &ChannelHello) -> Result<DataSender<ChannelElement>, HandshakeError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = async {
            let mut stream = TcpStream::connect(addr).await?;
            write_one(&mut stream, hello).await?;
            match read_one::<HelloReply>(&mut stream).await? {
                HelloReply::Accepted => Ok(stream),
                HelloReply::Refused(why) => Err(HandshakeError::Refused(why)),
            }
        }
        .await;
        match result {
            Ok(stream) => return Ok(DataSender::new(stream, channel_config())),
            Err(e @ HandshakeError::Refused(_)) => return Err(e),
            Err(e) if attempts >= CONNECT_ATTEMPTS_MAX => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, %addr, attempts, "data channel connect retry");
                tokio::time::sleep(Duration::from_millis(CONNECT_BACKOFF_MS)).await;
            }
        }
    }
}

/// The consumer's end of an accepted channel.
pub fn accept_channel(stream: TcpStream) -> DataReceiver<ChannelElement> {
    DataReceiver::new(stream, channel_config())
}

/// A channel failure as a subtask failure reason.
pub fn channel_failure(what: &str, e: &ChannelError) -> String {
    format!("data channel {what}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_core::codec;
    use floe_core::ids::CheckpointId;

    #[test]
    fn every_channel_element_round_trips_and_maps_onto_the_aligner_view() {
        let barrier = Barrier { checkpoint_id: CheckpointId(3), triggered_at_ms: 7, is_final: false };
        let cases = [
            (ChannelElement::Records(vec![1, 2, 3]), StreamElement::Records(vec![vec![1, 2, 3]]), 3),
            (ChannelElement::Watermark(Watermark(5)), StreamElement::Watermark(Watermark(5)), 0),
            (ChannelElement::Barrier(barrier), StreamElement::Barrier(barrier), 0),
            (ChannelElement::EndOfData, StreamElement::EndOfData, 0),
            (ChannelElement::EndOfPartition, StreamElement::EndOfPartition, 0),
        ];
        for (element, want, size) in cases {
            let back: ChannelElement = codec::from_bytes(&codec::to_bytes(&element).unwrap()).unwrap();
            assert_eq!(back, element);
            assert_eq!(element.into_stream_element(), (want, size));
        }
    }

    #[test]
    fn the_channel_settings_are_valid_and_a_timeout_outlasts_several_heartbeats() {
        let c = channel_config();
        assert!(c.read_timeout_ms >= 5 * c.heartbeat_interval_ms);
        assert!(c.flush_bytes as u64 <= c.credit_window_bytes);
    }
}
