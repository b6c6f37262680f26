//! The logical job graph (Flink's `StreamGraph`): a petgraph DAG of named operators and the
//! partitioning between them, and its validation.
//!
//! Partitioning steps (`key_by`, `rebalance`, `broadcast`) are virtual nodes here, as Flink's
//! `PartitionTransformation`s are: they carry a name for error messages and become the
//! partitioner of an edge when the graph is expanded.

use super::erased::{EdgeFns, OperatorFactory};
use crate::ids::OperatorId;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::fmt;

/// What a logical node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// Reads the outside world; no input.
    Source,
    /// A stateless or operator-state transformation (map, flat_map, filter...).
    Transform,
    /// An operator with keyed state; its input must come through a `key_by`.
    Keyed,
    /// Writes the outside world; no output.
    Sink,
    /// Virtual: hash-partitions by key.
    KeyBy,
    /// Virtual: round robin.
    Rebalance,
    /// Virtual: to every consumer subtask.
    Broadcast,
}

impl NodeRole {
    /// True for the partitioning steps that become edges.
    pub fn is_virtual(self) -> bool {
        matches!(self, NodeRole::KeyBy | NodeRole::Rebalance | NodeRole::Broadcast)
    }
}

/// One node of the logical graph.
#[derive(Clone)]
pub struct LogicalNode {
    /// The node's id (its index in the graph).
    pub id: OperatorId,
    /// The user's name; unique within the job.
    pub name: String,
    /// What it is.
    pub role: NodeRole,
    /// How many subtasks run it.
    pub parallelism: u32,
    /// How many key groups (and the bound on rescaling).
    pub max_parallelism: u32,
    /// Makes an instance per subtask (absent for virtual nodes).
    pub factory: Option<OperatorFactory>,
    /// How to move this node's output records (for a `key_by`, with its key selector).
    pub output: Option<EdgeFns>,
}

impl fmt::Debug for LogicalNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalNode")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("parallelism", &self.parallelism)
            .field("max_parallelism", &self.max_parallelism)
            .finish()
    }
}

/// An edge of the logical graph: records flow from source to target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogicalEdge;

/// Why a job graph is not runnable. Every variant names the operator at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// The graph has a cycle through this operator (iterations are not supported).
    #[error("cycle through operator '{operator}'")]
    Cycle {
        /// An operator on the cycle.
        operator: String,
    },
    /// An operator with parallelism 0.
    #[error("operator '{operator}' has parallelism 0")]
    ZeroParallelism {
        /// The operator.
        operator: String,
    },
    /// Parallelism above max parallelism: some subtask would own no key group.
    #[error("operator '{operator}' has parallelism {parallelism} above its max parallelism {max_parallelism}")]
    ParallelismAboveMax {
        /// The operator.
        operator: String,
        /// Its parallelism.
        parallelism: u32,
        /// Its max parallelism.
        max_parallelism: u32,
    },
    /// Max parallelism outside `[1, 32768]`.
    #[error("operator '{operator}' has max parallelism {max_parallelism} outside [1, 32768]")]
    BadMaxParallelism {
        /// The operator.
        operator: String,
        /// Its max parallelism.
        max_parallelism: u32,
    },
    /// A `key_by` with no keyed operator after it.
    #[error("key_by '{operator}' has no keyed operator after it")]
    DanglingKeyBy {
        /// The key_by.
        operator: String,
    },
    /// A `key_by` feeding an operator that does not use keyed state.
    #[error("key_by '{operator}' feeds '{consumer}', which is not a keyed operator")]
    KeyByIntoUnkeyed {
        /// The key_by.
        operator: String,
        /// Its consumer.
        consumer: String,
    },
    /// A keyed operator whose input does not come through a `key_by`.
    #[error("keyed operator '{operator}' has no key_by before it")]
    KeyedWithoutKeyBy {
        /// The keyed operator.
        operator: String,
    },
    /// A wrong number of inputs (sources take none; every other operator exactly one).
    #[error("operator '{operator}' has {inputs} inputs, expected {expected}")]
    InputCount {
        /// The operator.
        operator: String,
        /// Inputs it has.
        inputs: usize,
        /// Inputs it must have.
        expected: usize,
    },
    /// A sink with outputs.
    #[error("sink '{operator}' has outputs")]
    SinkWithOutput {
        /// The sink.
        operator: String,
    },
    /// Two operators with one name.
    #[error("two operators are named '{operator}'")]
    DuplicateName {
        /// The name.
        operator: String,
    },
    /// No source.
    #[error("the job has no source")]
    NoSource,
    /// No sink.
    #[error("the job has no sink")]
    NoSink,
    /// An edge names an operator that does not exist.
    #[error("no operator named '{operator}'")]
    UnknownOperator {
        /// The name.
        operator: String,
    },
}

/// A validated logical job graph.
#[derive(Clone, Debug)]
pub struct JobGraph {
    /// The job's name.
    pub name: String,
    pub(crate) graph: DiGraph<LogicalNode, LogicalEdge>,
}

impl JobGraph {
    /// Validates a raw graph (the builder calls this; see [`GraphError`] for what is checked).
    pub fn validate(name: String, graph: DiGraph<LogicalNode, LogicalEdge>) -> Result<JobGraph, GraphError> {
        let name_of = |i: NodeIndex| graph[i].name.clone();
        let mut names = std::collections::BTreeSet::new();
        for i in graph.node_indices() {
            if !names.insert(graph[i].name.as_str()) {
                return Err(GraphError::DuplicateName { operator: name_of(i) });
            }
        }
        if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
            return Err(GraphError::Cycle { operator: name_of(cycle.node_id()) });
        }
        let mut sources = 0;
        let mut sinks = 0;
        for i in graph.node_indices() {
            let node = &graph[i];
            let inputs = graph.edges_directed(i, Direction::Incoming).count();
            let outputs = graph.edges_directed(i, Direction::Outgoing).count();
            if !node.role.is_virtual() {
                if node.parallelism == 0 {
                    return Err(GraphError::ZeroParallelism { operator: name_of(i) });
                }
                if node.max_parallelism == 0 || node.max_parallelism > crate::key_groups::UPPER_BOUND_MAX_PARALLELISM {
                    return Err(GraphError::BadMaxParallelism { operator: name_of(i), max_parallelism: node.max_parallelism });
                }
                if node.parallelism > node.max_parallelism {
                    return Err(GraphError::ParallelismAboveMax { operator: name_of(i), parallelism: node.parallelism, max_parallelism: node.max_parallelism });
                }
            }
            let expected_inputs = if node.role == NodeRole::Source { 0 } else { 1 };
            if inputs != expected_inputs {
                return Err(GraphError::InputCount { operator: name_of(i), inputs, expected: expected_inputs });
            }
            match node.role {
                NodeRole::Source => sources += 1,
                NodeRole::Sink => {
                    sinks += 1;
                    if outputs > 0 {
                        return Err(GraphError::SinkWithOutput { operator: name_of(i) });
                    }
                }
                NodeRole::KeyBy => {
                    let mut consumers = graph.edges_directed(i, Direction::Outgoing).map(|e| e.target()).peekable();
                    if consumers.peek().is_none() {
                        return Err(GraphError::DanglingKeyBy { operator: name_of(i) });
                    }
                    for c in consumers {
                        if graph[c].role != NodeRole::Keyed {
                            return Err(GraphError::KeyByIntoUnkeyed { operator: name_of(i), consumer: name_of(c) });
                        }
                    }
                }
                NodeRole::Keyed => {
                    let through_key_by = graph.edges_directed(i, Direction::Incoming).all(|e| graph[e.source()].role == NodeRole::KeyBy);
                    if !through_key_by {
                        return Err(GraphError::KeyedWithoutKeyBy { operator: name_of(i) });
                    }
                }
                NodeRole::Transform | NodeRole::Rebalance | NodeRole::Broadcast => {}
            }
        }
        if sources == 0 {
            return Err(GraphError::NoSource);
        }
        if sinks == 0 {
            return Err(GraphError::NoSink);
        }
        Ok(JobGraph { name, graph })
    }

    /// Every logical node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &LogicalNode> {
        self.graph.node_weights()
    }

    /// The node with this id.
    pub fn node(&self, id: OperatorId) -> Option<&LogicalNode> {
        self.graph.node_weight(NodeIndex::new(id.0 as usize))
    }

    /// The node with this name.
    pub fn node_by_name(&self, name: &str) -> Option<&LogicalNode> {
        self.graph.node_weights().find(|n| n.name == name)
    }

    /// The direct successors of a node.
    pub fn successors(&self, id: OperatorId) -> Vec<OperatorId> {
        let mut out: Vec<OperatorId> = self.graph.neighbors_directed(NodeIndex::new(id.0 as usize), Direction::Outgoing).map(|n| self.graph[n].id).collect();
        out.sort();
        out
    }

    /// The direct predecessors of a node.
    pub fn predecessors(&self, id: OperatorId) -> Vec<OperatorId> {
        let mut out: Vec<OperatorId> = self.graph.neighbors_directed(NodeIndex::new(id.0 as usize), Direction::Incoming).map(|n| self.graph[n].id).collect();
        out.sort();
        out
    }
}
