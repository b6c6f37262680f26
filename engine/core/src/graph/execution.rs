//! The execution graph (Flink's `JobGraph` + `ExecutionGraph` in one): operators chained into
//! job vertices, each vertex expanded into subtasks, each edge into channels.
//!
//! **Chaining** (Flink's `StreamingJobGraphGenerator.isChainable`): an operator joins its
//! producer's chain when the edge between them is forward (no partitioning step, equal
//! parallelism), the producer has exactly that one consumer, and the consumer has exactly that
//! one input. A chain runs in one task: its records never cross a channel.
//!
//! **Channels**: a forward edge connects producer subtask `i` to consumer subtask `i`; every
//! other partitioner connects every producer subtask to every consumer subtask. Within a
//! consumer subtask's input gate, channels are numbered by (edge, producer subtask); within a
//! producer subtask's writer for an edge, by consumer subtask.

use super::erased::{EdgeFns, OperatorFactory, Partitioner};
use super::logical::{JobGraph, NodeRole};
use crate::ids::{ChannelIndex, OperatorId, SubtaskId};
use petgraph::graph::NodeIndex;
use petgraph::Direction;

/// A chain of operators run as one task, `parallelism` times.
#[derive(Clone, Debug)]
pub struct JobVertex {
    /// The vertex's id: the id of the chain's head operator.
    pub id: OperatorId,
    /// The chain's name: its operators' names joined by " -> ".
    pub name: String,
    /// The chained operators, head first.
    pub operators: Vec<OperatorId>,
    /// Subtasks.
    pub parallelism: u32,
    /// Key groups of the head (relevant when the head is keyed).
    pub max_parallelism: u32,
    /// The head is a source.
    pub is_source: bool,
    /// The head is keyed: each subtask owns a key-group range and keeps keyed state.
    pub is_keyed: bool,
    /// The chain ends in a sink.
    pub is_sink: bool,
}

/// Records flowing from one vertex to another.
#[derive(Clone, Debug)]
pub struct JobEdge {
    /// Index of this edge in [`ExecutionGraph::edges`].
    pub index: usize,
    /// Producer vertex.
    pub from: OperatorId,
    /// Consumer vertex.
    pub to: OperatorId,
    /// How records are distributed.
    pub partitioner: Partitioner,
    /// How the records are encoded and routed.
    pub fns: EdgeFns,
}

/// One channel: a producer subtask's output to a consumer subtask's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel {
    /// The edge this channel belongs to.
    pub edge: usize,
    /// The producing subtask.
    pub producer: SubtaskId,
    /// The consuming subtask.
    pub consumer: SubtaskId,
    /// The channel's index in the producer's writer for this edge.
    pub output_index: ChannelIndex,
    /// The channel's index in the consumer's input gate.
    pub input_index: ChannelIndex,
}

/// The expanded job.
#[derive(Clone)]
pub struct ExecutionGraph {
    /// The job's name.
    pub job_name: String,
    /// Chains, in topological order of their heads.
    pub vertices: Vec<JobVertex>,
    /// Edges between vertices.
    pub edges: Vec<JobEdge>,
    /// Every channel, sorted by (edge, producer, consumer).
    pub channels: Vec<Channel>,
    factories: Vec<(OperatorId, OperatorFactory)>,
}

impl JobGraph {
    /// Chains operators and expands the graph into subtasks and channels.
    pub fn expand(&self) -> ExecutionGraph {
        let g = &self.graph;
        let order = petgraph::algo::toposort(g, None).expect("a validated graph is acyclic");
        // The real (non-virtual) producer of a node's input, and the partitioning step on the way.
        let input_of = |n: NodeIndex| -> Option<(NodeIndex, Option<NodeIndex>)> {
            let p = g.neighbors_directed(n, Direction::Incoming).next()?;
            if g[p].role.is_virtual() {
                let real = g.neighbors_directed(p, Direction::Incoming).next().expect("a validated partitioning step has an input");
                Some((real, Some(p)))
            } else {
                Some((p, None))
            }
        };
        let chainable = |n: NodeIndex| -> Option<NodeIndex> {
            let (p, via) = input_of(n)?;
            let single_consumer = g.neighbors_directed(p, Direction::Outgoing).count() == 1;
            (via.is_none() && single_consumer && g[p].parallelism == g[n].parallelism && g[n].role != NodeRole::Source).then_some(p)
        };
        let mut head_of = vec![NodeIndex::end(); g.node_count()];
        let mut vertices: Vec<JobVertex> = Vec::new();
        for &n in &order {
            if g[n].role.is_virtual() {
                continue;
            }
            if let Some(p) = chainable(n) {
                let head = head_of[p.index()];
                head_of[n.index()] = head;
                let v = vertices.iter_mut().find(|v| v.id.0 as usize == head.index()).expect("the head's vertex exists");
                v.operators.push(g[n].id);
                v.name = format!("{} -> {}", v.name, g[n].name);
                v.is_sink |= g[n].role == NodeRole::Sink;
            } else {
                head_of[n.index()] = n;
                let node = &g[n];
                vertices.push(JobVertex {
                    id: node.id,
                    name: node.name.clone(),
                    operators: vec![node.id],
                    parallelism: node.parallelism,
                    max_parallelism: node.max_parallelism,
                    is_source: node.role == NodeRole::Source,
                    is_keyed: node.role == NodeRole::Keyed,
                    is_sink: node.role == NodeRole::Sink,
                });
            }
        }
        let mut edges = Vec::new();
        for &n in &order {
            if g[n].role.is_virtual() || head_of[n.index()] != n {
                continue;
            }
            let Some((p, via)) = input_of(n) else { continue };
            let partitioner = match via.map(|v| g[v].role) {
                Some(NodeRole::KeyBy) => Partitioner::Hash { max_parallelism: g[n].max_parallelism },
                Some(NodeRole::Broadcast) => Partitioner::Broadcast,
                Some(NodeRole::Rebalance) => Partitioner::Rebalance,
                _ if g[p].parallelism == g[n].parallelism => Partitioner::Forward,
                _ => Partitioner::Rebalance,
            };
            let fns = g[via.unwrap_or(p)].output.clone().expect("every producer has output functions");
            edges.push(JobEdge { index: edges.len(), from: g[head_of[p.index()]].id, to: g[n].id, partitioner, fns });
        }
        let vertex = |id: OperatorId| vertices.iter().find(|v| v.id == id).expect("edge ends are vertices");
        let mut channels = Vec::new();
        let mut next_input: std::collections::BTreeMap<SubtaskId, u32> = std::collections::BTreeMap::new();
        for e in &edges {
            let (from, to) = (vertex(e.from), vertex(e.to));
            for i in 0..from.parallelism {
                let targets: Vec<u32> = if e.partitioner == Partitioner::Forward { vec![i] } else { (0..to.parallelism).collect() };
                for (out_idx, j) in targets.into_iter().enumerate() {
                    let consumer = SubtaskId::new(to.id, j);
                    let slot = next_input.entry(consumer).or_insert(0);
                    channels.push(Channel { edge: e.index, producer: SubtaskId::new(from.id, i), consumer, output_index: ChannelIndex(out_idx as u32), input_index: ChannelIndex(*slot) });
                    *slot += 1;
                }
            }
        }
        // Edges, then producers, are visited in order, so each gate is numbered by (edge, producer).
        channels.sort();
        let factories = g.node_weights().filter_map(|n| n.factory.clone().map(|f| (n.id, f))).collect();
        ExecutionGraph { job_name: self.name.clone(), vertices, edges, channels, factories }
    }
}

impl std::fmt::Debug for ExecutionGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionGraph")
            .field("job_name", &self.job_name)
            .field("vertices", &self.vertices)
            .field("edges", &self.edges)
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl ExecutionGraph {
    /// The vertex with this id.
    pub fn vertex(&self, id: OperatorId) -> Option<&JobVertex> {
        self.vertices.iter().find(|v| v.id == id)
    }

    /// Every subtask, vertex by vertex.
    pub fn subtasks(&self) -> Vec<SubtaskId> {
        self.vertices.iter().flat_map(|v| (0..v.parallelism).map(move |i| SubtaskId::new(v.id, i))).collect()
    }

    /// The source subtasks (those the checkpoint coordinator triggers).
    pub fn source_subtasks(&self) -> Vec<SubtaskId> {
        self.vertices.iter().filter(|v| v.is_source).flat_map(|v| (0..v.parallelism).map(move |i| SubtaskId::new(v.id, i))).collect()
    }

    /// A subtask's input channels, in input-gate order.
    pub fn inputs_of(&self, subtask: SubtaskId) -> Vec<Channel> {
        let mut out: Vec<Channel> = self.channels.iter().filter(|c| c.consumer == subtask).copied().collect();
        out.sort_by_key(|c| c.input_index);
        out
    }

    /// A subtask's output channels for one edge, in writer order.
    pub fn outputs_of(&self, subtask: SubtaskId, edge: usize) -> Vec<Channel> {
        let mut out: Vec<Channel> = self.channels.iter().filter(|c| c.producer == subtask && c.edge == edge).copied().collect();
        out.sort_by_key(|c| c.output_index);
        out
    }

    /// The edges leaving a vertex.
    pub fn out_edges(&self, vertex: OperatorId) -> Vec<&JobEdge> {
        self.edges.iter().filter(|e| e.from == vertex).collect()
    }

    /// The edges entering a vertex.
    pub fn in_edges(&self, vertex: OperatorId) -> Vec<&JobEdge> {
        self.edges.iter().filter(|e| e.to == vertex).collect()
    }

    /// Fresh operator instances for one subtask of a vertex, head first.
    pub fn instantiate(&self, vertex: OperatorId) -> Vec<(OperatorId, Box<dyn super::erased::DynOperator>)> {
        let v = self.vertex(vertex).expect("instantiate a vertex of this graph");
        v.operators
            .iter()
            .map(|op| {
                let f = &self.factories.iter().find(|(id, _)| id == op).expect("every chained operator has a factory").1;
                (*op, f())
            })
            .collect()
    }
}
