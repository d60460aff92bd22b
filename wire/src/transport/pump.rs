//! The pump: frames from a half's endpoint into batches toward its shard, and batches from a
//! stream through the session into the halves' endpoints.
//!
//! The synchronous parts ([`fill_batch`], [`deliver`]) are what the deterministic simulation
//! (`tests/netsim.rs`) drives too; [`read_loop`] adds only readiness (tokio `AsyncFd`) and the
//! bounded queue's await, which is the back-pressure.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::WireId;
use crate::batch::{BatchEncoder, Filled, record_len};
use crate::batching::{Batcher, FlushCause};
use crate::session::{Event, Message, Session};
use crate::table::{DropReason, WireCounters};
use crate::vnet::VnetBytes;

use super::Legacy;
use super::node::{Half, Peer, Shard};

/// What one [`fill_batch`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FillReport {
    /// Frames and frame bytes in the batch.
    pub frames: u64,
    pub bytes: u64,
    /// The endpoint had nothing more ready (clear its readiness before waiting again).
    pub drained: bool,
    /// The batch reached a bound and must be flushed now (`None`: only if nothing more comes).
    pub full: Option<FlushCause>,
}

/// Reads ready frames from `recv` straight into `enc` as records of wire `id` (zero copy:
/// `push_with` lets the read fill the batch in place) until nothing more is ready or `batcher`
/// says the batch is full. Frames that can never be carried, and read errors, are counted on
/// `counters`. The caller takes the batch with `enc.finish()` and calls `batcher.flushed()`.
pub fn fill_batch(
    enc: &mut BatchEncoder,
    batcher: &mut Batcher,
    id: WireId,
    counters: &WireCounters,
    mut recv: impl FnMut(&mut BytesMut) -> io::Result<Option<usize>>,
) -> FillReport {
    let mut r = FillReport::default();
    loop {
        match enc.push_with(id, &mut recv) {
            Ok(Filled::Frame(n)) => {
                r.frames += 1;
                r.bytes += n as u64;
                if let Some(cause) = batcher.append(record_len(n)) {
                    r.full = Some(cause);
                    return r;
                }
            }
            Ok(Filled::NotReady) => {
                r.drained = true;
                return r;
            }
            Ok(Filled::Full) => {
                r.full = Some(FlushCause::Bytes);
                return r;
            }
            Ok(Filled::BadLength(_)) => counters.count_drop(DropReason::Oversize),
            Err(e) => {
                counters.count_drop(DropReason::IoError);
                tracing::debug!(error = %e, "wire read failed");
                r.drained = true;
                return r;
            }
        }
    }
}

/// What an endpoint write's error means for the frame.
pub fn drop_reason(e: &io::Error) -> DropReason {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<super::node::ImpairedDrop>())
    {
        DropReason::Impairment
    } else if e.kind() == io::ErrorKind::WouldBlock {
        DropReason::QueueFull
    } else if e.kind() == io::ErrorKind::NotConnected {
        // An endpoint whose carrier is down (the test endpoints say so).
        DropReason::PeerDown
    } else if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE)) {
        DropReason::Oversize
    } else {
        DropReason::IoError
    }
}

/// What [`deliver`] saw besides frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliverReport {
    pub frames: u64,
    pub stray: u64,
    pub malformed: bool,
}

/// Hands a batch from the stream to the session, writing each frame into the half it is bound
/// to with `write`; the session counts each frame on its link (received or dropped by reason).
pub fn deliver<H>(
    session: &mut Session<H>,
    batch: Bytes,
    now: Instant,
    mut write: impl FnMut(&H, &VnetBytes, &[u8]) -> io::Result<()>,
) -> DeliverReport {
    let mut r = DeliverReport::default();
    session.handle(Message::Batch(batch), now, |e| match e {
        Event::Deliver { half, vnet, frame } => {
            r.frames += 1;
            write(half, vnet, frame).map_err(|e| drop_reason(&e))
        }
        Event::Stray(_) => {
            r.frames += 1;
            r.stray += 1;
            Ok(())
        }
        Event::Malformed(e) => {
            tracing::debug!(error = %e, "malformed batch");
            r.malformed = true;
            Ok(())
        }
        // A batch binds nothing.
        Event::Bound(_) | Event::Unbound(_) | Event::FarShut(_) => Ok(()),
    });
    r
}

/// Reads frames from queue `queue` of a half's endpoint, batches them and queues them toward
/// its peer, until the endpoint goes away or the half is dropped (the task is aborted).
pub(crate) async fn read_loop(
    node: Arc<super::WireNode>,
    half: Arc<super::node::Half>,
    queue: usize,
) {
    let afd = match half.io.dup_fd(queue).and_then(crate::sys::poll::readable) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(wire = %half.key, error = %e, "cannot poll the wire's interface");
            return;
        }
    };
    let limits = node.opts.legacy.batch_limits(node.opts.batch);
    let mut enc = BatchEncoder::new(limits.max_bytes);
    let mut batcher = Batcher::new(limits);
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(wire = %half.key, error = %e, "wire interface gone");
                return;
            }
        };
        // Where this batch goes: the queue's lane, if the peer's half is bound there.
        let target = node.target(&half, queue);
        let id = target.as_ref().map_or(WireId(0), |(_, id)| *id);
        let r = fill_batch(&mut enc, &mut batcher, id, &half.counters, |buf| {
            half.io.recv(queue, buf)
        });
        if r.drained {
            guard.clear_ready();
        }
        batcher.flushed();
        let body = node.opts.legacy.message_body(enc.finish());
        if r.frames == 0 {
            continue;
        }
        node.touch();
        let sent = match target {
            Some((shard, _)) => {
                let sent = node.send_batch(&half, queue, &shard, body).await;
                if sent {
                    shard.tx_frames.fetch_add(r.frames, Ordering::Relaxed);
                }
                sent
            }
            None => false,
        };
        if sent {
            half.counters.add_tx(r.frames, r.bytes);
        } else {
            half.counters.add_drops(DropReason::PeerDown, r.frames);
        }
    }
}

/// The frame-carrying part of the node: where a half's batches go, and delivery of a stream's
/// batches (kept here so that a frame's path stays in this file, `grpc.rs` and `session.rs`).
impl super::WireNode {
    /// Where the frames of a half's endpoint queue `queue` go now: the shard of the queue's
    /// lane if the peer's half is bound there, else the primary shard if it is bound there;
    /// with the half's id on that shard.
    pub(crate) fn target(&self, half: &Arc<Half>, queue: usize) -> Option<(Arc<Shard>, WireId)> {
        if !half.carrier.load(Ordering::Acquire) {
            return None;
        }
        let peer = self.known_peer(half.peer()?)?;
        let lanes = half.lanes(peer.active());
        let lane = lanes.shard_of_queue(queue);
        let index = if half.bound_on(lane) {
            lane
        } else {
            lanes.primary()
        };
        let shard = Arc::clone(peer.shard(index));
        let id = shard
            .state
            .lock()
            .expect("shard lock")
            .session
            .data_id(&half.key)?;
        Some((shard, id))
    }

    /// Queues a batch toward the shard (waiting while its queue is full: the back-pressure), or
    /// in the legacy unary design sends it in its own call. Whether the peer may get it.
    pub(crate) async fn send_batch(
        &self,
        half: &Arc<Half>,
        queue: usize,
        shard: &Arc<Shard>,
        body: Bytes,
    ) -> bool {
        if self.opts.legacy == Legacy::Unary {
            return match half.peer() {
                Some(p) => self.unary_send(p, shard.index, body).await,
                None => false,
            };
        }
        let Ok(permit) = Arc::clone(&half.queued[queue % half.queued.len()])
            .acquire_owned()
            .await
        else {
            return false;
        };
        shard.tx.send((body, permit)).await.is_ok()
    }

    /// Delivers a batch from `peer`'s shard to our halves, each frame on the endpoint queue of
    /// the shard's lane for its half (queue 0 if the shard is not one of its lanes).
    pub(crate) fn deliver(&self, peer: &Peer, shard: &Shard, batch: Bytes) {
        let active = peer.active();
        let mut st = shard.state.lock().expect("shard lock");
        let r = super::pump::deliver(&mut st.session, batch, Instant::now(), |h, vnet, frame| {
            let lane = h.lanes(active).lane_of(shard.index).unwrap_or(0);
            h.deliver_frame(lane as usize, vnet, frame)
        });
        drop(st);
        shard.rx_frames.fetch_add(r.frames, Ordering::Relaxed);
        self.touch();
        let c = &peer.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.batch_frames.fetch_add(r.frames, Ordering::Relaxed);
        if r.malformed {
            c.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::batch::decode;
    use crate::batching::BatchLimits;

    fn frames(lens: &[usize]) -> impl FnMut(&mut BytesMut) -> io::Result<Option<usize>> + '_ {
        let mut lens = lens.iter().copied();
        move |buf| match lens.next() {
            None => Ok(None),
            Some(0) => Err(io::Error::other("boom")),
            Some(n) => {
                buf.extend_from_slice(&[0; 10]);
                buf.extend_from_slice(&vec![0xab; n]);
                Ok(Some(n))
            }
        }
    }

    #[test]
    fn fills_until_drained_or_the_frame_bound() {
        let c = WireCounters::default();
        let mut enc = BatchEncoder::new(256 << 10);
        let mut b = Batcher::new(BatchLimits {
            max_bytes: 256 << 10,
            max_frames: 3,
        });
        let mut src = frames(&[60, 61, 62, 63, 64]);
        let r = fill_batch(&mut enc, &mut b, WireId(5), &c, &mut src);
        assert_eq!((r.frames, r.bytes, r.drained), (3, 183, false));
        let batch = enc.finish();
        b.flushed();
        assert!(decode(batch).all(|f| f.unwrap().wire == WireId(5)));
        let r = fill_batch(&mut enc, &mut b, WireId(5), &c, &mut src);
        assert_eq!((r.frames, r.drained), (2, true));
    }

    #[test]
    fn runts_and_errors_are_counted() {
        let c = WireCounters::default();
        let mut enc = BatchEncoder::new(256 << 10);
        let mut b = Batcher::new(BatchLimits::DEFAULT);
        let r = fill_batch(&mut enc, &mut b, WireId(1), &c, frames(&[60, 5, 60, 0, 60]));
        assert_eq!((r.frames, r.drained), (2, true));
        let s = c.snapshot();
        assert_eq!(s.drops(DropReason::Oversize), 1);
        assert_eq!(s.drops(DropReason::IoError), 1);
    }

    #[test]
    fn write_errors_map_to_reasons() {
        assert_eq!(
            drop_reason(&io::Error::from(io::ErrorKind::WouldBlock)),
            DropReason::QueueFull
        );
        assert_eq!(
            drop_reason(&io::Error::from_raw_os_error(libc::EMSGSIZE)),
            DropReason::Oversize
        );
        assert_eq!(
            drop_reason(&io::Error::from_raw_os_error(libc::EIO)),
            DropReason::IoError
        );
    }
}
