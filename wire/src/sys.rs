//! The kernel frame endpoints — the only module of this crate allowed `unsafe`.
//!
//! - [`tap`] — [`tap::Tap`]: a TAP interface (`/dev/net/tun`) with the virtio-net header
//!   (`IFF_VNET_HDR`) and checksum/TSO offloads negotiated, so the pod's stack hands over 64 KiB
//!   GSO super-frames and takes them back whole. Optionally persistent and multi-queue.
//! - [`afpacket`] — [`afpacket::PacketSocket`]: an AF_PACKET socket on an existing interface
//!   (the host end of a veth) with `PACKET_VNET_HDR`, a `TPACKET_V3` mmap receive ring and
//!   `PACKET_IGNORE_OUTGOING`.
//! - [`capture`] — [`capture::CaptureSocket`]: a passive AF_PACKET tap (both directions, no
//!   virtio-net header) for live capture; it observes a link and is never in its path.
//! - [`keep_freed_buffers`] — the allocator settings the dataplane wants (freed batch and
//!   HTTP/2 buffers stay mapped for reuse).
//! - [`netns`] — running a closure on a dedicated OS thread inside another network namespace,
//!   where TAPs and AF_PACKET sockets are created (`setns(2)` changes only the calling thread).
//!
//! All of them implement [`crate::endpoint::FrameEndpoint`]: non-blocking, `[vnet header][frame]`
//! in and out, readiness through [`crate::endpoint::FrameEndpoint::readiness_fd`] (tokio
//! `AsyncFd`, or [`wait_readable`] for a plain thread).
//!
//! # Rules of this module
//!
//! - Every `unsafe` block says why it is sound in a `// SAFETY:` comment.
//! - A file descriptor is wrapped in `OwnedFd`/`File` the moment a syscall returns it; no bare
//!   `RawFd` is stored.
//! - `nix` is used where it covers the call (sockets, `setns`, `writev`, `if_nametoindex`);
//!   `libc` for the ioctls, `setsockopt`s and `mmap` that `nix` does not wrap.
//! - Flag words and ring geometry are computed by pure functions with unit tests; the syscalls
//!   only apply them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

pub mod afpacket;
pub mod capture;
pub mod netns;
pub mod poll;
pub mod tap;
pub mod tcp;

/// Largest allocation glibc serves from the heap rather than its own `mmap` (see
/// [`keep_freed_buffers`]): above every buffer the wire allocates (a 4 MiB batch arena chunk,
/// 1 MiB HTTP/2 frames).
pub const MMAP_THRESHOLD: usize = 8 << 20;
/// Free memory at the top of a heap that glibc keeps instead of giving it back to the kernel.
pub const TRIM_THRESHOLD: usize = 16 << 20;

/// Tells glibc's allocator to keep freed buffers mapped for reuse. Call once at start, before
/// threads allocate.
///
/// Why: the wire's buffers (batch arenas the TAP reads into, the HTTP/2 read buffer) are large
/// and short-lived. With glibc's defaults a freed one goes back to the kernel (`munmap`, or a
/// heap trim with `MADV_DONTNEED`), and the next one is faulted in page by page inside the TAP
/// `read` or TCP `recv` that fills it: ~3 % of the daemons' CPU in a profile of one TCP stream
/// over a wire, gone with these settings (throughput +7 % in that run). The cost: up to
/// [`TRIM_THRESHOLD`] of freed memory per heap stays in the daemon's RSS after a burst.
/// Same as `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…:glibc.malloc.trim_threshold=…`.
///
/// Returns whether the allocator took the settings (false on a libc other than glibc).
pub fn keep_freed_buffers() -> bool {
    #[cfg(target_env = "gnu")]
    {
        let set = |param, value: usize| {
            let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only changes allocator parameters; both are valid parameter
            // numbers of glibc's mallopt, with in-range values. It does not touch our memory.
            unsafe { libc::mallopt(param, v) == 1 }
        };
        set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) & set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Blocks until one of `fds` polls readable (or in error), or `timeout` passes. Returns whether
/// one did. For endpoints driven by a plain thread; async code uses tokio's `AsyncFd` on
/// [`crate::endpoint::FrameEndpoint::readiness_fd`] instead.
///
/// Level-triggered: a socket with a pending error (an AF_PACKET socket whose interface went
/// down) keeps polling ready until the error is taken
/// ([`afpacket::PacketSocket::take_error`]).
///
/// # Errors
/// `poll(2)` failed (not `EINTR`, which is reported as "none ready").
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is a live, exclusively borrowed array of `pfds.len()` pollfd structs, and
    // every fd in it is borrowed from its owner for the duration of this call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0)
}

/// Runs a syscall again while it fails with `EINTR`.
fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Copies an interface name into an `ifreq`'s name field (NUL-terminated). The name must have
/// been checked with [`check_ifname`].
fn ifreq_with_name(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (byte arrays and a union of integers, sockaddrs and a
    // pointer) for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The name in an `ifreq` the kernel filled in.
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Why an interface name is refused (the kernel's `dev_valid_name`).
fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// `SIOCGIFMTU` for `name`, resolved in the network namespace of `sock`.
fn if_mtu(sock: BorrowedFd<'_>, name: &str) -> io::Result<u32> {
    let mut ifr = ifreq_with_name(name);
    // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into the `ifreq` we pass, which
    // is a valid, exclusively borrowed struct for the whole call; `sock` is a live socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFMTU the kernel has written `ifru_mtu`, an int; every bit
    // pattern is a valid int.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative MTU"))
}

/// `SIOCGIFNAME` for `ifindex`, resolved in the network namespace of `sock`.
fn if_name(sock: BorrowedFd<'_>, ifindex: u32) -> io::Result<String> {
    let mut ifr = ifreq_with_name("");
    ifr.ifr_ifru.ifru_ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    // SAFETY: SIOCGIFNAME reads the index from and writes the name into the `ifreq` we pass,
    // which is a valid, exclusively borrowed struct for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFNAME, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifreq_name(&ifr))
}

/// A duplicate of an endpoint's fd, for writing beside its reader.
pub(crate) fn dup_fd(fd: Option<BorrowedFd<'_>>, what: &str) -> io::Result<std::os::fd::OwnedFd> {
    fd.ok_or_else(|| io::Error::other(format!("{what} without an fd")))?
        .try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_env = "gnu")]
    #[test]
    fn glibc_takes_the_buffer_settings() {
        assert!(keep_freed_buffers());
        // Buffers of the sizes the wire uses still allocate and free normally afterwards.
        let b = vec![1u8; 4 << 20];
        assert_eq!(b.iter().map(|&x| usize::from(x)).sum::<usize>(), 4 << 20);
    }

    #[test]
    fn interface_names() {
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok()); // 15 bytes
        assert!(check_ifname("a234567890123456").is_err()); // 16 bytes
        assert!(check_ifname("").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("a:1").is_err());
    }

    #[test]
    fn ifreq_name_round_trip() {
        let ifr = ifreq_with_name("a23456789012345");
        assert_eq!(ifr.ifr_name[15], 0, "NUL-terminated");
        assert_eq!(ifreq_name(&ifr), "a23456789012345");
    }
}
