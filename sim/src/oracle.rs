//! Independent oracles: sequential models of each registered job, written from the jobs'
//! definitions and WITHOUT engine code (nothing from floe-core or floe-runtime), so an engine
//! bug cannot hide in the oracle too. The tokenizer is re-implemented from its definition: split
//! on non-alphanumeric characters, drop empty pieces, lower-case.
//!
//! * `word-count` (Flink's `WordCount` with a keyed running count): for each word `w` seen `n`
//!   times the committed output is `(w,1), (w,2), …, (w,n)`, in that order; the keyed state is
//!   `w → n`.
//! * `two-shuffle`: the same counts, then re-keyed by bucket `count % BUCKETS`; each `(w,k)`
//!   lands in bucket `k % BUCKETS` and the state adds `bucket → Σ k` over the records in it.
//!
//! Given a prefix per partition (a checkpoint's source offsets: lines consumed), the oracle
//! gives the state after exactly that prefix — what a consistent cut must hold.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The two-shuffle job's buckets (its second `key_by` is `count % BUCKETS`).
pub const BUCKETS: u64 = 8;

/// How many line locations a provenance list shows before it is cut.
pub const PROVENANCE_LINES_MAX: usize = 8;

/// The registered jobs the oracles model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// `word-count`.
    WordCount,
    /// `two-shuffle`.
    TwoShuffle,
}

impl JobKind {
    /// Every job, in catalog order.
    pub const ALL: [JobKind; 2] = [JobKind::WordCount, JobKind::TwoShuffle];

    /// The registered name.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::WordCount => "word-count",
            JobKind::TwoShuffle => "two-shuffle",
        }
    }

    /// The valid names, comma-separated (for error messages).
    pub fn valid_names() -> String {
        JobKind::ALL.iter().map(|j| j.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|j| j.name() == s)
            .ok_or_else(|| format!("unknown job '{s}'; valid jobs: {}", JobKind::valid_names()))
    }
}

/// Splits a line into lower-cased words on non-alphanumeric characters.
pub fn tokenize(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices().chain(std::iter::once((line.len(), ' '))) {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                words.push(line[s..i].to_lowercase());
                start = None;
            }
            _ => {}
        }
    }
    words
}

/// A line of the input: `(partition, offset)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineAt {
    /// Input partition.
    pub partition: u32,
    /// Offset in it.
    pub offset: u64,
}

impl fmt::Display for LineAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}@{}", self.partition, self.offset)
    }
}

/// Keyed state after some prefix of the input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OracleState {
    /// word → count.
    pub word_counts: BTreeMap<String, u64>,
    /// bucket → sum of the counts routed to it (two-shuffle only; empty for word-count).
    pub bucket_sums: BTreeMap<u64, u64>,
}

/// What a job over the whole input must commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedOutput {
    /// The final state; for each word `w`, the output is `(w,1)..=(w,word_counts[w])`.
    pub state: OracleState,
    /// For each word, the input lines holding its occurrences (a line holding it twice is
    /// listed twice), in partition then offset order.
    pub occurrences: BTreeMap<String, Vec<LineAt>>,
}

impl ExpectedOutput {
    /// Records the job must commit in all.
    pub fn records(&self) -> u64 {
        self.state.word_counts.values().sum()
    }

    /// The lines that can have produced the `k`-th occurrence of `word`, as text
    /// (`p0@3, p1@7`). Across partitions the order of occurrences is not fixed, so this lists
    /// every line holding the word (cut at [`PROVENANCE_LINES_MAX`]); in one partition, the
    /// `k`-th occurrence is that partition's `k`-th.
    pub fn provenance(&self, word: &str, k: u64) -> String {
        let Some(lines) = self.occurrences.get(word) else {
            return "no input line holds it".into();
        };
        let single_partition = lines.windows(2).all(|w| w[0].partition == w[1].partition);
        if single_partition {
            if let Some(at) = k.checked_sub(1).and_then(|i| lines.get(i as usize)) {
                return format!("input line {at}");
            }
        }
        let mut distinct: Vec<LineAt> = lines.clone();
        distinct.dedup();
        let shown: Vec<String> = distinct.iter().take(PROVENANCE_LINES_MAX).map(ToString::to_string).collect();
        let more = distinct.len().saturating_sub(PROVENANCE_LINES_MAX);
        let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("one of the input lines holding '{word}': {}{tail}", shown.join(", "))
    }
}

fn consumed<'a>(
    input: &'a [Vec<String>],
    prefix: Option<&'a BTreeMap<u32, u64>>,
) -> impl Iterator<Item = (LineAt, &'a str)> + 'a {
    input.iter().enumerate().flat_map(move |(p, lines)| {
        let p = p as u32;
        let take = match prefix {
            None => lines.len(),
            // A partition a checkpoint does not name was not read yet.
            Some(offsets) => offsets.get(&p).map_or(0, |o| (*o).min(lines.len() as u64) as usize),
        };
        lines[..take].iter().enumerate().map(move |(o, l)| (LineAt { partition: p, offset: o as u64 }, l.as_str()))
    })
}

/// The keyed state after consuming `prefix` lines of each partition (all of the input when
/// `None`). Word counts do not depend on the interleaving of partitions; bucket sums neither
/// (each `(w,k)` adds `k` to bucket `k % BUCKETS`).
pub fn expected_state(job: JobKind, input: &[Vec<String>], prefix: Option<&BTreeMap<u32, u64>>) -> OracleState {
    let mut state = OracleState::default();
    for (_, line) in consumed(input, prefix) {
        for word in tokenize(line) {
            let n = state.word_counts.entry(word).or_insert(0);
            *n += 1;
            if job == JobKind::TwoShuffle {
                *state.bucket_sums.entry(*n % BUCKETS).or_insert(0) += *n;
            }
        }
    }
    state
}

/// The oracle's state as it moves from one prefix of the input to another: the same result as
/// [`expected_state`] for each prefix, at the cost of the lines between the two prefixes rather
/// than of the whole prefix (judging a run with many checkpoints was quadratic). A move back
/// (a later checkpoint of a restarted job can sit behind an earlier one) takes the lines away
/// again: a word's count goes down, and the bucket that received its last count gives it back.
#[derive(Clone, Debug)]
pub struct PrefixWalker<'a> {
    job: JobKind,
    input: &'a [Vec<String>],
    at: Vec<usize>,
    state: OracleState,
}

impl<'a> PrefixWalker<'a> {
    /// The walker at the empty prefix.
    pub fn new(job: JobKind, input: &'a [Vec<String>]) -> Self {
        PrefixWalker { job, input, at: vec![0; input.len()], state: OracleState::default() }
    }

    /// Moves to `prefix` (as [`expected_state`] reads it) and returns the state there.
    pub fn state_at(&mut self, prefix: &BTreeMap<u32, u64>) -> &OracleState {
        for (p, lines) in self.input.iter().enumerate() {
            let want = prefix.get(&(p as u32)).map_or(0, |o| (*o).min(lines.len() as u64) as usize);
            let at = self.at[p];
            for line in lines.get(at..want).unwrap_or_default() {
                for word in tokenize(line) {
                    self.add(word);
                }
            }
            for line in lines.get(want..at).unwrap_or_default() {
                for word in tokenize(line) {
                    self.remove(&word);
                }
            }
            self.at[p] = want;
        }
        &self.state
    }

    fn add(&mut self, word: String) {
        let n = self.state.word_counts.entry(word).or_insert(0);
        *n += 1;
        if self.job == JobKind::TwoShuffle {
            *self.state.bucket_sums.entry(*n % BUCKETS).or_insert(0) += *n;
        }
    }

    fn remove(&mut self, word: &str) {
        let Some(n) = self.state.word_counts.get_mut(word) else {
            unreachable!("only words of lines added before are removed")
        };
        let count = *n;
        *n -= 1;
        if *n == 0 {
            self.state.word_counts.remove(word);
        }
        if self.job == JobKind::TwoShuffle {
            let bucket = count % BUCKETS;
            let sum = self.state.bucket_sums.get_mut(&bucket).expect("the bucket that received the count");
            *sum -= count;
            if *sum == 0 {
                self.state.bucket_sums.remove(&bucket);
            }
        }
    }
}

/// What the job must commit over the whole input.
pub fn expected_output(job: JobKind, input: &[Vec<String>]) -> ExpectedOutput {
    let mut occurrences: BTreeMap<String, Vec<LineAt>> = BTreeMap::new();
    for (at, line) in consumed(input, None) {
        for word in tokenize(line) {
            occurrences.entry(word).or_default().push(at);
        }
    }
    ExpectedOutput { state: expected_state(job, input, None), occurrences }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(parts: &[&[&str]]) -> Vec<Vec<String>> {
        parts.iter().map(|p| p.iter().map(|s| s.to_string()).collect()).collect()
    }

    #[test]
    fn the_tokenizer_follows_its_definition() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("To be, or NOT to-be!", &["to", "be", "or", "not", "to", "be"]),
            ("  a1 b_2 ", &["a1", "b", "2"]),
            ("Straße ÉTÉ", &["straße", "été"]),
            ("--", &[]),
        ];
        for (line, want) in cases {
            assert_eq!(tokenize(line), *want, "{line:?}");
        }
    }

    #[test]
    fn word_count_state_and_output_by_hand() {
        let input = lines(&[&["a b a", "c"], &["B a"]]);
        let out = expected_output(JobKind::WordCount, &input);
        assert_eq!(out.state.word_counts, BTreeMap::from([("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]));
        assert!(out.state.bucket_sums.is_empty());
        assert_eq!(out.records(), 6);
        let a = |p, o| LineAt { partition: p, offset: o };
        assert_eq!(out.occurrences["a"], vec![a(0, 0), a(0, 0), a(1, 0)]);
        assert_eq!(out.provenance("c", 1), "input line p0@1");
        assert_eq!(out.provenance("a", 3), "one of the input lines holding 'a': p0@0, p1@0");
        assert_eq!(out.provenance("zzz", 1), "no input line holds it");
    }

    #[test]
    fn a_prefix_limits_the_state_to_the_lines_consumed() {
        let input = lines(&[&["a b a", "c"], &["B a"]]);
        type Case<'a> = (&'a [(u32, u64)], &'a [(&'a str, u64)]);
        let cases: &[Case<'_>] = &[
            (&[], &[]),
            (&[(0, 1)], &[("a", 2), ("b", 1)]),
            (&[(0, 1), (1, 1)], &[("a", 3), ("b", 2)]),
            (&[(0, 99), (1, 0)], &[("a", 2), ("b", 1), ("c", 1)]),
        ];
        for (prefix, want) in cases {
            let prefix: BTreeMap<u32, u64> = prefix.iter().copied().collect();
            let got = expected_state(JobKind::WordCount, &input, Some(&prefix));
            let want: BTreeMap<String, u64> = want.iter().map(|(w, n)| (w.to_string(), *n)).collect();
            assert_eq!(got.word_counts, want, "{prefix:?}");
        }
    }

    #[test]
    fn two_shuffle_buckets_sum_the_counts_routed_to_them() {
        // "a" nine times: counts 1..=9; bucket 1 gets 1 + 9, bucket k gets k for k in 2..=7, bucket 0 gets 8.
        let input = lines(&[&["a a a a a", "a a a a"], &["b"]]);
        let s = expected_state(JobKind::TwoShuffle, &input, None);
        let want: BTreeMap<u64, u64> =
            [(0, 8), (1, 1 + 9 + 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7)].into_iter().collect();
        assert_eq!(s.bucket_sums, want);
    }

    #[test]
    fn job_names_parse_and_unknown_ones_list_the_valid_ones() {
        assert_eq!("two-shuffle".parse::<JobKind>(), Ok(JobKind::TwoShuffle));
        assert_eq!("wc".parse::<JobKind>(), Err("unknown job 'wc'; valid jobs: word-count, two-shuffle".into()));
    }

    proptest! {
        #[test]
        fn the_state_after_the_full_prefix_is_the_final_state(parts in prop::collection::vec(prop::collection::vec("[a-c ,]{0,8}", 0..5), 1..4)) {
            let full: BTreeMap<u32, u64> = parts.iter().enumerate().map(|(p, l)| (p as u32, l.len() as u64)).collect();
            for job in JobKind::ALL {
                prop_assert_eq!(expected_state(job, &parts, Some(&full)), expected_state(job, &parts, None));
                let out = expected_output(job, &parts);
                let occurrences: u64 = out.occurrences.values().map(|v| v.len() as u64).sum();
                prop_assert_eq!(out.records(), occurrences);
            }
        }

        #[test]
        fn the_walker_agrees_with_the_state_computed_from_scratch_at_every_prefix(
            parts in prop::collection::vec(prop::collection::vec("[a-c ,]{0,8}", 0..6), 1..4),
            prefixes in prop::collection::vec(prop::collection::btree_map(0u32..4, 0u64..8, 0..4), 1..8),
        ) {
            for job in JobKind::ALL {
                let mut walker = PrefixWalker::new(job, &parts);
                for prefix in &prefixes {
                    prop_assert_eq!(walker.state_at(prefix), &expected_state(job, &parts, Some(prefix)), "{} at {:?}", job.name(), prefix);
                }
            }
        }
    }
}
