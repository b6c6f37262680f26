//! Data channels with credit-based flow control, after Flink's credit-based network stack
//! (`CreditBasedSequenceNumberingViewReader`, `RemoteInputChannel#notifyCreditAvailable`):
//! the receiver announces how many bytes it can take, and the sender never has more bytes in
//! flight than that. Flink counts credit in network buffers; floe counts it in bytes.
//!
//! Protocol over one TCP stream (both directions carry [frames](super::frame)):
//! - sender → receiver: `Batch(T)`, `Heartbeat`, `End`;
//! - receiver → sender: `Credit { window_bytes, granted_total, consumed_total }`, cumulative
//!   counts, so a repeated or late credit message is harmless; it doubles as the receiver's
//!   heartbeat.
//!
//! Accounting is in frame bytes (header included) of `Batch` frames. The sender may send a
//! batch only if `sent_total + frame_bytes <= granted_total`; its in-flight bytes are
//! `sent_total - consumed_total`, so they never exceed `granted_total - consumed_total`, which
//! is the receiver's window when it grants automatically ([`ChannelConfig::auto_grant`]: each
//! consumed byte is granted again). A receiver that stops consuming therefore stops its
//! sender after at most one window: backpressure, with every buffer bounded.
//!
//! The sender buffers encoded batches and flushes when [`ChannelConfig::flush_bytes`] are
//! buffered, when it runs out of credit, on [`DataSender::flush`], and at the latest on its
//! next heartbeat tick (a simulated flush is one message: batch many records per flush).
//!
//! Liveness: both sides send heartbeats when idle every `heartbeat_interval_ms`; a side that
//! hears nothing for `read_timeout_ms` fails with [`ChannelError::Timeout`] (a partition never
//! breaks a simulated connection). A bad frame fails the channel with a `tracing::warn!` and
//! never reaches the application. A channel that failed stays failed; the owner reconnects.

use super::frame::{encode_frame, FrameError, FrameReader};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Channel settings (both ends use the same type; each reads the fields that concern it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Receiver: the credit it grants up front, in bytes; with `auto_grant`, the bound on the
    /// sender's in-flight bytes. A batch frame larger than this is refused by the sender.
    pub credit_window_bytes: u64,
    /// Receiver: grant credit again as the application consumes batches. Without it, credit
    /// beyond the first window comes only from [`DataReceiver::grant`].
    pub auto_grant: bool,
    /// Sender: flush once this many bytes are buffered.
    pub flush_bytes: usize,
    /// Both: send a heartbeat after this long without writing (and flush buffered batches).
    pub heartbeat_interval_ms: u64,
    /// Both: fail the channel after this long without hearing from the peer.
    pub read_timeout_ms: u64,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            credit_window_bytes: 1 << 20,
            auto_grant: true,
            flush_bytes: 64 << 10,
            heartbeat_interval_ms: 1_000,
            read_timeout_ms: 10_000,
        }
    }
}

impl ChannelConfig {
    fn check(&self) {
        assert!(self.credit_window_bytes > 0, "ChannelConfig::credit_window_bytes must be positive");
        assert!(self.heartbeat_interval_ms > 0, "ChannelConfig::heartbeat_interval_ms must be positive");
        assert!(
            self.read_timeout_ms > self.heartbeat_interval_ms,
            "ChannelConfig::read_timeout_ms must exceed heartbeat_interval_ms, or an idle peer looks dead"
        );
    }
}

/// Why a channel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Reading or writing the stream failed.
    #[error("channel i/o error: {0}")]
    Io(String),
    /// The peer sent a bad frame (corrupt, oversized or undecodable); the channel is closed.
    #[error("channel frame error: {0}")]
    Frame(String),
    /// Nothing heard from the peer for `read_timeout_ms` (it may be partitioned or dead).
    #[error("channel peer silent for {silent_ms} ms")]
    Timeout {
        /// The read timeout that expired.
        silent_ms: u64,
    },
    /// The peer closed the stream without ending the channel.
    #[error("channel closed by the peer")]
    Closed,
    /// A batch's frame is larger than the receiver's whole credit window: it could never be sent.
    #[error("a batch of {frame_bytes} bytes exceeds the receiver's credit window of {window_bytes} bytes")]
    BatchExceedsWindow {
        /// The batch's frame size.
        frame_bytes: u64,
        /// The receiver's window.
        window_bytes: u64,
    },
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> Self {
        ChannelError::Io(e.to_string())
    }
}

impl From<FrameError> for ChannelError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => ChannelError::Io(e.to_string()),
            other => ChannelError::Frame(other.to_string()),
        }
    }
}

/// Sender → receiver.
#[derive(Debug, Serialize, Deserialize)]
enum DataFrame<B> {
    Batch(B),
    Heartbeat,
    End,
}

/// Receiver → sender: cumulative counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Credit {
    window_bytes: u64,
    granted_total: u64,
    consumed_total: u64,
}

/// What the sender knows of its receiver.
#[derive(Debug, Clone, Default)]
struct CreditView {
    credit: Credit,
    failure: Option<ChannelError>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A write half with its pending bytes, shared by the application and the heartbeat task.
struct Outbox {
    half: BoxWrite,
    buf: Vec<u8>,
    /// Bytes of `buf` already written (a cancelled flush resumes here: nothing twice).
    written: usize,
    /// Whether anything was written since the heartbeat task last looked.
    wrote_since_tick: bool,
}

impl Outbox {
    fn new(half: BoxWrite) -> Self {
        Self { half, buf: Vec::new(), written: 0, wrote_since_tick: false }
    }

    /// Writes and flushes the buffer. Cancel-safe.
    async fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.written < self.buf.len() {
            let n = self.half.write(&self.buf[self.written..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "channel stream accepts no bytes"));
            }
            self.written += n;
        }
        self.half.flush().await?;
        self.buf.clear();
        self.written = 0;
        self.wrote_since_tick = true;
        Ok(())
    }
}

type SharedOutbox = Arc<tokio::sync::Mutex<Outbox>>;

/// Every `interval`, unless something was written since the last tick, appends `heartbeat`
/// to the outbox and flushes it (with any buffered bytes).
fn spawn_heartbeat(outbox: SharedOutbox, interval_ms: u64, heartbeat: impl Fn() -> Vec<u8> + Send + 'static) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            let mut out = outbox.lock().await;
            if first || !out.wrote_since_tick || !out.buf.is_empty() {
                let beat = heartbeat();
                out.buf.extend_from_slice(&beat);
                if let Err(e) = out.flush().await {
                    tracing::debug!(error = %e, "channel heartbeat write failed");
                    return;
                }
            }
            out.wrote_since_tick = false;
            first = false;
        }
    }))
}

/// The sending end of a data channel.
pub struct DataSender<T> {
    outbox: SharedOutbox,
    credit: watch::Receiver<CreditView>,
    config: ChannelConfig,
    scratch: Vec<u8>,
    sent_total: u64,
    in_flight_bytes_max_seen: u64,
    _reader: AbortOnDrop,
    _heartbeat: AbortOnDrop,
    _batch: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for DataSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSender")
            .field("sent_total", &self.sent_total)
            .field("in_flight_bytes", &self.in_flight_bytes())
            .field("in_flight_bytes_max_seen", &self.in_flight_bytes_max_seen)
            .finish()
    }
}

impl<T: Serialize> DataSender<T> {
    /// Starts the sending end over `stream` (e.g. a connected `TcpStream`).
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, config: ChannelConfig) -> Self {
        config.check();
        let (read_half, write_half) = tokio::io::split(stream);
        let outbox = Arc::new(tokio::sync::Mutex::new(Outbox::new(Box::new(write_half))));
        let (tx, rx) = watch::channel(CreditView::default());
        let read_timeout_ms = config.read_timeout_ms;
        let reader = AbortOnDrop(tokio::spawn(async move {
            let mut reader = FrameReader::new(Box::new(read_half) as BoxRead);
            let failure = loop {
                match tokio::time::timeout(Duration::from_millis(read_timeout_ms), reader.next::<Credit>()).await {
                    Err(_) => break ChannelError::Timeout { silent_ms: read_timeout_ms },
                    Ok(Ok(Some(credit))) => {
                        tx.send_modify(|view| {
                            let c = &mut view.credit;
                            c.window_bytes = credit.window_bytes;
                            c.granted_total = c.granted_total.max(credit.granted_total);
                            c.consumed_total = c.consumed_total.max(credit.consumed_total);
                        });
                    }
                    Ok(Ok(None)) => break ChannelError::Closed,
                    Ok(Err(FrameError::Io(e))) => break ChannelError::Io(e.to_string()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "data sender got a bad frame; closing the channel");
                        break e.into();
                    }
                }
            };
            tx.send_modify(|view| view.failure = Some(failure));
        }));
        let heartbeat = spawn_heartbeat(outbox.clone(), config.heartbeat_interval_ms, || {
            let mut out = Vec::new();
            encode_frame(&DataFrame::<()>::Heartbeat, &mut out).expect("a heartbeat encodes");
            out
        });
        Self {
            outbox,
            credit: rx,
            config,
            scratch: Vec::new(),
            sent_total: 0,
            in_flight_bytes_max_seen: 0,
            _reader: reader,
            _heartbeat: heartbeat,
            _batch: PhantomData,
        }
    }

    /// Queues one batch, waiting for credit first; flushes when `flush_bytes` are buffered.
    pub async fn send(&mut self, batch: &T) -> Result<(), ChannelError> {
        self.scratch.clear();
        encode_frame(&DataFrame::Batch(batch), &mut self.scratch)?;
        let frame_bytes = self.scratch.len() as u64;
        loop {
            let view = self.credit.borrow_and_update().clone();
            if let Some(failure) = view.failure {
                return Err(failure);
            }
            let window_bytes = view.credit.window_bytes;
            if window_bytes > 0 && frame_bytes > window_bytes {
                return Err(ChannelError::BatchExceedsWindow { frame_bytes, window_bytes });
            }
            if self.sent_total + frame_bytes <= view.credit.granted_total {
                break;
            }
            // Out of credit: what is buffered must reach the receiver, or it can never grant.
            self.flush().await?;
            if self.credit.changed().await.is_err() {
                return Err(ChannelError::Closed);
            }
        }
        let buffered = {
            let mut out = self.outbox.lock().await;
            out.buf.extend_from_slice(&self.scratch);
            out.buf.len()
        };
        self.sent_total += frame_bytes;
        let in_flight = self.in_flight_bytes();
        self.in_flight_bytes_max_seen = self.in_flight_bytes_max_seen.max(in_flight);
        debug_assert!(
            self.sent_total <= self.credit.borrow().credit.granted_total,
            "sent beyond the granted credit"
        );
        if buffered >= self.config.flush_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes and flushes every buffered batch.
    pub async fn flush(&mut self) -> Result<(), ChannelError> {
        if let Some(failure) = self.credit.borrow().failure.clone() {
            return Err(failure);
        }
        self.outbox.lock().await.flush().await.map_err(Into::into)
    }

    /// Flushes, then tells the receiver the channel ends (its `recv` returns `Ok(None)`).
    pub async fn finish(mut self) -> Result<(), ChannelError> {
        self.flush().await?;
        let mut out = self.outbox.lock().await;
        encode_frame(&DataFrame::<()>::End, &mut out.buf)?;
        out.flush().await.map_err(Into::into)
    }

}

impl<T> DataSender<T> {
    /// Bytes sent (or buffered) that the receiver has not yet reported as consumed.
    pub fn in_flight_bytes(&self) -> u64 {
        self.sent_total.saturating_sub(self.credit.borrow().credit.consumed_total)
    }

    /// The largest [`in_flight_bytes`](Self::in_flight_bytes) ever seen (right after a send).
    pub fn in_flight_bytes_max_seen(&self) -> u64 {
        self.in_flight_bytes_max_seen
    }

    /// Credit left: bytes that may be sent without waiting.
    pub fn credit_bytes(&self) -> u64 {
        self.credit.borrow().credit.granted_total.saturating_sub(self.sent_total)
    }

    /// Batch frame bytes sent (or buffered) in all.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_total
    }
}

/// The receiving end of a data channel.
pub struct DataReceiver<T> {
    reader: FrameReader<BoxRead>,
    outbox: SharedOutbox,
    credit: Arc<std::sync::Mutex<Credit>>,
    /// Bytes consumed and granted but not yet announced to the sender.
    unannounced_bytes: u64,
    config: ChannelConfig,
    failure: Option<ChannelError>,
    ended: bool,
    _heartbeat: AbortOnDrop,
    _batch: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for DataReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataReceiver").field("credit", &self.credit).field("ended", &self.ended).finish()
    }
}

fn credit_frame(credit: &std::sync::Mutex<Credit>) -> Vec<u8> {
    let c = *credit.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    encode_frame(&c, &mut out).expect("a credit encodes");
    out
}

impl<T: DeserializeOwned> DataReceiver<T> {
    /// Starts the receiving end over `stream`; the first credit (`credit_window_bytes`) is
    /// announced at once.
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, config: ChannelConfig) -> Self {
        config.check();
        let (read_half, write_half) = tokio::io::split(stream);
        let outbox = Arc::new(tokio::sync::Mutex::new(Outbox::new(Box::new(write_half))));
        let credit = Arc::new(std::sync::Mutex::new(Credit {
            window_bytes: config.credit_window_bytes,
            granted_total: config.credit_window_bytes,
            consumed_total: 0,
        }));
        let for_beat = credit.clone();
        let heartbeat = spawn_heartbeat(outbox.clone(), config.heartbeat_interval_ms, move || credit_frame(&for_beat));
        Self {
            reader: FrameReader::new(Box::new(read_half)),
            outbox,
            credit,
            unannounced_bytes: 0,
            config,
            failure: None,
            ended: false,
            _heartbeat: heartbeat,
            _batch: PhantomData,
        }
    }

    /// The next batch; `Ok(None)` once the sender finished the channel. Waits at most
    /// `read_timeout_ms` for the peer (heartbeats count). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<T>, ChannelError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.ended {
            return Ok(None);
        }
        let result = self.recv_inner().await;
        if let Err(e) = &result {
            if matches!(e, ChannelError::Frame(_)) {
                tracing::warn!(error = %e, "data receiver got a bad frame; closing the channel");
            }
            self.failure = Some(e.clone());
            // Stop talking to a peer that broke the protocol or went silent.
            self._heartbeat.0.abort();
        }
        result
    }

    async fn recv_inner(&mut self) -> Result<Option<T>, ChannelError> {
        // Announce in chunks of a quarter window: one message per many batches.
        if self.unannounced_bytes >= self.config.credit_window_bytes / 4 {
            self.announce().await?;
        }
        loop {
            let frame = match self.reader.try_next::<DataFrame<T>>()? {
                Some(frame) => frame,
                None => {
                    // About to wait: the sender must know every byte we can take.
                    self.announce().await?;
                    let timeout = Duration::from_millis(self.config.read_timeout_ms);
                    match tokio::time::timeout(timeout, self.reader.next_sized::<DataFrame<T>>()).await {
                        Err(_) => return Err(ChannelError::Timeout { silent_ms: self.config.read_timeout_ms }),
                        Ok(Err(e)) => return Err(e.into()),
                        Ok(Ok(None)) => return Err(ChannelError::Closed),
                        Ok(Ok(Some(frame))) => frame,
                    }
                }
            };
            match frame {
                (DataFrame::Batch(batch), frame_bytes) => {
                    // No await between taking the batch and returning it: cancel-safe.
                    self.consumed(frame_bytes as u64);
                    return Ok(Some(batch));
                }
                (DataFrame::Heartbeat, _) => continue,
                (DataFrame::End, _) => {
                    self.ended = true;
                    return Ok(None);
                }
            }
        }
    }

    /// Counts a consumed batch (and, with `auto_grant`, grants its bytes again); the next
    /// `recv` announces it.
    fn consumed(&mut self, frame_bytes: u64) {
        let mut c = self.credit.lock().unwrap_or_else(|e| e.into_inner());
        c.consumed_total += frame_bytes;
        if self.config.auto_grant {
            c.granted_total += frame_bytes;
        }
        debug_assert!(c.consumed_total <= c.granted_total);
        self.unannounced_bytes += frame_bytes;
    }

    /// Sends the current credit if anything changed since it was last sent.
    ///
    /// A failed write is not the reader's failure: a sender that finished and closed its end
    /// cannot take credit any more, yet its last frames are still to be read. If the peer is
    /// really gone, reading says so (`Closed` or `Timeout`).
    async fn announce(&mut self) -> Result<(), ChannelError> {
        if self.unannounced_bytes == 0 {
            return Ok(());
        }
        let frame = credit_frame(&self.credit);
        let mut out = self.outbox.lock().await;
        out.buf.extend_from_slice(&frame);
        if let Err(e) = out.flush().await {
            tracing::debug!(error = %e, "data receiver could not announce credit");
            out.buf.clear();
            out.written = 0;
        }
        self.unannounced_bytes = 0;
        Ok(())
    }

    /// Grants `bytes` more credit to the sender, now (for `auto_grant: false` receivers).
    /// Errors only if the channel already failed.
    pub async fn grant(&mut self, bytes: u64) -> Result<(), ChannelError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.credit.lock().unwrap_or_else(|e| e.into_inner()).granted_total += bytes;
        self.unannounced_bytes += bytes.max(1);
        self.announce().await
    }

    /// Batch frame bytes consumed in all.
    pub fn consumed_bytes(&self) -> u64 {
        self.credit.lock().unwrap_or_else(|e| e.into_inner()).consumed_total
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;
    use madsim::runtime::{Handle, NodeHandle, Runtime};
    use std::net::{IpAddr, SocketAddr};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::net::{TcpListener, TcpStream};

    type Batch = Vec<(String, u64)>;

    const RECV_IP: &str = "10.0.1.1";
    const SEND_IP: &str = "10.0.1.2";

    fn recv_addr() -> SocketAddr {
        SocketAddr::new(RECV_IP.parse().unwrap(), 7100)
    }

    fn sim_runtime(seed: u64) -> Runtime {
        let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(Duration::from_secs(120));
        rt
    }

    fn node(name: &str, ip: &str) -> NodeHandle {
        Handle::current().create_node().name(name).ip(ip.parse::<IpAddr>().unwrap()).build()
    }

    fn batch(i: u64, records: u64) -> Batch {
        // Fixed-width keys: every batch of `records` records with small values has the same size.
        (0..records).map(|r| (format!("key-{:03}", (i * records + r) % 997), i * records + r)).collect()
    }

    fn config(window: u64) -> ChannelConfig {
        ChannelConfig {
            credit_window_bytes: window,
            flush_bytes: (window / 4) as usize,
            heartbeat_interval_ms: 100,
            read_timeout_ms: 1_000,
            ..ChannelConfig::default()
        }
    }

    /// Starts a receiver node that accepts one channel, sleeps `pause_ms` without consuming,
    /// then consumes everything; it returns what it received.
    fn spawn_receiver(
        recv_node: &NodeHandle,
        config: ChannelConfig,
        pause_ms: u64,
    ) -> tokio::task::JoinHandle<Result<Vec<Batch>, ChannelError>> {
        recv_node.spawn(async move {
            let listener = TcpListener::bind(recv_addr()).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let mut rx = DataReceiver::<Batch>::new(stream, config);
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            let mut got = Vec::new();
            while let Some(b) = rx.recv().await? {
                got.push(b);
            }
            Ok(got)
        })
    }

    #[test]
    fn a_paused_receiver_holds_its_sender_to_the_credit_window_and_then_gets_everything_in_order() {
        let rt = sim_runtime(11);
        rt.block_on(async {
            let recv_node = node("receiver", RECV_IP);
            let send_node = node("sender", SEND_IP);
            let window = 64 << 10;
            let batches = 800u64;
            // The receiver pauses 3 s: longer than read_timeout (1 s), so heartbeats must keep
            // both ends alive while the sender is blocked on credit.
            let receiver = spawn_receiver(&recv_node, config(window), 3_000);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let sent = Arc::new(AtomicU64::new(0));
            let in_flight_now = Arc::new(AtomicU64::new(0));
            let (sent2, in_flight2) = (sent.clone(), in_flight_now.clone());
            let sender = send_node.spawn(async move {
                let stream = TcpStream::connect(recv_addr()).await.unwrap();
                let mut tx = DataSender::<Batch>::new(stream, config(window));
                for i in 0..batches {
                    tx.send(&batch(i, 64)).await.unwrap();
                    sent2.fetch_add(1, Ordering::SeqCst);
                    in_flight2.store(tx.in_flight_bytes(), Ordering::SeqCst);
                    assert!(tx.in_flight_bytes() <= window, "in flight {} > window {window}", tx.in_flight_bytes());
                }
                let max_seen = tx.in_flight_bytes_max_seen();
                let sent_bytes = tx.sent_bytes();
                tx.finish().await.unwrap();
                (max_seen, sent_bytes)
            });

            tokio::time::sleep(Duration::from_millis(2_000)).await;
            // Mid-pause: the sender is blocked, with at most one window in flight.
            let sent_mid = sent.load(Ordering::SeqCst);
            let in_flight_mid = in_flight_now.load(Ordering::SeqCst);
            assert!(sent_mid < batches, "the sender was not held back");
            assert!(sent_mid > 0);
            assert!(in_flight_mid <= window, "{in_flight_mid} > {window}");
            assert!(in_flight_mid > window / 2, "the window was not used: {in_flight_mid}");

            let (max_seen, sent_bytes) = sender.await.unwrap();
            let got = receiver.await.unwrap().unwrap();
            assert!(max_seen <= window, "max in flight {max_seen} > window {window}");
            assert!(max_seen > window / 2, "max in flight {max_seen} suspiciously small");
            assert!(sent_bytes > 4 * window, "the test must move several windows");
            assert_eq!(got.len() as u64, batches);
            for (i, b) in got.iter().enumerate() {
                assert_eq!(b, &batch(i as u64, 64), "batch {i} out of order or damaged");
            }
        });
    }

    #[test]
    fn a_receiver_without_auto_grant_receives_only_what_it_granted() {
        let rt = sim_runtime(12);
        rt.block_on(async {
            let recv_node = node("receiver", RECV_IP);
            let send_node = node("sender", SEND_IP);
            let frame = super::super::frame::frame_bytes_of(&DataFrame::Batch(batch(0, 8))).unwrap() as u64;
            let cfg = ChannelConfig { auto_grant: false, credit_window_bytes: 2 * frame, ..config(2 * frame) };
            let cfg2 = cfg.clone();
            let receiver = recv_node.spawn(async move {
                let listener = TcpListener::bind(recv_addr()).await.unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                let mut rx = DataReceiver::<Batch>::new(stream, cfg2);
                let mut got = vec![rx.recv().await.unwrap().unwrap(), rx.recv().await.unwrap().unwrap()];
                // Two batches consumed, no grant: the third must not come.
                let third = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
                assert!(third.is_err(), "a batch arrived without credit");
                rx.grant(3 * frame).await.unwrap();
                while let Some(b) = rx.recv().await.unwrap() {
                    got.push(b);
                }
                got.len()
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            let sender = send_node.spawn(async move {
                let stream = TcpStream::connect(recv_addr()).await.unwrap();
                let mut tx = DataSender::<Batch>::new(stream, cfg);
                for i in 0..5 {
                    tx.send(&batch(i, 8)).await.unwrap();
                    tx.flush().await.unwrap();
                }
                tx.finish().await.unwrap();
            });
            sender.await.unwrap();
            assert_eq!(receiver.await.unwrap(), 5);
        });
    }

    #[test]
    fn a_partitioned_peer_is_detected_on_both_ends() {
        let rt = sim_runtime(13);
        rt.block_on(async {
            let recv_node = node("receiver", RECV_IP);
            let send_node = node("sender", SEND_IP);
            let receiver = spawn_receiver(&recv_node, config(16 << 10), 0);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let sender = send_node.spawn(async move {
                let stream = TcpStream::connect(recv_addr()).await.unwrap();
                let mut tx = DataSender::<Batch>::new(stream, config(16 << 10));
                let mut i = 0;
                loop {
                    if let Err(e) = tx.send(&batch(i, 4)).await {
                        return e;
                    }
                    if let Err(e) = tx.flush().await {
                        return e;
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            madsim::net::NetSim::current().clog_node(recv_node.id());
            let sender_err = tokio::time::timeout(Duration::from_secs(5), sender).await.expect("sender noticed").unwrap();
            assert!(matches!(sender_err, ChannelError::Timeout { silent_ms: 1_000 }), "{sender_err:?}");
            let receiver_err = tokio::time::timeout(Duration::from_secs(5), receiver).await.expect("receiver noticed").unwrap();
            assert!(matches!(receiver_err, Err(ChannelError::Timeout { .. })), "{receiver_err:?}");
        });
    }

    #[test]
    fn a_killed_sender_is_a_closed_channel_not_an_end() {
        let rt = sim_runtime(14);
        rt.block_on(async {
            let recv_node = node("receiver", RECV_IP);
            let send_node = node("sender", SEND_IP);
            let receiver = spawn_receiver(&recv_node, config(16 << 10), 0);
            tokio::time::sleep(Duration::from_millis(10)).await;
            send_node.spawn(async move {
                let stream = TcpStream::connect(recv_addr()).await.unwrap();
                let mut tx = DataSender::<Batch>::new(stream, config(16 << 10));
                tx.send(&batch(0, 4)).await.unwrap();
                tx.flush().await.unwrap();
                std::future::pending::<()>().await;
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            Handle::current().kill(send_node.id());
            let got = receiver.await.unwrap();
            assert_eq!(got, Err(ChannelError::Closed));
        });
    }

    #[test]
    fn a_corrupt_frame_fails_the_receiver_without_reaching_the_application() {
        let rt = sim_runtime(15);
        rt.block_on(async {
            let recv_node = node("receiver", RECV_IP);
            let send_node = node("sender", SEND_IP);
            let receiver = spawn_receiver(&recv_node, config(16 << 10), 0);
            tokio::time::sleep(Duration::from_millis(10)).await;
            send_node
                .spawn(async move {
                    let mut stream = TcpStream::connect(recv_addr()).await.unwrap();
                    let mut raw = Vec::new();
                    encode_frame(&DataFrame::Batch(batch(0, 4)), &mut raw).unwrap();
                    let good_len = raw.len();
                    encode_frame(&DataFrame::Batch(batch(1, 4)), &mut raw).unwrap();
                    raw[good_len + 10] ^= 0x55; // corrupt the second frame's body
                    stream.write_all(&raw).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                })
                .await
                .unwrap();
            let got = receiver.await.unwrap();
            assert!(matches!(got, Err(ChannelError::Frame(_))), "{got:?}");
        });
    }
}
