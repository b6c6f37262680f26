//! The job manager's durable state in the blob store (Flink's HA services: the `JobGraphStore`,
//! the `CheckpointIDCounter`, the completed-checkpoint store's pointer and the `JobResultStore`),
//! and the two workers that write it.
//!
//! Layout (see the cluster conventions):
//!
//! | key | what | written |
//! |---|---|---|
//! | `_jm/current` | the current job's name (UTF-8) | at submission |
//! | `{job}/ha/job` | [`HaJobRecord`]: the spec, `next_attempt`, `next_checkpoint_id` | at submission, before a deploy, before a trigger whose id is not yet reserved |
//! | `{job}/chk-{n}/_metadata` | `CheckpointMetadata::to_bytes()` | when every subtask acknowledged `n` |
//! | `{job}/ha/latest` | the key of the latest completed checkpoint's metadata (UTF-8) | after the metadata |
//! | `{job}/ha/finished` | the final checkpoint's id (UTF-8 decimal) | once the job finished |
//! | `{job}/ha/failed` | the reason (UTF-8) | once the restart strategy gave up |
//!
//! **Ordering.** Every write that moves the job forward goes through one [`HaWorker`], in the
//! order the job manager issued them, so the last `ha/job` written is the newest and the pointer
//! only moves forward. A checkpoint is complete only when the pointer names it: a failed metadata
//! write is reported as failed only when the pointer was certainly not written (the pointer write
//! is an idempotent overwrite and is retried until it succeeds; after
//! [`POINTER_WRITE_ATTEMPTS_MAX`] the outcome is unknown and the job manager stops, as Flink's
//! fatal-error handler would, so a restarted job manager reads the truth back).
//! Deletions (discarded checkpoints) go through a separate best-effort [`GcWorker`].

use crate::blob::{BlobClient, BlobError};
use crate::cluster::jobs::JobSpec;
use floe_core::codec::{self, CodecError};
use floe_core::coordinator::{BlobRef, CheckpointMetadata};
use floe_core::element::Barrier;
use floe_core::ids::{AttemptId, CheckpointId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

/// The key naming the job manager's current job.
pub const CURRENT_JOB_KEY: &str = "_jm/current";
/// The envelope magic of an [`HaJobRecord`].
pub const HA_JOB_MAGIC: [u8; 4] = *b"FLHJ";
/// The envelope version of an [`HaJobRecord`].
pub const HA_JOB_VERSION: u16 = 1;

/// Checkpoint ids one `ha/job` write reserves beyond the next one.
pub const CHECKPOINT_IDS_RESERVED_PER_WRITE: u64 = 16;
/// Attempts of one HA write (ha/job, the current-job key, the finished marker) before it is
/// reported as failed.
pub const HA_WRITE_ATTEMPTS_MAX: u32 = 8;
/// Attempts of the "latest" pointer write before the outcome is declared unknown (fatal).
pub const POINTER_WRITE_ATTEMPTS_MAX: u32 = 600;
/// Attempts of one read during recovery before the job manager gives up starting.
pub const RECOVERY_READ_ATTEMPTS_MAX: u32 = 600;
/// First pause between two attempts of a blob operation; doubles up to [`BLOB_RETRY_BACKOFF_MS_MAX`].
pub const BLOB_RETRY_BACKOFF_MS_MIN: u64 = 20;
/// Longest pause between two attempts of a blob operation.
pub const BLOB_RETRY_BACKOFF_MS_MAX: u64 = 1_000;
/// HA operations queued at once (the job manager issues a bounded number: one per deploy,
/// trigger or metadata write).
pub const HA_QUEUE_MAX: usize = 1_024;
/// Deletions queued at once; more are dropped (the blobs leak, nothing breaks).
pub const GC_QUEUE_MAX: usize = 4_096;

/// `{job}/ha/job`.
pub fn ha_job_key(job: &str) -> String {
    format!("{job}/ha/job")
}

/// `{job}/ha/latest`.
pub fn ha_latest_key(job: &str) -> String {
    format!("{job}/ha/latest")
}

/// `{job}/ha/finished`.
pub fn ha_finished_key(job: &str) -> String {
    format!("{job}/ha/finished")
}

/// `{job}/ha/failed`.
pub fn ha_failed_key(job: &str) -> String {
    format!("{job}/ha/failed")
}

/// `{job}/chk-{n}/`: the prefix of every blob of checkpoint `n`.
pub fn checkpoint_prefix(job: &str, checkpoint: CheckpointId) -> String {
    format!("{job}/chk-{}/", checkpoint.0)
}

/// `{job}/chk-{n}/_metadata`.
pub fn metadata_key(job: &str, checkpoint: CheckpointId) -> String {
    format!("{}_metadata", checkpoint_prefix(job, checkpoint))
}

/// The checkpoint id of a key under `{job}/chk-{n}/`, if it is one.
pub fn checkpoint_of_key(job: &str, key: &str) -> Option<CheckpointId> {
    let rest = key.strip_prefix(job)?.strip_prefix("/chk-")?;
    let (n, _) = rest.split_once('/')?;
    n.parse().ok().map(CheckpointId)
}

/// What `{job}/ha/job` holds: enough to resubmit the job and never reuse an attempt or a
/// checkpoint id (Flink's `JobGraphStore` entry + `CheckpointIDCounter`).
///
/// The job manager reserves ids ahead: an attempt or checkpoint id is used only once a durable
/// record lies above it, so after a crash the ids in the record are fresh (ids may skip; they
/// never repeat). Checkpoint ids are reserved [`CHECKPOINT_IDS_RESERVED_PER_WRITE`] at a time,
/// so a trigger rarely waits for a write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HaJobRecord {
    /// The job.
    pub spec: JobSpec,
    /// The attempt the next deploy may use (every earlier one may have run).
    pub next_attempt: AttemptId,
    /// The checkpoint id the next trigger may use (every earlier one may have been triggered).
    pub next_checkpoint_id: CheckpointId,
}

impl HaJobRecord {
    /// Encodes the record in its checked envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        codec::seal_value(HA_JOB_MAGIC, HA_JOB_VERSION, self)
    }

    /// Decodes a record; damage is a typed error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::open_value(HA_JOB_MAGIC, HA_JOB_VERSION, bytes)
    }
}

/// Why `ha/job` is being written: what the job manager does once it is durable.
#[derive(Clone, Debug, PartialEq)]
pub enum HaJobPurpose {
    /// A submission: reply to the client, then schedule.
    Submit,
    /// A deploy of `attempt`: send the deployments.
    Deploy {
        /// The attempt.
        attempt: AttemptId,
    },
    /// A background reservation of further checkpoint ids (nothing waits on it).
    Reserve,
    /// A trigger: send the barrier to the sources.
    Trigger {
        /// The attempt.
        attempt: AttemptId,
        /// The barrier.
        barrier: Barrier,
    },
}

/// One ordered HA operation.
#[derive(Clone, Debug)]
pub enum HaOp {
    /// Write `ha/job` (and, for a submission, `_jm/current` after it).
    WriteJob {
        /// The record.
        record: HaJobRecord,
        /// What follows.
        purpose: HaJobPurpose,
    },
    /// Write `_metadata`, then `ha/latest`.
    PersistMetadata {
        /// The attempt whose coordinator asked.
        attempt: AttemptId,
        /// The job name.
        job: String,
        /// The metadata.
        metadata: CheckpointMetadata,
    },
    /// Write `ha/finished`.
    WriteFinished {
        /// The job name.
        job: String,
        /// The final checkpoint.
        checkpoint: CheckpointId,
    },
    /// Write `ha/failed`.
    WriteFailed {
        /// The job name.
        job: String,
        /// Why.
        reason: String,
    },
}

/// What an HA operation came to.
#[derive(Clone, Debug)]
pub enum HaDone {
    /// `ha/job` (and `_jm/current` for a submission) written, or not.
    JobWritten {
        /// Why it was written.
        purpose: HaJobPurpose,
        /// The record's job name.
        job: String,
        /// The record's `next_attempt`.
        next_attempt: AttemptId,
        /// The record's `next_checkpoint_id`.
        next_checkpoint_id: CheckpointId,
        /// The outcome.
        result: Result<(), BlobError>,
    },
    /// The metadata write ended: `Ok` = the pointer names it; `Err` = the pointer certainly
    /// does not.
    MetadataPersisted {
        /// The attempt whose coordinator asked.
        attempt: AttemptId,
        /// The metadata.
        metadata: CheckpointMetadata,
        /// The outcome.
        result: Result<(), String>,
    },
    /// `ha/finished` written (or given up on).
    FinishedWritten {
        /// The final checkpoint.
        checkpoint: CheckpointId,
        /// The outcome.
        result: Result<(), BlobError>,
    },
    /// `ha/failed` written (or given up on).
    FailedWritten {
        /// The outcome.
        result: Result<(), BlobError>,
    },
    /// The pointer write's outcome is unknown after every retry: the job manager must stop.
    Fatal(String),
}

/// The ordered HA writer: one task, one operation at a time, in issue order.
pub struct HaWorker;

impl HaWorker {
    /// Starts the worker; it reports each operation's outcome on `done`, in order.
    pub fn spawn(blob: BlobClient, done: mpsc::UnboundedSender<HaDone>) -> (mpsc::Sender<HaOp>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<HaOp>(HA_QUEUE_MAX);
        let task = tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                let outcome = run_op(&blob, op).await;
                if done.send(outcome).is_err() {
                    return;
                }
            }
        });
        (tx, task)
    }
}

async fn run_op(blob: &BlobClient, op: HaOp) -> HaDone {
    match op {
        HaOp::WriteJob { record, purpose } => {
            let job = record.spec.name.clone();
            let result = async {
                let bytes = record.to_bytes().map_err(|e| BlobError::Io(format!("encoding ha/job: {e}")))?;
                put_retrying(blob, &ha_job_key(&job), bytes, HA_WRITE_ATTEMPTS_MAX).await?;
                if purpose == HaJobPurpose::Submit {
                    put_retrying(blob, CURRENT_JOB_KEY, job.clone().into_bytes(), HA_WRITE_ATTEMPTS_MAX).await?;
                }
                Ok(())
            }
            .await;
            HaDone::JobWritten { purpose, job, next_attempt: record.next_attempt, next_checkpoint_id: record.next_checkpoint_id, result }
        }
        HaOp::PersistMetadata { attempt, job, metadata } => {
            let checkpoint = metadata.checkpoint_id;
            let bytes = match metadata.to_bytes() {
                Ok(b) => b,
                Err(e) => return HaDone::MetadataPersisted { attempt, metadata, result: Err(format!("encoding the metadata: {e}")) },
            };
            let key = metadata_key(&job, checkpoint);
            // Until the pointer write starts, a failure is certain: the pointer does not name it.
            if let Err(e) = put_retrying(blob, &key, bytes, HA_WRITE_ATTEMPTS_MAX).await {
                return HaDone::MetadataPersisted { attempt, metadata, result: Err(format!("writing {key}: {e}")) };
            }
            match put_retrying(blob, &ha_latest_key(&job), key.clone().into_bytes(), POINTER_WRITE_ATTEMPTS_MAX).await {
                Ok(()) => HaDone::MetadataPersisted { attempt, metadata, result: Ok(()) },
                Err(e) => HaDone::Fatal(format!("the pointer to {key} may or may not be written ({e}); stopping so a restarted job manager reads it back")),
            }
        }
        HaOp::WriteFinished { job, checkpoint } => {
            let result = put_retrying(blob, &ha_finished_key(&job), checkpoint.0.to_string().into_bytes(), HA_WRITE_ATTEMPTS_MAX).await;
            HaDone::FinishedWritten { checkpoint, result }
        }
        HaOp::WriteFailed { job, reason } => {
            let result = put_retrying(blob, &ha_failed_key(&job), reason.into_bytes(), HA_WRITE_ATTEMPTS_MAX).await;
            HaDone::FailedWritten { result }
        }
    }
}

/// The pause before attempt `attempt` (1-based) of a blob operation.
pub fn retry_backoff_ms(attempt: u32) -> u64 {
    BLOB_RETRY_BACKOFF_MS_MIN.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)).min(BLOB_RETRY_BACKOFF_MS_MAX)
}

/// Whether retrying can help: a bad key or an oversized blob stays so.
fn retryable(e: &BlobError) -> bool {
    !matches!(e, BlobError::BadKey(_) | BlobError::TooLarge { .. })
}

/// Puts (overwriting) with up to `attempts_max` attempts.
pub async fn put_retrying(blob: &BlobClient, key: &str, bytes: Vec<u8>, attempts_max: u32) -> Result<(), BlobError> {
    debug_assert!(attempts_max >= 1);
    let mut attempt = 1;
    loop {
        match blob.put(key, bytes.clone(), true).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= attempts_max || !retryable(&e) => return Err(e),
            Err(e) => {
                tracing::debug!(key, attempt, error = %e, "blob put failed; retrying");
                tokio::time::sleep(Duration::from_millis(retry_backoff_ms(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Gets with up to `attempts_max` attempts; `NotFound` and `Ok(None)` are both "absent"; a
/// corrupt object is returned as an error at once.
pub async fn get_retrying(blob: &BlobClient, key: &str, attempts_max: u32) -> Result<Option<Vec<u8>>, BlobError> {
    let mut attempt = 1;
    loop {
        match blob.get(key).await {
            Ok(v) => return Ok(v),
            Err(BlobError::NotFound(_)) => return Ok(None),
            Err(e @ (BlobError::Corrupt { .. } | BlobError::BadKey(_))) => return Err(e),
            Err(e) if attempt >= attempts_max => return Err(e),
            Err(e) => {
                tracing::debug!(key, attempt, error = %e, "blob get failed; retrying");
                tokio::time::sleep(Duration::from_millis(retry_backoff_ms(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Lists with up to `attempts_max` attempts.
pub async fn list_retrying(blob: &BlobClient, prefix: &str, attempts_max: u32) -> Result<Vec<String>, BlobError> {
    let mut attempt = 1;
    loop {
        match blob.list(prefix).await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= attempts_max => return Err(e),
            Err(e) => {
                tracing::debug!(prefix, attempt, error = %e, "blob list failed; retrying");
                tokio::time::sleep(Duration::from_millis(retry_backoff_ms(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Best-effort deletion of discarded checkpoint state, one key at a time.
pub struct GcWorker;

impl GcWorker {
    /// Starts the worker.
    pub fn spawn(blob: BlobClient) -> (mpsc::Sender<String>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<String>(GC_QUEUE_MAX);
        let task = tokio::spawn(async move {
            while let Some(key) = rx.recv().await {
                match blob.delete(&key).await {
                    Ok(()) | Err(BlobError::NotFound(_)) => {}
                    Err(e) => tracing::debug!(key, error = %e, "could not delete a discarded blob; it leaks"),
                }
            }
        });
        (tx, task)
    }
}

/// The keys to delete when a completed checkpoint is discarded: its blobs, then its metadata.
pub fn discard_keys(job: &str, metadata: &CheckpointMetadata) -> Vec<String> {
    let mut keys: Vec<String> = metadata.blobs().into_iter().map(|b: &BlobRef| b.key.clone()).collect();
    keys.push(metadata_key(job, metadata.checkpoint_id));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout_and_checkpoint_keys_parse_back() {
        assert_eq!(ha_job_key("wc"), "wc/ha/job");
        assert_eq!(ha_latest_key("wc"), "wc/ha/latest");
        assert_eq!(ha_finished_key("wc"), "wc/ha/finished");
        assert_eq!(metadata_key("wc", CheckpointId(12)), "wc/chk-12/_metadata");
        // (key, checkpoint)
        let cases: &[(&str, Option<u64>)] = &[
            ("wc/chk-12/_metadata", Some(12)),
            ("wc/chk-3/7-0-a2.keyed", Some(3)),
            ("wc/ha/job", None),
            ("wcx/chk-3/_metadata", None),
            ("wc/chk-x/_metadata", None),
            ("wc/chk-4", None),
        ];
        for (key, want) in cases {
            assert_eq!(checkpoint_of_key("wc", key), want.map(CheckpointId), "{key}");
        }
    }

    #[test]
    fn the_job_record_round_trips_and_damage_is_an_error() {
        let record = HaJobRecord {
            spec: JobSpec::word_count("wc", "in", 2, "out", 2),
            next_attempt: AttemptId(3),
            next_checkpoint_id: CheckpointId(9),
        };
        let bytes = record.to_bytes().unwrap();
        assert_eq!(HaJobRecord::from_bytes(&bytes).unwrap(), record);
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(HaJobRecord::from_bytes(&bad).is_err());
        assert!(HaJobRecord::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        let got: Vec<u64> = (1..=8).map(retry_backoff_ms).collect();
        assert_eq!(got, [20, 40, 80, 160, 320, 640, 1_000, 1_000]);
        assert_eq!(retry_backoff_ms(u32::MAX), BLOB_RETRY_BACKOFF_MS_MAX);
    }
}
