//! The job graph: a typed DataStream API in Flink's style, the logical DAG it builds (petgraph),
//! its validation, and its expansion into an execution graph of subtasks and channels.
//!
//! ```text
//! source → map / flat_map / filter → key_by → keyed process → sink
//! ```
//!
//! * [`api`]: `StreamEnvironment`, `DataStream<T>`, `KeyedStream<K, T>` — typed, checked by the compiler.
//! * [`logical`]: the [`JobGraph`]: operators (with parallelism and max parallelism) and edges
//!   (with partitioners), validated with typed errors that name the operator.
//! * [`execution`]: the [`ExecutionGraph`]: operators chained where Flink would chain them
//!   (forward edge, equal parallelism, one-to-one), every chain expanded into subtasks, and every
//!   edge into channels with their partitioner (forward, hash by key group, rebalance, broadcast).
//! * [`erased`]: the object-safe operator and edge interfaces a host drives.

pub mod api;
pub mod erased;
pub mod execution;
pub mod logical;

pub use api::{DataStream, KeyedStream, StreamEnvironment};
pub use erased::{AnyBatch, DynOperator, EdgeFns, OperatorFactory, Partitioner, RouteState};
pub use execution::{Channel, ExecutionGraph, JobEdge, JobVertex};
pub use logical::{GraphError, JobGraph, LogicalEdge, LogicalNode, NodeRole};

#[cfg(test)]
mod tests;
