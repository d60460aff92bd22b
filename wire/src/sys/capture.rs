//! A passive AF_PACKET tap on one interface for live capture: [`CaptureSocket`].
//!
//! Unlike [`super::afpacket::PacketSocket`] (an endpoint that carries a link's frames), this
//! socket only **observes**: the kernel hands it a clone of every frame the interface sends or
//! receives, next to — not in the path of — the link. If the socket's buffer is full the kernel
//! drops the clone for this socket only (counted in `PACKET_STATISTICS`), so a slow or stalled
//! capture never slows or loses a frame of the link.
//!
//! # Set-up
//!
//! 1. `socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)`: protocol 0, so nothing
//!    arrives before `bind` (no frame of another interface).
//! 2. No `PACKET_VNET_HDR` (a capture wants the frame as on the wire, nothing before it) and no
//!    `PACKET_IGNORE_OUTGOING` (both directions are wanted: `sll_pkttype == PACKET_OUTGOING`
//!    marks what the interface sent).
//! 3. `PACKET_AUXDATA`: the receive path takes 802.1Q/802.1ad tags out of the frame before
//!    AF_PACKET sees it; the tag comes back as metadata and is put back after the MAC addresses
//!    (the same [`super::afpacket`] helper parses it), so a capture shows the frame as sent.
//! 4. `SO_TIMESTAMP`: each frame comes with the time the kernel took it (a control message),
//!    so a capture read late (a busy reader) still shows when frames really crossed.
//! 5. `SO_RCVBUF` (forced when privileged) to [`RCVBUF`]: the burst a momentarily busy reader
//!    absorbs before the kernel drops clones.
//! 6. `bind` to the interface index with `ETH_P_ALL`.
//!
//! One `recvmsg(2)` per frame with `MSG_TRUNC`: at most [`SNAPLEN`] bytes are copied, and the
//! return value is the frame's real length (a GSO super-frame of a veth can exceed the snap
//! length; it is recorded cut, with its original length).
//!
//! Open it inside the pod's network namespace ([`super::netns::in_netns`]); it stays bound to
//! that interface when the thread leaves, and reading works from any thread.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libc::{c_int, c_void};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, sockopt};

use super::afpacket::{PacketError, bind, find_cmsg, parse_auxdata, recvmsg_trunc, setsockopt_raw};
use super::if_name;

/// Bytes of a frame kept (tcpdump's default).
pub const SNAPLEN: usize = 65535;

/// Receive buffer of the socket (kernel memory): ~2,000 full-size frames.
pub const RCVBUF: usize = 4 << 20;

/// Length of a VLAN tag put back into a frame.
const TAG_LEN: usize = 4;

/// One captured frame, borrowed from the socket's buffer until the next `recv`.
#[derive(Debug, PartialEq, Eq)]
pub struct Captured<'a> {
    /// The frame's first bytes (at most [`SNAPLEN`]), VLAN tag restored.
    pub data: &'a [u8],
    /// The frame's length on the wire (≥ `data.len()`).
    pub orig_len: usize,
    /// Sent by the interface (`PACKET_OUTGOING`); else received.
    pub outgoing: bool,
    /// When the kernel saw the frame (`SO_TIMESTAMP`), µs since the epoch.
    pub ts_us: Option<u64>,
}

/// Control-message buffer for `PACKET_AUXDATA` and `SCM_TIMESTAMP`, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 128]);

/// The kernel's receive timestamp in an `SCM_TIMESTAMP` control message, in µs since the epoch.
pub fn parse_timestamp(control: &[u8]) -> Option<u64> {
    let data = find_cmsg(control, libc::SOL_SOCKET, libc::SCM_TIMESTAMP)?;
    if data.len() < size_of::<libc::timeval>() {
        return None;
    }
    let word = |off: usize| -> Option<i64> {
        Some(i64::from_ne_bytes(data[off..off + 8].try_into().ok()?))
    };
    let sec = u64::try_from(word(offset_of!(libc::timeval, tv_sec))?).ok()?;
    let usec = u64::try_from(word(offset_of!(libc::timeval, tv_usec))?).ok()?;
    sec.checked_mul(1_000_000)?.checked_add(usec)
}

/// Puts the tag `(tpid, tci)` back after the MAC addresses of the `len` bytes at the start of
/// `buf` (which has room for 4 more). Returns the new length; a frame too short to have MAC
/// addresses is left alone.
pub fn restore_tag(buf: &mut [u8], len: usize, (tpid, tci): (u16, u16)) -> usize {
    const MACS: usize = 12;
    if len < MACS || buf.len() < len + TAG_LEN {
        return len;
    }
    buf.copy_within(MACS..len, MACS + TAG_LEN);
    buf[MACS..MACS + 2].copy_from_slice(&tpid.to_be_bytes());
    buf[MACS + 2..MACS + 4].copy_from_slice(&tci.to_be_bytes());
    len + TAG_LEN
}

/// A passive capture socket bound to one interface (see the module doc).
#[derive(Debug)]
pub struct CaptureSocket {
    fd: OwnedFd,
    ifindex: u32,
    name: String,
    /// [`SNAPLEN`] plus room for a restored tag.
    buf: Vec<u8>,
}

impl CaptureSocket {
    /// Opens a capture of the interface `name` of the calling thread's network namespace.
    ///
    /// # Errors
    /// [`PacketError::NotFound`] without such an interface; [`PacketError::Io`] for a failed
    /// syscall (`EPERM` without `CAP_NET_RAW`).
    pub fn open_by_name(name: &str) -> Result<CaptureSocket, PacketError> {
        let ifindex = nix::net::if_::if_nametoindex(name).map_err(|_| PacketError::NotFound {
            name: name.to_owned(),
        })?;
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
        setsockopt_raw(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)
            .map_err(err("PACKET_AUXDATA"))?;
        setsockopt_raw(fd.as_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMP, &one)
            .map_err(err("SO_TIMESTAMP"))?;
        socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF)
            .or_else(|_| socket::setsockopt(&fd, sockopt::RcvBuf, &RCVBUF))
            .map_err(|e| err("SO_RCVBUF")(e.into()))?;
        bind(fd.as_fd(), ifindex).map_err(err("bind"))?;
        let name = if_name(fd.as_fd(), ifindex).map_err(err("SIOCGIFNAME"))?;
        Ok(CaptureSocket {
            fd,
            ifindex,
            name,
            buf: vec![0; SNAPLEN + TAG_LEN],
        })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// For [`super::wait_readable`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next frame, or `None` if none is waiting (the socket is non-blocking).
    ///
    /// # Errors
    /// `recvmsg` failed (e.g. `ENETDOWN` once the interface went down or away).
    pub fn recv(&mut self) -> io::Result<Option<Captured<'_>>> {
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast::<c_void>(),
            iov_len: SNAPLEN,
        };
        let mut control = Control([0; 128]);
        // SAFETY: sockaddr_ll is a plain C struct of integers and a byte array; all-zero is
        // a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let Some((orig, controllen)) =
            recvmsg_trunc(self.fd.as_fd(), &mut iov, &mut control.0, Some(&mut sll))?
        else {
            return Ok(None);
        };
        // With MSG_TRUNC, `orig` is the frame's real length.
        let mut len = orig.min(SNAPLEN);
        let mut orig_len = orig;
        if let Some(tag) = parse_auxdata(&control.0[..controllen]) {
            len = restore_tag(&mut self.buf, len, tag).min(SNAPLEN);
            orig_len += TAG_LEN;
        }
        Ok(Some(Captured {
            data: &self.buf[..len],
            orig_len,
            outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
            ts_us: parse_timestamp(&control.0[..controllen]),
        }))
    }

    /// Frames the kernel dropped for this socket (buffer full) since the last call
    /// (`PACKET_STATISTICS` resets on read).
    ///
    /// # Errors
    /// `getsockopt` failed.
    pub fn kernel_drops(&self) -> io::Result<u64> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `st`, a live local of that size,
        // and updates `len`, a live local.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast::<c_void>(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from(st.tp_drops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_goes_back_after_the_macs() {
        let mut buf = vec![0u8; 20 + TAG_LEN];
        for (i, b) in buf[..20].iter_mut().enumerate() {
            *b = i as u8;
        }
        let n = restore_tag(&mut buf, 20, (0x8100, 0x0064));
        assert_eq!(n, 24);
        assert_eq!(&buf[..12], &(0..12).collect::<Vec<u8>>()[..]);
        assert_eq!(&buf[12..16], &[0x81, 0x00, 0x00, 0x64]);
        assert_eq!(&buf[16..24], &(12..20).collect::<Vec<u8>>()[..]);
    }

    /// Appends one control message as the kernel lays it out (`CMSG_SPACE` alignment).
    fn cmsg(buf: &mut Vec<u8>, level: i32, ty: i32, data: &[u8]) {
        let hdr = size_of::<libc::cmsghdr>();
        let len = hdr + data.len();
        let start = buf.len();
        buf.resize(start + hdr, 0);
        buf[start..start + size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
        let lvl = start + offset_of!(libc::cmsghdr, cmsg_level);
        buf[lvl..lvl + 4].copy_from_slice(&level.to_ne_bytes());
        let t = start + offset_of!(libc::cmsghdr, cmsg_type);
        buf[t..t + 4].copy_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(buf.len().next_multiple_of(size_of::<usize>()), 0);
    }

    #[test]
    fn timestamp_and_tag_are_found_among_control_messages() {
        let mut tv = Vec::new();
        tv.extend_from_slice(&1_700_000_000i64.to_ne_bytes());
        tv.extend_from_slice(&123_456i64.to_ne_bytes());
        let mut aux = vec![0u8; size_of::<libc::tpacket_auxdata>()];
        let st = offset_of!(libc::tpacket_auxdata, tp_status);
        aux[st..st + 4].copy_from_slice(&libc::TP_STATUS_VLAN_VALID.to_ne_bytes());
        let tci = offset_of!(libc::tpacket_auxdata, tp_vlan_tci);
        aux[tci..tci + 2].copy_from_slice(&100u16.to_ne_bytes());
        let mut control = Vec::new();
        cmsg(&mut control, libc::SOL_SOCKET, libc::SCM_TIMESTAMP, &tv);
        cmsg(&mut control, libc::SOL_PACKET, libc::PACKET_AUXDATA, &aux);
        assert_eq!(parse_timestamp(&control), Some(1_700_000_000_123_456));
        assert_eq!(parse_auxdata(&control), Some((0x8100, 100)));
        // Neither, or cut short: nothing, and no panic.
        assert_eq!(parse_timestamp(&[]), None);
        assert_eq!(parse_timestamp(&control[..20]), None);
        assert_eq!(parse_auxdata(&control[..control.len() - 8]), None);
    }

    #[test]
    fn short_frame_or_no_room_is_left_alone() {
        let mut buf = vec![7u8; 14];
        assert_eq!(restore_tag(&mut buf, 10, (0x8100, 1)), 10);
        assert_eq!(restore_tag(&mut buf, 14, (0x8100, 1)), 14);
        assert_eq!(buf, vec![7u8; 14]);
    }
}
