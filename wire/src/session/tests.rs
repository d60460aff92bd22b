//! Back-to-back tests of two sessions (boringtun's noise tests): what one transmits, the other
//! handles, with a fake clock.
use super::*;
use crate::batch::BatchEncoder;
use crate::vnet::VNET_HDR_NONE;

type S = Session<u32>;

fn key(uid: i64) -> WireKey {
    WireKey::new("ns", uid)
}

/// Handles' bound state as the caller sees it through events.
#[derive(Default, Debug)]
struct Carriers(
    std::collections::BTreeMap<u32, bool>,
    /// Handles whose last unbind the peer said was its router shutting its port.
    std::collections::BTreeSet<u32>,
);

impl Carriers {
    fn apply(&mut self, e: &Event<'_, u32>) {
        match e {
            Event::Bound(h) => {
                self.0.insert(**h, true);
            }
            Event::Unbound(h) => {
                self.0.insert(**h, false);
            }
            Event::FarShut(h) => {
                assert_eq!(self.0.get(h), Some(&false), "FarShut follows an Unbound");
                self.1.insert(**h);
            }
            _ => {}
        }
        if let Event::Bound(h) | Event::Unbound(h) = e {
            self.1.remove(*h);
        }
    }
    fn far_shut(&self, h: u32) -> bool {
        self.1.contains(&h)
    }
    fn up(&self, h: u32) -> bool {
        self.0.get(&h).copied().unwrap_or(false)
    }
}

struct Side {
    s: S,
    c: Carriers,
    delivered: Vec<(u32, Vec<u8>)>,
}

impl Side {
    fn new() -> Self {
        Side {
            s: S::new(16),
            c: Carriers::default(),
            delivered: Vec::new(),
        }
    }
    fn attach(&mut self, uid: i64, h: u32) -> WireId {
        let c = &mut self.c;
        self.s
            .attach(key(uid), h, Arc::default(), |e| c.apply(&e))
            .unwrap()
    }
    fn detach(&mut self, uid: i64) {
        let c = &mut self.c;
        self.s.detach(&key(uid), |e| c.apply(&e));
    }
    fn disconnect(&mut self) {
        let c = &mut self.c;
        self.s.disconnected(|e| c.apply(&e));
    }
    fn handle(&mut self, m: Message, now: Instant) {
        let (c, d) = (&mut self.c, &mut self.delivered);
        self.s.handle(m, now, |e| {
            c.apply(&e);
            if let Event::Deliver { half, frame, .. } = e {
                d.push((*half, frame.to_vec()));
            }
            Ok(())
        });
    }
}

/// Moves control both ways until both sides are quiet; `drop` filters messages (true: lost).
fn exchange(a: &mut Side, b: &mut Side, now: Instant, mut drop: impl FnMut(&Control) -> bool) {
    for _ in 0..100 {
        let mut moved = false;
        while let Some(m) = a.s.poll_transmit() {
            moved = true;
            if !drop(&m) {
                b.handle(Message::Control(m), now);
            }
        }
        while let Some(m) = b.s.poll_transmit() {
            moved = true;
            if !drop(&m) {
                a.handle(Message::Control(m), now);
            }
        }
        if !moved {
            return;
        }
    }
    panic!("control never went quiet (ping-pong)");
}

fn connect(a: &mut Side, b: &mut Side, now: Instant) {
    a.s.connected(now);
    b.s.connected(now);
}

/// Two sides with a half of each `(uid, a's handle, b's handle)`, connected and bound.
fn bound(halves: &[(i64, u32, u32)], now: Instant) -> (Side, Side) {
    let (mut a, mut b) = (Side::new(), Side::new());
    for &(uid, ha, hb) in halves {
        a.attach(uid, ha);
        b.attach(uid, hb);
    }
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    (a, b)
}

fn frame(tag: u8) -> Vec<u8> {
    let mut f = vec![tag; 60];
    f[12] = 0x88;
    f[13] = 0xb5;
    f
}

fn batch_of(frames: &[(WireId, u8)]) -> Bytes {
    let mut enc = BatchEncoder::new(64 << 10);
    for (id, tag) in frames {
        enc.push(*id, &VNET_HDR_NONE, &frame(*tag)).unwrap();
    }
    enc.finish()
}

#[test]
fn halves_attached_before_the_stream_bind_when_it_comes_up() {
    let now = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    a.attach(1, 10);
    b.attach(1, 20);
    assert!(a.s.poll_transmit().is_none(), "nothing is sent while down");
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    assert!(a.c.up(10) && b.c.up(20));
    assert!(a.s.data_id(&key(1)).is_some());
}

#[test]
fn a_half_that_comes_late_is_answered() {
    let now = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    a.attach(1, 10);
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    assert!(!a.c.up(10), "B has no half: A's Bind is not taken");
    assert_eq!(a.s.data_id(&key(1)), None);
    b.attach(1, 20);
    exchange(&mut a, &mut b, now, |_| false);
    assert!(a.c.up(10) && b.c.up(20));
}

#[test]
fn a_lost_bind_is_announced_again_by_the_tick() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    a.attach(1, 10);
    b.attach(1, 20);
    connect(&mut a, &mut b, t0);
    // Every Bind is lost once (what the old shared data queue did under load).
    exchange(&mut a, &mut b, t0, |m| matches!(m, Control::Bind { .. }));
    assert!(!a.c.up(10) && !b.c.up(20));
    assert!(!a.s.tick(t0 + REBIND_INTERVAL / 2), "not due yet");
    assert!(a.s.tick(t0 + REBIND_INTERVAL));
    exchange(&mut a, &mut b, t0 + REBIND_INTERVAL, |_| false);
    assert!(a.c.up(10) && b.c.up(20), "the announce is answered");
    assert!(
        !a.s.tick(t0 + 10 * REBIND_INTERVAL),
        "bound halves are quiet"
    );
}

#[test]
fn a_quiet_half_never_announces_but_answers_and_announces_once_unquieted() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    a.attach(1, 10);
    a.s.set_quiet(&key(1), true, t0);
    assert_eq!(
        a.s.pending_control(),
        0,
        "attached while down: nothing queued"
    );
    b.attach(2, 21);
    connect(&mut a, &mut b, t0);
    for i in 1..5 {
        a.s.tick(t0 + REBIND_INTERVAL * i);
    }
    assert_eq!(
        a.s.poll_transmit(),
        None,
        "no Bind on a new stream or at the tick"
    );
    // A queued announce is withdrawn when the half is quieted.
    a.attach(3, 13);
    assert_eq!(a.s.pending_control(), 1);
    a.s.set_quiet(&key(3), true, t0);
    assert_eq!(a.s.poll_transmit(), None);
    // The far half comes (back): its announce binds the quiet half, which answers.
    b.attach(1, 20);
    exchange(&mut a, &mut b, t0, |_| false);
    assert!(a.c.up(10) && b.c.up(20));
    // Two quiet halves never bind; unquieted while unbound, one announces now.
    let mut b2 = Side::new();
    b2.attach(3, 23);
    b2.s.set_quiet(&key(3), true, t0);
    a.disconnect();
    connect(&mut a, &mut b2, t0);
    exchange(&mut a, &mut b2, t0, |_| false);
    assert!(!a.c.up(13) && !b2.c.up(23), "both quiet");
    a.s.set_quiet(&key(3), false, t0);
    let bind = a.s.poll_transmit();
    assert!(
        matches!(bind, Some(Control::Bind { reply: false, .. })),
        "{bind:?}"
    );
    b2.handle(Message::Control(bind.unwrap()), t0);
    exchange(&mut a, &mut b2, t0, |_| false);
    assert!(a.c.up(13) && b2.c.up(23));
}

#[test]
fn control_is_bounded_per_half() {
    let t0 = Instant::now();
    let mut a = Side::new();
    a.attach(1, 10);
    a.attach(2, 11);
    a.s.connected(t0);
    for i in 1..50 {
        a.s.tick(t0 + REBIND_INTERVAL * i);
    }
    assert_eq!(a.s.pending_control(), 2, "one Bind per half, however long");
}

#[test]
fn the_stream_going_down_unbinds_and_a_new_stream_binds_again() {
    let now = Instant::now();
    let (mut a, mut b) = bound(&[(1, 10, 20), (2, 11, 21)], now);
    a.disconnect();
    b.disconnect();
    assert!(!a.c.up(10) && !a.c.up(11) && !b.c.up(20) && !b.c.up(21));
    assert_eq!(a.s.data_id(&key(1)), None);
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    assert!(a.c.up(10) && a.c.up(11) && b.c.up(20) && b.c.up(21));
}

#[test]
fn a_restarted_peer_binds_again() {
    let now = Instant::now();
    let (mut a, b) = bound(&[(1, 10, 20)], now);
    for round in 0..20 {
        // B restarts: its stream ends, a new B (new ids) attaches and connects.
        a.disconnect();
        let mut b2 = Side::new();
        b2.attach(1, 30 + round);
        connect(&mut a, &mut b2, now);
        exchange(&mut a, &mut b2, now, |_| false);
        assert!(a.c.up(10) && b2.c.up(30 + round), "round {round}");
    }
    let _ = b;
}

#[test]
fn detaching_unbinds_the_peer_and_frames_after_it_are_stray() {
    let now = Instant::now();
    let (mut a, mut b) = bound(&[(1, 10, 20)], now);
    let id = a.s.data_id(&key(1)).unwrap();
    b.handle(Message::Batch(batch_of(&[(id, 1), (id, 2)])), now);
    assert_eq!(b.delivered, vec![(20, frame(1)), (20, frame(2))]);
    a.detach(1);
    assert!(!a.c.up(10));
    exchange(&mut a, &mut b, now, |_| false);
    assert!(!b.c.up(20), "the peer's carrier follows");
    b.handle(Message::Batch(batch_of(&[(id, 3)])), now);
    assert_eq!(b.delivered.len(), 2);
    assert_eq!(
        b.s.stray().snapshot().drops(DropReason::UnknownWire),
        1,
        "counted, not delivered"
    );
}

/// A half detached because its router shut its port tells the peer so in its Unbind (the
/// peer sees Unbound, then FarShut); one that goes away does not; binding again clears it.
#[test]
fn an_unbind_says_whether_the_far_router_shut_its_port() {
    let now = Instant::now();
    let (mut a, mut b) = bound(&[(1, 10, 20), (2, 11, 21)], now);
    assert!(b.c.up(20) && b.c.up(21));
    let c = &mut a.c;
    a.s.detach_with(&key(1), true, |e| c.apply(&e));
    a.detach(2);
    let mut sent = Vec::new();
    exchange(&mut a, &mut b, now, |m| {
        sent.push(m.clone());
        false
    });
    assert!(
        sent.iter()
            .any(|m| matches!(m, Control::Unbind { shut: true, .. }))
            && sent
                .iter()
                .any(|m| matches!(m, Control::Unbind { shut: false, .. })),
        "{sent:?}"
    );
    assert!(!b.c.up(20) && b.c.far_shut(20), "shut: the peer knows why");
    assert!(!b.c.up(21) && !b.c.far_shut(21), "gone: no reason");
    a.attach(1, 10);
    exchange(&mut a, &mut b, now, |_| false);
    assert!(b.c.up(20) && !b.c.far_shut(20), "bound again");
}

#[test]
fn delivery_is_counted_on_the_link_and_malformed_batches_stop() {
    let now = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    a.attach(1, 10);
    let counters = Arc::new(WireCounters::default());
    b.s.attach(key(1), 20, Arc::clone(&counters), |_| {})
        .unwrap();
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    let id = a.s.data_id(&key(1)).unwrap();
    let mut good = batch_of(&[(id, 1), (id, 2)]).to_vec();
    good.extend_from_slice(&[1, 2, 3]);
    let mut refused = 0;
    let mut malformed = 0;
    b.s.handle(Message::Batch(Bytes::from(good)), now, |e| match e {
        Event::Deliver { .. } if refused == 0 => {
            refused += 1;
            Err(DropReason::QueueFull)
        }
        Event::Malformed(_) => {
            malformed += 1;
            Ok(())
        }
        _ => Ok(()),
    });
    let snap = counters.snapshot();
    assert_eq!((snap.rx_frames, snap.rx_bytes), (1, 60));
    assert_eq!(snap.drops(DropReason::QueueFull), 1);
    assert_eq!((malformed, b.s.malformed()), (1, 1));
}

#[test]
fn binds_for_links_we_do_not_have_or_bad_ids_bind_nothing() {
    let now = Instant::now();
    let mut b = Side::new();
    b.attach(1, 20);
    b.s.connected(now);
    let _ = b.s.poll_transmit();
    for (id, uid) in [(5, 9), (0, 1)] {
        b.handle(
            Message::Control(Control::Bind {
                id: WireId(id),
                key: key(uid),
                reply: false,
            }),
            now,
        );
    }
    assert!(!b.c.up(20));
    assert!(b.s.poll_transmit().is_none(), "nothing answered");
    // A peer that moves an id to another link unbinds the first.
    b.attach(2, 21);
    let _ = b.s.poll_transmit();
    let bind = |id, uid| {
        Message::Control(Control::Bind {
            id: WireId(id),
            key: key(uid),
            reply: true,
        })
    };
    b.handle(bind(7, 1), now);
    assert!(b.c.up(20));
    b.handle(bind(7, 2), now);
    assert!(!b.c.up(20) && b.c.up(21));
}

#[test]
fn a_replaced_half_is_unbound_then_announced_under_a_new_id() {
    let now = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    let first = a.attach(1, 10);
    b.attach(1, 20);
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    let second = a.attach(1, 11);
    assert_ne!(first, second, "ids are not reused");
    assert!(!a.c.up(10), "the old handle is unbound");
    exchange(&mut a, &mut b, now, |_| false);
    assert!(a.c.up(11) && b.c.up(20));
}

#[test]
fn arrivals_count_every_frame_of_ids_bound_on_this_stream_until_it_is_taken() {
    let now = Instant::now();
    let (mut a, mut b) = (Side::new(), Side::new());
    a.attach(1, 10);
    a.attach(2, 11);
    let counters = Arc::new(WireCounters::default());
    b.s.attach(key(1), 20, Arc::clone(&counters), |_| {})
        .unwrap();
    b.attach(2, 21);
    connect(&mut a, &mut b, now);
    exchange(&mut a, &mut b, now, |_| false);
    let (id1, id2) = (a.s.data_id(&key(1)).unwrap(), a.s.data_id(&key(2)).unwrap());
    // Written or refused, a frame taken off the stream has arrived; runs of ids are counted
    // apart; a malformed tail is not a frame.
    let mut mixed = batch_of(&[(id1, 1), (id1, 2), (id2, 3), (id1, 4)]).to_vec();
    mixed.extend_from_slice(&[9, 9]);
    let mut refused = false;
    b.s.handle(Message::Batch(Bytes::from(mixed)), now, |e| match e {
        Event::Deliver { .. } if !refused => {
            refused = true;
            Err(DropReason::QueueFull)
        }
        _ => Ok(()),
    });
    // After the peer unbinds an id, its late frames are stray yet still arrived.
    b.detach(2);
    b.handle(Message::Batch(batch_of(&[(id2, 5), (WireId(999), 6)])), now);
    let arrivals = b.s.take_arrivals();
    assert_eq!(arrivals.len(), 2, "only ids bound on this stream");
    assert_eq!(arrivals[&id1].frames, 3);
    assert!(Arc::ptr_eq(&arrivals[&id1].counters, &counters));
    assert_eq!(arrivals[&id2].frames, 2);
    assert!(b.s.take_arrivals().is_empty(), "taken once");
    // A new stream counts afresh, and only once the peer binds again.
    b.disconnect();
    a.disconnect();
    b.handle(Message::Batch(batch_of(&[(id1, 7)])), now);
    connect(&mut a, &mut b, now);
    assert!(b.s.take_arrivals().is_empty());
}
