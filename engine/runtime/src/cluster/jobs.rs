//! Jobs are Rust code registered by name — the same binary runs on every node, as a Flink jar
//! does. A [`JobSpec`] names the job and its parameters; every node builds the same
//! [`JobGraph`] (and so the same execution graph) from it.
//!
//! Built in:
//!
//! * **`word-count`** — Flink's classic stateful word count: lines → words (lower-cased, split on
//!   non-alphanumerics) → `key_by(word)` → [`RunningCount`] (a `ValueState<u64>` per word)
//!   emitting `(word, running_count)` → two-phase-commit sink. Exactly-once means: for each word
//!   `w` seen `n` times, the committed output holds `(w,1), (w,2), …, (w,n)`, each exactly once,
//!   in order, and nothing else.
//! * **`two-shuffle`** — the word count followed by a second shuffle: `key_by(count % BUCKETS)` →
//!   [`SumByBucket`] emitting `(bucket, word, count, bucket_running_sum)`. Alignment then spans
//!   many channels and two chained shuffles. Exactly-once means: every `(word, k)` for
//!   `k in 1..=n_w` appears exactly once, in bucket `k % BUCKETS`, and within a bucket the
//!   running sums go up by exactly each record's count, in output order.

use floe_core::codec;
use floe_core::coordinator::CheckpointConfig;
use floe_core::element::CheckpointingMode;
use floe_core::failover::RestartStrategy;
use floe_core::graph::{DataStream, GraphError, JobGraph, StreamEnvironment};
use floe_core::ids::{Offset, PartitionId};
use floe_core::key_groups::CompactString;
use floe_core::operator::keyed_process::{KeyedContext, KeyedProcessFunction, RunningCount};
use floe_core::operator::sink::{SinkMode, TwoPhaseCommitSinkWriter};
use floe_core::operator::source::{SourceReader, SourceSpec};
use floe_core::operator::{OperatorError, OperatorResult};
use floe_core::state::{KeyedStateBackend, ValueState, ValueStateDescriptor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The buckets of the two-shuffle job's second `key_by`.
pub const BUCKETS: u64 = 8;

/// A job to run: which registered job, and its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The registered job's name (`word-count`, `two-shuffle`, ...).
    pub job: String,
    /// This run's name: prefixes its checkpoint blobs and its sinks' transactional ids.
    pub name: String,
    /// The input topic.
    pub input_topic: String,
    /// Its partitions.
    pub input_partitions: u32,
    /// Per input partition, the offset to stop at (bounded input); `None` reads forever.
    pub stopping_offsets: Option<Vec<u64>>,
    /// The output topic (one partition per sink subtask: subtask `i` writes partition `i`).
    pub output_topic: String,
    /// Parallelism of every operator.
    pub parallelism: u32,
    /// Max parallelism (key groups) of every operator.
    pub max_parallelism: u32,
    /// Transactional (exactly-once) or plain (the at-least-once positive control).
    pub sink_mode: SinkMode,
    /// Aligned (exactly-once) or unaligned tracking (the at-least-once positive control).
    pub checkpointing: CheckpointingMode,
    /// The checkpoint coordinator's settings.
    pub checkpoint: CheckpointConfig,
    /// How the job restarts after a failure.
    pub restart: RestartStrategy,
    /// The aligner's buffer bound per input gate.
    pub alignment_buffer_bytes_max: usize,
}

impl JobSpec {
    /// A word count over `input_topic` with defaults for everything else.
    pub fn word_count(name: &str, input_topic: &str, input_partitions: u32, output_topic: &str, parallelism: u32) -> Self {
        JobSpec {
            job: "word-count".into(),
            name: name.into(),
            input_topic: input_topic.into(),
            input_partitions,
            stopping_offsets: None,
            output_topic: output_topic.into(),
            parallelism,
            max_parallelism: 128,
            sink_mode: SinkMode::Transactional,
            checkpointing: CheckpointingMode::ExactlyOnce,
            checkpoint: CheckpointConfig { interval_ms: 100, ..CheckpointConfig::default() },
            restart: RestartStrategy::FixedDelay { attempts_max: 1_000, delay_ms: 200 },
            alignment_buffer_bytes_max: 64 << 20,
        }
    }

    /// The transactional-id prefix of the sink.
    pub fn sink_prefix(&self) -> String {
        format!("{}-sink", self.name)
    }

    fn source_spec(&self) -> SourceSpec {
        SourceSpec {
            topic: self.input_topic.clone(),
            partitions: self.input_partitions,
            stopping: self.stopping_offsets.as_ref().map(|offs| offs.iter().enumerate().map(|(p, o)| (PartitionId(p as u32), Offset(*o))).collect::<BTreeMap<_, _>>()),
        }
    }
}

/// Why a job could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No job of that name is registered.
    #[error("unknown job '{name}'; registered jobs: {known}")]
    UnknownJob {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// The job graph is invalid.
    #[error("job '{job}': {error}")]
    Graph {
        /// The job.
        job: String,
        /// What is wrong.
        error: GraphError,
    },
    /// The spec is invalid.
    #[error("job '{job}': {reason}")]
    Spec {
        /// The job.
        job: String,
        /// What is wrong.
        reason: String,
    },
}

/// Builds a job's graph from its spec.
pub type JobBuilder = fn(&JobSpec) -> Result<JobGraph, JobError>;

/// The jobs this binary can run, by name.
#[derive(Clone)]
pub struct JobRegistry {
    jobs: BTreeMap<String, JobBuilder>,
}

impl Default for JobRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl JobRegistry {
    /// The built-in jobs: `word-count` and `two-shuffle`.
    pub fn builtin() -> Self {
        let mut r = JobRegistry { jobs: BTreeMap::new() };
        r.register("word-count", word_count);
        r.register("two-shuffle", two_shuffle);
        r
    }

    /// Registers a job (replacing one of the same name).
    pub fn register(&mut self, name: &str, builder: JobBuilder) {
        self.jobs.insert(name.to_string(), builder);
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.jobs.keys().map(String::as_str).collect()
    }

    /// Builds the graph of `spec.job`.
    pub fn build(&self, spec: &JobSpec) -> Result<JobGraph, JobError> {
        let builder = self.jobs.get(&spec.job).ok_or_else(|| JobError::UnknownJob { name: spec.job.clone(), known: self.names().join(", ") })?;
        builder(spec)
    }
}

/// The word count's word: an inline string (no heap allocation up to 24 bytes, from the
/// tokenizer through the channels to the keyed state and the output record) that serializes as a
/// `str`, so every byte the job writes is what a `String` word would write.
pub type Word = CompactString;

/// Splits a line into lower-cased words on non-alphanumeric characters (the word count's tokenizer).
pub fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(lower_case)
}

/// The words of [`words`], as [`Word`]s appended to `out`: what the job's tokenizer emits.
pub fn split_words(line: &str, out: &mut Vec<Word>) {
    if !line.is_ascii() {
        out.extend(line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(lower_case_word));
        return;
    }
    // ASCII: every byte is a char, alphanumeric exactly when `char::is_alphanumeric` says so.
    let mut start = 0;
    for (i, byte) in line.bytes().enumerate() {
        if !byte.is_ascii_alphanumeric() {
            if i > start {
                out.push(ascii_lower_case_word(&line[start..i]));
            }
            start = i + 1;
        }
    }
    if line.len() > start {
        out.push(ascii_lower_case_word(&line[start..]));
    }
}

/// [`lower_case`] into a [`Word`].
fn lower_case_word(word: &str) -> Word {
    if word.is_ascii() {
        ascii_lower_case_word(word)
    } else {
        Word::from(word.to_lowercase())
    }
}

fn ascii_lower_case_word(word: &str) -> Word {
    debug_assert!(word.is_ascii());
    let mut w = Word::new(word);
    // Most words are lower case already: a scan is cheaper than a write through `DerefMut`.
    if word.bytes().any(|b| b.is_ascii_uppercase()) {
        w.make_ascii_lowercase();
    }
    w
}

/// `word.to_lowercase()`, with a fast path for ASCII (one allocation of the exact size, no
/// per-character Unicode case mapping).
fn lower_case(word: &str) -> String {
    if word.is_ascii() {
        word.to_ascii_lowercase()
    } else {
        word.to_lowercase()
    }
}

fn decode_line(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("input line is not UTF-8: {e}"))
}

/// Encodes a `(word, count)` output record: the same bytes as `codec::to_bytes(record)` (a varint
/// length, the word's bytes, a varint count), appended to the sink's record batch.
fn encode_word_count((word, count): &(Word, u64), out: &mut Vec<u8>) -> Result<(), String> {
    codec::put_varint(out, word.len() as u64);
    out.extend_from_slice(word.as_bytes());
    codec::put_varint(out, *count);
    Ok(())
}

/// Decodes one committed record of the `word-count` job.
pub fn decode_word_count(bytes: &[u8]) -> Result<(String, u64), codec::CodecError> {
    codec::from_bytes(bytes)
}

/// A record of the `two-shuffle` job: `(bucket, word, count, bucket_running_sum)`.
pub type BucketRecord = (u64, String, u64, u64);

fn encode_bucket_record(record: &BucketRecord, out: &mut Vec<u8>) -> Result<(), String> {
    codec::append_bytes(out, record).map_err(|e| e.to_string())
}

/// Decodes one committed record of the `two-shuffle` job.
pub fn decode_bucket_record(bytes: &[u8]) -> Result<BucketRecord, codec::CodecError> {
    codec::from_bytes(bytes)
}

fn environment(spec: &JobSpec) -> StreamEnvironment {
    let env = StreamEnvironment::new(spec.name.clone());
    env.set_parallelism(spec.parallelism);
    env.set_max_parallelism(spec.max_parallelism);
    env
}

fn check(spec: &JobSpec) -> Result<(), JobError> {
    let fail = |reason: String| Err(JobError::Spec { job: spec.job.clone(), reason });
    if let Err(e) = spec.source_spec().validate() {
        return fail(e.to_string());
    }
    if let Err(e) = spec.checkpoint.validate() {
        return fail(e.to_string());
    }
    if spec.output_topic.is_empty() {
        return fail("empty output topic".into());
    }
    Ok(())
}

/// The stages both jobs share: lines → words → `key_by(word)` → running count per word.
fn running_counts(env: &StreamEnvironment, spec: &JobSpec) -> DataStream<(Word, u64)> {
    let source = spec.source_spec();
    env.add_source("lines", move || SourceReader::new(source.clone(), decode_line).expect("the source spec was validated"))
        .flat_map("split", |line: String, out: &mut Vec<Word>| split_words(&line, out))
        .key_by_record("by-word")
        .process("count", RunningCount::<Word>::default())
}

/// Ends `stream` in the job's two-phase-commit sink and builds the graph.
fn finish<T: floe_core::operator::Data>(env: &StreamEnvironment, spec: &JobSpec, stream: DataStream<T>, encode: fn(&T, &mut Vec<u8>) -> Result<(), String>) -> Result<JobGraph, JobError> {
    let (prefix, mode) = (spec.sink_prefix(), spec.sink_mode);
    stream.add_sink("sink", move || TwoPhaseCommitSinkWriter::new(prefix.clone(), mode, encode).expect("the sink prefix is valid"));
    env.build().map_err(|error| JobError::Graph { job: spec.job.clone(), error })
}

fn word_count(spec: &JobSpec) -> Result<JobGraph, JobError> {
    check(spec)?;
    let env = environment(spec);
    let counts = running_counts(&env, spec);
    finish(&env, spec, counts, encode_word_count)
}

/// The two-shuffle job's second keyed stage: a running sum of counts per bucket.
#[derive(Clone, Debug, Default)]
pub struct SumByBucket {
    sum: Option<ValueState<u64>>,
}

impl KeyedProcessFunction for SumByBucket {
    type Key = u64;
    type In = (Word, u64);
    type Out = BucketRecord;

    fn open(&mut self, state: &mut KeyedStateBackend) -> OperatorResult {
        self.sum = Some(state.get_state(&ValueStateDescriptor::<u64>::new("bucket-sum")).map_err(|e| OperatorError::State(e.to_string()))?);
        Ok(())
    }

    fn process_element(&mut self, (word, count): (Word, u64), ctx: &mut KeyedContext<'_, u64>, out: &mut Vec<BucketRecord>) -> OperatorResult {
        let sum = self.sum.ok_or_else(|| OperatorError::Protocol("process_element before open".into()))?;
        let total = sum.get_or_insert_with(ctx.state, || 0);
        *total += count;
        out.push((*ctx.key, String::from(word), count, *total));
        Ok(())
    }
}

fn two_shuffle(spec: &JobSpec) -> Result<JobGraph, JobError> {
    check(spec)?;
    let env = environment(spec);
    let sums = running_counts(&env, spec).key_by("by-bucket", |(_, n): &(Word, u64)| n % BUCKETS).process("bucket-sum", SumByBucket::default());
    finish(&env, spec, sums, encode_bucket_record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_lower_cases_and_splits_on_non_alphanumerics() {
        let cases: &[(&str, &[&str])] = &[("", &[]), ("To be, or NOT to-be!", &["to", "be", "or", "not", "to", "be"]), ("  a1 b_2 ", &["a1", "b", "2"])];
        for (line, want) in cases {
            assert_eq!(words(line).collect::<Vec<_>>(), *want, "{line:?}");
        }
    }

    #[test]
    fn the_tokenizer_lower_cases_non_ascii_words_like_to_lowercase() {
        let cases: &[(&str, &[&str])] = &[("ÄBC straße ΣΑΣ", &["äbc", "straße", "σας"]), ("MiXeD ascii Ünï", &["mixed", "ascii", "ünï"])];
        for (line, want) in cases {
            assert_eq!(words(line).collect::<Vec<_>>(), *want, "{line:?}");
        }
    }

    #[test]
    fn the_job_tokenizer_splits_into_the_words_of_the_oracle_tokenizer() {
        let lines = ["", "To be, or NOT to-be!", "  a1 b_2 ", "ÄBC straße ΣΑΣ", "MiXeD ascii Ünï", "w1 w22  w333", "A-WORD-LONGER-THAN-TWENTY-FOUR-BYTES-X"];
        for line in lines {
            let mut got = Vec::new();
            split_words(line, &mut got);
            assert_eq!(got.iter().map(Word::as_str).collect::<Vec<_>>(), words(line).collect::<Vec<_>>(), "{line:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the line (ASCII or not), the job's tokenizer emits the oracle's words.
        #[test]
        fn the_job_tokenizer_agrees_with_the_oracle_tokenizer(line in "[ -~]{0,60}|\\PC{0,30}") {
            let mut got = Vec::new();
            split_words(&line, &mut got);
            proptest::prop_assert_eq!(got.iter().map(Word::as_str).collect::<Vec<_>>(), words(&line).collect::<Vec<_>>());
        }
    }

    #[test]
    fn word_count_records_encode_to_the_codec_bytes_and_decode_back() {
        let long = "x".repeat(70_000);
        let words = ["", "a", "word", long.as_str()];
        let counts = [0u64, 1, 250, 251, 0xFFFF, 0x1_0000, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX];
        for word in words {
            for count in counts {
                let record = (word.to_string(), count);
                let mut bytes = b"before".to_vec();
                encode_word_count(&(Word::new(word), count), &mut bytes).unwrap();
                let bytes = bytes.split_off(6);
                assert_eq!(bytes, codec::to_bytes(&record).unwrap(), "({}, {count})", word.len());
                assert_eq!(decode_word_count(&bytes).unwrap(), record);
            }
        }
    }

    #[test]
    fn both_builtin_jobs_build_and_chain_as_expected() {
        let r = JobRegistry::builtin();
        let spec = JobSpec::word_count("wc", "in", 3, "out", 2);
        let exec = r.build(&spec).unwrap().expand();
        let names: Vec<&str> = exec.vertices.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["lines -> split", "count -> sink"]);
        let exec = r.build(&JobSpec { job: "two-shuffle".into(), ..spec.clone() }).unwrap().expand();
        let names: Vec<&str> = exec.vertices.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["lines -> split", "count", "bucket-sum -> sink"]);
        let err = r.build(&JobSpec { job: "nope".into(), ..spec }).map(|_| ()).unwrap_err();
        assert_eq!(err.to_string(), "unknown job 'nope'; registered jobs: two-shuffle, word-count");
    }
}
