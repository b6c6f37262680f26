//! Tests of the job API, validation and expansion.

use super::*;
use crate::ids::{ChannelIndex, OperatorId, SubtaskId};
use crate::operator::keyed_process::RunningCount;
use crate::operator::{Operator, OperatorContext, OperatorResult};

#[derive(Clone)]
struct Lines;
impl Operator for Lines {
    type In = ();
    type Out = String;
    fn process_batch(&mut self, _: &mut OperatorContext<'_>, _: Vec<()>, _: &mut Vec<String>) -> OperatorResult {
        Ok(())
    }
}

struct Out<T>(std::marker::PhantomData<T>);
impl<T: crate::operator::Data> Operator for Out<T> {
    type In = T;
    type Out = ();
    fn process_batch(&mut self, _: &mut OperatorContext<'_>, _: Vec<T>, _: &mut Vec<()>) -> OperatorResult {
        Ok(())
    }
}
fn out<T: crate::operator::Data>() -> Out<T> {
    Out(std::marker::PhantomData)
}

fn split(line: String, out: &mut Vec<String>) {
    out.extend(line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase));
}

/// source(p_src) → split → key_by → count(p_count) → sink
fn word_count(p_src: u32, p_count: u32) -> StreamEnvironment {
    let env = StreamEnvironment::new("word-count");
    env.set_parallelism(p_src);
    let words = env.add_source("lines", || Lines).flat_map("split", split);
    env.set_parallelism(p_count);
    words.key_by("by-word", |w: &String| w.clone()).process("count", RunningCount::default()).add_sink("out", out::<(String, u64)>);
    env
}

#[test]
fn the_word_count_chains_into_two_vertices_joined_by_a_hash_edge() {
    let exec = word_count(2, 3).build().unwrap().expand();
    let names: Vec<&str> = exec.vertices.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["lines -> split", "count -> out"]);
    assert!(exec.vertices[0].is_source && !exec.vertices[0].is_keyed);
    assert!(exec.vertices[1].is_keyed && exec.vertices[1].is_sink);
    assert_eq!(exec.edges.len(), 1);
    assert_eq!(exec.edges[0].partitioner, Partitioner::Hash { max_parallelism: 128 });
    // all-to-all: 2 producers × 3 consumers
    assert_eq!(exec.channels.len(), 6);
    let count = exec.vertices[1].id;
    let gate: Vec<(SubtaskId, ChannelIndex)> = exec.inputs_of(SubtaskId::new(count, 2)).iter().map(|c| (c.producer, c.input_index)).collect();
    let src = exec.vertices[0].id;
    assert_eq!(gate, vec![(SubtaskId::new(src, 0), ChannelIndex(0)), (SubtaskId::new(src, 1), ChannelIndex(1))]);
    assert_eq!(exec.subtasks().len(), 5);
    assert_eq!(exec.source_subtasks(), vec![SubtaskId::new(src, 0), SubtaskId::new(src, 1)]);
    let writer: Vec<SubtaskId> = exec.outputs_of(SubtaskId::new(src, 1), 0).iter().map(|c| c.consumer).collect();
    assert_eq!(writer, (0..3).map(|j| SubtaskId::new(count, j)).collect::<Vec<_>>());
}

#[test]
fn partitioners_follow_the_api_and_parallelism() {
    // (description, build, expected partitioners of the edges in order, channels)
    type Build = fn() -> StreamEnvironment;
    let cases: Vec<(&str, Build, Vec<Partitioner>, usize)> = vec![
        ("equal parallelism is forward and chains", || {
            let env = StreamEnvironment::new("j");
            env.set_parallelism(3);
            env.add_source("s", || Lines).map("m", |s: String| s.len() as u64).add_sink("k", out::<u64>);
            env
        }, vec![], 0),
        ("a parallelism change is rebalance", || {
            let env = StreamEnvironment::new("j");
            let s = env.add_source("s", || Lines).set_parallelism(2);
            s.map("m", |s: String| s).set_parallelism(3).add_sink("k", out::<String>).set_parallelism(3);
            env
        }, vec![Partitioner::Rebalance], 6),
        ("explicit rebalance at equal parallelism breaks the chain", || {
            let env = StreamEnvironment::new("j");
            env.set_parallelism(2);
            env.add_source("s", || Lines).rebalance().add_sink("k", out::<String>);
            env
        }, vec![Partitioner::Rebalance], 4),
        ("broadcast", || {
            let env = StreamEnvironment::new("j");
            env.set_parallelism(2);
            env.add_source("s", || Lines).broadcast().add_sink("k", out::<String>);
            env
        }, vec![Partitioner::Broadcast], 4),
        ("two shuffles", || {
            let env = StreamEnvironment::new("j");
            env.set_parallelism(2);
            env.add_source("s", || Lines)
                .key_by("k1", |w: &String| w.clone()).process("count", RunningCount::default())
                .key_by("k2", |(_, n): &(String, u64)| *n % 4).process("again", crate::operator::keyed_process::tests_support::Forward::<u64, (String, u64)>::default())
                .add_sink("k", out::<(String, u64)>);
            env
        }, vec![Partitioner::Hash { max_parallelism: 128 }, Partitioner::Hash { max_parallelism: 128 }], 8),
    ];
    for (name, build, want, channels) in cases {
        let exec = build().build().unwrap_or_else(|e| panic!("{name}: {e}")).expand();
        let got: Vec<Partitioner> = exec.edges.iter().map(|e| e.partitioner).collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(exec.channels.len(), channels, "{name}");
    }
}

#[test]
fn validation_names_the_operator_at_fault() {
    type Build = fn() -> StreamEnvironment;
    let cases: Vec<(&str, Build, GraphError)> = vec![
        ("zero parallelism", || {
            let env = StreamEnvironment::new("j");
            env.add_source("s", || Lines).map("m", |s: String| s).set_parallelism(0).add_sink("k", out::<String>);
            env
        }, GraphError::ZeroParallelism { operator: "m".into() }),
        ("parallelism above max", || {
            let env = StreamEnvironment::new("j");
            env.add_source("s", || Lines).set_parallelism(8).set_max_parallelism(4).add_sink("k", out::<String>);
            env
        }, GraphError::ParallelismAboveMax { operator: "s".into(), parallelism: 8, max_parallelism: 4 }),
        ("a key_by with nothing after it", || {
            let env = StreamEnvironment::new("j");
            let s = env.add_source("s", || Lines);
            let _dangling = s.key_by("by-word", |w: &String| w.clone());
            s.add_sink("k", out::<String>);
            env
        }, GraphError::DanglingKeyBy { operator: "by-word".into() }),
        ("a cycle", || {
            let env = StreamEnvironment::new("j");
            let m = env.add_source("s", || Lines).map("a", |s: String| s).map("b", |s: String| s);
            m.add_sink("k", out::<String>);
            env.connect("b", "a").unwrap();
            env
        }, GraphError::Cycle { operator: "a".into() }),
        ("no sink", || {
            let env = StreamEnvironment::new("j");
            env.add_source("s", || Lines).map("m", |s: String| s);
            env
        }, GraphError::NoSink),
        ("duplicate names", || {
            let env = StreamEnvironment::new("j");
            env.add_source("s", || Lines).map("s", |s: String| s).add_sink("k", out::<String>);
            env
        }, GraphError::DuplicateName { operator: "s".into() }),
        ("a second input", || {
            let env = StreamEnvironment::new("j");
            env.add_source("s", || Lines).add_sink("k", out::<String>);
            let env2 = env.clone();
            env2.connect("s", "k").ok();
            env
        }, GraphError::InputCount { operator: "k".into(), inputs: 2, expected: 1 }),
    ];
    for (name, build, want) in cases {
        let got = build().build().map(|_| ()).unwrap_err();
        assert!(got == want || matches!((&got, &want), (GraphError::Cycle { .. }, GraphError::Cycle { .. })), "{name}: got {got:?}, want {want:?}");
        assert!(!got.to_string().is_empty());
    }
}

#[test]
fn every_subtask_of_a_vertex_gets_fresh_operators() {
    let exec = word_count(1, 2).build().unwrap().expand();
    let chain = exec.instantiate(exec.vertices[1].id);
    let ids: Vec<OperatorId> = chain.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, exec.vertices[1].operators);
}
