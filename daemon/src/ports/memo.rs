//! What the node's patches were when a full run last read them, kept while no traffic-control
//! event in the node's namespace says one changed.
//!
//! Every full run checks each patch (the u32 filter with its mirred redirect on a node end, a
//! device or a wire TAP): one filter dump per interface, two thousand at a thousand wires, a
//! fifth of an idle daemon's CPU — for filters that nobody but meshnet touches. The patchbay's
//! event socket ([`super::Patchbay`]) also follows the node's traffic-control events
//! (`RTNLGRP_TC`), and each event marks its interface's reading stale ([`PatchMemo::event`]);
//! a run then reads only the filters that changed since their last reading, or that were never
//! read ([`PatchMemo::split`]). What the memo does not see does not go unchecked for long:
//!
//! * a reading is trusted only if it began after the interface's last event, so an event that
//!   is processed while a read is under way makes that read stale;
//! * an overrun of the event socket, an action changed by index (`tc actions`, which names no
//!   interface) or the end of the event stream forgets every reading;
//! * a reading is trusted at most [`TRUST`] (less for some interfaces, so that re-reads spread
//!   over runs): an event the socket could not decode (dropped by netlink-proto) is caught then.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netlink_packet_route::RouteNetlinkMessage;

/// Longest time a reading of a patch is trusted without a new one, events or not.
pub const TRUST: Duration = Duration::from_secs(300);

/// How long a change event is remembered for a reading that began before it and is recorded
/// after it (no read takes this long).
const EVENT_MEMORY: Duration = Duration::from_secs(600);

/// Patch readings of the node's interfaces (module docs).
#[derive(Debug, Default)]
pub struct PatchMemo {
    inner: Mutex<Inner>,
    /// Filters read so far (what [`PatchMemo::record`] was given).
    reads: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// By ifindex: where the patch pointed (`None`: no patch), and when that read began.
    known: HashMap<u32, (Option<u32>, Instant)>,
    /// By ifindex: when a traffic-control event last named the interface.
    changed: HashMap<u32, Instant>,
    /// Readings that began before this say nothing (events were lost).
    lost_at: Option<Instant>,
    /// The event stream ended: nothing is trusted any more.
    blind: bool,
}

impl PatchMemo {
    /// Splits `indexes` into the readings still trusted at `now` and the interfaces to read.
    pub fn split(&self, indexes: &[u32], now: Instant) -> (HashMap<u32, Option<u32>>, Vec<u32>) {
        let g = self.lock();
        let mut trusted = HashMap::new();
        let mut read = Vec::new();
        for &i in indexes {
            match g.trusted(i, now) {
                Some(t) => {
                    trusted.insert(i, t);
                }
                None => read.push(i),
            }
        }
        (trusted, read)
    }

    /// Records readings that began at `at`. `asked` is every interface the caller wanted
    /// (trusted or read): readings of others are forgotten (the interface is gone or no longer
    /// meshnet's). A reading that an event has overtaken is not kept.
    pub fn record(&self, at: Instant, asked: &[u32], read: &HashMap<u32, Option<u32>>) {
        self.reads.fetch_add(read.len() as u64, Ordering::Relaxed);
        metrics::counter!("meshnet_patch_reads_total").increment(read.len() as u64);
        let mut g = self.lock();
        let asked: HashSet<u32> = asked.iter().copied().collect();
        g.known.retain(|i, _| asked.contains(i));
        for (&i, &target) in read {
            if g.changed.get(&i).is_none_or(|t| *t < at) {
                g.known.insert(i, (target, at));
            } else {
                g.known.remove(&i);
            }
        }
        g.changed
            .retain(|_, t| at.saturating_duration_since(*t) < EVENT_MEMORY);
    }

    /// Takes in one event of the node's namespace; returns whether it was a traffic-control
    /// event (which says nothing about links).
    pub fn event(&self, m: &RouteNetlinkMessage) -> bool {
        use RouteNetlinkMessage as M;
        let now = Instant::now();
        let mut g = self.lock();
        match m {
            M::NewQueueDiscipline(t)
            | M::DelQueueDiscipline(t)
            | M::NewTrafficClass(t)
            | M::DelTrafficClass(t)
            | M::NewTrafficFilter(t)
            | M::DelTrafficFilter(t)
            | M::NewTrafficChain(t)
            | M::DelTrafficChain(t) => {
                let i = u32::try_from(t.header.index).unwrap_or(0);
                g.known.remove(&i);
                g.changed.insert(i, now);
                true
            }
            // A shared action changed by its index may be one of the patches'.
            M::NewTrafficAction(_) | M::DelTrafficAction(_) => {
                g.lost(now);
                true
            }
            // The kernel does not reuse an ifindex: nothing more will be said of it.
            M::DelLink(l) => {
                g.known.remove(&l.header.index);
                g.changed.remove(&l.header.index);
                false
            }
            _ => false,
        }
    }

    /// Events were lost (the socket overran): every reading so far is stale.
    pub fn lost(&self) {
        self.lock().lost(Instant::now());
    }

    /// The events stopped for good: no reading is trusted from now on.
    pub fn blind(&self) {
        let mut g = self.lock();
        g.blind = true;
        g.known.clear();
    }

    /// Filters read so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn trusted(&self, index: u32, now: Instant) -> Option<Option<u32>> {
        if self.blind {
            return None;
        }
        let &(target, at) = self.known.get(&index)?;
        let fresh = now.saturating_duration_since(at) < trust_for(index);
        let after_loss = self.lost_at.is_none_or(|l| at > l);
        let after_event = self.changed.get(&index).is_none_or(|t| at > *t);
        (fresh && after_loss && after_event).then_some(target)
    }

    fn lost(&mut self, now: Instant) {
        self.lost_at = Some(now);
        self.known.clear();
    }
}

/// How long a reading of interface `index` is trusted: [`TRUST`], shortened by up to seven
/// sixteenths by the index, so that readings made in one run are not all due in the same one.
fn trust_for(index: u32) -> Duration {
    TRUST - TRUST / 16 * (index % 8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::tc::TcMessage;

    fn filter_event(index: u32) -> RouteNetlinkMessage {
        let mut t = TcMessage::default();
        t.header.index = i32::try_from(index).unwrap();
        RouteNetlinkMessage::NewTrafficFilter(t)
    }

    fn reads(pairs: &[(u32, Option<u32>)]) -> HashMap<u32, Option<u32>> {
        pairs.iter().copied().collect()
    }

    /// A reading answers until an event names its interface, an overrun or a changed action
    /// makes every reading stale, or its time is up; a reading that an event overtook while it
    /// was under way is not kept.
    #[test]
    fn a_reading_answers_until_an_event_says_otherwise() {
        let m = PatchMemo::default();
        let t0 = Instant::now();
        let all = [1, 2, 3];
        let (known, read) = m.split(&all, t0);
        assert!(known.is_empty());
        assert_eq!(read, vec![1, 2, 3]);
        m.record(t0, &all, &reads(&[(1, Some(2)), (2, Some(1)), (3, None)]));
        assert_eq!(m.reads(), 3);

        let (known, read) = m.split(&all, Instant::now());
        assert_eq!(known, reads(&[(1, Some(2)), (2, Some(1)), (3, None)]));
        assert!(read.is_empty());

        // A filter on 2 changed: only 2 is read again.
        assert!(m.event(&filter_event(2)));
        let (known, read) = m.split(&all, Instant::now());
        assert_eq!(read, vec![2]);
        assert_eq!(known.len(), 2);

        // A read of 2 that began before its event is overtaken: still to read.
        m.record(t0, &all, &reads(&[(2, Some(1))]));
        assert_eq!(m.split(&all, Instant::now()).1, vec![2]);
        let t1 = Instant::now();
        m.record(t1, &all, &reads(&[(2, Some(3))]));
        assert_eq!(m.split(&all, Instant::now()).0[&2], Some(3));

        // Time is up for every reading after TRUST, for some sooner.
        let (_, read) = m.split(&all, t1 + TRUST);
        assert_eq!(read, vec![1, 2, 3]);
        let (_, read) = m.split(&all, t0 + trust_for(3));
        assert_eq!(read, vec![3], "3's reading is due first");

        // Interfaces no longer asked for are forgotten.
        m.record(Instant::now(), &[1, 2], &HashMap::new());
        assert_eq!(m.split(&all, Instant::now()).1, vec![3]);

        // A changed action: every reading is stale, readings after it are trusted.
        m.event(&RouteNetlinkMessage::NewTrafficAction(Default::default()));
        assert_eq!(m.split(&all, Instant::now()).1, vec![1, 2, 3]);
        let t2 = Instant::now();
        m.record(t2, &all, &reads(&[(1, None), (2, None), (3, None)]));
        assert!(m.split(&all, Instant::now()).1.is_empty());

        // An overrun, likewise.
        m.lost();
        assert_eq!(m.split(&all, Instant::now()).1, vec![1, 2, 3]);

        // A deleted interface leaves nothing behind.
        m.record(
            Instant::now(),
            &all,
            &reads(&[(1, None), (2, None), (3, None)]),
        );
        m.event(&filter_event(1));
        let mut del = LinkMessage::default();
        del.header.index = 1;
        assert!(!m.event(&RouteNetlinkMessage::DelLink(del)));
        assert!(!m.lock().changed.contains_key(&1));
        assert!(!m.lock().known.contains_key(&1));

        // Blind: nothing is trusted, whatever is recorded.
        m.blind();
        m.record(
            Instant::now(),
            &all,
            &reads(&[(1, None), (2, None), (3, None)]),
        );
        assert_eq!(m.split(&all, Instant::now()).1, vec![1, 2, 3]);
    }
}
