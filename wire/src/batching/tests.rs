use super::*;

const LIMITS: BatchLimits = BatchLimits {
    max_bytes: 1000,
    max_frames: 4,
};

/// Drives a batcher the way the I/O shell does: `arrivals[t]` frames of `len` bytes become
/// ready at step t, read one at a time. Returns the flushed batches.
fn drive(limits: BatchLimits, arrivals: &[(usize, usize)]) -> Vec<(BatchSummary, FlushCause)> {
    let mut b = Batcher::new(limits);
    let mut out = Vec::new();
    for &(count, len) in arrivals {
        for _ in 0..count {
            if !b.fits(len) {
                out.push((b.flushed(), FlushCause::Bytes));
            }
            if let Some(cause) = b.append(len) {
                out.push((b.flushed(), cause));
            }
        }
        if let Some(cause) = b.idle() {
            out.push((b.flushed(), cause));
        }
    }
    out
}

#[test]
fn a_lone_frame_is_flushed_at_once() {
    let s = |frames, bytes| BatchSummary { frames, bytes };
    assert_eq!(
        drive(LIMITS, &[(1, 100), (0, 0), (1, 60)]),
        vec![(s(1, 100), FlushCause::Idle), (s(1, 60), FlushCause::Idle)]
    );
}

#[test]
fn idle_never_flushes_an_empty_batch() {
    let b = Batcher::new(LIMITS);
    assert_eq!(b.idle(), None);
    assert!(drive(LIMITS, &[(0, 0), (0, 0)]).is_empty());
}

#[test]
fn a_burst_is_cut_at_the_frame_bound() {
    let got = drive(LIMITS, &[(10, 10)]);
    let frames: Vec<_> = got.iter().map(|(s, c)| (s.frames, *c)).collect();
    assert_eq!(
        frames,
        vec![
            (4, FlushCause::Frames),
            (4, FlushCause::Frames),
            (2, FlushCause::Idle)
        ]
    );
}

#[test]
fn a_burst_is_cut_at_the_byte_bound() {
    // 400-byte records: two fit in 1000 bytes, the third flushes first.
    let got = drive(LIMITS, &[(5, 400)]);
    let bytes: Vec<_> = got.iter().map(|(s, c)| (s.bytes, *c)).collect();
    assert_eq!(
        bytes,
        vec![
            (800, FlushCause::Bytes),
            (800, FlushCause::Bytes),
            (400, FlushCause::Idle)
        ]
    );
    // Exactly reaching the bound flushes immediately, without waiting for the next frame.
    let mut b = Batcher::new(LIMITS);
    assert_eq!(b.append(500), None);
    assert_eq!(b.append(500), Some(FlushCause::Bytes));
}

#[test]
fn an_oversized_record_still_goes_out_alone() {
    let mut b = Batcher::new(LIMITS);
    assert!(b.fits(5000));
    assert_eq!(b.append(5000), Some(FlushCause::Bytes));
    assert_eq!(
        b.flushed(),
        BatchSummary {
            frames: 1,
            bytes: 5000
        }
    );
    assert!(b.is_empty());
}

#[test]
fn batches_respect_both_bounds_and_lose_nothing() {
    // Mixed sizes, bursty arrivals.
    let arrivals: Vec<(usize, usize)> = (0..200)
        .map(|i| ((i * 7) % 13, 14 + (i * 131) % 700))
        .collect();
    let got = drive(LIMITS, &arrivals);
    for (s, _) in &got {
        assert!(s.frames >= 1 && s.frames <= LIMITS.max_frames);
        assert!(s.bytes <= LIMITS.max_bytes || s.frames == 1);
    }
    let sent: usize = arrivals.iter().map(|(c, _)| c).sum();
    let sent_bytes: usize = arrivals.iter().map(|(c, l)| c * l).sum();
    assert_eq!(got.iter().map(|(s, _)| s.frames).sum::<usize>(), sent);
    assert_eq!(got.iter().map(|(s, _)| s.bytes).sum::<usize>(), sent_bytes);
}

#[test]
fn zero_frame_bound_is_one() {
    let mut b = Batcher::new(BatchLimits {
        max_bytes: 1000,
        max_frames: 0,
    });
    assert_eq!(b.limits().max_frames, 1);
    assert_eq!(b.append(10), Some(FlushCause::Frames));
}

#[test]
fn labels() {
    assert_eq!(FlushCause::Idle.as_label(), "idle");
    assert_eq!(FlushCause::Bytes.as_label(), "bytes");
    assert_eq!(FlushCause::Frames.as_label(), "frames");
    assert_eq!(BatchLimits::default(), BatchLimits::DEFAULT);
}
