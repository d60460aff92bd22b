//! A wire half on a port (issue 12): the pod's interface is its port (`crate::ports`), the same
//! veth that a same-node or VXLAN link gives it, so a peer moving between nodes never replaces
//! it. The wire reads and writes, in the node's namespace, either a TAP (`--wire-endpoint tap`,
//! the default: persistent, named by [`crate::ports::wire_tap_name`], `IFF_VNET_HDR`, patched to
//! the port's node end with tc `mirred` — GSO super-frames and partial checksums pass whole) or
//! the node end itself with AF_PACKET (`--wire-endpoint afpacket`). The wire's carrier verdict
//! drives the node end's admin state through the [`Patchbay`] (hold time included), so the
//! pod's kernel reports it at once, as for any veth. A daemon restart attaches again to the
//! same TAP and port. Frames never pass through here.

use std::path::Path;
use std::sync::Arc;

use meshnet_wire::sys::tap::{Offloads, Tap, TapError, TapOptions};
use meshnet_wire::transport::{HalfIo, TapHalf};
use rtnetlink::{Handle, LinkUnspec};

pub use crate::gwire::WireSpec;
use crate::gwire::{EndpointKind, WireNode};
use crate::links::snapshot::Snapshot;
use crate::links::{self, LinkError, Mode, Outcome};
use crate::ports::{self, Patchbay};

/// MTU of a wire when the link sets none.
pub const DEFAULT_WIRE_MTU: u32 = 1500;

/// A wire half's I/O on a port: the endpoint in the node (a TAP that keeps its carrier, or the
/// AF_PACKET socket on the node end), the wire's carrier sent to the port's node end through the
/// patchbay, and the frames the pod sent while its carrier was off read from the pod end (the
/// kernel drops them there, so that is where they are counted).
struct Ported<H> {
    inner: H,
    carrier: Box<dyn Fn(bool) + Send + Sync>,
    pod_netns: std::path::PathBuf,
    pod_ifname: String,
}

impl<H: HalfIo> HalfIo for Ported<H> {
    fn queues(&self) -> usize {
        self.inner.queues()
    }
    fn dup_fd(&self, queue: usize) -> std::io::Result<std::os::fd::OwnedFd> {
        self.inner.dup_fd(queue)
    }
    fn recv(&self, queue: usize, buf: &mut bytes::BytesMut) -> std::io::Result<Option<usize>> {
        self.inner.recv(queue, buf)
    }
    fn send(
        &self,
        queue: usize,
        vnet: &meshnet_wire::vnet::VnetBytes,
        frame: &[u8],
    ) -> std::io::Result<()> {
        self.inner.send(queue, vnet, frame)
    }
    fn set_carrier(&self, up: bool) -> std::io::Result<()> {
        (self.carrier)(up);
        Ok(())
    }
    fn kernel_tx_dropped(&self) -> Option<u64> {
        let (ns, name) = self.tx_dropped_source()?;
        meshnet_wire::sys::tap::tx_dropped_of(&meshnet_wire::sys::tap::net_dev_in(&ns)?, &name)
    }

    fn tx_dropped_source(&self) -> Option<(std::fs::File, String)> {
        let ns = std::fs::File::open(&self.pod_netns).ok()?;
        Some((ns, self.pod_ifname.clone()))
    }
}

fn wire_err(what: impl std::fmt::Display) -> LinkError {
    LinkError::Mismatch(what.to_string())
}

/// Opens (creating if `create`) the TAP `name` with `queues` queues in the node's namespace
/// (the daemon's threads never leave it). A TAP left by a daemon that ran with the other queue
/// kind (one queue against several) cannot be attached: it is deleted and made again (the
/// pod's port stays; the patch to it is redone by the caller).
async fn open_node_tap(
    name: &str,
    create: bool,
    offloads: Offloads,
    queues: usize,
) -> Result<(TapHalf, u32, bool), LinkError> {
    let n = name.to_string();
    let opts = TapOptions {
        persist: true,
        offloads,
        queues,
        ..TapOptions::default()
    };
    let (tap, created) = tokio::task::spawn_blocking(move || {
        if create {
            return (Tap::create(&n, opts), true);
        }
        match Tap::attach(&n, opts.clone()) {
            Err(TapError::Io {
                op: "TUNSETIFF",
                source,
                ..
            }) if source.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(tap = %n, queues, "wire TAP of the other queue kind: made again");
                // Attached with the kind it has, made not persistent, closed: it is gone.
                let other = TapOptions {
                    queues: if queues > 1 { 1 } else { 2 },
                    ..opts.clone()
                };
                if let Ok(old) = Tap::attach(&n, other) {
                    let _ = old.set_persist(false);
                }
                (Tap::create(&n, opts), true)
            }
            r => (r, false),
        }
    })
    .await
    .map_err(|_| wire_err("TAP worker died"))?;
    let tap = tap.map_err(|e| wire_err(format!("{e} (in the node)")))?;
    let ifindex = tap.ifindex();
    let io = TapHalf::new(tap).map_err(|e| wire_err(format!("TAP {name} for the wire: {e}")))?;
    // Always on: frames patched into the TAP must reach the wire; the pod's carrier is its
    // node end's (the patchbay's).
    io.set_carrier(true)
        .map_err(|e| wire_err(format!("carrier of TAP {name}: {e}")))?;
    Ok((io, ifindex, created))
}

/// Makes (or in [`Mode::Verify`], checks) a wire half: the pod's port, the wire's endpoint in
/// the node (a TAP patched to the port's node end, or the node end itself), registered with
/// the wire node (attached again after a daemon restart). `h` is a netlink handle in the node's
/// namespace.
///
/// # Errors
/// A name is taken by something meshnet did not make, or a kernel call failed.
pub async fn ensure_half(
    node: &Arc<WireNode>,
    bay: &Arc<Patchbay>,
    h: &Handle,
    snap: &Snapshot,
    spec: &WireSpec,
    mode: Mode,
) -> Result<Outcome, LinkError> {
    let port = &spec.port;
    let mut outcome = ports::ensure_port(h, snap, port, mode).await?;
    let registered = node.ifindex(&spec.key);
    let carrier = {
        let (bay, end) = (Arc::clone(bay), port.node.clone());
        move |up: bool| bay.wire_carrier(&end, up)
    };
    match node.endpoint() {
        EndpointKind::Tap => {
            let name = ports::wire_tap_name(&spec.key.0, spec.key.1);
            let st = ports::node_side(h, snap, &name).await?;
            let exact = st.as_ref().is_some_and(|s| {
                s.kind.as_deref() == Some("tun") && s.alias.as_deref() == Some(spec.alias.as_str())
            });
            // The same link's TAP from the pod's previous sandbox (its alias names that one) is
            // taken over (attached and re-aliased) rather than deleted and made again, which
            // costs the kernel tens of milliseconds per device: a restarted pod with a thousand
            // wires would wait 20 s for it.
            let ours = exact
                || (mode == Mode::Repair
                    && st.as_ref().is_some_and(|s| {
                        s.kind.as_deref() == Some("tun")
                            && s.alias
                                .as_deref()
                                .and_then(links::OwnedAlias::parse)
                                .is_some_and(|a| {
                                    a.kind == "grpc"
                                        && a.namespace == spec.key.0
                                        && a.uid == spec.key.1
                                })
                    }));
            let attach = match (&st, ours) {
                (Some(s), true) if exact && registered == Some(s.index) => {
                    node.update_peer(&spec.key, spec.peer);
                    // Its patch looks the TAP up next.
                    snap.confirm(Path::new(ports::NODE_NETNS), &name);
                    None
                }
                (Some(_), true) => Some(false),
                (_, _) if mode == Mode::Verify => {
                    return Err(LinkError::Missing {
                        ifname: name,
                        netns: "the node (the wire's TAP)".into(),
                    });
                }
                (Some(s), false) => {
                    if !links::is_owned(s) {
                        return Err(LinkError::Occupied {
                            ifname: name,
                            netns: "the node".into(),
                        });
                    }
                    h.link()
                        .del(s.index)
                        .execute()
                        .await
                        .map_err(|e| ports::node_err("delete stale wire TAP", &name, e))?;
                    Some(true)
                }
                (None, _) => Some(true),
            };
            if let Some(create) = attach {
                if mode == Mode::Verify {
                    return Err(wire_err(format!("{name} is not attached to the wire")));
                }
                let offloads = node.legacy().tap_offloads();
                let queues = node.tap_queues();
                let (tap, ifindex, create) = match open_node_tap(&name, create, offloads, queues)
                    .await
                {
                    Ok(t) => t,
                    // The previous sandbox's half still holds it (its queue is busy):
                    // made anew after all.
                    Err(e) if !exact && !create => {
                        tracing::debug!(tap = %name, error = %e, "cannot take the TAP over: made anew");
                        if let Some(s) = &st {
                            h.link()
                                .del(s.index)
                                .execute()
                                .await
                                .map_err(|e| ports::node_err("delete stale wire TAP", &name, e))?;
                        }
                        open_node_tap(&name, true, offloads, queues).await?
                    }
                    Err(e) => return Err(e),
                };
                if create || !exact {
                    // The TAP's MTU checks nothing on this path (mirred into it, the wire
                    // writing to it); the link's is a value the kernel takes.
                    let msg = LinkUnspec::new_with_index(ifindex)
                        .alias(spec.alias.clone())
                        .mtu(spec.mtu)
                        .up()
                        .build();
                    if let Err(e) = h.link().set(msg).execute().await {
                        // Persistent: leave nothing half-made behind.
                        let _ = h.link().del(ifindex).execute().await;
                        return Err(ports::node_err("configure the wire TAP", &name, e));
                    }
                    if create {
                        ports::disable_ipv6(&name, "a wire TAP");
                    }
                }
                bay.wire_attached(&port.node, Some(name.clone()), spec.key.clone());
                let io = Ported {
                    inner: tap,
                    carrier: Box::new(carrier),
                    pod_netns: port.end.netns.clone(),
                    pod_ifname: port.end.ifname.clone(),
                };
                node.register(spec, Arc::new(io), ifindex);
                outcome = if create {
                    Outcome::Created
                } else {
                    outcome.max(Outcome::Repaired)
                };
            }
            if ports::ensure_patch(h, snap, &port.node, &name, mode).await? != Outcome::Unchanged
                && outcome == Outcome::Unchanged
            {
                outcome = Outcome::Repaired;
            }
        }
        EndpointKind::AfPacket => {
            let end = ports::node_side(h, snap, &port.node)
                .await?
                .ok_or_else(|| LinkError::Missing {
                    ifname: port.node.clone(),
                    netns: "the node".into(),
                })?;
            if registered == Some(end.index) {
                node.update_peer(&spec.key, spec.peer);
            } else {
                if mode == Mode::Verify {
                    return Err(wire_err(format!(
                        "{} is not attached to the wire",
                        port.node
                    )));
                }
                let io = Ported {
                    inner: crate::afhalf::open_on(end.index, &port.node).map_err(wire_err)?,
                    carrier: Box::new(carrier),
                    pod_netns: port.end.netns.clone(),
                    pod_ifname: port.end.ifname.clone(),
                };
                bay.wire_attached(&port.node, None, spec.key.clone());
                node.register(spec, Arc::new(io), end.index);
                outcome = outcome.max(Outcome::Repaired);
            }
        }
    }
    Ok(outcome)
}
