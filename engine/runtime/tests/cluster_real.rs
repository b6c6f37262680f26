//! The same cluster for real: job manager, two task managers, broker and blob store as tasks of
//! one process, over real TCP on loopback addresses (each node its own 127.x address, so the fixed
//! ports do not clash) and real files in a temporary directory. Runs in the real-mode build:
//! `RUSTFLAGS= RUSTDOCFLAGS= cargo test -p floe-runtime --target-dir target/real --test cluster_real`.
#![cfg(not(madsim))]

use floe_core::ids::{Offset, PartitionId, TaskManagerId};
use floe_runtime::blob::{run_blob_server, BlobFaults};
use floe_runtime::broker::{run_broker_server, BrokerClient, BrokerConfig, IsolationLevel, Producer, Record, RetryPolicy};
use floe_runtime::cluster::job_manager::{run_job_manager, JobClient, JobManagerConfig};
use floe_runtime::cluster::jobs::{decode_word_count, words, JobRegistry, JobSpec};
use floe_runtime::cluster::protocol::JobState;
use floe_runtime::cluster::task_manager::{run_task_manager, TaskManagerConfig};
use floe_runtime::cluster::JM_RPC_PORT;
use floe_runtime::disk::RealDisk;
use floe_runtime::transport::RpcConfig;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 77, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_runs_for_real_over_loopback_and_is_exactly_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = SocketAddr::new(ip(2), 9092);
    let blob = SocketAddr::new(ip(3), 9000);
    let jm_ip = ip(1);
    let rpc = RpcConfig { call_timeout_ms: 2_000, ..RpcConfig::default() };
    let registry = JobRegistry::builtin();

    let broker_disk = RealDisk::new(dir.path().join("broker"));
    let blob_disk = RealDisk::new(dir.path().join("blob"));
    let mut nodes = vec![
        tokio::spawn(async move { run_broker_server(broker, broker_disk, BrokerConfig::default()).await.map(|_| ()) }),
        tokio::spawn(async move { run_blob_server(blob, blob_disk, BlobFaults::new()).await.map(|_| ()) }),
    ];
    let jm = JobManagerConfig { ip: jm_ip, broker, blob, registry: registry.clone(), heartbeat_timeout_ms: 2_000, rpc: rpc.clone(), seed: 7 };
    nodes.push(tokio::spawn(run_job_manager(jm)));
    for i in 0..2u8 {
        let tm = TaskManagerConfig {
            id: TaskManagerId(i as u32),
            incarnation: 1,
            ip: ip(10 + i),
            slots: 2,
            jm: SocketAddr::new(jm_ip, JM_RPC_PORT),
            broker,
            blob,
            registry: registry.clone(),
            heartbeat_interval_ms: 100,
            jm_silence_ms_max: 2_000,
            rpc: rpc.clone(),
        };
        nodes.push(tokio::spawn(run_task_manager(tm)));
    }

    // Input: 2,000 lines over 2 partitions.
    let lines: Vec<String> = (0..2_000).map(|i| format!("alpha beta{} Gamma-{}", i % 7, i % 13)).collect();
    let client = BrokerClient::new(broker, rpc.clone());
    let mut topic_ready = false;
    for _ in 0..100 {
        if client.create_topic("lines", 2).await.is_ok() {
            topic_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(topic_ready, "the broker did not come up");
    let mut producer = Producer::idempotent(client.clone(), RetryPolicy { attempts_max: 100, backoff_ms: 20 }).await.expect("a producer");
    let mut ends = vec![0u64; 2];
    for p in 0..2u32 {
        let records: Vec<Record> = lines.iter().skip(p as usize).step_by(2).map(|l| Record::value(l.clone().into_bytes())).collect();
        ends[p as usize] = records.len() as u64;
        for chunk in records.chunks(256) {
            producer.send("lines", PartitionId(p), chunk.iter().cloned().collect()).await.expect("produce");
        }
    }

    let spec = JobSpec { stopping_offsets: Some(ends), ..JobSpec::word_count("real-wc", "lines", 2, "counts", 2) };
    let jobs = JobClient::new(SocketAddr::new(jm_ip, JM_RPC_PORT), rpc.clone());
    let mut submitted = false;
    for _ in 0..100 {
        if jobs.submit(spec.clone()).await.is_ok() {
            submitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(submitted, "the job manager did not accept the job");
    let mut state = JobState::NoJob;
    for _ in 0..600 {
        if let Ok(s) = jobs.status().await {
            state = s.state;
            if matches!(state, JobState::Finished | JobState::Failed(_)) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, JobState::Finished);

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for line in &lines {
        for w in words(line) {
            *expected.entry(w).or_insert(0) += 1;
        }
    }
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for p in 0..client.partitions("counts").await.expect("the output topic exists") {
        let mut from = Offset(0);
        loop {
            let f = client.fetch("counts", PartitionId(p), from, 4096, 4 << 20, IsolationLevel::ReadCommitted).await.expect("fetch");
            for r in &f.records {
                let (w, n) = decode_word_count(r).expect("decodable");
                let last = seen.entry(w.clone()).or_insert(0);
                assert_eq!(n, *last + 1, "({w}, {n}) after ({w}, {last})");
                *last = n;
            }
            if f.next_offset <= from {
                break;
            }
            from = f.next_offset;
        }
    }
    assert_eq!(seen, expected);
    for node in nodes {
        node.abort();
    }
}
