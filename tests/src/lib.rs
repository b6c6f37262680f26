//! floe's integration tests live in `tests/tests/`.
