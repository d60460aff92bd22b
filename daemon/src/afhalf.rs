//! A wire half on AF_PACKET (`meshnetd --wire-endpoint afpacket`): the pod's interface is its
//! port (`crate::ports`), and the daemon reads and writes the port's node end, in the node's
//! namespace, with a [`PacketSocket`]. `PACKET_VNET_HDR` carries GSO super-frames and partial
//! checksums whole, as a TAP's `IFF_VNET_HDR` does, so the rest of the wire (batches, streams)
//! is the same as with a TAP.
//!
//! * **Carrier**: the wire's verdict goes to the patchbay (`crate::ports::Patchbay`), which sets
//!   the node end's admin state — the pod's carrier — with the same hold time as every port.
//! * **Receiving**: [`RxMode::Read`] (one `recvmsg` per frame), not the `TPACKET_V3` ring: the
//!   ring holds a lone frame until its block retires (≥ 1 ms), which would add a millisecond to
//!   every request/response exchange on the link. The socket buffer is [`RCVBUF`].
//! * **The node end** has IPv6 disabled (no link-local address, no ND/MLD chatter into the pod)
//!   and no IPv4 address; the socket does not see what leaves it (`PACKET_IGNORE_OUTGOING`).

use meshnet_wire::sys::afpacket::{PacketOptions, PacketSocket, RxMode};
use meshnet_wire::transport::PacketHalf;

/// Receive buffer of a half's socket (forced past `rmem_max`; the daemon has `CAP_NET_ADMIN`):
/// what arrives from the pod while the reader is busy waits here.
pub const RCVBUF: usize = 4 << 20;

/// Opens the AF_PACKET half on node end `index` (named `name`, for errors). Its own carrier
/// switch does nothing: the caller routes the wire's verdicts to the patchbay.
///
/// # Errors
/// The socket cannot be opened (the error names the node end).
pub fn open_on(index: u32, name: &str) -> std::io::Result<PacketHalf> {
    // This thread is in the node's namespace (the daemon never moves its own threads), where
    // the node end is.
    let opts = PacketOptions {
        rx: RxMode::Read { rcvbuf: RCVBUF },
        ..PacketOptions::default()
    };
    let socket = PacketSocket::open(index, &opts)
        .map_err(|e| std::io::Error::other(format!("AF_PACKET on {name}: {e}")))?;
    PacketHalf::new(socket, Box::new(|_| {}))
        .map_err(|e| std::io::Error::new(e.kind(), format!("the socket on {name}: {e}")))
}
