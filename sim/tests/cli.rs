//! The `floe` binary end to end: the catalog, bad input (exit 2 with file, line, field), and the
//! exit status of runs and sweeps on the simulated cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn floe(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(args)
        .current_dir(root)
        .env_remove("FLOE_SCENARIOS")
        .output()
        .expect("the floe binary runs")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("floe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn list_shows_every_example_scenario_with_its_description() {
    let out = floe(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "word-count-calm",
        "crash-tm-during-alignment",
        "jm-crash-and-partition",
        "plain-sink-duplicates",
        "at-least-once-alignment",
        "random-faults",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} listed:\n{text}");
    }
    assert!(
        text.contains("Positive control: a plain (non-transactional) sink must be caught duplicating after a crash.")
    );
}

#[test]
fn a_malformed_scenario_exits_2_naming_file_line_and_field() {
    let path = temp_file(
        "bad.toml",
        "job = \"word-count\"\n[[fault]]\nat_ms = 10\nkind = \"crash\"\nnode = \"tm7\"\n[cluster]\ntask_managers = 2\n",
    );
    let out = floe(&["run", path.to_str().unwrap(), "--seed", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("error: {}:5: field `fault[0].node`: unknown node 'tm7': the cluster has 2 task managers; valid nodes: jm, tm0..tm1, broker, blob\n", path.display())
    );
    let out = floe(&["sweep", path.to_str().unwrap(), "--seeds", "0..3"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_names_and_bad_arguments_exit_2() {
    let out = floe(&["run", "no-such-scenario"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scenario named 'no-such-scenario'"));
    let out = floe(&["sweep", "word-count-calm", "--seeds", "9..2"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: --seeds: '9..2' is an empty seed range\n");
    let out = floe(&["run", "word-count-calm", "--sink", "2pc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown value '2pc'; valid values: transactional, plain"));
}

#[test]
fn a_run_on_the_cluster_exits_0_when_it_passes_and_1_when_a_control_is_not_caught() {
    let out = floe(&["run", "word-count-calm", "--seed", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("verdict   PASS") && text.ends_with("repro     floe run word-count-calm --seed 1\n"), "{text}");
    let out = floe(&["run", "word-count-calm", "--seed", "1", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["verdict"].as_str(), json["seed"].as_u64()), (Some("pass"), Some(1)));
    assert!(json["trace_hash"].as_str().is_some_and(|h| h.len() == 16) && json["checkpoints_completed"].as_u64() >= Some(2));
    // The plain-sink control run with a transactional sink: nothing duplicates, so the control
    // is not caught, and that is a failed run.
    let out = floe(&["run", "plain-sink-duplicates", "--seed", "0", "--sink", "transactional"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("expected  exactly_once") && text.contains("--sink transactional"), "{text}");
    let out = floe(&["sweep", "word-count-calm", "--seeds", "0..2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["seeds"], 2);
    assert_eq!(json["failed_seeds"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_catalog_scenario_is_found_by_name_or_by_its_path_in_the_catalog() {
    for arg in ["word-count-calm", "basic/word-count-calm", "basic/word-count-calm.toml"] {
        let out = floe(&["run", arg, "--seed", "1"]);
        assert_eq!(out.status.code(), Some(0), "{arg}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.ends_with("repro     floe run word-count-calm --seed 1\n"), "{arg}:\n{text}");
    }
}

#[test]
fn a_reader_that_stops_early_ends_the_listing_quietly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_floe"))
        .arg("list")
        .current_dir(root)
        .env_remove("FLOE_SCENARIOS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the floe binary runs");
    // Hang up before the listing starts (what `floe list | head -0` does; the binary first
    // reads the catalog, so its first write finds the pipe closed).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
