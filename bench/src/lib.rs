//! `meshnet-bench`: the whole-system benchmark harness (the micro-benchmarks of the pure wire
//! core are criterion benches in `wire/benches`).
//!
//! It brings up labs (`meshnet-lab`, real daemons and the real CNI chain) and measures, in one
//! run and interleaved repetition by repetition, every path frames can take between two pods:
//! the kernel's (`veth`, `vxlan`), meshnet's gRPC wire (TAP and AF_PACKET endpoints), the
//! smallest userspace relay with the same endpoints (`tcp-relay`, [`relay`]; `tcp-relay-port`
//! behind the wire's port), and the legacy wire designs reproduced in our code
//! (`grpc-per-frame`, `grpc-unary`). Numbers are only ever
//! measured; comparisons are ratios taken pair by pair within one repetition, because iperf3
//! itself uses most of a small machine.
//!
//! Shape: pure parts with unit tests — [`stats`] (medians, pairwise ratios), [`parse`] (iperf3
//! JSON, ping, `/proc`), [`topo`] (the labs' YAML), [`report`] (JSON, markdown, SVG) — and a thin
//! I/O shell: [`system`] (commands, processes), [`relay`], [`harness`] (orchestration).
#![forbid(unsafe_code)]

pub mod harness;
pub mod parse;
pub mod relay;
pub mod report;
pub mod stats;
pub mod system;
pub mod topo;
