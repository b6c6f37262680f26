//! The broker under madsim: a broker node on a `SimDisk`, clients on other nodes, kills and
//! restarts with torn tails. Each test runs a few seeds, each on a fresh thread and runtime.
#![cfg(madsim)]

use floe_core::ids::{Offset, PartitionId};
use floe_runtime::broker::*;
use floe_runtime::disk::{Disk, DiskFaults, SimDisk, TornTail};
use floe_runtime::transport::RpcConfig;
use madsim::rand::{thread_rng, Rng};
use floe_runtime::cluster::sim::{simulate, test_seeds};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BROKER_ADDR: &str = "10.0.0.1:9092";
const T: &str = "events";

fn broker_addr() -> SocketAddr {
    BROKER_ADDR.parse().unwrap()
}

/// Runs `f` under a fresh runtime with `seed` on a fresh thread; reports the seed on failure.
fn sim<T, F, Fut>(seed: u64, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    simulate(seed, Duration::from_secs(600), &format!("FLOE_SEED={seed} cargo test -p floe-runtime --test broker_sim"), f)
}

/// Seeds per multi-seed test: `FLOE_BROKER_SEEDS` (default 4), or `FLOE_SEED` alone.
fn seeds(first: u64) -> Vec<u64> {
    let n: u64 = std::env::var("FLOE_BROKER_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    test_seeds(first, n.max(1))
}

fn broker_node(disk: SimDisk, config: BrokerConfig) -> NodeHandle {
    Handle::current()
        .create_node()
        .name("broker")
        .ip(broker_addr().ip())
        .init(move || {
            let disk = disk.clone();
            let config = config.clone();
            async move {
                if let Err(e) = run_broker_server(broker_addr(), disk, config).await {
                    tracing::warn!(error = %e, "broker stopped");
                }
            }
        })
        .build()
}

fn client_node(name: &str, ip: &str) -> NodeHandle {
    Handle::current().create_node().name(name).ip(ip.parse().unwrap()).build()
}

fn client() -> BrokerClient {
    BrokerClient::new(broker_addr(), RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() })
}

fn retry() -> RetryPolicy {
    RetryPolicy { attempts_max: 1_000, backoff_ms: 50 }
}

/// Kills the broker, crashes its disk with a torn tail of a random length, and restarts it.
fn crash_and_restart(broker: &NodeHandle, disk: &SimDisk) {
    Handle::current().kill(broker.id());
    let bytes = thread_rng().gen_range(0..200u64);
    disk.crash(TornTail::KeepPrefix { bytes });
    Handle::current().restart(broker.id());
}

async fn read_all(c: &BrokerClient, partition: u32, isolation: IsolationLevel) -> Vec<(Offset, String)> {
    let mut out = Vec::new();
    let mut from = Offset(0);
    loop {
        let f = match c.fetch(T, PartitionId(partition), from, 500, 1 << 20, isolation).await {
            Ok(f) => f,
            Err(e) if e.is_retriable() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("fetch: {e}"),
        };
        out.extend(f.iter().map(|(o, r)| (o, String::from_utf8(r.to_vec()).unwrap())));
        let end = match isolation {
            IsolationLevel::ReadCommitted => f.last_stable_offset,
            IsolationLevel::ReadUncommitted => f.high_watermark,
        };
        if f.next_offset >= end {
            return out;
        }
        from = f.next_offset;
    }
}

fn values(v: &[(Offset, String)]) -> Vec<String> {
    v.iter().map(|(_, s)| s.clone()).collect()
}

async fn create_topic(c: &BrokerClient, partitions: u32) {
    for _ in 0..100 {
        if c.create_topic(T, partitions).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the broker never came up");
}

#[test]
fn acknowledged_writes_survive_kill_restart_and_unacknowledged_ones_are_absent_or_complete() {
    for seed in seeds(1) {
        crash_scenario(seed);
    }
}

#[test]
fn the_same_seed_gives_the_same_log() {
    assert_eq!(crash_scenario(7), crash_scenario(7));
}

/// Three writers (idempotent batches and plain records) against a broker that suffers disk
/// fault spells and four kill/torn-tail/restart cycles; checks the log and returns it.
fn crash_scenario(seed: u64) -> Vec<(Offset, String)> {
        sim(seed, move || async move {
            let disk = SimDisk::new();
            disk.set_faults(DiskFaults { latency_ms: 1, ..DiskFaults::default() });
            let broker = broker_node(disk.clone(), BrokerConfig::default());
            let acked_plain = Arc::new(Mutex::new(BTreeMap::<String, Offset>::new()));
            let attempted_plain = Arc::new(Mutex::new(BTreeSet::<String>::new()));
            let acked_idem = Arc::new(Mutex::new(Vec::<String>::new()));
            let c = client();
            let setup = client_node("setup", "10.0.0.9");
            setup.spawn(async move { create_topic(&c, 1).await }).await.unwrap();
            let mut writers = Vec::new();
            for w in 0..3u32 {
                let node = client_node(&format!("writer{w}"), &format!("10.0.1.{}", w + 1));
                let (acked_plain, attempted_plain, acked_idem) = (acked_plain.clone(), attempted_plain.clone(), acked_idem.clone());
                writers.push(node.spawn(async move {
                    let c = client();
                    let mut producer = Producer::idempotent(c.clone(), retry()).await.expect("producer id");
                    for i in 0..40 {
                        // An idempotent batch: retried through crashes until acknowledged.
                        let vals: Vec<String> = (0..3).map(|k| format!("idem-{w}-{i}-{k}")).collect();
                        let records = vals.iter().map(|v| Record::value(v.as_bytes())).collect();
                        producer.send(T, PartitionId(0), records).await.expect("idempotent send");
                        acked_idem.lock().unwrap().extend(vals);
                        // A plain record: sent once; its fate is unknown when it fails.
                        let v = format!("plain-{w}-{i}");
                        attempted_plain.lock().unwrap().insert(v.clone());
                        if let Ok(offset) = c.produce(T, PartitionId(0), PackedRecords::from_values([v.as_bytes()])).await {
                            acked_plain.lock().unwrap().insert(v, offset);
                        }
                        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..20))).await;
                    }
                }));
            }
            let crashes = 4;
            let normal = DiskFaults { latency_ms: 1, ..DiskFaults::default() };
            for _ in 0..crashes {
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(100..600))).await;
                // A spell of failing writes or fsyncs first: answers become Io errors, the
                // broker rebuilds from disk, the producers retry.
                let failing = if thread_rng().gen_bool(0.5) {
                    DiskFaults { fail_fsyncs: true, ..normal }
                } else {
                    DiskFaults { fail_writes: true, ..normal }
                };
                disk.set_faults(failing);
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(10..100))).await;
                disk.set_faults(normal);
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..100))).await;
                crash_and_restart(&broker, &disk);
            }
            for w in writers {
                w.await.unwrap();
            }
            let c = client();
            let log = setup.spawn(async move { read_all(&c, 0, IsolationLevel::ReadCommitted).await }).await.unwrap();
            // Every record in the log is a complete record someone sent, at most once.
            let mut seen = BTreeMap::<String, Offset>::new();
            for (offset, v) in &log {
                assert!(seen.insert(v.clone(), *offset).is_none(), "{v} appears twice");
            }
            let attempted = attempted_plain.lock().unwrap().clone();
            for v in seen.keys() {
                assert!(v.starts_with("idem-") || attempted.contains(v), "{v} was never sent");
            }
            // Every acknowledged write is there: plain ones at their offset, idempotent ones once.
            for (v, offset) in acked_plain.lock().unwrap().iter() {
                assert_eq!(seen.get(v), Some(offset), "acknowledged {v} lost or moved");
            }
            let idem = acked_idem.lock().unwrap().clone();
            assert_eq!(idem.len(), 3 * 40 * 3);
            for v in &idem {
                assert!(seen.contains_key(v), "acknowledged {v} lost");
            }
            // Batches are never torn: the records of one idempotent batch are contiguous.
            for w in 0..3 {
                for i in 0..40 {
                    let offsets: Vec<u64> = (0..3).map(|k| seen[&format!("idem-{w}-{i}-{k}")].get()).collect();
                    assert_eq!(offsets, vec![offsets[0], offsets[0] + 1, offsets[0] + 2]);
                }
            }
            assert!(disk.counters().crashes == crashes);
            let failed_plain = attempted.len() - acked_plain.lock().unwrap().len();
            let lost_unacked = attempted.iter().filter(|v| !acked_plain.lock().unwrap().contains_key(*v) && !seen.contains_key(*v)).count();
            eprintln!("seed {seed}: log {} records, unacknowledged plain {failed_plain} (absent {lost_unacked})", log.len());
            log
        })
}

#[test]
fn a_zombie_producer_is_fenced_after_a_new_epoch_even_across_a_restart() {
    sim(11, || async {
        let disk = SimDisk::new();
        let broker = broker_node(disk.clone(), BrokerConfig::default());
        let node = client_node("sink", "10.0.0.2");
        let c = client();
        let zombie = node
            .spawn(async move {
                create_topic(&c, 1).await;
                let mut zombie = Producer::transactional(c.clone(), "sink-0-1", None, retry()).await.unwrap();
                zombie.send(T, PartitionId(0), PackedRecords::from_values(["zombie-1"])).await.unwrap();
                zombie
            })
            .await
            .unwrap();
        crash_and_restart(&broker, &disk);
        let c = client();
        node.spawn(async move {
            let mut fresh = Producer::transactional(c.clone(), "sink-0-1", None, retry()).await.unwrap();
            assert_eq!(fresh.id().1, zombie.id().1 + 1);
            let mut zombie = zombie;
            let err = zombie.send(T, PartitionId(0), PackedRecords::from_values(["zombie-2"])).await.unwrap_err();
            assert!(matches!(err, BrokerError::Fenced { .. }), "{err:?}");
            assert!(matches!(zombie.commit().await, Err(BrokerError::Fenced { .. })));
            assert!(matches!(zombie.prepare().await, Err(BrokerError::Fenced { .. })));
            fresh.send(T, PartitionId(0), PackedRecords::from_values(["fresh"])).await.unwrap();
            fresh.prepare().await.unwrap();
            assert_eq!(fresh.commit().await.unwrap(), TxnState::CompleteCommit);
            assert_eq!(fresh.commit().await.unwrap(), TxnState::CompleteCommit, "commit is idempotent");
            assert_eq!(values(&read_all(&c, 0, IsolationLevel::ReadCommitted).await), ["fresh"]);
            assert_eq!(values(&read_all(&c, 0, IsolationLevel::ReadUncommitted).await), ["zombie-1", "fresh"]);
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_transaction_that_timed_out_cannot_be_committed_but_a_prepared_one_survives_a_restart() {
    sim(21, || async {
        let disk = SimDisk::new();
        let config = BrokerConfig { transaction_timeout_ms: 2_000, ..BrokerConfig::default() };
        let broker = broker_node(disk.clone(), config);
        let node = client_node("sink", "10.0.0.2");
        let c = client();
        let (early, late) = node
            .spawn(async move {
                create_topic(&c, 1).await;
                let mut early = Producer::transactional(c.clone(), "sink-0-1", None, retry()).await.unwrap();
                early.send(T, PartitionId(0), PackedRecords::from_values(["cp1"])).await.unwrap();
                early.prepare().await.unwrap();
                let mut late = Producer::transactional(c.clone(), "sink-0-2", None, retry()).await.unwrap();
                late.send(T, PartitionId(0), PackedRecords::from_values(["cp2"])).await.unwrap();
                late.prepare().await.unwrap();
                (early, late)
            })
            .await
            .unwrap();
        // The broker restarts while both are prepared: they survive, with fresh timeout clocks.
        crash_and_restart(&broker, &disk);
        let c = client();
        node.spawn(async move {
            let listed: Vec<TxnState> = c.list_transactions("sink-0-").await.unwrap().into_iter().map(|l| l.state).collect();
            assert_eq!(listed, [TxnState::Prepared, TxnState::Prepared]);
            assert_eq!(early.commit().await.unwrap(), TxnState::CompleteCommit);
            // The sink is "down" longer than the timeout: the broker aborts the prepared one.
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            let err = late.commit().await.unwrap_err();
            assert_eq!(err, BrokerError::TransactionTimedOut { transactional_id: "sink-0-2".into() });
            let listed: Vec<TxnState> = c.list_transactions("sink-0-").await.unwrap().into_iter().map(|l| l.state).collect();
            assert_eq!(listed, [TxnState::CompleteCommit, TxnState::CompleteAbort(TxnEndReason::TimedOut)]);
            assert_eq!(values(&read_all(&c, 0, IsolationLevel::ReadCommitted).await), ["cp1"]);
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_read_committed_consumer_never_sees_an_aborted_or_open_transactions_record() {
    for seed in seeds(1_000) {
        sim(seed, move || async move {
            let disk = SimDisk::new();
            disk.set_faults(DiskFaults { latency_ms: 1, ..DiskFaults::default() });
            let broker = broker_node(disk.clone(), BrokerConfig::default());
            let setup = client_node("setup", "10.0.0.9");
            let c = client();
            setup.spawn(async move { create_topic(&c, 2).await }).await.unwrap();
            // Transactions whose commit was requested; a record may be visible only if its
            // transaction is in here by the time the consumer sees it.
            let commit_requested = Arc::new(Mutex::new(BTreeSet::<String>::new()));
            let done = Arc::new(Mutex::new(false));
            let mut producers = Vec::new();
            for s in 0..2u32 {
                let node = client_node(&format!("sink{s}"), &format!("10.0.1.{}", s + 1));
                let commit_requested = commit_requested.clone();
                producers.push(node.spawn(async move {
                    let c = client();
                    for cp in 0..15 {
                        let tid = format!("sink-{s}-{cp}");
                        let mut p = Producer::transactional(c.clone(), &tid, None, retry()).await.unwrap();
                        for i in 0..3 {
                            let part = PartitionId((i + s) % 2);
                            p.send(T, part, PackedRecords::from_values([format!("{tid}/{i}")])).await.unwrap();
                        }
                        p.prepare().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..30))).await;
                        if thread_rng().gen_bool(0.6) {
                            commit_requested.lock().unwrap().insert(tid.clone());
                            p.commit().await.unwrap();
                        } else {
                            p.abort().await.unwrap();
                        }
                    }
                }));
            }
            let consumer = {
                let node = client_node("consumer", "10.0.2.1");
                let (commit_requested, done) = (commit_requested.clone(), done.clone());
                node.spawn(async move {
                    let c = client();
                    let mut from = [Offset(0), Offset(0)];
                    let mut seen = Vec::new();
                    loop {
                        let finished = *done.lock().unwrap();
                        for part in 0..2 {
                            let Ok(f) = c.fetch(T, PartitionId(part), from[part as usize], 100, 1 << 20, IsolationLevel::ReadCommitted).await
                            else {
                                continue; // the broker is restarting
                            };
                            for r in &f.records {
                                let v = String::from_utf8(r.to_vec()).unwrap();
                                let tid = v.split('/').next().unwrap().to_string();
                                assert!(commit_requested.lock().unwrap().contains(&tid), "saw {v} of an open or aborted transaction");
                                seen.push(v);
                            }
                            from[part as usize] = f.next_offset;
                        }
                        if finished {
                            return seen;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            };
            tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(200..800))).await;
            crash_and_restart(&broker, &disk);
            for p in producers {
                p.await.unwrap();
            }
            *done.lock().unwrap() = true;
            let seen: BTreeSet<String> = consumer.await.unwrap().into_iter().collect();
            let want: BTreeSet<String> =
                commit_requested.lock().unwrap().iter().flat_map(|tid| (0..3).map(move |i| format!("{tid}/{i}"))).collect();
            assert_eq!(seen, want, "the consumer sees exactly the committed transactions");
        });
    }
}

#[test]
fn a_torn_tail_left_by_a_failed_fsync_is_truncated_and_never_served() {
    sim(41, || async {
        let disk = SimDisk::new();
        let broker = broker_node(disk.clone(), BrokerConfig::default());
        let node = client_node("writer", "10.0.0.2");
        let c = client();
        node.spawn(async move {
            create_topic(&c, 1).await;
            c.produce(T, PartitionId(0), PackedRecords::from_values(["durable"])).await.unwrap();
        })
        .await
        .unwrap();
        let path = floe_runtime::broker::log::partition_log_path(T, PartitionId(0));
        let durable_len = disk.unsynced_bytes();
        assert_eq!(durable_len, 0);
        // The fsync fails: the append stays unsynced, the client gets an error, and the
        // broker, rebuilding from disk, cannot make the half-written entry durable either.
        disk.set_faults(DiskFaults { fail_fsyncs: true, ..DiskFaults::default() });
        let c = client();
        let err = node
            .spawn(async move { c.produce(T, PartitionId(0), PackedRecords::from_values(["never-acked-and-long-enough"])).await })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, BrokerError::Io(_)), "{err:?}");
        let c = client();
        let during = node.spawn(async move { c.fetch(T, PartitionId(0), Offset(0), 10, 1 << 20, IsolationLevel::ReadUncommitted).await }).await.unwrap();
        assert!(during.is_err(), "nothing is served while the disk cannot make it durable: {during:?}");
        assert!(disk.unsynced_bytes() > 10);
        Handle::current().kill(broker.id());
        disk.crash(TornTail::KeepPrefix { bytes: 10 });
        disk.set_faults(DiskFaults::default());
        Handle::current().restart(broker.id());
        let c = client();
        node.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(values(&read_all(&c, 0, IsolationLevel::ReadUncommitted).await), ["durable"]);
            c.produce(T, PartitionId(0), PackedRecords::from_values(["after"])).await.unwrap();
            assert_eq!(values(&read_all(&c, 0, IsolationLevel::ReadUncommitted).await), ["durable", "after"]);
        })
        .await
        .unwrap();
        let bytes = disk.read_all(&path).await.unwrap();
        let scan = log::scan::<log::PartitionEntry>(log::PARTITION_MAGIC, &bytes);
        assert_eq!((scan.entries.len(), scan.torn), (2, None), "the torn tail was cut before the next append");
    });
}
