//! An S3-like blob store for checkpoint data and metadata: an external system on its own node,
//! durable through a [`Disk`]. It plays the part of Flink's checkpoint storage
//! (`FileSystemCheckpointStorage` on S3/HDFS) and of the HA store for the latest completed
//! checkpoint pointer.
//!
//! Semantics:
//! - `put(key, bytes, overwrite)` is acknowledged only once durable: the object is written to a
//!   temp file, fsynced, then renamed into place (a durable, atomic replace). An object is
//!   therefore, after any crash, either absent, the old version, or the complete new one.
//!   Without `overwrite`, a put of an existing key fails with [`BlobError::AlreadyExists`].
//! - Objects are stored sealed ([`floe_core::codec::seal`]: magic, version, length, crc32): a
//!   damaged object is [`BlobError::Corrupt`] on `get`, never returned silently.
//! - `list(prefix)` returns the keys starting with `prefix`, sorted. `delete` is durable.
//! - Opening a store (startup recovery) removes temp files left by puts cut short by a crash.
//!
//! Remote access: [`run_blob_server`] serves [`BlobRequest`]s over [`crate::transport::rpc`];
//! [`BlobClient`] is the typed client. The harness injects faults through [`BlobFaults`].

use crate::disk::Disk;
use crate::transport::rpc::{serve, RpcClient, RpcConfig, RpcError};
use crate::transport::FRAME_BYTES_MAX;
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The envelope magic of a stored object.
pub const BLOB_MAGIC: [u8; 4] = *b"FLBO";
/// The envelope format version of a stored object.
pub const BLOB_FORMAT_VERSION: u16 = 1;
/// The largest object, in bytes (it must fit in one RPC frame with its key).
pub const BLOB_BYTES_MAX: usize = FRAME_BYTES_MAX - 64 * 1024;
/// The longest key, in bytes.
pub const BLOB_KEY_BYTES_MAX: usize = 512;

const OBJECTS_DIR: &str = "objects/";
const TEMP_DIR: &str = "tmp/";

/// Why a blob operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BlobError {
    /// No object under that key.
    #[error("blob not found: {0}")]
    NotFound(String),
    /// A put without `overwrite` found the key taken.
    #[error("blob already exists: {0}")]
    AlreadyExists(String),
    /// The stored object fails its checksum or envelope check.
    #[error("blob {key} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is empty, too long or not a clean relative name.
    #[error("bad blob key {0:?}")]
    BadKey(String),
    /// The object exceeds [`BLOB_BYTES_MAX`].
    #[error("blob of {len} bytes exceeds {BLOB_BYTES_MAX}")]
    TooLarge {
        /// The object's size.
        len: usize,
    },
    /// The store refused or could not be reached (injected fault, connection failure).
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// No answer in time (the store may or may not have done the operation).
    #[error("blob store timed out")]
    Timeout,
    /// The store's disk failed.
    #[error("blob store i/o error: {0}")]
    Io(String),
}

impl From<RpcError> for BlobError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Timeout { .. } => BlobError::Timeout,
            other => BlobError::Unavailable(other.to_string()),
        }
    }
}

fn io_err(e: io::Error) -> BlobError {
    BlobError::Io(e.to_string())
}

/// Faults the harness injects into a blob store; clones share the settings.
#[derive(Debug, Clone, Default)]
pub struct BlobFaults {
    inner: Arc<Mutex<BlobFaultSettings>>,
}

/// The settings behind [`BlobFaults`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobFaultSettings {
    /// Every put fails with [`BlobError::Unavailable`] (nothing is written).
    pub fail_puts: bool,
    /// Added to every put before it starts, in milliseconds.
    pub put_latency_ms: u64,
}

impl BlobFaults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the settings (from the next put on).
    pub fn set(&self, settings: BlobFaultSettings) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// Makes puts fail, or not.
    pub fn set_fail_puts(&self, fail: bool) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).fail_puts = fail;
    }

    /// Slows every put by `ms`.
    pub fn set_put_latency_ms(&self, ms: u64) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).put_latency_ms = ms;
    }

    /// The settings in force.
    pub fn get(&self) -> BlobFaultSettings {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a key: non-empty, at most [`BLOB_KEY_BYTES_MAX`] bytes, no control characters.
fn check_key(key: &str) -> Result<(), BlobError> {
    if key.is_empty() || key.len() > BLOB_KEY_BYTES_MAX || key.chars().any(char::is_control) {
        return Err(BlobError::BadKey(key.to_string()));
    }
    Ok(())
}

/// Maps a key to one flat file name: `%` → `%25`, `/` → `%2F` (so keys with `/` never clash
/// with directories, and `..` stays inside one name component). `.` alone and `..` would be
/// path components; they are escaped too.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for ch in key.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '\\' => out.push_str("%5C"),
            _ => out.push(ch),
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

fn decode_key(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "5C" => '\\',
            "2E" => '.',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A blob store on a disk.
#[derive(Debug)]
pub struct BlobStore<D: Disk> {
    disk: D,
    faults: BlobFaults,
    temp_seq: AtomicU64,
    /// Serializes the check-and-rename of puts and deletes, so `overwrite: false` is atomic.
    namespace: tokio::sync::Mutex<()>,
}

impl<D: Disk> BlobStore<D> {
    /// Opens the store: removes temp files left by puts that a crash cut short.
    pub async fn open(disk: D, faults: BlobFaults) -> Result<Self, BlobError> {
        let leftovers = disk.list(TEMP_DIR).await.map_err(io_err)?;
        for temp in &leftovers {
            match disk.remove(temp).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if !leftovers.is_empty() {
            tracing::info!(removed = leftovers.len(), "blob store removed leftover temp files");
        }
        Ok(Self { disk, faults, temp_seq: AtomicU64::new(0), namespace: tokio::sync::Mutex::new(()) })
    }

    fn object_path(key: &str) -> String {
        format!("{OBJECTS_DIR}{}", encode_key(key))
    }

    /// Stores `bytes` under `key`, durably, before returning `Ok`.
    pub async fn put(&self, key: &str, bytes: &[u8], overwrite: bool) -> Result<(), BlobError> {
        check_key(key)?;
        if bytes.len() > BLOB_BYTES_MAX {
            return Err(BlobError::TooLarge { len: bytes.len() });
        }
        let faults = self.faults.get();
        if faults.put_latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.put_latency_ms)).await;
        }
        if self.faults.get().fail_puts {
            return Err(BlobError::Unavailable("injected put failure".to_string()));
        }
        let path = Self::object_path(key);
        if !overwrite && self.exists(&path).await? {
            return Err(BlobError::AlreadyExists(key.to_string()));
        }
        let temp = format!("{TEMP_DIR}{}", self.temp_seq.fetch_add(1, Ordering::Relaxed));
        let sealed = floe_core::codec::seal(BLOB_MAGIC, BLOB_FORMAT_VERSION, bytes);
        let written = async {
            self.disk.create(&temp).await?;
            self.disk.append(&temp, &sealed).await?;
            self.disk.fsync(&temp).await
        }
        .await;
        if let Err(e) = written {
            let _ = self.disk.remove(&temp).await;
            return Err(io_err(e));
        }
        let _namespace = self.namespace.lock().await;
        if !overwrite && self.exists(&path).await? {
            let _ = self.disk.remove(&temp).await;
            return Err(BlobError::AlreadyExists(key.to_string()));
        }
        if let Err(e) = self.disk.rename(&temp, &path).await {
            let _ = self.disk.remove(&temp).await;
            return Err(io_err(e));
        }
        Ok(())
    }

    async fn exists(&self, path: &str) -> Result<bool, BlobError> {
        match self.disk.len(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// The object under `key`, if any; a damaged object is [`BlobError::Corrupt`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        check_key(key)?;
        let sealed = match self.disk.read_all(&Self::object_path(key)).await {
            Ok(sealed) => sealed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        match floe_core::codec::open(BLOB_MAGIC, BLOB_FORMAT_VERSION, &sealed) {
            Ok(body) => Ok(Some(body.to_vec())),
            Err(e) => Err(BlobError::Corrupt { key: key.to_string(), reason: e.to_string() }),
        }
    }

    /// The keys starting with `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let names = self.disk.list(OBJECTS_DIR).await.map_err(io_err)?;
        let mut keys: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_prefix(OBJECTS_DIR))
            .filter_map(decode_key)
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Removes the object under `key` (durably); `NotFound` if there is none.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        let _namespace = self.namespace.lock().await;
        match self.disk.remove(&Self::object_path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(key.to_string())),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Serves one request.
    pub async fn handle(&self, req: BlobRequest) -> BlobResponse {
        match req {
            BlobRequest::Put { key, bytes, overwrite } => BlobResponse::Put(self.put(&key, &bytes, overwrite).await),
            BlobRequest::Get { key } => BlobResponse::Get(self.get(&key).await),
            BlobRequest::List { prefix } => BlobResponse::List(self.list(&prefix).await),
            BlobRequest::Delete { key } => BlobResponse::Delete(self.delete(&key).await),
        }
    }
}

/// A request to a blob server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Store an object.
    Put {
        /// The key.
        key: String,
        /// The object.
        bytes: Vec<u8>,
        /// Replace an existing object.
        overwrite: bool,
    },
    /// Fetch an object.
    Get {
        /// The key.
        key: String,
    },
    /// List keys.
    List {
        /// The prefix the keys start with.
        prefix: String,
    },
    /// Remove an object.
    Delete {
        /// The key.
        key: String,
    },
}

/// A blob server's answer, one variant per request kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// To [`BlobRequest::Put`].
    Put(Result<(), BlobError>),
    /// To [`BlobRequest::Get`].
    Get(Result<Option<Vec<u8>>, BlobError>),
    /// To [`BlobRequest::List`].
    List(Result<Vec<String>, BlobError>),
    /// To [`BlobRequest::Delete`].
    Delete(Result<(), BlobError>),
}

/// Opens a store on `disk` (recovery first), binds `addr` and serves it until the task is
/// dropped (the node is killed). Returns only on a startup or fatal accept error.
pub async fn run_blob_server<D: Disk>(addr: SocketAddr, disk: D, faults: BlobFaults) -> io::Result<()> {
    let store = BlobStore::open(disk, faults).await.map_err(|e| io::Error::other(e.to_string()))?;
    let store = Arc::new(store);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "blob server listening");
    serve(listener, move |req: BlobRequest| {
        let store = store.clone();
        async move { store.handle(req).await }
    })
    .await
}

/// A typed client of a blob server.
#[derive(Debug, Clone)]
pub struct BlobClient {
    rpc: RpcClient<BlobRequest, BlobResponse>,
}

fn unexpected(resp: &BlobResponse) -> BlobError {
    BlobError::Unavailable(format!("unexpected response {resp:?}"))
}

impl BlobClient {
    /// A client of the server at `addr` (connects lazily).
    pub fn new(addr: SocketAddr, config: RpcConfig) -> Self {
        Self { rpc: RpcClient::new(addr, config) }
    }

    /// Stores an object; `Ok` means durable. On `Timeout`/`Unavailable` the put may or may
    /// not have happened (it is then either absent or complete, never torn).
    pub async fn put(&self, key: &str, bytes: Vec<u8>, overwrite: bool) -> Result<(), BlobError> {
        if bytes.len() > BLOB_BYTES_MAX {
            return Err(BlobError::TooLarge { len: bytes.len() });
        }
        match self.rpc.call(BlobRequest::Put { key: key.to_string(), bytes, overwrite }).await? {
            BlobResponse::Put(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// Fetches an object.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match self.rpc.call(BlobRequest::Get { key: key.to_string() }).await? {
            BlobResponse::Get(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// Lists the keys starting with `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        match self.rpc.call(BlobRequest::List { prefix: prefix.to_string() }).await? {
            BlobResponse::List(r) => r,
            other => Err(unexpected(&other)),
        }
    }

    /// Removes an object; `NotFound` if there is none.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.rpc.call(BlobRequest::Delete { key: key.to_string() }).await? {
            BlobResponse::Delete(r) => r,
            other => Err(unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskFaults, SimDisk, TornTail};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        #[cfg(madsim)]
        {
            madsim::runtime::Runtime::new().block_on(f)
        }
        #[cfg(not(madsim))]
        {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
        }
    }

    #[test]
    fn keys_map_to_flat_names_and_back() {
        for key in ["a", "cp/1/meta", "100%", "a%2Fb", "..", ".", "x/../y", "back\\slash", "ünï/cödé"] {
            let name = encode_key(key);
            assert!(!name.contains('/'), "{key:?} -> {name:?}");
            crate::disk::check_path(&format!("{OBJECTS_DIR}{name}")).unwrap();
            assert_eq!(decode_key(&name).as_deref(), Some(key), "{key:?}");
        }
        assert_eq!(decode_key("bad%zz"), None);
        assert_eq!(decode_key("cut%2"), None);
    }

    #[test]
    fn put_get_list_delete_and_the_overwrite_rules() {
        block_on(async {
            let store = BlobStore::open(SimDisk::new(), BlobFaults::new()).await.unwrap();
            // (key, bytes, overwrite, expected)
            type Step = (&'static str, &'static [u8], bool, Result<(), BlobError>);
            let steps: Vec<Step> = vec![
                ("cp/2/meta", b"two", false, Ok(())),
                ("cp/10/meta", b"ten", false, Ok(())),
                ("cp/2/meta", b"again", false, Err(BlobError::AlreadyExists("cp/2/meta".into()))),
                ("cp/2/meta", b"replaced", true, Ok(())),
                ("latest", b"", true, Ok(())),
                ("", b"x", true, Err(BlobError::BadKey(String::new()))),
            ];
            for (key, bytes, overwrite, expected) in steps {
                assert_eq!(store.put(key, bytes, overwrite).await, expected, "put {key:?} overwrite={overwrite}");
            }
            assert_eq!(store.get("cp/2/meta").await.unwrap().unwrap(), b"replaced");
            assert_eq!(store.get("latest").await.unwrap().unwrap(), b"");
            assert_eq!(store.get("cp/3/meta").await.unwrap(), None);
            assert_eq!(store.list("cp/").await.unwrap(), vec!["cp/10/meta", "cp/2/meta"]);
            assert_eq!(store.list("").await.unwrap(), vec!["cp/10/meta", "cp/2/meta", "latest"]);
            store.delete("cp/10/meta").await.unwrap();
            assert_eq!(store.delete("cp/10/meta").await, Err(BlobError::NotFound("cp/10/meta".into())));
            assert_eq!(store.list("cp/").await.unwrap(), vec!["cp/2/meta"]);
            let big = vec![0u8; BLOB_BYTES_MAX + 1];
            assert_eq!(store.put("big", &big, true).await, Err(BlobError::TooLarge { len: BLOB_BYTES_MAX + 1 }));
        });
    }

    #[test]
    fn a_damaged_object_is_a_typed_error_never_returned() {
        let disk = SimDisk::new();
        block_on(async {
            let store = BlobStore::open(disk.clone(), BlobFaults::new()).await.unwrap();
            store.put("k", b"precious state", false).await.unwrap();
            let path = BlobStore::<SimDisk>::object_path("k");
            let len = disk.len(&path).await.unwrap();
            disk.write_at(&path, len - 1, b"!").await.unwrap();
            assert!(matches!(store.get("k").await, Err(BlobError::Corrupt { .. })));
            disk.create(&path).await.unwrap(); // truncated to nothing
            assert!(matches!(store.get("k").await, Err(BlobError::Corrupt { .. })));
        });
    }

    #[test]
    fn failed_puts_return_errors_and_leave_nothing_behind() {
        let disk = SimDisk::new();
        block_on(async {
            let faults = BlobFaults::new();
            let store = BlobStore::open(disk.clone(), faults.clone()).await.unwrap();
            store.put("k", b"old", false).await.unwrap();
            faults.set_fail_puts(true);
            assert!(matches!(store.put("k", b"new", true).await, Err(BlobError::Unavailable(_))));
            faults.set_fail_puts(false);
            for disk_faults in [
                DiskFaults { fail_writes: true, ..DiskFaults::default() },
                DiskFaults { fail_fsyncs: true, ..DiskFaults::default() },
            ] {
                disk.set_faults(disk_faults);
                assert!(matches!(store.put("k", b"new", true).await, Err(BlobError::Io(_))), "{disk_faults:?}");
                assert!(matches!(store.put("other", b"new", false).await, Err(BlobError::Io(_))), "{disk_faults:?}");
                disk.set_faults(DiskFaults::default());
                assert_eq!(store.get("k").await.unwrap().unwrap(), b"old", "{disk_faults:?}");
                assert_eq!(store.get("other").await.unwrap(), None, "{disk_faults:?}");
            }
            // Slow puts are slow, and still correct.
            faults.set_put_latency_ms(40);
            #[allow(clippy::disallowed_methods)] // virtual time under madsim
            let started = tokio::time::Instant::now();
            store.put("slow", b"s", false).await.unwrap();
            assert!(started.elapsed() >= Duration::from_millis(40));
            assert_eq!(store.get("slow").await.unwrap().unwrap(), b"s");
        });
        // A failed fsync may leave a temp file (its removal failed too, while writes failed);
        // startup recovery removes it.
        disk.crash(TornTail::None);
        block_on(async {
            disk.create("tmp/99").await.unwrap();
            disk.append("tmp/99", b"half a put").await.unwrap();
            disk.fsync("tmp/99").await.unwrap();
            let store = BlobStore::open(disk.clone(), BlobFaults::new()).await.unwrap();
            assert_eq!(disk.list(TEMP_DIR).await.unwrap(), Vec::<String>::new());
            assert_eq!(store.list("").await.unwrap(), vec!["k", "slow"]);
        });
    }

    #[cfg(not(madsim))]
    #[test]
    fn the_store_works_on_the_real_disk_and_recovers_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::disk::RealDisk::new(dir.path());
        block_on(async {
            let store = BlobStore::open(disk.clone(), BlobFaults::new()).await.unwrap();
            store.put("cp/1/meta", b"one", false).await.unwrap();
            store.put("cp/1/meta", b"uno", true).await.unwrap();
            assert_eq!(store.put("cp/1/meta", b"x", false).await, Err(BlobError::AlreadyExists("cp/1/meta".into())));
            disk.append("tmp/3", b"left by a crash").await.unwrap();
            drop(store);
            let store = BlobStore::open(disk.clone(), BlobFaults::new()).await.unwrap();
            assert_eq!(store.get("cp/1/meta").await.unwrap().unwrap(), b"uno");
            assert_eq!(disk.list("").await.unwrap(), vec!["objects/cp%2F1%2Fmeta"]);
        });
    }

    #[test]
    fn an_acknowledged_put_survives_a_crash_with_a_torn_tail() {
        let disk = SimDisk::new();
        block_on(async {
            let store = BlobStore::open(disk.clone(), BlobFaults::new()).await.unwrap();
            store.put("a", b"acknowledged", false).await.unwrap();
            // A put cut short before its fsync: a temp file with unsynced bytes.
            disk.create("tmp/7").await.unwrap();
            disk.append("tmp/7", b"never acknowledged").await.unwrap();
        });
        disk.crash(TornTail::KeepPrefix { bytes: 5 });
        block_on(async {
            let store = BlobStore::open(disk.clone(), BlobFaults::new()).await.unwrap();
            assert_eq!(store.get("a").await.unwrap().unwrap(), b"acknowledged");
            assert_eq!(store.list("").await.unwrap(), vec!["a"]);
            assert!(disk.list(TEMP_DIR).await.unwrap().is_empty());
        });
    }
}

#[cfg(all(test, madsim))]
mod sim_tests {
    use super::*;
    use crate::disk::{DiskFaults, SimDisk, TornTail};
    use madsim::runtime::{Handle, NodeHandle, Runtime};
    use std::net::IpAddr;

    const BLOB_IP: &str = "10.0.2.1";
    const CLIENT_IP: &str = "10.0.2.2";

    fn blob_addr() -> SocketAddr {
        SocketAddr::new(BLOB_IP.parse().unwrap(), 9000)
    }

    fn blob_node(disk: SimDisk, faults: BlobFaults) -> NodeHandle {
        Handle::current()
            .create_node()
            .name("blob")
            .ip(BLOB_IP.parse::<IpAddr>().unwrap())
            .init(move || {
                let (disk, faults) = (disk.clone(), faults.clone());
                async move { run_blob_server(blob_addr(), disk, faults).await.unwrap() }
            })
            .build()
    }

    fn client_node() -> NodeHandle {
        Handle::current().create_node().name("client").ip(CLIENT_IP.parse::<IpAddr>().unwrap()).build()
    }

    fn rpc_config() -> RpcConfig {
        RpcConfig { call_timeout_ms: 1_000, ..RpcConfig::default() }
    }

    fn object(round: u64, i: u64) -> Vec<u8> {
        (0..(100 + (round * 31 + i * 17) % 400)).map(|b| (b as u8) ^ (i as u8)).collect()
    }

    #[test]
    fn a_restarted_blob_node_keeps_every_acknowledged_put_and_never_a_torn_one() {
        let mut rt = Runtime::with_seed_and_config(21, madsim::Config::default());
        rt.set_time_limit(Duration::from_secs(600));
        rt.block_on(async {
            let disk = SimDisk::new();
            // Every disk op takes 3 ms: a kill lands inside puts at every stage.
            disk.set_faults(DiskFaults { latency_ms: 3, ..DiskFaults::default() });
            let blob = blob_node(disk.clone(), BlobFaults::new());
            let client = client_node();
            let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
            let mut unacked: Vec<(String, Vec<u8>)> = Vec::new();
            for round in 0..10u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let writer = client.spawn(async move {
                    let blobs = BlobClient::new(blob_addr(), rpc_config());
                    let mut results = Vec::new();
                    for i in 0.. {
                        let key = format!("round-{round}/obj-{i}");
                        let r = blobs.put(&key, object(round, i), false).await;
                        let ok = r.is_ok();
                        results.push((key, object(round, i), ok));
                        if !ok {
                            break;
                        }
                    }
                    results
                });
                tokio::time::sleep(Duration::from_millis(80 + round * 7)).await;
                Handle::current().kill(blob.id());
                disk.crash(TornTail::KeepPrefix { bytes: round * 13 });
                let results = writer.await.unwrap();
                assert!(results.len() >= 2, "round {round}: some puts were acknowledged");
                for (key, bytes, ok) in results {
                    if ok { acked.push((key, bytes)) } else { unacked.push((key, bytes)) }
                }
                Handle::current().restart(blob.id());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (acked2, unacked2) = (acked.clone(), unacked.clone());
            let (present_unacked, listed) = client
                .spawn(async move {
                    let blobs = BlobClient::new(blob_addr(), rpc_config());
                    for (key, bytes) in &acked2 {
                        assert_eq!(blobs.get(key).await.unwrap().as_ref(), Some(bytes), "acknowledged {key} lost");
                    }
                    let mut present = 0;
                    for (key, bytes) in &unacked2 {
                        match blobs.get(key).await.unwrap() {
                            None => {}
                            Some(got) => {
                                assert_eq!(&got, bytes, "unacknowledged {key} is torn");
                                present += 1;
                            }
                        }
                    }
                    (present, blobs.list("round-").await.unwrap())
                })
                .await
                .unwrap();
            assert_eq!(unacked.len(), 10);
            assert_eq!(listed.len(), acked.len() + present_unacked);
            assert!(disk.list(TEMP_DIR).await.unwrap().is_empty(), "recovery removed the temp files");
        });
    }

    #[test]
    fn remote_puts_follow_the_overwrite_rules_and_report_failures() {
        let rt = Runtime::with_seed_and_config(22, madsim::Config::default());
        rt.block_on(async {
            let faults = BlobFaults::new();
            let _blob = blob_node(SimDisk::new(), faults.clone());
            let client = client_node();
            client
                .spawn(async move {
                    let blobs = BlobClient::new(blob_addr(), rpc_config());
                    blobs.put("k", b"v1".to_vec(), false).await.unwrap();
                    assert_eq!(blobs.put("k", b"v2".to_vec(), false).await, Err(BlobError::AlreadyExists("k".into())));
                    blobs.put("k", b"v3".to_vec(), true).await.unwrap();
                    assert_eq!(blobs.get("k").await.unwrap().unwrap(), b"v3");
                    faults.set_fail_puts(true);
                    assert!(matches!(blobs.put("j", b"x".to_vec(), false).await, Err(BlobError::Unavailable(_))));
                    faults.set_fail_puts(false);
                    faults.set_put_latency_ms(2_000);
                    assert_eq!(blobs.put("j", b"x".to_vec(), false).await, Err(BlobError::Timeout));
                    faults.set_put_latency_ms(0);
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                    // The timed-out put went through after all: a timeout means "unknown".
                    assert_eq!(blobs.get("j").await.unwrap().unwrap(), b"x");
                    assert_eq!(blobs.list("").await.unwrap(), vec!["j", "k"]);
                    blobs.delete("j").await.unwrap();
                    assert_eq!(blobs.delete("j").await, Err(BlobError::NotFound("j".into())));
                    assert_eq!(blobs.get("j").await.unwrap(), None);
                })
                .await
                .unwrap();
        });
    }
}
