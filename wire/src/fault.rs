//! A seeded, clock-free fault queue: loss, duplication, reordering and delay for anything that
//! travels — frames in [`crate::endpoint::FaultInjector`], whole batches in the network of the
//! deterministic simulation (`tests/netsim.rs`).
//!
//! The queue never reads a clock: the caller passes `now` to [`FaultQueue::push`] and
//! [`FaultQueue::pop`] (a fake clock in tests). With the same seed, the same faults and the same
//! calls, it makes the same decisions — a failing seed is a reproducible test case. Every push
//! draws the same number of random values whatever the faults, so turning one fault up does not
//! reshuffle the others.
//!
//! Invariants:
//! - Bounded: at most `capacity` items are held; a push beyond that is refused (handed back).
//! - Items leave in order of due time, ties in push order, so with no reordering and no jitter
//!   the queue is FIFO (a duplicate follows its original).
//! - Nothing is dropped silently: every pushed item is lost (handed back as
//!   [`Offer::Lost`]), refused ([`Offer::Full`]), or popped — [`FaultStats`] add up.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What goes wrong, and how often. Probabilities are clamped to `0.0..=1.0` (NaN is 0); a delay
/// that would overflow the clock counts as none.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Probability that an item is lost.
    pub loss: f64,
    /// Probability that an item is delivered twice.
    pub duplicate: f64,
    /// Probability that an item is held back by an extra `reorder_delay`, so that later items
    /// overtake it.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Delay of every item.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per item (this reorders too).
    pub jitter: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// Whether items leave in the order they came (duplicates next to their original).
    pub fn preserves_order(&self) -> bool {
        (prob(self.reorder) == 0.0 || self.reorder_delay.is_zero()) && self.jitter.is_zero()
    }
}

fn prob(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// The fate of a pushed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer<T> {
    /// Queued (possibly twice).
    Queued,
    /// Lost by fault; here it is, for accounting.
    Lost(T),
    /// Refused: the queue is at capacity.
    Full(T),
}

/// Counts of what the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultStats {
    /// Items pushed.
    pub offered: u64,
    /// Items lost by fault.
    pub lost: u64,
    /// Items refused because the queue was full.
    pub refused: u64,
    /// Extra copies queued.
    pub duplicated: u64,
    /// Items held back to be overtaken.
    pub reordered: u64,
    /// Items (copies included) popped.
    pub delivered: u64,
}

struct Slot<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Slot<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Slot<T> {}

impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Slot<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// A bounded queue that loses, duplicates, reorders and delays what passes through it.
pub struct FaultQueue<T> {
    faults: Faults,
    rng: StdRng,
    heap: BinaryHeap<Reverse<Slot<T>>>,
    seq: u64,
    capacity: usize,
    stats: FaultStats,
}

impl<T> std::fmt::Debug for FaultQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultQueue")
            .field("faults", &self.faults)
            .field("len", &self.heap.len())
            .field("capacity", &self.capacity)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> FaultQueue<T> {
    /// A queue holding at most `capacity` items, its decisions drawn from `seed`.
    pub fn new(faults: Faults, seed: u64, capacity: usize) -> Self {
        Self {
            faults,
            rng: StdRng::seed_from_u64(seed),
            heap: BinaryHeap::new(),
            seq: 0,
            capacity,
            stats: FaultStats::default(),
        }
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Offers `item` at time `now`.
    pub fn push(&mut self, now: Instant, item: T) -> Offer<T> {
        self.stats.offered += 1;
        if self.heap.len() >= self.capacity {
            self.stats.refused += 1;
            return Offer::Full(item);
        }
        // Always the same four draws (see the module doc).
        let lose = self.rng.random::<f64>() < prob(self.faults.loss);
        let dup = self.rng.random::<f64>() < prob(self.faults.duplicate);
        let hold = self.rng.random::<f64>() < prob(self.faults.reorder);
        let jitter_ns = u64::try_from(self.faults.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(self.rng.random_range(0..=jitter_ns));
        if lose {
            self.stats.lost += 1;
            return Offer::Lost(item);
        }
        let mut delay = self.faults.delay.saturating_add(jitter);
        if hold && !self.faults.reorder_delay.is_zero() {
            self.stats.reordered += 1;
            delay = delay.saturating_add(self.faults.reorder_delay);
        }
        let due = now.checked_add(delay).unwrap_or(now);
        if dup && self.heap.len() + 2 <= self.capacity {
            self.stats.duplicated += 1;
            self.enqueue(due, item.clone());
        }
        self.enqueue(due, item);
        Offer::Queued
    }

    /// The next item due at or before `now`, earliest first.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.0.due > now {
            return None;
        }
        let Reverse(slot) = self.heap.pop()?;
        self.stats.delivered += 1;
        Some(slot.item)
    }

    /// When the next item becomes due (for a fake clock to jump to).
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.0.due)
    }

    fn enqueue(&mut self, due: Instant, item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Slot {
            due,
            seq: self.seq,
            item,
        }));
    }
}

#[cfg(test)]
mod tests;
