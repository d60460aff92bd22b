//! The stream transport: the I/O shell around the pure [`crate::session`] (DESIGN.md §5).
//!
//! Each node daemon owns its half of every cross-node link; a half reads frames from the pod's
//! endpoint and streams them to the peer node's daemon, which writes them into the peer pod's.
//!
//! * [`node`] — the [`WireNode`]: halves keyed by link identity, one [`node::Peer`] per peer
//!   node with its shards (one bidirectional stream each, over its own HTTP/2 connection); a
//!   shard owns one [`crate::session::Session`] and a bounded data queue. A wire travels on
//!   shard `link_hash(key) % shards` (its primary), where `shards` is the smaller of the two
//!   nodes' counts (negotiated in the Hello); a wire with a multi-queue TAP also on the next
//!   shards, one per queue ([`node::Lanes`]).
//! * [`pump`] — the reader loop of a half (endpoint → [`crate::batch::BatchEncoder::push_with`],
//!   flushed as [`crate::batching::Batcher`] says → the shard's queue) and delivery (batch →
//!   session → endpoint).
//! * [`grpc`] — the tonic service (accepting streams), the dialler, the outbound message stream
//!   (session control first, then data), TLS.
//! * [`crate::tally`] — frames lost with a dead stream: what each side handed to / took off a
//!   stream, settled on the next one (`stream_lost`).
//! * [`codec`] — the `Carry` stream's gRPC framing below tonic's codec: batches go out as their
//!   own `Bytes` chunks and come back as slices of the HTTP/2 DATA frames (no userspace copy of a
//!   payload byte), in the same wire format as the generated types.
//! * A half's endpoint is a [`HalfIo`] (the shared form of the frame-I/O trait): a [`TapHalf`]
//!   or a [`PacketHalf`] from `sys`.
//!
//! **A frame's path** (TAP read to TAP write): `sys/tap.rs` (read) → `transport/pump.rs`
//! (batch) → `transport/grpc.rs` + `transport/codec.rs` (stream out / in) → `session.rs` (decode, wire lookup) →
//! `transport/pump.rs` → `sys/tap.rs` (write); the codec is `batch.rs`.
//!
//! **Flow**: no unbounded queue. The data queue of a shard holds [`WireOptions::queue`] batches;
//! when it is full the reader waits, so the endpoint's queue and then the pod's qdisc and TCP see
//! back-pressure. Control (Bind/Unbind) waits in the session, bounded per half, and goes first.
//!
//! **Security**: a node accepts streams only from nodes that are the peer of one of its halves
//! (the Hello must match the connection's source address), and frames only for wire ids bound to
//! such halves. Nothing received names a namespace path or an interface.
//!
//! Options are per [`WireNode`] ([`WireOptions`]), never process-wide: two nodes in one process
//! (tests) may run different designs.

use std::net::IpAddr;
use std::time::Duration;

use crate::batching::BatchLimits;

pub mod codec;
pub mod grpc;
pub mod node;
pub mod pump;

pub use crate::endpoint::HalfIo;
pub use crate::sys::afpacket::PacketHalf;
pub use crate::sys::tap::TapHalf;
pub use grpc::{WireService, WireTls};
pub use node::{LinkLabels, LinkStats, PeerStats, WireNode};

/// Most bytes of batches combined into one gRPC message: enough to amortise a message's cost
/// (four GSO-sized batches), small enough that a message queued ahead of another wire's frames
/// (or of control, in h2's send buffer) does not hold them long on a slow underlay.
pub const MESSAGE_BYTES: usize = 256 * 1024;
/// Largest gRPC message accepted from a peer (what earlier versions combined, 1 MiB, fits).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Most shards a node runs toward one peer.
pub const MAX_SHARDS: u32 = 64;
/// Most halves per stream (a bound for the session's tables and control queue).
pub const MAX_WIRES_PER_STREAM: usize = 1 << 16;

/// A legacy wire design to reproduce (benchmarks only, `meshnetd --wire-legacy`).
///
/// They make this wire reproduce, in our own code, the designs earlier gRPC wires use, so that
/// `bench/` can show what batching and the virtio-net header are worth, measured against the
/// same endpoints, daemons and lab:
/// * `PerFrame`: one frame per gRPC message on the long-lived stream — a batch holds one frame
///   and queued batches are never combined — and the TAP opened without offloads (the pod's
///   stack segments and checksums every frame itself). Run it with one shard.
/// * `Unary`: as `PerFrame`, but each frame goes in its own unary `Send` call, awaited before
///   the half reads its next frame, as the Go meshnet-cni wire did. Wire ids are still bound on
///   the `Carry` stream, which also carries the carrier state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Legacy {
    /// The product's design: batches, combined messages, offloads, sharded streams.
    #[default]
    None,
    /// One frame per stream message, no offloads on the TAP.
    PerFrame,
    /// One unary call per frame, no offloads on the TAP.
    Unary,
}

impl std::str::FromStr for Legacy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Legacy::None),
            "per-frame" => Ok(Legacy::PerFrame),
            "unary" => Ok(Legacy::Unary),
            other => Err(format!(
                "wire legacy design {other:?}: want none, per-frame or unary"
            )),
        }
    }
}

impl Legacy {
    /// Offloads a half's TAP negotiates: all of them, or none in a legacy design.
    pub fn tap_offloads(self) -> crate::sys::tap::Offloads {
        match self {
            Legacy::None => crate::sys::tap::Offloads::ALL,
            Legacy::PerFrame | Legacy::Unary => crate::sys::tap::Offloads::NONE,
        }
    }

    /// Batch bounds: the product's, or one frame per batch.
    pub fn batch_limits(self, product: BatchLimits) -> BatchLimits {
        match self {
            Legacy::None => product,
            Legacy::PerFrame | Legacy::Unary => BatchLimits {
                max_frames: 1,
                ..product
            },
        }
    }

    /// A finished batch as it goes into a message. The product sends the batch as it is; a
    /// legacy design copies its single frame into a buffer of its own size, as a per-frame
    /// protobuf message does — a batch shares the reader's arena, and one queued per-frame
    /// message would otherwise pin a whole arena.
    pub fn message_body(self, batch: bytes::Bytes) -> bytes::Bytes {
        match self {
            Legacy::None => batch,
            Legacy::PerFrame | Legacy::Unary => bytes::Bytes::copy_from_slice(&batch),
        }
    }
}

/// How one node's wire runs.
#[derive(Debug, Clone)]
pub struct WireOptions {
    /// This node's address (what peers see as the source of its connections).
    pub me: IpAddr,
    /// The port peers' wire servers listen on.
    pub port: u16,
    /// Streams per peer node at most (the peer may ask for fewer; the smaller count wins).
    pub shards: u32,
    /// Queues of a half's TAP (`--wire-queues`): the kernel spreads the pod's flows over them,
    /// each has its own reader, and queue `q` travels on its own shard (see
    /// [`node::Lanes`]), so one link's flows use several streams and cores. The daemon opens
    /// its TAPs with this many; an AF_PACKET half has one. Default 1 (measured: README,
    /// Benchmarks).
    pub queues: usize,
    /// Bounds of a batch read from a half.
    pub batch: BatchLimits,
    /// Batches a shard's data queue holds.
    pub queue: usize,
    /// Benchmarks only: a legacy design.
    pub legacy: Legacy,
    /// Mutual TLS toward peers (and for the server); plain HTTP/2 when unset.
    pub tls: Option<WireTls>,
    /// Connect timeout and the longest dial backoff.
    pub connect_timeout: Duration,
    /// Low-latency mode (`--wire-poll-us`): after a batch was read or delivered, keep the
    /// runtime polling (the TAPs and the streams) for this long before it may sleep. Zero: off.
    /// Effective on a single-threaded runtime, where the spinning thread is the one that polls
    /// every file descriptor (see [`WireNode::poll_loop`]).
    pub poll: Duration,
}

impl WireOptions {
    /// The product's defaults for a node at `me` whose peers listen on `port`.
    pub fn new(me: IpAddr, port: u16) -> Self {
        Self {
            me,
            port,
            shards: default_shards(),
            queues: 1,
            batch: BatchLimits::DEFAULT,
            queue: 16,
            legacy: Legacy::None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            poll: Duration::ZERO,
        }
    }
}

/// Default shard count: one per core, at most 4.
pub fn default_shards() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4) as u32)
}

/// Most queues a half's TAP gets from `--wire-queues`.
pub const MAX_QUEUES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_legacy_designs() {
        assert_eq!("".parse::<Legacy>(), Ok(Legacy::None));
        assert_eq!("per-frame".parse::<Legacy>(), Ok(Legacy::PerFrame));
        assert_eq!("UNARY".parse::<Legacy>(), Ok(Legacy::Unary));
        assert!("batch".parse::<Legacy>().is_err());
    }

    #[test]
    fn legacy_designs_send_single_frames_without_offloads() {
        let product = Legacy::None;
        assert_eq!(
            product.batch_limits(BatchLimits::DEFAULT),
            BatchLimits::DEFAULT
        );
        assert_eq!(product.tap_offloads(), crate::sys::tap::Offloads::ALL);
        for d in [Legacy::PerFrame, Legacy::Unary] {
            assert_eq!(d.batch_limits(BatchLimits::DEFAULT).max_frames, 1);
            assert_eq!(d.tap_offloads(), crate::sys::tap::Offloads::NONE);
            // A legacy message owns a buffer of its own size, not a share of the arena.
            let arena = bytes::Bytes::from(vec![7u8; 4096]).slice(0..100);
            let body = d.message_body(arena.clone());
            assert_eq!(body, arena);
            assert_ne!(body.as_ptr(), arena.as_ptr());
        }
        let arena = bytes::Bytes::from(vec![7u8; 4096]).slice(0..100);
        assert_eq!(
            product.message_body(arena.clone()).as_ptr(),
            arena.as_ptr(),
            "the product sends the batch as it is"
        );
    }
}
