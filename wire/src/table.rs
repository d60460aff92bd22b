//! The wire table of one stream: [`WireId`] ⇄ link identity, plus the per-wire counters.
//!
//! A cross-node link is two independent halves that meet by link identity `(namespace, uid)`
//! (DESIGN.md §4); on a stream between two daemons each link gets a compact [`WireId`], which
//! is what batch records carry. One side assigns ids ([`WireTable::assign`]) and announces them;
//! the other records the announced ones ([`WireTable::insert`]).
//!
//! Invariants:
//! - The map is a bijection: an id names at most one key, a key has at most one id.
//! - Id 0 is never used (a zeroed record is never a real wire).
//! - [`WireTable::assign`] does not reuse an id until the 32-bit space wraps (4 billion
//!   assignments), so a late frame for a removed wire is counted as
//!   [`DropReason::UnknownWire`], never delivered to a newer wire that got its id.
//! - Bounded: at most `max_wires` entries.
//!
//! Counters are [`AtomicU64`]s behind an `Arc` that the hot paths hold (a pre-registered
//! handle), so counting a frame is one relaxed atomic add and no lookup. They belong to the link,
//! not the stream: the caller passes them in, so a link's counters survive a reconnect. Frames
//! for ids the table does not know are counted on [`WireTable::stray`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::WireId;

/// The identity of a link, the same on both ends: its namespace and its `uid` from the
/// `Topology` spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireKey {
    pub namespace: String,
    pub uid: i64,
}

impl WireKey {
    pub fn new(namespace: impl Into<String>, uid: i64) -> Self {
        Self {
            namespace: namespace.into(),
            uid,
        }
    }
}

/// FNV-1a (64 bit) of a link identity: over the namespace, a `0xff` separator (never in a
/// Kubernetes name) and the uid as 8 little-endian bytes. The same on every node without any
/// coordination (unlike std's `DefaultHasher`, which promises no stability), so both ends of a
/// link derive the same VNI, host-end name and stream shard from it. The one copy of this hash.
pub fn link_hash(namespace: &str, uid: i64) -> u64 {
    fnv1a_extend(
        FNV1A_OFFSET,
        namespace.bytes().chain([0xff]).chain(uid.to_le_bytes()),
    )
}

/// FNV-1a (64 bit) offset basis: the hash of no bytes.
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bit) of `h`'s bytes followed by `bytes` (the hash is a running state, so a name
/// derived from a link and something more extends [`link_hash`]).
pub fn fnv1a_extend(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl WireKey {
    /// [`link_hash`] of this key.
    pub fn hash64(&self) -> u64 {
        link_hash(&self.namespace, self.uid)
    }
}

impl fmt::Display for WireKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.uid)
    }
}

/// Why a frame was dropped (the `reason` label of the drop counter, DESIGN.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// A bounded queue toward an endpoint or the stream was full.
    QueueFull,
    /// The other half of the link is not connected.
    PeerDown,
    /// The frame's length is outside what the batch format carries.
    Oversize,
    /// A frame arrived for a wire id this side does not know.
    UnknownWire,
    /// Reading or writing the endpoint failed.
    IoError,
    /// Dropped by the link's declared impairment (loss, corruption that cannot be carried, the
    /// rate's backlog): on purpose, counted apart from the faults.
    Impairment,
    /// Handed to a stream that died before the frame came off it (an underlay cut, a peer
    /// restart): counted by the receiving half once the sender told it how many frames it sent on
    /// that stream (see [`crate::tally`]).
    StreamLost,
}

impl DropReason {
    pub const COUNT: usize = 7;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::QueueFull,
        DropReason::PeerDown,
        DropReason::Oversize,
        DropReason::UnknownWire,
        DropReason::IoError,
        DropReason::Impairment,
        DropReason::StreamLost,
    ];

    pub const fn as_label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::PeerDown => "peer_down",
            DropReason::Oversize => "oversize",
            DropReason::UnknownWire => "unknown_wire",
            DropReason::IoError => "io_error",
            DropReason::Impairment => "impairment",
            DropReason::StreamLost => "stream_lost",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_label())
    }
}

/// Counters of one wire. `tx` is toward the peer (read from the local endpoint, put in a batch),
/// `rx` is from the peer (taken from a batch, written to the local endpoint). Bytes are frame
/// bytes, Ethernet header onward, without virtio-net or record headers.
///
/// All updates are `Relaxed`: each counter is monotonic on its own, and readers (the metrics
/// exporter) need no ordering between them.
#[derive(Debug, Default)]
pub struct WireCounters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl WireCounters {
    pub fn add_tx(&self, frames: u64, bytes: u64) {
        self.tx_frames.fetch_add(frames, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_rx(&self, frames: u64, bytes: u64) {
        self.rx_frames.fetch_add(frames, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_drops(&self, reason: DropReason, frames: u64) {
        self.drops[reason.index()].fetch_add(frames, Ordering::Relaxed);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.add_drops(reason, 1);
    }

    /// The current values (each read on its own: not an atomic snapshot of all of them).
    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            tx_frames: load(&self.tx_frames),
            tx_bytes: load(&self.tx_bytes),
            rx_frames: load(&self.rx_frames),
            rx_bytes: load(&self.rx_bytes),
            drops: self.drops.each_ref().map(load),
        }
    }
}

/// Values of [`WireCounters`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Indexed in the order of [`DropReason::ALL`]; read with [`CounterSnapshot::drops`].
    pub drops: [u64; DropReason::COUNT],
}

impl CounterSnapshot {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included (so every label series exists).
    pub fn drops_by_reason(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.drops(r)))
    }
}

/// Why the table refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("wire table full ({max} wires)")]
    Full { max: usize },
    #[error("{id} is already link {existing}")]
    IdInUse { id: WireId, existing: WireKey },
    #[error("link {key} already has {existing}")]
    KeyInUse { key: WireKey, existing: WireId },
    #[error("{0} is reserved")]
    ReservedId(WireId),
}

#[derive(Debug)]
struct Wire {
    key: WireKey,
    counters: Arc<WireCounters>,
}

/// The wire table of one stream (see the module doc).
#[derive(Debug)]
pub struct WireTable {
    by_id: HashMap<WireId, Wire>,
    by_key: HashMap<WireKey, WireId>,
    /// The id [`assign`](Self::assign) tries next; never 0.
    next: u32,
    max_wires: usize,
    stray: Arc<WireCounters>,
}

impl WireTable {
    /// A table of at most `max_wires` wires.
    pub fn new(max_wires: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next: 1,
            // Keeps the free-id search in `assign` finite.
            max_wires: max_wires.min(u32::MAX as usize - 1),
            stray: Arc::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Gives `key` an id, or returns the one it has (then `counters` is ignored).
    ///
    /// # Errors
    /// [`TableError::Full`] if the table holds `max_wires` wires already.
    pub fn assign(
        &mut self,
        key: WireKey,
        counters: Arc<WireCounters>,
    ) -> Result<WireId, TableError> {
        if let Some(&id) = self.by_key.get(&key) {
            return Ok(id);
        }
        self.check_room()?;
        // Terminates: fewer than u32::MAX - 1 ids are in use.
        let id = loop {
            let id = WireId(self.next);
            self.next = self.next.checked_add(1).unwrap_or(1);
            if !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, Wire { key, counters });
        Ok(id)
    }

    /// Records an id the peer assigned. Recording the same `(id, key)` again is a no-op.
    ///
    /// # Errors
    /// [`TableError::ReservedId`] for id 0, [`TableError::IdInUse`] / [`TableError::KeyInUse`]
    /// if either is already mapped to something else, [`TableError::Full`].
    pub fn insert(
        &mut self,
        id: WireId,
        key: WireKey,
        counters: Arc<WireCounters>,
    ) -> Result<(), TableError> {
        if id.0 == 0 {
            return Err(TableError::ReservedId(id));
        }
        match (self.by_id.get(&id), self.by_key.get(&key)) {
            (Some(w), _) if w.key == key => return Ok(()),
            (Some(w), _) => {
                return Err(TableError::IdInUse {
                    id,
                    existing: w.key.clone(),
                });
            }
            (None, Some(&existing)) => return Err(TableError::KeyInUse { key, existing }),
            (None, None) => {}
        }
        self.check_room()?;
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, Wire { key, counters });
        Ok(())
    }

    pub fn id_of(&self, key: &WireKey) -> Option<WireId> {
        self.by_key.get(key).copied()
    }

    pub fn key_of(&self, id: WireId) -> Option<&WireKey> {
        self.by_id.get(&id).map(|w| &w.key)
    }

    /// The counters of wire `id` (clone the `Arc` once and keep it on the hot path).
    pub fn counters(&self, id: WireId) -> Option<&Arc<WireCounters>> {
        self.by_id.get(&id).map(|w| &w.counters)
    }

    /// Counters for frames that named a wire id this table does not know.
    pub fn stray(&self) -> &Arc<WireCounters> {
        &self.stray
    }

    /// Removes wire `id`, returning its key and counters.
    pub fn remove(&mut self, id: WireId) -> Option<(WireKey, Arc<WireCounters>)> {
        let wire = self.by_id.remove(&id)?;
        self.by_key.remove(&wire.key);
        Some((wire.key, wire.counters))
    }

    /// Removes the wire of `key`, returning its id.
    pub fn remove_key(&mut self, key: &WireKey) -> Option<WireId> {
        let id = self.by_key.remove(key)?;
        self.by_id.remove(&id);
        Some(id)
    }

    /// Every wire, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (WireId, &WireKey, &Arc<WireCounters>)> {
        self.by_id.iter().map(|(&id, w)| (id, &w.key, &w.counters))
    }

    fn check_room(&self) -> Result<(), TableError> {
        if self.by_id.len() >= self.max_wires {
            return Err(TableError::Full {
                max: self.max_wires,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
