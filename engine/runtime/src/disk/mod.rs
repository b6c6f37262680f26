//! Durable storage as a node sees it.
//!
//! Two implementations share this trait: the simulated disk (its bytes live in the harness,
//! outside the node's futures, so they survive a kill; everything not yet fsynced is lost on a
//! crash) and the real disk (`std::fs` with real fsync of files and their directory).
//!
//! Paths are relative, `/`-separated names inside the disk (no `..`, no leading `/`).

use std::future::Future;
use std::io;

/// A node's durable storage.
///
/// Durability contract: bytes written by `create`/`append`/`write_at` are durable only after a
/// later `fsync` of the same path has returned `Ok`. `rename` and `remove` are durable when they
/// return `Ok` (they are metadata operations that fsync the directory).
pub trait Disk: Clone + Send + Sync + 'static {
    /// Creates an empty file, truncating any existing one.
    fn create(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// Appends to a file (created if absent) and returns the offset the data starts at.
    fn append(&self, path: &str, data: &[u8]) -> impl Future<Output = io::Result<u64>> + Send;
    /// Writes at an offset, extending the file if needed (a gap reads as zeros).
    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    fn read(&self, path: &str, offset: u64, len: usize) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// Reads the whole file.
    fn read_all(&self, path: &str) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// The file's length in bytes.
    fn len(&self, path: &str) -> impl Future<Output = io::Result<u64>> + Send;
    /// Makes everything written to this file so far durable.
    fn fsync(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// The paths that start with `prefix`, sorted.
    fn list(&self, prefix: &str) -> impl Future<Output = io::Result<Vec<String>>> + Send;
    /// Removes a file (durably). Removing a missing file is `NotFound`.
    fn remove(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// Atomically and durably renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> impl Future<Output = io::Result<()>> + Send;
}
