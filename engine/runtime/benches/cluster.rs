//! Word-count input records per wall-second through the simulated cluster — job manager, two
//! task managers, broker and blob store as madsim nodes; parallelism 2, no faults, a checkpoint
//! every 100 ms of simulated time — against the same counting done by a plain loop over the same
//! lines in the same process.
//!
//! Wall-clock time is only measurable outside the simulation (inside it, every clock is virtual),
//! so each measured world runs twice: once to set up the cluster and write the input, once to do
//! that and run the job to its end. The job's wall time is the difference; so is its CPU time
//! (the world's thread's), which a busy machine disturbs less. Each figure is the best of three
//! runs.
//!
//! `cargo bench -p floe-runtime --bench cluster`
#![allow(clippy::disallowed_methods)] // wall-clock timing of a benchmark, outside the simulation


#[cfg(madsim)]
mod bench {
    use floe_runtime::cluster::jobs::{words, JobRegistry, JobSpec};
    use floe_runtime::cluster::protocol::JobState;
    use floe_runtime::cluster::sim::{SimCluster, SimClusterConfig};
    use madsim::runtime::Runtime;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    const LINES: usize = 200_000;
    const WORDS_PER_LINE: usize = 8;
    const VOCABULARY: usize = 2_000;
    const PARTITIONS: u32 = 2;

    fn lines() -> Vec<String> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        (0..LINES).map(|_| (0..WORDS_PER_LINE).map(|_| format!("w{}", rng.gen_range(0..VOCABULARY))).collect::<Vec<_>>().join(" ")).collect()
    }

    /// Measured worlds per run: the job's figures are the best of these (the box is shared).
    const ROUNDS: usize = 3;

    /// CPU time this thread has run (Linux's `/proc/thread-self/schedstat`, nanoseconds on the
    /// CPU); zero where that is not available. A simulated world runs on one thread, so this is
    /// its CPU time whatever else the machine is doing.
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        Duration::from_nanos(stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
    }

    /// Runs one world; with `run_job` false it stops after writing the input.
    /// Returns (wall time, simulated time, checkpoints completed, CPU time of the world's thread).
    fn world(lines: Vec<String>, run_job: bool) -> (Duration, Duration, u64, Duration) {
        let wall = Instant::now();
        let (sim, checkpoints, cpu) = std::thread::spawn(move || {
            let cpu = thread_cpu();
            let mut rt = Runtime::with_seed_and_config(1, madsim::Config::default());
            rt.set_time_limit(Duration::from_secs(3_600));
            let (sim, checkpoints) = rt.block_on(async move {
                let started = tokio::time::Instant::now();
                let cluster = SimCluster::start(SimClusterConfig::default(), JobRegistry::builtin());
                let ends = cluster.produce_lines("lines", PARTITIONS, lines).await;
                if !run_job {
                    return (started.elapsed(), 0);
                }
                let spec = JobSpec { stopping_offsets: Some(ends), ..JobSpec::word_count("bench", "lines", PARTITIONS, "counts", 2) };
                cluster.submit(spec).await;
                let status = cluster.wait_for_end(Duration::from_secs(3_000)).await.expect("the job manager answers");
                assert_eq!(status.state, JobState::Finished, "{status:?}");
                (started.elapsed(), status.checkpoints_completed)
            });
            (sim, checkpoints, thread_cpu().saturating_sub(cpu))
        })
        .join()
        .expect("the benchmark world");
        (wall.elapsed(), sim, checkpoints, cpu)
    }

    fn plain_loop(lines: &[String]) -> (Duration, u64) {
        let t = Instant::now();
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut emitted = 0u64;
        for line in lines {
            for w in words(line) {
                let n = counts.entry(w).or_insert(0);
                *n += 1;
                emitted += *n;
            }
        }
        (t.elapsed(), std::hint::black_box(emitted))
    }

    pub fn main() {
        let input = lines();
        let (plain, _) = plain_loop(&input);
        let (mut job_wall, mut job_cpu, mut total_wall) = (Duration::MAX, Duration::MAX, Duration::MAX);
        let (mut job_sim, mut checkpoints) = (Duration::ZERO, 0);
        for _ in 0..ROUNDS {
            let (setup_wall, setup_sim, _, setup_cpu) = world(input.clone(), false);
            let (wall, sim, done, cpu) = world(input.clone(), true);
            job_wall = job_wall.min(wall.saturating_sub(setup_wall));
            job_cpu = job_cpu.min(cpu.saturating_sub(setup_cpu));
            total_wall = total_wall.min(wall);
            (job_sim, checkpoints) = (sim.saturating_sub(setup_sim), done);
        }
        let rate = |d: Duration| LINES as f64 / d.as_secs_f64();
        println!("cluster word count: {LINES} lines x {WORDS_PER_LINE} words, parallelism 2, 2 task managers, checkpoint every 100 ms (simulated)");
        println!("  plain loop (tokenize + HashMap count) : {:>12.0} lines/s", rate(plain));
        println!("  simulated cluster, job only            : {:>12.0} lines/s  ({:.2} s wall, {:.2} s simulated, {checkpoints} checkpoints)", rate(job_wall), job_wall.as_secs_f64(), job_sim.as_secs_f64());
        println!("  simulated cluster, job CPU             : {:>12.0} lines/s  ({:.0} ms of the world's thread)", rate(job_cpu), job_cpu.as_secs_f64() * 1e3);
        println!("  simulated cluster, with setup + input  : {:>12.0} lines/s  ({:.2} s wall)", rate(total_wall), total_wall.as_secs_f64());
        println!("  ratio cluster/plain (job only)         : {:.3}", rate(job_wall) / rate(plain));
        println!("  simulated seconds per wall second      : {:.2}", job_sim.as_secs_f64() / job_wall.as_secs_f64());
    }
}

#[cfg(madsim)]
fn main() {
    bench::main()
}

#[cfg(not(madsim))]
fn main() {
    println!("the cluster benchmark runs in the simulation build: cargo bench -p floe-runtime --bench cluster");
}
