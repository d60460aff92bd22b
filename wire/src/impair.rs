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
//! 2. a token bucket for the rate, with a bounded backlog (50 ms at the rate, as `tc … tbf
//!    latency 50ms`): a frame that does not fit is dropped, so TCP sees a bottleneck, not a wall.
//!
//! Semantics (documented for users in the README): `delay D, jitter J` delays each frame by a
//! uniform draw from `D−J ..= D+J`; `reorder P` holds P % of the frames back by an extra `D`, so
//! that later frames overtake them; `corrupt P` flips one bit past the Ethernet header of P % of
//! the frames — a frame whose checksum the receiving kernel would complete (checksum offload or a
//! GSO super-frame) cannot carry a detectable error, so it is dropped instead, which is what a
//! receiver's checksum check would have done, and counted as corrupted.
//!
//! Bounded: at most [`MAX_HELD`] frames in the fault stage and the rate backlog's bytes. Every
//! frame pushed is released, or dropped with a reason ([`ImpairStats`] add up).

use std::collections::VecDeque;
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

/// Token bucket: bytes per second, burst in bytes.
#[derive(Debug)]
struct Bucket {
    bytes_per_s: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    backlog_limit: usize,
}

impl Bucket {
    fn new(rate_bps: u64, now: Instant) -> Self {
        #[allow(clippy::cast_precision_loss)] // rates far below 2^52
        let bytes_per_s = rate_bps as f64 / 8.0;
        // As the kernel engine (daemon::qdisc::tbf_sizes): 4 ms of burst, at least two jumbo
        // frames' worth (a GSO super-frame can be 64 KiB: it is let through once the bucket
        // has that much, so the average holds); 50 ms of backlog.
        let burst = (bytes_per_s / 250.0).max(2.0 * 9018.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let backlog_limit = ((bytes_per_s / 20.0) as usize).max(65_536 + 2 * 9018);
        Self {
            bytes_per_s,
            burst,
            tokens: burst,
            at: now,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            backlog_limit,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        // A frame larger than the burst may borrow up to its own size: tokens may go negative
        // after it, and the bucket pays back before the next one.
        self.tokens = (self.tokens + dt * self.bytes_per_s).min(self.burst);
    }

    fn offer(&mut self, frame: Bytes) -> Result<(), Bytes> {
        if self.backlog_bytes + frame.len() > self.backlog_limit && !self.backlog.is_empty() {
            return Err(frame);
        }
        self.backlog_bytes += frame.len();
        self.backlog.push_back(frame);
        Ok(())
    }

    fn pop(&mut self, now: Instant) -> Option<Bytes> {
        self.refill(now);
        if self.tokens < 0.0 || self.backlog.is_empty() {
            return None;
        }
        let f = self.backlog.pop_front()?;
        self.backlog_bytes -= f.len();
        #[allow(clippy::cast_precision_loss)]
        let cost = f.len().saturating_sub(VNET_HDR_LEN) as f64;
        self.tokens -= cost;
        Some(f)
    }

    /// When the head of the backlog may leave.
    fn next_due(&self) -> Option<Instant> {
        self.backlog.front()?;
        if self.tokens >= 0.0 {
            return Some(self.at);
        }
        Some(self.at + Duration::from_secs_f64(-self.tokens / self.bytes_per_s))
    }
}

/// One direction's impairment engine; frames are `[virtio-net header][Ethernet frame]`.
#[derive(Debug)]
pub struct Impairer {
    spec: Impairment,
    faults: FaultQueue<Bytes>,
    bucket: Option<Bucket>,
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
            bucket: spec.rate_bps.map(|r| Bucket::new(r, now)),
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
            let old = self.bucket.take();
            self.bucket = spec.rate_bps.map(|r| {
                let mut b = Bucket::new(r, now);
                for f in old.into_iter().flat_map(|o| o.backlog) {
                    let _ = b.offer(f);
                }
                b
            });
        }
        self.spec = spec;
    }

    #[must_use]
    pub fn stats(&self) -> ImpairStats {
        self.stats
    }

    /// Frames held (both stages).
    #[must_use]
    pub fn held(&self) -> usize {
        self.faults.len() + self.bucket.as_ref().map_or(0, |b| b.backlog.len())
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
        let before = self.faults.stats();
        match self.faults.push(now, frame) {
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

    /// The next frame to send at `now`, if any is due. Frames over the rate's backlog are
    /// dropped here (counted; the caller counts them as its own drop reason too).
    pub fn pop(&mut self, now: Instant) -> Option<Bytes> {
        let Some(bucket) = self.bucket.as_mut() else {
            let f = self.faults.pop(now)?;
            self.stats.released += 1;
            return Some(f);
        };
        // Move everything due into the rate stage, then release what the bucket allows.
        while let Some(f) = self.faults.pop(now) {
            if bucket.offer(f).is_err() {
                self.stats.rate_dropped += 1;
            }
        }
        let f = bucket.pop(now)?;
        self.stats.released += 1;
        Some(f)
    }

    /// When something is due next (sleep until then); `None`: nothing held.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        let bucket = self.bucket.as_ref().and_then(Bucket::next_due);
        match (self.faults.next_due(), bucket) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
