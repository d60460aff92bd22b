//! TAP interfaces with the virtio-net header: [`Tap`] (the interface and its first queue) and
//! [`TapQueue`] (one queue fd of a multi-queue TAP).
//!
//! # What is set up, and why
//!
//! - `/dev/net/tun` is opened `O_RDWR | O_NONBLOCK | O_CLOEXEC`; `TUNSETIFF` with
//!   `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (+ `IFF_MULTI_QUEUE` for several queues,
//!   `IFF_TUN_EXCL` when creating, `IFF_NO_CARRIER` when the carrier starts down; the flag word
//!   is [`tun_flags`]). Every read then returns `[virtio_net_hdr][frame]` and every write takes
//!   the same — exactly the record layout of a batch, so frames go between the TAP and a batch
//!   with no copy in between.
//! - `TUNSETVNETHDRSZ` = 10 (the header without `num_buffers`, [`crate::vnet::VNET_HDR_LEN`]).
//! - `TUNSETOFFLOAD` with [`offload_flags`] (the flag word is passed **by value**): checksum,
//!   TSO4/6, TSO-ECN and, where the kernel has it (≥ 6.2), USO. Only then does the pod's stack
//!   hand over 64 KiB GSO super-frames with partial checksums, and accept them back unsegmented;
//!   without the header a relay of two TAPs cannot even carry a TCP handshake, since nobody
//!   completes the partial checksums. An older kernel refuses the USO bits with `EINVAL`; the
//!   TAP is then set up without them.
//! - `TUNSETPERSIST` ([`Tap::set_persist`]): a persistent TAP outlives its fds, so a restarted
//!   daemon re-attaches by name ([`Tap::attach`]) and the pod never sees its interface vanish.
//! - `TUNSETCARRIER` (kernel ≥ 5.0): a wire's carrier is down until its peer half is connected.
//!
//! # Namespaces
//!
//! The TAP is created (or attached) in the **calling thread's** network namespace. Either create
//! it on a thread inside the pod's namespace under its final name ([`super::netns::in_netns`]),
//! or create it in the node's namespace and move it into the pod's with netlink: the fd keeps
//! working after the move. [`Tap::ifindex`] and [`Tap::mtu`] are read when the TAP is opened;
//! after a move, a rename or an MTU change by netlink, [`Tap::refresh`] reads them again in the
//! namespace the interface is in now (`TUNGETDEVNETNS`).
//!
//! # Queues
//!
//! With `queues > 1` the kernel spreads the pod's flows over the queues (by flow hash), so every
//! queue must be read: [`Tap`] reads and writes its first queue, and [`Tap::take_queues`] hands
//! out the others as [`TapQueue`] endpoints for other workers. Frames steered to a queue nobody
//! reads wait there until its `txqueuelen` fills, then are dropped.
//!
//! # Back-pressure
//!
//! A read returns `EAGAIN` when nothing is queued (`recv` → `Ok(None)`). A TAP write does not
//! block in practice (the tun socket's send buffer is unbounded); `EAGAIN` would map to
//! `WouldBlock` all the same. When the daemon stops reading, frames queue in the TAP up to
//! `txqueuelen` and the pod's qdisc applies back-pressure to its TCP.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use bytes::{BufMut, BytesMut};
use libc::{c_int, c_short, c_ulong};

use super::{check_ifname, if_mtu, ifreq_name, ifreq_with_name, retry_eintr};
use crate::batch::MAX_FRAME;
use crate::endpoint::{FrameEndpoint, HalfIo};
use crate::vnet::{VNET_HDR_LEN, VnetBytes};

/// The clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Most queues the kernel allows one TAP (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// MTU assumed when the interface cannot be asked (the kernel's default for a new TAP).
const DEFAULT_MTU: u32 = 1500;

/// The `TUNSETOFFLOAD` flag word for the offloads asked for, following the kernel's rules
/// (`drivers/net/tun.c: set_offload`):
///
/// - everything depends on checksum offload: without `csum` the word is 0 (the kernel would
///   refuse TSO bits without `TUN_F_CSUM` with `EINVAL`);
/// - `ecn` (`TUN_F_TSO_ECN`) only means something with TSO4 or TSO6, and is left out otherwise;
/// - `uso` sets both `TUN_F_USO4` and `TUN_F_USO6` (the kernel enables UDP segmentation only
///   when both are given). Kernels before 6.2 refuse them: see [`without_uso`].
pub fn offload_flags(csum: bool, tso4: bool, tso6: bool, ecn: bool, uso: bool) -> c_ulong {
    if !csum {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if tso4 {
        f |= libc::TUN_F_TSO4;
    }
    if tso6 {
        f |= libc::TUN_F_TSO6;
    }
    if ecn && (tso4 || tso6) {
        f |= libc::TUN_F_TSO_ECN;
    }
    if uso {
        f |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
    }
    c_ulong::from(f)
}

/// `flags` without the USO bits: the fallback for kernels older than 6.2.
pub fn without_uso(flags: c_ulong) -> c_ulong {
    flags & !c_ulong::from(libc::TUN_F_USO4 | libc::TUN_F_USO6)
}

/// The `TUNSETIFF` flag word: a TAP without packet info, with the virtio-net header; several
/// queues; `exclusive` fails if the interface exists (creating, not attaching); `carrier`
/// false starts it without carrier (`IFF_NO_CARRIER`, kernel ≥ 6.0; older kernels ignore it,
/// and [`Tap`] also sets the carrier with `TUNSETCARRIER`).
pub fn tun_flags(multi_queue: bool, exclusive: bool, carrier: bool) -> c_short {
    let mut f = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        f |= libc::IFF_MULTI_QUEUE;
    }
    if exclusive {
        f |= libc::IFF_TUN_EXCL;
    }
    if !carrier {
        f |= libc::IFF_NO_CARRIER;
    }
    // `ifr_flags` is a C short: IFF_TUN_EXCL (0x8000) is its sign bit, which the kernel tests
    // bitwise, so the wrap is intended.
    f as c_short
}

/// Which offloads a TAP negotiates (see [`offload_flags`] for how they combine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub tso_ecn: bool,
    /// UDP segmentation (kernel ≥ 6.2; dropped silently on older kernels).
    pub uso: bool,
}

impl Offloads {
    /// Everything: the pod's stack hands over GSO super-frames.
    pub const ALL: Self = Self {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
        uso: true,
    };
    /// Nothing: plain frames with complete checksums (the virtio-net header is still there, and
    /// all zero).
    pub const NONE: Self = Self {
        csum: false,
        tso4: false,
        tso6: false,
        tso_ecn: false,
        uso: false,
    };

    /// The `TUNSETOFFLOAD` word.
    pub fn flags(self) -> c_ulong {
        offload_flags(self.csum, self.tso4, self.tso6, self.tso_ecn, self.uso)
    }
}

impl Default for Offloads {
    fn default() -> Self {
        Self::ALL
    }
}

/// How to open a TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Queues (fds), `1..=MAX_QUEUES`. More than one makes a multi-queue TAP; attaching must
    /// use the same single/multi-queue kind the TAP was created with.
    pub queues: usize,
    pub offloads: Offloads,
    /// Keep the interface when the last fd closes (applied on create and on attach).
    pub persist: bool,
    /// The carrier once opened. Default down: a wire shows carrier only once its peer is there.
    pub carrier: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        Self {
            queues: 1,
            offloads: Offloads::ALL,
            persist: false,
            carrier: false,
        }
    }
}

/// Errors of the TAP layer, with the interface they concern.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("TAP {name}: invalid options: {reason}")]
    InvalidOptions { name: String, reason: String },
    #[error("TAP {name}: an interface of that name already exists in this network namespace")]
    Exists { name: String },
    #[error("TAP {name}: no such interface in this network namespace")]
    NotFound { name: String },
    #[error("TAP {name}: {op}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

impl From<TapError> for io::Error {
    fn from(e: TapError) -> Self {
        let kind = match &e {
            TapError::InvalidName { .. } | TapError::InvalidOptions { .. } => {
                io::ErrorKind::InvalidInput
            }
            TapError::Exists { .. } => io::ErrorKind::AlreadyExists,
            TapError::NotFound { .. } => io::ErrorKind::NotFound,
            TapError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

fn io_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> TapError + 'a {
    move |source| TapError::Io {
        op,
        name: name.to_owned(),
        source,
    }
}

/// One queue of a TAP: a non-blocking fd that reads and writes `[virtio_net_hdr][frame]`.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
    mtu: u32,
}

impl TapQueue {
    /// Opens `/dev/net/tun` and attaches it to (or creates) the TAP `name` with `flags`.
    /// Returns the queue and the name the kernel reports.
    fn open(name: &str, flags: c_short, mtu: u32) -> Result<(Self, String), TapError> {
        // std opens with O_CLOEXEC; the fd is owned by the `File` from here on.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_DEVICE)
            .map_err(io_err("open /dev/net/tun", name))?;
        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_flags = flags;
        // SAFETY: TUNSETIFF reads the name and flags from, and writes the final name into, the
        // `ifreq` we pass; it is a valid, exclusively borrowed struct for the whole call, and
        // `file` is an open tun fd.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) && flags & (libc::IFF_TUN_EXCL as c_short) != 0
            {
                return Err(TapError::Exists {
                    name: name.to_owned(),
                });
            }
            return Err(TapError::Io {
                op: "TUNSETIFF",
                name: name.to_owned(),
                source: e,
            });
        }
        Ok((Self { file, mtu }, ifreq_name(&ifr)))
    }

    fn ioctl_int_ptr(&self, req: libc::Ioctl, v: c_int) -> io::Result<()> {
        // SAFETY: every request passed here (TUNSETVNETHDRSZ, TUNSETCARRIER) reads one int
        // through the pointer, which points at a live local for the whole call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req, &v as *const c_int) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn ioctl_by_value(&self, req: libc::Ioctl, v: c_ulong) -> io::Result<()> {
        // SAFETY: every request passed here (TUNSETOFFLOAD, TUNSETPERSIST) takes its argument
        // by value as an unsigned long and dereferences no pointer.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req, v) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `TUNGETIFF`: the interface's current name and TUN flags.
    fn get_iff(&self) -> io::Result<(String, c_short)> {
        let mut ifr = ifreq_with_name("");
        // SAFETY: TUNGETIFF writes the name and flags into the `ifreq` we pass, a valid,
        // exclusively borrowed struct for the whole call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: after a successful TUNGETIFF the kernel has written `ifru_flags`, a short;
        // every bit pattern is a valid short.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        Ok((ifreq_name(&ifr), flags))
    }

    /// `TUNGETDEVNETNS`: the network namespace the interface is in now.
    fn netns(&self) -> io::Result<File> {
        // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd (or -1).
        let fd = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETDEVNETNS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else
        // owns; the `File` takes sole ownership and closes it.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Raises or lowers the carrier of the TAP (any queue's fd does it for the interface).
    fn carrier(&self, up: bool) -> io::Result<()> {
        self.ioctl_int_ptr(libc::TUNSETCARRIER, c_int::from(up))
    }
}

impl FrameEndpoint for TapQueue {
    /// One `read(2)` straight into the spare capacity of `buf` (reserving room for a largest
    /// frame): the kernel writes `[virtio_net_hdr][frame]`, nothing is copied again.
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        buf.reserve(VNET_HDR_LEN + MAX_FRAME);
        let n = loop {
            let spare = buf.spare_capacity_mut();
            // SAFETY: the kernel writes at most `spare.len()` bytes into the spare capacity,
            // which `buf` owns and which stays allocated and unaliased for the whole call;
            // writing to uninitialised memory is what `MaybeUninit` allows.
            let n = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                )
            };
            if n >= 0 {
                // Non-negative by the check.
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                // Retried, not reported as "nothing ready": an edge-triggered poller would
                // wait for an edge that already came.
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        };
        if n < VNET_HDR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TAP read of {n} bytes is shorter than the virtio-net header"),
            ));
        }
        // SAFETY: the kernel initialised the first `n` bytes of the spare capacity (read(2)
        // returned `n`), and `n <= spare.len()`, so the new length is within the capacity.
        unsafe { buf.advance_mut(n) };
        Ok(Some(n - VNET_HDR_LEN))
    }

    /// One `writev(2)` of the header and the frame: one syscall, no copy.
    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        let n = retry_eintr(|| {
            nix::sys::uio::writev(&self.file, &[IoSlice::new(vnet), IoSlice::new(frame)])
        })?;
        if n != VNET_HDR_LEN + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short TAP write: {n} of {} bytes",
                    VNET_HDR_LEN + frame.len()
                ),
            ));
        }
        Ok(())
    }

    fn set_carrier(&mut self, up: bool) -> io::Result<()> {
        self.carrier(up)
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }
}

/// A TAP interface with the virtio-net header and offloads (see the module doc). As an endpoint
/// it reads and writes its first queue; [`take_queues`](Self::take_queues) hands out the others.
///
/// Dropping it closes its queues; a TAP that is not persistent then disappears.
#[derive(Debug)]
pub struct Tap {
    name: String,
    ifindex: u32,
    mtu: u32,
    offloads: c_ulong,
    /// At least one: the first is this endpoint's; more only until taken.
    queues: Vec<TapQueue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Attach,
}

impl Tap {
    /// Creates the TAP `name` in the calling thread's network namespace.
    ///
    /// # Errors
    /// [`TapError::Exists`] if an interface of that name exists there (use
    /// [`attach`](Self::attach) for a persistent TAP); [`TapError::InvalidName`] /
    /// [`TapError::InvalidOptions`]; [`TapError::Io`] for a failed open or ioctl (no
    /// `CAP_NET_ADMIN`, no `/dev/net/tun`). On error nothing is left behind.
    pub fn create(name: &str, opts: TapOptions) -> Result<Tap, TapError> {
        Self::open(name, &opts, Mode::Create)
    }

    /// Attaches to the existing (persistent) TAP `name` in the calling thread's network
    /// namespace — how a restarted daemon gets its TAPs back. `opts` are applied again
    /// (offloads, carrier, persist); `opts.queues` must be 1 if the TAP was created with one
    /// queue and more than 1 if it was created multi-queue.
    ///
    /// # Errors
    /// [`TapError::NotFound`] if no interface of that name exists there; [`TapError::Io`] if it
    /// is not a TAP, is of the other queue kind (`EINVAL`), or is single-queue and attached
    /// elsewhere (`EBUSY`).
    pub fn attach(name: &str, opts: TapOptions) -> Result<Tap, TapError> {
        check_ifname(name).map_err(|reason| TapError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        if nix::net::if_::if_nametoindex(name).is_err() {
            return Err(TapError::NotFound {
                name: name.to_owned(),
            });
        }
        Self::open(name, &opts, Mode::Attach)
    }

    fn open(name: &str, opts: &TapOptions, mode: Mode) -> Result<Tap, TapError> {
        check_ifname(name).map_err(|reason| TapError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        if !(1..=MAX_QUEUES).contains(&opts.queues) {
            return Err(TapError::InvalidOptions {
                name: name.to_owned(),
                reason: format!("queues must be 1..={MAX_QUEUES}, not {}", opts.queues),
            });
        }
        let multi = opts.queues > 1;
        let flags = tun_flags(multi, mode == Mode::Create, opts.carrier);
        // If anything below fails, dropping the queues opened so far removes a TAP we created
        // (it is made persistent only at the very end).
        let (first, name) = TapQueue::open(name, flags, DEFAULT_MTU)?;
        let vnet_len = VNET_HDR_LEN as c_int;
        first
            .ioctl_int_ptr(libc::TUNSETVNETHDRSZ, vnet_len)
            .map_err(io_err("TUNSETVNETHDRSZ", &name))?;
        let mut offloads = opts.offloads.flags();
        if let Err(e) = first.ioctl_by_value(libc::TUNSETOFFLOAD, offloads) {
            let fallback = without_uso(offloads);
            if e.raw_os_error() != Some(libc::EINVAL) || fallback == offloads {
                return Err(io_err("TUNSETOFFLOAD", &name)(e));
            }
            // A kernel before 6.2: no USO.
            first
                .ioctl_by_value(libc::TUNSETOFFLOAD, fallback)
                .map_err(io_err("TUNSETOFFLOAD", &name))?;
            offloads = fallback;
        }
        let mut queues = Vec::with_capacity(opts.queues);
        queues.push(first);
        let extra_flags = tun_flags(multi, false, opts.carrier);
        for _ in 1..opts.queues {
            let (q, _) = TapQueue::open(&name, extra_flags, DEFAULT_MTU)?;
            queues.push(q);
        }
        let ifindex = nix::net::if_::if_nametoindex(name.as_str())
            .map_err(|e| io_err("if_nametoindex", &name)(e.into()))?;
        let mtu = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)
        .and_then(|s| if_mtu(s.as_fd(), &name))
        .map_err(io_err("SIOCGIFMTU", &name))?;
        let mut tap = Tap {
            name,
            ifindex,
            mtu,
            offloads,
            queues,
        };
        tap.set_queue_mtu();
        // Older kernels ignore IFF_NO_CARRIER: say it again.
        tap.first()
            .carrier(opts.carrier)
            .map_err(io_err("TUNSETCARRIER", &tap.name))?;
        tap.set_persist(opts.persist)?;
        Ok(tap)
    }

    fn first(&self) -> &TapQueue {
        &self.queues[0]
    }

    fn set_queue_mtu(&mut self) {
        for q in &mut self.queues {
            q.mtu = self.mtu;
        }
    }

    /// The interface name (as of opening, or the last [`refresh`](Self::refresh)).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index in the namespace it was opened in (or as of the last
    /// [`refresh`](Self::refresh): moving an interface keeps its index only when the target
    /// namespace has it free).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The `TUNSETOFFLOAD` word in effect (without USO on kernels before 6.2).
    pub fn offload_flags(&self) -> c_ulong {
        self.offloads
    }

    /// Queues still held by this `Tap` (1 after [`take_queues`](Self::take_queues)).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Hands out every queue but the first, as endpoints for other workers (each has its own
    /// readiness fd). The interface lives while any queue is open (or, if persistent, on).
    pub fn take_queues(&mut self) -> Vec<TapQueue> {
        self.queues.split_off(1)
    }

    /// Makes the interface persistent (it outlives its fds) or not (it disappears when the
    /// last fd closes). To delete a persistent TAP: `set_persist(false)`, then drop it.
    ///
    /// # Errors
    /// `TUNSETPERSIST` failed.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        self.first()
            .ioctl_by_value(libc::TUNSETPERSIST, c_ulong::from(persist))
            .map_err(io_err("TUNSETPERSIST", &self.name))
    }

    /// Whether the interface is persistent (`TUNGETIFF`).
    ///
    /// # Errors
    /// `TUNGETIFF` failed.
    pub fn is_persistent(&self) -> Result<bool, TapError> {
        let (_, flags) = self
            .first()
            .get_iff()
            .map_err(io_err("TUNGETIFF", &self.name))?;
        Ok(flags & (libc::IFF_PERSIST as c_short) != 0)
    }

    /// The network namespace the interface is in now (`TUNGETDEVNETNS`, kernel ≥ 5.2).
    ///
    /// # Errors
    /// The ioctl failed (`EPERM` without `CAP_NET_ADMIN` over that namespace).
    pub fn netns(&self) -> Result<File, TapError> {
        self.first()
            .netns()
            .map_err(io_err("TUNGETDEVNETNS", &self.name))
    }

    /// Reads the name, index and MTU again, in the namespace the interface is in now (after
    /// netlink moved, renamed or re-sized it). Spawns a short-lived thread to enter that
    /// namespace ([`super::netns::in_netns`]); control path only.
    ///
    /// # Errors
    /// An ioctl or the namespace thread failed.
    pub fn refresh(&mut self) -> Result<(), TapError> {
        let (name, _) = self
            .first()
            .get_iff()
            .map_err(io_err("TUNGETIFF", &self.name))?;
        let ns = self.netns()?;
        let (ifindex, mtu) = super::netns::in_netns(&ns, || -> io::Result<(u32, u32)> {
            let ifindex = nix::net::if_::if_nametoindex(name.as_str())?;
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Datagram,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            Ok((ifindex, if_mtu(sock.as_fd(), &name)?))
        })
        .and_then(|r| r)
        .map_err(io_err("refresh in the interface's netns", &name))?;
        self.name = name;
        self.ifindex = ifindex;
        self.mtu = mtu;
        self.set_queue_mtu();
        Ok(())
    }
}

impl FrameEndpoint for Tap {
    fn recv(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        self.queues[0].recv(buf)
    }

    fn send(&mut self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        self.queues[0].send(vnet, frame)
    }

    fn set_carrier(&mut self, up: bool) -> io::Result<()> {
        self.first()
            .carrier(up)
            .map_err(|e| io_err("TUNSETCARRIER", &self.name)(e).into())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.queues[0].readiness_fd()
    }
}

/// `/proc/net/dev` as seen in the network namespace `ns` (blocking: a thread enters it).
pub fn net_dev_in(ns: &std::fs::File) -> Option<String> {
    super::netns::in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/dev"))
        .ok()?
        .ok()
}

/// One interface line of `/proc/net/dev`: its name and `tx_dropped` column.
fn tx_dropped_line(line: &str) -> Option<(&str, u64)> {
    let (name, rest) = line.split_once(':')?;
    // 8 receive columns, then tx bytes, packets, errs, drop.
    Some((name.trim(), rest.split_whitespace().nth(11)?.parse().ok()?))
}

/// The `tx_dropped` column of `ifname` in a `/proc/net/dev` text.
pub fn tx_dropped_of(net_dev: &str, ifname: &str) -> Option<u64> {
    net_dev
        .lines()
        .filter_map(tx_dropped_line)
        .find_map(|(name, n)| (name == ifname).then_some(n))
}

/// Every interface's `tx_dropped` in a `/proc/net/dev` text, by name (one pass, for callers
/// that look many interfaces up).
pub fn tx_dropped_all(net_dev: &str) -> std::collections::HashMap<String, u64> {
    net_dev
        .lines()
        .filter_map(tx_dropped_line)
        .map(|(name, n)| (name.to_string(), n))
        .collect()
}

/// A TAP as a half, with every queue of it: queue 0 is the [`Tap`]'s own, the others are taken
/// from it ([`Tap::take_queues`]). Each queue is read under its own lock (only its reader takes
/// it) and written through a duplicate of its fd, so delivering never waits for a read.
pub struct TapHalf {
    tap: Mutex<Tap>,
    /// Queues 1.. (empty for a single-queue TAP).
    extra: Vec<Mutex<TapQueue>>,
    /// One write fd per queue.
    writers: Vec<OwnedFd>,
}

impl std::fmt::Debug for TapHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapHalf")
            .field("queues", &self.writers.len())
            .finish_non_exhaustive()
    }
}

impl TapHalf {
    /// # Errors
    /// A queue has no fd or it cannot be duplicated.
    pub fn new(mut tap: Tap) -> io::Result<Self> {
        let extra = tap.take_queues();
        let mut writers = vec![super::dup_fd(tap.readiness_fd(), "TAP")?];
        for q in &extra {
            writers.push(super::dup_fd(q.readiness_fd(), "TAP queue")?);
        }
        Ok(Self {
            tap: Mutex::new(tap),
            extra: extra.into_iter().map(Mutex::new).collect(),
            writers,
        })
    }

    fn writer(&self, queue: usize) -> &OwnedFd {
        &self.writers[queue % self.writers.len()]
    }
}

fn poisoned<T>(_: T) -> io::Error {
    io::Error::other("tap lock poisoned")
}

impl HalfIo for TapHalf {
    fn queues(&self) -> usize {
        self.writers.len()
    }

    fn dup_fd(&self, queue: usize) -> io::Result<OwnedFd> {
        self.writer(queue).try_clone()
    }

    fn recv(&self, queue: usize, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match queue % self.writers.len() {
            0 => self.tap.lock().map_err(poisoned)?.recv(buf),
            q => self.extra[q - 1].lock().map_err(poisoned)?.recv(buf),
        }
    }

    fn send(&self, queue: usize, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        // A TAP reports the header and the frame written.
        let iov = [IoSlice::new(vnet), IoSlice::new(frame)];
        let n = nix::sys::uio::writev(self.writer(queue), &iov).map_err(io::Error::from)?;
        if n < vnet.len() + frame.len() {
            return Err(io::Error::other(format!("short TAP write: {n} bytes")));
        }
        Ok(())
    }

    fn set_carrier(&self, up: bool) -> io::Result<()> {
        self.tap.lock().map_err(poisoned)?.set_carrier(up)
    }

    fn kernel_tx_dropped(&self) -> Option<u64> {
        let (ns, name) = self.tx_dropped_source()?;
        tx_dropped_of(&net_dev_in(&ns)?, &name)
    }

    fn tx_dropped_source(&self) -> Option<(std::fs::File, String)> {
        let tap = self.tap.lock().ok()?;
        Some((tap.netns().ok()?, tap.name().to_string()))
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

    #[test]
    fn tx_dropped_is_the_twelfth_column_by_interface() {
        let text = concat!(
            "Inter-|   Receive                            |  Transmit\n",
            " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n",
            "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n",
            "mt0123abcd: 5000 50 0 0 0 0 0 0 9000 90 0 77 0 0 0 0\n",
        );
        let m = tx_dropped_all(text);
        assert_eq!(m.get("mt0123abcd"), Some(&77));
        assert_eq!(m.get("lo"), Some(&0));
        assert_eq!(m.len(), 2, "{m:?}");
    }

    const CSUM: c_ulong = libc::TUN_F_CSUM as c_ulong;
    const TSO4: c_ulong = libc::TUN_F_TSO4 as c_ulong;
    const TSO6: c_ulong = libc::TUN_F_TSO6 as c_ulong;
    const ECN: c_ulong = libc::TUN_F_TSO_ECN as c_ulong;
    const USO: c_ulong = (libc::TUN_F_USO4 | libc::TUN_F_USO6) as c_ulong;

    #[test]
    fn offload_words() {
        assert_eq!(offload_flags(true, true, true, true, false), 0x0f);
        assert_eq!(
            offload_flags(true, true, true, true, true),
            CSUM | TSO4 | TSO6 | ECN | USO
        );
        assert_eq!(Offloads::ALL.flags(), 0x6f);
        assert_eq!(Offloads::NONE.flags(), 0);
        assert_eq!(offload_flags(true, false, false, false, false), CSUM);
        assert_eq!(offload_flags(true, false, true, false, false), CSUM | TSO6);
    }

    #[test]
    fn everything_needs_checksum_offload() {
        // TSO or USO without TUN_F_CSUM is EINVAL in the kernel: ask for nothing instead.
        assert_eq!(offload_flags(false, true, true, true, true), 0);
    }

    #[test]
    fn ecn_only_with_tso() {
        assert_eq!(offload_flags(true, false, false, true, false), CSUM);
        assert_eq!(
            offload_flags(true, true, false, true, false),
            CSUM | TSO4 | ECN
        );
    }

    #[test]
    fn uso_fallback_keeps_the_rest() {
        let all = Offloads::ALL.flags();
        assert_eq!(without_uso(all), CSUM | TSO4 | TSO6 | ECN);
        assert_eq!(without_uso(without_uso(all)), without_uso(all));
        assert_eq!(without_uso(CSUM), CSUM);
    }

    #[test]
    fn tun_flag_words() {
        let base = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short;
        assert_eq!(tun_flags(false, false, true), base);
        assert_eq!(tun_flags(false, false, true), 0x5002);
        assert_eq!(
            tun_flags(true, false, true),
            base | libc::IFF_MULTI_QUEUE as c_short
        );
        assert_eq!(
            tun_flags(false, false, false),
            base | libc::IFF_NO_CARRIER as c_short
        );
        // IFF_TUN_EXCL is the sign bit of the C short.
        assert_eq!(tun_flags(false, true, true) as u16, 0xd002);
        assert!(tun_flags(false, true, true) < 0);
    }

    #[test]
    fn default_options() {
        let o = TapOptions::default();
        assert_eq!(o.queues, 1);
        assert_eq!(o.offloads, Offloads::ALL);
        assert!(!o.persist);
        assert!(!o.carrier, "a wire starts without carrier");
    }
}
