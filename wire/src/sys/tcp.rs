//! TCP socket options the stream transport sets that the standard library and tokio lack.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Unsent bytes a wire's TCP socket may hold: with a larger backlog in the kernel, a Bind or an
/// Unbind written after it waits for all of it (seconds on a slow underlay, since the kernel's
/// send buffer grows to 4 MiB). Kept small, the backlog stays in the transport's queues, where
/// control goes first; in-flight data (the congestion window) is not limited by it.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets `TCP_NOTSENT_LOWAT`: the socket polls writable only while fewer than `bytes` are unsent.
///
/// # Errors
/// `setsockopt` failed (not a TCP socket).
pub fn set_notsent_lowat(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is a live socket for the borrow's duration; the option value is a c_int whose
    // address and size are passed exactly; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sets_the_option_on_a_tcp_socket_and_refuses_others() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        set_notsent_lowat(s.as_fd(), NOTSENT_LOWAT).unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(set_notsent_lowat(u.as_fd(), NOTSENT_LOWAT).is_err());
    }
}
