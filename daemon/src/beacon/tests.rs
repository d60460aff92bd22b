#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A clock the tests move by hand.
struct Clock {
    t0: Instant,
    w0: SystemTime,
    ms: u64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            t0: Instant::now(),
            w0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            ms: 0,
        }
    }
    fn now(&self) -> Now {
        Now {
            at: self.t0 + Duration::from_millis(self.ms),
            wall: self.w0 + Duration::from_millis(self.ms),
        }
    }
    fn advance(&mut self, ms: u64) -> Now {
        self.ms += ms;
        self.now()
    }
}

fn dgram(epoch: u64, seq: u64, links: &[(u64, bool)]) -> Datagram {
    Datagram {
        epoch,
        seq,
        links: links.to_vec(),
    }
}

#[test]
fn encode_decode_round_trip_and_chunk_limit() {
    let links: Vec<(u64, bool)> = (0..MAX_ENTRIES as u64)
        .map(|k| (k * 7919, k % 3 != 0))
        .collect();
    let b = encode(42, 7, &links);
    assert!(b.len() <= MAX_DATAGRAM, "{}", b.len());
    assert_eq!(decode(&b).unwrap(), dgram(42, 7, &links));
    // More than fits is cut at MAX_ENTRIES (callers chunk).
    let mut more = links.clone();
    more.push((1, true));
    assert_eq!(
        decode(&encode(1, 1, &more)).unwrap().links.len(),
        MAX_ENTRIES
    );
    assert_eq!(decode(&encode(0, 0, &[])).unwrap(), dgram(0, 0, &[]));
}

#[test]
fn decode_refuses_every_malformed_datagram_by_name() {
    let good = encode(1, 2, &[(3, true), (4, false)]);
    assert_eq!(decode(&good[..10]), Err(DecodeError::Short));
    assert_eq!(decode(&[]), Err(DecodeError::Short));
    assert_eq!(
        decode(&vec![0u8; MAX_DATAGRAM + 1]),
        Err(DecodeError::Oversize)
    );
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(decode(&b), Err(DecodeError::Magic));
    let mut b = good.clone();
    b[4] = 2;
    assert_eq!(decode(&b), Err(DecodeError::Version));
    assert_eq!(decode(&good[..good.len() - 1]), Err(DecodeError::Length));
    let mut b = good.clone();
    b[7] = 200; // claims 200 entries
    assert_eq!(decode(&b), Err(DecodeError::Length));
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] = 2;
    assert_eq!(decode(&b), Err(DecodeError::State));
}

/// Every prefix and every single-byte change of a valid datagram decodes or is refused; none
/// panics (a cheap exhaustive stand-in for fuzzing the decoder).
#[test]
fn decode_never_panics_on_mutations() {
    let good = encode(9, 9, &[(1, true), (2, false), (3, true)]);
    for n in 0..=good.len() {
        let _ = decode(&good[..n]);
    }
    for i in 0..good.len() {
        for v in [0u8, 1, 2, 0x7f, 0xff] {
            let mut b = good.clone();
            b[i] = v;
            if let Ok(d) = decode(&b) {
                // Byte 5 (flags) is reserved and ignored.
                b[5] = 0;
                assert_eq!(encode(d.epoch, d.seq, &d.links), b, "byte {i} = {v}");
            }
        }
    }
}

#[test]
fn far_end_follows_the_listing_then_ages_to_silent() {
    let peer = addr("192.0.2.2:51112");
    let mut c = Clock::new();
    let mut t = Table::new(Timing::default());
    assert!(t.track(1, peer, true, c.now()));
    assert!(!t.track(1, peer, true, c.now()), "nothing new to tell");
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::Unknown);
    assert!(!t.judge(c.now()));
    // Never heard: Unknown however long (an old peer must not take the link down).
    c.advance(5_000);
    t.judge(c.now());
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::Unknown);

    assert_eq!(
        t.receive(peer, &dgram(5, 1, &[(1, true)]), c.now().at),
        Received::Accepted
    );
    assert!(t.judge(c.now()));
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::Up);
    // Quiet for less than dead_after (400 ms): still up.
    c.advance(390);
    assert!(!t.judge(c.now()));
    c.advance(20);
    assert!(t.judge(c.now()));
    let v = t.verdict(1).unwrap();
    assert_eq!(v.far, FarEnd::Silent);
    assert_eq!(v.since, c.now().wall);
}

#[test]
fn a_shut_far_port_and_an_unlisted_link_are_port_down() {
    let peer = addr("192.0.2.2:51112");
    let mut c = Clock::new();
    let mut t = Table::new(Timing::default());
    t.track(1, peer, true, c.now());
    t.track(2, peer, true, c.now());
    t.receive(peer, &dgram(5, 1, &[(1, false), (2, true)]), c.now().at);
    t.judge(c.now());
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::PortDown);
    assert_eq!(t.verdict(2).unwrap().far, FarEnd::Up);
    // The peer keeps talking but stops listing link 2: its port is gone.
    for _ in 0..5 {
        c.advance(100);
        t.receive(peer, &dgram(5, c.ms, &[(1, false)]), c.now().at);
        t.judge(c.now());
    }
    assert_eq!(t.verdict(2).unwrap().far, FarEnd::PortDown);
}

#[test]
fn hold_down_keeps_a_down_verdict_300ms() {
    let peer = addr("192.0.2.2:51112");
    let mut c = Clock::new();
    let mut t = Table::new(Timing::default());
    t.track(1, peer, true, c.now());
    t.receive(peer, &dgram(5, 1, &[(1, true)]), c.now().at);
    t.judge(c.now());
    c.advance(10);
    t.receive(peer, &dgram(5, 2, &[(1, false)]), c.now().at);
    assert!(t.judge(c.now()));
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::PortDown);
    // Up again 50 ms later: held down until 300 ms have passed.
    c.advance(50);
    t.receive(peer, &dgram(5, 3, &[(1, true)]), c.now().at);
    assert!(!t.judge(c.now()));
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::PortDown);
    c.advance(200);
    t.receive(peer, &dgram(5, 4, &[(1, true)]), c.now().at);
    assert!(!t.judge(c.now()));
    c.advance(60);
    t.receive(peer, &dgram(5, 5, &[(1, true)]), c.now().at);
    assert!(t.judge(c.now()));
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::Up);
}

#[test]
fn stale_unknown_and_restarted_senders() {
    let peer = addr("192.0.2.2:51112");
    let mut c = Clock::new();
    let mut t = Table::new(Timing::default());
    t.track(1, peer, true, c.now());
    assert_eq!(
        t.receive(
            addr("192.0.2.9:51112"),
            &dgram(5, 1, &[(1, false)]),
            c.now().at
        ),
        Received::UnknownPeer
    );
    // Another port on the peer's address is another sender.
    assert_eq!(
        t.receive(
            addr("192.0.2.2:4000"),
            &dgram(5, 1, &[(1, false)]),
            c.now().at
        ),
        Received::UnknownPeer
    );
    // A v4-mapped source is the same peer.
    let mapped = addr("[::ffff:192.0.2.2]:51112");
    assert_eq!(
        t.receive(mapped, &dgram(5, 10, &[(1, true)]), c.now().at),
        Received::Accepted
    );
    assert_eq!(
        t.receive(peer, &dgram(5, 10, &[(1, false)]), c.now().at),
        Received::Stale
    );
    assert_eq!(
        t.receive(peer, &dgram(5, 9, &[(1, false)]), c.now().at),
        Received::Stale
    );
    t.judge(c.now());
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::Up);
    assert_eq!(t.restarts(peer), 0);
    // A restarted daemon starts its sequence over under a new epoch: accepted, counted.
    c.advance(10);
    assert_eq!(
        t.receive(peer, &dgram(6, 1, &[(1, true)]), c.now().at),
        Received::Accepted
    );
    assert_eq!(t.restarts(peer), 1);
}

#[test]
fn a_link_moved_to_another_peer_starts_over_and_retain_forgets() {
    let (a, b) = (addr("192.0.2.2:51112"), addr("192.0.2.3:51112"));
    let mut c = Clock::new();
    let mut t = Table::new(Timing::default());
    t.track(1, a, true, c.now());
    t.receive(a, &dgram(5, 1, &[(1, true)]), c.now().at);
    t.judge(c.now());
    assert!(t.track(1, b, true, c.now()));
    assert_eq!(t.verdict(1).unwrap().far, FarEnd::Unknown);
    // b's daemon listing the link counts; a's no longer does (a is no link's peer now).
    assert_eq!(
        t.receive(a, &dgram(5, 2, &[(1, false)]), c.advance(10).at),
        Received::UnknownPeer
    );
    t.retain(&HashSet::new());
    assert!(t.verdict(1).is_none());
    assert!(t.listings().is_empty());
}

#[test]
fn listings_chunk_per_peer() {
    let (a, b) = (addr("192.0.2.2:51112"), addr("192.0.2.3:51112"));
    let c = Clock::new();
    let mut t = Table::new(Timing::default());
    let n = MAX_ENTRIES as u64 * 2 + 5;
    for k in 0..n {
        t.track(k, a, k % 2 == 0, c.now());
    }
    t.track(n, b, false, c.now());
    let l = t.listings();
    let to_a: Vec<_> = l.iter().filter(|(p, _)| *p == a).collect();
    assert_eq!(to_a.len(), 3);
    assert_eq!(to_a.iter().map(|(_, v)| v.len()).sum::<usize>() as u64, n);
    assert!(
        to_a.iter()
            .all(|(_, v)| encode(1, 1, v).len() <= MAX_DATAGRAM)
    );
    assert_eq!(
        l.iter().filter(|(p, _)| *p == b).collect::<Vec<_>>(),
        vec![&(b, vec![(n, false)])]
    );
}

#[test]
fn clock_prints_utc_time_of_day() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 23 + 60 * 41 + 7);
    assert_eq!(clock(t), "23:41:07 UTC");
}

async fn wait_for(b: &Beacon, key: u64, want: FarEnd, within: Duration) -> Duration {
    let t = Instant::now();
    while b.far_end(key) != want {
        assert!(
            t.elapsed() < within,
            "far end of {key} is {:?}, not {want:?}, after {within:?}",
            b.far_end(key)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.elapsed()
}

fn loopback_beacon() -> Arc<Beacon> {
    Beacon::start(
        bind_udp(addr("127.0.0.1:0")).unwrap(),
        BeaconOptions::default(),
    )
    .unwrap()
}

/// Two beacons on loopback: states cross, a shut port arrives at once, silence is judged within
/// dead_after, and a restarted beacon (new epoch) is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beacons_on_loopback() {
    let a = loopback_beacon();
    let mut b = loopback_beacon();
    let (pa, pb) = (
        addr(&format!("127.0.0.1:{}", a.port())),
        addr(&format!("127.0.0.1:{}", b.port())),
    );
    a.track(7, pb, true);
    b.track(7, pa, true);
    let long = Duration::from_secs(3);
    wait_for(&a, 7, FarEnd::Up, long).await;
    wait_for(&b, 7, FarEnd::Up, long).await;
    let changed = a.changed();

    // b's port shut: sent at once, not at the next tick.
    b.track(7, pa, false);
    let took = wait_for(&a, 7, FarEnd::PortDown, long).await;
    eprintln!("port down seen after {took:?}");
    tokio::time::timeout(Duration::from_secs(1), changed.notified())
        .await
        .expect("a change of judgement fires the notify");
    b.track(7, pa, true);
    wait_for(&a, 7, FarEnd::Up, long).await;

    // b gone: silent within dead_after (+ a tick).
    let port_b = b.port();
    drop(b);
    let took = wait_for(&a, 7, FarEnd::Silent, Duration::from_secs(2)).await;
    eprintln!("silence judged after {took:?}");
    assert!(a.verdict(7).unwrap().far.is_down());

    // b restarts on the same port with a new epoch: seen, and the link is up again.
    b = Beacon::start(
        bind_udp(addr(&format!("127.0.0.1:{port_b}"))).unwrap(),
        BeaconOptions::default(),
    )
    .unwrap();
    b.track(7, pa, true);
    wait_for(&a, 7, FarEnd::Up, long).await;
    assert_eq!(a.restarts(pb), 1);
}

/// Datagrams from an address that is no link's peer, and garbage, are ignored.
#[tokio::test]
async fn strangers_and_garbage_change_nothing() {
    let a = loopback_beacon();
    let peer = addr("127.0.0.1:9"); // nobody sends from there
    a.track(1, peer, true);
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = addr(&format!("127.0.0.1:{}", a.port()));
    stranger.send_to(&encode(1, 1, &[(1, false)]), to).unwrap();
    stranger.send_to(b"garbage", to).unwrap();
    stranger.send_to(&[0u8; 1500], to).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.far_end(1), FarEnd::Unknown);
}

#[test]
fn dual_stack_socket_sends_to_v4_peers_mapped() {
    assert_eq!(
        destination(true, addr("192.0.2.1:5")),
        addr("[::ffff:192.0.2.1]:5")
    );
    assert_eq!(destination(false, addr("192.0.2.1:5")), addr("192.0.2.1:5"));
    assert_eq!(
        destination(true, addr("[2001:db8::1]:5")),
        addr("[2001:db8::1]:5")
    );
}

/// `[::]` receives IPv4 datagrams, with v4-mapped sources that match an IPv4 peer.
#[tokio::test]
async fn a_wildcard_beacon_hears_an_ipv4_peer() {
    let a = Beacon::start(bind_udp(addr("[::]:0")).unwrap(), BeaconOptions::default()).unwrap();
    let b = loopback_beacon();
    a.track(3, addr(&format!("127.0.0.1:{}", b.port())), true);
    b.track(3, addr(&format!("127.0.0.1:{}", a.port())), false);
    wait_for(&a, 3, FarEnd::PortDown, Duration::from_secs(3)).await;
}
