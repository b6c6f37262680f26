//! # The broker — a Kafka-like external system
//!
//! Topics with partitions; per-partition append-only logs with offsets; idempotent producers
//! (producer id + per-partition sequence numbers); transactions with transactional ids, epochs
//! and fencing, floe's explicit prepare (Flink's pre-commit), commit, abort and a transaction
//! timeout; read-committed fetches up to the last stable offset. Everything durable goes through
//! [`crate::disk::Disk`], and an append is acknowledged only after it is fsynced.
//!
//! It follows Apache Kafka's design (`ReplicaManager`/`Log` for the logs,
//! `ProducerStateManager` for idempotence, `TransactionCoordinator` and control records for
//! transactions) at the scale a simulation needs: one broker, no replication.
//!
//! | module | what |
//! |---|---|
//! | [`protocol`] | requests, responses, records and the typed [`BrokerError`] |
//! | [`log`] | on-disk entries, framing (sealed envelopes) and torn-tail scanning |
//! | [`state`] | the pure state machine: logs in memory, producer state, transaction coordinator |
//! | [`store`] | the durable broker: recovery and group commit over a `Disk` |
//! | [`server`] | [`run_broker_server`]: the broker as an RPC service, one task owning the state |
//! | [`client`] | [`BrokerClient`] (typed requests) and [`Producer`] (idempotent/transactional, retrying) |

pub mod client;
pub mod log;
pub mod protocol;
pub mod server;
pub mod state;
pub mod store;

pub use client::{BrokerClient, Producer, RetryPolicy};
pub use server::{run_broker_server, serve_on};

pub use protocol::{
    BrokerError, BrokerRequest, BrokerResponse, FetchResult, InitToken, IsolationLevel, OffsetRuns, PackedRecords, PrefixFence, ProducerEpoch, ProducerId, ProducerStamp,
    Record, TxnEndReason, TxnListing, TxnOutcome, TxnState,
};
pub use state::{BrokerConfig, BrokerState, Staged};
pub use store::{Broker, RecoveryReport};

#[cfg(test)]
pub(crate) mod mem_disk;
