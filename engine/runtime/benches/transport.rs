//! Throughput of one simulated data channel with credit-based flow control.
//!
//! Run: `cargo bench -p floe-runtime --bench transport` (sim mode comes from
//! `.cargo/config.toml`). Wall-clock time is measured outside `block_on`: inside the
//! simulation, time is virtual. Prints frames/s, records/s and MB/s (wall), and the simulated
//! seconds the transfer took.

#[cfg(madsim)]
fn main() {
    use floe_runtime::transport::{ChannelConfig, DataReceiver, DataSender};
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    const RECORDS_PER_FRAME: u64 = 1_024;
    const FRAMES: u64 = 4_000;
    const SEED: u64 = 7;

    let config = ChannelConfig {
        credit_window_bytes: 4 << 20,
        flush_bytes: 256 << 10,
        heartbeat_interval_ms: 1_000,
        read_timeout_ms: 30_000,
        ..ChannelConfig::default()
    };
    // Built outside the timed section, like the records a producer already holds.
    let frames: Vec<Vec<(String, u64)>> = (0..16)
        .map(|f| (0..RECORDS_PER_FRAME).map(|r| (format!("word-{}", (f * RECORDS_PER_FRAME + r) % 5_000), r)).collect())
        .collect();

    let mut rt = madsim::runtime::Runtime::with_seed_and_config(SEED, madsim::Config::default());
    rt.set_time_limit(Duration::from_secs(3_600));
    #[allow(clippy::disallowed_methods)] // wall clock, outside the simulation
    let started = std::time::Instant::now();
    let (records, bytes, sim_secs, in_flight_max) = rt.block_on(async move {
        let handle = madsim::runtime::Handle::current();
        let addr = SocketAddr::new("10.9.0.1".parse().unwrap(), 7000);
        let recv_node = handle.create_node().name("receiver").ip("10.9.0.1".parse::<IpAddr>().unwrap()).build();
        let send_node = handle.create_node().name("sender").ip("10.9.0.2".parse::<IpAddr>().unwrap()).build();
        let recv_config = config.clone();
        let receiver = recv_node.spawn(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let mut rx = DataReceiver::<Vec<(String, u64)>>::new(stream, recv_config);
            let mut records = 0u64;
            while let Some(batch) = rx.recv().await.unwrap() {
                records += batch.len() as u64;
            }
            (records, rx.consumed_bytes())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        #[allow(clippy::disallowed_methods)] // virtual time inside the simulation
        let sim_started = tokio::time::Instant::now();
        let sender = send_node.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tx = DataSender::<Vec<(String, u64)>>::new(stream, config);
            for i in 0..FRAMES {
                tx.send(&frames[(i % 16) as usize]).await.unwrap();
            }
            let max = tx.in_flight_bytes_max_seen();
            tx.finish().await.unwrap();
            max
        });
        let in_flight_max = sender.await.unwrap();
        let (records, bytes) = receiver.await.unwrap();
        (records, bytes, sim_started.elapsed().as_secs_f64(), in_flight_max)
    });
    let wall_secs = started.elapsed().as_secs_f64();
    assert_eq!(records, FRAMES * RECORDS_PER_FRAME);
    println!(
        "transport: {FRAMES} frames x {RECORDS_PER_FRAME} (String, u64) records, {:.1} MB, one simulated connection",
        bytes as f64 / 1e6
    );
    println!(
        "  wall {wall_secs:.3} s: {:.0} frames/s, {:.2} M records/s, {:.1} MB/s",
        FRAMES as f64 / wall_secs,
        records as f64 / wall_secs / 1e6,
        bytes as f64 / wall_secs / 1e6
    );
    println!("  simulated {sim_secs:.3} s; max in-flight {in_flight_max} bytes (window 4194304)");
}

#[cfg(not(madsim))]
fn main() {
    println!("the transport benchmark runs under the simulator: build with `--cfg madsim` (the default .cargo/config.toml)");
}
