//! A wire half's interface in the pod: a TAP (from `meshnet_wire::sys`), created directly inside
//! the pod's namespace under its final name, persistent (so a daemon restart re-attaches to the
//! same interface, same ifindex, instead of rebuilding it), configured by netlink like every other
//! link end, and handed to the [`WireNode`] as a `meshnet_wire::transport::TapHalf`. Frames never
//! pass through here: the wire reads and writes the interface itself.

use std::sync::Arc;

use meshnet_wire::sys::tap::{Offloads, Tap, TapOptions};
use meshnet_wire::transport::{HalfIo, TapHalf};

pub use crate::gwire::WireSpec;
use crate::gwire::{EndpointKind, WireNode};
use crate::links::{EndSpec, Kernel, LinkError, Mode, Outcome};
use crate::netns;

/// MTU of a wire when the link sets none.
pub const DEFAULT_WIRE_MTU: u32 = 1500;

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
    let io = TapHalf::new(tap)
        .map_err(|e| LinkError::Mismatch(format!("TAP {} for the wire: {e}", end.ifname)))?;
    Ok((Arc::new(io), ifindex))
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
    // The endpoint kind decides what the pod's interface is: a TAP, or the pod end of a veth
    // whose host end the daemon reads with AF_PACKET (`afhalf`).
    let (kind, open) = match node.endpoint() {
        EndpointKind::Tap => ("tun", HalfOpen::Tap(node.legacy().tap_offloads())),
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
                node.register(spec, io, ifindex);
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
    node.register(spec, io, ifindex);
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
            HalfOpen::AfPacket => {
                crate::afhalf::open(&spec.key, &spec.end, &spec.alias, spec.mtu, create).await
            }
        }
    }
}
