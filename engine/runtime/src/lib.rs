//! # floe-runtime — the hosts
//!
//! The only engine code that awaits or does I/O. Written against madsim-tokio: under
//! `--cfg madsim` every node is a simulated madsim node (simulated clock, network and disks);
//! without it, the same code runs on real tokio over real TCP and real files.
//!
//! | module | what |
//! |---|---|
//! | [`disk`] | the `Disk` trait; the simulated disk (loses unsynced bytes on a crash) and the real one |
//! | [`transport`] | checksummed frames over TCP, credit-based flow control, heartbeats, RPC |
//! | [`broker`] | a Kafka-like broker: partitioned logs, idempotent producers, transactions |
//! | [`blob`] | an S3-like blob store for checkpoint data and metadata |
//! | [`cluster`] | the job manager and task managers: deploy, checkpoint, commit, fail over |

pub mod blob;
pub mod broker;
pub mod cluster;
pub mod disk;
pub mod transport;
