//! A wire half's interface in the pod: a TAP (from `meshnet_wire::sys`), created directly inside
//! the pod's namespace under its final name, persistent (so a daemon restart re-attaches to the
//! same interface, same ifindex, instead of rebuilding it), configured by netlink like every other
//! link end, and handed to the [`WireNode`].

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use meshnet_wire::endpoint::FrameEndpoint;
use meshnet_wire::sys::tap::{Offloads, Tap, TapOptions};
use meshnet_wire::vnet::VnetBytes;

use crate::gwire::{EndpointKind, LinkLabels, WireKey, WireNode};
use crate::links::{EndSpec, Kernel, LinkError, Mode, Outcome};
use crate::netns;

/// MTU of a wire when the link sets none.
pub const DEFAULT_WIRE_MTU: u32 = 1500;

/// The pod's half of a gRPC wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireSpec {
    pub key: WireKey,
    pub alias: String,
    pub end: EndSpec,
    pub mtu: u32,
    /// The peer pod's node, once the peer is alive.
    pub peer: Option<IpAddr>,
    pub labels: LinkLabels,
}

/// Frame I/O of a half, usable from the reader task and the stream task at once.
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

/// A TAP shared by a reader and a writer: reads go through the [`Tap`] (only the reader task
/// takes its lock), writes through a duplicate of its fd (the kernel serialises TAP I/O itself).
struct TapHalf {
    tap: Mutex<Tap>,
    writer: OwnedFd,
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
        let iov = [io::IoSlice::new(vnet), io::IoSlice::new(frame)];
        let n = nix::sys::uio::writev(&self.writer, &iov).map_err(io::Error::from)?;
        if n != vnet.len() + frame.len() {
            return Err(io::Error::other(format!("short TAP write: {n} bytes")));
        }
        Ok(())
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
        let text = meshnet_wire::sys::netns::in_netns(&ns, || {
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })
        .ok()?
        .ok()?;
        tx_dropped_of(&text, &name)
    }
}

/// Opens (creating if `create`) the TAP `ifname` inside the pod's namespace; its MTU, address
/// and alias are set by netlink afterwards, like every other link end.
async fn open_tap(
    end: &EndSpec,
    create: bool,
    offloads: Offloads,
) -> Result<(Arc<dyn HalfIo>, u32), LinkError> {
    let ns = netns::open(&end.netns)?;
    let name = end.ifname.clone();
    let opts = TapOptions {
        persist: true,
        offloads,
        ..TapOptions::default()
    };
    let path = end.netns.display().to_string();
    let tap = tokio::task::spawn_blocking(move || {
        meshnet_wire::sys::netns::in_netns(&ns, move || {
            if create {
                Tap::create(&name, opts)
            } else {
                Tap::attach(&name, opts)
            }
        })
    })
    .await
    .map_err(|_| LinkError::Mismatch("TAP worker died".into()))?
    .map_err(|e| LinkError::Mismatch(format!("entering {path}: {e}")))?
    .map_err(|e| LinkError::Mismatch(format!("{e} (in {path})")))?;
    let ifindex = tap.ifindex();
    let fd = tap
        .readiness_fd()
        .ok_or_else(|| LinkError::Mismatch("TAP without an fd".into()))?;
    let writer = fd
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| LinkError::Mismatch(format!("dup of TAP {}: {e}", end.ifname)))?;
    Ok((
        Arc::new(TapHalf {
            tap: Mutex::new(tap),
            writer,
        }),
        ifindex,
    ))
}

/// Makes (or in [`Mode::Verify`], checks) a wire half: its TAP present in the pod, configured,
/// and registered with the wire node (attached again after a daemon restart).
///
/// # Errors
/// The interface name is taken by something meshnet did not make, or a kernel call failed.
pub async fn ensure_half(
    node: &Arc<WireNode>,
    spec: &WireSpec,
    mode: Mode,
) -> Result<Outcome, LinkError> {
    let end = &spec.end;
    let design = node.design();
    // The endpoint kind decides what the pod's interface is: a TAP, or the pod end of a veth
    // whose host end the daemon reads with AF_PACKET (`afhalf`).
    let (kind, open) = match design.endpoint {
        EndpointKind::Tap => ("tun", HalfOpen::Tap(design.tap_offloads())),
        EndpointKind::AfPacket => ("veth", HalfOpen::AfPacket),
    };
    let st = Kernel::lookup(&end.netns, &end.ifname).await?;
    let mut outcome = Outcome::Unchanged;
    match &st {
        Some(st)
            if st.kind.as_deref() == Some(kind)
                && st.alias.as_deref() == Some(spec.alias.as_str()) =>
        {
            if let Some(d) = crate::links::end_drift(end, st, Some(spec.mtu)) {
                if mode == Mode::Verify {
                    return Err(LinkError::Mismatch(d));
                }
                Kernel::configure(end, &spec.alias, Some(spec.mtu)).await?;
                outcome = Outcome::Repaired;
            }
            if node.ifindex(&spec.key) != Some(st.index) {
                if mode == Mode::Verify {
                    return Err(LinkError::Mismatch(format!(
                        "{} is not attached to the wire",
                        end.ifname
                    )));
                }
                let (io, ifindex) = open.open(spec, false).await?;
                node.register(spec.key.clone(), io, ifindex, &spec.labels, spec.peer);
                outcome = Outcome::Repaired;
            } else {
                node.update_peer(&spec.key, spec.peer);
            }
            return Ok(outcome);
        }
        Some(_) if mode == Mode::Verify => {
            return Err(LinkError::Mismatch(format!(
                "{} in {} is not this link's wire",
                end.ifname,
                end.netns.display()
            )));
        }
        None if mode == Mode::Verify => {
            return Err(LinkError::Mismatch(format!(
                "{} missing in {}",
                end.ifname,
                end.netns.display()
            )));
        }
        Some(st) => {
            if !st
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(crate::links::ALIAS_PREFIX))
            {
                return Err(LinkError::Occupied {
                    ifname: end.ifname.clone(),
                    netns: end.netns.display().to_string(),
                });
            }
            Kernel::delete_in(&end.netns, &end.ifname).await?;
        }
        None => {}
    }
    let (io, ifindex) = open.open(spec, true).await?;
    if let Err(e) = Kernel::configure(end, &spec.alias, Some(spec.mtu)).await {
        let _ = Kernel::delete_in(&end.netns, &end.ifname).await;
        return Err(e);
    }
    node.register(spec.key.clone(), io, ifindex, &spec.labels, spec.peer);
    Ok(Outcome::Created)
}

/// How a half's interface is made or attached to, by endpoint kind.
#[derive(Debug, Clone, Copy)]
enum HalfOpen {
    Tap(Offloads),
    AfPacket,
}

impl HalfOpen {
    async fn open(
        self,
        spec: &WireSpec,
        create: bool,
    ) -> Result<(Arc<dyn HalfIo>, u32), LinkError> {
        match self {
            HalfOpen::Tap(offloads) => open_tap(&spec.end, create, offloads).await,
            HalfOpen::AfPacket => crate::afhalf::open(spec, create).await,
        }
    }
}
