use std::time::Duration;

use super::*;
use crate::WireId;
use crate::batch::{BatchEncoder, Filled, decode};
use crate::vnet::VNET_HDR_NONE;

fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[0] = tag;
    f
}

fn recv_frame(ep: &mut impl FrameEndpoint) -> Option<(VnetBytes, Vec<u8>)> {
    let mut buf = BytesMut::new();
    let len = ep.recv(&mut buf).unwrap()?;
    assert_eq!(buf.len(), VNET_HDR_LEN + len);
    let (vnet, data) = buf.split_first_chunk::<VNET_HDR_LEN>().unwrap();
    Some((*vnet, data.to_vec()))
}

fn tags(ep: &mut impl FrameEndpoint) -> Vec<u8> {
    std::iter::from_fn(|| recv_frame(ep))
        .map(|(_, f)| f[0])
        .collect()
}

#[test]
fn memory_pair_carries_frames_both_ways() {
    let MemoryPair { mut a, mut b } = MemoryPair::new(4, 1500);
    let vnet = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    a.send(&vnet, &frame(60, 1)).unwrap();
    b.send(&VNET_HDR_NONE, &frame(1514, 2)).unwrap();
    assert_eq!(recv_frame(&mut b), Some((vnet, frame(60, 1))));
    assert_eq!(recv_frame(&mut a), Some((VNET_HDR_NONE, frame(1514, 2))));
    assert_eq!(recv_frame(&mut a), None);
    assert_eq!(a.mtu(), 1500);
    assert!(a.readiness_fd().is_none());
}

#[test]
fn recv_appends_and_leaves_the_buffer_alone_when_idle() {
    let MemoryPair { a, mut b } = MemoryPair::new(4, 1500);
    let mut a = a;
    let mut buf = BytesMut::from(&b"prefix"[..]);
    assert_eq!(b.recv(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], b"prefix");
    a.send(&VNET_HDR_NONE, &frame(14, 9)).unwrap();
    assert_eq!(b.recv(&mut buf).unwrap(), Some(14));
    assert_eq!(&buf[..6], b"prefix");
    assert_eq!(buf.len(), 6 + VNET_HDR_LEN + 14);
}

#[test]
fn memory_pair_is_bounded() {
    let MemoryPair { mut a, mut b } = MemoryPair::new(2, 1500);
    a.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap();
    a.send(&VNET_HDR_NONE, &frame(60, 2)).unwrap();
    let e = a.send(&VNET_HDR_NONE, &frame(60, 3)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(tags(&mut b), vec![1, 2]);
    a.send(&VNET_HDR_NONE, &frame(60, 4)).unwrap();
}

#[test]
fn carrier_is_shared_and_gates_sending() {
    let MemoryPair { mut a, mut b } = MemoryPair::new(2, 1500);
    assert!(a.carrier() && b.carrier());
    a.set_carrier(false).unwrap();
    assert!(!b.carrier());
    let e = b.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    b.set_carrier(true).unwrap();
    b.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap();
}

#[test]
fn dropped_peer_is_a_broken_pipe_after_its_frames() {
    let MemoryPair { mut a, b } = MemoryPair::new(2, 1500);
    let mut b = b;
    b.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap();
    drop(b);
    assert!(recv_frame(&mut a).is_some());
    let mut buf = BytesMut::new();
    assert_eq!(
        a.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
    assert_eq!(
        a.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[test]
fn lengths_a_tap_refuses_are_invalid_input() {
    let MemoryPair { mut a, .. } = MemoryPair::new(2, 1500);
    for len in [0, 13, crate::batch::MAX_FRAME + 1] {
        let e = a.send(&VNET_HDR_NONE, &vec![0; len]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "len {len}");
    }
}

#[test]
fn an_endpoint_reads_straight_into_a_batch() {
    let MemoryPair { mut a, mut b } = MemoryPair::new(8, 1500);
    let vnet = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0];
    a.send(&vnet, &frame(1514, 5)).unwrap();
    a.send(&VNET_HDR_NONE, &frame(60, 6)).unwrap();
    let mut enc = BatchEncoder::new(1 << 20);
    assert_eq!(
        enc.push_with(WireId(3), |buf| b.recv(buf)).unwrap(),
        Filled::Frame(1514)
    );
    assert_eq!(
        enc.push_with(WireId(4), |buf| b.recv(buf)).unwrap(),
        Filled::Frame(60)
    );
    assert_eq!(
        enc.push_with(WireId(4), |buf| b.recv(buf)).unwrap(),
        Filled::NotReady
    );
    let got: Vec<_> = decode(enc.finish()).map(Result::unwrap).collect();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].wire, got[0].vnet), (WireId(3), vnet));
    assert_eq!(&got[0].data[..], &frame(1514, 5)[..]);
    assert_eq!(got[1].wire, WireId(4));
}

#[test]
fn boxed_endpoints_are_endpoints() {
    let MemoryPair { a, b } = MemoryPair::new(2, 9000);
    let mut a: Box<dyn FrameEndpoint> = Box::new(a);
    let mut b: Box<dyn FrameEndpoint> = Box::new(b);
    a.send(&VNET_HDR_NONE, &frame(60, 7)).unwrap();
    assert_eq!(tags(&mut b), vec![7]);
    assert_eq!(b.mtu(), 9000);
    b.set_carrier(false).unwrap();
    assert!(b.readiness_fd().is_none());
}

fn injector(faults: Faults, seed: u64) -> (FaultInjector<MemoryEndpoint>, MemoryEndpoint, Instant) {
    let MemoryPair { a, b } = MemoryPair::new(10_000, 1500);
    let t0 = Instant::now();
    (FaultInjector::new(a, faults, seed, 10_000, t0), b, t0)
}

#[test]
fn no_faults_pass_straight_through() {
    let (mut f, mut b, _) = injector(Faults::NONE, 1);
    for i in 0..50 {
        f.send(&VNET_HDR_NONE, &frame(60, i)).unwrap();
    }
    assert_eq!(tags(&mut b), (0..50).collect::<Vec<_>>());
    assert_eq!(f.in_flight(), 0);
    assert_eq!(f.mtu(), 1500);
}

#[test]
fn loss_drops_and_counts() {
    let (mut f, mut b, _) = injector(
        Faults {
            loss: 1.0,
            ..Faults::NONE
        },
        1,
    );
    for i in 0..20 {
        f.send(&VNET_HDR_NONE, &frame(60, i)).unwrap();
    }
    assert!(tags(&mut b).is_empty());
    assert_eq!(f.stats().lost, 20);
}

#[test]
fn duplication_doubles() {
    let (mut f, mut b, _) = injector(
        Faults {
            duplicate: 1.0,
            ..Faults::NONE
        },
        1,
    );
    for i in 0..5 {
        f.send(&VNET_HDR_NONE, &frame(60, i)).unwrap();
    }
    assert_eq!(tags(&mut b), vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
}

#[test]
fn delay_follows_the_callers_clock() {
    let d = Duration::from_micros(100);
    let (mut f, mut b, t0) = injector(
        Faults {
            delay: d,
            ..Faults::NONE
        },
        1,
    );
    f.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap();
    assert_eq!(f.poll(t0 + d / 2).unwrap(), 0);
    assert!(tags(&mut b).is_empty());
    assert_eq!(f.next_due(), Some(t0 + d));
    assert_eq!(f.poll(t0 + d).unwrap(), 1);
    assert_eq!(tags(&mut b), vec![1]);
    // The clock never goes back.
    f.poll(t0).unwrap();
    f.send(&VNET_HDR_NONE, &frame(60, 2)).unwrap();
    assert_eq!(f.next_due(), Some(t0 + 2 * d));
}

#[test]
fn reordering_is_seeded_and_loses_nothing() {
    let faults = Faults {
        reorder: 0.3,
        reorder_delay: Duration::from_micros(20),
        ..Faults::NONE
    };
    let run = |seed| {
        let (mut f, mut b, t0) = injector(faults, seed);
        let mut out = Vec::new();
        for i in 0..100u8 {
            f.poll(t0 + Duration::from_micros(i.into())).unwrap();
            f.send(&VNET_HDR_NONE, &frame(60, i)).unwrap();
            out.extend(tags(&mut b));
        }
        f.poll(t0 + Duration::from_secs(1)).unwrap();
        out.extend(tags(&mut b));
        out
    };
    let got = run(5);
    assert_eq!(got, run(5));
    assert!(got.windows(2).any(|w| w[0] > w[1]));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
}

#[test]
fn a_full_inner_endpoint_stalls_without_loss() {
    let MemoryPair { a, mut b } = MemoryPair::new(1, 1500);
    let t0 = Instant::now();
    let mut f = FaultInjector::new(a, Faults::NONE, 1, 2, t0);
    f.send(&VNET_HDR_NONE, &frame(60, 1)).unwrap(); // delivered
    f.send(&VNET_HDR_NONE, &frame(60, 2)).unwrap(); // stalled
    f.send(&VNET_HDR_NONE, &frame(60, 3)).unwrap(); // queued
    assert_eq!(f.in_flight(), 2);
    f.send(&VNET_HDR_NONE, &frame(60, 4)).unwrap(); // queued (capacity 2 excludes the stalled one)
    let e = f.send(&VNET_HDR_NONE, &frame(60, 5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(tags(&mut b));
        f.poll(t0).unwrap();
    }
    assert_eq!(got, vec![1, 2, 3, 4]);
}

#[test]
fn faults_apply_to_sending_only() {
    let (mut f, mut b, _) = injector(
        Faults {
            loss: 1.0,
            ..Faults::NONE
        },
        1,
    );
    b.send(&VNET_HDR_NONE, &frame(60, 8)).unwrap();
    assert_eq!(tags(&mut f), vec![8]);
    f.set_carrier(false).unwrap();
    assert!(!b.carrier());
    assert!(f.readiness_fd().is_none());
    assert!(!f.inner().carrier());
    f.inner_mut().set_carrier(true).unwrap();
    assert!(f.into_inner().carrier());
}
