//! The session oracle shared by the property test (`tests/session_props.rs`) and the fuzz
//! target (`fuzz/fuzz_targets/session_ops.rs`): any byte string is read as a sequence of
//! operations on two sessions joined back to back — halves attached, detached and quieted on
//! either side, streams up and down, control delivered, lost or delayed, clocks advanced, forged
//! messages (any Bind/Unbind, any batch bytes) injected — and after every operation the
//! invariants are checked; at the end, liveness: once the stream is up and nothing is lost,
//! every link whose two halves are attached, not both quiet, is bound on both ends within two
//! re-announce intervals, and no other link is.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshnet_wire::WireId;
use meshnet_wire::batch::BatchEncoder;
use meshnet_wire::session::{Control, Event, Message, REBIND_INTERVAL, Session};
use meshnet_wire::table::WireKey;
use meshnet_wire::transport::pump;

/// Links 0..KEYS; handles are `side * 100 + link`.
const KEYS: usize = 4;

struct Side {
    s: Session<usize>,
    /// Bound state per link as the events said.
    bound: [bool; KEYS],
    /// Links quieted since they were attached (they only answer).
    quiet: [bool; KEYS],
    /// Control sent by this side, not yet handled by the other.
    wire: VecDeque<Control>,
    base: usize,
    /// Frames taken off the stream since the arrivals were last reset (connected or taken).
    decoded: u64,
}

impl Side {
    fn new(base: usize) -> Self {
        Self {
            s: Session::new(KEYS),
            bound: [false; KEYS],
            quiet: [false; KEYS],
            wire: VecDeque::new(),
            base,
            decoded: 0,
        }
    }

    fn key(k: usize) -> WireKey {
        WireKey::new("fz", k as i64)
    }

    fn apply(bound: &mut [bool; KEYS], base: usize, e: &Event<'_, usize>) {
        match e {
            Event::Bound(h) => {
                assert!(!bound[**h - base], "Bound twice without Unbound");
                bound[**h - base] = true;
            }
            Event::Unbound(h) => bound[**h - base] = false,
            Event::FarShut(h) => assert!(!bound[**h - base], "FarShut on a bound link"),
            _ => {}
        }
    }

    fn check(&self) {
        for k in 0..KEYS {
            let key = Self::key(k);
            assert_eq!(
                self.bound[k],
                self.s.is_bound(&key),
                "link {k}: events vs state"
            );
            if self.bound[k] {
                assert!(self.s.is_connected(), "bound only while connected");
                assert!(self.s.out_id(&key).is_some(), "bound only while attached");
            }
            assert_eq!(self.s.data_id(&key).is_some(), self.bound[k]);
        }
        assert!(
            self.s.pending_control() <= 4 * KEYS + 64,
            "control stays bounded"
        );
    }

    fn attach(&mut self, k: usize) {
        self.quiet[k] = false;
        let (b, base) = (&mut self.bound, self.base);
        let _ = self.s.attach(Self::key(k), base + k, Arc::default(), |e| {
            Self::apply(b, base, &e)
        });
    }

    /// Detaches link `k`, as its router shutting its port (`shut`) or the half going away.
    fn detach(&mut self, k: usize, shut: bool) {
        self.quiet[k] = false;
        let (b, base) = (&mut self.bound, self.base);
        self.s
            .detach_with(&Self::key(k), shut, |e| Self::apply(b, base, &e));
    }

    /// The stream's arrivals (what the ledger keeps): at most one entry per id the session may
    /// hold, and never more frames than were taken off the stream.
    fn take_arrivals(&mut self) {
        let arrivals = self.s.take_arrivals();
        assert!(arrivals.len() <= KEYS, "arrivals are bounded");
        let sum: u64 = arrivals.values().map(|a| a.frames).sum();
        assert!(
            sum <= self.decoded,
            "{sum} arrivals of {} frames",
            self.decoded
        );
        assert!(self.s.take_arrivals().is_empty(), "taken once");
        self.decoded = 0;
    }

    fn connected(&mut self, now: Instant) {
        self.s.connected(now);
        self.decoded = 0;
        assert!(
            self.s.take_arrivals().is_empty(),
            "a new stream counts afresh"
        );
    }

    fn disconnect(&mut self) {
        self.take_arrivals();
        let (b, base) = (&mut self.bound, self.base);
        self.s.disconnected(|e| Self::apply(b, base, &e));
        self.wire.clear();
    }

    /// Handles `m`; every frame it delivers must go to a bound link.
    fn handle(&mut self, m: Message, now: Instant) {
        let (b, base) = (&mut self.bound, self.base);
        if let Message::Batch(batch) = m {
            let bound = *b;
            let r = pump::deliver(&mut self.s, batch, now, |&h, _, _| {
                assert!(bound[h - base], "frame delivered to an unbound half");
                Ok(())
            });
            self.decoded += r.frames;
            return;
        }
        self.s.handle(m, now, |e| {
            Self::apply(b, base, &e);
            Ok(())
        });
    }

    /// Quiets link `k` (or lets it announce again); nothing for a link not attached.
    fn set_quiet(&mut self, k: usize, quiet: bool, now: Instant) {
        if self.s.out_id(&Self::key(k)).is_some() {
            self.quiet[k] = quiet;
        }
        self.s.set_quiet(&Self::key(k), quiet, now);
    }

    fn transmit(&mut self) {
        while let Some(c) = self.s.poll_transmit() {
            self.wire.push_back(c);
        }
    }
}

/// Carries `from`'s oldest control message to `to` (or loses it).
fn carry(from: &mut Side, to: &mut Side, now: Instant, lose: bool) {
    from.transmit();
    if let Some(c) = from.wire.pop_front()
        && !lose
        && to.s.is_connected()
    {
        to.handle(Message::Control(c), now);
    }
}

fn forged_batch(bytes: &[u8], ids: &[u32]) -> Bytes {
    if bytes.first().is_some_and(|b| b % 2 == 0) {
        return Bytes::copy_from_slice(bytes);
    }
    let mut enc = BatchEncoder::new(1 << 20);
    for (i, id) in ids.iter().enumerate() {
        let mut frame = vec![i as u8; 60];
        frame[12] = 0x88;
        let _ = enc.push(WireId(*id), &[0; 10], &frame);
    }
    enc.finish()
}

/// Runs `data` as operations and checks every invariant (panics on a violation).
pub fn check_session_ops(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut a = Side::new(0);
    let mut b = Side::new(100);
    let mut ops = data.chunks(3);
    while let Some(op) = ops.next() {
        let (code, x, y) = (op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0));
        let k = x as usize % KEYS;
        let (me, other) = if y & 1 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        match code % 12 {
            0 => me.attach(k),
            1 => me.set_quiet(k, y & 2 != 0, now),
            2 => me.detach(k, y & 2 != 0),
            3 => {
                // The stream goes down on both ends (a TCP connection ends for both).
                me.disconnect();
                other.disconnect();
            }
            4 => {
                if !me.s.is_connected() {
                    me.connected(now);
                }
                if !other.s.is_connected() {
                    other.connected(now);
                }
            }
            5 | 6 => carry(me, other, now, false),
            7 => carry(me, other, now, true),
            8 => {
                now += Duration::from_millis(u64::from(x) * 8);
                me.s.tick(now);
            }
            9 => {
                let forged = if y & 2 == 0 {
                    Control::Bind {
                        id: WireId(u32::from(x % 8)),
                        key: Side::key(y as usize % (KEYS + 1)),
                        reply: y & 4 != 0,
                    }
                } else {
                    Control::Unbind {
                        id: WireId(u32::from(x % 8)),
                        shut: y & 4 != 0,
                    }
                };
                me.handle(Message::Control(forged), now);
            }
            10 => {
                let ids: Vec<u32> = (0..(y % 5))
                    .map(|i| u32::from(x.wrapping_add(i) % 8))
                    .collect();
                let rest: Vec<u8> = ops.by_ref().take(4).flatten().copied().collect();
                me.handle(Message::Batch(forged_batch(&rest, &ids)), now);
            }
            _ => {
                // The frames the other side would send now reach this side.
                let ids: Vec<u32> = (0..KEYS)
                    .filter_map(|k| other.s.data_id(&Side::key(k)).map(|i| i.0))
                    .collect();
                if me.s.is_connected() && other.s.is_connected() {
                    me.handle(Message::Batch(forged_batch(&[1], &ids)), now);
                }
            }
        }
        a.check();
        b.check();
    }
    // Liveness: one fresh stream (what a reconnect is), nothing lost, two intervals of ticks.
    // Forged Binds may have left stale state; a reconnect clears it.
    a.disconnect();
    b.disconnect();
    a.connected(now);
    b.connected(now);
    for round in 0..4 {
        for _ in 0..(4 * KEYS + 8) {
            carry(&mut a, &mut b, now, false);
            carry(&mut b, &mut a, now, false);
        }
        now += REBIND_INTERVAL;
        if round < 3 {
            a.s.tick(now);
            b.s.tick(now);
        }
    }
    a.check();
    b.check();
    for k in 0..KEYS {
        let both = a.s.out_id(&Side::key(k)).is_some() && b.s.out_id(&Side::key(k)).is_some();
        // A quiet half only answers: one side that announces is enough.
        let live = both && !(a.quiet[k] && b.quiet[k]);
        assert_eq!(
            a.bound[k], live,
            "link {k} on A: bound iff both halves are attached, not both quiet"
        );
        assert_eq!(
            b.bound[k], live,
            "link {k} on B: bound iff both halves are attached, not both quiet"
        );
    }
}
