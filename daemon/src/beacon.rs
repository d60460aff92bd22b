//! Daemon-to-daemon liveness of VXLAN links: the far end's state reaches this node.
//!
//! A kernel VXLAN link has no carrier of its own: an underlay cut, a dead peer daemon or the far
//! router shutting its port leave this end up. So every daemon tells the daemons at the other end
//! of its VXLAN links, over UDP (`--beacon-port`, 51112 by default, one dual-stack socket), the
//! state of its own ports: one datagram per peer node every interval (100 ms), and one at once
//! when a port's state changes. The receiving side judges each link's far end ([`FarEnd`]) and
//! fires [`Beacon::changed`] on every change of judgement; the reconciler turns "far end not up"
//! into this end's carrier (protodown).
//!
//! The datagram ([`encode`]/[`decode`], big-endian): magic `MNBK`, version 1, flags, entry count
//! (u16), the sender's epoch (u64, random per daemon start: a restarted daemon is seen as such),
//! a sequence number (u64, per datagram), then per link its [`link_hash`] (u64) and this side's
//! port state (u8: 1 up, 0 down). At most [`MAX_ENTRIES`] links per datagram (under 1200 bytes);
//! more go in several. Nothing is acknowledged: a lost datagram is replaced by the next one.
//!
//! The judgement ([`Table`]) is pure: the caller passes `now`. A link's far end is
//! - [`FarEnd::Unknown`] until the far daemon lists the link once (an older daemon never does);
//!   the reconciler treats it as up, so a daemon (re)start or an old peer takes no link down;
//! - [`FarEnd::Up`] / [`FarEnd::PortDown`] as last listed, while that listing is younger than
//!   `dead_after` (3 intervals + 100 ms);
//! - once the listing is older: [`FarEnd::PortDown`] if the far daemon is still heard (it no longer
//!   has the port), else [`FarEnd::Silent`] (daemon dead, or the underlay cut).
//!
//! A far end judged down stays judged down for at least `hold_down` (300 ms), so a router always
//! sees a link-down, however quickly the far end comes back. Datagrams are accepted only from the
//! peers of tracked links (source address and port); anything malformed, stale (an older
//! sequence number of the same epoch) or unknown is counted and ignored.
//!
//! [`link_hash`]: meshnet_wire::table::link_hash

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Default UDP port of the beacon (next to the gRPC wire's 51111).
pub const DEFAULT_PORT: u16 = 51112;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1200;
const MAGIC: [u8; 4] = *b"MNBK";
const VERSION: u8 = 1;
const HEADER: usize = 24;
const ENTRY: usize = 9;
/// Links per datagram at most.
pub const MAX_ENTRIES: usize = (MAX_DATAGRAM - HEADER) / ENTRY;

/// One decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub epoch: u64,
    pub seq: u64,
    /// (link hash, this side's port is up).
    pub links: Vec<(u64, bool)>,
}

/// Why a datagram was refused; also its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than the header")]
    Short,
    #[error("longer than {MAX_DATAGRAM} bytes")]
    Oversize,
    #[error("bad magic")]
    Magic,
    #[error("unsupported version")]
    Version,
    #[error("length does not match the entry count")]
    Length,
    #[error("port state neither 0 nor 1")]
    State,
}

impl DecodeError {
    /// The `reason` label of `meshnet_beacon_bad_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            DecodeError::Short => "short",
            DecodeError::Oversize => "oversize",
            DecodeError::Magic => "magic",
            DecodeError::Version => "version",
            DecodeError::Length => "length",
            DecodeError::State => "state",
        }
    }
}

/// Encodes `links` (at most [`MAX_ENTRIES`]; more are cut off — callers chunk) as one datagram.
pub fn encode(epoch: u64, seq: u64, links: &[(u64, bool)]) -> Vec<u8> {
    let links = &links[..links.len().min(MAX_ENTRIES)];
    let mut out = Vec::with_capacity(HEADER + ENTRY * links.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(
        &u16::try_from(links.len())
            .expect("MAX_ENTRIES fits u16")
            .to_be_bytes(),
    );
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    for (key, up) in links {
        out.extend_from_slice(&key.to_be_bytes());
        out.push(u8::from(*up));
    }
    out
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Decodes one datagram; never panics, whatever `b` holds.
///
/// # Errors
/// See [`DecodeError`].
pub fn decode(b: &[u8]) -> Result<Datagram, DecodeError> {
    if b.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversize);
    }
    if b.len() < HEADER {
        return Err(DecodeError::Short);
    }
    if b[..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if b[4] != VERSION {
        return Err(DecodeError::Version);
    }
    let count = usize::from(u16::from_be_bytes([b[6], b[7]]));
    if b.len() != HEADER + count * ENTRY {
        return Err(DecodeError::Length);
    }
    let mut links = Vec::with_capacity(count);
    for e in b[HEADER..].chunks_exact(ENTRY) {
        let up = match e[8] {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::State),
        };
        links.push((be_u64(&e[..8]), up));
    }
    Ok(Datagram {
        epoch: be_u64(&b[8..16]),
        seq: be_u64(&b[16..24]),
        links,
    })
}

/// What this node knows of a link's far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarEnd {
    /// Never listed by the far daemon (not heard yet, or a daemon without beacons).
    Unknown,
    Up,
    /// The far router shut its port, the port is missing, or the far daemon stopped listing it.
    PortDown,
    /// Nothing heard from the far daemon for `dead_after`.
    Silent,
}

impl FarEnd {
    /// Whether this end's carrier must be off.
    pub fn is_down(self) -> bool {
        matches!(self, FarEnd::PortDown | FarEnd::Silent)
    }
}

/// A link's judgement and when it was reached (wall clock, for status messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub far: FarEnd,
    pub since: SystemTime,
    at: Instant,
}

/// Timings of the beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between two datagrams to a peer.
    pub interval: Duration,
    /// A listing older than this no longer counts.
    pub dead_after: Duration,
    /// A far end judged down stays so at least this long.
    pub hold_down: Duration,
}

impl Timing {
    /// `dead_after` = 3 intervals + 100 ms, `hold_down` = 300 ms.
    pub fn new(interval: Duration) -> Self {
        Timing {
            interval,
            dead_after: interval * 3 + Duration::from_millis(100),
            hold_down: Duration::from_millis(300),
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new(Duration::from_millis(100))
    }
}

/// A point in time, as both clocks see it.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn current() -> Self {
        Now {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

#[derive(Debug)]
struct Link {
    peer: SocketAddr,
    local_up: bool,
    /// The far daemon's last listing: when, and its port state.
    heard: Option<(Instant, bool)>,
    verdict: Verdict,
}

#[derive(Debug)]
struct Peer {
    epoch: u64,
    seq: u64,
    last: Instant,
    restarts: u64,
}

/// What [`Table::receive`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Accepted,
    /// From an address that is no tracked link's peer.
    UnknownPeer,
    /// An older sequence number of the peer's current epoch.
    Stale,
}

/// The pure per-link state machine (see the module documentation).
#[derive(Debug)]
pub struct Table {
    timing: Timing,
    links: HashMap<u64, Link>,
    peers: HashMap<SocketAddr, Peer>,
}

/// A peer address in the form datagrams arrive with (v4-mapped IPv6 → IPv4).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl Table {
    pub fn new(timing: Timing) -> Self {
        Table {
            timing,
            links: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Tracks a link toward `peer` with this side's port state; returns whether anything the
    /// peer is told changed (a new link, another peer, another port state).
    pub fn track(&mut self, key: u64, peer: SocketAddr, local_up: bool, now: Now) -> bool {
        let peer = canonical(peer);
        match self.links.get_mut(&key) {
            Some(l) if l.peer == peer => std::mem::replace(&mut l.local_up, local_up) != local_up,
            _ => {
                self.links.insert(
                    key,
                    Link {
                        peer,
                        local_up,
                        heard: None,
                        verdict: Verdict {
                            far: FarEnd::Unknown,
                            since: now.wall,
                            at: now.at,
                        },
                    },
                );
                true
            }
        }
    }

    /// Forgets links not in `keep` and peers no link points at.
    pub fn retain(&mut self, keep: &HashSet<u64>) {
        self.links.retain(|k, _| keep.contains(k));
        let peers: HashSet<SocketAddr> = self.links.values().map(|l| l.peer).collect();
        self.peers.retain(|p, _| peers.contains(p));
    }

    /// Takes in a datagram from `from`.
    pub fn receive(&mut self, from: SocketAddr, d: &Datagram, now: Instant) -> Received {
        let from = canonical(from);
        if !self.links.values().any(|l| l.peer == from) {
            return Received::UnknownPeer;
        }
        match self.peers.get_mut(&from) {
            Some(p) if p.epoch == d.epoch && d.seq <= p.seq => return Received::Stale,
            Some(p) => {
                if p.epoch != d.epoch {
                    p.restarts += 1;
                    tracing::info!(peer = %from, "beacon: the peer daemon restarted (new epoch)");
                }
                *p = Peer {
                    epoch: d.epoch,
                    seq: d.seq,
                    last: now,
                    restarts: p.restarts,
                };
            }
            None => {
                self.peers.insert(
                    from,
                    Peer {
                        epoch: d.epoch,
                        seq: d.seq,
                        last: now,
                        restarts: 0,
                    },
                );
            }
        }
        for (key, up) in &d.links {
            if let Some(l) = self.links.get_mut(key)
                && l.peer == from
            {
                l.heard = Some((now, *up));
            }
        }
        Received::Accepted
    }

    /// Judges every link at `now`; returns whether any judgement changed.
    pub fn judge(&mut self, now: Now) -> bool {
        let mut changed = false;
        let t = self.timing;
        for l in self.links.values_mut() {
            let fresh = |at: Instant| now.at.saturating_duration_since(at) <= t.dead_after;
            let far = match l.heard {
                None => FarEnd::Unknown,
                Some((at, up)) if fresh(at) => {
                    if up {
                        FarEnd::Up
                    } else {
                        FarEnd::PortDown
                    }
                }
                Some(_) => match self.peers.get(&l.peer) {
                    Some(p) if fresh(p.last) => FarEnd::PortDown,
                    _ => FarEnd::Silent,
                },
            };
            let v = &mut l.verdict;
            if far == v.far
                || (v.far.is_down()
                    && !far.is_down()
                    && now.at.saturating_duration_since(v.at) < t.hold_down)
            {
                continue;
            }
            *v = Verdict {
                far,
                since: now.wall,
                at: now.at,
            };
            changed = true;
        }
        changed
    }

    /// The link's judgement, if it is tracked.
    pub fn verdict(&self, key: u64) -> Option<Verdict> {
        self.links.get(&key).map(|l| l.verdict)
    }

    /// The datagrams' contents per peer: (link, this side's port state), chunked.
    pub fn listings(&self) -> Vec<(SocketAddr, Vec<(u64, bool)>)> {
        let mut per: HashMap<SocketAddr, Vec<(u64, bool)>> = HashMap::new();
        for (k, l) in &self.links {
            per.entry(l.peer).or_default().push((*k, l.local_up));
        }
        let mut out = Vec::new();
        for (peer, mut links) in per {
            links.sort_unstable();
            for c in links.chunks(MAX_ENTRIES) {
                out.push((peer, c.to_vec()));
            }
        }
        out
    }

    /// How often the daemon at `peer` was seen restarting (a new epoch).
    pub fn restarts(&self, peer: SocketAddr) -> u64 {
        self.peers.get(&canonical(peer)).map_or(0, |p| p.restarts)
    }
}

/// Options of [`Beacon::start`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BeaconOptions {
    pub timing: Timing,
}

/// The beacon: its socket, its tasks and its [`Table`].
#[derive(Debug)]
pub struct Beacon {
    table: Mutex<Table>,
    changed: Arc<Notify>,
    /// Wakes the sender at once (a port's state changed).
    wake: Arc<Notify>,
    epoch: u64,
    seq: AtomicU64,
    port: u16,
    tasks: std::sync::OnceLock<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Beacon {
    fn drop(&mut self) {
        for t in self.tasks.get().into_iter().flatten() {
            t.abort();
        }
    }
}

impl Beacon {
    /// Starts the sender and the receiver on `socket` (already bound; see [`bind_udp`]). Must be
    /// called inside a tokio runtime; the tasks end when the returned beacon is dropped.
    ///
    /// # Errors
    /// The socket cannot be registered with the runtime.
    pub fn start(socket: std::net::UdpSocket, opts: BeaconOptions) -> std::io::Result<Arc<Self>> {
        // bind_udp's sockets already are; one made elsewhere may not be.
        socket.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        let socket = Arc::new(UdpSocket::from_std(socket)?);
        let epoch = rand::random::<u64>();
        let wake = Arc::new(Notify::new());
        let beacon = Arc::new(Beacon {
            table: Mutex::new(Table::new(opts.timing)),
            changed: Arc::new(Notify::new()),
            wake: Arc::clone(&wake),
            epoch,
            seq: AtomicU64::new(0),
            port,
            tasks: std::sync::OnceLock::new(),
        });
        // Spawned once the beacon exists: a task's first upgrade must not miss it.
        let weak = Arc::downgrade(&beacon);
        let send = tokio::spawn(send_loop(
            weak.clone(),
            Arc::clone(&socket),
            opts.timing,
            wake,
        ));
        let recv = tokio::spawn(recv_loop(weak, socket));
        let _ = beacon
            .tasks
            .set(vec![send.abort_handle(), recv.abort_handle()]);
        tracing::info!(port, epoch = format!("{epoch:016x}"), "beacon serving");
        Ok(beacon)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The UDP port peers are sent to (every node uses the same).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Tracks link `key` toward the daemon at `peer`, this side's port being `local_up`; a
    /// change is sent at once.
    pub fn track(&self, key: u64, peer: SocketAddr, local_up: bool) {
        if self.table().track(key, peer, local_up, Now::current()) {
            self.wake.notify_one();
        }
    }

    /// Forgets every link not in `keep`.
    pub fn retain(&self, keep: &HashSet<u64>) {
        self.table().retain(keep);
    }

    /// The far end of link `key` ([`FarEnd::Unknown`] if untracked).
    pub fn far_end(&self, key: u64) -> FarEnd {
        self.verdict(key).map_or(FarEnd::Unknown, |v| v.far)
    }

    /// The judgement of link `key`, if tracked.
    pub fn verdict(&self, key: u64) -> Option<Verdict> {
        self.table().verdict(key)
    }

    /// Fired on every change of a link's judgement.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// How often the daemon at `peer` was seen restarting.
    pub fn restarts(&self, peer: SocketAddr) -> u64 {
        self.table().restarts(peer)
    }

    fn judge(&self) {
        if self.table().judge(Now::current()) {
            // One consumer (the reconciler): a stored permit wakes its next wait.
            self.changed.notify_one();
        }
    }
}

/// The destination as `socket` can send to it: an IPv4 peer from an IPv6 socket is v4-mapped.
fn destination(local_v6: bool, peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(v4) if local_v6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        p => p,
    }
}

async fn send_loop(
    beacon: Weak<Beacon>,
    socket: Arc<UdpSocket>,
    timing: Timing,
    wake: Arc<Notify>,
) {
    let local_v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let mut tick = tokio::time::interval(timing.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Held for one round only: dropping the last outside handle ends the beacon.
        let Some(b) = beacon.upgrade() else { return };
        let listings = b.table().listings();
        let (epoch, first) = (
            b.epoch,
            b.seq.fetch_add(listings.len() as u64, Ordering::Relaxed),
        );
        drop(b);
        for (i, (peer, links)) in listings.into_iter().enumerate() {
            let d = encode(epoch, first + i as u64 + 1, &links);
            match socket.send_to(&d, destination(local_v6, peer)).await {
                Ok(_) => metrics::counter!("meshnet_beacon_datagrams_total", "dir" => "sent")
                    .increment(1),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "beacon: cannot send");
                    metrics::counter!("meshnet_beacon_send_errors_total").increment(1);
                }
            }
        }
        match beacon.upgrade() {
            Some(b) => b.judge(),
            None => return,
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
    }
}

async fn recv_loop(beacon: Weak<Beacon>, socket: Arc<UdpSocket>) {
    // One byte more than accepted, so an oversize datagram is seen as such.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let r = socket.recv_from(&mut buf).await;
        let Some(b) = beacon.upgrade() else { return };
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "beacon: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let bad = |reason: &'static str| {
            metrics::counter!("meshnet_beacon_bad_total", "reason" => reason).increment(1);
        };
        match decode(&buf[..n]) {
            Err(e) => {
                tracing::debug!(%from, error = %e, "beacon: bad datagram");
                bad(e.metric_label());
            }
            Ok(d) => {
                let r = b.table().receive(from, &d, Instant::now());
                match r {
                    Received::Accepted => {
                        metrics::counter!("meshnet_beacon_datagrams_total", "dir" => "received")
                            .increment(1);
                        b.judge();
                    }
                    Received::UnknownPeer => bad("unknown_peer"),
                    Received::Stale => bad("stale"),
                }
            }
        }
    }
}

/// Binds the beacon's UDP socket on `addr`: `[::]:PORT` also receives IPv4 (v4-mapped sources),
/// as [`crate::http::bind_tcp`]'s listeners do.
///
/// # Errors
/// The socket cannot be made or bound (e.g. the port is taken).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    crate::http::bind_dual(addr, nix::sys::socket::SockType::Datagram)
        .map(std::net::UdpSocket::from)
}

/// `since` as `HH:MM:SS UTC`, for status messages.
pub fn clock(since: SystemTime) -> String {
    let s = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests;
