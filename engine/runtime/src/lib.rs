//! # floe-runtime — the hosts
//!
//! The only engine code that awaits or does I/O. Written against madsim-tokio: under
//! `--cfg madsim` every node is a simulated madsim node (simulated clock, network and disks);
//! without it, the same code runs on real tokio over real TCP and real files.

pub mod disk;
