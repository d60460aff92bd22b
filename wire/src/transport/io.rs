//! The frame I/O of a wire half as the transport uses it: one reader task and many writers (the
//! streams delivering to it) at once, so it is `&self` and `Sync`, unlike
//! [`crate::endpoint::FrameEndpoint`], which the kernel endpoints implement and which these
//! adaptors wrap: [`TapHalf`] over a [`Tap`], [`PacketHalf`] over a [`PacketSocket`].
//!
//! Reads go through the endpoint (only the reader task takes its lock); writes go through a
//! duplicate of its fd (the kernel serialises TAP and packet socket I/O itself), so delivering
//! never waits for a read.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use bytes::BytesMut;

use crate::endpoint::FrameEndpoint;
use crate::sys::afpacket::PacketSocket;
use crate::sys::tap::Tap;
use crate::vnet::VnetBytes;

/// Frame I/O of a half, usable from the reader task and the stream tasks at once.
pub trait HalfIo: Send + Sync + 'static {
    /// A duplicate of the fd, to poll for readability.
    ///
    /// # Errors
    /// `dup` failed.
    fn dup_fd(&self) -> io::Result<OwnedFd>;
    /// Appends one `[virtio-net header][frame]` to `buf`; `None` when nothing is ready.
    ///
    /// # Errors
    /// Read failures other than "would block".
    fn recv(&self, buf: &mut BytesMut) -> io::Result<Option<usize>>;
    /// Writes one frame with its virtio-net header.
    ///
    /// # Errors
    /// `WouldBlock` when the interface cannot take it now; other write failures.
    fn send(&self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()>;
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
}

/// The `tx_dropped` column of `ifname` in a `/proc/net/dev` text.
pub fn tx_dropped_of(net_dev: &str, ifname: &str) -> Option<u64> {
    net_dev.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        // 8 receive columns, then tx bytes, packets, errs, drop.
        rest.split_whitespace().nth(11)?.parse().ok()
    })
}

/// `writev` of `[vnet][frame]`; `min` is how many bytes must be reported written.
fn write_frame(fd: &OwnedFd, vnet: &VnetBytes, frame: &[u8], min: usize) -> io::Result<()> {
    let iov = [io::IoSlice::new(vnet), io::IoSlice::new(frame)];
    let n = nix::sys::uio::writev(fd, &iov).map_err(io::Error::from)?;
    if n < min {
        return Err(io::Error::other(format!("short write: {n} of {min} bytes")));
    }
    Ok(())
}

fn dup(fd: Option<std::os::fd::BorrowedFd<'_>>, what: &str) -> io::Result<OwnedFd> {
    fd.ok_or_else(|| io::Error::other(format!("{what} without an fd")))?
        .as_fd()
        .try_clone_to_owned()
}

/// A TAP as a half.
pub struct TapHalf {
    tap: Mutex<Tap>,
    writer: OwnedFd,
}

impl std::fmt::Debug for TapHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapHalf").finish_non_exhaustive()
    }
}

impl TapHalf {
    /// # Errors
    /// The TAP has no fd or it cannot be duplicated.
    pub fn new(tap: Tap) -> io::Result<Self> {
        let writer = dup(tap.readiness_fd(), "TAP")?;
        Ok(Self {
            tap: Mutex::new(tap),
            writer,
        })
    }
}

impl HalfIo for TapHalf {
    fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.writer.try_clone()
    }

    fn recv(&self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        self.tap
            .lock()
            .map_err(|_| io::Error::other("tap lock poisoned"))?
            .recv(buf)
    }

    fn send(&self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        // A TAP reports the header and the frame written.
        write_frame(&self.writer, vnet, frame, vnet.len() + frame.len())
    }

    fn set_carrier(&self, up: bool) -> io::Result<()> {
        self.tap
            .lock()
            .map_err(|_| io::Error::other("tap lock poisoned"))?
            .set_carrier(up)
    }

    fn kernel_tx_dropped(&self) -> Option<u64> {
        let (ns, name) = {
            let tap = self.tap.lock().ok()?;
            (tap.netns().ok()?, tap.name().to_string())
        };
        let text = crate::sys::netns::in_netns(&ns, || {
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })
        .ok()?
        .ok()?;
        tx_dropped_of(&text, &name)
    }
}

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
        let writer = dup(socket.readiness_fd(), "AF_PACKET socket")?;
        Ok(Self {
            socket: Mutex::new(socket),
            writer,
            carrier,
        })
    }
}

impl HalfIo for PacketHalf {
    fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.writer.try_clone()
    }

    fn recv(&self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
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

    fn send(&self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        // The kernel returns the frame's length, without the header.
        write_frame(&self.writer, vnet, frame, frame.len())
    }

    fn set_carrier(&self, up: bool) -> io::Result<()> {
        (self.carrier)(up);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_dropped_column() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  eth1: 100 2 0 0 0 0 0 0 200 3 0 17 0 0 0 0\n";
        assert_eq!(tx_dropped_of(text, "eth1"), Some(17));
        assert_eq!(tx_dropped_of(text, "eth2"), None);
    }
}
