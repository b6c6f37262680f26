//! Durable storage as a node sees it.
//!
//! Two implementations share this trait: the simulated disk (its bytes live in the harness,
//! outside the node's futures, so they survive a kill; everything not yet fsynced is lost on a
//! crash) and the real disk (`std::fs` with real fsync of files and their directory).
//!
//! Paths are relative, `/`-separated names inside the disk (no `..`, no leading `/`).
//!
//! | implementation | what |
//! |---|---|
//! | [`SimDisk`] | memory shared with the harness; crash loses unsynced bytes; injected faults |
//! | [`RealDisk`] | `std::fs` under a root directory, with file and directory fsync |

use std::future::Future;
use std::io;

mod real;
mod sim;

pub use real::RealDisk;
pub use sim::{DiskCounters, DiskFaults, SimDisk, TornTail};

/// The longest path a disk accepts, in bytes.
pub const PATH_BYTES_MAX: usize = 1024;

/// Checks that `path` is a relative, `/`-separated name inside a disk: not empty, no leading
/// `/`, no empty, `.` or `..` component, no NUL or backslash, at most [`PATH_BYTES_MAX`] bytes.
/// A bad path is an `InvalidInput` error.
pub fn check_path(path: &str) -> io::Result<()> {
    let bad = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad disk path {path:?}: {why}")));
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > PATH_BYTES_MAX {
        return bad("too long");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("backslash or NUL");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, `.` or `..` component");
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        #[cfg(madsim)]
        {
            madsim::runtime::Runtime::new().block_on(f)
        }
        #[cfg(not(madsim))]
        {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
        }
    }

    /// What the contract tests need from a disk beyond [`Disk`].
    trait Crashable: Disk {
        /// Whether a crash loses unsynced bytes (the real disk's page cache survives a
        /// process crash, so only the simulated one can show the loss).
        const LOSES_UNSYNCED: bool;
        /// Crashes and gives back the disk as the restarted node sees it.
        fn crash_and_reopen(&self, torn: TornTail) -> Self;
    }

    impl Crashable for SimDisk {
        const LOSES_UNSYNCED: bool = true;
        fn crash_and_reopen(&self, torn: TornTail) -> Self {
            self.crash(torn);
            self.clone()
        }
    }

    impl Crashable for RealDisk {
        const LOSES_UNSYNCED: bool = false;
        fn crash_and_reopen(&self, _torn: TornTail) -> Self {
            RealDisk::new(self.root().to_path_buf())
        }
    }

    /// The contract every disk keeps, run against both implementations.
    async fn disk_contract<D: Crashable>(disk: D) {
        // Reads see writes; write_at extends with zeros; read clamps at the end.
        disk.create("a/log").await.unwrap();
        assert_eq!(disk.append("a/log", b"hello").await.unwrap(), 0);
        assert_eq!(disk.append("a/log", b" world").await.unwrap(), 5);
        disk.write_at("a/log", 13, b"!").await.unwrap();
        assert_eq!(disk.read_all("a/log").await.unwrap(), b"hello world\0\0!");
        assert_eq!(disk.read("a/log", 6, 100).await.unwrap(), b"world\0\0!");
        assert_eq!(disk.read("a/log", 100, 5).await.unwrap(), b"");
        assert_eq!(disk.len("a/log").await.unwrap(), 14);

        // Synced bytes survive a crash; unsynced ones do not (on a disk that can lose them).
        disk.fsync("a/log").await.unwrap();
        disk.append("a/log", b"-unsynced").await.unwrap();
        disk.create("never-synced").await.unwrap();
        disk.append("never-synced", b"x").await.unwrap();
        let disk = disk.crash_and_reopen(TornTail::None);
        if D::LOSES_UNSYNCED {
            assert_eq!(disk.read_all("a/log").await.unwrap(), b"hello world\0\0!");
            assert_eq!(disk.read_all("never-synced").await.unwrap_err().kind(), io::ErrorKind::NotFound);
        } else {
            assert_eq!(disk.read_all("a/log").await.unwrap(), b"hello world\0\0!-unsynced");
            disk.remove("never-synced").await.unwrap();
        }

        // Rename replaces the target atomically and durably; remove is durable.
        disk.create("tmp").await.unwrap();
        disk.append("tmp", b"new").await.unwrap();
        disk.fsync("tmp").await.unwrap();
        disk.create("obj").await.unwrap();
        disk.append("obj", b"old").await.unwrap();
        disk.fsync("obj").await.unwrap();
        disk.rename("tmp", "obj").await.unwrap();
        assert_eq!(disk.read_all("obj").await.unwrap(), b"new");
        assert_eq!(disk.read_all("tmp").await.unwrap_err().kind(), io::ErrorKind::NotFound);
        disk.create("gone").await.unwrap();
        disk.fsync("gone").await.unwrap();
        disk.remove("gone").await.unwrap();
        let disk = disk.crash_and_reopen(TornTail::None);
        assert_eq!(disk.read_all("obj").await.unwrap(), b"new");
        assert_eq!(disk.read_all("tmp").await.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(disk.read_all("gone").await.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(disk.remove("gone").await.unwrap_err().kind(), io::ErrorKind::NotFound);

        // list is sorted and filtered by prefix.
        for p in ["b/2", "b/10", "b/1", "c"] {
            disk.append(p, b"x").await.unwrap();
        }
        assert_eq!(disk.list("b/").await.unwrap(), vec!["b/1", "b/10", "b/2"]);
        assert_eq!(disk.list("").await.unwrap(), vec!["a/log", "b/1", "b/10", "b/2", "c", "obj"]);

        // Bad paths are typed errors.
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b"] {
            let err = disk.append(bad, b"x").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert_eq!(disk.read_all(bad).await.unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn the_simulated_disk_keeps_the_disk_contract() {
        block_on(disk_contract(SimDisk::new()));
    }

    #[cfg(not(madsim))]
    #[test]
    fn the_real_disk_keeps_the_disk_contract() {
        let dir = tempfile::tempdir().unwrap();
        block_on(disk_contract(RealDisk::new(dir.path().join("root"))));
    }

    #[test]
    fn a_torn_tail_keeps_only_a_prefix_of_the_unsynced_bytes() {
        // (synced, unsynced, torn, expected after crash)
        type TornCase = (&'static [u8], &'static [u8], TornTail, &'static [u8]);
        let cases: Vec<TornCase> = vec![
            (b"abc", b"defgh", TornTail::None, b"abc"),
            (b"abc", b"defgh", TornTail::KeepPrefix { bytes: 2 }, b"abcde"),
            (b"abc", b"defgh", TornTail::KeepPrefix { bytes: 5 }, b"abcdefgh"),
            (b"abc", b"defgh", TornTail::KeepPrefix { bytes: 99 }, b"abcdefgh"),
            (b"abc", b"", TornTail::KeepPrefix { bytes: 4 }, b"abc"),
        ];
        for (synced, unsynced, torn, expected) in cases {
            let disk = SimDisk::new();
            block_on(async {
                disk.append("f", synced).await.unwrap();
                disk.fsync("f").await.unwrap();
                disk.append("f", unsynced).await.unwrap();
            });
            disk.crash(torn);
            assert_eq!(block_on(disk.read_all("f")).unwrap(), expected, "{torn:?}");
        }
    }

    #[test]
    fn faults_fail_operations_and_latency_delays_them() {
        let disk = SimDisk::new();
        block_on(async {
            disk.append("f", b"durable").await.unwrap();
            disk.fsync("f").await.unwrap();

            disk.set_faults(DiskFaults { fail_writes: true, ..DiskFaults::default() });
            assert!(disk.append("f", b"x").await.is_err());
            assert!(disk.create("g").await.is_err());
            assert!(disk.write_at("f", 0, b"x").await.is_err());
            assert!(disk.rename("f", "g").await.is_err());
            assert!(disk.remove("f").await.is_err());
            disk.fsync("f").await.unwrap();
            assert_eq!(disk.read_all("f").await.unwrap(), b"durable");

            disk.set_faults(DiskFaults { fail_fsyncs: true, ..DiskFaults::default() });
            disk.append("f", b"+more").await.unwrap();
            assert!(disk.fsync("f").await.is_err());
            disk.crash(TornTail::None);
            assert_eq!(disk.read_all("f").await.unwrap(), b"durable", "a failed fsync makes nothing durable");

            disk.set_faults(DiskFaults { latency_ms: 25, ..DiskFaults::default() });
            #[allow(clippy::disallowed_methods)] // virtual time under madsim
            let started = tokio::time::Instant::now();
            disk.read_all("f").await.unwrap();
            disk.append("f", b"x").await.unwrap();
            assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        });
        let c = disk.counters();
        assert_eq!(c.bytes_written, 7 + 5 + 1);
        assert_eq!((c.fsyncs, c.bytes_synced, c.crashes), (2, 7, 1));
    }

    #[test]
    fn a_renamed_file_that_was_never_synced_is_empty_after_a_crash() {
        let disk = SimDisk::new();
        block_on(async {
            disk.append("tmp", b"data").await.unwrap();
            disk.rename("tmp", "obj").await.unwrap();
        });
        disk.crash(TornTail::None);
        assert_eq!(block_on(disk.read_all("obj")).unwrap(), b"");
    }
}
