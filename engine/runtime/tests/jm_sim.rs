//! The job manager under madsim, against fake task managers: tiny RPC servers that record every
//! `TmRequest` (with its virtual time), register and heartbeat like a task manager, and (when
//! told to) acknowledge every checkpoint trigger for all their subtasks with valid handles.
#![cfg(madsim)]

use floe_core::coordinator::{BlobRef, CheckpointMetadata, KeyGroupSlice, KeyedStateHandle, SubtaskStateHandle};
use floe_core::ids::{AttemptId, CheckpointId, SubtaskId, TaskManagerId};
use floe_core::key_groups::KeyGroupRange;
use floe_runtime::blob::{run_blob_server, BlobClient, BlobFaults};
use floe_runtime::cluster::job_manager::ha::{ha_finished_key, ha_latest_key, metadata_key};
use floe_runtime::cluster::job_manager::{run_job_manager, ClientError, JobClient, JobManagerConfig};
use floe_runtime::cluster::jobs::{JobRegistry, JobSpec};
use floe_runtime::cluster::protocol::{JmRequest, JmResponse, JobState, JobStatusReport, SubtaskDeployment, TmRequest, TmResponse};
use floe_runtime::cluster::{JM_RPC_PORT, TM_RPC_PORT};
use floe_runtime::disk::SimDisk;
use floe_runtime::transport::rpc::{serve, RpcClient, RpcConfig};
use floe_core::failover::RestartStrategy;
use madsim::runtime::{Handle, NodeHandle, Runtime};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const JM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BLOB_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 9000);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
const RESTART_DELAY_MS: u64 = 300;
const HEARTBEAT_TIMEOUT_MS: u64 = 1_000;

fn jm_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(JM_IP), JM_RPC_PORT)
}

fn tm_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, (i + 1) as u8))
}

fn rpc() -> RpcConfig {
    RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() }
}

fn sim<F, Fut>(seed: u64, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    // A fresh OS thread per runtime (see MADSIM.md).
    #[allow(clippy::disallowed_methods)]
    std::thread::spawn(move || {
        let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(Duration::from_secs(600));
        rt.block_on(f());
    })
    .join()
    .unwrap();
}

fn spec(parallelism: u32) -> JobSpec {
    let mut s = JobSpec::word_count("wc", "lines", 2, "counts", parallelism);
    s.restart = RestartStrategy::FixedDelay { attempts_max: 100, delay_ms: RESTART_DELAY_MS };
    s.checkpoint.timeout_ms = 5_000;
    s
}

/// What a fake task manager saw and how it behaves.
#[derive(Default)]
struct FakeState {
    /// Every request, with the virtual time it arrived at (ms since the world started).
    requests: Vec<(u64, TmRequest)>,
    /// The newest deployment: attempt, job, subtasks.
    deployed: Option<(AttemptId, JobSpec, Vec<SubtaskDeployment>)>,
    /// Acknowledge triggers for every hosted subtask.
    auto_ack: bool,
}

/// A deploy as a fake task manager saw it: (time, attempt, restored from, subtasks, locations).
type Deploy = (u64, AttemptId, Option<CheckpointId>, Vec<SubtaskDeployment>, usize);

#[derive(Clone)]
struct FakeTm {
    id: u32,
    node: NodeHandle,
    state: Arc<Mutex<FakeState>>,
}

impl FakeTm {
    fn requests(&self) -> Vec<(u64, TmRequest)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every deploy: (time, attempt, restored from, subtasks, number of locations).
    fn deploys(&self) -> Vec<Deploy> {
        self.requests()
            .into_iter()
            .filter_map(|(t, r)| match r {
                TmRequest::Deploy { attempt, restored_from, subtasks, locations, .. } => Some((t, attempt, restored_from, subtasks, locations.len())),
                _ => None,
            })
            .collect()
    }

    fn triggers(&self) -> Vec<(AttemptId, CheckpointId, bool)> {
        self.requests()
            .into_iter()
            .filter_map(|(_, r)| match r {
                TmRequest::TriggerCheckpoint { attempt, barrier, .. } => Some((attempt, barrier.checkpoint_id, barrier.is_final)),
                _ => None,
            })
            .collect()
    }
}

struct World {
    started: tokio::time::Instant,
    jm: NodeHandle,
    tms: Vec<FakeTm>,
    client: NodeHandle,
}

/// A valid handle for `subtask` of the job (keyed vertices cover their key-group range).
fn handle_for(spec: &JobSpec, subtask: SubtaskId, checkpoint: CheckpointId, attempt: AttemptId) -> SubtaskStateHandle {
    let graph = JobRegistry::builtin().build(spec).unwrap().expand();
    let v = graph.vertex(subtask.operator).unwrap();
    let base = format!("{}/chk-{}/{}-{}-a{}", spec.name, checkpoint.0, subtask.operator.0, subtask.index.0, attempt.0);
    let keyed = v.is_keyed.then(|| {
        let range = KeyGroupRange::for_operator_index(v.max_parallelism, v.parallelism, subtask.index);
        KeyedStateHandle {
            blob: BlobRef { key: format!("{base}.keyed"), len: 0, crc32: 0 },
            key_groups: range.iter().map(|kg| KeyGroupSlice { key_group: kg, offset: 0, len: 0 }).collect(),
        }
    });
    SubtaskStateHandle { subtask, keyed, operator: Some(BlobRef { key: format!("{base}.operator"), len: 1, crc32: 0 }), data_ended: false }
}

fn start_tm(id: u32, slots: u32, started: tokio::time::Instant) -> FakeTm {
    let state = Arc::new(Mutex::new(FakeState { auto_ack: true, ..FakeState::default() }));
    let incarnations = Arc::new(AtomicU64::new(0));
    let st = state.clone();
    let node = Handle::current()
        .create_node()
        .name(format!("tm{id}"))
        .ip(tm_ip(id))
        .init(move || {
            let state = st.clone();
            let incarnation = incarnations.fetch_add(1, Ordering::SeqCst) + 1;
            async move { run_fake_tm(id, incarnation, slots, state, started).await }
        })
        .build();
    FakeTm { id, node, state }
}

async fn run_fake_tm(id: u32, incarnation: u64, slots: u32, state: Arc<Mutex<FakeState>>, started: tokio::time::Instant) {
    let tm = TaskManagerId(id);
    let jm = RpcClient::<JmRequest, JmResponse>::new(jm_addr(), rpc());
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(tm_ip(id), TM_RPC_PORT)).await.unwrap();
    let (st, jm2) = (state.clone(), jm.clone());
    tokio::spawn(serve(listener, move |req: TmRequest| {
        let (state, jm) = (st.clone(), jm2.clone());
        async move {
            let mut acks = Vec::new();
            {
                let mut s = state.lock().unwrap();
                s.requests.push((started.elapsed().as_millis() as u64, req.clone()));
                match &req {
                    TmRequest::Deploy { attempt, job, subtasks, .. } => s.deployed = Some((*attempt, job.clone(), subtasks.clone())),
                    TmRequest::TriggerCheckpoint { attempt, barrier, .. } if s.auto_ack => {
                        if let Some((a, spec, subtasks)) = &s.deployed {
                            if a == attempt {
                                for d in subtasks {
                                    let handle = handle_for(spec, d.subtask, barrier.checkpoint_id, *a);
                                    acks.push(JmRequest::Acknowledge { attempt: *a, checkpoint_id: barrier.checkpoint_id, subtask: d.subtask, handle });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            for ack in acks {
                let jm = jm.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = jm.call(ack).await;
                });
            }
            TmResponse::Ok
        }
    }));
    let register = JmRequest::Register { tm, incarnation, addr: tm_ip(id), slots };
    loop {
        let running_attempt = state.lock().unwrap().deployed.as_ref().map(|d| d.0);
        if let Ok(JmResponse::RegisterAgain) = jm.call(JmRequest::Heartbeat { tm, incarnation, running_attempt }).await {
            let _ = jm.call(register.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_world(tms: &[u32]) -> World {
    // Virtual time under madsim.
    #[allow(clippy::disallowed_methods)]
    let started = tokio::time::Instant::now();
    let handle = Handle::current();
    let disk = SimDisk::new();
    handle
        .create_node()
        .name("blob")
        .ip(BLOB_ADDR.ip())
        .init(move || {
            let disk = disk.clone();
            async move { run_blob_server(BLOB_ADDR, disk, BlobFaults::new()).await.unwrap() }
        })
        .build();
    let mut config = JobManagerConfig::new(IpAddr::V4(JM_IP), BLOB_ADDR, BLOB_ADDR, JobRegistry::builtin());
    config.heartbeat_timeout_ms = HEARTBEAT_TIMEOUT_MS;
    config.rpc = rpc();
    config.seed = 7;
    let jm = handle
        .create_node()
        .name("jm")
        .ip(IpAddr::V4(JM_IP))
        .init(move || {
            let config = config.clone();
            async move {
                let _ = run_job_manager(config).await;
            }
        })
        .build();
    let client = handle.create_node().name("client").ip(IpAddr::V4(CLIENT_IP)).build();
    let tms = tms.iter().enumerate().map(|(i, slots)| start_tm(i as u32, *slots, started)).collect();
    World { started, jm, tms, client }
}

impl World {
    async fn on_client<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.client.spawn(f).await.unwrap()
    }

    async fn submit(&self, spec: JobSpec) -> Result<(), ClientError> {
        self.on_client(async move { JobClient::new(jm_addr(), rpc()).submit(spec).await }).await
    }

    async fn status(&self) -> Option<JobStatusReport> {
        self.on_client(async move { JobClient::new(jm_addr(), rpc()).status().await.ok() }).await
    }

    async fn call_jm(&self, req: JmRequest) -> JmResponse {
        self.on_client(async move { RpcClient::<JmRequest, JmResponse>::new(jm_addr(), rpc()).call(req).await.unwrap() }).await
    }

    async fn blob_get(&self, key: String) -> Option<Vec<u8>> {
        self.on_client(async move { BlobClient::new(BLOB_ADDR, rpc()).get(&key).await.unwrap() }).await
    }

    async fn blob_put(&self, key: String, bytes: Vec<u8>) {
        self.on_client(async move { BlobClient::new(BLOB_ADDR, rpc()).put(&key, bytes, true).await.unwrap() }).await
    }

    async fn wait_status(&self, what: &str, pred: impl Fn(&JobStatusReport) -> bool) -> JobStatusReport {
        for _ in 0..2_000 {
            if let Some(s) = self.status().await {
                if pred(&s) {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("status never reached: {what}; last {:?}", self.status().await);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn latest_pointer(&self) -> Option<String> {
        self.blob_get(ha_latest_key("wc")).await.map(|b| String::from_utf8(b).unwrap())
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

#[test]
fn a_job_waits_for_slots_then_deploys_slot_i_with_subtask_i_of_every_vertex() {
    sim(1, || async {
        let w = start_world(&[1]);
        w.submit(spec(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = w.status().await.unwrap();
        assert_eq!(s.state, JobState::WaitingForSlots, "one slot of two: {s:?}");
        assert!(w.tms[0].deploys().is_empty());

        // A second task manager brings the second slot.
        let tm1 = start_tm(1, 1, w.started);
        wait_for("deploys on both", || !w.tms[0].deploys().is_empty() && !tm1.deploys().is_empty()).await;
        let s = w.wait_status("running", |s| s.state == JobState::Running).await;
        assert_eq!(s.attempt, AttemptId(1));
        let (_, attempt, restored, subtasks0, locations) = w.tms[0].deploys().remove(0);
        assert_eq!((attempt, restored, locations), (AttemptId(1), None, 4), "two vertices × two subtasks, all located");
        assert!(subtasks0.iter().all(|d| d.subtask.index.0 == 0 && d.restore.is_none()), "slot 0 runs subtask 0 of every vertex: {subtasks0:?}");
        assert_eq!(subtasks0.len(), 2);
        let (_, _, _, subtasks1, _) = tm1.deploys().remove(0);
        assert!(subtasks1.iter().all(|d| d.subtask.index.0 == 1), "{subtasks1:?}");
        // The locations point at each subtask's task manager.
        let TmRequest::Deploy { locations, .. } = w.tms[0].requests().into_iter().find(|(_, r)| matches!(r, TmRequest::Deploy { .. })).unwrap().1 else {
            unreachable!()
        };
        for (subtask, addr) in locations {
            assert_eq!(addr.ip(), tm_ip(subtask.index.0), "{subtask}");
            assert_eq!(addr.port(), floe_runtime::cluster::TM_DATA_PORT);
        }
    });
}

#[test]
fn a_checkpoint_completes_only_after_its_metadata_and_pointer_are_written_then_notifies() {
    sim(2, || async {
        let w = start_world(&[1, 1]);
        w.submit(spec(2)).await.unwrap();
        let s = w.wait_status("a checkpoint", |s| s.checkpoints_completed >= 1).await;
        let latest = s.latest_checkpoint.unwrap();
        let pointer = w.latest_pointer().await.expect("ha/latest written");
        // The pointer names a checkpoint at least as new as the status's (more may complete meanwhile).
        let metadata = CheckpointMetadata::from_bytes(&w.blob_get(pointer.clone()).await.unwrap()).unwrap();
        assert!(metadata.checkpoint_id >= latest);
        assert_eq!(pointer, metadata_key("wc", metadata.checkpoint_id));
        assert_eq!(metadata.attempt, AttemptId(1));
        assert_eq!(metadata.operators.values().map(|o| o.subtasks.len()).sum::<usize>(), 4);
        // Each task manager saw: deploy, then trigger 1, then complete 1 — in that order.
        for tm in &w.tms {
            let reqs = tm.requests();
            let pos = |f: &dyn Fn(&TmRequest) -> bool| reqs.iter().position(|(_, r)| f(r)).unwrap_or_else(|| panic!("tm{}: {reqs:?}", tm.id));
            let deploy = pos(&|r| matches!(r, TmRequest::Deploy { .. }));
            let trigger = pos(&|r| matches!(r, TmRequest::TriggerCheckpoint { barrier, .. } if barrier.checkpoint_id == CheckpointId(1)));
            let complete = pos(&|r| matches!(r, TmRequest::NotifyComplete { checkpoint_id: CheckpointId(1), .. }));
            assert!(deploy < trigger && trigger < complete, "tm{}: {reqs:?}", tm.id);
        }
        // Checkpoint ids go up by one per trigger.
        let ids: Vec<u64> = w.tms[0].triggers().iter().map(|t| t.1 .0).collect();
        assert!(ids.windows(2).all(|p| p[1] == p[0] + 1), "{ids:?}");
    });
}

#[test]
fn a_lost_task_manager_cancels_and_redeploys_a_new_attempt_from_the_latest_checkpoint() {
    sim(3, || async {
        let w = start_world(&[1, 1, 1]);
        w.submit(spec(2)).await.unwrap();
        w.wait_status("a checkpoint", |s| s.checkpoints_completed >= 1).await;
        assert!(w.tms[2].deploys().is_empty(), "tm2 is a spare");
        Handle::current().kill(w.tms[1].node.id());
        let killed_ms = w.now_ms();
        wait_for("a redeploy on tm0 and tm2", || w.tms[0].deploys().len() == 2 && w.tms[2].deploys().len() == 1).await;
        let cancel_ms = w.tms[0]
            .requests()
            .into_iter()
            .find(|(_, r)| matches!(r, TmRequest::Cancel { attempt: AttemptId(1) }))
            .expect("the old attempt is cancelled")
            .0;
        let (deploy_ms, attempt, restored_from, subtasks, _) = w.tms[0].deploys().remove(1);
        assert_eq!(attempt, AttemptId(2));
        // Detected by the heartbeat timeout or, sooner, by a call to it failing.
        assert!(cancel_ms >= killed_ms && cancel_ms <= killed_ms + HEARTBEAT_TIMEOUT_MS + 200, "killed {killed_ms}, cancel {cancel_ms}");
        assert!(deploy_ms >= cancel_ms + RESTART_DELAY_MS - 20, "after the restart delay: cancel {cancel_ms}, deploy {deploy_ms}");
        let pointer = w.latest_pointer().await.unwrap();
        let latest = CheckpointMetadata::from_bytes(&w.blob_get(pointer).await.unwrap()).unwrap();
        assert_eq!(restored_from, Some(latest.checkpoint_id));
        for d in subtasks.iter().chain(w.tms[2].deploys()[0].3.iter()) {
            let restore = d.restore.as_ref().expect("every subtask restores");
            assert_eq!(restore.subtask, d.subtask.index);
            assert_eq!(restore.operator_state.len(), 2, "both old subtasks' operator state");
        }
        let s = w.wait_status("running attempt 2", |s| s.state == JobState::Running && s.attempt == AttemptId(2)).await;
        assert_eq!(s.restarts, 1);

        // Messages of attempt 1 are stale and change nothing.
        let subtask = subtasks[0].subtask;
        let handle = handle_for(&spec(2), subtask, CheckpointId(99), AttemptId(1));
        let stale = [
            JmRequest::Acknowledge { attempt: AttemptId(1), checkpoint_id: latest.checkpoint_id.next(), subtask, handle },
            JmRequest::SubtaskFailed { attempt: AttemptId(1), subtask, reason: "zombie".into() },
            JmRequest::EndOfInput { attempt: AttemptId(1), subtask },
        ];
        for req in stale {
            assert_eq!(w.call_jm(req).await, JmResponse::Stale);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = w.status().await.unwrap();
        assert_eq!((s.state, s.attempt, s.restarts), (JobState::Running, AttemptId(2), 1));
        // And attempt 2 keeps checkpointing.
        let before = s.checkpoints_completed;
        w.wait_status("a checkpoint of attempt 2", |s| s.checkpoints_completed > before).await;
    });
}

#[test]
fn a_restarted_job_manager_recovers_the_job_with_a_new_attempt_and_higher_checkpoint_ids() {
    sim(4, || async {
        let w = start_world(&[1, 1]);
        w.submit(spec(2)).await.unwrap();
        w.wait_status("two checkpoints", |s| s.checkpoints_completed >= 2).await;
        let h = Handle::current();
        h.kill(w.jm.id());
        let triggered_before = w.tms[0].triggers().iter().map(|t| t.1).max().unwrap();
        let pointer = w.latest_pointer().await.unwrap();
        let latest = CheckpointMetadata::from_bytes(&w.blob_get(pointer).await.unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.restart(w.jm.id());

        wait_for("a new deploy", || w.tms[0].deploys().len() >= 2 && w.tms[1].deploys().len() >= 2).await;
        let (_, attempt, restored_from, subtasks, _) = w.tms[0].deploys().pop().unwrap();
        assert!(attempt > AttemptId(1), "{attempt}");
        assert_eq!(restored_from, Some(latest.checkpoint_id));
        assert!(subtasks.iter().all(|d| d.restore.is_some()));
        let s = w.wait_status("recovered and checkpointing", |s| s.checkpoints_completed >= 1 && s.state == JobState::Running).await;
        assert_eq!(s.attempt, attempt);
        let new_ids: Vec<CheckpointId> = w.tms[0].triggers().into_iter().filter(|t| t.0 == attempt).map(|t| t.1).collect();
        assert!(!new_ids.is_empty() && new_ids.iter().all(|id| *id > triggered_before), "ids never repeat: before {triggered_before}, after {new_ids:?}");
        assert!(s.latest_checkpoint.unwrap() > latest.checkpoint_id);
    });
}

#[test]
fn the_job_finishes_after_the_final_checkpoint_commits_and_stays_finished_across_a_restart() {
    sim(5, || async {
        let w = start_world(&[1, 1]);
        w.submit(spec(2)).await.unwrap();
        w.wait_status("a checkpoint", |s| s.checkpoints_completed >= 1).await;
        let (attempt, spec, _) = w.tms[0].state.lock().unwrap().deployed.clone().unwrap();
        let graph = JobRegistry::builtin().build(&spec).unwrap().expand();
        for subtask in graph.source_subtasks() {
            assert_eq!(w.call_jm(JmRequest::EndOfInput { attempt, subtask }).await, JmResponse::Ok);
        }
        let s = w.wait_status("finished", |s| s.state == JobState::Finished).await;
        let final_id = w.tms[0].triggers().into_iter().find(|t| t.2).expect("a final checkpoint was triggered").1;
        assert_eq!(s.latest_checkpoint, Some(final_id));
        let finished = w.blob_get(ha_finished_key("wc")).await.expect("ha/finished written");
        assert_eq!(String::from_utf8(finished).unwrap(), final_id.0.to_string());
        for tm in &w.tms {
            let reqs = tm.requests();
            let complete = reqs.iter().position(|(_, r)| matches!(r, TmRequest::NotifyComplete { checkpoint_id, .. } if *checkpoint_id == final_id));
            let cancel = reqs.iter().rposition(|(_, r)| matches!(r, TmRequest::Cancel { .. }));
            assert!(complete.is_some() && cancel > complete, "tm{}: the final commit, then the cancel: {reqs:?}", tm.id);
        }
        // A restarted job manager does not run a finished job again.
        let h = Handle::current();
        h.kill(w.jm.id());
        h.restart(w.jm.id());
        let deploys = w.tms[0].deploys().len();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let s = w.wait_status("finished after restart", |s| s.state == JobState::Finished).await;
        assert_eq!(s.latest_checkpoint, Some(final_id));
        assert_eq!(w.tms[0].deploys().len(), deploys, "no redeploy of a finished job");
    });
}

#[test]
fn a_corrupt_latest_checkpoint_fails_the_job_loudly_instead_of_restarting_empty() {
    sim(6, || async {
        let w = start_world(&[1, 1]);
        w.submit(spec(2)).await.unwrap();
        w.wait_status("a checkpoint", |s| s.checkpoints_completed >= 1).await;
        let h = Handle::current();
        h.kill(w.jm.id());
        let pointer = w.latest_pointer().await.unwrap();
        w.blob_put(pointer.clone(), b"not checkpoint metadata".to_vec()).await;
        let deploys = w.tms[0].deploys().len();
        h.restart(w.jm.id());
        let s = w.wait_status("failed", |s| matches!(s.state, JobState::Failed(_))).await;
        let JobState::Failed(reason) = s.state else { unreachable!() };
        assert!(reason.contains(&pointer), "the reason names the checkpoint: {reason}");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(w.tms[0].deploys().len(), deploys, "never restarted empty");
    });
}

#[test]
fn bad_submissions_are_refused_with_the_reason() {
    sim(7, || async {
        let w = start_world(&[1]);
        let err = w.submit(JobSpec { job: "nope".into(), ..spec(1) }).await.unwrap_err();
        assert!(matches!(&err, ClientError::Refused(m) if m.contains("unknown job 'nope'")), "{err}");
        assert_eq!(w.status().await.unwrap().state, JobState::NoJob);
        w.submit(spec(1)).await.unwrap();
        w.submit(spec(1)).await.expect("resubmitting the running job is a no-op");
        let err = w.submit(JobSpec { name: "other".into(), ..spec(1) }).await.unwrap_err();
        assert!(matches!(&err, ClientError::Refused(m) if m.contains("one job at a time")), "{err}");
    });
}
