//! A subtask's state in the blob store: writing its snapshot for a checkpoint and reading it back
//! on restore (Flink's `AsyncCheckpointRunnable` + `StreamTaskStateInitializerImpl`).
//!
//! Layout (shared with the job manager, see the cluster conventions):
//! `{job}/chk-{checkpoint}/{vertex}-{subtask}-a{attempt}.keyed` holds `KeyedSnapshot::to_blob()`
//! and `.operator` holds `seal_value(b"FLOP", 1, BTreeMap<OperatorId, Vec<u8>>)`, each chained
//! operator's `OperatorStateStore::snapshot()`. The keyed handle lists every key group of the
//! subtask's range (empty ones with `len: 0`). Every blob read back is checked against its
//! [`BlobRef`] (length and crc32) before use: a corrupt blob fails the subtask, never restores.

use crate::blob::{BlobClient, BlobError};
use floe_core::codec;
use floe_core::coordinator::{BlobRef, KeyGroupSlice, KeyedStateHandle, SubtaskRestore, SubtaskStateHandle};
use floe_core::ids::{AttemptId, CheckpointId, OperatorId, SubtaskId};
use floe_core::state::{redistribute, KeyedSnapshot, KeyedStateBackend, OperatorStateStore};
use std::collections::BTreeMap;
use std::time::Duration;

/// The magic of a subtask's operator-state blob.
pub const OPERATOR_BLOB_MAGIC: [u8; 4] = *b"FLOP";
/// Its format version.
pub const OPERATOR_BLOB_VERSION: u16 = 1;
/// Blob-store calls are tried this many times (transient errors only).
pub const BLOB_ATTEMPTS_MAX: u32 = 20;
/// Pause between blob-store attempts.
pub const BLOB_BACKOFF_MS: u64 = 100;

/// The key of one of a subtask's snapshot blobs.
pub fn blob_key(job: &str, checkpoint: CheckpointId, subtask: SubtaskId, attempt: AttemptId, kind: &str) -> String {
    format!("{job}/chk-{}/{}-{}-a{}.{kind}", checkpoint.0, subtask.operator.0, subtask.index.0, attempt.0)
}

/// What a subtask captured synchronously at a barrier; written to the blob store later.
pub struct CapturedSnapshot {
    /// The job's name (blob prefix).
    pub job: String,
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The subtask.
    pub subtask: SubtaskId,
    /// Its attempt.
    pub attempt: AttemptId,
    /// Keyed state (keyed vertices only).
    pub keyed: Option<KeyedSnapshot>,
    /// Each chained operator's operator-state snapshot.
    pub operators: BTreeMap<OperatorId, Vec<u8>>,
    /// The subtask's data had ended (its chain's `end_of_input` had run) when it snapshotted:
    /// acknowledged as [`SubtaskStateHandle::data_ended`] (FLIP-147's finished on restore).
    pub data_ended: bool,
}

async fn put(client: &BlobClient, key: &str, bytes: Vec<u8>) -> Result<BlobRef, String> {
    let blob = BlobRef { key: key.to_string(), len: bytes.len() as u64, crc32: crc32fast::hash(&bytes) };
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Overwrite: a retry after a lost answer writes the same bytes again.
        match client.put(key, bytes.clone(), true).await {
            Ok(()) => return Ok(blob),
            Err(e) if attempts < BLOB_ATTEMPTS_MAX && is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(BLOB_BACKOFF_MS)).await;
            }
            Err(e) => return Err(format!("put {key}: {e}")),
        }
    }
}

fn is_transient(e: &BlobError) -> bool {
    matches!(e, BlobError::Unavailable(_) | BlobError::Timeout | BlobError::Io(_))
}

/// Writes a captured snapshot; returns the handle to acknowledge with and the bytes written.
pub async fn write_snapshot(client: &BlobClient, snapshot: CapturedSnapshot) -> Result<(SubtaskStateHandle, u64), String> {
    let mut bytes_written = 0;
    let keyed = match &snapshot.keyed {
        None => None,
        Some(keyed) => {
            let (blob, index) = keyed.to_blob().map_err(|e| format!("keyed snapshot: {e}"))?;
            bytes_written += blob.len() as u64;
            let key = blob_key(&snapshot.job, snapshot.checkpoint, snapshot.subtask, snapshot.attempt, "keyed");
            let blob_ref = put(client, &key, blob).await?;
            let by_group: BTreeMap<_, _> = index.iter().map(|o| (o.key_group, (o.offset, o.len))).collect();
            let key_groups = keyed
                .key_group_range()
                .iter()
                .map(|kg| {
                    let (offset, len) = by_group.get(&kg).copied().unwrap_or((0, 0));
                    KeyGroupSlice { key_group: kg, offset, len }
                })
                .collect();
            Some(KeyedStateHandle { blob: blob_ref, key_groups })
        }
    };
    let body = codec::seal_value(OPERATOR_BLOB_MAGIC, OPERATOR_BLOB_VERSION, &snapshot.operators).map_err(|e| format!("operator snapshot: {e}"))?;
    bytes_written += body.len() as u64;
    let key = blob_key(&snapshot.job, snapshot.checkpoint, snapshot.subtask, snapshot.attempt, "operator");
    let operator = Some(put(client, &key, body).await?);
    Ok((SubtaskStateHandle { subtask: snapshot.subtask, keyed, operator, data_ended: snapshot.data_ended }, bytes_written))
}

/// Reads a blob and checks it against its reference.
pub async fn get_checked(client: &BlobClient, blob: &BlobRef) -> Result<Vec<u8>, String> {
    let mut attempts = 0;
    let bytes = loop {
        attempts += 1;
        match client.get(&blob.key).await {
            Ok(Some(bytes)) => break bytes,
            Ok(None) => return Err(format!("blob {} is missing", blob.key)),
            Err(e) if attempts < BLOB_ATTEMPTS_MAX && is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(BLOB_BACKOFF_MS)).await;
            }
            Err(e) => return Err(format!("get {}: {e}", blob.key)),
        }
    };
    check_blob(blob, &bytes)?;
    Ok(bytes)
}

/// Checks bytes read back against their reference (length, then crc32).
pub fn check_blob(blob: &BlobRef, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 != blob.len {
        return Err(format!("blob {} has {} bytes, the checkpoint recorded {}", blob.key, bytes.len(), blob.len));
    }
    let crc = crc32fast::hash(bytes);
    if crc != blob.crc32 {
        return Err(format!("blob {} has crc32 {crc:#010x}, the checkpoint recorded {:#010x}", blob.key, blob.crc32));
    }
    Ok(())
}

/// Restores keyed state from the key-group slices of `restore` (zero-length slices skipped).
pub async fn restore_keyed(client: &BlobClient, restore: &SubtaskRestore, backend: &mut KeyedStateBackend) -> Result<(), String> {
    let mut blobs: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for r in &restore.keyed {
        if r.slice.len == 0 || blobs.contains_key(r.blob.key.as_str()) {
            continue;
        }
        blobs.insert(&r.blob.key, get_checked(client, &r.blob).await?);
    }
    let mut slices: Vec<&[u8]> = Vec::new();
    for r in restore.keyed.iter().filter(|r| r.slice.len > 0) {
        let blob = &blobs[r.blob.key.as_str()];
        let (start, len) = (r.slice.offset as usize, r.slice.len as usize);
        let slice = start.checked_add(len).and_then(|end| blob.get(start..end)).ok_or_else(|| format!("key group {} lies outside blob {}", r.slice.key_group, r.blob.key))?;
        slices.push(slice);
    }
    backend.restore(slices).map_err(|e| format!("keyed restore: {e}"))?;
    Ok(())
}

/// Restores each chained operator's store: every old subtask's bytes for that operator, in old
/// subtask order, redistributed to `parallelism`, and this subtask's share restored.
pub async fn restore_operators(client: &BlobClient, restore: &SubtaskRestore, parallelism: u32, stores: &mut [(OperatorId, &mut OperatorStateStore)]) -> Result<(), String> {
    let mut old: Vec<BTreeMap<OperatorId, Vec<u8>>> = Vec::new();
    for blob in &restore.operator_state {
        let bytes = get_checked(client, blob).await?;
        old.push(codec::open_value(OPERATOR_BLOB_MAGIC, OPERATOR_BLOB_VERSION, &bytes).map_err(|e| format!("operator state blob {}: {e}", blob.key))?);
    }
    for (op, store) in stores.iter_mut() {
        let per_subtask: Vec<Vec<u8>> = old.iter().filter_map(|m| m.get(op).cloned()).collect();
        if per_subtask.is_empty() {
            continue;
        }
        let mut shares = redistribute(&per_subtask, parallelism).map_err(|e| format!("redistribute {op}: {e}"))?;
        let index = restore.subtask.0 as usize;
        if index >= shares.len() {
            return Err(format!("subtask {index} outside parallelism {parallelism}"));
        }
        store.restore(&shares.swap_remove(index)).map_err(|e| format!("operator state {op}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys_follow_the_shared_layout() {
        let key = blob_key("wc", CheckpointId(4), SubtaskId::new(OperatorId(3), 1), AttemptId(2), "keyed");
        assert_eq!(key, "wc/chk-4/3-1-a2.keyed");
    }

    #[test]
    fn a_blob_that_does_not_match_its_reference_is_refused() {
        let bytes = b"hello".to_vec();
        let good = BlobRef { key: "k".into(), len: 5, crc32: crc32fast::hash(&bytes) };
        let cases = [
            (good.clone(), b"hello".to_vec(), true),
            (good.clone(), b"hellO".to_vec(), false),
            (good.clone(), b"hell".to_vec(), false),
            (BlobRef { crc32: good.crc32 ^ 1, ..good.clone() }, b"hello".to_vec(), false),
        ];
        for (blob, bytes, ok) in cases {
            assert_eq!(check_blob(&blob, &bytes).is_ok(), ok, "{blob:?} {bytes:?}");
        }
    }

    #[test]
    fn only_unreachable_or_failing_stores_are_retried() {
        let cases = [
            (BlobError::Timeout, true),
            (BlobError::Unavailable("down".into()), true),
            (BlobError::Io("disk".into()), true),
            (BlobError::Corrupt { key: "k".into(), reason: "crc".into() }, false),
            (BlobError::BadKey("".into()), false),
            (BlobError::TooLarge { len: 1 }, false),
        ];
        for (e, transient) in cases {
            assert_eq!(is_transient(&e), transient, "{e}");
        }
    }
}
