//! floe-core is pure: no async runtime, no RNG, no clock, no threads, no I/O.
//!
//! Two checks: (1) floe-core's transitive normal dependencies (`cargo tree`) hold no
//! crate that brings an async runtime, randomness or an OS clock; (2) its source never names the
//! std facilities that read a clock, spawn a thread or do I/O.

use std::collections::BTreeSet;
use std::path::Path;

const FORBIDDEN_CRATES: &[&str] =
    &["tokio", "madsim", "madsim-tokio", "async-std", "futures", "mio", "rand", "rand_core", "rand_chacha", "getrandom"];

const FORBIDDEN_SOURCE: &[&str] = &[
    "Instant::now",
    "SystemTime",
    "thread::spawn",
    "std::thread",
    "std::fs",
    "std::net",
    "std::io::stdin",
    "async fn",
    ".await",
    "RandomState",
    "std::collections::HashMap",
    "std::collections::HashSet",
];

fn root() -> &'static Path {
    floe_tests::workspace_root()
}

/// The names of a package's *normal* (non-dev, non-build) transitive dependencies, from
/// `cargo tree` (dev-dependencies such as proptest may use an RNG: they are not the engine).
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["tree", "--locked", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn floe_core_depends_on_no_async_runtime_rng_or_clock_crate() {
    let core = normal_dependencies("floe-core");
    assert!(core.contains("serde") && core.contains("petgraph"), "the tree was not read: {core:?}");
    let bad: Vec<&&str> = FORBIDDEN_CRATES.iter().filter(|c| core.contains(**c)).collect();
    assert!(bad.is_empty(), "floe-core's dependency tree contains {bad:?}");
    // The control: the runtime does depend on the async runtime, so the check can see one.
    assert!(normal_dependencies("floe-runtime").contains("madsim-tokio"));
}


#[test]
fn floe_core_source_reads_no_clock_spawns_no_thread_and_does_no_io() {
    let files = floe_tests::rust_files(&root().join("engine/core/src"));
    assert!(files.len() > 10, "found only {} files", files.len());
    let mut hits = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        hits.extend(forbidden_lines(&text).into_iter().map(|(n, line)| format!("{}:{n}: {line}", file.display())));
    }
    assert!(hits.is_empty(), "floe-core must stay pure:\n{}", hits.join("\n"));
}

/// `(line number, line)` of every line whose code (not comment) names a forbidden facility.
fn forbidden_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            FORBIDDEN_SOURCE.iter().any(|word| code.contains(word))
        })
        .map(|(n, line)| (n + 1, line.trim().to_string()))
        .collect()
}

#[test]
fn the_source_scan_catches_a_planted_clock_read_and_ignores_comments() {
    let text = "fn f() {\n    // Instant::now is named in a comment only\n    let t = std::time::Instant::now();\n}\n";
    assert_eq!(forbidden_lines(text), vec![(3, "let t = std::time::Instant::now();".to_string())]);
}
