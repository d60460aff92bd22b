//! Micro-benchmarks of the batch codec at 64-byte, 1500-byte and 64 KiB (GSO) frames.
//!
//! Each iteration encodes or decodes one batch as the default policy would pack it
//! ([`BatchLimits::DEFAULT`]: up to 128 frames or 256 KiB). Throughput is reported both in frame
//! bytes (record headers not counted) and in frames.
//!
//! `cargo bench -p meshnet-wire -- --warm-up-time 1 --measurement-time 2`
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use meshnet_wire::WireId;
use meshnet_wire::batch::{BatchEncoder, Filled, decode, decode_ref, record_len};
use meshnet_wire::batching::BatchLimits;
use meshnet_wire::vnet::VNET_HDR_LEN;

const SIZES: [usize; 3] = [64, 1500, 65536];

/// Frames per batch at this size under the default policy.
fn frames_per_batch(size: usize) -> usize {
    let l = BatchLimits::DEFAULT;
    (l.max_bytes / record_len(size)).clamp(1, l.max_frames)
}

fn frame(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

fn batch(size: usize) -> Bytes {
    let f = frame(size);
    let mut enc = BatchEncoder::new(BatchLimits::DEFAULT.max_bytes);
    for i in 0..frames_per_batch(size) {
        enc.push(WireId(i as u32 % 8 + 1), &[0; VNET_HDR_LEN], &f)
            .expect("sized to fit");
    }
    enc.finish()
}

fn throughput(size: usize) -> Throughput {
    let n = frames_per_batch(size) as u64;
    Throughput::ElementsAndBytes {
        elements: n,
        bytes: n * size as u64,
    }
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in SIZES {
        let f = frame(size);
        let n = frames_per_batch(size);
        g.throughput(throughput(size));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            let mut enc = BatchEncoder::new(BatchLimits::DEFAULT.max_bytes);
            b.iter(|| {
                for i in 0..n {
                    enc.push(WireId(i as u32 % 8 + 1), &[0; VNET_HDR_LEN], black_box(&f))
                        .expect("sized to fit");
                }
                black_box(enc.finish())
            });
        });
    }
    g.finish();
}

/// The endpoint path: each frame is appended by a `recv`-like closure straight into the batch
/// (here a copy from memory, as a TAP `read()` would write it).
fn encode_in_place(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_in_place");
    for size in SIZES {
        let mut src = vec![0u8; VNET_HDR_LEN];
        src.extend(frame(size));
        let n = frames_per_batch(size);
        g.throughput(throughput(size));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            // The default limit with headroom for `push_with`'s largest-record rule.
            let mut enc = BatchEncoder::new(BatchLimits::DEFAULT.max_bytes + record_len(1 << 17));
            b.iter(|| {
                for i in 0..n {
                    let r = enc.push_with(WireId(i as u32 % 8 + 1), |buf| {
                        buf.extend_from_slice(black_box(&src));
                        Ok::<_, std::convert::Infallible>(Some(size))
                    });
                    assert_eq!(r, Ok(Filled::Frame(size)));
                }
                black_box(enc.finish())
            });
        });
    }
    g.finish();
}

fn decode_owned(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for size in SIZES {
        let b0 = batch(size);
        g.throughput(throughput(size));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let mut bytes = 0;
                for f in decode(black_box(b0.clone())) {
                    let f = f.expect("valid batch");
                    bytes += f.data.len();
                    black_box(&f);
                }
                bytes
            });
        });
    }
    g.finish();
}

fn decode_borrowed(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_ref");
    for size in SIZES {
        let b0 = batch(size);
        g.throughput(throughput(size));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let mut bytes = 0;
                for f in decode_ref(black_box(&b0)) {
                    let f = f.expect("valid batch");
                    bytes += f.data.len();
                    black_box(&f);
                }
                bytes
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    encode,
    encode_in_place,
    decode_owned,
    decode_borrowed
);
criterion_main!(benches);
