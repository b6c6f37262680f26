//! Request/response over one TCP connection per client, in the spirit of Flink's RPC layer
//! (`RpcService` / `RpcGateway`, with `akka.ask.timeout` as the per-call timeout).
//!
//! Wire format: each request is one frame carrying `(id: u64, Req)`, each response one frame
//! carrying `(id: u64, Resp)`. Ids are unique per client; responses are matched by id, so many
//! calls may be in flight at once (pipelining) and the server may answer out of order.
//!
//! Failure semantics:
//! - every call has a timeout ([`RpcConfig::call_timeout_ms`]): a partition never breaks a
//!   simulated TCP connection, so a call to a partitioned peer must time out rather than hang;
//! - a timeout, an i/o error or a bad frame closes the client's connection (pending calls on it
//!   fail with [`RpcError::Closed`]); the next call reconnects;
//! - a server that reads a bad frame warns and closes that connection; it never panics and the
//!   bad bytes never reach the handler.
//!
//! Bounds: at most [`RpcConfig::in_flight_max`] calls per client; at most
//! [`SERVER_IN_FLIGHT_PER_CONNECTION_MAX`] handlers running per server connection (the
//! server stops reading that connection until one finishes); frames at most `FRAME_BYTES_MAX`.

use super::frame::{encode_frame, FrameError, FrameReader};
use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

/// Requests a server connection runs concurrently before it stops reading that connection.
pub const SERVER_IN_FLIGHT_PER_CONNECTION_MAX: usize = 1024;

/// Consecutive `accept` failures after which [`serve`] gives up and returns the error.
pub const ACCEPT_ERRORS_CONSECUTIVE_MAX: u32 = 100;

/// Pause after a failed `accept` (e.g. out of file descriptors), in milliseconds.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// Time a call may take in all (waiting for a slot, connecting, the round trip).
    pub call_timeout_ms: u64,
    /// Calls in flight at once on one client; further calls wait for a slot.
    pub in_flight_max: usize,
    /// Time a connection attempt may take (within the call's timeout).
    pub connect_timeout_ms: u64,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self { call_timeout_ms: 5_000, in_flight_max: 256, connect_timeout_ms: 1_000 }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Connecting or writing failed.
    #[error("rpc i/o error: {0}")]
    Io(#[from] io::Error),
    /// No response within `call_timeout_ms` (the connection is closed; the next call reconnects).
    #[error("rpc call timed out after {timeout_ms} ms")]
    Timeout {
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The connection closed before the response arrived (the server may or may not have run it).
    #[error("rpc connection closed before the response arrived")]
    Closed,
    /// A frame could not be encoded (e.g. the request is larger than `FRAME_BYTES_MAX`).
    #[error("rpc frame error: {0}")]
    Frame(#[from] FrameError),
}

/// Serves `handler` on every connection accepted by `listener`, until the task is dropped
/// (a killed node) or `accept` fails [`ACCEPT_ERRORS_CONSECUTIVE_MAX`] times in a row.
///
/// Each request runs in its own task, so a slow request does not hold up the others on its
/// connection; responses are written as they complete, tagged with their request's id.
pub async fn serve<Req, Resp, F, Fut>(listener: TcpListener, handler: F) -> io::Result<()>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let mut accept_errors = 0u32;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                accept_errors = 0;
                let handler = handler.clone();
                tokio::spawn(serve_connection::<Req, Resp, F, Fut>(stream, peer, handler));
            }
            Err(e) => {
                accept_errors += 1;
                tracing::warn!(error = %e, accept_errors, "rpc accept failed");
                if accept_errors >= ACCEPT_ERRORS_CONSECUTIVE_MAX {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_connection<Req, Resp, F, Fut>(stream: TcpStream, peer: SocketAddr, handler: F)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (read_half, mut write_half) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SERVER_IN_FLIGHT_PER_CONNECTION_MAX);
    // The writer batches every response that is ready into one flush.
    let _writer = AbortOnDrop(tokio::spawn(async move {
        while let Some(mut out) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
            }
            if let Err(e) = write_all_and_flush(&mut write_half, &out).await {
                tracing::debug!(%peer, error = %e, "rpc server write failed");
                return;
            }
        }
    }));
    let permits = Arc::new(Semaphore::new(SERVER_IN_FLIGHT_PER_CONNECTION_MAX));
    let mut reader = FrameReader::new(read_half);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        match reader.next::<(u64, Req)>().await {
            Ok(Some((id, req))) => {
                let handler = handler.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let resp = handler(req).await;
                    let mut out = Vec::new();
                    match encode_frame(&(id, resp), &mut out) {
                        Ok(()) => {
                            // The connection may be gone: then the response is dropped.
                            let _ = tx.send(out).await;
                        }
                        Err(e) => tracing::warn!(%peer, id, error = %e, "rpc response does not encode; dropped"),
                    }
                    drop(permit);
                });
            }
            Ok(None) => return,
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "rpc server connection failed");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "rpc server got a bad frame; closing the connection");
                return;
            }
        }
    }
}

async fn write_all_and_flush<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

type Pending<Resp> = Mutex<FxHashMap<u64, oneshot::Sender<Resp>>>;

/// One live client connection.
struct Conn<Resp> {
    writer: tokio::sync::Mutex<WriteHalf<TcpStream>>,
    pending: Arc<Pending<Resp>>,
    closed: Arc<AtomicBool>,
    _reader: AbortOnDrop<()>,
}

impl<Resp> Conn<Resp> {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders wakes every waiting call with `Closed`.
        self.pending.lock().expect("pending map lock").clear();
        self._reader.0.abort();
    }
}

struct ClientInner<Resp> {
    addr: SocketAddr,
    config: RpcConfig,
    next_id: AtomicU64,
    slots: Semaphore,
    conn: tokio::sync::Mutex<Option<Arc<Conn<Resp>>>>,
}

/// A client of one server: a cheap, clonable handle; clones share the connection.
pub struct RpcClient<Req, Resp> {
    inner: Arc<ClientInner<Resp>>,
    _req: PhantomData<fn(Req)>,
}

impl<Req, Resp> Clone for RpcClient<Req, Resp> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), _req: PhantomData }
    }
}

impl<Req, Resp> std::fmt::Debug for RpcClient<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").field("addr", &self.inner.addr).field("config", &self.inner.config).finish()
    }
}

impl<Req, Resp> RpcClient<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// A client of the server at `addr`. Connects lazily, on the first call.
    pub fn new(addr: SocketAddr, config: RpcConfig) -> Self {
        assert!(config.in_flight_max > 0, "RpcConfig::in_flight_max must be at least 1");
        let slots = Semaphore::new(config.in_flight_max);
        Self {
            inner: Arc::new(ClientInner {
                addr,
                config,
                next_id: AtomicU64::new(1),
                slots,
                conn: tokio::sync::Mutex::new(None),
            }),
            _req: PhantomData,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Sends `req` and waits for its response, at most `call_timeout_ms`.
    pub async fn call(&self, req: Req) -> Result<Resp, RpcError> {
        let request = self.encode(&req);
        drop(req);
        self.call_encoded(request).await
    }

    /// Sends `req` (borrowed: a caller that retries keeps one request and sends it again, with
    /// no copy) and waits for its response, at most `call_timeout_ms`.
    pub async fn call_ref(&self, req: &Req) -> Result<Resp, RpcError>
    where
        Req: Sync,
    {
        let request = self.encode(req);
        self.call_encoded(request).await
    }

    /// A fresh call id and the frame carrying `(id, req)`.
    fn encode(&self, req: &Req) -> Result<(u64, Vec<u8>), RpcError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        encode_frame(&(id, req), &mut out)?;
        Ok((id, out))
    }

    async fn call_encoded(&self, request: Result<(u64, Vec<u8>), RpcError>) -> Result<Resp, RpcError> {
        let timeout_ms = self.inner.config.call_timeout_ms;
        let mut used_conn: Option<Arc<Conn<Resp>>> = None;
        let result =
            tokio::time::timeout(Duration::from_millis(timeout_ms), self.call_inner(request, &mut used_conn)).await;
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => {
                // The peer may be partitioned: drop the connection so the next call reconnects
                // (connecting to an unreachable peer fails fast) instead of queueing behind it.
                if let Some(conn) = used_conn {
                    self.discard(&conn).await;
                }
                Err(RpcError::Timeout { timeout_ms })
            }
        }
    }

    async fn call_inner(&self, request: Result<(u64, Vec<u8>), RpcError>, used_conn: &mut Option<Arc<Conn<Resp>>>) -> Result<Resp, RpcError> {
        let _slot = self.inner.slots.acquire().await.map_err(|_| RpcError::Closed)?;
        let (id, out) = request?;
        let conn = self.connection().await?;
        *used_conn = Some(conn.clone());
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = conn.pending.lock().expect("pending map lock");
            if conn.closed.load(Ordering::SeqCst) {
                return Err(RpcError::Closed);
            }
            debug_assert!(pending.len() < self.inner.config.in_flight_max);
            pending.insert(id, tx);
        }
        // Remove the entry however this future ends (response, error, or timeout).
        struct Unregister<'a, R>(&'a Pending<R>, u64);
        impl<R> Drop for Unregister<'_, R> {
            fn drop(&mut self) {
                if let Ok(mut p) = self.0.lock() {
                    p.remove(&self.1);
                }
            }
        }
        let _unregister = Unregister(&conn.pending, id);
        let written = {
            let mut w = conn.writer.lock().await;
            write_all_and_flush(&mut *w, &out).await
        };
        if let Err(e) = written {
            self.discard(&conn).await;
            return Err(RpcError::Io(e));
        }
        rx.await.map_err(|_| RpcError::Closed)
    }

    /// The live connection, connecting if there is none.
    async fn connection(&self) -> Result<Arc<Conn<Resp>>, RpcError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.closed.load(Ordering::SeqCst) {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let connect_timeout = Duration::from_millis(self.inner.config.connect_timeout_ms);
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(self.inner.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(RpcError::Io(e)),
            Err(_) => return Err(RpcError::Io(io::Error::new(io::ErrorKind::TimedOut, "rpc connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = tokio::io::split(stream);
        let pending: Arc<Pending<Resp>> = Arc::new(Mutex::new(FxHashMap::default()));
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_responses(FrameReader::new(read_half), pending.clone(), closed.clone(), self.inner.addr));
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(write_half),
            pending,
            closed,
            _reader: AbortOnDrop(reader),
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Closes `conn` and forgets it if it is still the current connection.
    async fn discard(&self, conn: &Arc<Conn<Resp>>) {
        conn.close();
        let mut slot = self.inner.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }
}

async fn read_responses<Resp: DeserializeOwned>(
    mut reader: FrameReader<tokio::io::ReadHalf<TcpStream>>,
    pending: Arc<Pending<Resp>>,
    closed: Arc<AtomicBool>,
    addr: SocketAddr,
) {
    loop {
        match reader.next::<(u64, Resp)>().await {
            Ok(Some((id, resp))) => {
                let waiter = pending.lock().expect("pending map lock").remove(&id);
                // No waiter: the call timed out and gave up; the late response is dropped.
                if let Some(tx) = waiter {
                    let _ = tx.send(resp);
                }
            }
            Ok(None) => {
                tracing::debug!(%addr, "rpc server closed the connection");
                break;
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!(%addr, error = %e, "rpc connection failed");
                break;
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "rpc client got a bad frame; closing the connection");
                break;
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    pending.lock().expect("pending map lock").clear();
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;
    use madsim::runtime::{Handle, NodeHandle, Runtime};
    use std::net::IpAddr;
    use std::sync::atomic::AtomicUsize;

    const SERVER_IP: &str = "10.0.0.1";
    const CLIENT_IP: &str = "10.0.0.2";
    const PORT: u16 = 7000;

    fn server_addr() -> SocketAddr {
        SocketAddr::new(SERVER_IP.parse().unwrap(), PORT)
    }

    fn sim_runtime(seed: u64) -> Runtime {
        let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(Duration::from_secs(120));
        rt
    }

    fn node(name: &str, ip: &str) -> NodeHandle {
        Handle::current().create_node().name(name).ip(ip.parse::<IpAddr>().unwrap()).build()
    }

    /// A server node whose handler doubles a number after sleeping `n % 7` ms (so answers
    /// complete out of order) and counts its concurrent calls.
    fn doubling_server(concurrent_max: Arc<AtomicUsize>) -> NodeHandle {
        Handle::current()
            .create_node()
            .name("server")
            .ip(SERVER_IP.parse::<IpAddr>().unwrap())
            .init(move || {
                let concurrent_max = concurrent_max.clone();
                async move {
                    let listener = TcpListener::bind(server_addr()).await.unwrap();
                    let now = Arc::new(AtomicUsize::new(0));
                    serve(listener, move |n: u64| {
                        let now = now.clone();
                        let concurrent_max = concurrent_max.clone();
                        async move {
                            let c = now.fetch_add(1, Ordering::SeqCst) + 1;
                            concurrent_max.fetch_max(c, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(n % 7)).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            n * 2
                        }
                    })
                    .await
                    .unwrap();
                }
            })
            .build()
    }

    fn config(call_timeout_ms: u64, in_flight_max: usize) -> RpcConfig {
        RpcConfig { call_timeout_ms, in_flight_max, ..RpcConfig::default() }
    }

    #[test]
    fn pipelined_calls_get_their_own_responses_and_respect_in_flight_max() {
        let rt = sim_runtime(1);
        rt.block_on(async {
            let concurrent_max = Arc::new(AtomicUsize::new(0));
            let _server = doubling_server(concurrent_max.clone());
            let client_node = node("client", CLIENT_IP);
            // (calls, in_flight_max)
            for (calls, in_flight_max) in [(1u64, 1usize), (50, 4), (200, 64)] {
                concurrent_max.store(0, Ordering::SeqCst);
                let got = client_node
                    .spawn(async move {
                        let client = RpcClient::<u64, u64>::new(server_addr(), config(5_000, in_flight_max));
                        let tasks: Vec<_> = (0..calls)
                            .map(|n| {
                                let client = client.clone();
                                tokio::spawn(async move { (n, client.call(n).await.unwrap()) })
                            })
                            .collect();
                        let mut got = Vec::new();
                        for t in tasks {
                            got.push(t.await.unwrap());
                        }
                        got
                    })
                    .await
                    .unwrap();
                assert_eq!(got.len() as u64, calls);
                assert!(got.iter().all(|(n, r)| *r == n * 2), "{got:?}");
                let seen = concurrent_max.load(Ordering::SeqCst);
                assert!(seen <= in_flight_max, "{seen} concurrent calls > in_flight_max {in_flight_max}");
                if calls as usize >= 2 * in_flight_max {
                    assert!(seen > 1 || in_flight_max == 1, "calls were not pipelined: {seen}");
                }
            }
        });
    }

    #[test]
    fn a_borrowed_request_can_be_sent_again_and_is_answered_each_time() {
        let rt = sim_runtime(6);
        rt.block_on(async {
            let _server = doubling_server(Arc::new(AtomicUsize::new(0)));
            let got = node("client", CLIENT_IP)
                .spawn(async move {
                    let client = RpcClient::<u64, u64>::new(server_addr(), config(5_000, 4));
                    let request = 21u64;
                    let mut answers = Vec::new();
                    for _ in 0..3 {
                        answers.push(client.call_ref(&request).await.unwrap());
                    }
                    answers.push(client.call(request).await.unwrap());
                    answers
                })
                .await
                .unwrap();
            assert_eq!(got, vec![42; 4]);
        });
    }

    #[test]
    fn a_call_to_a_partitioned_server_times_out_and_works_again_after_unclog() {
        let rt = sim_runtime(2);
        rt.block_on(async {
            let server = doubling_server(Arc::new(AtomicUsize::new(0)));
            let client_node = node("client", CLIENT_IP);
            let net = madsim::net::NetSim::current();
            let client = client_node
                .spawn(async { RpcClient::<u64, u64>::new(server_addr(), config(500, 8)) })
                .await
                .unwrap();
            let c = client.clone();
            assert_eq!(client_node.spawn(async move { c.call(1).await.unwrap() }).await.unwrap(), 2);

            net.clog_node(server.id());
            let c = client.clone();
            // Virtual time under madsim.
            #[allow(clippy::disallowed_methods)]
            let started = tokio::time::Instant::now();
            let err = client_node.spawn(async move { c.call(2).await.unwrap_err() }).await.unwrap();
            assert!(matches!(err, RpcError::Timeout { timeout_ms: 500 }), "{err:?}");
            assert!(started.elapsed() >= Duration::from_millis(500));
            // While clogged, a new connection cannot be made: an error, never a hang.
            let c = client.clone();
            let err = client_node.spawn(async move { c.call(3).await.unwrap_err() }).await.unwrap();
            assert!(matches!(err, RpcError::Io(_) | RpcError::Timeout { .. }), "{err:?}");

            net.unclog_node(server.id());
            let c = client.clone();
            assert_eq!(client_node.spawn(async move { c.call(4).await.unwrap() }).await.unwrap(), 8);
        });
    }

    #[test]
    fn a_killed_server_fails_calls_and_a_restarted_one_serves_again() {
        let rt = sim_runtime(3);
        rt.block_on(async {
            let server = doubling_server(Arc::new(AtomicUsize::new(0)));
            let client_node = node("client", CLIENT_IP);
            let client = client_node
                .spawn(async { RpcClient::<u64, u64>::new(server_addr(), config(1_000, 8)) })
                .await
                .unwrap();
            let c = client.clone();
            assert_eq!(client_node.spawn(async move { c.call(5).await.unwrap() }).await.unwrap(), 10);

            Handle::current().kill(server.id());
            let c = client.clone();
            let err = client_node.spawn(async move { c.call(6).await.unwrap_err() }).await.unwrap();
            assert!(matches!(err, RpcError::Closed | RpcError::Io(_) | RpcError::Timeout { .. }), "{err:?}");
            // Still down: connecting fails.
            let c = client.clone();
            let err = client_node.spawn(async move { c.call(6).await.unwrap_err() }).await.unwrap();
            assert!(matches!(err, RpcError::Io(_) | RpcError::Timeout { .. }), "{err:?}");

            Handle::current().restart(server.id());
            tokio::time::sleep(Duration::from_millis(50)).await;
            let c = client.clone();
            assert_eq!(client_node.spawn(async move { c.call(7).await.unwrap() }).await.unwrap(), 14);
        });
    }

    #[test]
    fn a_corrupt_frame_closes_the_server_connection_without_a_panic() {
        let rt = sim_runtime(4);
        rt.block_on(async {
            let _server = doubling_server(Arc::new(AtomicUsize::new(0)));
            let client_node = node("client", CLIENT_IP);
            client_node
                .spawn(async {
                    use tokio::io::AsyncReadExt;
                    let mut good = Vec::new();
                    encode_frame(&(1u64, 21u64), &mut good).unwrap();
                    let mut bad_crc = good.clone();
                    *bad_crc.last_mut().unwrap() ^= 0xff;
                    let mut oversized = good.clone();
                    oversized[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    let mut wrong_type = Vec::new();
                    encode_frame(&"not a request".to_string(), &mut wrong_type).unwrap();
                    for (name, raw) in [("bad crc", bad_crc), ("oversized", oversized), ("wrong type", wrong_type)] {
                        let mut stream = TcpStream::connect(server_addr()).await.unwrap();
                        // A good request first: answered.
                        write_all_and_flush(&mut stream, &good).await.unwrap();
                        let mut reader = FrameReader::new(&mut stream);
                        let answer: (u64, u64) = reader.next().await.unwrap().unwrap();
                        assert_eq!(answer, (1, 42), "{name}");
                        write_all_and_flush(&mut stream, &raw).await.unwrap();
                        let mut rest = Vec::new();
                        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                            .await
                            .expect("the server closes the connection")
                            .unwrap();
                        assert_eq!(n, 0, "{name}: nothing reaches the client after a bad frame");
                    }
                    // The server itself is fine.
                    let client = RpcClient::<u64, u64>::new(server_addr(), config(1_000, 8));
                    assert_eq!(client.call(50).await.unwrap(), 100);
                })
                .await
                .unwrap();
        });
    }

    #[test]
    fn a_corrupt_response_fails_the_call_and_the_next_call_reconnects() {
        let rt = sim_runtime(5);
        rt.block_on(async {
            // A server that answers its first connection with garbage, later ones properly.
            let _server = Handle::current()
                .create_node()
                .name("server")
                .ip(SERVER_IP.parse::<IpAddr>().unwrap())
                .init(|| async {
                    let listener = TcpListener::bind(server_addr()).await.unwrap();
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let mut reader = FrameReader::new(&mut stream);
                    let (_id, _n): (u64, u64) = reader.next().await.unwrap().unwrap();
                    write_all_and_flush(&mut stream, &[8, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9]).await.unwrap();
                    serve(listener, |n: u64| async move { n + 1 }).await.unwrap();
                })
                .build();
            let client_node = node("client", CLIENT_IP);
            client_node
                .spawn(async {
                    let client = RpcClient::<u64, u64>::new(server_addr(), config(1_000, 8));
                    let err = client.call(1).await.unwrap_err();
                    assert!(matches!(err, RpcError::Closed), "{err:?}");
                    assert_eq!(client.call(1).await.unwrap(), 2);
                })
                .await
                .unwrap();
        });
    }
}

#[cfg(all(test, not(madsim)))]
mod real_tests {
    use super::*;

    #[test]
    fn a_round_trip_over_loopback_tcp() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve(listener, |s: String| async move { s.to_uppercase() }));
            let client = RpcClient::<String, String>::new(addr, RpcConfig::default());
            let calls: Vec<_> = ["a", "bc", "def"].iter().map(|s| client.call(s.to_string())).collect();
            let mut got = Vec::new();
            for c in calls {
                got.push(c.await.unwrap());
            }
            assert_eq!(got, vec!["A", "BC", "DEF"]);
            server.abort();
        });
    }
}
