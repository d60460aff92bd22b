//! Running work inside another network namespace.
//!
//! `setns(2)` changes the namespace of the **calling thread only**; every other thread of the
//! process stays where it was. Interfaces and sockets are bound to the namespace they are created
//! in, and stay bound to it: a TAP fd keeps working after its interface is moved to another
//! namespace, and an AF_PACKET socket keeps receiving from the interface it was bound to. So the
//! pattern is: start a dedicated OS thread, `setns` it into the pod's (or node's) namespace,
//! create the TAP / open the socket there, hand the fd back, and let the thread exit.
//!
//! Never `setns` a tokio worker or a blocking-pool thread: they are reused by unrelated tasks,
//! which would then run in the wrong namespace. [`in_netns`] never does — it always spawns.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add NAME` mounts a named namespace.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// Runs `f` on a new OS thread that first entered the network namespace `netns_file` (a
/// `/run/netns/NAME` or `/proc/PID/ns/net` file), and returns its result. The thread exits when
/// `f` returns, so no thread is left in the namespace.
///
/// Blocks the calling thread until `f` returns; from async code call it inside
/// `tokio::task::spawn_blocking` (the blocking-pool thread only waits — it never enters the
/// namespace). `f` may borrow from the caller. A panic in `f` is resumed on the caller.
///
/// # Errors
/// The thread could not be spawned, or `setns` failed (`EINVAL`: not a network namespace file;
/// `EPERM`: no `CAP_SYS_ADMIN`). Errors of `f` itself are returned inside `Ok`.
pub fn in_netns<T: Send>(netns_file: &File, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("meshnet-netns".into())
            .spawn_scoped(s, move || -> io::Result<T> {
                setns(netns_file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })?;
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Opens the namespace `ip netns add NAME` created (`/run/netns/NAME`).
///
/// # Errors
/// No such namespace, or it cannot be opened.
pub fn open_named(name: &str) -> io::Result<File> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid netns name {name:?}"),
        ));
    }
    File::open(Path::new(NAMED_NETNS_DIR).join(name))
}

/// Opens the network namespace of the calling thread (`/proc/thread-self/ns/net`), e.g. to come
/// back to it or to compare with another (`same_netns`).
///
/// # Errors
/// `/proc` is not mounted or cannot be read.
pub fn open_current() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Whether two namespace files name the same namespace (same device and inode).
///
/// # Errors
/// `fstat` failed on either file.
pub fn same_netns(a: &File, b: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}
