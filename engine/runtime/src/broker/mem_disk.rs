//! A tiny in-memory [`Disk`] for the broker's unit tests: every file remembers how many of its
//! bytes are fsynced; [`MemDisk::crash`] keeps the synced bytes plus a chosen part of the
//! unsynced tail (a torn write). It can also fail every write after a countdown. Its futures are
//! always ready, so [`block_on`] can drive the broker without a runtime.

use crate::disk::Disk;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
struct File {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Debug, Default)]
struct Inner {
    files: BTreeMap<String, File>,
    /// Writes (append/create/write_at/fsync) allowed before every one fails; `None`: no faults.
    writes_until_failure: Option<u64>,
}

/// The test disk (clones share the bytes, like a harness-owned disk).
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<Inner>>,
}

impl MemDisk {
    /// Loses unsynced bytes, keeping `torn_keep(unsynced_len)` of each file's unsynced tail.
    pub fn crash(&self, torn_keep: impl Fn(usize) -> usize) {
        let mut inner = self.inner.lock().unwrap();
        for file in inner.files.values_mut() {
            let unsynced = file.data.len() - file.synced;
            let keep = torn_keep(unsynced).min(unsynced);
            file.data.truncate(file.synced + keep);
            file.synced = file.data.len();
        }
        inner.writes_until_failure = None;
    }

    /// After `n` more successful writes or fsyncs, every write and fsync fails.
    pub fn fail_writes_after(&self, n: Option<u64>) {
        self.inner.lock().unwrap().writes_until_failure = n;
    }

    /// The file's bytes.
    pub fn bytes(&self, path: &str) -> Vec<u8> {
        self.inner.lock().unwrap().files.get(path).map(|f| f.data.clone()).unwrap_or_default()
    }

    /// Overwrites a file's bytes as durable (to plant damage).
    pub fn set_bytes(&self, path: &str, data: Vec<u8>) {
        let synced = data.len();
        self.inner.lock().unwrap().files.insert(path.to_string(), File { data, synced });
    }

    fn write_op<T>(&self, f: impl FnOnce(&mut BTreeMap<String, File>) -> io::Result<T>) -> io::Result<T> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(n) = inner.writes_until_failure.as_mut() {
            if *n == 0 {
                return Err(io::Error::other("injected write failure"));
            }
            *n -= 1;
        }
        f(&mut inner.files)
    }

    fn read_op<T>(&self, f: impl FnOnce(&BTreeMap<String, File>) -> io::Result<T>) -> io::Result<T> {
        f(&self.inner.lock().unwrap().files)
    }
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.to_string())
}

fn ready<T: Send>(v: T) -> impl Future<Output = T> + Send {
    std::future::ready(v)
}

impl Disk for MemDisk {
    fn create(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send {
        ready(self.write_op(|fs| {
            fs.insert(path.to_string(), File::default());
            Ok(())
        }))
    }

    fn append(&self, path: &str, data: &[u8]) -> impl Future<Output = io::Result<u64>> + Send {
        ready(self.write_op(|fs| {
            let file = fs.entry(path.to_string()).or_default();
            let at = file.data.len() as u64;
            file.data.extend_from_slice(data);
            Ok(at)
        }))
    }

    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        ready(self.write_op(|fs| {
            let file = fs.entry(path.to_string()).or_default();
            let end = offset as usize + data.len();
            if file.data.len() < end {
                file.data.resize(end, 0);
            }
            file.data[offset as usize..end].copy_from_slice(data);
            file.synced = file.synced.min(offset as usize);
            Ok(())
        }))
    }

    fn read(&self, path: &str, offset: u64, len: usize) -> impl Future<Output = io::Result<Vec<u8>>> + Send {
        ready(self.read_op(|fs| {
            let file = fs.get(path).ok_or_else(|| not_found(path))?;
            let start = (offset as usize).min(file.data.len());
            let end = start.saturating_add(len).min(file.data.len());
            Ok(file.data[start..end].to_vec())
        }))
    }

    fn read_all(&self, path: &str) -> impl Future<Output = io::Result<Vec<u8>>> + Send {
        ready(self.read_op(|fs| fs.get(path).map(|f| f.data.clone()).ok_or_else(|| not_found(path))))
    }

    fn len(&self, path: &str) -> impl Future<Output = io::Result<u64>> + Send {
        ready(self.read_op(|fs| fs.get(path).map(|f| f.data.len() as u64).ok_or_else(|| not_found(path))))
    }

    fn fsync(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send {
        ready(self.write_op(|fs| {
            let file = fs.get_mut(path).ok_or_else(|| not_found(path))?;
            file.synced = file.data.len();
            Ok(())
        }))
    }

    fn list(&self, prefix: &str) -> impl Future<Output = io::Result<Vec<String>>> + Send {
        ready(self.read_op(|fs| Ok(fs.keys().filter(|k| k.starts_with(prefix)).cloned().collect())))
    }

    fn remove(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send {
        ready(self.write_op(|fs| fs.remove(path).map(|_| ()).ok_or_else(|| not_found(path))))
    }

    fn rename(&self, from: &str, to: &str) -> impl Future<Output = io::Result<()>> + Send {
        ready(self.write_op(|fs| {
            let file = fs.remove(from).ok_or_else(|| not_found(from))?;
            fs.insert(to.to_string(), file);
            Ok(())
        }))
    }
}

/// Drives a future whose awaits are all on [`MemDisk`] (always ready) to completion.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("block_on: the future awaited something other than MemDisk"),
    }
}
