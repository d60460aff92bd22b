use std::convert::Infallible;

use super::*;
use crate::vnet::VNET_HDR_NONE;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn vnet(seed: u8) -> VnetBytes {
    [seed, 1, 2, 3, 4, 5, 6, 7, 8, seed.wrapping_add(9)]
}

fn record(wire: u32, len: u32, vnet: &VnetBytes, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&wire.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(vnet);
    r.extend_from_slice(body);
    r
}

#[test]
fn record_layout_is_exactly_as_documented() {
    let mut enc = BatchEncoder::new(1 << 20);
    let f = frame(14, 7);
    enc.push(WireId(0x0403_0201), &vnet(9), &f).unwrap();
    let b = enc.finish();
    assert_eq!(&b[..], &record(0x0403_0201, 14, &vnet(9), &f)[..]);
    assert_eq!(&b[..8], &[1, 2, 3, 4, 14, 0, 0, 0]);
    assert_eq!(b.len(), record_len(14));
}

#[test]
fn round_trip_many_wires_and_sizes() {
    let sizes = [MIN_FRAME, 60, 1514, 9014, MAX_FRAME];
    let mut enc = BatchEncoder::new(1 << 20);
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let (w, v, f) = (WireId(i as u32 * 1000), vnet(i as u8), frame(len, i as u8));
        enc.push(w, &v, &f).unwrap();
        sent.push((w, v, f));
    }
    assert_eq!(enc.frames(), sizes.len());
    let batch = enc.finish();
    assert_eq!(enc.frames(), 0);
    assert!(enc.is_empty());

    let got: Vec<Frame> = decode(batch.clone()).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), sent.len());
    for (g, (w, v, f)) in got.iter().zip(&sent) {
        assert_eq!(g.wire, *w);
        assert_eq!(g.vnet, *v);
        assert_eq!(&g.data[..], &f[..]);
    }
    let by_ref: Vec<FrameRef<'_>> = decode_ref(&batch).collect::<Result<_, _>>().unwrap();
    for (r, g) in by_ref.iter().zip(&got) {
        assert_eq!((r.wire, r.vnet, r.data), (g.wire, &g.vnet, &g.data[..]));
    }
}

#[test]
fn decoded_frames_are_slices_of_the_input_buffer() {
    let mut enc = BatchEncoder::new(1 << 20);
    for i in 0..10u8 {
        enc.push(
            WireId(i.into()),
            &VNET_HDR_NONE,
            &frame(100 + usize::from(i), i),
        )
        .unwrap();
    }
    let batch = enc.finish();
    let range = batch.as_ptr_range();
    for f in decode(batch.clone()) {
        let f = f.unwrap();
        let data = f.data.as_ptr_range();
        assert!(range.start <= data.start && data.end <= range.end);
    }
}

#[test]
fn empty_batch_has_no_frames() {
    assert_eq!(decode(Bytes::new()).count(), 0);
    assert_eq!(decode_ref(&[]).size_hint(), (0, Some(0)));
    assert!(BatchEncoder::new(100).finish().is_empty());
}

#[test]
fn truncated_header_at_every_length() {
    let good = record(1, 14, &VNET_HDR_NONE, &frame(14, 0));
    for cut in 1..RECORD_HEADER_LEN {
        let mut b = good.clone();
        b.extend_from_slice(&good[..cut]);
        let got: Vec<_> = decode(Bytes::from(b)).collect();
        assert_eq!(got.len(), 2, "cut {cut}");
        assert!(got[0].is_ok());
        assert_eq!(
            got[1],
            Err(BatchError::TruncatedHeader {
                at: good.len(),
                remaining: cut
            })
        );
    }
}

#[test]
fn length_beyond_buffer() {
    let b = record(1, 1500, &VNET_HDR_NONE, &frame(1499, 0));
    let got: Vec<_> = decode(Bytes::from(b)).collect();
    assert_eq!(
        got,
        vec![Err(BatchError::TruncatedFrame {
            at: 0,
            len: 1500,
            remaining: 1499
        })]
    );
}

#[test]
fn oversize_is_refused_even_when_the_bytes_are_there() {
    let len = MAX_FRAME + 1;
    let b = record(1, len as u32, &VNET_HDR_NONE, &frame(len, 0));
    let got: Vec<_> = decode(Bytes::from(b)).collect();
    assert_eq!(
        got,
        vec![Err(BatchError::Oversize {
            at: 0,
            len: len as u32
        })]
    );
    let huge = record(1, u32::MAX, &VNET_HDR_NONE, &[]);
    assert_eq!(
        decode_ref(&huge).next(),
        Some(Err(BatchError::Oversize {
            at: 0,
            len: u32::MAX
        }))
    );
}

#[test]
fn zero_length_and_runt_frames_are_refused() {
    for len in [0u32, 1, 13] {
        let b = record(1, len, &VNET_HDR_NONE, &frame(len as usize, 0));
        assert_eq!(
            decode(Bytes::from(b)).next(),
            Some(Err(BatchError::TooShort { at: 0, len }))
        );
    }
}

#[test]
fn the_first_error_ends_the_batch() {
    let mut b = record(1, 14, &VNET_HDR_NONE, &frame(14, 1));
    b.extend(record(2, 0, &VNET_HDR_NONE, &[]));
    b.extend(record(3, 14, &VNET_HDR_NONE, &frame(14, 3)));
    let mut d = decode(Bytes::from(b));
    assert_eq!(d.next().unwrap().unwrap().wire, WireId(1));
    assert_eq!(d.next(), Some(Err(BatchError::TooShort { at: 32, len: 0 })));
    assert_eq!(d.next(), None);
    assert_eq!(d.next(), None);
    assert_eq!(d.size_hint(), (0, Some(0)));
}

#[test]
fn errors_are_small_and_copy() {
    fn is_copy<T: Copy>() {}
    is_copy::<BatchError>();
    is_copy::<PushError>();
    assert!(std::mem::size_of::<BatchError>() <= 32);
}

#[test]
fn encoder_refuses_bad_lengths_without_changing_the_batch() {
    let mut enc = BatchEncoder::new(1 << 20);
    enc.push(WireId(1), &VNET_HDR_NONE, &frame(60, 0)).unwrap();
    for len in [0, 13, MAX_FRAME + 1] {
        assert_eq!(
            enc.push(WireId(1), &VNET_HDR_NONE, &frame(len, 0)),
            Err(PushError::BadLength { len })
        );
    }
    assert_eq!(enc.frames(), 1);
    assert_eq!(enc.len(), record_len(60));
}

#[test]
fn encoder_full_means_flush_and_retry() {
    let limit = 3 * record_len(100);
    let mut enc = BatchEncoder::new(limit);
    for _ in 0..3 {
        enc.push(WireId(1), &VNET_HDR_NONE, &frame(100, 0)).unwrap();
    }
    assert!(!enc.fits(record_len(MIN_FRAME)));
    assert_eq!(
        enc.push(WireId(1), &VNET_HDR_NONE, &frame(100, 0)),
        Err(PushError::Full {
            need: record_len(100),
            remaining: 0
        })
    );
    assert_eq!(enc.finish().len(), limit);
    enc.push(WireId(1), &VNET_HDR_NONE, &frame(100, 0)).unwrap();
}

#[test]
fn an_empty_batch_takes_any_valid_frame_whatever_the_limit() {
    let mut enc = BatchEncoder::new(10);
    enc.push(WireId(1), &VNET_HDR_NONE, &frame(MAX_FRAME, 0))
        .unwrap();
    assert!(matches!(
        enc.push(WireId(1), &VNET_HDR_NONE, &frame(14, 0)),
        Err(PushError::Full { .. })
    ));
    assert_eq!(enc.finish().len(), MAX_RECORD);
}

#[test]
fn encoding_is_canonical() {
    let mut b = record(7, 14, &vnet(1), &frame(14, 1));
    b.extend(record(u32::MAX, 1514, &vnet(2), &frame(1514, 2)));
    let mut enc = BatchEncoder::new(1 << 20);
    for f in decode(Bytes::from(b.clone())) {
        let f = f.unwrap();
        enc.push(f.wire, &f.vnet, &f.data).unwrap();
    }
    assert_eq!(&enc.finish()[..], &b[..]);
}

#[test]
fn push_with_reads_in_place() {
    let mut enc = BatchEncoder::new(1 << 20);
    enc.push(WireId(1), &vnet(1), &frame(60, 1)).unwrap();
    let f = frame(1514, 2);
    let got = enc.push_with(WireId(2), |buf| {
        buf.extend_from_slice(&vnet(2));
        buf.extend_from_slice(&f);
        Ok::<_, Infallible>(Some(f.len()))
    });
    assert_eq!(got, Ok(Filled::Frame(1514)));
    let frames: Vec<_> = decode(enc.finish()).collect::<Result<_, _>>().unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].data.len(), 60);
    assert_eq!(
        (frames[1].wire, frames[1].vnet, &frames[1].data[..]),
        (WireId(2), vnet(2), &f[..])
    );
}

#[test]
fn push_with_leaves_the_batch_unchanged_unless_a_good_frame_arrives() {
    let mut enc = BatchEncoder::new(1 << 20);
    enc.push(WireId(1), &vnet(1), &frame(60, 1)).unwrap();
    let before = enc.len();

    let r = enc.push_with(WireId(2), |_| Ok::<_, Infallible>(None));
    assert_eq!(r, Ok(Filled::NotReady));

    let r = enc.push_with(WireId(2), |buf| {
        buf.extend_from_slice(&[0; 30]);
        Err::<Option<usize>, _>("read failed")
    });
    assert_eq!(r, Err("read failed"));

    let r = enc.push_with(WireId(2), |buf| {
        buf.extend_from_slice(&[0; VNET_HDR_LEN + 5]);
        Ok::<_, Infallible>(Some(5))
    });
    assert_eq!(r, Ok(Filled::BadLength(5)));

    // Reports a length that disagrees with what it appended.
    let r = enc.push_with(WireId(2), |buf| {
        buf.extend_from_slice(&[0; VNET_HDR_LEN + 100]);
        Ok::<_, Infallible>(Some(60))
    });
    assert_eq!(r, Ok(Filled::BadLength(100)));

    // Appends but says it had nothing.
    let r = enc.push_with(WireId(2), |buf| {
        buf.extend_from_slice(&[0; 3]);
        Ok::<_, Infallible>(None)
    });
    assert_eq!(r, Ok(Filled::BadLength(3)));

    assert_eq!(enc.len(), before);
    assert_eq!(enc.frames(), 1);
    assert_eq!(decode(enc.finish()).count(), 1);
}

#[test]
fn push_with_needs_room_for_a_largest_record() {
    let mut enc = BatchEncoder::new(MAX_RECORD + 100);
    let r = enc.push_with(WireId(1), |buf| {
        buf.extend_from_slice(&VNET_HDR_NONE);
        buf.extend_from_slice(&frame(200, 0));
        Ok::<_, Infallible>(Some(200))
    });
    assert_eq!(r, Ok(Filled::Frame(200)));
    let r = enc.push_with(WireId(1), |_| -> Result<Option<usize>, Infallible> {
        unreachable!("must not be called when full")
    });
    assert_eq!(r, Ok(Filled::Full));
}

#[test]
fn encoder_reuses_its_arena_across_small_batches() {
    let mut enc = BatchEncoder::new(256 << 10);
    let mut batches = Vec::new();
    for i in 0..50u8 {
        enc.push(WireId(1), &VNET_HDR_NONE, &frame(64, i)).unwrap();
        batches.push(enc.finish());
    }
    // All 50 one-frame batches were carved from the same allocation.
    let base = batches[0].as_ptr() as usize;
    for (i, b) in batches.iter().enumerate() {
        assert_eq!(b.as_ptr() as usize, base + i * record_len(64));
        assert_eq!(decode(b.clone()).count(), 1);
    }
}
