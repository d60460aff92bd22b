//! The session of one stream between two node daemons: a pure protocol engine (boringtun's
//! `noise` core) — it never touches a socket, a task or a clock. The caller hands it what the
//! stream delivered ([`Session::handle`]) and `now`, tells it when the stream comes and goes and
//! which local halves want this peer, and asks it what control message to transmit next
//! ([`Session::poll_transmit`]). It answers with [`Event`]s: a half became bound (the peer's half
//! is there: raise its carrier) or unbound, a frame to deliver, a malformed batch, a stray frame.
//!
//! # Protocol
//! Each side numbers its own halves with [`WireId`]s ([`WireTable::assign`], never reused) and
//! announces them with `Bind { id, key, reply: false }`; the receiver records the id
//! ([`WireTable::insert`]) only if it has a half of that link toward this peer, and answers with
//! its own `Bind { reply: true }`. A half is *bound* (carrier up) once the peer's Bind for its
//! link was received on the live stream. An announce is always answered, a reply never (no
//! ping-pong), so a side that lost its binding (a restart, a re-registered half) gets it back by
//! announcing again.
//!
//! # Control is never lost
//! Control does not share the data queue: it waits in the session's own queue and
//! [`Session::poll_transmit`] is asked before any data, so a saturated wire cannot delay or drop
//! another wire's Bind. The queue is bounded by the number of attached halves (at most one Bind
//! queued per half) plus one Unbind per detach since the last transmit. And a half that is
//! attached on a connected stream but not bound is re-announced every [`REBIND_INTERVAL`]
//! ([`Session::tick`]): whatever happened to an earlier Bind (a peer whose half did not exist
//! yet, a race with a restart), the link comes up within an interval once both halves exist —
//! unless one is quiet ([`Session::set_quiet`]: it only answers), which then waits for the
//! other's announce.
//!
//! # Invariants
//! - A half is bound only while the stream is connected; [`Session::disconnected`] unbinds all.
//! - Frames are delivered only to halves bound by the peer's id, and counted on that link's
//!   counters; frames for unknown ids are counted on the inbound table's stray counters.
//! - Ordering: a Bind is transmitted before any data batch queued after [`Session::attach`]
//!   (control is asked first), so the peer never sees data for an id it was not told about.
//! - Arrivals: every frame taken off the stream for an id the peer bound on it (since
//!   [`Session::connected`]) is counted, whatever became of it, on the link it was bound to
//!   ([`Session::take_arrivals`]; the receiver's half of [`crate::tally`]).
//!
//! Handles `H` are the caller's per-half value (the transport's `Arc<Half>`; tests use ids).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::WireId;
use crate::batch::{self, BatchError};
use crate::table::{DropReason, WireCounters, WireKey, WireTable};
use crate::tally::{Arrivals, Arrived};
use crate::vnet::VnetBytes;

/// How long an attached but unbound half waits before it is announced again.
pub const REBIND_INTERVAL: Duration = Duration::from_millis(500);

/// A control message of the session protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The sender's half of `key` travels as `id` on this stream. `reply` is set on an answer
    /// to the peer's announce (an answer is not answered).
    Bind {
        id: WireId,
        key: WireKey,
        reply: bool,
    },
    /// The sender's half behind `id` is gone (or, `shut`, unbound because its router shut its
    /// port); the id will not be used again.
    Unbind { id: WireId, shut: bool },
}

/// What the stream delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Control(Control),
    /// One batch (see [`crate::batch`]).
    Batch(Bytes),
}

/// What the caller must do about a message or a state change.
#[derive(Debug)]
pub enum Event<'a, H> {
    /// The peer's half of this half's link is bound: raise the carrier.
    Bound(&'a H),
    /// No longer bound: lower the carrier.
    Unbound(&'a H),
    /// Follows [`Event::Unbound`] when the peer said why: its router shut its port.
    FarShut(&'a H),
    /// Write this frame to the half. The caller returns the drop reason if it could not; the
    /// session counts the frame on the link (received or dropped).
    Deliver {
        half: &'a H,
        vnet: &'a VnetBytes,
        frame: &'a Bytes,
    },
    /// The rest of a batch could not be decoded (what came before was delivered).
    Malformed(BatchError),
    /// A frame named an id the peer never bound to one of our halves (counted as stray).
    Stray(WireId),
}

/// One local half attached to this session.
#[derive(Debug)]
struct Local<H> {
    handle: H,
    counters: Arc<WireCounters>,
    /// Our id for it (outbound direction).
    out: WireId,
    /// The peer's id for it, once the peer bound it (inbound direction): the half is bound.
    bound: Option<WireId>,
    /// A Bind for it waits in the control queue.
    queued: bool,
    /// A Bind for it went out on this stream: the peer may know its id, so detaching it owes
    /// the peer an Unbind. (One never sent owes nothing — which also bounds the control queue:
    /// between two polls each link can owe at most one Unbind.)
    sent: bool,
    /// When it was last announced (for [`Session::tick`]).
    announced: Option<Instant>,
    /// It does not announce itself, only answers (see [`Session::set_quiet`]).
    quiet: bool,
}

/// The session of one stream (see the module doc).
#[derive(Debug)]
pub struct Session<H> {
    connected: bool,
    locals: HashMap<WireKey, Local<H>>,
    /// Our ids, assigned here.
    out: WireTable,
    /// The peer's ids, recorded from its Binds, for our attached halves only.
    inbound: WireTable,
    /// Control to transmit, before any data. Binds are stored by key and resolved when polled,
    /// so a half detached meanwhile sends nothing stale.
    control: VecDeque<Pending>,
    malformed: u64,
    /// Frames taken off this stream per id of the peer's bound on it (at most `max_wires` ids:
    /// past that, an id's frames are not counted and its losses cannot be).
    arrivals: Arrivals,
    max_wires: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Bind {
        key: WireKey,
        reply: bool,
    },
    /// The id, and whether the half's router shut its port.
    Unbind(WireId, bool),
}

impl<H> Session<H> {
    /// A disconnected session of at most `max_wires` halves.
    pub fn new(max_wires: usize) -> Self {
        Self {
            connected: false,
            locals: HashMap::new(),
            out: WireTable::new(max_wires),
            inbound: WireTable::new(max_wires),
            control: VecDeque::new(),
            malformed: 0,
            arrivals: Arrivals::new(),
            max_wires,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the half of `key` is attached and bound by the peer.
    pub fn is_bound(&self, key: &WireKey) -> bool {
        self.locals.get(key).is_some_and(|l| l.bound.is_some())
    }

    /// Our id for `key`, if attached.
    pub fn out_id(&self, key: &WireKey) -> Option<WireId> {
        self.locals.get(key).map(|l| l.out)
    }

    /// The id to put on data of `key` now: attached, connected and bound (else the frames would
    /// be counted as `unknown_wire` by the peer, or not sent at all).
    pub fn data_id(&self, key: &WireKey) -> Option<WireId> {
        let l = self.locals.get(key)?;
        (self.connected && l.bound.is_some()).then_some(l.out)
    }

    /// The attached halves' keys.
    pub fn keys(&self) -> impl Iterator<Item = &WireKey> {
        self.locals.keys()
    }

    /// Counters of frames for ids not bound here.
    pub fn stray(&self) -> &Arc<WireCounters> {
        self.inbound.stray()
    }

    /// Batches that could not be decoded whole.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// What this stream delivered so far per id the peer bound on it (see [`crate::tally`]);
    /// the count starts afresh. The transport takes it when the stream ends.
    pub fn take_arrivals(&mut self) -> Arrivals {
        std::mem::take(&mut self.arrivals)
    }

    /// Control messages waiting (bounded: see the module doc).
    pub fn pending_control(&self) -> usize {
        self.control.len()
    }

    /// A local half of `key` wants to reach this peer on this stream. A half already attached
    /// under `key` is replaced (detached first; its [`Event::Unbound`] is reported). Announced
    /// at once if connected, else on [`connected`](Self::connected).
    ///
    /// # Errors
    /// The session holds `max_wires` halves already.
    pub fn attach(
        &mut self,
        key: WireKey,
        handle: H,
        counters: Arc<WireCounters>,
        mut events: impl FnMut(Event<'_, H>),
    ) -> Result<WireId, crate::table::TableError> {
        self.detach(&key, &mut events);
        let out = self.out.assign(key.clone(), Arc::clone(&counters))?;
        self.locals.insert(
            key.clone(),
            Local {
                handle,
                counters,
                out,
                bound: None,
                queued: false,
                sent: false,
                announced: None,
                quiet: false,
            },
        );
        if self.connected {
            self.queue_bind(&key, false);
        }
        Ok(out)
    }

    /// The half of `key` no longer reaches this peer here (gone, replaced, or its peer moved):
    /// unbinds it and tells the peer. Returns its handle.
    pub fn detach(&mut self, key: &WireKey, events: impl FnMut(Event<'_, H>)) -> Option<H> {
        self.detach_with(key, false, events)
    }

    /// [`Session::detach`], telling the peer in its Unbind whether the half's router shut its
    /// port (`shut`) rather than the half going away.
    pub fn detach_with(
        &mut self,
        key: &WireKey,
        shut: bool,
        mut events: impl FnMut(Event<'_, H>),
    ) -> Option<H> {
        let l = self.locals.remove(key)?;
        self.out.remove(l.out);
        if l.queued {
            // Its Bind would announce whatever half holds the key when polled: drop it, so a
            // half attached again queues its own after this one's Unbind (and the queue holds
            // at most one Bind per link).
            self.control
                .retain(|p| !matches!(p, Pending::Bind { key: k, .. } if k == key));
        }
        if let Some(id) = l.bound {
            self.inbound.remove(id);
            events(Event::Unbound(&l.handle));
        }
        if self.connected && l.sent {
            self.control.push_back(Pending::Unbind(l.out, shut));
        }
        Some(l.handle)
    }

    /// A new stream is live: every attached half that is not quiet is announced.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.control.clear();
        self.arrivals.clear();
        let keys: Vec<WireKey> = self.locals.keys().cloned().collect();
        for l in self.locals.values_mut() {
            l.queued = false;
            l.sent = false;
            l.announced = Some(now);
        }
        for k in keys {
            self.queue_bind(&k, false);
        }
    }

    /// The stream ended: every bound half is unbound; queued control is void (the next stream
    /// announces afresh).
    pub fn disconnected(&mut self, mut events: impl FnMut(Event<'_, H>)) {
        self.connected = false;
        self.control.clear();
        // Emptied entry by entry rather than replaced: its stray counters live on.
        let ids: Vec<WireId> = self.inbound.iter().map(|(id, _, _)| id).collect();
        for id in ids {
            self.inbound.remove(id);
        }
        for l in self.locals.values_mut() {
            l.queued = false;
            l.sent = false;
            if l.bound.take().is_some() {
                events(Event::Unbound(&l.handle));
            }
        }
    }

    /// Re-announces attached halves that are still not bound [`REBIND_INTERVAL`] after their
    /// last announce. Returns whether control was queued (wake the transmitter).
    pub fn tick(&mut self, now: Instant) -> bool {
        if !self.connected {
            return false;
        }
        let due: Vec<WireKey> = self
            .locals
            .iter()
            .filter(|(_, l)| {
                l.bound.is_none()
                    && !l.queued
                    && !l.quiet
                    && l.announced
                        .is_none_or(|t| now.saturating_duration_since(t) >= REBIND_INTERVAL)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.queue_bind(k, false);
            if let Some(l) = self.locals.get_mut(k) {
                l.announced = Some(now);
            }
        }
        !due.is_empty()
    }

    /// Quiets the half of `key` (`quiet`) or lets it announce itself again. A quiet half stays
    /// attached and bound if it is, but sends no Bind of its own — not on a new stream, not at
    /// the tick, and an announce already queued is withdrawn — while it still answers the
    /// peer's Bind: a far half that comes back binds it at once, and a far half that stays away
    /// costs no control. Unquieted, an unbound half is announced now.
    pub fn set_quiet(&mut self, key: &WireKey, quiet: bool, now: Instant) {
        let connected = self.connected;
        let Some(l) = self.locals.get_mut(key) else {
            return;
        };
        if l.quiet == quiet {
            return;
        }
        l.quiet = quiet;
        if quiet {
            let before = self.control.len();
            self.control
                .retain(|p| !matches!(p, Pending::Bind { key: k, reply: false } if k == key));
            if self.control.len() != before {
                l.queued = false;
            }
        } else if connected && l.bound.is_none() {
            l.announced = Some(now);
            self.queue_bind(key, false);
        }
    }

    /// The next control message to transmit, before any data.
    pub fn poll_transmit(&mut self) -> Option<Control> {
        while let Some(p) = self.control.pop_front() {
            match p {
                Pending::Unbind(id, shut) => return Some(Control::Unbind { id, shut }),
                Pending::Bind { key, reply } => {
                    // Detached since it was queued: nothing to announce.
                    let Some(l) = self.locals.get_mut(&key) else {
                        continue;
                    };
                    l.queued = false;
                    l.sent = true;
                    return Some(Control::Bind {
                        id: l.out,
                        key,
                        reply,
                    });
                }
            }
        }
        None
    }

    fn queue_bind(&mut self, key: &WireKey, reply: bool) {
        if let Some(l) = self.locals.get_mut(key)
            && !l.queued
            && (reply || !l.quiet)
        {
            l.queued = true;
            self.control.push_back(Pending::Bind {
                key: key.clone(),
                reply,
            });
        }
    }

    /// Handles one message from the stream. For [`Event::Deliver`] the callback returns whether
    /// the frame was written (or why not); every other event's return value is ignored.
    pub fn handle(
        &mut self,
        msg: Message,
        now: Instant,
        mut events: impl FnMut(Event<'_, H>) -> Result<(), DropReason>,
    ) {
        match msg {
            Message::Control(Control::Bind { id, key, reply }) => {
                self.on_bind(id, key, reply, now, &mut events);
            }
            Message::Control(Control::Unbind { id, shut }) => {
                if let Some((key, _)) = self.inbound.remove(id)
                    && let Some(l) = self.locals.get_mut(&key)
                {
                    l.bound = None;
                    let _ = events(Event::Unbound(&l.handle));
                    if shut {
                        let _ = events(Event::FarShut(&l.handle));
                    }
                }
            }
            Message::Batch(b) => self.deliver(b, &mut events),
        }
    }

    fn on_bind(
        &mut self,
        id: WireId,
        key: WireKey,
        reply: bool,
        now: Instant,
        events: &mut impl FnMut(Event<'_, H>) -> Result<(), DropReason>,
    ) {
        if !self.connected || id.0 == 0 {
            // A message of a stream that has ended (or not begun): nothing may be bound outside
            // a live stream. Id 0 is never a wire.
            return;
        }
        // The id named another link before (the peer re-used it? it does not, but a peer is
        // outside input): that link is unbound.
        if let Some(other) = self.inbound.key_of(id).filter(|k| **k != key).cloned() {
            self.inbound.remove(id);
            if let Some(l) = self.locals.get_mut(&other) {
                l.bound = None;
                let _ = events(Event::Unbound(&l.handle));
            }
        }
        let Some(l) = self.locals.get_mut(&key) else {
            // No half of ours for this link toward this peer: not ours to receive. When ours
            // attaches it announces, and the peer answers.
            return;
        };
        if let Some(old) = l.bound
            && old != id
        {
            self.inbound.remove(old);
        }
        if self
            .inbound
            .insert(id, key.clone(), Arc::clone(&l.counters))
            .is_err()
        {
            // A full table: the link is unbound (and re-announced by the tick).
            if l.bound.take().is_some() {
                let _ = events(Event::Unbound(&l.handle));
            }
            return;
        }
        if self.arrivals.len() < self.max_wires || self.arrivals.contains_key(&id) {
            self.arrivals.entry(id).or_insert_with(|| Arrived {
                counters: Arc::clone(&l.counters),
                frames: 0,
            });
        }
        let fresh = l.bound.replace(id).is_none();
        if fresh {
            let _ = events(Event::Bound(&l.handle));
        }
        if !reply {
            self.queue_bind(&key, true);
            if let Some(l) = self.locals.get_mut(&key) {
                l.announced = Some(now);
            }
        }
    }

    fn deliver(
        &mut self,
        b: Bytes,
        events: &mut impl FnMut(Event<'_, H>) -> Result<(), DropReason>,
    ) {
        // Arrivals are counted per run of one id (a batch is usually one wire's).
        let mut run: Option<(WireId, u64)> = None;
        for f in batch::decode(b) {
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    self.malformed += 1;
                    let _ = events(Event::Malformed(e));
                    break;
                }
            };
            match &mut run {
                Some((id, n)) if *id == f.wire => *n += 1,
                _ => {
                    if let Some(done) = run.replace((f.wire, 1)) {
                        self.count_arrivals(done);
                    }
                }
            }
            let Some(key) = self.inbound.key_of(f.wire) else {
                self.inbound.stray().count_drop(DropReason::UnknownWire);
                let _ = events(Event::Stray(f.wire));
                continue;
            };
            let Some(l) = self.locals.get(key) else {
                // Unreachable by construction (inbound holds only attached keys); counted, not
                // trusted.
                self.inbound.stray().count_drop(DropReason::UnknownWire);
                continue;
            };
            let len = f.data.len() as u64;
            match events(Event::Deliver {
                half: &l.handle,
                vnet: &f.vnet,
                frame: &f.data,
            }) {
                Ok(()) => l.counters.add_rx(1, len),
                Err(r) => l.counters.count_drop(r),
            }
        }
        if let Some(done) = run {
            self.count_arrivals(done);
        }
    }

    fn count_arrivals(&mut self, (id, frames): (WireId, u64)) {
        if let Some(a) = self.arrivals.get_mut(&id) {
            a.frames += frames;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
