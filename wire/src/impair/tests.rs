#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A plain frame (no offload) of `len` bytes after the virtio-net header, tagged with `tag`.
fn frame(tag: u32, len: usize) -> Bytes {
    let mut v = vec![0u8; VNET_HDR_LEN + len];
    v[VNET_HDR_LEN + 14..VNET_HDR_LEN + 18].copy_from_slice(&tag.to_be_bytes());
    Bytes::from(v)
}

fn tag(f: &Bytes) -> u32 {
    u32::from_be_bytes(f[VNET_HDR_LEN + 14..VNET_HDR_LEN + 18].try_into().unwrap())
}

fn drain(imp: &mut Impairer, now: Instant) -> Vec<Bytes> {
    std::iter::from_fn(|| imp.pop(now)).collect()
}

#[test]
fn a_delay_holds_each_frame_exactly_that_long_in_order() {
    let t0 = Instant::now();
    let spec = Impairment {
        delay: 10 * MS,
        ..Impairment::default()
    };
    let mut imp = Impairer::new(spec, 1, t0);
    for i in 0..5 {
        imp.push(t0 + i * MS, frame(i, 100)).unwrap();
    }
    assert!(drain(&mut imp, t0 + 9 * MS).is_empty());
    assert_eq!(imp.next_due(), Some(t0 + 10 * MS));
    let out: Vec<u32> = drain(&mut imp, t0 + 12 * MS).iter().map(tag).collect();
    assert_eq!(out, [0, 1, 2]);
    let out: Vec<u32> = drain(&mut imp, t0 + 20 * MS).iter().map(tag).collect();
    assert_eq!(out, [3, 4]);
    assert_eq!(imp.next_due(), None);
}

#[test]
fn jitter_spreads_delays_evenly_around_the_delay() {
    let t0 = Instant::now();
    let spec = Impairment {
        delay: 10 * MS,
        jitter: 2 * MS,
        ..Impairment::default()
    };
    let mut imp = Impairer::new(spec, 7, t0);
    let n = 2000;
    for i in 0..n {
        imp.push(t0, frame(i, 60)).unwrap();
    }
    // Step the clock in 100 µs and record when each frame leaves.
    let (mut early, mut late, mut seen) = (0, 0, 0);
    let mut now = t0;
    while seen < n {
        for _ in drain(&mut imp, now) {
            let d = now - t0;
            assert!((8 * MS..=12 * MS + MS / 10).contains(&d), "{d:?}");
            if d < 10 * MS {
                early += 1;
            } else {
                late += 1;
            }
            seen += 1;
        }
        now += MS / 10;
    }
    assert!(early > 800 && late > 800, "early {early}, late {late}");
}

#[test]
fn loss_and_duplication_match_their_percentages_and_everything_is_accounted() {
    let t0 = Instant::now();
    let spec = Impairment {
        loss: 10.0,
        duplicate: 5.0,
        ..Impairment::default()
    };
    let mut imp = Impairer::new(spec, 42, t0);
    let n = 10_000u64;
    let mut lost = 0;
    for i in 0..n {
        if imp.push(t0, frame(u32::try_from(i).unwrap(), 60)) == Err(ImpairDrop::Loss) {
            lost += 1;
        }
    }
    let out = drain(&mut imp, t0);
    let s = imp.stats();
    assert_eq!(s.lost, lost);
    assert!((900..=1100).contains(&lost), "lost {lost} of {n}");
    assert!(
        (350..=600).contains(&s.duplicated),
        "duplicated {}",
        s.duplicated
    );
    assert_eq!(out.len() as u64, n - lost + s.duplicated);
    assert_eq!(s.pushed, n);
    assert_eq!(s.released, s.pushed - s.lost + s.duplicated);
}

#[test]
fn a_rate_paces_released_bytes_and_drops_beyond_the_backlog() {
    let t0 = Instant::now();
    // 8 Mbit/s = 1 MB/s; offered at 2 MB/s (2 000 frames of 1000 bytes per second) for 2 s.
    let spec = Impairment {
        rate_bps: Some(8_000_000),
        ..Impairment::default()
    };
    let mut imp = Impairer::new(spec, 3, t0);
    let mut released = 0usize;
    let mut rate_drops = 0u64;
    let mut now = t0;
    for i in 0..4000u32 {
        if imp.push(now, frame(i, 1000)) == Err(ImpairDrop::Rate) {
            rate_drops += 1;
        }
        released += drain(&mut imp, now)
            .iter()
            .map(|f| f.len() - VNET_HDR_LEN)
            .sum::<usize>();
        now += MS / 2;
    }
    let s = imp.stats();
    assert_eq!(s.rate_dropped, rate_drops, "every drop is decided at push");
    // 2 s at 1 MB/s (the first frame leaves at once).
    assert!(
        (1_990_000..=2_001_000).contains(&released),
        "released {released} bytes in 2 s"
    );
    assert!((1900..=2100).contains(&rate_drops), "{s:?}");
    // What is held is what 50 ms at the rate carries, and it leaves in due course.
    assert!(imp.held() <= 51, "{}", imp.held());
    let mut rest = 0;
    for _ in 0..10 {
        now += 10 * MS;
        rest += drain(&mut imp, now).len();
    }
    assert_eq!(imp.held(), 0);
    assert_eq!(
        s.pushed,
        s.released + u64::try_from(rest).unwrap() + s.rate_dropped
    );
}

#[test]
fn corruption_flips_one_bit_past_the_ethernet_header_or_drops_offloaded_frames() {
    let t0 = Instant::now();
    let spec = Impairment {
        corrupt: 100.0,
        ..Impairment::default()
    };
    let mut imp = Impairer::new(spec, 9, t0);
    let original = frame(77, 200);
    imp.push(t0, original.clone()).unwrap();
    let got = imp.pop(t0).unwrap();
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != original[i]).collect();
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0] >= VNET_HDR_LEN + 14);
    assert_eq!((got[diff[0]] ^ original[diff[0]]).count_ones(), 1);
    // A frame whose checksum the receiver completes, and a GSO super-frame: dropped as corrupt.
    let mut csum = original.to_vec();
    csum[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    assert_eq!(imp.push(t0, Bytes::from(csum)), Err(ImpairDrop::Corrupt));
    let mut gso = original.to_vec();
    gso[1] = 1;
    assert_eq!(imp.push(t0, Bytes::from(gso)), Err(ImpairDrop::Corrupt));
    assert_eq!(imp.stats().corrupted, 3);
}

#[test]
fn reorder_lets_later_frames_overtake_and_changing_the_spec_keeps_held_frames() {
    let t0 = Instant::now();
    let spec = Impairment {
        delay: 5 * MS,
        reorder: 50.0,
        ..Impairment::default()
    };
    let mut imp = Impairer::new(spec, 11, t0);
    for i in 0..100 {
        imp.push(t0 + i * (MS / 10), frame(i, 60)).unwrap();
    }
    let out: Vec<u32> = drain(&mut imp, t0 + 50 * MS).iter().map(tag).collect();
    assert_eq!(out.len(), 100);
    assert!(
        out.windows(2).any(|w| w[0] > w[1]),
        "no reordering in {out:?}"
    );

    imp.push(t0, frame(1000, 60)).unwrap();
    imp.set_spec(Impairment::default(), t0);
    let _ = drain(&mut imp, t0 + 3 * MS);
    assert_eq!(
        imp.held(),
        1,
        "a frame held before the change keeps its due time"
    );
    imp.push(t0 + 3 * MS, frame(1001, 60)).unwrap();
    assert_eq!(tag(&imp.pop(t0 + 3 * MS).unwrap()), 1001);
}
