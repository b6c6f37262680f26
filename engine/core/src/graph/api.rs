//! The typed job API, in the style of Flink's DataStream API.
//!
//! ```
//! use floe_core::graph::StreamEnvironment;
//! use floe_core::operator::keyed_process::RunningCount;
//! # use floe_core::operator::{Operator, OperatorContext, OperatorResult};
//! # struct Lines; impl Operator for Lines { type In = (); type Out = String;
//! #   fn process_batch(&mut self, _: &mut OperatorContext<'_>, _: Vec<()>, _: &mut Vec<String>) -> OperatorResult { Ok(()) } }
//! # struct Out; impl Operator for Out { type In = (String, u64); type Out = ();
//! #   fn process_batch(&mut self, _: &mut OperatorContext<'_>, _: Vec<(String, u64)>, _: &mut Vec<()>) -> OperatorResult { Ok(()) } }
//! let env = StreamEnvironment::new("word-count");
//! env.set_parallelism(2);
//! env.add_source("lines", || Lines)
//!     .flat_map("split", |line: String, out: &mut Vec<String>| {
//!         out.extend(line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase))
//!     })
//!     .key_by("by-word", |w: &String| w.clone())
//!     .process("count", RunningCount::default())
//!     .add_sink("out", || Out);
//! let job = env.build().unwrap();
//! let exec = job.expand();
//! assert_eq!(exec.vertices.len(), 2); // source+split chained, count+out chained
//! ```
//!
//! Every method adds a node to the environment's graph and returns a handle to it; parallelism
//! and max parallelism default to the environment's and can be set per operator with
//! [`DataStream::set_parallelism`] / [`DataStream::set_max_parallelism`]. [`StreamEnvironment::build`]
//! validates the graph (see [`GraphError`]).

use super::erased::{EdgeFns, Erased, OperatorFactory};
use super::logical::{GraphError, JobGraph, LogicalEdge, LogicalNode, NodeRole};
use crate::ids::OperatorId;
use crate::key_groups::{default_max_parallelism, Key, KeySelector, RecordIsKey};
use crate::operator::filter::FilterOperator;
use crate::operator::flat_map::FlatMapOperator;
use crate::operator::keyed_process::{KeyedProcessFunction, KeyedProcessOperator};
use crate::operator::map::MapOperator;
use crate::operator::{Data, Operator};
use petgraph::graph::{DiGraph, NodeIndex};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

struct Builder {
    name: String,
    parallelism: u32,
    max_parallelism: Option<u32>,
    graph: DiGraph<LogicalNode, LogicalEdge>,
}

/// Where a job is built (Flink's `StreamExecutionEnvironment`).
#[derive(Clone)]
pub struct StreamEnvironment {
    inner: Rc<RefCell<Builder>>,
}

impl StreamEnvironment {
    /// A new, empty job with default parallelism 1.
    pub fn new(job_name: impl Into<String>) -> Self {
        StreamEnvironment { inner: Rc::new(RefCell::new(Builder { name: job_name.into(), parallelism: 1, max_parallelism: None, graph: DiGraph::new() })) }
    }

    /// The parallelism of operators added from now on.
    pub fn set_parallelism(&self, parallelism: u32) -> &Self {
        self.inner.borrow_mut().parallelism = parallelism;
        self
    }

    /// The max parallelism of operators added from now on (default: Flink's
    /// [`default_max_parallelism`] of each operator's parallelism).
    pub fn set_max_parallelism(&self, max_parallelism: u32) -> &Self {
        self.inner.borrow_mut().max_parallelism = Some(max_parallelism);
        self
    }

    /// Adds a source: an operator with no input (`In = ()`), made fresh for every subtask.
    pub fn add_source<O, F>(&self, name: impl Into<String>, make: F) -> DataStream<O::Out>
    where
        O: Operator<In = ()>,
        F: Fn() -> O + Send + Sync + 'static,
    {
        let node = self.add_node(name.into(), NodeRole::Source, Some(factory(make)), Some(EdgeFns::unkeyed::<O::Out>()), None);
        DataStream::new(self.clone(), node)
    }

    /// Connects two operators by name (low-level; the typed API does this itself). The graph is
    /// validated by [`build`](Self::build), so a cycle made here is reported there.
    pub fn connect(&self, from: &str, to: &str) -> Result<(), GraphError> {
        let mut b = self.inner.borrow_mut();
        let find = |g: &DiGraph<LogicalNode, LogicalEdge>, n: &str| g.node_indices().find(|&i| g[i].name == n).ok_or_else(|| GraphError::UnknownOperator { operator: n.to_string() });
        let (f, t) = (find(&b.graph, from)?, find(&b.graph, to)?);
        b.graph.add_edge(f, t, LogicalEdge);
        Ok(())
    }

    /// Validates the graph and returns it.
    pub fn build(&self) -> Result<JobGraph, GraphError> {
        let b = self.inner.borrow();
        JobGraph::validate(b.name.clone(), b.graph.clone())
    }

    fn add_node(&self, name: String, role: NodeRole, factory: Option<OperatorFactory>, output: Option<EdgeFns>, input: Option<NodeIndex>) -> NodeIndex {
        let mut b = self.inner.borrow_mut();
        let parallelism = b.parallelism;
        let max_parallelism = b.max_parallelism.unwrap_or_else(|| default_max_parallelism(parallelism));
        let id = OperatorId(b.graph.node_count() as u32);
        let node = b.graph.add_node(LogicalNode { id, name, role, parallelism, max_parallelism, factory, output });
        debug_assert_eq!(node.index() as u32, id.0);
        if let Some(input) = input {
            b.graph.add_edge(input, node, LogicalEdge);
        }
        node
    }
}

fn factory<O: Operator, F: Fn() -> O + Send + Sync + 'static>(make: F) -> OperatorFactory {
    Arc::new(move || Box::new(Erased(make())))
}

/// A stream of `T` records: the output of one operator.
pub struct DataStream<T> {
    env: StreamEnvironment,
    node: NodeIndex,
    _type: PhantomData<fn() -> T>,
}

impl<T: Data> DataStream<T> {
    fn new(env: StreamEnvironment, node: NodeIndex) -> Self {
        DataStream { env, node, _type: PhantomData }
    }

    /// The operator that produces this stream.
    pub fn id(&self) -> OperatorId {
        OperatorId(self.node.index() as u32)
    }

    /// Sets the producing operator's parallelism.
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        let mut b = self.env.inner.borrow_mut();
        let explicit_max = b.max_parallelism;
        let node = &mut b.graph[self.node];
        node.parallelism = parallelism;
        if explicit_max.is_none() {
            node.max_parallelism = default_max_parallelism(parallelism.max(1));
        }
        drop(b);
        self
    }

    /// Sets the producing operator's max parallelism (its number of key groups).
    pub fn set_max_parallelism(self, max_parallelism: u32) -> Self {
        self.env.inner.borrow_mut().graph[self.node].max_parallelism = max_parallelism;
        self
    }

    fn then<O: Operator<In = T>>(&self, name: String, role: NodeRole, op: impl Fn() -> O + Send + Sync + 'static) -> DataStream<O::Out> {
        let node = self.env.add_node(name, role, Some(factory(op)), Some(EdgeFns::unkeyed::<O::Out>()), Some(self.node));
        DataStream::new(self.env.clone(), node)
    }

    /// One record in, one out.
    pub fn map<O: Data, F: Fn(T) -> O + Clone + Send + Sync + 'static>(&self, name: impl Into<String>, f: F) -> DataStream<O> {
        self.then(name.into(), NodeRole::Transform, move || MapOperator::new(f.clone()))
    }

    /// One record in, any number out.
    pub fn flat_map<O: Data, F: Fn(T, &mut Vec<O>) + Clone + Send + Sync + 'static>(&self, name: impl Into<String>, f: F) -> DataStream<O> {
        self.then(name.into(), NodeRole::Transform, move || FlatMapOperator::new(f.clone()))
    }

    /// Keeps the records the predicate accepts.
    pub fn filter<F: Fn(&T) -> bool + Clone + Send + Sync + 'static>(&self, name: impl Into<String>, predicate: F) -> DataStream<T> {
        self.then(name.into(), NodeRole::Transform, move || FilterOperator::new(predicate.clone()))
    }

    /// Any operator of your own.
    pub fn transform<O: Operator<In = T>, F: Fn() -> O + Send + Sync + 'static>(&self, name: impl Into<String>, make: F) -> DataStream<O::Out> {
        self.then(name.into(), NodeRole::Transform, make)
    }

    /// Partitions by key: records with one key go to one subtask of the next (keyed) operator,
    /// the one owning the key's key group.
    pub fn key_by<K: Key, S: Fn(&T) -> K + Clone + Send + Sync + 'static>(&self, name: impl Into<String>, selector: S) -> KeyedStream<K, T, S> {
        self.key_by_selector(name, selector)
    }

    /// Partitions by any [`KeySelector`] (see [`key_by`](Self::key_by)).
    pub fn key_by_selector<K: Key, S: KeySelector<T, K>>(&self, name: impl Into<String>, selector: S) -> KeyedStream<K, T, S> {
        let fns = EdgeFns::keyed_by::<T, K, S>(selector.clone());
        let node = self.env.add_node(name.into(), NodeRole::KeyBy, None, Some(fns), Some(self.node));
        KeyedStream { env: self.env.clone(), node, selector, _types: PhantomData }
    }

    /// Partitions by the records themselves (each record is its own key): the same partitioning
    /// and state as `key_by(|x| x.clone())`, without a copy of every record to get its key.
    pub fn key_by_record(&self, name: impl Into<String>) -> KeyedStream<T, T, RecordIsKey>
    where
        T: Key,
    {
        self.key_by_selector(name, RecordIsKey)
    }

    /// Round robin to every subtask of the next operator.
    pub fn rebalance(&self) -> DataStream<T> {
        let name = format!("rebalance-{}", self.env.inner.borrow().graph.node_count());
        let node = self.env.add_node(name, NodeRole::Rebalance, None, Some(EdgeFns::unkeyed::<T>()), Some(self.node));
        DataStream::new(self.env.clone(), node)
    }

    /// Every record to every subtask of the next operator.
    pub fn broadcast(&self) -> DataStream<T> {
        let name = format!("broadcast-{}", self.env.inner.borrow().graph.node_count());
        let node = self.env.add_node(name, NodeRole::Broadcast, None, Some(EdgeFns::unkeyed::<T>()), Some(self.node));
        DataStream::new(self.env.clone(), node)
    }

    /// Ends the stream in a sink: an operator with `Out = ()`.
    pub fn add_sink<O: Operator<In = T, Out = ()>, F: Fn() -> O + Send + Sync + 'static>(&self, name: impl Into<String>, make: F) -> DataStream<()> {
        let node = self.env.add_node(name.into(), NodeRole::Sink, Some(factory(make)), None, Some(self.node));
        DataStream::new(self.env.clone(), node)
    }
}

/// A stream partitioned by key (Flink's `KeyedStream`): only keyed operators may follow.
pub struct KeyedStream<K, T, S> {
    env: StreamEnvironment,
    node: NodeIndex,
    selector: S,
    _types: PhantomData<fn() -> (K, T)>,
}

impl<K: Key, T: Data, S: KeySelector<T, K>> KeyedStream<K, T, S> {
    /// Runs a keyed process function over the stream.
    pub fn process<F>(&self, name: impl Into<String>, function: F) -> DataStream<F::Out>
    where
        F: KeyedProcessFunction<Key = K, In = T> + Clone + Sync,
    {
        let selector = self.selector.clone();
        let make = move || KeyedProcessOperator::new(function.clone(), selector.clone());
        let node = self.env.add_node(name.into(), NodeRole::Keyed, Some(factory(make)), Some(EdgeFns::unkeyed::<F::Out>()), Some(self.node));
        DataStream::new(self.env.clone(), node)
    }
}
