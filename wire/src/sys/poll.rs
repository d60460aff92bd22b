//! Registering an fd with tokio's reactor.
//!
//! tokio 1.54 made `AsyncFd` registration `unsafe` (the caller promises the fd stays open and
//! is not replaced while registered). Taking an [`OwnedFd`] by value and keeping it inside the
//! `AsyncFd` makes that promise hold by construction.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `fd` (non-blocking) for readability.
///
/// # Errors
/// The reactor refused the fd (e.g. outside a runtime).
pub fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` takes ownership of `fd`, so it stays open and unchanged for as long
    // as it is registered, and is closed only after deregistration when the `AsyncFd` drops.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}
