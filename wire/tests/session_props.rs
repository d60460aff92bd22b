//! Stable-Rust property test of the session engine: 20 000 seeded operation sequences (halves
//! attached and detached on either side, streams up and down, control lost, forged Binds,
//! Unbinds and batches, clocks advanced), each checked by the same oracle as the fuzz target
//! (`cargo +nightly fuzz run session_ops`): events agree with state, frames reach only bound
//! halves, control stays bounded, and once a stream is up every link whose two halves exist is
//! bound on both ends within two re-announce intervals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/session_oracle.rs"]
mod session_oracle;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CASES: u64 = 20_000;

#[test]
fn random_operation_sequences_keep_the_session_invariants() {
    for seed in 0..CASES {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = rng.random_range(0..=240);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let r = std::panic::catch_unwind(|| session_oracle::check_session_ops(&data));
        assert!(r.is_ok(), "seed {seed}: input {data:?}");
    }
}

#[test]
fn a_scripted_sequence_binds_after_losses() {
    // attach 0 on A and B, connect, lose A's Bind, carry B's, tick, carry.
    let ops = [
        0, 0, 0, // A attach 0
        0, 0, 1, // B attach 0
        4, 0, 0, // connect
        7, 0, 0, // A's oldest control lost
        5, 0, 1, // B -> A
        8, 100, 0, // A ticks 800 ms later
        5, 0, 0, 5, 0, 0, 5, 0, 1,
    ];
    session_oracle::check_session_ops(&ops);
}

/// Found by the `session_ops` fuzz target in a CI run: attaching and detaching a half again and
/// again while connected, with nothing polled, queued one Unbind per detach without bound (for
/// ids the peer had never been told). A detach owes an Unbind only for a Bind that went out.
#[test]
fn detaching_unannounced_halves_queues_no_unbinds() {
    let mut ops = vec![0xdc, 0x06, 0x0b];
    ops.extend(std::iter::repeat_n(0u8, 121));
    session_oracle::check_session_ops(&ops);
}

/// Found by the same fuzz target right after: attaching the same link again and again on a
/// connected stream left one queued Bind per attach. A detached half's queued Bind goes with it.
#[test]
fn attaching_a_link_again_and_again_queues_one_bind() {
    let mut ops = vec![0x4c, 0x01, 0x00, 0x00, 0x00, 0xed];
    ops.extend(std::iter::repeat_n(0u8, 300));
    session_oracle::check_session_ops(&ops);
}
