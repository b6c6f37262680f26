//! The broker on real tokio: loopback TCP on an ephemeral port, `RealDisk` in a temporary
//! directory, a restart that recovers from the files. Run with
//! `RUSTFLAGS= RUSTDOCFLAGS= cargo test -p floe-runtime --target-dir target/real --test broker_real`.
#![cfg(not(madsim))]

use floe_core::ids::{Offset, PartitionId};
use floe_runtime::broker::*;
use floe_runtime::disk::RealDisk;
use floe_runtime::transport::RpcConfig;
use tokio::net::TcpListener;

const T: &str = "events";

/// Recovers a broker from `dir` and serves it on a fresh loopback port.
async fn start(dir: &std::path::Path) -> (BrokerClient, tokio::task::JoinHandle<std::io::Result<()>>, RecoveryReport) {
    let config = BrokerConfig::default();
    let (broker, report) = Broker::open(RealDisk::new(dir), config.clone(), 0).await.expect("recovery");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_on(listener, broker, config, tokio::time::Instant::now()));
    (BrokerClient::new(addr, RpcConfig::default()), server, report)
}

async fn committed(c: &BrokerClient) -> Vec<String> {
    let f = c.fetch(T, PartitionId(0), Offset(0), 1_000, 1 << 20, IsolationLevel::ReadCommitted).await.unwrap();
    f.records.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect()
}

#[tokio::test]
async fn a_real_broker_serves_over_loopback_and_recovers_its_files_after_a_restart() {
    let dir = tempfile::TempDir::new().unwrap();
    let (c, server, _) = start(dir.path()).await;
    c.create_topic(T, 1).await.unwrap();
    c.produce(T, PartitionId(0), PackedRecords::from_values(["plain"])).await.unwrap();
    let mut idem = Producer::idempotent(c.clone(), RetryPolicy::default()).await.unwrap();
    idem.send(T, PartitionId(0), PackedRecords::from_values(["idem"])).await.unwrap();
    let mut done = Producer::transactional(c.clone(), "sink-0-1", None, RetryPolicy::default()).await.unwrap();
    done.send(T, PartitionId(0), PackedRecords::from_values(["committed"])).await.unwrap();
    done.prepare().await.unwrap();
    done.commit().await.unwrap();
    let mut open = Producer::transactional(c.clone(), "sink-0-2", None, RetryPolicy::default()).await.unwrap();
    open.send(T, PartitionId(0), PackedRecords::from_values(["prepared"])).await.unwrap();
    open.prepare().await.unwrap();
    assert_eq!(committed(&c).await, ["plain", "idem", "committed"]);

    // Stop the server and recover from the files, as a restarted process would.
    server.abort();
    let _ = server.await;
    let (c, _server, report) = start(dir.path()).await;
    assert!(report.truncated.is_empty());
    assert!(report.partition_entries >= 5, "{report:?}");
    let listed: Vec<(String, TxnState)> =
        c.list_transactions("sink-0-").await.unwrap().into_iter().map(|l| (l.transactional_id, l.state)).collect();
    assert_eq!(listed, [("sink-0-1".into(), TxnState::CompleteCommit), ("sink-0-2".into(), TxnState::Prepared)]);
    // The restored sink commits the prepared transaction with its recorded id and epoch.
    let (pid, epoch) = open.id();
    let resumed = Producer::resume(c.clone(), "sink-0-2", pid, epoch, RetryPolicy::default());
    assert_eq!(resumed.commit().await.unwrap(), TxnState::CompleteCommit);
    assert_eq!(committed(&c).await, ["plain", "idem", "committed", "prepared"]);
}
