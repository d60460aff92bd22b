//! The one frame-I/O trait every wire endpoint implements (smoltcp's `phy::Device`), and two
//! pure implementations for tests: an in-memory pair and a fault-injecting wrapper.
//!
//! # The trait
//!
//! [`FrameEndpoint`] is non-blocking and synchronous; an async shell polls readiness on
//! [`FrameEndpoint::readiness_fd`] (tokio `AsyncFd`) and calls it when ready. It is shaped so
//! that the kernel endpoints in `sys` need no extra copies:
//!
//! - **`recv` appends `[virtio-net header][frame]` to a caller's buffer.** A TAP `read()` returns
//!   exactly that, so it reads straight into the spare capacity of a batch being built
//!   ([`crate::batch::BatchEncoder::push_with`]) — the batch record puts the header right before
//!   the frame for this reason. An AF_PACKET `TPACKET_V3` endpoint keeps a cursor into the
//!   current ring block, copies one frame (with the header the kernel placed before it under
//!   `PACKET_VNET_HDR`) per call, and returns the block to the kernel when it has walked it: one
//!   copy, which a ring needs anyway to release its slots.
//! - **`send` takes the header and the frame as two slices**, as they lie in a decoded batch;
//!   TAP and AF_PACKET write them with one `writev`/`sendmsg` of two iovecs.
//! - Back-pressure is explicit: `recv` returns `Ok(None)` when nothing is ready, `send` fails
//!   with [`io::ErrorKind::WouldBlock`] when the endpoint cannot take the frame now; the caller
//!   retries after readiness or counts a [`crate::table::DropReason::QueueFull`].
//! - `set_carrier` is how a wire shows its peer's presence to the pod (`TUNSETCARRIER`).
//!
//! # Test endpoints
//!
//! [`MemoryPair`] is two endpoints joined by bounded channels (capacity in frames, per
//! direction) with one shared carrier. [`FaultInjector`] wraps any endpoint and passes the frames
//! it sends through a seeded [`FaultQueue`] (loss, duplication, reordering, delay); time advances
//! only when the caller passes `now` to [`FaultInjector::poll`].

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::batch::is_valid_frame_len;
use crate::fault::{FaultQueue, FaultStats, Faults, Offer};
use crate::vnet::{VNET_HDR_LEN, VnetBytes};

/// A source and sink of Ethernet frames with virtio-net headers: a TAP, an AF_PACKET socket, or
/// a test double (see the module doc for the design).
pub trait FrameEndpoint: Send {
    /// Receives one frame without blocking: appends its virtio-net header
    /// ([`VNET_HDR_LEN`] bytes) and then the frame to `buf`, and returns the frame's length.
    /// Returns `Ok(None)`, leaving `buf` unchanged, when no frame is ready. Never touches the
    /// bytes already in `buf`.
    ///
    /// # Errors
    /// The endpoint failed; `buf` is unchanged.
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>>;

    /// Sends one frame without blocking.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] if the endpoint cannot take the frame now (it was not
    /// sent); any other error means the frame was not sent and the endpoint may be broken.
    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()>;

    /// Raises or lowers the link's carrier, as the pod sees it.
    ///
    /// # Errors
    /// The endpoint could not change it.
    fn set_carrier(&mut self, up: bool) -> io::Result<()>;

    /// The link MTU (L3 bytes per frame without GSO).
    fn mtu(&self) -> u32;

    /// A file descriptor that polls readable when `recv` may return a frame and writable when
    /// `send` may accept one; `None` for endpoints without one (tests poll them).
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl<E: FrameEndpoint + ?Sized> FrameEndpoint for Box<E> {
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        (**self).recv(buf)
    }

    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        (**self).send(vnet, frame)
    }

    fn set_carrier(&mut self, up: bool) -> io::Result<()> {
        (**self).set_carrier(up)
    }

    fn mtu(&self) -> u32 {
        (**self).mtu()
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).readiness_fd()
    }
}

/// The shared form of a [`FrameEndpoint`], as the stream transport uses a half's endpoint: one
/// reader task and many writers (the streams delivering to it) at once, so it takes `&self` and
/// is `Sync`. The kernel endpoints provide it ([`crate::sys::tap::TapHalf`],
/// [`crate::sys::afpacket::PacketHalf`]): reads go through the endpoint under a lock only the
/// reader takes, writes through a duplicate of its fd (the kernel serialises TAP and packet
/// socket I/O itself), so delivering never waits for a read.
///
/// **Queues**: an endpoint may have several queues (a multi-queue TAP: the kernel spreads the
/// pod's flows over them by flow hash), each read by its own reader. Every method names the
/// queue; an index past [`queues`](Self::queues) is taken modulo the count, so a single-queue
/// endpoint ignores it. A frame written on queue `q` teaches a multi-queue TAP that its flow
/// belongs to `q` (the kernel's flow table steers the flow's frames from the pod there).
pub trait HalfIo: Send + Sync + 'static {
    /// How many queues the endpoint has (at least 1).
    fn queues(&self) -> usize {
        1
    }
    /// A duplicate of queue `queue`'s fd, to poll for readability.
    ///
    /// # Errors
    /// `dup` failed.
    fn dup_fd(&self, queue: usize) -> io::Result<OwnedFd>;
    /// Appends one `[virtio-net header][frame]` read from queue `queue` to `buf`; `None` when
    /// nothing is ready there.
    ///
    /// # Errors
    /// Read failures other than "would block".
    fn recv(&self, queue: usize, buf: &mut BytesMut) -> io::Result<Option<usize>>;
    /// Writes one frame with its virtio-net header on queue `queue`.
    ///
    /// # Errors
    /// `WouldBlock` when the interface cannot take it now; other write failures.
    fn send(&self, queue: usize, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()>;
    /// Sets the interface's carrier.
    ///
    /// # Errors
    /// The ioctl failed.
    fn set_carrier(&self, up: bool) -> io::Result<()>;
    /// Frames the kernel dropped on their way from the pod into this interface (its `tx_dropped`:
    /// what the pod sent while the carrier was down). Blocking; `None` when unknown.
    fn kernel_tx_dropped(&self) -> Option<u64> {
        None
    }
    /// Where [`HalfIo::kernel_tx_dropped`] reads, when it is an interface's line of
    /// `/proc/net/dev`: its network namespace (open) and the interface name in it. Lets the wire
    /// read the counters of every down half of one pod with one read of that file (a pod with a
    /// thousand ports would otherwise read a thousand lines a thousand times a second).
    fn tx_dropped_source(&self) -> Option<(std::fs::File, String)> {
        None
    }
}

/// A frame owned by a test endpoint.
#[derive(Debug, Clone)]
struct Packet {
    vnet: VnetBytes,
    data: Bytes,
}

impl Packet {
    fn new(vnet: &VnetBytes, frame: &[u8]) -> io::Result<Self> {
        if !is_valid_frame_len(frame.len()) {
            // What a TAP write of a runt or an oversized frame gets: EINVAL.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame length {} cannot be carried", frame.len()),
            ));
        }
        Ok(Self {
            vnet: *vnet,
            data: Bytes::copy_from_slice(frame),
        })
    }

    fn append_to(&self, buf: &mut BytesMut) -> usize {
        buf.reserve(VNET_HDR_LEN + self.data.len());
        buf.extend_from_slice(&self.vnet);
        buf.extend_from_slice(&self.data);
        self.data.len()
    }
}

/// One end of a [`MemoryPair`].
///
/// `send` fails with `WouldBlock` when the peer's queue holds `capacity` frames, with
/// `NotConnected` while the carrier is down (a link without carrier passes nothing), with
/// `BrokenPipe` once the peer is dropped, and with `InvalidInput` for a length a TAP refuses.
/// `recv` fails with `BrokenPipe` once the peer is dropped and its frames are read.
#[derive(Debug)]
pub struct MemoryEndpoint {
    tx: SyncSender<Packet>,
    rx: Receiver<Packet>,
    carrier: Arc<AtomicBool>,
    mtu: u32,
}

impl MemoryEndpoint {
    /// The link's carrier (shared by both ends).
    pub fn carrier(&self) -> bool {
        self.carrier.load(Ordering::Relaxed)
    }
}

impl FrameEndpoint for MemoryEndpoint {
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match self.rx.try_recv() {
            Ok(p) => Ok(Some(p.append_to(buf))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        let p = Packet::new(vnet, frame)?;
        if !self.carrier() {
            return Err(io::ErrorKind::NotConnected.into());
        }
        match self.tx.try_send(p) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TrySendError::Disconnected(_)) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn set_carrier(&mut self, up: bool) -> io::Result<()> {
        self.carrier.store(up, Ordering::Relaxed);
        Ok(())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }
}

/// Two connected in-memory endpoints: what `a` sends, `b` receives, and back. Bounded: each
/// direction holds at most `capacity` frames. The carrier starts up and is shared: either end's
/// `set_carrier` changes it for both.
#[derive(Debug)]
pub struct MemoryPair {
    pub a: MemoryEndpoint,
    pub b: MemoryEndpoint,
}

impl MemoryPair {
    /// `capacity` 0 is taken as 1.
    pub fn new(capacity: usize, mtu: u32) -> Self {
        let (a_tx, b_rx) = mpsc::sync_channel(capacity.max(1));
        let (b_tx, a_rx) = mpsc::sync_channel(capacity.max(1));
        let carrier = Arc::new(AtomicBool::new(true));
        Self {
            a: MemoryEndpoint {
                tx: a_tx,
                rx: a_rx,
                carrier: carrier.clone(),
                mtu,
            },
            b: MemoryEndpoint {
                tx: b_tx,
                rx: b_rx,
                carrier,
                mtu,
            },
        }
    }
}

/// Wraps an endpoint and passes the frames it **sends** through a seeded [`FaultQueue`]; frames
/// it receives pass untouched (wrap the other end to fault the other direction).
///
/// Time is the caller's: `send` queues at the last `now` given to [`poll`](Self::poll), and
/// delayed frames reach the inner endpoint only from `poll`. Bounded by the queue's capacity: a
/// send beyond it fails with `WouldBlock`. Lost frames vanish as on a real network and are
/// counted in [`stats`](Self::stats).
#[derive(Debug)]
pub struct FaultInjector<E> {
    inner: E,
    queue: FaultQueue<Packet>,
    now: Instant,
    /// A due frame the inner endpoint refused with `WouldBlock`; it goes first next time.
    stalled: Option<Packet>,
}

impl<E: FrameEndpoint> FaultInjector<E> {
    /// Wraps `inner`; at most `capacity` frames are held in flight.
    pub fn new(inner: E, faults: Faults, seed: u64, capacity: usize, now: Instant) -> Self {
        Self {
            inner,
            queue: FaultQueue::new(faults, seed, capacity),
            now,
            stalled: None,
        }
    }

    /// Advances the clock to `now` (it never goes back) and hands every frame due by then to the
    /// inner endpoint. Returns how many it handed over.
    ///
    /// # Errors
    /// The inner endpoint's error other than `WouldBlock` (then that frame is dropped; a
    /// `WouldBlock` keeps it for the next poll).
    pub fn poll(&mut self, now: Instant) -> io::Result<usize> {
        self.now = self.now.max(now);
        self.deliver()
    }

    /// When the next held frame becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        if self.stalled.is_some() {
            return Some(self.now);
        }
        self.queue.next_due()
    }

    /// Frames accepted but not yet handed to the inner endpoint.
    pub fn in_flight(&self) -> usize {
        self.queue.len() + usize::from(self.stalled.is_some())
    }

    pub fn stats(&self) -> FaultStats {
        self.queue.stats()
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }

    pub fn into_inner(self) -> E {
        self.inner
    }

    fn deliver(&mut self) -> io::Result<usize> {
        let mut n = 0;
        loop {
            let Some(p) = self.stalled.take().or_else(|| self.queue.pop(self.now)) else {
                return Ok(n);
            };
            match self.inner.send(&p.vnet, &p.data) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled = Some(p);
                    return Ok(n);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<E: FrameEndpoint> FrameEndpoint for FaultInjector<E> {
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        self.inner.recv(buf)
    }

    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        let p = Packet::new(vnet, frame)?;
        match self.queue.push(self.now, p) {
            Offer::Queued => self.deliver().map(drop),
            Offer::Lost(_) => Ok(()),
            Offer::Full(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn set_carrier(&mut self, up: bool) -> io::Result<()> {
        self.inner.set_carrier(up)
    }

    fn mtu(&self) -> u32 {
        self.inner.mtu()
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.readiness_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
