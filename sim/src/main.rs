//! `floe`: run a scenario, sweep seeds, list the catalog.
//!
//! ```text
//! floe run   <scenario.toml | name> [--seed N] [--json] [--trace FILE]
//! floe sweep <scenario.toml | name> --seeds A..B [--jobs N] [--json]
//! floe list
//! ```
//! Overrides: `--checkpointing exactly-once|at-least-once`, `--sink transactional|plain`.
//! Exit status: 0 pass, 1 a checker failed, 2 bad input (file, line, field), 3 the world could
//! not run (e.g. the cluster is not in this build yet).

/// mimalloc: the simulated cluster allocates and frees many small buffers (frames, record
/// batches, tasks); glibc's malloc cost ~10% of a run's wall time in `floe bench`. Behaviour does
/// not depend on the allocator (nothing orders by address), so traces are the same.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use floe_sim::run::{run_seed, sweep};
use floe_sim::scenario::{
    self, parse_checkpoint_mode, parse_sink_mode, CheckpointMode, Overrides, Scenario, ScenarioError, Seeds, SinkMode,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// floe's deterministic simulator: run a scenario under a seed and judge it.
#[derive(Parser, Debug)]
#[command(name = "floe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one seed of a scenario and print its report.
    Run {
        /// A scenario file, or a name in the catalog (`scenarios/**/<name>.toml`).
        scenario: String,
        /// The seed (default: the scenario's first seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write the trace as JSON lines to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Run many seeds of a scenario and print a summary.
    Sweep {
        /// A scenario file, or a name in the catalog.
        scenario: String,
        /// Seeds `A..B` (B excluded) or `A..=B` (default: the scenario's seeds).
        #[arg(long)]
        seeds: Option<String>,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// List the scenario catalog with descriptions.
    List,
    /// Benchmarks as JSON lines: simulated records/s and simulated s per wall s of a 100k-record
    /// faulty run, seeds/s of a sweep, each beside the oracle's records/s.
    Bench {
        /// Seeds of the sweep benchmark.
        #[arg(long, default_value_t = 32)]
        seeds: u64,
        /// Worker threads of the sweep (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

#[derive(Args, Debug)]
struct OverrideArgs {
    /// Override the checkpointing mode: exactly-once | at-least-once.
    #[arg(long, value_parser = parse_checkpoint_mode)]
    checkpointing: Option<CheckpointMode>,
    /// Override the sink mode: transactional | plain.
    #[arg(long, value_parser = parse_sink_mode)]
    sink: Option<SinkMode>,
}

impl OverrideArgs {
    fn get(&self) -> Overrides {
        Overrides { checkpointing: self.checkpointing, sink: self.sink }
    }
}

const EXIT_FAIL: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_CANNOT_RUN: u8 = 3;

/// Writes to stdout. A closed pipe (`floe list | head`) ends the output quietly — the exit code
/// still reports the verdict — where `println!` would panic. Returns false once stdout is gone.
fn out(text: &str) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            false
        }
    }
}

fn bad_input(e: ScenarioError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_BAD_INPUT)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { scenario, seed, json, trace, overrides } => {
            let s = match scenario::load_arg(&scenario) {
                Ok(s) => s,
                Err(e) => return bad_input(e),
            };
            let seed = seed.or_else(|| s.seeds.first()).unwrap_or(0);
            match run_seed(&s, seed, overrides.get(), trace.as_deref()) {
                Ok(report) => {
                    if json {
                        out(&format!("{}\n", report.json(false)));
                    } else {
                        out(&report.text());
                    }
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_FAIL)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CANNOT_RUN)
                }
            }
        }
        Command::Sweep { scenario, seeds, jobs, json, overrides } => {
            let s = match scenario::load_arg(&scenario) {
                Ok(s) => s,
                Err(e) => return bad_input(e),
            };
            let seeds = match seeds.as_deref().map(Seeds::parse).transpose() {
                Ok(Some(seeds)) => seeds,
                Ok(None) => s.seeds.clone(),
                Err(e) => return bad_input(ScenarioError::Argument(format!("--seeds: {e}"))),
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let (summary, _) = sweep(&s, &seeds.to_vec(), jobs, overrides.get());
            if json {
                out(&format!("{}\n", summary.json(false)));
            } else {
                out(&summary.text());
            }
            if !summary.failed_seeds.is_empty() {
                ExitCode::from(EXIT_FAIL)
            } else if !summary.errors.is_empty() {
                ExitCode::from(EXIT_CANNOT_RUN)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::List => list(),
        Command::Bench { seeds, jobs } => {
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            match floe_sim::bench::bench(seeds, jobs) {
                Ok(lines) => {
                    for l in lines {
                        if !out(&format!("{l}\n")) {
                            break;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CANNOT_RUN)
                }
            }
        }
    }
}

fn list() -> ExitCode {
    let dir = scenario::catalog_dir();
    let mut bad = false;
    for path in scenario::catalog_files(&dir) {
        let shown = path.strip_prefix(&dir).unwrap_or(&path).display().to_string();
        match Scenario::load(&path) {
            Ok(s) => {
                if !out(&format!("{:<36} {:<12} {:<40} {}\n", s.name, s.job.name(), shown, s.description)) {
                    break;
                }
            }
            Err(e) => {
                bad = true;
                eprintln!("error: {e}");
            }
        }
    }
    if bad {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    }
}
