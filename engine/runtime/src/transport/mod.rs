//! floe's transport: checksummed frames over TCP streams, request/response RPC, and data
//! channels with credit-based flow control (after Flink's credit-based network stack,
//! `CreditBasedPartitionRequestClientHandler` / `PartitionRequestQueue`).
//!
//! Everything runs on madsim-tokio: simulated TCP under `--cfg madsim` (reliable and FIFO, but
//! a partition never breaks a connection, so liveness comes from timeouts and heartbeats; and
//! nothing is sent until `flush`, each flush being one simulated message), real TCP otherwise.
//!
//! | module | what |
//! |---|---|
//! | [`frame`] | length-prefixed, crc32-checked bincode frames, the cancel-safe [`frame::FrameReader`] |
//! | [`rpc`] | request/response with ids, pipelining, per-call timeouts, reconnect |
//! | [`channel`] | record-batch channels with credit-based flow control and heartbeats |

pub mod channel;
pub mod frame;
pub mod rpc;

pub use frame::{decode_frame, encode_frame, read_frame, FrameError, FrameReader, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
pub use channel::{ChannelConfig, ChannelError, DataReceiver, DataSender};
pub use rpc::{serve, RpcClient, RpcConfig, RpcError};
