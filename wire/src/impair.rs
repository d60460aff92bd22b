//! Declared impairments on the gRPC wire: what one direction of a wire does to the frames a pod
//! sends — delay with jitter, loss, duplication, reordering, corruption and a rate limit — in
//! userspace, so it needs no `sch_netem` on the node and holds across nodes.
//!
//! Pure, like the rest of the core: the caller passes `now`, pushes each frame read from the pod
//! ([`Impairer::push`]), sends what [`Impairer::pop`] releases, and sleeps until
//! [`Impairer::next_due`]. Two stages:
//!
//! 1. the seeded [`FaultQueue`] (loss, duplication, delay, jitter, reordering), the same one the
//!    deterministic simulation uses;
//! 2. a rate limit as a virtual queue in front of the fault stage: each frame leaves when the
//!    frames before it have been sent at the rate, and a frame that would wait more than
//!    [`RATE_BACKLOG`] (as `tc … tbf latency 50ms`) is dropped, so TCP sees a bottleneck, not a
//!    wall.
//!
//! Every drop is decided when the frame is pushed, so a caller that counts frames as received
//! when they enter can count the dropped ones instead, and `sent = received + dropped` holds.
//!
//! Semantics (documented for users in the README): `delay D, jitter J` delays each frame by a
//! uniform draw from `D−J ..= D+J`; `reorder P` holds P % of the frames back by an extra `D`, so
//! that later frames overtake them; `corrupt P` flips one bit past the Ethernet header of P % of
//! the frames — a frame whose checksum the receiving kernel would complete (checksum offload or a
//! GSO super-frame) cannot carry a detectable error, so it is dropped instead, which is what a
//! receiver's checksum check would have done, and counted as corrupted.
//!
//! Bounded: at most [`MAX_HELD`] frames held, and at most [`RATE_BACKLOG`] of waiting for the
//! rate. Every frame pushed is released, or dropped with a reason ([`ImpairStats`] add up).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fault::{FaultQueue, Faults, Offer};
use crate::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VNET_HDR_LEN};

/// Frames held in the fault stage at most (delayed frames at line rate need room).
pub const MAX_HELD: usize = 16_384;
const ETHERNET_HEADER_LEN: usize = 14;

/// One direction's impairment (the daemon converts the declared one).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    pub delay: Duration,
    /// ± around `delay`.
    pub jitter: Duration,
    /// Percentages, 0..=100.
    pub loss: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    pub reorder: f64,
    /// Bits per second.
    pub rate_bps: Option<u64>,
}

/// Why a frame did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpairDrop {
    /// Lost on purpose (`loss`).
    Loss,
    /// Corrupted where the error could not be carried (see the module doc).
    Corrupt,
    /// Over the rate's backlog.
    Rate,
    /// The fault stage is full.
    Full,
}

/// Counts of what the impairer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpairStats {
    pub pushed: u64,
    pub released: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub lost: u64,
    pub rate_dropped: u64,
    pub full_dropped: u64,
}

/// Longest a frame may wait for the rate before it is dropped.
pub const RATE_BACKLOG: Duration = Duration::from_millis(50);

/// The rate limit: when the link is free again, as a virtual queue.
#[derive(Debug)]
struct Pacer {
    bytes_per_s: f64,
    free_at: Instant,
}

impl Pacer {
    fn new(rate_bps: u64, now: Instant) -> Self {
        #[allow(clippy::cast_precision_loss)] // rates far below 2^52
        let bytes_per_s = rate_bps as f64 / 8.0;
        Pacer {
            bytes_per_s,
            free_at: now,
        }
    }

    /// How long a frame of `len` bytes pushed at `now` waits for the rate, or `None` if that is
    /// more than the backlog allows (the frame is dropped and takes no time).
    fn admit(&mut self, now: Instant, len: usize) -> Option<Duration> {
        let depart = self.free_at.max(now);
        let wait = depart - now;
        if wait > RATE_BACKLOG {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let cost =
            Duration::from_secs_f64(len.saturating_sub(VNET_HDR_LEN) as f64 / self.bytes_per_s);
        self.free_at = depart + cost;
        Some(wait)
    }
}

/// One direction's impairment engine; frames are `[virtio-net header][Ethernet frame]`.
#[derive(Debug)]
pub struct Impairer {
    spec: Impairment,
    faults: FaultQueue<Bytes>,
    pacer: Option<Pacer>,
    rng: StdRng,
    stats: ImpairStats,
}

fn faults_of(i: &Impairment) -> Faults {
    Faults {
        loss: i.loss / 100.0,
        duplicate: i.duplicate / 100.0,
        reorder: i.reorder / 100.0,
        reorder_delay: i.delay,
        // The fault queue adds 0..=jitter: start the window at delay − jitter.
        delay: i.delay.saturating_sub(i.jitter),
        jitter: i.jitter * 2,
    }
}

impl Impairer {
    /// An engine for `spec`, its random decisions drawn from `seed`.
    #[must_use]
    pub fn new(spec: Impairment, seed: u64, now: Instant) -> Self {
        Self {
            spec,
            faults: FaultQueue::new(faults_of(&spec), seed, MAX_HELD),
            pacer: spec.rate_bps.map(|r| Pacer::new(r, now)),
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            stats: ImpairStats::default(),
        }
    }

    #[must_use]
    pub fn spec(&self) -> Impairment {
        self.spec
    }

    /// Changes the impairment in place: frames already held keep their due times.
    pub fn set_spec(&mut self, spec: Impairment, now: Instant) {
        self.faults.set_faults(faults_of(&spec));
        if spec.rate_bps != self.spec.rate_bps {
            self.pacer = spec.rate_bps.map(|r| Pacer::new(r, now));
        }
        self.spec = spec;
    }

    #[must_use]
    pub fn stats(&self) -> ImpairStats {
        self.stats
    }

    /// Frames held.
    #[must_use]
    pub fn held(&self) -> usize {
        self.faults.len()
    }

    /// Takes a frame the pod sent at `now`. `Err` says why it is dropped at once.
    ///
    /// # Errors
    /// The frame is lost, cannot be corrupted visibly, or there is no room.
    pub fn push(&mut self, now: Instant, frame: Bytes) -> Result<(), ImpairDrop> {
        self.stats.pushed += 1;
        let frame = if self.rng.random::<f64>() * 100.0 < self.spec.corrupt {
            self.stats.corrupted += 1;
            match self.corrupted(&frame) {
                Some(f) => f,
                None => return Err(ImpairDrop::Corrupt),
            }
        } else {
            frame
        };
        // The rate first: the frame enters the fault stage when the link has carried the
        // frames before it (a later start of its delay).
        let start = match self.pacer.as_mut() {
            None => now,
            Some(p) => match p.admit(now, frame.len()) {
                Some(wait) => now + wait,
                None => {
                    self.stats.rate_dropped += 1;
                    return Err(ImpairDrop::Rate);
                }
            },
        };
        let before = self.faults.stats();
        match self.faults.push(start, frame) {
            Offer::Queued => {
                self.stats.duplicated += self.faults.stats().duplicated - before.duplicated;
                Ok(())
            }
            Offer::Lost(_) => {
                self.stats.lost += 1;
                Err(ImpairDrop::Loss)
            }
            Offer::Full(_) => {
                self.stats.full_dropped += 1;
                Err(ImpairDrop::Full)
            }
        }
    }

    /// A copy of `frame` with one bit flipped past the Ethernet header, or `None` where the
    /// receiver would complete the checksum after us (offloaded checksum, GSO).
    fn corrupted(&mut self, frame: &Bytes) -> Option<Bytes> {
        let offloaded = frame.len() < VNET_HDR_LEN
            || frame[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
            || frame[1] != VIRTIO_NET_HDR_GSO_NONE;
        let start = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
        if offloaded || frame.len() <= start {
            return None;
        }
        let mut m = BytesMut::from(&frame[..]);
        let bit = self.rng.random_range(0..(m.len() - start) * 8);
        m[start + bit / 8] ^= 1 << (bit % 8);
        Some(m.freeze())
    }

    /// The next frame to send at `now`, if any is due.
    pub fn pop(&mut self, now: Instant) -> Option<Bytes> {
        let f = self.faults.pop(now)?;
        self.stats.released += 1;
        Some(f)
    }

    /// When something is due next (sleep until then); `None`: nothing held.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.faults.next_due()
    }
}

#[cfg(test)]
mod tests;
