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
//! Like Kafka's high watermark, a fetch answered in a batch is released only after that batch's
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
        let bytes: Vec<u8> = staged.meta.iter().flat_map(|e| log::frame(META_MAGIC, e)).collect();
        disk.append(META_LOG_PATH, &bytes).await?;
        disk.fsync(META_LOG_PATH).await?;
    }
    let mut per_file: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (topic, partition, entry) in &staged.partitions {
        per_file
            .entry(log::partition_log_path(topic, *partition))
            .or_default()
            .extend(log::frame(PARTITION_MAGIC, entry));
    }
    for (path, bytes) in &per_file {
        disk.append(path, bytes).await?;
    }
    for path in per_file.keys() {
        disk.fsync(path).await?;
    }
    Ok(())
}
