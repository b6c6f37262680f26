//! One subtask: a tokio task that owns an operator chain, its state, its input gate (a
//! [`BarrierAligner`] over one [`DataReceiver`] per input channel) and its output channels —
//! Flink's `StreamTask` with its `MailboxProcessor`: one loop, every input, control message and
//! timer handled in order, no hidden threads.
//!
//! The loop takes the next ready event — a control message (trigger a barrier at a source,
//! checkpoint complete / aborted), an element from an input channel that the aligner does **not**
//! report blocked (a blocked channel is simply not read: its credit stops and its producer is
//! backpressured), a fetched batch (sources), or the processing-time tick — and handles it to
//! the end before taking the next one. Output channels are flushed whenever the loop is about to
//! wait, and right after a barrier.
//!
//! A checkpoint at this subtask (the aligner's `Checkpoint`, or a trigger at a source, which
//! lands between two fetched batches): `snapshot_state` on every chained operator and carry out
//! their commands (a sink's `PreCommit` is done at the broker before anything is acknowledged:
//! FLINK-5701), capture keyed and operator state synchronously, forward the barrier on every
//! output, then write the blobs in a spawned task while processing goes on, and acknowledge
//! (or decline, if a write failed) to the job manager from that task.
//!
//! A bounded input ends as in Flink's FLIP-147 (`StreamTask#endData`): when the chain's input
//! ends — at a source, its reader reached its stopping offsets; elsewhere, the aligner's
//! `EndOfData` (every input channel delivered `EndOfData` or finished, after `Watermark::MAX`) —
//! the subtask runs every operator's `end_of_input` once (their output flows on) and sends
//! `EndOfData` on every output; a source then tells the job manager. The final checkpoint's
//! barrier follows `EndOfData` on every channel, so what operators emit at the end of their input
//! is inside the final checkpoint and its sinks' committed transactions. `EndOfPartition` comes
//! only after: at a source once a final checkpoint it took part in completed, elsewhere once
//! every input channel finished (the aligner's `EndOfInput`).
//!
//! **Finished on restore** (FLIP-147; Flink's `TaskStateSnapshot#isTaskFinished` and
//! `StreamTask#isTaskDeployedAsFinished`): every snapshot records whether the data had ended
//! ([`SubtaskStateHandle::data_ended`](floe_core::coordinator::SubtaskStateHandle)). A checkpoint
//! taken after `end_data` holds what `end_of_input` emitted (in its sinks' transactions, which it
//! commits), so a subtask restored from such a snapshot does not run `end_of_input` again: when
//! its input ends (a source: at once, its offsets restored at their stopping offsets; elsewhere:
//! the aligner's `EndOfData`) it only sends `EndOfData` on (a source still tells the job manager),
//! and takes part in the remaining checkpoints, the final one included.

use super::sink_io::SinkIo;
use super::state_io::{self, CapturedSnapshot};
use super::wire::{self, ChannelElement};
use super::{call_jm, call_jm_until_answered, AbortOnDrop, Control, InputChannel};
use crate::blob::BlobClient;
use crate::broker::{BrokerClient, IsolationLevel};
use crate::cluster::jobs::JobSpec;
use crate::cluster::protocol::{ChannelHello, JmRequest, JmResponse, SubtaskDeployment};
use crate::transport::channel::{ChannelError, DataReceiver, DataSender};
use crate::transport::RpcClient;
use floe_core::aligner::{AbortReason, AlignerConfig, AlignerOutput, BarrierAligner};
use floe_core::element::{Barrier, CheckpointingMode, Watermark};
use floe_core::graph::{AnyBatch, DynOperator, EdgeFns, ExecutionGraph, JobVertex, Partitioner, RouteState};
use floe_core::ids::{AttemptId, ChannelIndex, CheckpointId, Offset, OperatorId, PartitionId, SubtaskId};
use floe_core::key_groups::KeyGroupRange;
use floe_core::operator::{OperatorCommand, OperatorContext, OperatorError, SourceCommand};
use floe_core::state::{KeyedStateBackend, OperatorStateStore};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Processing time is advanced (timers fire) this often.
pub const PROCESSING_TIME_TICK_MS: u64 = 100;
/// A consumer waits this long for every input channel to connect before it fails.
pub const INPUTS_WAIT_MS: u64 = 15_000;
/// Batches that wait between an input channel's reader and the subtask loop, per channel.
pub const INPUT_QUEUE_BATCHES_MAX: usize = 2;
/// A fetch that found nothing waits this long before it is answered (a short poll).
pub const FETCH_IDLE_MS: u64 = 5;
/// A failed fetch is retried after this long.
pub const FETCH_RETRY_BACKOFF_MS: u64 = 50;
/// The most bytes one fetch asks for.
pub const FETCH_BYTES_MAX: u32 = 1 << 20;
/// An output edge keeps its batch-encoding buffer between batches up to this capacity.
pub const ENCODE_SCRATCH_BYTES_MAX: usize = 4 << 20;
/// Snapshot writes in flight at once per subtask; one more waits (and holds up processing).
pub const SNAPSHOT_WRITES_OUTSTANDING_MAX: usize = 4;

/// Everything a subtask needs to run.
pub(super) struct SubtaskSetup {
    pub attempt: AttemptId,
    pub job: JobSpec,
    pub graph: Arc<ExecutionGraph>,
    pub deployment: SubtaskDeployment,
    pub restored_from: Option<CheckpointId>,
    pub locations: BTreeMap<SubtaskId, SocketAddr>,
    pub jm: RpcClient<JmRequest, JmResponse>,
    pub broker: BrokerClient,
    pub blob: BlobClient,
    pub control: mpsc::Receiver<Control>,
    pub inputs: mpsc::Receiver<InputChannel>,
    /// The newest checkpoint whose completion this subtask has fully carried out (its sink's
    /// commits done): the task manager answers `NotifyComplete` only once every subtask got there.
    pub completed: watch::Sender<u64>,
}

/// Runs a subtask until it fails (the caller reports the failure) or is dropped (cancelled).
/// After its input ended it keeps running: it still takes the final checkpoint's notification.
pub(super) async fn run_subtask(setup: SubtaskSetup) -> Result<(), String> {
    let mut task = Task::start(setup).await?;
    task.run().await
}

/// One output edge: its channels, in writer order.
struct EdgeOutput {
    partitioner: Partitioner,
    fns: EdgeFns,
    targets: u32,
    route: RouteState,
    senders: Vec<DataSender<ChannelElement>>,
    /// The encoding buffer, reused batch after batch (kept only up to
    /// [`ENCODE_SCRATCH_BYTES_MAX`] of capacity).
    scratch: Vec<u8>,
}

/// An answered fetch.
struct FetchDone {
    partition: PartitionId,
    from: Offset,
    result: Result<Vec<(Offset, Vec<u8>)>, String>,
}

enum Event {
    Control(Option<Control>),
    Input(usize, Option<Result<Option<ChannelElement>, ChannelError>>),
    Fetched(FetchDone),
    Tick,
}

struct Task {
    attempt: AttemptId,
    subtask: SubtaskId,
    vertex: JobVertex,
    job: JobSpec,
    ops: Vec<(OperatorId, Box<dyn DynOperator>)>,
    stores: Vec<OperatorStateStore>,
    keyed: Option<KeyedStateBackend>,
    commands: Vec<OperatorCommand>,
    outputs: Vec<EdgeOutput>,
    /// Output channels have bytes buffered since the last flush.
    dirty: bool,
    sink: Option<SinkIo>,
    jm: RpcClient<JmRequest, JmResponse>,
    broker: BrokerClient,
    blob: BlobClient,
    control: mpsc::Receiver<Control>,
    completed: watch::Sender<u64>,
    /// Input gate (empty for a source).
    aligner: Option<BarrierAligner<Vec<u8>>>,
    input_rx: Vec<mpsc::Receiver<Result<Option<ChannelElement>, ChannelError>>>,
    input_done: Vec<bool>,
    input_fns: Vec<EdgeFns>,
    next_input: usize,
    _readers: Vec<AbortOnDrop>,
    aligning: Option<CheckpointId>,
    fetch_tx: mpsc::Sender<FetchDone>,
    fetch_rx: mpsc::Receiver<FetchDone>,
    fetches: BTreeMap<(PartitionId, Offset), AbortOnDrop>,
    writes: Arc<Semaphore>,
    write_tasks: Vec<AbortOnDrop>,
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// A source sent `EndOfInput` to the job manager.
    end_of_input_sent: bool,
    /// The chain's `end_of_input` ran and `EndOfData` went out on every output (once per attempt;
    /// for a subtask finished on restore, only `EndOfData`). Recorded in every later snapshot.
    data_ended: bool,
    /// The snapshot this subtask restored from was taken after its data ended (FLIP-147's
    /// finished on restore): `end_of_input` already ran, and its output is in that checkpoint.
    finished_on_restore: bool,
    /// The output channels ended (at a source once a final checkpoint it took part in completed,
    /// elsewhere after the input ended).
    outputs_finished: bool,
    /// At a source: the newest final checkpoint whose barrier it emitted. Its outputs stay open
    /// until one of them completes, so a final checkpoint that expires or is declined can be
    /// followed by another one (FLIP-147: a finished task waits for the final checkpoint).
    final_barrier: Option<CheckpointId>,
}

fn now_ms() -> u64 {
    #[allow(clippy::disallowed_methods)] // virtual time under madsim (processing time is the host clock)
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn op_err(what: &str) -> impl Fn(OperatorError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Task {
    async fn start(setup: SubtaskSetup) -> Result<Task, String> {
        let SubtaskSetup { attempt, job, graph, deployment, restored_from, locations, jm, broker, blob, control, mut inputs, completed } = setup;
        let subtask = deployment.subtask;
        let finished_on_restore = deployment.restore.as_ref().is_some_and(|r| r.data_ended);
        let vertex = graph.vertex(subtask.operator).cloned().ok_or_else(|| format!("{subtask}: no such vertex in the job"))?;
        if subtask.index.0 >= vertex.parallelism {
            return Err(format!("{subtask}: index outside parallelism {}", vertex.parallelism));
        }
        let ops = graph.instantiate(vertex.id);
        let mut stores: Vec<OperatorStateStore> = ops.iter().map(|_| OperatorStateStore::new()).collect();
        let mut keyed = vertex.is_keyed.then(|| {
            KeyedStateBackend::new(vertex.max_parallelism, KeyGroupRange::for_operator_index(vertex.max_parallelism, vertex.parallelism, subtask.index))
        });
        if let Some(restore) = &deployment.restore {
            tracing::info!(event = "restore_begun", attempt = attempt.0, subtask = %subtask, checkpoint = restored_from.map(|c| c.0));
            if let Some(backend) = keyed.as_mut() {
                state_io::restore_keyed(&blob, restore, backend).await?;
            }
            let mut refs: Vec<(OperatorId, &mut OperatorStateStore)> = ops.iter().map(|(id, _)| *id).zip(stores.iter_mut()).collect();
            state_io::restore_operators(&blob, restore, vertex.parallelism, &mut refs).await?;
        }
        let sink = if vertex.is_sink {
            let io = SinkIo::new(broker.clone(), job.output_topic.clone(), attempt, subtask);
            io.ensure_topic(job.parallelism).await.map_err(|e| e.to_string())?;
            Some(io)
        } else {
            None
        };
        // Outputs: connect to every consumer.
        let mut outputs = Vec::new();
        for edge in graph.out_edges(vertex.id) {
            let consumer = graph.vertex(edge.to).ok_or("edge to an unknown vertex")?;
            let mut senders = Vec::new();
            for channel in graph.outputs_of(subtask, edge.index) {
                let addr = *locations.get(&channel.consumer).ok_or_else(|| format!("no location for {}", channel.consumer))?;
                let hello = ChannelHello { attempt, edge: edge.index, producer: subtask, consumer: channel.consumer };
                let sender = wire::connect_channel(addr, &hello).await.map_err(|e| format!("connect to {} at {addr}: {e}", channel.consumer))?;
                senders.push(sender);
            }
            outputs.push(EdgeOutput { partitioner: edge.partitioner, fns: edge.fns.clone(), targets: consumer.parallelism, route: RouteState::default(), senders, scratch: Vec::new() });
        }
        // Inputs: wait for every producer to connect.
        let gate = graph.inputs_of(subtask);
        let mut receivers: Vec<Option<DataReceiver<ChannelElement>>> = gate.iter().map(|_| None).collect();
        #[allow(clippy::disallowed_methods)] // virtual time under madsim (processing time is the host clock)
        let deadline = tokio::time::Instant::now() + Duration::from_millis(INPUTS_WAIT_MS);
        while receivers.iter().any(Option::is_none) {
            #[allow(clippy::disallowed_methods)] // virtual time under madsim (processing time is the host clock)
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, inputs.recv()).await {
                Ok(Some(InputChannel { index, receiver })) => {
                    let slot = receivers.get_mut(index.0 as usize).ok_or_else(|| format!("input channel {index} outside the gate"))?;
                    *slot = Some(receiver);
                }
                Ok(None) => return Err("the task manager dropped the input registry".into()),
                Err(_) => {
                    let missing = gate.iter().zip(&receivers).filter(|(_, r)| r.is_none()).map(|(c, _)| c.producer.to_string()).collect::<Vec<_>>();
                    return Err(format!("input channels from {} did not connect within {INPUTS_WAIT_MS} ms", missing.join(", ")));
                }
            }
        }
        let mut readers = Vec::new();
        let mut input_rx = Vec::new();
        for receiver in receivers.into_iter().flatten() {
            let (tx, rx) = mpsc::channel(INPUT_QUEUE_BATCHES_MAX);
            readers.push(AbortOnDrop(tokio::spawn(read_channel(receiver, tx))));
            input_rx.push(rx);
        }
        let input_fns: Vec<EdgeFns> = gate.iter().map(|c| graph.edges[c.edge].fns.clone()).collect();
        let aligner = if gate.is_empty() {
            None
        } else {
            let config = match job.checkpointing {
                CheckpointingMode::ExactlyOnce => AlignerConfig::exactly_once(job.alignment_buffer_bytes_max),
                CheckpointingMode::AtLeastOnce => AlignerConfig::at_least_once(),
            };
            Some(BarrierAligner::try_new(gate.len() as u32, config).map_err(|e| e.to_string())?)
        };
        let (fetch_tx, fetch_rx) = mpsc::channel(16);
        let mut task = Task {
            attempt,
            subtask,
            vertex,
            job,
            ops,
            stores,
            keyed,
            commands: Vec::new(),
            outputs,
            dirty: false,
            sink,
            jm,
            broker,
            blob,
            control,
            completed,
            aligner,
            input_done: vec![false; input_rx.len()],
            input_rx,
            input_fns,
            next_input: 0,
            _readers: readers,
            aligning: None,
            fetch_tx,
            fetch_rx,
            fetches: BTreeMap::new(),
            writes: Arc::new(Semaphore::new(SNAPSHOT_WRITES_OUTSTANDING_MAX)),
            write_tasks: Vec::new(),
            tick: Box::pin(tokio::time::sleep(Duration::from_millis(PROCESSING_TIME_TICK_MS))),
            end_of_input_sent: false,
            data_ended: false,
            finished_on_restore,
            outputs_finished: false,
            final_barrier: None,
        };
        for i in 0..task.ops.len() {
            task.call(i, |op, ctx| op.initialize_state(ctx, restored_from)).map_err(op_err("initialize_state"))?;
        }
        task.run_commands().await?;
        tracing::info!(event = "subtask_started", attempt = attempt.0, subtask = %subtask, restored_from = restored_from.map(|c| c.0));
        if finished_on_restore && task.is_source() && !task.call(0, |op, _| op.as_source().is_some_and(|s| s.is_end_of_input())) {
            // Its snapshot says its data had ended, yet its restored offsets are short of the
            // stopping offsets: reading on would emit records after its `EndOfData`.
            return Err(format!("{subtask}: restored as finished, but its source is not at its stopping offsets"));
        }
        task.check_source_end().await?;
        Ok(task)
    }

    /// Calls operator `i` with its context (the head gets the keyed backend).
    fn call<R>(&mut self, i: usize, f: impl FnOnce(&mut dyn DynOperator, &mut OperatorContext<'_>) -> R) -> R {
        let mut ctx = OperatorContext {
            now_ms: now_ms(),
            subtask: self.subtask.index,
            parallelism: self.vertex.parallelism,
            attempt: self.attempt,
            keyed: if i == 0 { self.keyed.as_mut() } else { None },
            operator_state: &mut self.stores[i],
            commands: &mut self.commands,
        };
        f(self.ops[i].1.as_mut(), &mut ctx)
    }

    fn is_source(&self) -> bool {
        self.vertex.is_source
    }

    async fn run(&mut self) -> Result<(), String> {
        loop {
            let ready = std::future::poll_fn(|cx| Poll::Ready(match self.poll_event(cx) {
                Poll::Ready(e) => Some(e),
                Poll::Pending => None,
            }))
            .await;
            let event = match ready {
                Some(event) => event,
                None => {
                    self.flush_outputs().await?;
                    std::future::poll_fn(|cx| self.poll_event(cx)).await
                }
            };
            self.handle(event).await?;
        }
    }

    fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Event> {
        if let Poll::Ready(c) = self.control.poll_recv(cx) {
            return Poll::Ready(Event::Control(c));
        }
        if let Poll::Ready(Some(done)) = self.fetch_rx.poll_recv(cx) {
            return Poll::Ready(Event::Fetched(done));
        }
        let n = self.input_rx.len();
        for k in 0..n {
            let i = (self.next_input + k) % n;
            let blocked = self.aligner.as_ref().is_some_and(|a| a.is_blocked(ChannelIndex(i as u32)));
            if self.input_done[i] || blocked {
                continue;
            }
            if let Poll::Ready(item) = self.input_rx[i].poll_recv(cx) {
                self.next_input = (i + 1) % n;
                return Poll::Ready(Event::Input(i, item));
            }
        }
        if self.tick.as_mut().poll(cx).is_ready() {
            #[allow(clippy::disallowed_methods)] // virtual time under madsim (processing time is the host clock)
            let next = tokio::time::Instant::now() + Duration::from_millis(PROCESSING_TIME_TICK_MS);
            self.tick.as_mut().reset(next);
            return Poll::Ready(Event::Tick);
        }
        Poll::Pending
    }

    async fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Control(None) => Err("the task manager dropped the control channel".into()),
            Event::Control(Some(Control::Trigger(barrier))) => {
                if !self.is_source() {
                    tracing::warn!(subtask = %self.subtask, "a barrier trigger for a subtask that is not a source: ignored");
                    return Ok(());
                }
                if self.outputs_finished {
                    return Ok(());
                }
                self.checkpoint(barrier).await?;
                if barrier.is_final {
                    self.final_barrier = self.final_barrier.max(Some(barrier.checkpoint_id));
                }
                Ok(())
            }
            Event::Control(Some(Control::Complete(id))) => {
                for i in 0..self.ops.len() {
                    self.call(i, |op, ctx| op.notify_checkpoint_complete(ctx, id)).map_err(op_err("notify_checkpoint_complete"))?;
                }
                self.run_commands().await?;
                self.completed.send_if_modified(|done| {
                    let newer = id.0 > *done;
                    *done = (*done).max(id.0);
                    newer
                });
                // A final checkpoint this source took part in completed: only now may the
                // outputs end. Ending them at the final barrier left no source to carry the
                // barrier of a retried final checkpoint if that one expired.
                if self.final_barrier.is_some_and(|f| id >= f) {
                    self.finish_outputs().await?;
                }
                Ok(())
            }
            Event::Control(Some(Control::Aborted(id))) => {
                for i in 0..self.ops.len() {
                    self.call(i, |op, ctx| op.notify_checkpoint_aborted(ctx, id)).map_err(op_err("notify_checkpoint_aborted"))?;
                }
                self.run_commands().await
            }
            Event::Input(i, None) => {
                self.input_done[i] = true;
                Ok(())
            }
            Event::Input(i, Some(Err(e))) => Err(wire::channel_failure(&format!("input {i}"), &e)),
            Event::Input(i, Some(Ok(None))) => {
                self.input_done[i] = true;
                let finished = self.aligner.as_ref().is_some_and(|a| a.is_finished(ChannelIndex(i as u32)));
                let buffered_end = self.aligner.as_ref().is_some_and(|a| a.is_blocked(ChannelIndex(i as u32)));
                if finished || buffered_end {
                    Ok(())
                } else {
                    Err(format!("input {i} closed before its end of partition"))
                }
            }
            Event::Input(i, Some(Ok(Some(element)))) => {
                let (element, size) = element.into_stream_element();
                let aligner = self.aligner.as_mut().expect("a subtask with inputs has an aligner");
                aligner.push(ChannelIndex(i as u32), element, size).map_err(|e| format!("input {i}: {e}"))?;
                let aligning = aligner.aligning();
                if aligning.is_some() && aligning != self.aligning {
                    tracing::info!(event = "alignment_started", attempt = self.attempt.0, subtask = %self.subtask, checkpoint = aligning.map(|c| c.0));
                }
                self.aligning = aligning;
                while let Some(output) = self.aligner.as_mut().and_then(BarrierAligner::poll) {
                    self.handle_aligned(output).await?;
                }
                Ok(())
            }
            Event::Fetched(done) => self.on_fetched(done).await,
            Event::Tick => {
                for i in 0..self.ops.len() {
                    let out = self.call(i, |op, ctx| op.advance_processing_time(ctx)).map_err(op_err("advance_processing_time"))?;
                    self.push_chain(i + 1, out).await?;
                }
                Ok(())
            }
        }
    }

    async fn handle_aligned(&mut self, output: AlignerOutput<Vec<u8>>) -> Result<(), String> {
        match output {
            AlignerOutput::Records { channel, records } => {
                for bytes in records {
                    let batch = self.input_fns[channel.0 as usize].decode(&bytes).map_err(|e| format!("input {channel}: {e}"))?;
                    self.push_chain(0, batch).await?;
                }
                Ok(())
            }
            AlignerOutput::Watermark(w) => self.watermark(w).await,
            AlignerOutput::Checkpoint(barrier) => self.checkpoint(barrier).await,
            AlignerOutput::CheckpointAborted { checkpoint_id, reason } => {
                let overtaken_by = match reason {
                    AbortReason::Subsumed { by } => Some(by),
                    AbortReason::AlignmentBufferFull { .. } => None,
                };
                self.decline(checkpoint_id, format!("alignment aborted: {reason:?}"), overtaken_by);
                Ok(())
            }
            AlignerOutput::EndOfData => self.end_data().await,
            AlignerOutput::EndOfInput => {
                // The aligner outputs EndOfData first; should it not have, end the data here.
                self.end_data().await?;
                self.finish_outputs().await
            }
        }
    }

    /// Runs `batch` through operators `from..` and routes the chain's output.
    async fn push_chain(&mut self, from: usize, batch: AnyBatch) -> Result<(), String> {
        let mut batch = batch;
        for i in from..self.ops.len() {
            batch = self.call(i, |op, ctx| op.process_batch(ctx, batch)).map_err(op_err("process_batch"))?;
        }
        self.run_commands().await?;
        self.emit(batch).await
    }

    async fn watermark(&mut self, w: Watermark) -> Result<(), String> {
        for i in 0..self.ops.len() {
            let out = self.call(i, |op, ctx| op.process_watermark(ctx, w)).map_err(op_err("process_watermark"))?;
            self.push_chain(i + 1, out).await?;
        }
        self.broadcast(&ChannelElement::Watermark(w)).await
    }

    /// The chain's input ended: every operator's `end_of_input`, head first (each one's output
    /// flows through the rest of the chain and out), then `EndOfData` on every output. Once per
    /// attempt; later calls do nothing. A subtask finished on restore skips `end_of_input` (it
    /// ran before the checkpoint restored from, whose sinks commit its output) and only sends
    /// `EndOfData`.
    async fn end_data(&mut self) -> Result<(), String> {
        if self.data_ended {
            return Ok(());
        }
        self.data_ended = true;
        let chain = if self.finished_on_restore { 0 } else { self.ops.len() };
        for i in 0..chain {
            let out = self.call(i, |op, ctx| op.end_of_input(ctx)).map_err(op_err("end_of_input"))?;
            self.push_chain(i + 1, out).await?;
        }
        tracing::info!(event = "end_of_input", attempt = self.attempt.0, subtask = %self.subtask);
        debug_assert!(!self.outputs_finished, "end of data goes out before the end of partition");
        self.broadcast(&ChannelElement::EndOfData).await
    }

    /// Routes the chain's output batch over every output edge.
    async fn emit(&mut self, batch: AnyBatch) -> Result<(), String> {
        let Some(first) = self.outputs.first() else { return Ok(()) };
        if first.fns.len(&batch) == 0 {
            return Ok(());
        }
        if self.outputs_finished {
            return Err("output after the end of partition".into());
        }
        // More than one out edge: each gets its own copy (encode once, decode per edge).
        let mut batches = vec![batch];
        if self.outputs.len() > 1 {
            let bytes = first.fns.encode(&batches[0]).map_err(|e| e.to_string())?;
            batches = self.outputs.iter().map(|o| o.fns.decode(&bytes)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        }
        let mut parts = Vec::new();
        for (out, batch) in self.outputs.iter_mut().zip(batches) {
            parts.clear();
            out.fns.route(batch, &out.partitioner, out.targets, &mut out.route, &mut parts).map_err(op_err("route"))?;
            for (target, sub) in parts.drain(..) {
                let mut bytes = std::mem::take(&mut out.scratch);
                bytes.clear();
                out.fns.encode_into(&sub, &mut bytes).map_err(|e| e.to_string())?;
                let sender = out.senders.get_mut(target as usize).ok_or_else(|| format!("route to channel {target} of {}", out.targets))?;
                let element = ChannelElement::Records(bytes);
                sender.send(&element).await.map_err(|e| wire::channel_failure("output", &e))?;
                if let ChannelElement::Records(bytes) = element {
                    if bytes.capacity() <= ENCODE_SCRATCH_BYTES_MAX {
                        out.scratch = bytes;
                    }
                }
            }
        }
        self.dirty = true;
        Ok(())
    }

    async fn broadcast(&mut self, element: &ChannelElement) -> Result<(), String> {
        if self.outputs_finished {
            return Ok(());
        }
        for out in &mut self.outputs {
            for sender in &mut out.senders {
                sender.send(element).await.map_err(|e| wire::channel_failure("output", &e))?;
            }
        }
        self.dirty = true;
        Ok(())
    }

    async fn flush_outputs(&mut self) -> Result<(), String> {
        if !self.dirty {
            return Ok(());
        }
        for out in &mut self.outputs {
            for sender in &mut out.senders {
                sender.flush().await.map_err(|e| wire::channel_failure("output", &e))?;
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Sends the end of partition on every output and closes the channels.
    async fn finish_outputs(&mut self) -> Result<(), String> {
        if self.outputs_finished {
            return Ok(());
        }
        self.broadcast(&ChannelElement::EndOfPartition).await?;
        for out in &mut self.outputs {
            for sender in out.senders.drain(..) {
                sender.finish().await.map_err(|e| wire::channel_failure("output", &e))?;
            }
        }
        self.outputs_finished = true;
        self.dirty = false;
        Ok(())
    }

    /// Carries out the operators' commands, in order.
    async fn run_commands(&mut self) -> Result<(), String> {
        if self.commands.is_empty() {
            return Ok(());
        }
        let commands = std::mem::take(&mut self.commands);
        for command in commands {
            match command {
                OperatorCommand::Sink(command) => {
                    let sink = self.sink.as_mut().ok_or("a sink command from a vertex without a sink")?;
                    sink.run(command).await.map_err(|e| e.to_string())?;
                }
                OperatorCommand::Source(SourceCommand::Fetch { partition, from, max_records }) => self.spawn_fetch(partition, from, max_records),
            }
        }
        Ok(())
    }

    fn spawn_fetch(&mut self, partition: PartitionId, from: Offset, max_records: u32) {
        let (broker, tx, topic) = (self.broker.clone(), self.fetch_tx.clone(), self.job.input_topic.clone());
        let handle = tokio::spawn(async move {
            let result = match broker.fetch(&topic, partition, from, max_records, FETCH_BYTES_MAX, IsolationLevel::ReadUncommitted).await {
                Ok(fetched) => {
                    if fetched.records.is_empty() {
                        tokio::time::sleep(Duration::from_millis(FETCH_IDLE_MS)).await;
                    }
                    Ok(fetched.iter().map(|(offset, record)| (offset, record.to_vec())).collect())
                }
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(FETCH_RETRY_BACKOFF_MS)).await;
                    Err(e.to_string())
                }
            };
            let _ = tx.send(FetchDone { partition, from, result }).await;
        });
        self.fetches.insert((partition, from), AbortOnDrop(handle));
    }

    async fn on_fetched(&mut self, done: FetchDone) -> Result<(), String> {
        self.fetches.remove(&(done.partition, done.from));
        match done.result {
            Ok(records) => {
                let batch = self.call(0, |op, ctx| match op.as_source() {
                    Some(source) => source.on_fetched(ctx, done.partition, done.from, records),
                    None => Err(OperatorError::Protocol("fetched records for a head that is not a source".into())),
                });
                let batch = batch.map_err(op_err("source"))?;
                self.push_chain(1, batch).await?;
            }
            Err(e) => {
                tracing::debug!(subtask = %self.subtask, partition = %done.partition, error = %e, "fetch failed; retrying");
                self.call(0, |op, ctx| {
                    if let Some(source) = op.as_source() {
                        source.on_fetch_failed(done.partition, done.from);
                        source.request_fetches(ctx);
                    }
                });
                self.run_commands().await?;
            }
        }
        self.check_source_end().await
    }

    /// A source at the end of its input: end the chain's input, send `EndOfData`, and only then
    /// tell the job manager (once), so the final barrier follows `EndOfData` on every channel.
    async fn check_source_end(&mut self) -> Result<(), String> {
        if self.end_of_input_sent || !self.is_source() {
            return Ok(());
        }
        let ended = self.call(0, |op, _| op.as_source().is_some_and(|s| s.is_end_of_input()));
        if !ended {
            return Ok(());
        }
        self.end_of_input_sent = true;
        self.end_data().await?;
        let (jm, attempt, subtask) = (self.jm.clone(), self.attempt, self.subtask);
        self.spawn_background(async move {
            call_jm_until_answered(&jm, JmRequest::EndOfInput { attempt, subtask }).await;
        });
        Ok(())
    }

    /// Checkpoint `barrier` at this subtask: snapshot, forward, then write and acknowledge.
    async fn checkpoint(&mut self, barrier: Barrier) -> Result<(), String> {
        let id = barrier.checkpoint_id;
        for i in 0..self.ops.len() {
            self.call(i, |op, ctx| op.snapshot_state(ctx, id)).map_err(op_err("snapshot_state"))?;
        }
        // Sinks pre-commit here, before anything is acknowledged (FLINK-5701).
        self.run_commands().await?;
        let keyed = self.keyed.as_ref().map(|k| k.snapshot(id));
        let mut operators = BTreeMap::new();
        for ((op, _), store) in self.ops.iter().zip(&self.stores) {
            operators.insert(*op, store.snapshot().map_err(|e| format!("operator state of {op}: {e}"))?);
        }
        tracing::info!(event = "snapshot_taken", attempt = self.attempt.0, subtask = %self.subtask, checkpoint = id.0);
        self.broadcast(&ChannelElement::Barrier(barrier)).await?;
        self.flush_outputs().await?;
        let snapshot = CapturedSnapshot {
            job: self.job.name.clone(),
            checkpoint: id,
            subtask: self.subtask,
            attempt: self.attempt,
            keyed,
            operators,
            // Finished on restore, its `end_of_input` ran before: still so in every later
            // snapshot, even one taken before its input's `EndOfData` arrives again.
            data_ended: self.data_ended || self.finished_on_restore,
        };
        let permit = self.writes.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (blob, jm, attempt, subtask) = (self.blob.clone(), self.jm.clone(), self.attempt, self.subtask);
        self.spawn_background(async move {
            let _permit = permit;
            match state_io::write_snapshot(&blob, snapshot).await {
                Ok((handle, bytes)) => {
                    tracing::info!(event = "snapshot_written", attempt = attempt.0, subtask = %subtask, checkpoint = id.0, bytes);
                    call_jm(&jm, JmRequest::Acknowledge { attempt, checkpoint_id: id, subtask, handle }).await;
                }
                Err(reason) => {
                    tracing::info!(event = "checkpoint_declined", attempt = attempt.0, subtask = %subtask, checkpoint = id.0, reason = %reason);
                    call_jm(&jm, JmRequest::Decline { attempt, checkpoint_id: id, subtask, reason, overtaken_by: None }).await;
                }
            }
        });
        Ok(())
    }

    fn decline(&mut self, checkpoint_id: CheckpointId, reason: String, overtaken_by: Option<CheckpointId>) {
        tracing::info!(event = "checkpoint_declined", attempt = self.attempt.0, subtask = %self.subtask, checkpoint = checkpoint_id.0, reason = %reason);
        let (jm, attempt, subtask) = (self.jm.clone(), self.attempt, self.subtask);
        self.spawn_background(async move {
            call_jm(&jm, JmRequest::Decline { attempt, checkpoint_id, subtask, reason, overtaken_by }).await;
        });
    }

    /// Spawns work that outlives this call but not the subtask.
    fn spawn_background(&mut self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.write_tasks.retain(|t| !t.0.is_finished());
        self.write_tasks.push(AbortOnDrop(tokio::spawn(work)));
    }
}

/// Moves one input channel's elements into a small queue; stops after the end or an error.
async fn read_channel(mut receiver: DataReceiver<ChannelElement>, tx: mpsc::Sender<Result<Option<ChannelElement>, ChannelError>>) {
    loop {
        let item = receiver.recv().await;
        let last = !matches!(item, Ok(Some(_)));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}
