//! Every `tokio::select!` in simulated code is `biased;`. An unbiased select! picks its first
//! branch from tokio's thread-local RNG, which is seeded from a process-wide counter: the same
//! seed then takes another path in the second simulation of a process, and a sweep's failing seed
//! no longer reproduces with `floe run` (found by the determinism test: seed 40 of its scenario).


/// `(line, text)` of every `select! {` whose next code line is not `biased;`.
fn unbiased(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if code.contains("select! {") {
            let next = lines[i + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty() && !l.starts_with("//"));
            if next != Some("biased;") {
                out.push((i + 1, line.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn every_select_in_simulated_code_is_biased() {
    let root = floe_tests::workspace_root();
    let files: Vec<_> = ["engine/runtime/src", "sim/src"].iter().flat_map(|d| floe_tests::rust_files(&root.join(d))).collect();
    let hits: Vec<String> = files
        .iter()
        .flat_map(|f| unbiased(&std::fs::read_to_string(f).expect("readable")).into_iter().map(move |(n, l)| format!("{}:{n}: {l}", f.display())))
        .collect();
    assert!(hits.is_empty(), "unbiased select! (nondeterministic branch order):\n{}", hits.join("\n"));
}

#[test]
fn the_scan_catches_an_unbiased_select() {
    let bad = "loop {\n    tokio::select! {\n        a = x => {}\n    }\n}\n";
    let good = "tokio::select! {\n    // comment\n    biased;\n    a = x => {}\n}\n";
    assert_eq!(unbiased(bad), vec![(2, "tokio::select! {".to_string())]);
    assert!(unbiased(good).is_empty());
}
