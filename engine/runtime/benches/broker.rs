//! Appends per second into the broker over the RPC client: single-record requests one after
//! another, the same from many concurrent producers (group commit shares the fsyncs), and
//! batched requests. Under `--cfg madsim` (the default) the broker runs on a simulated node with
//! a `SimDisk`; wall-clock time is measured outside `block_on` (inside it, time is virtual), and
//! the simulated seconds are printed too. Without madsim: real tokio, loopback TCP, `RealDisk`
//! in a temporary directory (real fsyncs).
//!
//! `cargo bench -p floe-runtime --bench broker` (sim) or
//! `RUSTFLAGS= RUSTDOCFLAGS= cargo bench -p floe-runtime --bench broker --target-dir target/real` (real).
#![allow(clippy::disallowed_methods)] // wall-clock timing of a benchmark, outside the simulation

use floe_core::ids::PartitionId;
use floe_runtime::broker::{BrokerClient, Producer, Record, RetryPolicy};
use std::time::Duration;

const T: &str = "bench";

/// One measured workload.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    producers: usize,
    requests_per_producer: usize,
    records_per_request: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload { name: "single, 1 producer", producers: 1, requests_per_producer: 2_000, records_per_request: 1 },
    Workload { name: "single, 32 producers", producers: 32, requests_per_producer: 200, records_per_request: 1 },
    Workload { name: "batched x100, 1 producer", producers: 1, requests_per_producer: 500, records_per_request: 100 },
    Workload { name: "batched x100, 8 producers", producers: 8, requests_per_producer: 200, records_per_request: 100 },
];

/// Runs a workload with idempotent producers; returns records appended.
async fn run(client: BrokerClient, w: Workload) -> usize {
    let mut tasks = Vec::new();
    for p in 0..w.producers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut producer = Producer::idempotent(client, RetryPolicy::default()).await.expect("producer id");
            let partition = PartitionId((p % 4) as u32);
            for i in 0..w.requests_per_producer {
                let records = (0..w.records_per_request).map(|k| Record::value(format!("{p}-{i}-{k}-payload-of-some-bytes"))).collect();
                producer.send(T, partition, records).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer task");
    }
    w.producers * w.requests_per_producer * w.records_per_request
}

fn report(w: Workload, records: usize, wall: Duration, sim: Option<Duration>) {
    let requests = w.producers * w.requests_per_producer;
    let per_wall = records as f64 / wall.as_secs_f64();
    let reqs_wall = requests as f64 / wall.as_secs_f64();
    match sim {
        Some(sim) => println!(
            "{:<28} {records:>7} records {requests:>6} requests  wall {:>8.1} ms  {per_wall:>11.0} appends/s {reqs_wall:>9.0} req/s (wall)  sim {:>7.2} s  {:>9.0} appends/sim-s",
            w.name,
            wall.as_secs_f64() * 1e3,
            sim.as_secs_f64(),
            records as f64 / sim.as_secs_f64(),
        ),
        None => println!(
            "{:<28} {records:>7} records {requests:>6} requests  wall {:>8.1} ms  {per_wall:>11.0} appends/s {reqs_wall:>9.0} req/s",
            w.name,
            wall.as_secs_f64() * 1e3
        ),
    }
}

#[cfg(madsim)]
fn main() {
    use floe_runtime::broker::{run_broker_server, BrokerConfig};
    use floe_runtime::disk::SimDisk;
    use floe_runtime::transport::RpcConfig;
    use madsim::runtime::{Handle, Runtime};
    use std::net::SocketAddr;

    let addr: SocketAddr = "10.0.0.1:9092".parse().unwrap();
    for w in WORKLOADS {
        let rt = Runtime::with_seed_and_config(1, madsim::Config::default());
        let disk = SimDisk::new();
        let (client_node, client) = rt.block_on(async move {
            Handle::current()
                .create_node()
                .name("broker")
                .ip(addr.ip())
                .init(move || {
                    let disk = disk.clone();
                    async move { run_broker_server(addr, disk, BrokerConfig::default()).await.unwrap() }
                })
                .build();
            let node = Handle::current().create_node().name("client").ip("10.0.0.2".parse().unwrap()).build();
            let client = BrokerClient::new(addr, RpcConfig::default());
            let c = client.clone();
            node.spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                c.create_topic(T, 4).await.unwrap();
            })
            .await
            .unwrap();
            (node, client)
        });
        let w = *w;
        let wall = std::time::Instant::now();
        let (records, sim) = rt.block_on(async move {
            let start = tokio::time::Instant::now();
            let records = client_node.spawn(run(client, w)).await.unwrap();
            (records, start.elapsed())
        });
        report(w, records, wall.elapsed(), Some(sim));
    }
}

#[cfg(not(madsim))]
fn main() {
    use floe_runtime::broker::{serve_on, Broker, BrokerConfig};
    use floe_runtime::disk::RealDisk;
    use floe_runtime::transport::RpcConfig;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for w in WORKLOADS {
        let dir = tempfile::TempDir::new().unwrap();
        let w = *w;
        let (client, server) = rt.block_on(async {
            let config = BrokerConfig::default();
            let (broker, _) = Broker::open(RealDisk::new(dir.path()), config.clone(), 0).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve_on(listener, broker, config, tokio::time::Instant::now()));
            let client = BrokerClient::new(addr, RpcConfig::default());
            client.create_topic(T, 4).await.unwrap();
            (client, server)
        });
        let wall = std::time::Instant::now();
        let records = rt.block_on(run(client, w));
        report(w, records, wall.elapsed(), None);
        server.abort();
    }
}
