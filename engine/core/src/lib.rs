//! # floe-core — the pure engine
//!
//! floe's stream processing engine as synchronous state machines, following Apache Flink's
//! fault-tolerance design (asynchronous barrier snapshots, aligned barriers, a checkpoint
//! coordinator, replayable sources and two-phase-commit sinks).
//!
//! Nothing in this crate awaits, reads a clock, draws a random number, spawns a thread or does
//! I/O. Inputs — including the current time `now` — come in; commands go out; the hosts in
//! `floe-runtime` carry them out. That is what lets the simulator run the whole engine under one
//! seed, and it is enforced by this crate's dependency list.
//!
//! | module | what |
//! |---|---|
//! | [`ids`] | identifiers as newtypes |
//! | [`element`] | the closed stream-element enum: records, watermark, barrier, end of partition |
//! | [`codec`] | bincode 2 bodies and the checked (versioned, crc32) envelope |
//! | [`key_groups`] | Flink-compatible key groups and ranges |
//! | [`state`] | the heap keyed state backend, timers, operator state, snapshots |
//! | [`operator`] | the operator trait and the built-ins (map, filter, keyed process, source, 2PC sink) |
//! | [`graph`] | the typed DataStream-style job API, the logical DAG and the execution graph |
//! | [`aligner`] | barrier alignment per input gate |
//! | [`coordinator`] | the checkpoint coordinator |
//! | [`failover`] | heartbeat failure detection and restart strategies |

pub mod aligner;
pub mod codec;
pub mod coordinator;
pub mod element;
pub mod failover;
pub mod graph;
pub mod ids;
pub mod key_groups;
pub mod operator;
pub mod records;
pub mod state;
