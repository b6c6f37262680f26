//! Shared code of floe's cargo-fuzz targets (`fuzz_targets/*.rs`), kept in a library so that the
//! targets stay short and the input → scenario mapping is unit-tested (`cargo test` in `fuzz/`).
//!
//! | module | what |
//! |---|---|
//! | [`bytes`] | splitting one fuzz input into several blobs, framing bodies, a chunked reader |
//! | [`schedule`] | the `schedule` target's [`arbitrary::Arbitrary`] input: a bounded fault schedule plus swarm knobs, rendered as a scenario TOML |
//!
//! Like the rest of floe's simulation code this crate only builds with `--cfg madsim`
//! (cargo-fuzz ignores `.cargo/config.toml`: run `RUSTFLAGS="--cfg madsim" cargo fuzz ...`).

#[cfg(not(madsim))]
compile_error!(
    "floe's fuzz targets need the simulation: run `RUSTFLAGS=\"--cfg madsim\" cargo fuzz run -s none <target>`"
);

pub mod bytes;
pub mod schedule;
