//! AF_PACKET endpoints on an existing interface (the host end of a veth): [`PacketSocket`].
//!
//! # Set-up (order matters)
//!
//! 1. `socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)` — protocol 0, so nothing
//!    is received until `bind`: frames of other interfaces never land in the ring.
//! 2. `PACKET_VNET_HDR` = 1 (must precede the ring: `EBUSY` after): every received frame comes
//!    with a virtio-net header, and every sent frame must start with one. GSO super-frames and
//!    partial checksums cross whole, as with a TAP's `IFF_VNET_HDR`.
//! 3. `PACKET_IGNORE_OUTGOING` = 1: the socket does not see frames leaving the interface —
//!    neither the ones we send (the kernel already skips a socket's own frames) nor any other
//!    host-side traffic on it (IPv6 ND/MLD of the host end, another socket's frames), which
//!    belong to no wire.
//! 4. Ring: `PACKET_VERSION` = `TPACKET_V3`, `PACKET_RX_RING` with [`RingGeometry::to_req3`],
//!    `mmap`. Read: `PACKET_AUXDATA` (for the VLAN tag), `SO_RCVBUF`.
//! 5. `PACKET_QDISC_BYPASS` if asked (transmit straight to the driver; a veth has no qdisc by
//!    default, so this saves little there). `SO_SNDBUF` (forced if privileged): a 64 KiB GSO
//!    frame is charged ~66 KiB until the veth takes it, and the default (~208 KiB) would allow
//!    three in flight. `SO_RCVBUF` only in [`RxMode::Read`]: `TPACKET_V3` reception fills the
//!    ring and is not charged to the receive buffer.
//! 6. `bind` to the interface index with protocol `ETH_P_ALL`.
//!
//! # The receive ring (`TPACKET_V3`)
//!
//! The ring is `block_count` blocks of `block_size` bytes. The kernel fills one block at a time
//! with variable-size packets and hands the whole block over (block status `TP_STATUS_USER`) when
//! the next packet does not fit or when the block has been open for `retire_blk_tov_ms`. We walk
//! the handed-over block packet by packet — `tpacket_block_desc.offset_to_first_pkt`, then each
//! `tpacket3_hdr.tp_next_offset`, `num_pkts` of them — copy each into the caller's buffer, and
//! give the block back (`TP_STATUS_KERNEL`) right after its last packet. Blocks are handed over
//! and back strictly in ring order. The status word is the only thing shared while the kernel
//! may write: it is read with `Acquire` (the packets written before it are visible) and written
//! with `Release` (our reads of the block are done before the kernel may reuse it).
//!
//! **Layout of one packet** (found on kernel 6.x; `net/packet/af_packet.c: tpacket_rcv`):
//!
//! ```text
//! +0                  struct tpacket3_hdr (48 bytes)
//! +48                 struct sockaddr_ll (sll_pkttype: host/broadcast/multicast/outgoing)
//! ...                 padding
//! +tp_mac - 10        struct virtio_net_hdr (10 bytes; PACKET_VNET_HDR puts it right before
//!                     the MAC header and counts it in tp_mac)
//! +tp_mac             the frame, tp_snaplen bytes (== tp_len unless the block was too small)
//! ```
//!
//! So the header and the frame are already adjacent, and one copy moves `[vnet][frame]` into the
//! batch. Two kernel behaviours are undone on the way:
//! - **VLAN untagging**: the receive path (`__netif_receive_skb_core` → `skb_vlan_untag`)
//!   takes the 802.1Q/802.1ad tag out of every tagged frame *before* AF_PACKET sees it, whether
//!   the pod put the tag in the frame or the veth carried it out of band. The ring reports it
//!   (`TP_STATUS_VLAN_VALID`, `hv1.tp_vlan_tci`/`tp_vlan_tpid`) next to the untagged frame. It is
//!   put back after the MAC addresses, and the header's `csum_start`/`hdr_len` moved by 4 (the
//!   kernel computed them for the untagged frame), so the frame leaves exactly as the pod sent
//!   it. Without this, every VLAN of a lab topology would silently lose its tag.
//! - **Truncation**: a frame longer than a block can hold arrives cut (`tp_snaplen < tp_len`) and
//!   without a usable header; it is dropped and counted ([`PacketStats::truncated`]).
//!   [`RingGeometry::to_req3`] refuses blocks smaller than a largest frame, so this does not
//!   happen with a valid geometry.
//!
//! # Two ways to receive ([`RxMode`])
//!
//! **Ring** (the default): the kernel wakes the reader only when a block is handed over, so
//! under load one wake-up and no syscall moves many frames (CRATES.md: a ring kept up with
//! ~600 kpps where plain reads lost frames at ~300 kpps), but when idle a frame waits in the
//! open block until `retire_blk_tov_ms` passes. Measured on kernel 6.18 (`CONFIG_HZ=250`): the
//! timeout is honoured to the millisecond (not rounded to 4 ms ticks), and a ping through a
//! relay of two ring sockets takes ~1 ms instead of ~0.1 ms (`retire_blk_tov_ms` = 4: ~5 ms).
//! At low rates each block carries few frames, so the ring holds `block_count ×
//! retire_blk_tov_ms` of a stalled reader's time before the kernel drops; hence many smaller
//! blocks rather than few big ones.
//!
//! **Read**: one `recvmsg(2)` per frame straight into the caller's buffer (which is as zero-copy
//! as a TAP read: `PACKET_VNET_HDR` puts the header first), so nothing waits for a timer; what
//! arrives while the reader is busy waits in the socket buffer (`SO_RCVBUF`). The VLAN tag
//! comes out of band there too (`PACKET_AUXDATA`) and is put back the same way. Choose it
//! where latency matters more than packet rate; a TAP endpoint has no timer either.
//!
//! # Ring parameters ([`RingGeometry::DEFAULT`])
//!
//! 16 blocks × 256 KiB = 4 MiB per socket (kernel memory, allocated when the ring is set up):
//! a block holds 3 largest (64 KiB GSO) frames or ~1,600 small ones; the ring absorbs ~3 ms of
//! a stalled reader at 10 Gbit/s, and 16 ms when idle traffic retires a block per
//! millisecond. The frame size (2048) is only the kernel's bookkeeping unit for `TPACKET_V3`
//! (`tp_frame_nr = blocks × block_size / frame_size`); packets are packed at their real size.
//! Retire timeout 1 ms, the smallest the kernel takes. Measured with a one-thread relay of two
//! ring sockets and one iperf3 stream on 2 cores (release build): 16 × 256 KiB carried
//! 8.7–8.9 Gbit/s with no ring drop in four runs; 8 × 512 KiB, 7.5–10.4 Gbit/s with a few dozen
//! drops per 3 s (ring frozen while the relay was descheduled — the idle-time bound above);
//! 32 × 128 KiB wakes the reader for every super-frame. [`RxMode::Read`] carried 9.1–10.3 and a
//! TAP relay 9.4–11 Gbit/s in the same runs.
//!
//! # Sending
//!
//! One `writev(2)` of `[vnet header][frame]` on the bound socket. The kernel parses the header
//! (`packet_snd`), so GSO super-frames leave whole and the veth's peer takes them as such; the
//! call returns the frame length **without** the header. `EAGAIN` (send buffer full) becomes
//! `WouldBlock`.
//!
//! # Carrier
//!
//! A veth's carrier follows its peer's administrative state; there is nothing to set on the
//! host end's socket. [`FrameEndpoint::set_carrier`] is a no-op returning `Ok`: the daemon shows
//! a wire's state to the pod by setting the veth link state with netlink.

use std::io::{self, IoSlice};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{BufMut, BytesMut};
use libc::{c_int, c_void};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, sockopt};

use super::{if_mtu, if_name, retry_eintr};
use crate::batch::MAX_FRAME;
use crate::endpoint::{FrameEndpoint, HalfIo};
use crate::vnet::{VNET_HDR_LEN, VnetBytes, VnetHdr};

/// Bytes of a block that are never packet data, bounded from above: the block descriptor
/// (48), the `tpacket3_hdr` + `sockaddr_ll` + alignment before the MAC header (≤ 128 with
/// the virtio-net header), and the 16-byte alignment of the packet's end.
const BLOCK_OVERHEAD: usize = 256;

/// Smallest block that holds a largest frame (see [`RingGeometry::to_req3`]).
pub const MIN_BLOCK_SIZE: usize = MAX_FRAME + BLOCK_OVERHEAD;

/// Largest ring accepted (all blocks together).
pub const MAX_RING_SIZE: usize = 1 << 30;

/// Length of the `tpacket3_hdr` plus the `sockaddr_ll` after it (`TPACKET3_HDRLEN`): the
/// smallest `tp_frame_size` the kernel accepts, rounded up to 16.
const TPACKET3_HDRLEN: usize = libc::TPACKET3_HDRLEN;

/// Geometry of a `TPACKET_V3` receive ring (see the module doc for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per block: a power of two, a multiple of the page size, at least
    /// [`MIN_BLOCK_SIZE`].
    pub block_size: u32,
    /// Blocks in the ring, at least 2 (the kernel fills one while we read another).
    pub block_count: u32,
    /// The kernel's accounting unit (`tp_frame_size`): a multiple of 16, at least the packet
    /// header length, at most the block size. Packets are not padded to it.
    pub frame_size: u32,
    /// A partly filled block is handed over after this many milliseconds (≥ 1).
    pub retire_blk_tov_ms: u32,
}

impl RingGeometry {
    pub const DEFAULT: Self = Self {
        block_size: 256 << 10,
        block_count: 16,
        frame_size: 2048,
        retire_blk_tov_ms: 1,
    };

    /// Bytes of the whole ring (the `mmap` length).
    pub fn ring_len(&self) -> usize {
        self.block_size as usize * self.block_count as usize
    }

    /// The `PACKET_RX_RING` request for this geometry on a machine with `page_size`-byte pages.
    ///
    /// # Errors
    /// [`RingError`] naming the parameter the kernel would refuse (or that would truncate a
    /// largest frame).
    pub fn to_req3(&self, page_size: usize) -> Result<libc::tpacket_req3, RingError> {
        let bs = self.block_size as usize;
        if !bs.is_power_of_two() || page_size == 0 || !bs.is_multiple_of(page_size) {
            return Err(RingError::BlockSize {
                block_size: self.block_size,
                page_size,
            });
        }
        if bs < MIN_BLOCK_SIZE {
            return Err(RingError::BlockTooSmall {
                block_size: self.block_size,
            });
        }
        if self.block_count < 2 {
            return Err(RingError::BlockCount(self.block_count));
        }
        if bs.saturating_mul(self.block_count as usize) > MAX_RING_SIZE {
            return Err(RingError::TooLarge {
                bytes: bs as u64 * u64::from(self.block_count),
            });
        }
        let fs = self.frame_size as usize;
        if fs < TPACKET3_HDRLEN || !fs.is_multiple_of(libc::TPACKET_ALIGNMENT) || fs > bs {
            return Err(RingError::FrameSize(self.frame_size));
        }
        if self.retire_blk_tov_ms == 0 {
            return Err(RingError::RetireTimeout);
        }
        // ≤ MAX_RING_SIZE / 16 by the checks above, so it fits a u32.
        let frame_nr = (bs / fs * self.block_count as usize) as u32;
        Ok(libc::tpacket_req3 {
            tp_block_size: self.block_size,
            tp_block_nr: self.block_count,
            tp_frame_size: self.frame_size,
            tp_frame_nr: frame_nr,
            tp_retire_blk_tov: self.retire_blk_tov_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        })
    }
}

impl Default for RingGeometry {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a [`RingGeometry`] is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("block size {block_size} is not a power of two multiple of the {page_size}-byte page")]
    BlockSize { block_size: u32, page_size: usize },
    #[error("block size {block_size} cannot hold a largest frame (needs {MIN_BLOCK_SIZE})")]
    BlockTooSmall { block_size: u32 },
    #[error("{0} blocks: the ring needs at least 2")]
    BlockCount(u32),
    #[error("ring of {bytes} bytes exceeds {MAX_RING_SIZE}")]
    TooLarge { bytes: u64 },
    #[error("frame size {0} is not a multiple of 16 between the header length and the block size")]
    FrameSize(u32),
    #[error("block retire timeout must be at least 1 ms")]
    RetireTimeout,
}

/// How a [`PacketSocket`] receives (see the module doc, "Two ways to receive").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// A `TPACKET_V3` mmap ring: few syscalls and wake-ups under load, up to
    /// `retire_blk_tov_ms` of added latency per frame when idle.
    Ring(RingGeometry),
    /// One `recvmsg(2)` per frame straight into the caller's buffer: no added latency, a
    /// syscall per frame; the socket buffer (`SO_RCVBUF`, forced when privileged) holds what
    /// arrives while the reader is busy.
    Read { rcvbuf: usize },
}

impl Default for RxMode {
    fn default() -> Self {
        RxMode::Ring(RingGeometry::DEFAULT)
    }
}

/// How to open a [`PacketSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketOptions {
    pub rx: RxMode,
    /// `PACKET_QDISC_BYPASS`: transmit straight to the driver, skipping the qdisc.
    pub qdisc_bypass: bool,
    /// `SO_SNDBUF` in bytes (forced past `wmem_max` when privileged); 0 keeps the default.
    pub sndbuf: usize,
}

impl Default for PacketOptions {
    fn default() -> Self {
        Self {
            rx: RxMode::default(),
            qdisc_bypass: false,
            sndbuf: 4 << 20,
        }
    }
}

/// Errors of the AF_PACKET layer, with the interface they concern.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("AF_PACKET ring: {0}")]
    Ring(#[from] RingError),
    #[error("AF_PACKET on {name}: no such interface in this network namespace")]
    NotFound { name: String },
    #[error("AF_PACKET on ifindex {ifindex}: {op}: {source}")]
    Io {
        op: &'static str,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

impl From<PacketError> for io::Error {
    fn from(e: PacketError) -> Self {
        let kind = match &e {
            PacketError::Ring(_) => io::ErrorKind::InvalidInput,
            PacketError::NotFound { .. } => io::ErrorKind::NotFound,
            PacketError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// What the receive side met, beyond the frames it returned. Plain counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames returned by `recv`.
    pub frames: u64,
    /// Blocks walked and given back.
    pub blocks: u64,
    /// Frames whose VLAN tag was put back from the out-of-band metadata.
    pub vlan_restored: u64,
    /// Frames cut by a block too small for them (dropped).
    pub truncated: u64,
    /// Outgoing frames met in the ring (dropped; `PACKET_IGNORE_OUTGOING` should make this 0).
    pub outgoing: u64,
    /// Packet headers that pointed outside their block (the rest of the block is skipped).
    pub malformed: u64,
}

/// What the kernel counted (`PACKET_STATISTICS`; reading resets them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames the socket accepted since the last read.
    pub packets: u32,
    /// Frames dropped because the ring was full.
    pub drops: u32,
    /// Times the ring was frozen (every block held by us).
    pub freeze_count: u32,
}

/// Offsets into the ring's structures (`linux/if_packet.h`), from libc's definitions.
mod layout {
    use std::mem::{offset_of, size_of};

    use libc::{sockaddr_ll, tpacket_block_desc, tpacket_hdr_v1, tpacket3_hdr};

    const BH1: usize = offset_of!(tpacket_block_desc, hdr);
    pub const BLOCK_STATUS: usize = BH1 + offset_of!(tpacket_hdr_v1, block_status);
    pub const BLOCK_NUM_PKTS: usize = BH1 + offset_of!(tpacket_hdr_v1, num_pkts);
    pub const BLOCK_FIRST_PKT: usize = BH1 + offset_of!(tpacket_hdr_v1, offset_to_first_pkt);
    pub const BLOCK_DESC_LEN: usize = size_of::<tpacket_block_desc>();

    pub const NEXT_OFFSET: usize = offset_of!(tpacket3_hdr, tp_next_offset);
    pub const SNAPLEN: usize = offset_of!(tpacket3_hdr, tp_snaplen);
    pub const LEN: usize = offset_of!(tpacket3_hdr, tp_len);
    pub const STATUS: usize = offset_of!(tpacket3_hdr, tp_status);
    pub const MAC: usize = offset_of!(tpacket3_hdr, tp_mac);
    const HV1: usize = offset_of!(tpacket3_hdr, hv1);
    pub const VLAN_TCI: usize = HV1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci);
    pub const VLAN_TPID: usize = HV1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid);
    /// `sockaddr_ll` follows the header at `TPACKET_ALIGN(sizeof(tpacket3_hdr))`.
    const SLL: usize = size_of::<tpacket3_hdr>().next_multiple_of(libc::TPACKET_ALIGNMENT);
    pub const PKTTYPE: usize = SLL + offset_of!(sockaddr_ll, sll_pkttype);
    /// Bytes of a packet's headers that must lie inside the block.
    pub const PKT_HDR_LEN: usize = PKTTYPE + 1;
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// A block's packet count and the offset of its first packet.
fn parse_block(block: &[u8]) -> Result<(u32, usize), Malformed> {
    if block.len() < layout::BLOCK_DESC_LEN {
        return Err(Malformed);
    }
    let n = u32_at(block, layout::BLOCK_NUM_PKTS);
    let first = u32_at(block, layout::BLOCK_FIRST_PKT) as usize;
    if n > 0 && (first < layout::BLOCK_DESC_LEN || first >= block.len()) {
        return Err(Malformed);
    }
    Ok((n, first))
}

/// A packet header pointed outside its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed;

/// One packet of a block, checked to lie inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RingPacket {
    /// Offset of the next packet from this one (0 for the last).
    next_offset: usize,
    /// The virtio-net header: `vnet_at..vnet_at + 10` of the block.
    vnet_at: usize,
    /// The frame: `frame_at..frame_at + snaplen` of the block.
    frame_at: usize,
    snaplen: usize,
    /// Length on the wire (`> snaplen` if the frame was cut).
    len: usize,
    /// The tag the kernel took out of the frame: (TPID, TCI).
    vlan: Option<(u16, u16)>,
    pkttype: u8,
}

/// Parses the packet at `at` in `block`, checking every range it names.
fn parse_packet(block: &[u8], at: usize) -> Result<RingPacket, Malformed> {
    let hdr_end = at.checked_add(layout::PKT_HDR_LEN).ok_or(Malformed)?;
    if hdr_end > block.len() {
        return Err(Malformed);
    }
    let p = &block[at..];
    let mac = usize::from(u16_at(p, layout::MAC));
    let snaplen = u32_at(p, layout::SNAPLEN) as usize;
    if mac < layout::PKT_HDR_LEN + VNET_HDR_LEN || mac + snaplen > p.len() {
        return Err(Malformed);
    }
    let status = u32_at(p, layout::STATUS);
    let vlan = (status & libc::TP_STATUS_VLAN_VALID != 0).then(|| {
        let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
            u16_at(p, layout::VLAN_TPID)
        } else {
            crate::vnet::ETHERTYPE_VLAN
        };
        // The TCI is a u32 field holding a 16-bit value.
        (tpid, u32_at(p, layout::VLAN_TCI) as u16)
    });
    Ok(RingPacket {
        next_offset: u32_at(p, layout::NEXT_OFFSET) as usize,
        vnet_at: at + mac - VNET_HDR_LEN,
        frame_at: at + mac,
        snaplen,
        len: u32_at(p, layout::LEN) as usize,
        vlan,
        pkttype: p[layout::PKTTYPE],
    })
}

/// Appends `[vnet][frame]` to `buf`, first putting a VLAN tag the kernel took out of band back
/// after the MAC addresses (and moving the header's offsets past it). Returns the frame length
/// as appended.
fn append_frame(buf: &mut BytesMut, vnet: &[u8], frame: &[u8], vlan: Option<(u16, u16)>) -> usize {
    const MACS: usize = 12;
    match vlan {
        Some((tpid, tci)) if frame.len() >= MACS => {
            let mut hdr = VnetHdr::new_unchecked(VnetBytes::try_from(vnet).unwrap_or_default());
            shift_vnet_offsets(&mut hdr, 4);
            buf.reserve(VNET_HDR_LEN + frame.len() + 4);
            buf.extend_from_slice(&hdr.into_inner());
            buf.extend_from_slice(&frame[..MACS]);
            buf.extend_from_slice(&tpid.to_be_bytes());
            buf.extend_from_slice(&tci.to_be_bytes());
            buf.extend_from_slice(&frame[MACS..]);
            frame.len() + 4
        }
        _ => {
            buf.reserve(VNET_HDR_LEN + frame.len());
            buf.extend_from_slice(vnet);
            buf.extend_from_slice(frame);
            frame.len()
        }
    }
}

/// Moves the offsets of a virtio-net header that count from the frame's start by `by` bytes
/// (bytes inserted before them): `csum_start` when a checksum is pending, `hdr_len` when set.
fn shift_vnet_offsets(hdr: &mut VnetHdr<VnetBytes>, by: u16) {
    if hdr.needs_csum() {
        let v = hdr.csum_start().saturating_add(by);
        hdr.set_csum_start(v);
    }
    if hdr.hdr_len() != 0 {
        let v = hdr.hdr_len().saturating_add(by);
        hdr.set_hdr_len(v);
    }
}

/// The `mmap`ed receive ring. Unmapped on drop.
#[derive(Debug)]
struct Ring {
    base: NonNull<u8>,
    len: usize,
    block_size: usize,
    block_count: usize,
}

// SAFETY: the mapping is owned by this value alone (nothing else holds a pointer into it), and
// the kernel side needs no particular thread, so moving it to another thread is sound.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: BorrowedFd<'_>, geometry: &RingGeometry) -> io::Result<Ring> {
        let len = geometry.ring_len();
        // SAFETY: a fresh shared mapping of the socket's ring (set up by PACKET_RX_RING with
        // exactly this length); the kernel picks the address, so no existing memory is
        // affected. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Ring {
            base,
            len,
            block_size: geometry.block_size as usize,
            block_count: geometry.block_count as usize,
        })
    }

    /// The status word of block `i` (`i < block_count`), shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < self.block_count);
        // SAFETY: block `i` starts inside the mapping (`i < block_count`) at a page-aligned
        // offset, so the status word at offset 8 is in bounds and 4-byte aligned. The mapping
        // lives as long as `self`. The kernel and we access this word only as a whole 32-bit
        // value (the kernel with plain stores after a write barrier, we atomically), which is
        // the contract every TPACKET_V3 reader relies on.
        unsafe {
            AtomicU32::from_ptr(
                self.base
                    .as_ptr()
                    .add(i * self.block_size + layout::BLOCK_STATUS)
                    .cast::<u32>(),
            )
        }
    }

    /// Block `i`'s bytes.
    ///
    /// # Safety
    /// Block `i` must be handed over to us (its status read as `TP_STATUS_USER` with `Acquire`)
    /// and stay so while the slice lives: the kernel does not write a block it handed over until
    /// we store `TP_STATUS_KERNEL`, so nothing mutates the bytes under the slice.
    unsafe fn user_block(&self, i: usize) -> &[u8] {
        debug_assert!(i < self.block_count);
        // SAFETY: in bounds of the mapping (`i < block_count`), which lives as long as `self`;
        // no concurrent writes by the caller's contract.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(i * self.block_size), self.block_size)
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping `map` created, and no slice or reference
        // into it outlives `self` (they all borrow it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

/// Where the reader is in the block it holds.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    offset: usize,
    left: u32,
}

/// The reader of a `TPACKET_V3` ring.
#[derive(Debug)]
struct RingReader {
    ring: Ring,
    /// The block the reader is at (handed over to us iff `cursor` is `Some`).
    block: usize,
    cursor: Option<Cursor>,
}

impl RingReader {
    /// Gives the current block back to the kernel and moves to the next.
    fn release_block(&mut self, stats: &mut PacketStats) {
        self.ring
            .status(self.block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.cursor = None;
        self.block = (self.block + 1) % self.ring.block_count;
        stats.blocks += 1;
    }

    /// Copies the next packet of the block handed over to us into `buf`; gives the block back
    /// after its last packet. `None` when the next block is still the kernel's.
    fn recv(&mut self, buf: &mut BytesMut, stats: &mut PacketStats) -> Option<usize> {
        loop {
            let cursor = match self.cursor {
                Some(c) => c,
                None => {
                    if self.ring.status(self.block).load(Ordering::Acquire) & libc::TP_STATUS_USER
                        == 0
                    {
                        return None;
                    }
                    // SAFETY: the status just read TP_STATUS_USER with Acquire: the block is
                    // ours until `release_block`, which happens after the slice's last use.
                    let block = unsafe { self.ring.user_block(self.block) };
                    match parse_block(block) {
                        Ok((left, offset)) => {
                            let c = Cursor { offset, left };
                            self.cursor = Some(c);
                            c
                        }
                        Err(Malformed) => {
                            stats.malformed += 1;
                            self.release_block(stats);
                            continue;
                        }
                    }
                }
            };
            if cursor.left == 0 {
                self.release_block(stats);
                continue;
            }
            // SAFETY: `cursor` is `Some`, so the block is ours (read TP_STATUS_USER with Acquire
            // when the cursor was set, not released since).
            let block = unsafe { self.ring.user_block(self.block) };
            let Ok(pkt) = parse_packet(block, cursor.offset) else {
                stats.malformed += 1;
                self.release_block(stats);
                continue;
            };
            let next = Cursor {
                offset: cursor.offset.saturating_add(pkt.next_offset),
                left: cursor.left - 1,
            };
            let mut appended = None;
            if pkt.pkttype == libc::PACKET_OUTGOING {
                stats.outgoing += 1;
            } else if pkt.snaplen < pkt.len {
                stats.truncated += 1;
            } else {
                let vnet = &block[pkt.vnet_at..pkt.frame_at];
                let frame = &block[pkt.frame_at..pkt.frame_at + pkt.snaplen];
                appended = Some(append_frame(buf, vnet, frame, pkt.vlan));
                if pkt.vlan.is_some() {
                    stats.vlan_restored += 1;
                }
            }
            if next.left == 0 {
                self.release_block(stats);
            } else {
                self.cursor = Some(next);
            }
            if appended.is_some() {
                return appended;
            }
        }
    }
}

/// The receive side of a [`PacketSocket`]. A ring is unmapped before the socket closes (it is
/// the first field of the socket).
#[derive(Debug)]
enum Rx {
    Ring(RingReader),
    Read,
}

/// Control-message buffer for `PACKET_AUXDATA`, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// One `recvmsg(2)` with `MSG_TRUNC` on an AF_PACKET socket: the frame into `iov`, control
/// messages into `control` (aligned for `cmsghdr` by its owner) and, if given, the sender's
/// link-layer address into `name`. `EINTR` is retried; `Ok(None)`: nothing is waiting (the
/// socket is non-blocking). Returns the frame's real length (more than `iov.iov_len` when it
/// was cut) and the length of control data written. Shared by the wire's read mode and the
/// capture tap ([`super::capture`]).
pub(super) fn recvmsg_trunc(
    fd: BorrowedFd<'_>,
    iov: &mut libc::iovec,
    control: &mut [u8],
    mut name: Option<&mut libc::sockaddr_ll>,
) -> io::Result<Option<(usize, usize)>> {
    loop {
        // SAFETY: msghdr is a plain C struct of integers and pointers; all-zero (no name,
        // no iovecs, no control buffer) is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        if let Some(sll) = name.as_deref_mut() {
            msg.msg_name = (sll as *mut libc::sockaddr_ll).cast::<c_void>();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        }
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = control.len();
        // SAFETY: the iovec points at `iov_len` writable bytes its caller owns, the control
        // pointer at `control` and the name (if any) at a `sockaddr_ll`, all live, unaliased and
        // writable for the whole call (the name through the exclusive borrow in `name`);
        // the kernel writes no more than their lengths.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                // Retried: see `TapQueue::recv`.
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
        // Non-negative by the check above.
        return Ok(Some((n as usize, msg.msg_controllen.min(control.len()))));
    }
}

/// The data of the first control message of `level`/`ty` in `control` (as `recvmsg` filled
/// it), walked with the kernel's `CMSG_NXTHDR` rules; `None` if absent or malformed.
pub(super) fn find_cmsg(control: &[u8], level: i32, ty: i32) -> Option<&[u8]> {
    let hdr_len = size_of::<libc::cmsghdr>();
    let mut at = 0usize;
    while at + hdr_len <= control.len() {
        let c = &control[at..];
        let len = usize::from_ne_bytes(c[..size_of::<usize>()].try_into().ok()?);
        if len < hdr_len || len > c.len() {
            return None;
        }
        let field = |off: usize| -> Option<i32> {
            Some(i32::from_ne_bytes(c[off..][..4].try_into().ok()?))
        };
        if field(offset_of!(libc::cmsghdr, cmsg_level))? == level
            && field(offset_of!(libc::cmsghdr, cmsg_type))? == ty
        {
            return Some(&c[hdr_len..len]);
        }
        at += len.next_multiple_of(size_of::<usize>());
    }
    None
}

/// The VLAN tag (TPID, TCI) in a `PACKET_AUXDATA` control message, if the kernel took one out
/// of the frame.
pub(super) fn parse_auxdata(control: &[u8]) -> Option<(u16, u16)> {
    let data = find_cmsg(control, libc::SOL_PACKET, libc::PACKET_AUXDATA)?;
    if data.len() < size_of::<libc::tpacket_auxdata>() {
        return None;
    }
    let status = u32_at(data, offset_of!(libc::tpacket_auxdata, tp_status));
    if status & libc::TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    let tci = u16_at(data, offset_of!(libc::tpacket_auxdata, tp_vlan_tci));
    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
        u16_at(data, offset_of!(libc::tpacket_auxdata, tp_vlan_tpid))
    } else {
        crate::vnet::ETHERTYPE_VLAN
    };
    Some((tpid, tci))
}

/// Puts a VLAN tag back into the `[vnet][frame]` record at `start..` of `buf` (after the MAC
/// addresses), moving the header's offsets past it. Returns the new frame length.
fn insert_tag_in_place(buf: &mut BytesMut, start: usize, (tpid, tci): (u16, u16)) -> usize {
    const MACS: usize = 12;
    let frame_len = buf.len() - start - VNET_HDR_LEN;
    if frame_len < MACS {
        return frame_len;
    }
    let at = start + VNET_HDR_LEN + MACS;
    buf.extend_from_slice(&[0; 4]);
    let end = buf.len();
    buf.copy_within(at..end - 4, at + 4);
    buf[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&tci.to_be_bytes());
    let mut hdr = VnetHdr::new_unchecked(
        VnetBytes::try_from(&buf[start..start + VNET_HDR_LEN]).unwrap_or_default(),
    );
    shift_vnet_offsets(&mut hdr, 4);
    buf[start..start + VNET_HDR_LEN].copy_from_slice(&hdr.into_inner());
    frame_len + 4
}

/// An AF_PACKET socket bound to one interface, with the virtio-net header and a `TPACKET_V3`
/// receive ring or plain reads (see the module doc for the set-up, the ring layout and the
/// parameters).
///
/// Opened in the calling thread's network namespace; it stays bound to that interface if the
/// thread moves on. Open it on a thread inside the node's namespace with
/// [`super::netns::in_netns`].
#[derive(Debug)]
pub struct PacketSocket {
    // Field order is drop order: a ring is unmapped before the socket closes.
    rx: Rx,
    fd: OwnedFd,
    ifindex: u32,
    name: String,
    mtu: u32,
    stats: PacketStats,
}

pub(super) fn setsockopt_raw<T>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: `v` points at a live, initialised `T` for the whole call and the length passed
    // is its size, so the kernel reads only valid memory. Callers pass the type each option
    // expects (an int, a tpacket_req3).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast::<c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096)
}

impl PacketSocket {
    /// Opens a socket on the interface `ifindex` of the calling thread's network namespace.
    ///
    /// The interface should be up: binding to a down interface succeeds but leaves `ENETDOWN`
    /// pending on the socket ([`take_error`](Self::take_error)), and so does the interface going
    /// down later.
    ///
    /// # Errors
    /// [`PacketError::Ring`] for a refused geometry; [`PacketError::Io`] for a failed syscall
    /// (`EPERM` without `CAP_NET_RAW`, `ENODEV` for an unknown index, `ENOMEM` for a ring the
    /// kernel cannot allocate).
    pub fn open(ifindex: u32, opts: &PacketOptions) -> Result<PacketSocket, PacketError> {
        let req = match opts.rx {
            RxMode::Ring(g) => Some((g, g.to_req3(page_size())?)),
            RxMode::Read { .. } => None,
        };
        let err = |op: &'static str| {
            move |source: io::Error| PacketError::Io {
                op,
                ifindex,
                source,
            }
        };
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err("socket")(e.into()))?;
        let one: c_int = 1;
        setsockopt_raw(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)
            .map_err(err("PACKET_VNET_HDR"))?;
        setsockopt_raw(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
        )
        .map_err(err("PACKET_IGNORE_OUTGOING"))?;
        let rx = match (req, opts.rx) {
            (Some((geometry, req)), _) => {
                let version = libc::tpacket_versions::TPACKET_V3 as c_int;
                setsockopt_raw(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VERSION, &version)
                    .map_err(err("PACKET_VERSION"))?;
                setsockopt_raw(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
                    .map_err(err("PACKET_RX_RING"))?;
                let ring = Ring::map(fd.as_fd(), &geometry).map_err(err("mmap"))?;
                Rx::Ring(RingReader {
                    ring,
                    block: 0,
                    cursor: None,
                })
            }
            (None, RxMode::Read { rcvbuf }) => {
                setsockopt_raw(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)
                    .map_err(err("PACKET_AUXDATA"))?;
                if rcvbuf > 0 {
                    socket::setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf)
                        .or_else(|_| socket::setsockopt(&fd, sockopt::RcvBuf, &rcvbuf))
                        .map_err(|e| err("SO_RCVBUF")(e.into()))?;
                }
                Rx::Read
            }
            (None, RxMode::Ring(_)) => unreachable!("a ring mode always has a request"),
        };
        if opts.qdisc_bypass {
            setsockopt_raw(
                fd.as_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one,
            )
            .map_err(err("PACKET_QDISC_BYPASS"))?;
        }
        if opts.sndbuf > 0 {
            // Forcing needs CAP_NET_ADMIN; without it the size is capped at wmem_max.
            socket::setsockopt(&fd, sockopt::SndBufForce, &opts.sndbuf)
                .or_else(|_| socket::setsockopt(&fd, sockopt::SndBuf, &opts.sndbuf))
                .map_err(|e| err("SO_SNDBUF")(e.into()))?;
        }
        bind(fd.as_fd(), ifindex).map_err(err("bind"))?;
        let name = if_name(fd.as_fd(), ifindex).map_err(err("SIOCGIFNAME"))?;
        let mtu = if_mtu(fd.as_fd(), &name).map_err(err("SIOCGIFMTU"))?;
        Ok(PacketSocket {
            rx,
            fd,
            ifindex,
            name,
            mtu,
            stats: PacketStats::default(),
        })
    }

    /// [`open`](Self::open) by interface name, resolved in the calling thread's namespace.
    ///
    /// # Errors
    /// [`PacketError::NotFound`] if there is no such interface; else as [`open`](Self::open).
    pub fn open_by_name(name: &str, opts: &PacketOptions) -> Result<PacketSocket, PacketError> {
        let ifindex = nix::net::if_::if_nametoindex(name).map_err(|_| PacketError::NotFound {
            name: name.to_owned(),
        })?;
        Self::open(ifindex, opts)
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's name when the socket was opened (or at the last
    /// [`refresh_mtu`](Self::refresh_mtu)).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> PacketStats {
        self.stats
    }

    /// The kernel's counters since the last call (`PACKET_STATISTICS` resets them).
    ///
    /// # Errors
    /// `getsockopt` failed.
    pub fn kernel_stats(&self) -> io::Result<KernelStats> {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `st`, a live local of that size,
        // and updates `len`, a live local.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast::<c_void>(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelStats {
            packets: st.tp_packets,
            drops: st.tp_drops,
            freeze_count: st.tp_freeze_q_cnt,
        })
    }

    /// Takes the socket's pending error (`SO_ERROR`), e.g. `ENETDOWN` after the interface went
    /// down; until taken, the socket polls ready.
    ///
    /// # Errors
    /// `getsockopt` failed.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        let e = socket::getsockopt(&self.fd, sockopt::SocketError)?;
        Ok((e != 0).then(|| io::Error::from_raw_os_error(e)))
    }

    /// Reads the interface's name and MTU again (through the socket, so in the namespace the
    /// socket was opened in, from any thread).
    ///
    /// # Errors
    /// The interface is gone, or an ioctl failed.
    pub fn refresh_mtu(&mut self) -> io::Result<u32> {
        let name = if_name(self.fd.as_fd(), self.ifindex)?;
        self.mtu = if_mtu(self.fd.as_fd(), &name)?;
        self.name = name;
        Ok(self.mtu)
    }

    /// [`RxMode::Read`]: one `recvmsg(2)` into the spare capacity of `buf`, with the VLAN tag
    /// from `PACKET_AUXDATA` put back.
    fn recv_read(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        loop {
            // The room `BatchEncoder::push_with` guarantees (so this never reallocates there);
            // 4 bytes of it stay free for a tag put back. Any frame that can arrive still fits:
            // a 64 KiB GSO frame plus its Ethernet header is 250 bytes short of MAX_FRAME.
            buf.reserve(VNET_HDR_LEN + MAX_FRAME);
            let start = buf.len();
            let spare = buf.spare_capacity_mut();
            let cap = spare.len() - 4;
            let mut iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast::<c_void>(),
                iov_len: cap,
            };
            let mut control = CmsgBuf([0; 64]);
            let Some((n, controllen)) =
                recvmsg_trunc(self.fd.as_fd(), &mut iov, &mut control.0, None)?
            else {
                return Ok(None);
            };
            if n > cap {
                // MSG_TRUNC reports the real length: the frame did not fit and was cut.
                self.stats.truncated += 1;
                continue;
            }
            if n < VNET_HDR_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("AF_PACKET read of {n} bytes is shorter than the virtio-net header"),
                ));
            }
            let tag = parse_auxdata(&control.0[..controllen]);
            // SAFETY: the kernel initialised the first `n` bytes of the spare capacity
            // (recvmsg returned `n <= cap <= spare.len()`).
            unsafe { buf.advance_mut(n) };
            let frame_len = match tag {
                Some(tag) => {
                    self.stats.vlan_restored += 1;
                    insert_tag_in_place(buf, start, tag)
                }
                None => n - VNET_HDR_LEN,
            };
            return Ok(Some(frame_len));
        }
    }
}

pub(super) fn bind(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is a plain C struct of integers and a byte array; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    // SAFETY: `sll` is a live, initialised sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl FrameEndpoint for PacketSocket {
    /// Ring: copies the next packet of the block handed over to us into `buf` and gives the
    /// block back after its last packet; `Ok(None)` when the next block is still the kernel's.
    /// Read: one `recvmsg` into `buf`; `Ok(None)` on `EAGAIN`.
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let n = match &mut self.rx {
            Rx::Ring(r) => r.recv(buf, &mut self.stats),
            Rx::Read => self.recv_read(buf)?,
        };
        if n.is_some() {
            self.stats.frames += 1;
        }
        Ok(n)
    }

    /// One `writev(2)` of `[vnet][frame]`; the kernel returns the frame length alone.
    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        let n = retry_eintr(|| {
            nix::sys::uio::writev(&self.fd, &[IoSlice::new(vnet), IoSlice::new(frame)])
        })?;
        if n < frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short AF_PACKET send: {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    /// Nothing to do: see the module doc ("Carrier").
    fn set_carrier(&mut self, _up: bool) -> io::Result<()> {
        Ok(())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }
}

// Keep the offsets honest against the kernel's layout (linux/if_packet.h).
const _: () = {
    assert!(layout::BLOCK_STATUS == 8);
    assert!(layout::BLOCK_NUM_PKTS == 12);
    assert!(layout::BLOCK_FIRST_PKT == 16);
    assert!(layout::BLOCK_DESC_LEN == 48);
    assert!(layout::MAC == 24);
    assert!(layout::PKTTYPE == 58);
    assert!(size_of::<libc::tpacket3_hdr>() == 48);
    assert!(offset_of!(libc::tpacket3_hdr, tp_next_offset) == 0);
};

/// An AF_PACKET socket on a veth's host end as a half. Its carrier is the host end's
/// administrative state, which the creator applies (netlink): `carrier` is told the wanted
/// state and must not block.
pub struct PacketHalf {
    socket: Mutex<PacketSocket>,
    writer: OwnedFd,
    carrier: Box<dyn Fn(bool) + Send + Sync>,
}

impl std::fmt::Debug for PacketHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketHalf").finish_non_exhaustive()
    }
}

impl PacketHalf {
    /// # Errors
    /// The socket has no fd or it cannot be duplicated.
    pub fn new(socket: PacketSocket, carrier: Box<dyn Fn(bool) + Send + Sync>) -> io::Result<Self> {
        let writer = super::dup_fd(socket.readiness_fd(), "AF_PACKET socket")?;
        Ok(Self {
            socket: Mutex::new(socket),
            writer,
            carrier,
        })
    }
}

/// One queue: an AF_PACKET half ignores the queue index (`--wire-queues` applies to TAPs).
impl HalfIo for PacketHalf {
    fn dup_fd(&self, _queue: usize) -> io::Result<OwnedFd> {
        self.writer.try_clone()
    }

    fn recv(&self, _queue: usize, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut s = self
            .socket
            .lock()
            .map_err(|_| io::Error::other("packet socket lock poisoned"))?;
        match s.recv(buf) {
            Ok(n) => Ok(n),
            // The host end went down (the carrier): the socket reports it once, as an error of
            // the next read. No frame was lost; nothing is ready.
            Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => Ok(None),
            Err(e) => {
                // Take any other pending error too, or the socket polls ready forever.
                let _ = s.take_error();
                Err(e)
            }
        }
    }

    fn send(&self, _queue: usize, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        // The kernel returns the frame's length, without the header.
        let iov = [IoSlice::new(vnet), IoSlice::new(frame)];
        let n = nix::sys::uio::writev(&self.writer, &iov).map_err(io::Error::from)?;
        if n < frame.len() {
            return Err(io::Error::other(format!(
                "short AF_PACKET write: {n} bytes"
            )));
        }
        Ok(())
    }

    fn set_carrier(&self, up: bool) -> io::Result<()> {
        (self.carrier)(up);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
