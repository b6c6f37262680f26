//! The simulated disk: memory shared with the harness, with a crash model.
//!
//! madsim's own `fs` ignores fsync, so it cannot model durability; this disk does. The harness
//! creates a [`SimDisk`], keeps a clone and hands another to the node's init closure: the bytes
//! live outside the node's futures and survive a kill. Each file has a *durable* image (as of
//! its last `fsync`) and a *current* image (what reads see). [`SimDisk::crash`] reverts every
//! file to its durable image, optionally keeping a prefix of the unsynced tail
//! ([`TornTail::KeepPrefix`], drawn by the harness from its seed), like a power cut on a real
//! disk that had written some sectors of an append. A file never fsynced does not exist after a
//! crash. `rename` and `remove` are durable when they return: a rename moves the file's durable
//! image (an unsynced file renamed durably becomes an empty file, the classic hazard of renaming
//! before fsync). Overwrites inside the durable image that were not fsynced are lost on a crash.
//!
//! Compiled in both modes (memory and `tokio::time::sleep` only). Faults and latency are set at
//! any time through [`SimDisk::set_faults`].

use super::{check_path, Disk};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What survives of each file's unsynced tail in a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TornTail {
    /// Every unsynced byte is lost.
    #[default]
    None,
    /// At most `bytes` bytes of the unsynced tail beyond the durable length survive.
    KeepPrefix {
        /// How many bytes of the tail survive (the harness draws it from its seed).
        bytes: u64,
    },
}

/// Injected faults; they apply from the next operation on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskFaults {
    /// `create`, `append`, `write_at`, `rename` and `remove` fail with an i/o error.
    pub fail_writes: bool,
    /// `fsync` fails with an i/o error (and makes nothing durable).
    pub fail_fsyncs: bool,
    /// Added to every operation, in milliseconds.
    pub latency_ms: u64,
}

/// Counters since the disk was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskCounters {
    /// Bytes accepted by `append` and `write_at`.
    pub bytes_written: u64,
    /// Bytes that became durable through `fsync`.
    pub bytes_synced: u64,
    /// Successful `fsync` calls.
    pub fsyncs: u64,
    /// Crashes simulated.
    pub crashes: u64,
}

/// A file's bytes are kept in chunks of this many bytes (the last one may be shorter): an append
/// never moves the bytes already written, where one growing vector copied the whole file at each
/// doubling (a tenth of the broker's time in a long run was that copy and its fresh pages).
pub const FILE_CHUNK_BYTES: usize = 1 << 20;

/// Most whole chunks kept for reuse, process-wide (64 MiB): see [`CHUNK_POOL`].
pub const CHUNK_POOL_CHUNKS_MAX: usize = 64;

/// A file's first chunk grows like a vector while small; once it needs this many bytes it moves
/// into a whole [`FILE_CHUNK_BYTES`] chunk (from the pool if one is there) instead of doubling.
const FIRST_CHUNK_WHOLE_FROM_BYTES: usize = 64 << 10;

/// Whole chunks (capacity [`FILE_CHUNK_BYTES`], emptied) given back by files that were truncated,
/// removed or dropped with their disk, for the next file that grows: a fresh chunk's pages are
/// faulted in and zeroed by the kernel as they are first written (an eighth of the broker's time
/// in a run), a reused one's are already there. Only capacity is reused, never content: a chunk
/// is cleared before it is pooled. Shared by every disk of the process (a simulation runs many
/// worlds, one after the other or on several threads), and bounded by [`CHUNK_POOL_CHUNKS_MAX`].
static CHUNK_POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty chunk of capacity `chunk_bytes`, from the pool when it holds one of that size.
fn take_chunk(chunk_bytes: usize) -> Vec<u8> {
    if chunk_bytes == FILE_CHUNK_BYTES {
        if let Some(chunk) = CHUNK_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            debug_assert!(chunk.is_empty() && chunk.capacity() == FILE_CHUNK_BYTES);
            return chunk;
        }
    }
    Vec::with_capacity(chunk_bytes)
}

/// Gives a chunk back to the pool (emptied) if it is a whole one and the pool has room.
fn give_chunk(mut chunk: Vec<u8>) {
    if chunk.capacity() != FILE_CHUNK_BYTES {
        return;
    }
    chunk.clear();
    let mut pool = CHUNK_POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < CHUNK_POOL_CHUNKS_MAX {
        pool.push(chunk);
    }
}

/// A file's bytes: chunks of exactly `chunk_bytes` bytes except the last, so byte `i` lies in
/// chunk `i / chunk_bytes`. The first chunk grows as needed (small files stay small); once a file
/// outgrows it, later chunks are allocated whole and never reallocated.
#[derive(Debug, Clone)]
struct Chunked {
    chunks: Vec<Vec<u8>>,
    len: usize,
    chunk_bytes: usize,
}

impl Drop for Chunked {
    fn drop(&mut self) {
        self.chunks.drain(..).for_each(give_chunk);
    }
}

impl Chunked {
    fn new(chunk_bytes: usize) -> Self {
        Chunked { chunks: Vec::new(), len: 0, chunk_bytes: chunk_bytes.max(1) }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.chunks.drain(..).for_each(give_chunk);
        self.len = 0;
    }

    /// The chunk to write the next `wanted` bytes into (some of them, if it fills up): a new one
    /// if the last is full; the first chunk moved into a whole one if it would outgrow
    /// [`FIRST_CHUNK_WHOLE_FROM_BYTES`].
    fn tail(&mut self, wanted: usize) -> &mut Vec<u8> {
        let chunk_bytes = self.chunk_bytes;
        match self.chunks.as_mut_slice() {
            [] => {
                let chunk = if wanted >= FIRST_CHUNK_WHOLE_FROM_BYTES.min(chunk_bytes) { take_chunk(chunk_bytes) } else { Vec::with_capacity(wanted.min(chunk_bytes)) };
                self.chunks.push(chunk);
            }
            [first] if first.len() < chunk_bytes && first.capacity() < chunk_bytes => {
                let needed = (first.len() + wanted).min(chunk_bytes);
                if needed > first.capacity() && needed >= FIRST_CHUNK_WHOLE_FROM_BYTES {
                    let mut whole = take_chunk(chunk_bytes);
                    whole.extend_from_slice(first);
                    *first = whole;
                }
            }
            [.., last] if last.len() == chunk_bytes => self.chunks.push(take_chunk(chunk_bytes)),
            _ => {}
        }
        self.chunks.last_mut().expect("pushed above")
    }

    fn append(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let chunk_bytes = self.chunk_bytes;
            let tail = self.tail(data.len());
            let n = (chunk_bytes - tail.len()).min(data.len());
            tail.extend_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
    }

    /// Grows the file with zero bytes to `len` (no-op if it is that long already).
    fn extend_zeros(&mut self, len: usize) {
        while self.len < len {
            let chunk_bytes = self.chunk_bytes;
            let want = len - self.len;
            let tail = self.tail(want);
            let n = (chunk_bytes - tail.len()).min(want);
            tail.resize(tail.len() + n, 0);
            self.len += n;
        }
    }

    /// Overwrites `[start, start + data.len())`, growing the file with zeros first if needed.
    fn write_at(&mut self, start: usize, data: &[u8]) {
        self.extend_zeros(start + data.len());
        let (mut at, mut rest) = (start, data);
        while !rest.is_empty() {
            let (c, o) = (at / self.chunk_bytes, at % self.chunk_bytes);
            let n = (self.chunk_bytes - o).min(rest.len());
            self.chunks[c][o..o + n].copy_from_slice(&rest[..n]);
            at += n;
            rest = &rest[n..];
        }
    }

    /// A copy of `[start, end)`, clamped to the file.
    fn read(&self, start: usize, end: usize) -> Vec<u8> {
        let end = end.min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        let mut at = start;
        while at < end {
            let (c, o) = (at / self.chunk_bytes, at % self.chunk_bytes);
            let n = (self.chunk_bytes - o).min(end - at);
            out.extend_from_slice(&self.chunks[c][o..o + n]);
            at += n;
        }
        out
    }

    fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let keep_chunks = len.div_ceil(self.chunk_bytes);
        self.chunks.drain(keep_chunks..).for_each(give_chunk);
        if let Some(last) = self.chunks.last_mut() {
            last.truncate(len - (keep_chunks - 1) * self.chunk_bytes);
        }
        self.len = len;
    }
}

/// One file: what reads see, and enough to rebuild its durable image on a crash without ever
/// copying the whole file (an fsync is O(1), a write O(its size)): the durable length, and an
/// undo log of the durable bytes overwritten since the last fsync.
#[derive(Debug, Clone)]
struct SimFile {
    current: Chunked,
    /// Length of the durable image; `None` if the file was never made durable.
    durable_len: Option<usize>,
    /// `(offset, bytes)`: durable bytes overwritten (or truncated away) since the last fsync,
    /// applied in reverse order on a crash.
    undo: Vec<(usize, Vec<u8>)>,
}

impl SimFile {
    fn new(chunk_bytes: usize) -> Self {
        SimFile { current: Chunked::new(chunk_bytes), durable_len: None, undo: Vec::new() }
    }

    /// Saves the durable bytes in `[start, end)` before they are overwritten.
    fn save(&mut self, start: usize, end: usize) {
        let durable_end = self.durable_len.unwrap_or(0).min(end).min(self.current.len());
        if start < durable_end {
            self.undo.push((start, self.current.read(start, durable_end)));
        }
    }

    /// The durable image (plus `keep_tail` bytes of the unsynced tail); `None` if never durable.
    fn crash(&mut self, keep_tail: usize) -> bool {
        let Some(durable_len) = self.durable_len else { return false };
        let tail_end = durable_len.saturating_add(keep_tail).min(self.current.len());
        let tail = if tail_end > durable_len { self.current.read(durable_len, tail_end) } else { Vec::new() };
        self.current.extend_zeros(durable_len);
        for (offset, bytes) in self.undo.drain(..).rev() {
            self.current.write_at(offset, &bytes);
        }
        self.current.truncate(durable_len);
        self.current.append(&tail);
        true
    }
}

#[derive(Debug)]
struct State {
    files: BTreeMap<String, SimFile>,
    faults: DiskFaults,
    counters: DiskCounters,
    /// Each file's chunk size ([`FILE_CHUNK_BYTES`]; tests use tiny chunks).
    chunk_bytes: usize,
}

impl Default for State {
    fn default() -> Self {
        State { files: BTreeMap::new(), faults: DiskFaults::default(), counters: DiskCounters::default(), chunk_bytes: FILE_CHUNK_BYTES }
    }
}

impl State {
    /// The file at `path`, created empty (not durable) if absent.
    fn file_mut(&mut self, path: &str) -> &mut SimFile {
        let chunk_bytes = self.chunk_bytes;
        if !self.files.contains_key(path) {
            self.files.insert(path.to_string(), SimFile::new(chunk_bytes));
        }
        self.files.get_mut(path).expect("inserted above")
    }
}

/// A simulated disk; clones share the same bytes.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected disk fault: {what}"))
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no such file: {path}"))
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty disk whose files are kept in chunks of `chunk_bytes` (tests: chunk boundaries).
    #[cfg(test)]
    fn with_chunk_bytes(chunk_bytes: usize) -> Self {
        let disk = Self::default();
        disk.lock().chunk_bytes = chunk_bytes.max(1);
        disk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock is a bug elsewhere; the bytes are still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a power cut: every file reverts to its durable image (plus, with
    /// [`TornTail::KeepPrefix`], a prefix of its unsynced tail); never-synced files vanish.
    /// Call it while the node is killed, before restarting it.
    pub fn crash(&self, torn: TornTail) {
        let mut state = self.lock();
        state.counters.crashes += 1;
        let keep_tail = match torn {
            TornTail::None => 0,
            TornTail::KeepPrefix { bytes } => usize::try_from(bytes).unwrap_or(usize::MAX),
        };
        state.files.retain(|_, file| file.crash(keep_tail));
    }

    /// Sets the injected faults (replacing the previous ones).
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// The injected faults in force.
    pub fn faults(&self) -> DiskFaults {
        self.lock().faults
    }

    /// Counters since creation.
    pub fn counters(&self) -> DiskCounters {
        self.lock().counters
    }

    /// Bytes not yet durable, over all files (current bytes beyond the durable length).
    pub fn unsynced_bytes(&self) -> u64 {
        self.lock()
            .files
            .values()
            .map(|f| f.current.len().saturating_sub(f.durable_len.unwrap_or(0)) as u64)
            .sum()
    }

    async fn delay(&self) {
        let latency_ms = self.lock().faults.latency_ms;
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
    }

    /// Runs a mutating operation after the latency, unless writes fail.
    async fn write_op<T>(&self, path: &str, op: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        check_path(path)?;
        self.delay().await;
        let mut state = self.lock();
        if state.faults.fail_writes {
            return Err(injected("write"));
        }
        op(&mut state)
    }

    async fn read_op<T>(&self, path: &str, op: impl FnOnce(&State) -> io::Result<T>) -> io::Result<T> {
        check_path(path)?;
        self.delay().await;
        op(&self.lock())
    }
}

impl Disk for SimDisk {
    async fn create(&self, path: &str) -> io::Result<()> {
        self.write_op(path, |s| {
            let file = s.file_mut(path);
            let len = file.current.len();
            file.save(0, len);
            file.current.clear();
            Ok(())
        })
        .await
    }

    async fn append(&self, path: &str, data: &[u8]) -> io::Result<u64> {
        self.write_op(path, |s| {
            s.counters.bytes_written += data.len() as u64;
            let file = s.file_mut(path);
            let offset = file.current.len() as u64;
            file.current.append(data);
            Ok(offset)
        })
        .await
    }

    async fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_op(path, |s| {
            let start = usize::try_from(offset).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
            let end = start
                .checked_add(data.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset + length overflows"))?;
            s.counters.bytes_written += data.len() as u64;
            let file = s.file_mut(path);
            file.save(start, end);
            file.current.write_at(start, data);
            Ok(())
        })
        .await
    }

    async fn read(&self, path: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.read_op(path, |s| {
            let file = s.files.get(path).ok_or_else(|| not_found(path))?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(file.current.len());
            Ok(file.current.read(start, start.saturating_add(len)))
        })
        .await
    }

    async fn read_all(&self, path: &str) -> io::Result<Vec<u8>> {
        self.read_op(path, |s| s.files.get(path).map(|f| f.current.read(0, f.current.len())).ok_or_else(|| not_found(path))).await
    }

    async fn len(&self, path: &str) -> io::Result<u64> {
        self.read_op(path, |s| s.files.get(path).map(|f| f.current.len() as u64).ok_or_else(|| not_found(path))).await
    }

    async fn fsync(&self, path: &str) -> io::Result<()> {
        check_path(path)?;
        self.delay().await;
        let mut state = self.lock();
        if state.faults.fail_fsyncs {
            return Err(injected("fsync"));
        }
        let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let newly = file.current.len().saturating_sub(file.durable_len.unwrap_or(0)) as u64;
        file.durable_len = Some(file.current.len());
        file.undo.clear();
        state.counters.fsyncs += 1;
        state.counters.bytes_synced += newly;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.delay().await;
        let state = self.lock();
        Ok(state.files.range(prefix.to_string()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix)).cloned().collect())
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        self.write_op(path, |s| s.files.remove(path).map(|_| ()).ok_or_else(|| not_found(path))).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_path(to)?;
        self.write_op(from, |s| {
            let mut file = s.files.remove(from).ok_or_else(|| not_found(from))?;
            // The rename itself is durable: the entry exists after a crash, with whatever
            // content was durable (empty if never synced).
            file.durable_len = Some(file.durable_len.unwrap_or(0));
            s.files.insert(to.to_string(), file);
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Polls a future that never waits (the disk without latency) to completion.
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a disk without latency never waits"),
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Create,
        Append(Vec<u8>),
        WriteAt(usize, Vec<u8>),
        Fsync,
        Crash(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Create),
            4 => proptest::collection::vec(any::<u8>(), 1..8).prop_map(Op::Append),
            2 => (0usize..24, proptest::collection::vec(any::<u8>(), 1..6)).prop_map(|(o, d)| Op::WriteAt(o, d)),
            2 => Just(Op::Fsync),
            1 => (0usize..6).prop_map(Op::Crash),
        ]
    }

    #[test]
    fn reused_chunks_never_show_old_bytes() {
        // Big files in whole chunks (some moved out of a growing first chunk), given back to the
        // pool by remove, truncation (a crash) and dropping the disk, then reused by files whose
        // gaps must read as zeros.
        let pattern = |seed: u8, n: usize| (0..n).map(|i| seed.wrapping_add(i as u8) | 1).collect::<Vec<u8>>();
        for round in 0..3u8 {
            let disk = SimDisk::new();
            let big = pattern(round, FILE_CHUNK_BYTES * 2 + 4321);
            now(disk.append("a", &big[..1000])).unwrap();
            now(disk.append("a", &big[1000..])).unwrap();
            now(disk.fsync("a")).unwrap();
            now(disk.append("a", &big)).unwrap();
            disk.crash(TornTail::None);
            assert_eq!(now(disk.read_all("a")).unwrap(), big);
            now(disk.remove("a")).unwrap();
            let gap = FILE_CHUNK_BYTES + 17;
            now(disk.write_at("b", gap as u64, b"xyz")).unwrap();
            now(disk.append("c", &pattern(round + 7, 3 * FILE_CHUNK_BYTES))).unwrap();
            let b = now(disk.read_all("b")).unwrap();
            assert_eq!(b.len(), gap + 3);
            assert!(b[..gap].iter().all(|&x| x == 0), "a gap reads as zeros");
            assert_eq!(&b[gap..], b"xyz");
            assert_eq!(now(disk.read_all("c")).unwrap(), pattern(round + 7, 3 * FILE_CHUNK_BYTES));
        }
        let pool = CHUNK_POOL.lock().unwrap();
        assert!(pool.len() <= CHUNK_POOL_CHUNKS_MAX);
        assert!(pool.iter().all(|c| c.is_empty() && c.capacity() == FILE_CHUNK_BYTES));
    }

    proptest! {
        /// The undo-log disk behaves exactly like the obvious model that copies the whole file
        /// into a durable image at every fsync.
        #[test]
        fn the_disk_matches_a_whole_copy_model(ops in proptest::collection::vec(op(), 1..60), chunk_bytes in prop_oneof![1usize..6, Just(FILE_CHUNK_BYTES)]) {
            let disk = SimDisk::with_chunk_bytes(chunk_bytes);
            let mut durable: Option<Vec<u8>> = None;
            let mut current: Option<Vec<u8>> = None;
            for op in ops {
                match op {
                    Op::Create => {
                        now(disk.create("f")).unwrap();
                        current = Some(Vec::new());
                    }
                    Op::Append(d) => {
                        now(disk.append("f", &d)).unwrap();
                        current.get_or_insert_with(Vec::new).extend_from_slice(&d);
                    }
                    Op::WriteAt(o, d) => {
                        now(disk.write_at("f", o as u64, &d)).unwrap();
                        let c = current.get_or_insert_with(Vec::new);
                        if c.len() < o + d.len() {
                            c.resize(o + d.len(), 0);
                        }
                        c[o..o + d.len()].copy_from_slice(&d);
                    }
                    Op::Fsync => {
                        let r = now(disk.fsync("f"));
                        prop_assert_eq!(r.is_ok(), current.is_some());
                        if let Some(c) = &current {
                            durable = Some(c.clone());
                        }
                    }
                    Op::Crash(keep) => {
                        disk.crash(if keep == 0 { TornTail::None } else { TornTail::KeepPrefix { bytes: keep as u64 } });
                        current = durable.clone().map(|mut d| {
                            let c = current.clone().unwrap_or_default();
                            if c.len() > d.len() {
                                let end = (d.len() + keep).min(c.len());
                                d.extend_from_slice(&c[d.len()..end]);
                            }
                            d
                        });
                    }
                }
                let read = now(disk.read_all("f")).ok();
                prop_assert_eq!(&read, &current);
            }
        }
    }
}
