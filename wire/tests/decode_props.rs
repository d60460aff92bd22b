//! Stable-Rust property test of the batch decoder: 200 000 seeded inputs — random bytes, valid
//! batches, and valid batches mutated where it hurts (length fields set to boundary values,
//! truncation, byte flips, splices) — each checked by the same oracle as the fuzz target.
//! It runs in CI on every change; `cargo +nightly fuzz run batch_decode` explores further.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/batch_oracle.rs"]
mod batch_oracle;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use meshnet_wire::WireId;
use meshnet_wire::batch::{BatchEncoder, BatchError, MAX_FRAME, MIN_FRAME, RECORD_HEADER_LEN};

const CASES: usize = 200_000;

fn valid_batch(rng: &mut StdRng) -> Vec<u8> {
    // Five records always fit; no bigger arena than that per case.
    let mut enc = BatchEncoder::new(5 * meshnet_wire::batch::MAX_RECORD);
    for _ in 0..rng.random_range(1..=5) {
        let len = if rng.random_bool(0.002) {
            rng.random_range(MIN_FRAME..=MAX_FRAME)
        } else {
            rng.random_range(MIN_FRAME..=200)
        };
        let mut frame = vec![0u8; len];
        rng.fill(&mut frame[..]);
        let vnet: [u8; 10] = rng.random();
        enc.push(WireId(rng.random()), &vnet, &frame).unwrap();
    }
    enc.finish().to_vec()
}

fn boundary_len(rng: &mut StdRng, remaining: usize) -> u32 {
    let picks = [
        0,
        1,
        MIN_FRAME - 1,
        MIN_FRAME,
        MAX_FRAME,
        MAX_FRAME + 1,
        remaining.saturating_sub(RECORD_HEADER_LEN),
        remaining.saturating_sub(RECORD_HEADER_LEN) + 1,
        u32::MAX as usize,
    ];
    picks[rng.random_range(0..picks.len())] as u32
}

fn mutate(rng: &mut StdRng, b: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..6) {
            // Flip a byte.
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= rng.random_range(1..=255u8);
            }
            // Overwrite a length field (bytes 4..8 of some record, if the first is intact).
            1 if b.len() >= 8 => {
                let at = if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..b.len() - 7)
                };
                let v = boundary_len(rng, b.len() - at);
                b[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            // Truncate.
            2 if !b.is_empty() => b.truncate(rng.random_range(0..b.len())),
            // Append junk.
            3 => b.extend((0..rng.random_range(1..=40)).map(|_| rng.random::<u8>())),
            // Append a copy of a slice of itself (a partial record).
            4 if !b.is_empty() => {
                let s = rng.random_range(0..b.len());
                let e = rng.random_range(s..=b.len());
                b.extend_from_within(s..e);
            }
            // Insert a byte (misaligns every later record).
            _ => {
                let i = rng.random_range(0..=b.len());
                b.insert(i, rng.random());
            }
        }
    }
}

#[test]
fn decoder_survives_random_and_mutated_batches() {
    let mut rng = StdRng::seed_from_u64(0x006d_6573_686e_6574);
    // [ok, truncated header, truncated frame, oversize, too short]
    let mut seen = [0usize; 5];
    for _ in 0..CASES {
        let input = match rng.random_range(0..4) {
            0 => {
                let len = rng.random_range(0..=64);
                (0..len).map(|_| rng.random()).collect()
            }
            1 => valid_batch(&mut rng),
            _ => {
                let mut b = valid_batch(&mut rng);
                mutate(&mut rng, &mut b);
                b
            }
        };
        let kind = match batch_oracle::check_batch(&input) {
            None => 0,
            Some(BatchError::TruncatedHeader { .. }) => 1,
            Some(BatchError::TruncatedFrame { .. }) => 2,
            Some(BatchError::Oversize { .. }) => 3,
            Some(BatchError::TooShort { .. }) => 4,
        };
        seen[kind] += 1;
    }
    // The generator reaches every outcome often (else the test proves little).
    eprintln!("outcomes [ok, truncated header, truncated frame, oversize, too short]: {seen:?}");
    assert!(seen.iter().all(|&n| n > CASES / 100), "{seen:?}");
}

#[test]
fn valid_batches_decode_whole() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let b = valid_batch(&mut rng);
        assert_eq!(batch_oracle::check_batch(&b), None);
    }
}
