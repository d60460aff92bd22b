//! Frames lost with a dead stream, counted as dropped (`stream_lost`) on the receiving half, so
//! that per wire `sent = received + dropped` holds through underlay cuts and peer restarts.
//!
//! When a stream dies (the HTTP/2 connection is torn down), what sat in socket buffers and h2's
//! queues is gone: the sender counted those frames as sent, the receiver never saw them. Neither
//! side alone knows how many there were, but together they do:
//! * the **sender** counts, per stream and per wire id, the frames it handed to the stream
//!   ([`Sent`], filled by the outbound stream as it yields each batch);
//! * the **receiver** counts, per stream and per id of the peer's it bound on that stream, the
//!   frames it took off the stream, whatever became of them (written, dropped, stray): the
//!   session's arrivals ([`Arrivals`], see [`crate::session::Session::take_arrivals`]), kept
//!   in the shard's [`Ledger`] once the stream has ended;
//! * a stream is named the same on both nodes by a token the dialler puts in its Hello (and the
//!   server echoes); on every later stream the sender sends a `Tally { stream, wire_id, frames }`
//!   for each id of its last [`REPORTED_STREAMS`] finished streams ([`Reports`]), and the
//!   receiver adds `frames - taken` to `stream_lost` on the link it had bound that id to
//!   ([`Ledger::settle`]) — once: a settled entry is removed, so tallies repeated on later
//!   streams (in case the one carrying them died too) count nothing.
//!
//! Exact because both counts end before the tally can arrive: a new stream of a shard starts
//! only after both nodes ended the old one's inbound side (the server refuses a second stream
//! while one is live; the dialler redials after its own ended), and after the old outbound
//! stream was dropped (the new one waits for the shard's data queue, which the old one holds).
//! Batches (of any size, several combined in one message, several wires in one batch) are
//! counted frame by frame on both sides by the same decoder; shards are separate streams with
//! separate tokens; impairment drops happen after the frame was taken off the stream.
//!
//! What cannot be counted (these frames stay counted as sent only, as before):
//! * a peer that does not send tokens or tallies (an older version): no accounting;
//! * tallies that never arrive (every stream in the next [`REPORTED_STREAMS`] died before
//!   carrying them, or the sender restarted) or arrive after the receiver forgot the stream
//!   (more than [`LEDGER_STREAMS`] later, or it restarted);
//! * frames of an id the receiver never bound on that stream (its half was not there): they are
//!   not the link's on the receiving side (a stray frame that arrives is counted as
//!   `unknown_wire` on the peer's counters; one lost is counted nowhere);
//! * the legacy unary design (benchmarks only), whose frames do not travel on the stream.
//!
//! Pure: no I/O, no clock; the transport keeps one [`Ledger`] and one [`Reports`] per shard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::WireId;
use crate::batch;
use crate::table::{DropReason, WireCounters};

/// Finished streams whose arrivals a receiver keeps until their tallies come.
pub const LEDGER_STREAMS: usize = 8;
/// Finished streams whose tallies a sender repeats on each new stream.
pub const REPORTED_STREAMS: usize = 4;

/// Frames a sender handed to one stream, per its wire id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent {
    frames: HashMap<WireId, u64>,
}

impl Sent {
    /// Counts the frames of a batch as it goes on the stream (decoded as the receiver will:
    /// a malformed tail, which we never produce, is not counted on either side).
    pub fn count_batch(&mut self, b: &[u8]) {
        let mut run: Option<(WireId, u64)> = None;
        for f in batch::decode_ref(b) {
            let Ok(f) = f else { break };
            match &mut run {
                Some((id, n)) if *id == f.wire => *n += 1,
                _ => {
                    if let Some((id, n)) = run.replace((f.wire, 1)) {
                        *self.frames.entry(id).or_default() += n;
                    }
                }
            }
        }
        if let Some((id, n)) = run {
            *self.frames.entry(id).or_default() += n;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames counted for `id`.
    pub fn frames(&self, id: WireId) -> u64 {
        self.frames.get(&id).copied().unwrap_or(0)
    }
}

/// What a receiver took off one stream for one id of the peer's: the link it bound the id to
/// (its counters), and the frames.
#[derive(Debug, Clone)]
pub struct Arrived {
    pub counters: Arc<WireCounters>,
    pub frames: u64,
}

/// A receiver's arrivals on one stream, by the peer's wire id.
pub type Arrivals = HashMap<WireId, Arrived>;

/// One sender's report about one wire id of a finished stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub stream: u64,
    pub id: WireId,
    pub frames: u64,
}

/// Receiver side: the arrivals of finished streams, until the sender's tallies settle them.
#[derive(Debug, Default)]
pub struct Ledger {
    streams: VecDeque<(u64, Arrivals)>,
}

impl Ledger {
    /// Stream `stream` has ended (token 0: a peer without accounting; nothing is kept).
    pub fn finish(&mut self, stream: u64, arrivals: Arrivals) {
        if !arrivals.is_empty() {
            keep_recent(&mut self.streams, stream, arrivals, LEDGER_STREAMS);
        }
    }

    /// The sender's tally: counts `frames - taken` as `stream_lost` on the link the id was
    /// bound to, once. Returns the frames counted (0 for an unknown or settled stream or id, or
    /// a tally below what was taken — outside input, not trusted to lower anything).
    pub fn settle(&mut self, t: Tally) -> u64 {
        let Some(pos) = self.streams.iter().position(|(s, _)| *s == t.stream) else {
            return 0;
        };
        let arrivals = &mut self.streams[pos].1;
        let Some(a) = arrivals.remove(&t.id) else {
            return 0;
        };
        if arrivals.is_empty() {
            self.streams.remove(pos);
        }
        let lost = t.frames.saturating_sub(a.frames);
        if lost > 0 {
            a.counters.add_drops(DropReason::StreamLost, lost);
        }
        lost
    }

    /// Finished streams kept.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// Keeps `v` as stream `stream`'s (not token 0: a peer without accounting), at most `max`
/// streams, the oldest dropped first.
fn keep_recent<T>(q: &mut VecDeque<(u64, T)>, stream: u64, v: T, max: usize) {
    if stream == 0 {
        return;
    }
    q.retain(|(s, _)| *s != stream);
    q.push_back((stream, v));
    while q.len() > max {
        q.pop_front();
    }
}

/// Sender side: what the last finished streams carried, to report on every new stream.
#[derive(Debug, Default)]
pub struct Reports {
    streams: VecDeque<(u64, Sent)>,
}

impl Reports {
    /// Stream `stream` has ended having carried `sent` (token 0: nothing to report).
    pub fn finish(&mut self, stream: u64, sent: Sent) {
        if !sent.is_empty() {
            keep_recent(&mut self.streams, stream, sent, REPORTED_STREAMS);
        }
    }

    /// The tallies to send on a new stream (oldest stream first).
    pub fn tallies(&self) -> Vec<Tally> {
        self.streams
            .iter()
            .flat_map(|(stream, sent)| {
                let mut ids: Vec<_> = sent.frames.iter().collect();
                ids.sort_unstable();
                ids.into_iter().map(|(&id, &frames)| Tally {
                    stream: *stream,
                    id,
                    frames,
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::batch::BatchEncoder;
    use crate::vnet::VNET_HDR_NONE;

    fn batch(ids: &[u32]) -> bytes::Bytes {
        let mut enc = BatchEncoder::new(1 << 20);
        for &id in ids {
            enc.push(WireId(id), &VNET_HDR_NONE, &[0u8; 60]).unwrap();
        }
        enc.finish()
    }

    fn arrived(c: &Arc<WireCounters>, frames: u64) -> Arrived {
        Arrived {
            counters: Arc::clone(c),
            frames,
        }
    }

    #[test]
    fn sent_counts_every_frame_by_id_across_runs() {
        let mut s = Sent::default();
        s.count_batch(&batch(&[1, 1, 2, 1]));
        s.count_batch(&batch(&[2]));
        s.count_batch(&[]);
        assert_eq!((s.frames(WireId(1)), s.frames(WireId(2))), (3, 2));
        // A malformed tail counts what decodes before it, as the receiver's decoder does.
        let mut b = batch(&[3, 3]).to_vec();
        b.truncate(b.len() - 1);
        s.count_batch(&b);
        assert_eq!(s.frames(WireId(3)), 1);
    }

    #[test]
    fn a_tally_counts_the_missing_frames_once() {
        let c = Arc::new(WireCounters::default());
        let mut l = Ledger::default();
        l.finish(7, Arrivals::from([(WireId(1), arrived(&c, 10))]));
        let t = Tally {
            stream: 7,
            id: WireId(1),
            frames: 13,
        };
        assert_eq!(l.settle(t), 3);
        assert_eq!(c.snapshot().drops(DropReason::StreamLost), 3);
        // Repeated on a later stream: already settled.
        assert_eq!(l.settle(t), 0);
        assert!(l.is_empty());
        assert_eq!(c.snapshot().drops(DropReason::StreamLost), 3);
    }

    #[test]
    fn unknown_streams_ids_and_lies_count_nothing() {
        let c = Arc::new(WireCounters::default());
        let mut l = Ledger::default();
        l.finish(0, Arrivals::from([(WireId(1), arrived(&c, 1))]));
        assert!(l.is_empty(), "token 0: a peer without accounting");
        l.finish(5, Arrivals::from([(WireId(1), arrived(&c, 10))]));
        let t = |stream, id, frames| Tally {
            stream,
            id: WireId(id),
            frames,
        };
        assert_eq!(l.settle(t(6, 1, 20)), 0);
        assert_eq!(l.settle(t(5, 2, 20)), 0);
        assert_eq!(l.settle(t(5, 1, 4)), 0, "fewer than taken: not trusted");
        assert_eq!(c.snapshot().drops_total(), 0);
    }

    #[test]
    fn ledgers_and_reports_are_bounded() {
        let c = Arc::new(WireCounters::default());
        let mut l = Ledger::default();
        let mut r = Reports::default();
        for s in 1..=20u64 {
            l.finish(s, Arrivals::from([(WireId(1), arrived(&c, 0))]));
            let mut sent = Sent::default();
            sent.count_batch(&batch(&[1]));
            r.finish(s, sent);
        }
        assert_eq!(l.len(), LEDGER_STREAMS);
        let streams: Vec<u64> = r.tallies().iter().map(|t| t.stream).collect();
        assert_eq!(streams, [17, 18, 19, 20]);
        // The oldest kept stream settles; an evicted one does not.
        assert_eq!(
            l.settle(Tally {
                stream: 13,
                id: WireId(1),
                frames: 2
            }),
            2
        );
        assert_eq!(
            l.settle(Tally {
                stream: 12,
                id: WireId(1),
                frames: 2
            }),
            0
        );
    }

    #[test]
    fn empty_streams_are_not_kept() {
        let mut r = Reports::default();
        r.finish(3, Sent::default());
        assert!(r.tallies().is_empty());
        let mut l = Ledger::default();
        l.finish(3, Arrivals::new());
        assert!(l.is_empty());
    }
}
