//! The durable broker: [`BrokerState`] over a [`Disk`].
//!
//! [`Broker::open`] recovers: it scans the metadata log and every partition log, truncates each
//! torn tail (a partial last entry, or one failing its crc), replays the entries into a fresh
//! state, completes the markers of transactions decided before the crash, and persists that.
//!
//! [`Broker::execute`] is **group commit**: it applies a batch of requests in order to the state,
//! then appends all metadata entries and fsyncs the metadata log, then appends all partition
//! entries and fsyncs each touched partition log once, and only then releases the answers. The
//! metadata goes first so that a transaction marker (or a transactional batch) is never durable
//! before the decision (or the partition registration) it depends on. If any disk operation
//! fails, no answer of the batch is released (all become `Io`) and the broker rebuilds its state
//! from disk before the next request, so the state never runs ahead of what the disk holds.
//! Recovery also fsyncs every log it reads before serving it: after a failed fsync a file can
//! hold complete entries that are not durable, and a reader must never see those. Like Kafka's high watermark, a fetch answered in a batch is released only after that batch's
//! writes are durable, so no reader ever sees a record that a crash could take back.

use super::log::{self, MetaEntry, PartitionEntry, TornReason, META_LOG_PATH, META_MAGIC, PARTITION_MAGIC};
use super::protocol::{BrokerError, BrokerRequest, BrokerResponse};
use super::state::{BrokerConfig, BrokerState, Staged};
use crate::disk::Disk;
use floe_core::ids::PartitionId;
use std::collections::BTreeMap;
use std::io;

/// Suffix of the temporary file a truncation writes before renaming it over the log.
const TRUNCATE_TMP_SUFFIX: &str = ".truncate-tmp";

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Metadata entries replayed.
    pub meta_entries: usize,
    /// Partition entries replayed, over all partitions.
    pub partition_entries: usize,
    /// Logs whose tail was cut: (path, length found, length kept).
    pub truncated: Vec<(String, u64, u64)>,
    /// Entries written to complete the logs (transaction markers).
    pub completion_entries: usize,
}

/// The broker: its state and its disk.
pub struct Broker<D: Disk> {
    disk: D,
    state: BrokerState,
    /// Set after a failed write: the state may be ahead of the disk until rebuilt.
    needs_recovery: bool,
}

fn io_err(e: io::Error) -> BrokerError {
    BrokerError::Io(e.to_string())
}

async fn read_if_exists<D: Disk>(disk: &D, path: &str, existing: &[String]) -> io::Result<Vec<u8>> {
    if existing.iter().any(|p| p == path) {
        disk.read_all(path).await
    } else {
        Ok(Vec::new())
    }
}

/// Durably cuts `path` to its first `keep` bytes (write a copy, fsync, rename over).
async fn truncate<D: Disk>(disk: &D, path: &str, bytes: &[u8], keep: usize) -> io::Result<()> {
    let tmp = format!("{path}{TRUNCATE_TMP_SUFFIX}");
    disk.create(&tmp).await?;
    if keep > 0 {
        disk.append(&tmp, &bytes[..keep]).await?;
    }
    disk.fsync(&tmp).await?;
    disk.rename(&tmp, path).await
}

impl<D: Disk> Broker<D> {
    /// Recovers the broker from `disk` (an empty disk is an empty broker).
    pub async fn open(disk: D, config: BrokerConfig, now_ms: u64) -> Result<(Self, RecoveryReport), BrokerError> {
        let (state, report) = Self::recover(&disk, config, now_ms).await.map_err(io_err)?;
        Ok((Broker { disk, state, needs_recovery: false }, report))
    }

    async fn recover(disk: &D, config: BrokerConfig, now_ms: u64) -> io::Result<(BrokerState, RecoveryReport)> {
        let mut report = RecoveryReport::default();
        let existing = disk.list("").await?;
        for stale in existing.iter().filter(|p| p.ends_with(TRUNCATE_TMP_SUFFIX)) {
            disk.remove(stale).await?;
        }
        let mut state = BrokerState::new(config);
        let meta_bytes = read_if_exists(disk, META_LOG_PATH, &existing).await?;
        let meta = log::scan::<MetaEntry>(META_MAGIC, &meta_bytes);
        if let Some(reason) = &meta.torn {
            tracing::warn!(path = META_LOG_PATH, ?reason, kept = meta.valid_bytes, found = meta_bytes.len(), "truncating torn tail");
            truncate(disk, META_LOG_PATH, &meta_bytes, meta.valid_bytes).await?;
            report.truncated.push((META_LOG_PATH.to_string(), meta_bytes.len() as u64, meta.valid_bytes as u64));
        } else if !meta_bytes.is_empty() {
            // What recovery reads is served, so it must be durable first (after a failed
            // fsync, the file can hold complete entries that a crash would still take back).
            disk.fsync(META_LOG_PATH).await?;
        }
        for entry in &meta.entries {
            state.apply_meta(entry, now_ms);
        }
        report.meta_entries = meta.entries.len();
        for (topic, partitions) in state.topics() {
            for i in 0..partitions {
                let partition = PartitionId(i);
                let path = log::partition_log_path(&topic, partition);
                let bytes = read_if_exists(disk, &path, &existing).await?;
                let scan = log::scan::<PartitionEntry>(PARTITION_MAGIC, &bytes);
                let mut keep = scan.valid_bytes;
                let mut reason = scan.torn.clone();
                for (i, entry) in scan.entries.iter().enumerate() {
                    if let Err(gap) = state.apply_partition(&topic, partition, entry) {
                        keep = if i == 0 { 0 } else { scan.ends[i - 1] };
                        reason = Some(TornReason::Corrupt(gap.to_string()));
                        break;
                    }
                    report.partition_entries += 1;
                }
                if let Some(reason) = reason {
                    tracing::warn!(%path, ?reason, kept = keep, found = bytes.len(), "truncating torn tail");
                    truncate(disk, &path, &bytes, keep).await?;
                    report.truncated.push((path, bytes.len() as u64, keep as u64));
                } else if !bytes.is_empty() {
                    disk.fsync(&path).await?;
                }
            }
        }
        let staged = state.finish_recovery(now_ms);
        report.completion_entries = staged.meta.len() + staged.partitions.len();
        persist(disk, &staged).await?;
        Ok((state, report))
    }

    /// The state (read-only), for inspection and tests.
    pub fn state(&self) -> &BrokerState {
        &self.state
    }

    /// The disk.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    async fn ensure_recovered(&mut self, now_ms: u64) -> Result<(), BrokerError> {
        if self.needs_recovery {
            let (state, report) = Self::recover(&self.disk, self.state.config().clone(), now_ms)
                .await
                .map_err(|e| BrokerError::Unavailable(format!("recovery after an I/O error failed: {e}")))?;
            tracing::info!(?report, "broker state rebuilt from disk after an I/O error");
            self.state = state;
            self.needs_recovery = false;
        }
        Ok(())
    }

    /// Handles a batch of requests as one group commit (see the module doc). Returns one answer
    /// per request, in order.
    pub async fn execute(&mut self, requests: Vec<BrokerRequest>, now_ms: u64) -> Vec<Result<BrokerResponse, BrokerError>> {
        let count = requests.len();
        if let Err(e) = self.ensure_recovered(now_ms).await {
            return vec![Err(e); count];
        }
        let mut staged = Staged::default();
        let answers: Vec<_> = requests.into_iter().map(|r| self.state.handle(r, now_ms, &mut staged)).collect();
        if let Err(e) = self.commit(&staged).await {
            return vec![Err(e); count];
        }
        debug_assert_eq!(answers.len(), count);
        answers
    }

    /// Aborts every expired transaction (durably) and returns their transactional ids.
    pub async fn expire_transactions(&mut self, now_ms: u64) -> Result<Vec<String>, BrokerError> {
        self.ensure_recovered(now_ms).await?;
        let mut staged = Staged::default();
        let expired = self.state.expire_transactions(now_ms, &mut staged);
        self.commit(&staged).await?;
        Ok(expired)
    }

    async fn commit(&mut self, staged: &Staged) -> Result<(), BrokerError> {
        if let Err(e) = persist(&self.disk, staged).await {
            tracing::warn!(error = %e, "broker write failed; rebuilding state from disk");
            self.needs_recovery = true;
            return Err(io_err(e));
        }
        Ok(())
    }
}

/// Appends and fsyncs staged entries: metadata first, then each partition log once.
async fn persist<D: Disk>(disk: &D, staged: &Staged) -> io::Result<()> {
    if !staged.meta.is_empty() {
        let mut bytes = Vec::new();
        for entry in &staged.meta {
            log::frame_into(&mut bytes, META_MAGIC, entry);
        }
        disk.append(META_LOG_PATH, &bytes).await?;
        disk.fsync(META_LOG_PATH).await?;
    }
    // Each touched log gets one append (its entries in order, framed into one buffer reused from
    // log to log, sized once) and then one fsync, logs in path order.
    let mut per_file: BTreeMap<String, (Vec<&PartitionEntry>, usize)> = BTreeMap::new();
    for (topic, partition, entry) in &staged.partitions {
        let (entries, bytes) = per_file.entry(log::partition_log_path(topic, *partition)).or_default();
        entries.push(entry);
        *bytes += log::framed_bytes_hint(entry);
    }
    let mut buf = Vec::with_capacity(per_file.values().map(|(_, bytes)| *bytes).max().unwrap_or(0));
    for (path, (entries, _)) in &per_file {
        buf.clear();
        for entry in entries {
            log::frame_into(&mut buf, PARTITION_MAGIC, *entry);
        }
        disk.append(path, &buf).await?;
    }
    for path in per_file.keys() {
        disk.fsync(path).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::mem_disk::{block_on, MemDisk};
    use crate::broker::protocol::*;
    use floe_core::ids::Offset;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const T: &str = "t";
    const TIMEOUT_MS: u64 = 1_000;

    fn config() -> BrokerConfig {
        BrokerConfig { transaction_timeout_ms: TIMEOUT_MS, ..BrokerConfig::default() }
    }

    fn open(disk: &MemDisk) -> (Broker<MemDisk>, RecoveryReport) {
        block_on(Broker::open(disk.clone(), config(), 0)).expect("recovery succeeds")
    }

    fn exec(b: &mut Broker<MemDisk>, req: BrokerRequest) -> Result<BrokerResponse, BrokerError> {
        block_on(b.execute(vec![req], 0)).pop().unwrap()
    }

    fn produce(p: u32, producer: Option<ProducerStamp>, tid: Option<&str>, values: &[&str]) -> BrokerRequest {
        BrokerRequest::Produce {
            topic: T.into(),
            partition: PartitionId(p),
            producer,
            transactional_id: tid.map(str::to_string),
            records: values.iter().map(|v| Record::value(v.as_bytes())).collect(),
        }
    }

    fn values(b: &Broker<MemDisk>, p: u32, isolation: IsolationLevel) -> Vec<String> {
        let f = b.state().fetch(T, PartitionId(p), Offset(0), u32::MAX, u32::MAX, isolation).unwrap();
        f.records.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect()
    }

    fn with_topic() -> (MemDisk, Broker<MemDisk>) {
        let disk = MemDisk::default();
        let (mut b, _) = open(&disk);
        exec(&mut b, BrokerRequest::CreateTopic { topic: T.into(), partitions: 2 }).unwrap();
        (disk, b)
    }

    #[test]
    fn a_restart_recovers_every_acknowledged_record_and_the_producer_sequences() {
        let (disk, mut b) = with_topic();
        let Ok(BrokerResponse::ProducerId { producer_id, .. }) = exec(&mut b, BrokerRequest::InitProducerId) else { panic!() };
        let stamp = |s| Some(ProducerStamp { producer_id, epoch: 0, base_sequence: s });
        exec(&mut b, produce(0, None, None, &["a"])).unwrap();
        exec(&mut b, produce(0, stamp(0), None, &["b", "c"])).unwrap();
        drop(b);
        disk.crash(|_| 0);
        let (mut b, report) = open(&disk);
        assert_eq!((report.meta_entries, report.partition_entries, report.truncated.len()), (2, 2, 0));
        assert_eq!(values(&b, 0, IsolationLevel::ReadCommitted), ["a", "b", "c"]);
        // The lost ack's retry is recognised; the next sequence continues; a new producer id is fresh.
        assert_eq!(exec(&mut b, produce(0, stamp(0), None, &["b", "c"])), Ok(BrokerResponse::Produced { base_offset: Offset(1), duplicate: true }));
        assert_eq!(exec(&mut b, produce(0, stamp(2), None, &["d"])), Ok(BrokerResponse::Produced { base_offset: Offset(3), duplicate: false }));
        assert_eq!(exec(&mut b, BrokerRequest::InitProducerId), Ok(BrokerResponse::ProducerId { producer_id: producer_id + 1, epoch: 0 }));
    }

    #[test]
    fn a_torn_tail_is_truncated_and_appends_continue_after_it() {
        let path = log::partition_log_path(T, PartitionId(1));
        for cut in [1usize, 7, 13, 20] {
            let (disk, mut b) = with_topic();
            exec(&mut b, produce(1, None, None, &["kept"])).unwrap();
            let good = disk.bytes(&path);
            exec(&mut b, produce(1, None, None, &["torn", "away"])).unwrap();
            let full = disk.bytes(&path);
            drop(b);
            // The second append was never synced and only `cut` of its bytes reached the disk.
            disk.set_bytes(&path, full[..good.len() + cut].to_vec());
            let (mut b, report) = open(&disk);
            assert_eq!(report.truncated, vec![(path.clone(), (good.len() + cut) as u64, good.len() as u64)], "cut {cut}");
            assert_eq!(disk.bytes(&path), good, "cut {cut}: the file is cut back durably");
            assert_eq!(values(&b, 1, IsolationLevel::ReadUncommitted), ["kept"]);
            exec(&mut b, produce(1, None, None, &["next"])).unwrap();
            let (b, _) = open(&disk);
            assert_eq!(values(&b, 1, IsolationLevel::ReadUncommitted), ["kept", "next"], "cut {cut}");
        }
    }

    #[test]
    fn a_corrupt_metadata_tail_is_truncated_too() {
        let (disk, mut b) = with_topic();
        exec(&mut b, BrokerRequest::InitTransactions { transactional_id: "x".into(), transaction_timeout_ms: None, token: None }).unwrap();
        drop(b);
        let mut meta = disk.bytes(META_LOG_PATH);
        *meta.last_mut().unwrap() ^= 0xFF;
        disk.set_bytes(META_LOG_PATH, meta);
        let (b, report) = open(&disk);
        assert_eq!(report.truncated.len(), 1);
        assert_eq!(b.state().topics(), vec![(T.to_string(), 2)]);
        assert!(b.state().list_transactions("").is_empty());
    }

    #[test]
    fn a_failed_write_releases_no_answer_and_the_broker_rebuilds_from_disk() {
        let (disk, mut b) = with_topic();
        exec(&mut b, produce(0, None, None, &["durable"])).unwrap();
        disk.fail_writes_after(Some(0));
        let answers = block_on(b.execute(vec![produce(0, None, None, &["lost"]), BrokerRequest::Metadata { topic: T.into() }], 0));
        assert!(answers.iter().all(|a| matches!(a, Err(BrokerError::Io(_)))), "{answers:?}");
        disk.fail_writes_after(None);
        assert_eq!(exec(&mut b, produce(0, None, None, &["after"])), Ok(BrokerResponse::Produced { base_offset: Offset(1), duplicate: false }));
        assert_eq!(values(&b, 0, IsolationLevel::ReadCommitted), ["durable", "after"]);
    }

    #[test]
    fn a_commit_decided_before_a_crash_gets_its_markers_on_recovery() {
        let (disk, mut b) = with_topic();
        let Ok(BrokerResponse::ProducerId { producer_id, epoch }) =
            exec(&mut b, BrokerRequest::InitTransactions { transactional_id: "x".into(), transaction_timeout_ms: None, token: None })
        else {
            panic!()
        };
        for p in 0..2 {
            let stamp = Some(ProducerStamp { producer_id, epoch, base_sequence: 0 });
            exec(&mut b, produce(p, stamp, Some("x"), &["v"])).unwrap();
        }
        // The decision reaches the metadata log (append + fsync), then the disk fails.
        disk.fail_writes_after(Some(2));
        let commit = BrokerRequest::EndTransaction { transactional_id: "x".into(), producer_id, epoch, outcome: TxnOutcome::Commit };
        assert!(matches!(exec(&mut b, commit.clone()), Err(BrokerError::Io(_))));
        drop(b);
        disk.crash(|unsynced| unsynced / 2);
        let (mut b, report) = open(&disk);
        assert_eq!(report.completion_entries, 2, "one marker per partition");
        for p in 0..2 {
            assert_eq!(values(&b, p, IsolationLevel::ReadCommitted), ["v"]);
        }
        assert_eq!(exec(&mut b, commit), Ok(BrokerResponse::TransactionEnded { state: TxnState::CompleteCommit }), "the retry is idempotent");
    }

    // ----- property: random operations with crashes against a model of the committed log -----

    #[derive(Clone, Debug)]
    enum Op {
        Plain { p: u32 },
        Idempotent { p: u32, resend: bool },
        Init { t: usize },
        TxnProduce { t: usize, p: u32 },
        Prepare { t: usize },
        End { t: usize, commit: bool },
        Expire,
        Crash { torn_numerator: usize },
    }

    fn op() -> impl Strategy<Value = (Op, Option<u64>)> {
        let op = prop_oneof![
            (0..2u32).prop_map(|p| Op::Plain { p }),
            (0..2u32, any::<bool>()).prop_map(|(p, resend)| Op::Idempotent { p, resend }),
            (0..3usize).prop_map(|t| Op::Init { t }),
            (0..3usize, 0..2u32).prop_map(|(t, p)| Op::TxnProduce { t, p }),
            (0..3usize).prop_map(|t| Op::Prepare { t }),
            (0..3usize, any::<bool>()).prop_map(|(t, commit)| Op::End { t, commit }),
            Just(Op::Expire),
            (0..4usize).prop_map(|torn_numerator| Op::Crash { torn_numerator }),
        ];
        (op, proptest::option::weighted(0.2, 0..6u64))
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fate {
        Open,
        Committed,
        Aborted,
    }

    #[derive(Default)]
    struct ModelTxn {
        id: Option<(ProducerId, ProducerEpoch)>,
        state: Option<TxnState>,
        seq: BTreeMap<u32, u32>,
        txn_no: usize,
    }

    /// A transaction in the model: (transactional id index, transaction number).
    type ModelTxnKey = (usize, usize);

    #[derive(Default)]
    struct Model {
        /// Per partition, every record in offset order: its value and its transaction (if any).
        log: BTreeMap<u32, Vec<(String, Option<ModelTxnKey>)>>,
        fates: BTreeMap<(usize, usize), Fate>,
        txns: [ModelTxn; 3],
        idem_seq: BTreeMap<u32, (u32, String, u64)>,
        next_value: u64,
    }

    impl Model {
        fn value(&mut self) -> String {
            self.next_value += 1;
            format!("v{}", self.next_value)
        }

        fn abort_open(&mut self, t: usize, reason: TxnEndReason) {
            let m = &mut self.txns[t];
            if m.state.is_some_and(TxnState::is_open) {
                m.state = Some(TxnState::CompleteAbort(reason));
                self.fates.insert((t, m.txn_no), Fate::Aborted);
            }
        }
    }

    struct Sut {
        disk: MemDisk,
        broker: Broker<MemDisk>,
        now_ms: u64,
        idem: ProducerId,
    }

    impl Sut {
        /// Runs a request with `fail_after` injected; on an I/O error crashes with a torn tail,
        /// restarts and retries once without faults (every request the model sends is safe to
        /// retry). Returns the final answer.
        fn call(&mut self, req: BrokerRequest, fail_after: Option<u64>) -> Result<BrokerResponse, BrokerError> {
            self.disk.fail_writes_after(fail_after);
            let first = block_on(self.broker.execute(vec![req.clone()], self.now_ms)).pop().unwrap();
            self.disk.fail_writes_after(None);
            match first {
                Err(BrokerError::Io(_)) => {
                    self.restart(1);
                    block_on(self.broker.execute(vec![req], self.now_ms)).pop().unwrap()
                }
                other => other,
            }
        }

        fn restart(&mut self, torn_numerator: usize) {
            self.disk.crash(|unsynced| unsynced * torn_numerator / 4);
            self.broker = block_on(Broker::open(self.disk.clone(), config(), self.now_ms)).expect("recovery").0;
        }
    }

    fn check(ops: Vec<(Op, Option<u64>)>) -> Result<(), TestCaseError> {
        let disk = MemDisk::default();
        let (mut broker, _) = open(&disk);
        let create = BrokerRequest::CreateTopic { topic: T.into(), partitions: 2 };
        block_on(broker.execute(vec![create], 0)).pop().unwrap().unwrap();
        let Ok(BrokerResponse::ProducerId { producer_id: idem, .. }) = block_on(broker.execute(vec![BrokerRequest::InitProducerId], 0)).pop().unwrap()
        else {
            panic!()
        };
        let mut sut = Sut { disk, broker, now_ms: 0, idem };
        let mut m = Model::default();
        for (op, fail_after) in ops {
            sut.now_ms += 1;
            match op {
                Op::Plain { p } => {
                    let v = m.value();
                    sut.call(produce(p, None, None, &[&v]), None).unwrap();
                    m.log.entry(p).or_default().push((v, None));
                }
                Op::Idempotent { p, resend } => {
                    let stamp = |s| Some(ProducerStamp { producer_id: sut.idem, epoch: 0, base_sequence: s });
                    match (resend, m.idem_seq.get(&p).cloned()) {
                        (true, Some((seq, v, offset))) => {
                            let got = sut.call(produce(p, stamp(seq - 1), None, &[&v]), fail_after).unwrap();
                            prop_assert_eq!(got, BrokerResponse::Produced { base_offset: Offset(offset), duplicate: true });
                        }
                        _ => {
                            let seq = m.idem_seq.get(&p).map_or(0, |s| s.0);
                            let v = m.value();
                            let got = sut.call(produce(p, stamp(seq), None, &[&v]), fail_after).unwrap();
                            let BrokerResponse::Produced { base_offset, .. } = got else { panic!() };
                            m.idem_seq.insert(p, (seq + 1, v.clone(), base_offset.get()));
                            m.log.entry(p).or_default().push((v, None));
                        }
                    }
                }
                Op::Init { t } => {
                    let req = BrokerRequest::InitTransactions { transactional_id: format!("tx-{t}"), transaction_timeout_ms: None, token: None };
                    let Ok(BrokerResponse::ProducerId { producer_id, epoch }) = sut.call(req, fail_after) else { panic!() };
                    m.abort_open(t, TxnEndReason::Fenced);
                    let mt = &mut m.txns[t];
                    mt.id = Some((producer_id, epoch));
                    mt.state = Some(TxnState::Empty);
                    mt.seq.clear();
                }
                Op::TxnProduce { t, p } => {
                    let Some((producer_id, epoch)) = m.txns[t].id else { continue };
                    let seq = m.txns[t].seq.get(&p).copied().unwrap_or(0);
                    let v = m.value();
                    let stamp = Some(ProducerStamp { producer_id, epoch, base_sequence: seq });
                    let got = sut.call(produce(p, stamp, Some(&format!("tx-{t}")), &[&v]), fail_after);
                    match m.txns[t].state.unwrap() {
                        TxnState::Prepared => prop_assert!(matches!(got, Err(BrokerError::InvalidTransactionState { .. })), "{:?}", got),
                        TxnState::CompleteAbort(TxnEndReason::TimedOut) => {
                            prop_assert!(matches!(got, Err(BrokerError::TransactionTimedOut { .. })), "{:?}", got)
                        }
                        state => {
                            prop_assert!(matches!(got, Ok(BrokerResponse::Produced { duplicate: false, .. })), "{:?}", got);
                            let mt = &mut m.txns[t];
                            if !state.is_open() {
                                mt.txn_no += 1;
                                mt.state = Some(TxnState::Ongoing);
                                m.fates.insert((t, mt.txn_no), Fate::Open);
                            }
                            mt.seq.insert(p, seq + 1);
                            let owner = Some((t, mt.txn_no));
                            m.log.entry(p).or_default().push((v, owner));
                        }
                    }
                }
                Op::Prepare { t } => {
                    let Some((producer_id, epoch)) = m.txns[t].id else { continue };
                    let req = BrokerRequest::Prepare { transactional_id: format!("tx-{t}"), producer_id, epoch };
                    let got = sut.call(req, fail_after);
                    let mt = &mut m.txns[t];
                    if mt.state == Some(TxnState::CompleteAbort(TxnEndReason::TimedOut)) {
                        prop_assert!(matches!(got, Err(BrokerError::TransactionTimedOut { .. })), "{:?}", got);
                    } else if matches!(mt.state, Some(TxnState::CompleteAbort(_))) {
                        // A prepare after the transaction ended is a late duplicate: refused, nothing opens.
                        prop_assert!(matches!(got, Err(BrokerError::TransactionAborted { .. })), "{:?}", got);
                    } else if mt.state == Some(TxnState::CompleteCommit) {
                        prop_assert_eq!(got, Ok(BrokerResponse::TransactionEnded { state: TxnState::CompleteCommit }));
                    } else {
                        prop_assert_eq!(got, Ok(BrokerResponse::TransactionEnded { state: TxnState::Prepared }));
                        if !mt.state.unwrap().is_open() {
                            mt.txn_no += 1;
                            m.fates.insert((t, mt.txn_no), Fate::Open);
                        }
                        mt.state = Some(TxnState::Prepared);
                    }
                }
                Op::End { t, commit } => {
                    let Some((producer_id, epoch)) = m.txns[t].id else { continue };
                    let outcome = if commit { TxnOutcome::Commit } else { TxnOutcome::Abort };
                    let req = BrokerRequest::EndTransaction { transactional_id: format!("tx-{t}"), producer_id, epoch, outcome };
                    let got = sut.call(req, fail_after);
                    let mt = &mut m.txns[t];
                    match (mt.state.unwrap(), commit) {
                        (s, _) if s.is_open() => {
                            prop_assert!(got.is_ok(), "{:?}", got);
                            let (state, fate) = if commit {
                                (TxnState::CompleteCommit, Fate::Committed)
                            } else {
                                (TxnState::CompleteAbort(TxnEndReason::Requested), Fate::Aborted)
                            };
                            mt.state = Some(state);
                            m.fates.insert((t, mt.txn_no), fate);
                        }
                        (TxnState::CompleteAbort(TxnEndReason::TimedOut), true) => {
                            prop_assert!(matches!(got, Err(BrokerError::TransactionTimedOut { .. })), "{:?}", got)
                        }
                        (TxnState::CompleteAbort(_), true) => prop_assert!(matches!(got, Err(BrokerError::TransactionAborted { .. })), "{:?}", got),
                        (TxnState::CompleteCommit, false) => {
                            prop_assert!(matches!(got, Err(BrokerError::InvalidTransactionState { .. })), "{:?}", got)
                        }
                        _ => prop_assert!(got.is_ok(), "{:?}", got),
                    }
                }
                Op::Expire => {
                    sut.now_ms += TIMEOUT_MS;
                    block_on(sut.broker.expire_transactions(sut.now_ms)).unwrap();
                    for t in 0..3 {
                        m.abort_open(t, TxnEndReason::TimedOut);
                    }
                }
                Op::Crash { torn_numerator } => sut.restart(torn_numerator),
            }
        }
        // Close everything, then compare both views of every partition with the model.
        sut.restart(2);
        sut.now_ms += TIMEOUT_MS;
        block_on(sut.broker.expire_transactions(sut.now_ms)).unwrap();
        for t in 0..3 {
            m.abort_open(t, TxnEndReason::TimedOut);
        }
        for p in 0..2u32 {
            let log = m.log.get(&p).cloned().unwrap_or_default();
            let committed: Vec<String> = log
                .iter()
                .filter(|(_, owner)| owner.is_none_or(|o| m.fates[&o] == Fate::Committed))
                .map(|(v, _)| v.clone())
                .collect();
            let all: Vec<String> = log.iter().map(|(v, _)| v.clone()).collect();
            prop_assert_eq!(values(&sut.broker, p, IsolationLevel::ReadCommitted), committed, "read committed, partition {}", p);
            prop_assert_eq!(values(&sut.broker, p, IsolationLevel::ReadUncommitted), all, "read uncommitted, partition {}", p);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn random_operations_with_crashes_keep_exactly_the_committed_log(ops in proptest::collection::vec(op(), 1..60)) {
            check(ops)?;
        }
    }
}
