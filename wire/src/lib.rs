//! `meshnet-wire`: the dataplane of the userspace "gRPC wire" (DESIGN.md §5).
//!
//! A wire carries the Ethernet frames of one cross-node point-to-point link between two node
//! daemons. Frames of many wires are multiplexed over bidirectional gRPC streams, tagged by a
//! compact [`WireId`] agreed per stream, several frames per message.
//!
//! Its **pure core** never touches a socket, a file descriptor or a clock: the caller hands it
//! bytes (and `now`) and it answers with what to do next, so all of it is unit-tested, fuzzed
//! and benchmarked without root:
//!
//! - [`vnet`] — zero-copy views of the 10-byte virtio-net header and of an Ethernet header.
//! - [`batch`] — the batch codec: many `(wire, vnet header, frame)` records in one message body,
//!   decoded into `bytes::Bytes` slices without copying.
//! - [`batching`] — the batching policy: when to flush (nothing more ready, size or count bound).
//! - [`table`] — the wire table (`WireId` ⇄ link identity) and the per-wire counters.
//! - [`session`] — the session protocol of one stream (Bind/Unbind, delivery), a pure engine.
//! - [`endpoint`] — the one frame-I/O trait every endpoint implements ([`endpoint::FrameEndpoint`]),
//!   an in-memory pair and a fault-injecting wrapper for tests.
//! - [`fault`] — the seeded loss/duplication/reordering/delay queue behind that wrapper and the
//!   deterministic simulations.
//!
//! Around it:
//! - [`transport`] — the stream transport the daemon runs: halves, peers, sharded tonic
//!   streams, the pump (endpoint → batch → stream → session → endpoint), TLS, options.
//! - [`sys`] — the kernel endpoints: TAP (`/dev/net/tun`, `IFF_VNET_HDR`, `TUNSETOFFLOAD`) and
//!   AF_PACKET (`PACKET_VNET_HDR`, `TPACKET_V3` mmap ring), and namespace-bound threads.
//!
//! # Where the unsafe part goes
//!
//! Only [`sys`] may use `unsafe` (ioctls, `mmap`, `setsockopt`, reads into uninitialised
//! buffers): the crate denies `unsafe_code` and `sys` alone lifts it (a `forbid` could not be
//! lifted for one module). Every `unsafe` block keeps a `// SAFETY:` comment
//! (`clippy::undocumented_unsafe_blocks` is denied workspace-wide), and raw fds are wrapped in
//! `OwnedFd`/`File` as soon as a syscall returns them. The flag words it applies (offload bits,
//! ring geometry) are computed by pure, unit-tested functions. The tokio/tonic stream transport
//! ([`transport`]) wraps the pure core from outside.
#![deny(unsafe_code)]

use std::fmt;

pub mod batch;
pub mod batching;
pub mod endpoint;
pub mod fault;
pub mod impair;
pub mod session;
#[allow(unsafe_code)]
pub mod sys;
pub mod table;
pub mod tally;
pub mod transport;
pub mod vnet;

/// The compact id of a wire within one stream between two node daemons.
///
/// Ids are agreed per stream (the [`table::WireTable`] of each side maps them to the link
/// identity `(namespace, uid)`); the same link may have different ids on different streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireId(pub u32);

impl fmt::Display for WireId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wire#{}", self.0)
    }
}
