//! Helpers the simulated cluster tests share: the word count's expected counts and its
//! exactly-once check.

use floe_runtime::cluster::jobs::{decode_word_count, words};
use std::collections::BTreeMap;

/// For each word of `lines`, how often the input holds it (the tokenizer's words).
pub fn expected_counts(lines: &[String]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in lines {
        for w in words(line) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Checks the word count's committed output: for each word `w` seen `n` times, exactly
/// `(w,1), …, (w,n)` in order within its partition, and nothing else.
pub fn check_word_count(output: &[Vec<Vec<u8>>], expected: &BTreeMap<String, u64>) {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for (p, partition) in output.iter().enumerate() {
        for (offset, bytes) in partition.iter().enumerate() {
            let (word, count) = decode_word_count(bytes).unwrap_or_else(|e| panic!("partition {p} offset {offset}: undecodable record: {e}"));
            let last = seen.entry(word.clone()).or_insert(0);
            assert_eq!(count, *last + 1, "partition {p} offset {offset}: ({word}, {count}) follows ({word}, {last}): lost or duplicated");
            *last = count;
        }
    }
    for (word, n) in expected {
        assert_eq!(seen.get(word), Some(n), "word {word}: committed up to {:?}, input has {n}", seen.get(word));
    }
    assert_eq!(seen.len(), expected.len(), "committed words that are not in the input: {:?}", seen.keys().filter(|w| !expected.contains_key(*w)).collect::<Vec<_>>());
}
