//! The canary: a target that **must** fail. It panics on any input that starts with the two
//! bytes `FL`, which libFuzzer finds within seconds from an empty corpus. `.ci/fuzz-smoke` runs
//! it and fails if it does *not* crash and leave an artifact: that proves the fuzzing
//! infrastructure (instrumentation, crash detection, artifacts) works at all.
#![no_main]

#[cfg(not(madsim))]
compile_error!("run with RUSTFLAGS=\"--cfg madsim\" (cargo-fuzz ignores .cargo/config.toml)");

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [b'F', second, ..] = data {
        if *second == b'L' {
            panic!("canary: the fuzzer found the magic `FL` (this crash is expected)");
        }
    }
});
