//! Zero-copy views of the two headers a wire endpoint reads and writes: the virtio-net header
//! that TAP (`IFF_VNET_HDR`) and AF_PACKET (`PACKET_VNET_HDR`) put before every frame, and the
//! Ethernet header at the start of the frame.
//!
//! Design (smoltcp `wire/ethernet.rs`): a view wraps any `T: AsRef<[u8]>` (a slice, a `Bytes`, a
//! `[u8; 10]`), checks the length **once** in `new_checked`, then reads each field from a named
//! byte range. Nothing is copied or parsed up front; setters exist where `T: AsMut<[u8]>`.
//!
//! # The virtio-net header
//!
//! The 10-byte `struct virtio_net_hdr` (`include/uapi/linux/virtio_net.h`):
//!
//! ```text
//! offset  size  field
//!      0     1  flags        VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID
//!      1     1  gso_type     VIRTIO_NET_HDR_GSO_* (| VIRTIO_NET_HDR_GSO_ECN)
//!      2     2  hdr_len      length of the headers to copy into each segment
//!      4     2  gso_size     bytes of payload per segment (the MSS)
//!      6     2  csum_start   where checksumming starts, from the frame's first byte
//!      8     2  csum_offset  where to store the checksum, from csum_start
//! ```
//!
//! We always use the 10-byte form (`TUNSETVNETHDRSZ` = 10, no `num_buffers`).
//!
//! **Byte order.** The 16-bit fields are `__virtio16`. TAP interprets them as little-endian when
//! `TUNSETVNETLE` is set and otherwise in the legacy virtio order, which is the host's native
//! order; AF_PACKET always uses the native order. On the little-endian hosts we run on (x86-64,
//! aarch64) both mean little-endian, so this view reads and writes **little-endian**, and the batch
//! format carries the header bytes unchanged. A big-endian host would have to set `TUNSETVNETLE`
//! on its TAPs and byte-swap AF_PACKET headers in `sys`; none is supported today.
//!
//! Invariants: a `VnetHdr` / `EthernetFrame` built by `new_checked` has at least
//! [`VNET_HDR_LEN`] / [`ETHERNET_HEADER_LEN`] bytes, so no accessor panics. `new_unchecked`
//! skips that check and its accessors panic on a short buffer.

use std::fmt;
use std::ops::Range;

/// Length of the virtio-net header used on every wire (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// The virtio-net header bytes as carried in a batch and handed to endpoints.
pub type VnetBytes = [u8; VNET_HDR_LEN];

/// A header that asks for nothing: no checksum to complete, no segmentation.
pub const VNET_HDR_NONE: VnetBytes = [0; VNET_HDR_LEN];

/// `flags`: the checksum at `csum_start + csum_offset` must be completed (CHECKSUM_PARTIAL).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified (set by the kernel on frames it hands us).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO super-frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation (TSO4).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO, legacy).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation (TSO6).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO, kernel ≥ 6.2).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN (CWR must be set on the first only).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Length of an Ethernet II header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;

mod field {
    use std::ops::Range;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Why a header view or a header's contents were refused. Small and `Copy`: it is counted on the
/// hot path, not logged per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The buffer is shorter than the header.
    #[error("buffer of {len} bytes is shorter than the {need}-byte header")]
    Truncated { len: usize, need: usize },
    /// `gso_type` (without the ECN bit) is not one the kernel accepts.
    #[error("unknown virtio-net gso_type {0:#04x}")]
    UnknownGsoType(u8),
    /// A GSO super-frame with `gso_size` 0 (the kernel refuses it).
    #[error("virtio-net GSO frame with gso_size 0")]
    ZeroGsoSize,
    /// `NEEDS_CSUM` with a checksum field that does not lie inside the frame.
    #[error(
        "virtio-net checksum at {csum_start}+{csum_offset} does not fit a {frame_len}-byte frame"
    )]
    CsumOutOfFrame {
        csum_start: u16,
        csum_offset: u16,
        frame_len: usize,
    },
    /// `hdr_len` is longer than the frame.
    #[error("virtio-net hdr_len {hdr_len} exceeds the {frame_len}-byte frame")]
    HdrLenOutOfFrame { hdr_len: u16, frame_len: usize },
}

fn read_u16_le(b: &[u8], r: Range<usize>) -> u16 {
    let s = &b[r];
    u16::from_le_bytes([s[0], s[1]])
}

fn write_u16_le(b: &mut [u8], r: Range<usize>, v: u16) {
    b[r].copy_from_slice(&v.to_le_bytes());
}

/// A view of a virtio-net header (see the module doc for layout and byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VnetHdr<T> {
    /// Wraps `buffer` without checking its length; accessors panic if it is shorter than
    /// [`VNET_HDR_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header. Extra bytes (the frame) are
    /// allowed and ignored.
    ///
    /// # Errors
    /// [`ViewError::Truncated`] if `buffer` is shorter than [`VNET_HDR_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, ViewError> {
        let v = Self::new_unchecked(buffer);
        v.check_len()?;
        Ok(v)
    }

    /// # Errors
    /// [`ViewError::Truncated`] if the buffer is shorter than [`VNET_HDR_LEN`].
    pub fn check_len(&self) -> Result<(), ViewError> {
        let len = self.buffer.as_ref().len();
        if len < VNET_HDR_LEN {
            return Err(ViewError::Truncated {
                len,
                need: VNET_HDR_LEN,
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The header's 10 bytes, copied.
    pub fn to_bytes(&self) -> VnetBytes {
        let mut out = VNET_HDR_NONE;
        out.copy_from_slice(&self.buffer.as_ref()[..VNET_HDR_LEN]);
        out
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// `gso_type` as stored, including the [`VIRTIO_NET_HDR_GSO_ECN`] bit.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    pub fn hdr_len(&self) -> u16 {
        read_u16_le(self.buffer.as_ref(), field::HDR_LEN)
    }

    pub fn gso_size(&self) -> u16 {
        read_u16_le(self.buffer.as_ref(), field::GSO_SIZE)
    }

    pub fn csum_start(&self) -> u16 {
        read_u16_le(self.buffer.as_ref(), field::CSUM_START)
    }

    pub fn csum_offset(&self) -> u16 {
        read_u16_le(self.buffer.as_ref(), field::CSUM_OFFSET)
    }

    /// The frame's L4 checksum is partial and must be completed by whoever transmits it.
    pub fn needs_csum(&self) -> bool {
        self.flags() & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The frame is a GSO super-frame that the receiver (or its NIC) segments.
    pub fn is_gso(&self) -> bool {
        self.gso_type() & !VIRTIO_NET_HDR_GSO_ECN != VIRTIO_NET_HDR_GSO_NONE
    }

    /// Checks the header against the frame it describes the way the kernel's
    /// `virtio_net_hdr_to_skb()` and `tun_get_user()` do, so that a frame from a peer can be
    /// refused (and counted) before a TAP or AF_PACKET write fails with `EINVAL`.
    ///
    /// # Errors
    /// [`ViewError::UnknownGsoType`], [`ViewError::ZeroGsoSize`], [`ViewError::CsumOutOfFrame`]
    /// or [`ViewError::HdrLenOutOfFrame`].
    pub fn check_frame(&self, frame_len: usize) -> Result<(), ViewError> {
        let gso = self.gso_type() & !VIRTIO_NET_HDR_GSO_ECN;
        match gso {
            VIRTIO_NET_HDR_GSO_NONE => {}
            VIRTIO_NET_HDR_GSO_TCPV4
            | VIRTIO_NET_HDR_GSO_UDP
            | VIRTIO_NET_HDR_GSO_TCPV6
            | VIRTIO_NET_HDR_GSO_UDP_L4 => {
                if self.gso_size() == 0 {
                    return Err(ViewError::ZeroGsoSize);
                }
            }
            _ => return Err(ViewError::UnknownGsoType(self.gso_type())),
        }
        if self.needs_csum() {
            let (start, off) = (self.csum_start(), self.csum_offset());
            // The 2-byte checksum field must lie inside the frame.
            if usize::from(start) + usize::from(off) + 2 > frame_len {
                return Err(ViewError::CsumOutOfFrame {
                    csum_start: start,
                    csum_offset: off,
                    frame_len,
                });
            }
        }
        if usize::from(self.hdr_len()) > frame_len {
            return Err(ViewError::HdrLenOutOfFrame {
                hdr_len: self.hdr_len(),
                frame_len,
            });
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHdr<T> {
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_gso_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = v;
    }

    pub fn set_hdr_len(&mut self, v: u16) {
        write_u16_le(self.buffer.as_mut(), field::HDR_LEN, v);
    }

    pub fn set_gso_size(&mut self, v: u16) {
        write_u16_le(self.buffer.as_mut(), field::GSO_SIZE, v);
    }

    pub fn set_csum_start(&mut self, v: u16) {
        write_u16_le(self.buffer.as_mut(), field::CSUM_START, v);
    }

    pub fn set_csum_offset(&mut self, v: u16) {
        write_u16_le(self.buffer.as_mut(), field::CSUM_OFFSET, v);
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A view of an Ethernet II frame: destination and source MAC, EtherType (big-endian, network
/// order), then the payload. VLAN tags are not interpreted: a tagged frame shows
/// [`ETHERTYPE_VLAN`] and the tag at the start of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length; accessors panic if it is shorter than
    /// [`ETHERNET_HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// # Errors
    /// [`ViewError::Truncated`] if `buffer` is shorter than [`ETHERNET_HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, ViewError> {
        let v = Self::new_unchecked(buffer);
        v.check_len()?;
        Ok(v)
    }

    /// # Errors
    /// [`ViewError::Truncated`] if the buffer is shorter than [`ETHERNET_HEADER_LEN`].
    pub fn check_len(&self) -> Result<(), ViewError> {
        let len = self.buffer.as_ref().len();
        if len < ETHERNET_HEADER_LEN {
            return Err(ViewError::Truncated {
                len,
                need: ETHERNET_HEADER_LEN,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddr {
        MacAddr(mac_at(self.buffer.as_ref(), field::DST))
    }

    pub fn src_addr(&self) -> MacAddr {
        MacAddr(mac_at(self.buffer.as_ref(), field::SRC))
    }

    pub fn ethertype(&self) -> u16 {
        let s = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([s[0], s[1]])
    }

    /// Everything after the 14-byte header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ETHERNET_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, v: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&v.0);
    }

    pub fn set_src_addr(&mut self, v: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&v.0);
    }

    pub fn set_ethertype(&mut self, v: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&v.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[ETHERNET_HEADER_LEN..]
    }
}

fn mac_at(b: &[u8], r: Range<usize>) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&b[r]);
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
