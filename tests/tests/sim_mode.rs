//! Guards the trap in `shared/MADSIM.md`: any `RUSTFLAGS` in the environment replaces the
//! `--cfg madsim` of `.cargo/config.toml`, and every `#[cfg(madsim)]` test then silently compiles
//! to nothing. This test is deliberately *not* gated, so such a build fails loudly.

#[test]
#[allow(clippy::assertions_on_constants, reason = "the constant is the build's cfg: that is what is checked")]
fn the_test_build_is_a_simulation_build() {
    assert!(
        cfg!(madsim),
        "built without --cfg madsim: RUSTFLAGS in the environment replaced .cargo/config.toml's flags; \
         run `RUSTFLAGS=\"--cfg madsim\" cargo test`"
    );
}
