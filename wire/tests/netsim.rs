//! Deterministic simulation of the wire's pure core end to end (smoltcp `tests/netsim.rs`).
//!
//! Two node daemons, A and B, share `WIRES` links. Both run the code the daemon runs: a
//! [`Session`] per side (bound to each other by exchanging their control messages), the pump's
//! [`pump::fill_batch`] on A and [`pump::deliver`] on B. On each link a pod on A sends frames
//! into its endpoint; daemon A reads every ready frame straight into a batch (`push_with`),
//! flushes as the [`Batcher`] says, and puts the batch on a lossy/reordering/duplicating
//! "network" of whole batches (a seeded [`FaultQueue`]); daemon B hands each batch that arrives
//! to its session, which looks the wire up and has it written to its endpoint (wrapped in a
//! [`FaultInjector`]); the pod on B reads it. Time is a fake clock advanced 10 µs a step.
//!
//! A second simulation (`restarts_of_one_end_under_saturation_rebind_every_wire`) runs two
//! sessions over a reliable in-order stream with a bounded data queue that A's pods keep full,
//! and restarts B twenty times: every wire must be bound on both ends again within a bound.
//!
//! The run injects every drop reason the receiving side can see — a slow pod (`queue_full`),
//! a link whose carrier goes down for a while (`peer_down`), a wire B forgets mid-run
//! (`unknown_wire`) — and then checks, per wire, that
//! - every frame that arrives is intact (content, length, virtio-net header, Ethernet header);
//! - with no reordering injected, each wire's frames arrive in the order they were sent;
//! - nothing is lost uncounted: `sent = received + drops counted by B + frames lost by the
//!   injector + frames in batches the network lost − frames of duplicated batches`, where
//!   the last three are counted by the simulation's oracle (no daemon can see them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use meshnet_wire::WireId;
use meshnet_wire::batch::{BatchEncoder, MAX_FRAME, decode};
use meshnet_wire::batching::{BatchLimits, Batcher, FlushCause};
use meshnet_wire::endpoint::{FaultInjector, FrameEndpoint, MemoryEndpoint, MemoryPair};
use meshnet_wire::fault::{FaultQueue, Faults, Offer};
use meshnet_wire::session::{Message, Session};
use meshnet_wire::table::{DropReason, WireCounters, WireKey};
use meshnet_wire::tally;
use meshnet_wire::transport::pump;
use meshnet_wire::vnet::{
    EthernetFrame, MacAddr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN,
    VNET_HDR_NONE, VnetBytes, VnetHdr,
};

const WIRES: usize = 6;
const STEP: Duration = Duration::from_micros(10);
const ETHERTYPE_SIM: u16 = 0x88b5;
/// Ethernet header + wire (4) + seq (8) + len (4).
const TAG_END: usize = 14 + 16;
const LIMITS: BatchLimits = BatchLimits {
    max_bytes: 128 << 10,
    max_frames: 8,
};

/// Wire 1's pod on B is slow; wire 2's carrier goes down; wire 3 is forgotten by B; wire 0's
/// endpoint on B is faulty.
const SLOW: usize = 1;
const FLAPPING: usize = 2;
const FORGOTTEN: usize = 3;
const FAULTY: usize = 0;

#[derive(Debug, Clone, Copy)]
struct Scenario {
    seed: u64,
    steps: usize,
    network: Faults,
    /// Faults of wire 0's endpoint on B (no duplication: the oracle does not count it).
    endpoint: Faults,
    /// Turn on the slow pod, the carrier flap and the forgotten wire.
    trouble: bool,
}

/// What the oracle knows about one wire.
#[derive(Debug, Default)]
struct Ledger {
    sent: u64,
    sent_bytes: u64,
    /// Frames decoded by B (whether or not B knew the wire).
    arrived: u64,
    lost_in_network: u64,
    duplicated_by_network: u64,
    stray: u64,
    /// Sequence numbers as the pod on B read them.
    received: Vec<u64>,
}

struct Wire {
    id: WireId,
    pod_a: MemoryEndpoint,
    daemon_a: MemoryEndpoint,
    daemon_b: FaultInjector<MemoryEndpoint>,
    pod_b: MemoryEndpoint,
    /// The pod's qdisc on A: frames its endpoint refused for now (back-pressure, not loss).
    qdisc: VecDeque<(VnetBytes, Vec<u8>)>,
    next_seq: u64,
    counters_a: Arc<WireCounters>,
    counters_b: Arc<WireCounters>,
    ledger: Ledger,
}

/// The frame pod A sends as `seq` on wire `w`: an Ethernet header, a tag, then a pattern.
fn make_frame(w: usize, seq: u64, len: usize) -> (VnetBytes, Vec<u8>) {
    let mut f = vec![0u8; len];
    let mut eth = EthernetFrame::new_checked(&mut f[..]).unwrap();
    eth.set_dst_addr(MacAddr([2, 0, 0, 0, 0, w as u8]));
    eth.set_src_addr(MacAddr([2, 0, 0, 0, 1, w as u8]));
    eth.set_ethertype(ETHERTYPE_SIM);
    f[14..18].copy_from_slice(&(w as u32).to_le_bytes());
    f[18..26].copy_from_slice(&seq.to_le_bytes());
    f[26..30].copy_from_slice(&(len as u32).to_le_bytes());
    for (i, b) in f[TAG_END..].iter_mut().enumerate() {
        *b = pattern(w, seq, i);
    }
    (expected_vnet(w, seq, len), f)
}

fn pattern(w: usize, seq: u64, i: usize) -> u8 {
    (i as u8).wrapping_mul(7) ^ (seq as u8) ^ (w as u8)
}

fn expected_vnet(w: usize, seq: u64, len: usize) -> VnetBytes {
    let mut h = VnetHdr::new_unchecked(VNET_HDR_NONE);
    if len > 9014 {
        h.set_gso_type(VIRTIO_NET_HDR_GSO_TCPV4);
        h.set_gso_size(1448);
        h.set_hdr_len(66);
    }
    // Checksum offload only where the TCP checksum field (34 + 16) lies inside the frame.
    if (seq + w as u64).is_multiple_of(2) && len >= 34 + 16 + 2 {
        h.set_flags(VIRTIO_NET_HDR_F_NEEDS_CSUM);
        h.set_csum_start(34);
        h.set_csum_offset(16);
    }
    h.into_inner()
}

/// Reads the tag of a frame: (wire index, seq).
fn tag_of(frame: &[u8]) -> (usize, u64) {
    let w = u32::from_le_bytes(frame[14..18].try_into().unwrap()) as usize;
    let seq = u64::from_le_bytes(frame[18..26].try_into().unwrap());
    (w, seq)
}

/// Checks that what pod B read is exactly what pod A sent as that (wire, seq).
fn check_intact(expect_wire: usize, vnet: &VnetBytes, frame: &[u8]) -> u64 {
    let eth = EthernetFrame::new_checked(frame).expect("Ethernet header");
    assert_eq!(eth.ethertype(), ETHERTYPE_SIM);
    assert_eq!(eth.src_addr(), MacAddr([2, 0, 0, 0, 1, expect_wire as u8]));
    assert_eq!(eth.dst_addr(), MacAddr([2, 0, 0, 0, 0, expect_wire as u8]));
    let (w, seq) = tag_of(frame);
    assert_eq!(
        w, expect_wire,
        "frame of wire {w} came out of wire {expect_wire}"
    );
    let len = u32::from_le_bytes(frame[26..30].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len(), "wire {w} seq {seq}: length");
    assert_eq!(
        *vnet,
        expected_vnet(w, seq, len),
        "wire {w} seq {seq}: vnet"
    );
    VnetHdr::new_checked(&vnet[..])
        .unwrap()
        .check_frame(len)
        .unwrap();
    for (i, &b) in frame[TAG_END..].iter().enumerate() {
        assert_eq!(b, pattern(w, seq, i), "wire {w} seq {seq}: byte {i}");
    }
    seq
}

fn frame_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..30 => 60,
        30..70 => 1514,
        70..95 => rng.random_range(TAG_END..=9014),
        _ => rng.random_range(60_000..=MAX_FRAME),
    }
}

struct Sim {
    sc: Scenario,
    rng: StdRng,
    t0: Instant,
    wires: Vec<Wire>,
    /// B's session; its handles are wire indices.
    session_b: Session<usize>,
    encoder: BatchEncoder,
    batcher: Batcher,
    network: FaultQueue<(u64, Bytes)>,
    next_batch: u64,
    seen_batches: HashSet<u64>,
    flushes: [u64; 3],
}

impl Sim {
    fn new(sc: Scenario) -> Self {
        let t0 = Instant::now();
        let mut session_a = Session::<usize>::new(64);
        let mut session_b = Session::<usize>::new(64);
        let mut counters = Vec::new();
        for w in 0..WIRES {
            let key = WireKey::new("sim", 100 + w as i64);
            let (ca, cb) = (
                Arc::new(WireCounters::default()),
                Arc::new(WireCounters::default()),
            );
            session_a
                .attach(key.clone(), w, ca.clone(), |_| {})
                .unwrap();
            session_b.attach(key, w, cb.clone(), |_| {}).unwrap();
            counters.push((ca, cb));
        }
        bind_back_to_back(&mut session_a, &mut session_b, t0);
        let wires = (0..WIRES)
            .map(|w| {
                let key = WireKey::new("sim", 100 + w as i64);
                let (counters_a, counters_b) = counters[w].clone();
                let id = session_a.data_id(&key).expect("bound");
                let MemoryPair {
                    a: pod_a,
                    b: daemon_a,
                } = MemoryPair::new(64, 1500);
                let MemoryPair {
                    a: daemon_b,
                    b: pod_b,
                } = MemoryPair::new(16, 1500);
                let faults = if w == FAULTY {
                    sc.endpoint
                } else {
                    Faults::NONE
                };
                Wire {
                    id,
                    pod_a,
                    daemon_a,
                    daemon_b: FaultInjector::new(daemon_b, faults, sc.seed ^ w as u64, 8, t0),
                    pod_b,
                    qdisc: VecDeque::new(),
                    next_seq: 0,
                    counters_a,
                    counters_b,
                    ledger: Ledger::default(),
                }
            })
            .collect();
        Self {
            sc,
            rng: StdRng::seed_from_u64(sc.seed),
            t0,
            wires,
            session_b,
            encoder: BatchEncoder::new(LIMITS.max_bytes),
            batcher: Batcher::new(LIMITS),
            network: FaultQueue::new(sc.network, sc.seed.wrapping_mul(31), 100_000),
            next_batch: 0,
            seen_batches: HashSet::new(),
            flushes: [0; 3],
        }
    }

    fn now(&self, step: usize) -> Instant {
        self.t0 + STEP * step as u32
    }

    fn run(mut self) -> Self {
        for step in 0..self.sc.steps {
            self.events(step);
            self.pods_a_send(true);
            self.step(step);
        }
        // Drain: no new frames; run until everything in flight has landed.
        let mut step = self.sc.steps;
        while !self.quiet() {
            self.pods_a_send(false);
            self.step(step);
            step += 1;
            assert!(
                step < self.sc.steps + 100_000,
                "the simulation does not drain"
            );
        }
        self
    }

    fn step(&mut self, step: usize) {
        let now = self.now(step);
        self.daemon_a(now);
        self.daemon_b(now);
        self.pods_b_read();
    }

    fn quiet(&self) -> bool {
        self.network.is_empty()
            && self.encoder.is_empty()
            && self
                .wires
                .iter()
                .all(|w| w.qdisc.is_empty() && w.daemon_b.in_flight() == 0)
            && self.wires.iter().all(|w| {
                // Both in-memory links are empty when the counters say all was read.
                w.ledger.sent == w.counters_a.snapshot().tx_frames
            })
            && self.pods_b_idle()
    }

    fn pods_b_idle(&self) -> bool {
        self.wires.iter().all(|w| {
            let s = w.counters_b.snapshot();
            let injected_lost = w.daemon_b.stats().lost;
            s.rx_frames - injected_lost == w.ledger.received.len() as u64
        })
    }

    fn events(&mut self, step: usize) {
        if !self.sc.trouble {
            return;
        }
        let steps = self.sc.steps;
        if step == steps / 4 {
            self.wires[FLAPPING].daemon_b.set_carrier(false).unwrap();
        }
        if step == steps / 3 {
            self.wires[FLAPPING].daemon_b.set_carrier(true).unwrap();
        }
        if step == steps / 2 {
            // B's half goes away; its Unbind is not delivered to A in this simulation, so A
            // keeps sending and B counts the frames as stray.
            let key = WireKey::new("sim", 100 + FORGOTTEN as i64);
            assert!(self.session_b.detach(&key, |_| {}).is_some());
        }
    }

    /// Pods on A: each wire makes 0–2 frames a step (the slow wire bursts now and then), and its
    /// qdisc feeds them to the endpoint until it pushes back.
    fn pods_a_send(&mut self, generate: bool) {
        for w in 0..WIRES {
            if generate {
                let n = if w == SLOW && self.sc.trouble && self.rng.random_bool(0.02) {
                    40
                } else {
                    self.rng.random_range(0..=2)
                };
                for _ in 0..n {
                    let len = frame_len(&mut self.rng);
                    let wire = &mut self.wires[w];
                    let frame = make_frame(w, wire.next_seq, len);
                    wire.next_seq += 1;
                    wire.qdisc.push_back(frame);
                }
            }
            let wire = &mut self.wires[w];
            while let Some((vnet, frame)) = wire.qdisc.front() {
                match wire.pod_a.send(vnet, frame) {
                    Ok(()) => {
                        wire.ledger.sent += 1;
                        wire.ledger.sent_bytes += frame.len() as u64;
                        wire.qdisc.pop_front();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("pod A send: {e}"),
                }
            }
        }
    }

    /// Daemon A: over the wires in turn, each read with the pump's `fill_batch` (until nothing
    /// is ready or the batch is full) into the shared batch; flush at a bound, and when a whole
    /// pass found nothing ready.
    fn daemon_a(&mut self, now: Instant) {
        loop {
            let mut read = 0;
            for w in 0..WIRES {
                loop {
                    let wire = &mut self.wires[w];
                    let r = pump::fill_batch(
                        &mut self.encoder,
                        &mut self.batcher,
                        wire.id,
                        &wire.counters_a,
                        |buf| wire.daemon_a.recv(buf),
                    );
                    wire.counters_a.add_tx(r.frames, r.bytes);
                    read += r.frames;
                    match r.full {
                        Some(cause) => self.flush(now, cause),
                        None => break,
                    }
                }
            }
            if read == 0 {
                break;
            }
        }
        if let Some(cause) = self.batcher.idle() {
            self.flush(now, cause);
        }
    }

    fn flush(&mut self, now: Instant, cause: FlushCause) {
        let summary = self.batcher.flushed();
        assert_eq!(summary.frames, self.encoder.frames());
        assert_eq!(summary.bytes, self.encoder.len());
        assert!(summary.frames <= LIMITS.max_frames);
        let batch = self.encoder.finish();
        assert!(batch.len() <= LIMITS.max_bytes, "{} bytes", batch.len());
        self.flushes[cause as usize] += 1;
        self.next_batch += 1;
        match self.network.push(now, (self.next_batch, batch)) {
            Offer::Queued => {}
            Offer::Lost((_, lost)) => {
                for f in decode(lost) {
                    let (w, _) = tag_of(&f.unwrap().data);
                    self.wires[w].ledger.lost_in_network += 1;
                }
            }
            Offer::Full(_) => panic!("network capacity is sized never to fill"),
        }
    }

    /// Daemon B: hand what the network delivers to the session (the pump's `deliver`), which
    /// writes each frame to its wire's endpoint and counts every frame it cannot deliver.
    fn daemon_b(&mut self, now: Instant) {
        while let Some((batch_id, batch)) = self.network.pop(now) {
            let duplicate = !self.seen_batches.insert(batch_id);
            // The oracle's view of the batch (who sent what), before B sees it.
            let mut arrived = Vec::new();
            for f in decode(batch.clone()) {
                let f = f.expect("the network corrupts nothing");
                let (w, _) = tag_of(&f.data);
                arrived.push(w);
                let ledger = &mut self.wires[w].ledger;
                ledger.arrived += 1;
                if duplicate {
                    ledger.duplicated_by_network += 1;
                }
            }
            let wires = &mut self.wires;
            let mut delivered = Vec::new();
            let r = pump::deliver(&mut self.session_b, batch, now, |&idx, vnet, frame| {
                let (w, _) = tag_of(frame);
                assert_eq!(idx, w, "B mapped a frame to the wrong wire");
                delivered.push(w);
                wires[idx].daemon_b.send(vnet, frame)
            });
            assert!(!r.malformed);
            // What B did not deliver to a wire is stray; the order of records is kept.
            let mut d = delivered.into_iter().peekable();
            for w in arrived {
                if d.peek() == Some(&w) {
                    d.next();
                } else {
                    self.wires[w].ledger.stray += 1;
                }
            }
        }
        for wire in &mut self.wires {
            wire.daemon_b
                .poll(now)
                .expect("delayed frames are delivered");
        }
    }

    /// Pods on B read what arrived; the slow one reads one frame a step.
    fn pods_b_read(&mut self) {
        for (w, wire) in self.wires.iter_mut().enumerate() {
            let budget = if w == SLOW && self.sc.trouble {
                1
            } else {
                usize::MAX
            };
            let mut buf = BytesMut::new();
            for _ in 0..budget {
                buf.clear();
                let Some(len) = wire.pod_b.recv(&mut buf).unwrap() else {
                    break;
                };
                let (vnet, frame) = buf.split_at(VNET_HDR_LEN);
                assert_eq!(frame.len(), len);
                let seq = check_intact(w, vnet.try_into().unwrap(), frame);
                wire.ledger.received.push(seq);
            }
        }
    }

    /// The accounting identity, per wire and for the stray counter.
    fn check_ledgers(&self) {
        let mut stray = 0;
        for (w, wire) in self.wires.iter().enumerate() {
            let l = &wire.ledger;
            let a = wire.counters_a.snapshot();
            let b = wire.counters_b.snapshot();
            let injected = wire.daemon_b.stats();
            assert_eq!(injected.duplicated, 0);
            assert_eq!(wire.next_seq, l.sent, "wire {w}: qdisc drained");
            assert_eq!(a.tx_frames, l.sent, "wire {w}: A read all it was sent");
            assert_eq!(a.tx_bytes, l.sent_bytes, "wire {w}: tx bytes");
            assert_eq!(a.drops_total(), 0, "wire {w}: A dropped nothing");
            assert_eq!(
                l.arrived,
                a.tx_frames - l.lost_in_network + l.duplicated_by_network,
                "wire {w}: network accounting"
            );
            assert_eq!(
                l.arrived,
                b.rx_frames + b.drops_total() + l.stray,
                "wire {w}: B accounted for every arrival"
            );
            assert_eq!(
                l.received.len() as u64,
                b.rx_frames - injected.lost,
                "wire {w}: endpoint accounting"
            );
            assert_eq!(
                l.sent + l.duplicated_by_network,
                l.received.len() as u64
                    + b.drops_total()
                    + l.stray
                    + injected.lost
                    + l.lost_in_network,
                "wire {w}: sent = received + counted drops"
            );
            stray += l.stray;
        }
        assert_eq!(
            self.session_b
                .stray()
                .snapshot()
                .drops(DropReason::UnknownWire),
            stray
        );
    }

    fn check_order(&self) {
        for (w, wire) in self.wires.iter().enumerate() {
            assert!(
                wire.ledger.received.windows(2).all(|p| p[0] < p[1]),
                "wire {w}: frames out of order"
            );
        }
    }

    fn drops(&self, w: usize, reason: DropReason) -> u64 {
        self.wires[w].counters_b.snapshot().drops(reason)
    }
}

#[test]
fn lossless_network_delivers_everything_in_order() {
    let sim = Sim::new(Scenario {
        seed: 1,
        steps: 2000,
        network: Faults {
            delay: Duration::from_micros(50),
            ..Faults::NONE
        },
        endpoint: Faults::NONE,
        trouble: false,
    })
    .run();
    sim.check_ledgers();
    sim.check_order();
    for (w, wire) in sim.wires.iter().enumerate() {
        assert!(wire.ledger.sent > 500, "wire {w} carried traffic");
        assert_eq!(
            wire.ledger.received,
            (0..wire.ledger.sent).collect::<Vec<_>>(),
            "wire {w}: everything, once, in order"
        );
        assert_eq!(wire.counters_b.snapshot().drops_total(), 0);
    }
    // Every flush cause happened: idle at low load, bounds under GSO-sized bursts.
    assert!(sim.flushes.iter().all(|&n| n > 0), "{:?}", sim.flushes);
}

#[test]
fn lossy_network_and_trouble_keep_order_and_count_every_drop() {
    for seed in 1..=4 {
        let sim = Sim::new(Scenario {
            seed,
            steps: 2000,
            network: Faults {
                loss: 0.05,
                delay: Duration::from_micros(30),
                ..Faults::NONE
            },
            endpoint: Faults {
                loss: 0.1,
                delay: Duration::from_micros(20),
                ..Faults::NONE
            },
            trouble: true,
        })
        .run();
        sim.check_ledgers();
        sim.check_order();
        // The run exercised what it claims to.
        assert!(sim.drops(SLOW, DropReason::QueueFull) > 0, "seed {seed}");
        assert!(sim.drops(FLAPPING, DropReason::PeerDown) > 0, "seed {seed}");
        assert!(sim.wires[FORGOTTEN].ledger.stray > 0, "seed {seed}");
        assert!(sim.wires[FAULTY].daemon_b.stats().lost > 0, "seed {seed}");
        assert!(sim.wires.iter().any(|w| w.ledger.lost_in_network > 0));
    }
}

#[test]
fn reordering_duplicating_network_loses_nothing_uncounted() {
    for seed in 10..=13 {
        let sim = Sim::new(Scenario {
            seed,
            steps: 2000,
            network: Faults {
                loss: 0.05,
                duplicate: 0.05,
                reorder: 0.2,
                reorder_delay: Duration::from_micros(40),
                delay: Duration::from_micros(10),
                jitter: Duration::from_micros(30),
            },
            endpoint: Faults {
                loss: 0.05,
                reorder: 0.3,
                reorder_delay: Duration::from_micros(25),
                ..Faults::NONE
            },
            trouble: true,
        })
        .run();
        sim.check_ledgers();
        assert!(sim.wires.iter().any(|w| w.ledger.duplicated_by_network > 0));
        assert!(
            sim.wires
                .iter()
                .any(|w| w.ledger.received.windows(2).any(|p| p[0] > p[1])),
            "seed {seed}: reordering was injected"
        );
        // With duplication, a seq may arrive twice, never a seq that was not sent.
        for wire in &sim.wires {
            assert!(wire.ledger.received.iter().all(|&s| s < wire.ledger.sent));
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let sc = Scenario {
        seed: 99,
        steps: 500,
        network: Faults {
            loss: 0.1,
            reorder: 0.1,
            reorder_delay: Duration::from_micros(20),
            ..Faults::NONE
        },
        endpoint: Faults::NONE,
        trouble: true,
    };
    let a = Sim::new(sc).run();
    let b = Sim::new(sc).run();
    for (x, y) in a.wires.iter().zip(&b.wires) {
        assert_eq!(x.ledger.received, y.ledger.received);
        assert_eq!(x.counters_b.snapshot(), y.counters_b.snapshot());
    }
    assert_eq!(a.flushes, b.flushes);
}

/// Exchanges the two sessions' control until both are quiet (a reliable, in-order stream).
fn bind_back_to_back(a: &mut Session<usize>, b: &mut Session<usize>, now: Instant) {
    a.connected(now);
    b.connected(now);
    for _ in 0..10 {
        let (mut moved, mut sent) = (false, Vec::new());
        while let Some(c) = a.poll_transmit() {
            sent.push(c);
        }
        for c in sent.drain(..) {
            moved = true;
            b.handle(Message::Control(c), now, |_| Ok(()));
        }
        while let Some(c) = b.poll_transmit() {
            sent.push(c);
        }
        for c in sent.drain(..) {
            moved = true;
            a.handle(Message::Control(c), now, |_| Ok(()));
        }
        if !moved {
            return;
        }
    }
    panic!("control did not settle");
}

/// One direction of a stream: the order the transport sends in (the session's control first,
/// then data from a bounded queue), carried reliably and in order, `per_step` messages a step.
struct Direction {
    data: VecDeque<Bytes>,
    capacity: usize,
    in_flight: VecDeque<Message>,
}

impl Direction {
    fn new(capacity: usize) -> Self {
        Self {
            data: VecDeque::new(),
            capacity,
            in_flight: VecDeque::new(),
        }
    }

    /// What the outbound stream would send now: control first (`poll_transmit`), then data.
    fn transmit(&mut self, from: &mut Session<usize>, per_step: usize) {
        for _ in 0..per_step {
            if let Some(c) = from.poll_transmit() {
                self.in_flight.push_back(Message::Control(c));
            } else if let Some(b) = self.data.pop_front() {
                self.in_flight.push_back(Message::Batch(b));
            } else {
                break;
            }
        }
    }
}

/// One side of the restart simulation: a session and the bound state of its halves.
struct End {
    session: Session<usize>,
    bound: Vec<bool>,
    received: Vec<u64>,
}

impl End {
    fn new(wires: usize, now: Instant) -> Self {
        let mut e = End {
            session: Session::new(64),
            bound: vec![false; wires],
            received: vec![0; wires],
        };
        for w in 0..wires {
            e.session
                .attach(WireKey::new("sim", w as i64), w, Arc::default(), |_| {})
                .unwrap();
        }
        let _ = now;
        e
    }

    fn receive(&mut self, m: Message, now: Instant) {
        let (bound, received) = (&mut self.bound, &mut self.received);
        match m {
            Message::Batch(b) => {
                pump::deliver(&mut self.session, b, now, |&w, _, _| {
                    received[w] += 1;
                    Ok(())
                });
            }
            control => self.session.handle(control, now, |e| {
                match e {
                    meshnet_wire::session::Event::Bound(&w) => bound[w] = true,
                    meshnet_wire::session::Event::Unbound(&w) => bound[w] = false,
                    _ => {}
                }
                Ok(())
            }),
        }
    }

    fn disconnected(&mut self) {
        let bound = &mut self.bound;
        self.session.disconnected(|e| {
            if let meshnet_wire::session::Event::Unbound(&w) = e {
                bound[w] = false;
            }
        });
    }
}

/// A's pods saturate every wire: each step, A's pump fills batches for the bound wires in turn
/// (as its readers contend for the queue) until the data queue is full (the back-pressure).
/// Returns frames read.
fn saturate(
    a: &End,
    toward_b: &mut Direction,
    endpoints: &mut [MemoryPair],
    enc: &mut BatchEncoder,
    turn: &mut usize,
) -> u64 {
    let mut read = 0;
    for (w, pair) in endpoints.iter_mut().enumerate() {
        // The pod keeps its endpoint full.
        let (vnet, frame) = make_frame(w, 0, 60);
        while pair.a.send(&vnet, &frame).is_ok() {}
    }
    let n = endpoints.len();
    let mut idle = 0;
    while toward_b.data.len() < toward_b.capacity && idle < n {
        let w = *turn % n;
        *turn += 1;
        let Some(id) = a.session.data_id(&WireKey::new("sim", w as i64)) else {
            idle += 1;
            continue;
        };
        let mut batcher = Batcher::new(LIMITS);
        let counters = WireCounters::default();
        let pair = &mut endpoints[w];
        let r = pump::fill_batch(enc, &mut batcher, id, &counters, |buf| pair.b.recv(buf));
        read += r.frames;
        if r.frames == 0 {
            idle += 1;
            continue;
        }
        idle = 0;
        toward_b.data.push_back(enc.finish());
    }
    read
}

#[test]
fn restarts_of_one_end_under_saturation_rebind_every_wire() {
    const N: usize = 8;
    /// Messages each direction carries per step: far fewer than A's pods offer.
    const PER_STEP: usize = 3;
    /// Steps allowed from a reconnect until every wire is bound on both ends and carries data.
    const BOUND: usize = 20;
    let step = Duration::from_millis(1);
    let t0 = Instant::now();
    let mut now = t0;
    let mut endpoints: Vec<MemoryPair> = (0..N).map(|_| MemoryPair::new(64, 1500)).collect();
    let mut enc = BatchEncoder::new(LIMITS.max_bytes);
    let mut a = End::new(N, now);
    let mut b = End::new(N, now);
    let (mut ab, mut ba) = (Direction::new(4), Direction::new(4));
    a.session.connected(now);
    b.session.connected(now);
    let mut worst = 0;
    let mut turn = 0;
    for restart in 0..=20 {
        // Run until all is bound and every wire carried data since the (re)connect.
        let received_before = b.received.clone();
        let mut steps = 0;
        loop {
            saturate(&a, &mut ab, &mut endpoints, &mut enc, &mut turn);
            ab.transmit(&mut a.session, PER_STEP);
            ba.transmit(&mut b.session, PER_STEP);
            while let Some(m) = ab.in_flight.pop_front() {
                b.receive(m, now);
            }
            while let Some(m) = ba.in_flight.pop_front() {
                a.receive(m, now);
            }
            a.session.tick(now);
            b.session.tick(now);
            now += step;
            steps += 1;
            let all_up = a.bound.iter().all(|&x| x) && b.bound.iter().all(|&x| x);
            let all_flow = (0..N).all(|w| b.received[w] > received_before[w]);
            if all_up && all_flow {
                break;
            }
            assert!(
                steps <= BOUND,
                "restart {restart}: after {steps} steps A bound {:?}, B bound {:?}, data queue {}",
                a.bound,
                b.bound,
                ab.data.len()
            );
        }
        worst = worst.max(steps);
        saturate(&a, &mut ab, &mut endpoints, &mut enc, &mut turn);
        assert_eq!(ab.data.len(), ab.capacity, "the data queue stays saturated");
        // Keep it saturated for a while, then B restarts: its stream ends (A unbinds), a new B
        // with new ids attaches its halves and the stream comes back. What was in flight or
        // queued toward the old B is lost with the connection.
        for _ in 0..5 {
            saturate(&a, &mut ab, &mut endpoints, &mut enc, &mut turn);
            ab.transmit(&mut a.session, PER_STEP);
            while let Some(m) = ab.in_flight.pop_front() {
                b.receive(m, now);
            }
            now += step;
        }
        a.disconnected();
        assert!(a.bound.iter().all(|&x| !x), "the stream's end unbinds");
        ab = Direction::new(4);
        ba = Direction::new(4);
        b = End::new(N, now);
        a.session.connected(now);
        b.session.connected(now);
        // The data A read before the restart still waits in A's queue after it (a real
        // reader awaiting the bounded queue): fill it now so the Binds compete with it.
        let stale = saturate(&a, &mut ab, &mut endpoints, &mut enc, &mut turn);
        assert_eq!(stale, 0, "no data for unbound wires");
    }
    assert!(worst <= BOUND);
}

/// What travels on one direction of a stream in [`killed_streams_run`].
enum Item {
    Control(meshnet_wire::session::Control),
    Tally(tally::Tally),
    /// One message of batches (queued batches combined: several wires in one).
    Data(Bytes),
}

/// Streams killed mid-flight (issue 12): A saturates five wires toward B over a stream that is
/// killed thirty times with messages still in flight (lost with the connection), while A's data
/// queue survives into the next stream, as the transport's does. Each stream is accounted as
/// the transport does it: A counts what it hands to the stream ([`tally::Sent`]), B what it
/// takes off it (the session's arrivals, then [`tally::Ledger`]), and the tallies of A's ended
/// streams go first on every new one ([`tally::Reports`]). B's pod refuses some frames
/// (`queue_full`) and B's half of wire 0 is removed and re-added between some streams. Then,
/// per wire, exactly: `sent = received + queue_full + stream_lost`, and `stream_lost` is what
/// the oracle saw die in flight.
fn killed_streams_run(seed: u64) -> u64 {
    const N: usize = 5;
    const STREAMS: u64 = 30;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut now = Instant::now();
    let keys: Vec<WireKey> = (0..N).map(|w| WireKey::new("sim", w as i64)).collect();
    let ca: Vec<Arc<WireCounters>> = (0..N).map(|_| Arc::default()).collect();
    let cb: Vec<Arc<WireCounters>> = (0..N).map(|_| Arc::default()).collect();
    let mut a = Session::<usize>::new(64);
    let mut b = Session::<usize>::new(64);
    for w in 0..N {
        a.attach(keys[w].clone(), w, Arc::clone(&ca[w]), |_| {})
            .unwrap();
        b.attach(keys[w].clone(), w, Arc::clone(&cb[w]), |_| {})
            .unwrap();
    }
    let wire_of = |a: &Session<usize>, id: WireId| {
        (0..N)
            .find(|&w| a.out_id(&WireKey::new("sim", w as i64)) == Some(id))
            .expect("A's ids are stable")
    };
    let mut endpoints: Vec<MemoryPair> = (0..N).map(|_| MemoryPair::new(64, 1500)).collect();
    let mut enc = BatchEncoder::new(LIMITS.max_bytes);
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    let mut reports = tally::Reports::default();
    let mut ledger = tally::Ledger::default();
    let mut lost = [0u64; N];
    for stream in 1..=STREAMS + 1 {
        let last = stream > STREAMS;
        if stream % 4 == 0 {
            // B's half re-registered while the stream is down (same link, same counters).
            b.detach(&keys[0], |_| {});
            b.attach(keys[0].clone(), 0, Arc::clone(&cb[0]), |_| {})
                .unwrap();
        }
        a.connected(now);
        b.connected(now);
        let mut sent = tally::Sent::default();
        let mut flight: VecDeque<Item> = reports.tallies().into_iter().map(Item::Tally).collect();
        let steps = rng.random_range(30..80);
        let mut step = 0;
        loop {
            step += 1;
            let mut read_any = false;
            // A's pods send; A's readers fill batches for bound wires into the bounded queue.
            for (w, pair) in endpoints.iter_mut().enumerate() {
                if !last || step < steps {
                    for _ in 0..rng.random_range(0..6) {
                        let (vnet, frame) = make_frame(w, 0, rng.random_range(60..1514));
                        let _ = pair.a.send(&vnet, &frame);
                    }
                }
                let Some(id) = a.data_id(&keys[w]) else {
                    continue;
                };
                if queue.len() >= 8 {
                    continue;
                }
                let mut batcher = Batcher::new(LIMITS);
                let r =
                    pump::fill_batch(&mut enc, &mut batcher, id, &ca[w], |buf| pair.b.recv(buf));
                if r.frames > 0 {
                    read_any = true;
                    ca[w].add_tx(r.frames, r.bytes);
                    queue.push_back(enc.finish());
                }
            }
            // A's outbound: control first, then up to three queued batches in one message.
            for _ in 0..3 {
                if let Some(c) = a.poll_transmit() {
                    flight.push_back(Item::Control(c));
                    continue;
                }
                let mut msg = Vec::new();
                for _ in 0..rng.random_range(1..=3) {
                    match queue.pop_front() {
                        Some(b) => msg.extend_from_slice(&b),
                        None => break,
                    }
                }
                if msg.is_empty() {
                    break;
                }
                sent.count_batch(&msg);
                flight.push_back(Item::Data(Bytes::from(msg)));
            }
            // B takes a few messages off the stream; its pod refuses one frame in ten.
            for _ in 0..rng.random_range(1..=4) {
                match flight.pop_front() {
                    Some(Item::Control(c)) => b.handle(Message::Control(c), now, |_| Ok(())),
                    Some(Item::Tally(t)) => {
                        ledger.settle(t);
                    }
                    Some(Item::Data(d)) => {
                        pump::deliver(&mut b, d, now, |_, _, _| {
                            if rng.random_range(0..10) == 0 {
                                Err(io::Error::from(io::ErrorKind::WouldBlock))
                            } else {
                                Ok(())
                            }
                        });
                    }
                    None => break,
                }
            }
            while let Some(c) = b.poll_transmit() {
                a.handle(Message::Control(c), now, |_| Ok(()));
            }
            a.tick(now);
            b.tick(now);
            now += Duration::from_millis(1);
            let drained = flight.is_empty() && queue.is_empty() && !read_any;
            if last && step >= steps && drained {
                break;
            }
            if !last && step >= steps {
                break;
            }
            assert!(
                step < 100_000,
                "seed {seed}: the last stream does not drain"
            );
        }
        if last {
            break;
        }
        // The kill: whatever is in flight is gone with the connection.
        for item in flight.drain(..) {
            if let Item::Data(d) = item {
                for f in decode(d) {
                    lost[wire_of(&a, f.unwrap().wire)] += 1;
                }
            }
        }
        reports.finish(stream, std::mem::take(&mut sent));
        ledger.finish(stream, b.take_arrivals());
        a.disconnected(|_| {});
        b.disconnected(|_| {});
    }
    for w in 0..N {
        let (sa, sb) = (ca[w].snapshot(), cb[w].snapshot());
        let stream_lost = sb.drops(DropReason::StreamLost);
        assert_eq!(stream_lost, lost[w], "seed {seed} wire {w}: stream_lost");
        assert_eq!(
            sa.tx_frames,
            sb.rx_frames + sb.drops(DropReason::QueueFull) + stream_lost,
            "seed {seed} wire {w}: sent = received + dropped ({sb:?})"
        );
        assert_eq!(
            sb.drops_total(),
            sb.drops(DropReason::QueueFull) + stream_lost
        );
    }
    lost.iter().sum()
}

#[test]
fn streams_killed_mid_flight_balance_every_wire_exactly() {
    let mut lost = 0;
    for seed in 0..6 {
        lost += killed_streams_run(seed);
    }
    assert!(lost > 100, "the kills lost frames in flight ({lost})");
}
