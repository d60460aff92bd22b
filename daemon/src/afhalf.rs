//! A wire half on AF_PACKET (`meshnetd --wire-endpoint afpacket`): the pod's interface is one
//! end of a veth pair, created directly inside the pod's namespace under its final name; the
//! other end (the *host end*, named by [`host_name`]) stays in the node's namespace, where the
//! daemon reads and writes it with a [`PacketSocket`]. `PACKET_VNET_HDR` carries GSO
//! super-frames and partial checksums whole, as a TAP's `IFF_VNET_HDR` does, so the rest of the
//! wire (batches, streams) is the same as with a TAP.
//!
//! * **Carrier**: a veth has carrier only while its peer is administratively up, so the carrier
//!   the pod sees is the host end's up/down state, set by netlink. `HalfIo::set_carrier` is
//!   synchronous and called from the wire's tasks; it records the wanted state in a `watch`
//!   channel and one task per half applies the latest one (so a quick down/up ends up).
//! * **Receiving**: [`RxMode::Read`] (one `recvmsg` per frame), not the `TPACKET_V3` ring: the
//!   ring holds a lone frame until its block retires (≥ 1 ms), which would add a millisecond to
//!   every request/response exchange on the link. The socket buffer is [`RCVBUF`].
//! * **Lifetime**: the pair lives with the pod's namespace (deleting the pod end, or the
//!   namespace, deletes the host end too). A restarted daemon attaches a new socket to the host
//!   end of the existing pair. Both ends carry the link's alias.
//! * **The host end** has IPv6 disabled (no link-local address, no ND/MLD chatter into the pod)
//!   and no IPv4 address; the socket does not see what leaves it (`PACKET_IGNORE_OUTGOING`).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use meshnet_wire::sys::afpacket::{PacketOptions, PacketSocket, RxMode};
use meshnet_wire::transport::{HalfIo, PacketHalf};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use tokio::sync::watch;

use crate::gwire::WireKey;
use crate::links::{self, ALIAS_PREFIX, EndSpec, Kernel, LinkError};
use crate::netns;

/// Receive buffer of a half's socket (forced past `rmem_max`; the daemon has `CAP_NET_ADMIN`):
/// what arrives from the pod while the reader is busy waits here.
pub const RCVBUF: usize = 4 << 20;

/// Name of a wire's host end in the node's namespace: `mw` and 12 hex digits of FNV-1a-64 over
/// the link identity (namespace, `0xff`, uid little-endian), folded to 48 bits — 14 bytes, within
/// the kernel's 15. Both a daemon restart and a rebuilt pod find the same name.
pub fn host_name(key: &WireKey) -> String {
    let h = meshnet_wire::table::link_hash(&key.0, key.1);
    format!("mw{:012x}", (h ^ (h >> 48)) & 0xffff_ffff_ffff)
}

fn io_mismatch(what: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Mismatch(format!("{what}: {e}"))
}

/// A netlink handle in the daemon's own namespace (the node's), and its connection task.
fn node_netlink() -> io::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    Ok((handle, tokio::spawn(conn)))
}

/// Sets the host end `index` up or down.
async fn set_host_state(index: u32, up: bool) -> Result<(), LinkError> {
    let (h, conn) = node_netlink().map_err(|e| io_mismatch("netlink socket in the node", e))?;
    let msg = LinkUnspec::new_with_index(index);
    let msg = if up { msg.up() } else { msg.down() };
    let r = h.link().set(msg.build()).execute().await;
    conn.abort();
    r.map_err(|e| io_mismatch(&format!("setting host end {index} up={up}"), e))
}

/// Makes the veth pair of a half: the host end in the node's namespace, down, the pod end inside
/// the pod's namespace under its final name. A leftover host end of the same name (a pod end
/// deleted while the daemon was down cannot leave one; a crash between steps can) is replaced if
/// it is meshnet's.
async fn create_pair(
    h: &Handle,
    end: &EndSpec,
    alias: &str,
    mtu: u32,
    host: &str,
) -> Result<(), LinkError> {
    let node_ns = std::path::Path::new("/proc/self/ns/net");
    match links::get_iface(h, host).await {
        Ok(None) => {}
        Ok(Some(st))
            if st
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX)) =>
        {
            h.link()
                .del(st.index)
                .execute()
                .await
                .map_err(|e| LinkError::Netlink {
                    op: "delete stale host end",
                    ifname: host.to_string(),
                    netns: node_ns.display().to_string(),
                    source: e,
                })?;
        }
        Ok(Some(_)) => {
            return Err(LinkError::Occupied {
                ifname: host.to_string(),
                netns: "the node".into(),
            });
        }
        Err(e) => return Err(io_mismatch(&format!("looking up {host} in the node"), e)),
    }
    let pod_ns = netns::open(&end.netns)?;
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(end.ifname.clone())
        .alias(alias.to_string())
        .mtu(mtu)
        .setns_by_fd(pod_ns.as_raw_fd());
    if let Some(mac) = end.mac {
        peer = peer.address(mac.0.to_vec());
    }
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_string())
        .alias(alias.to_string())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    let r = h.link().add(msg.build()).execute().await;
    // The namespace fd must outlive the request.
    drop(pod_ns);
    r.map_err(|e| LinkError::Netlink {
        op: "create veth",
        ifname: format!("{host} / {}", end.ifname),
        netns: end.netns.display().to_string(),
        source: e,
    })?;
    // Best effort: in a container /proc/sys may be read-only; the wire works without it.
    let path = format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(%path, error = %e, "cannot disable IPv6 on the host end");
    }
    Ok(())
}

/// Makes (if `create`) or attaches to the veth pair of a half, opens the AF_PACKET socket on its
/// host end, and returns the half's I/O and the pod end's ifindex. The caller configures the pod
/// end (address, MTU, up) as for a TAP.
///
/// # Errors
/// The host end's name is taken by something meshnet did not make, a netlink call failed, the
/// pair is not whole, or the socket cannot be opened.
pub async fn open(
    key: &WireKey,
    end: &EndSpec,
    alias: &str,
    mtu: u32,
    create: bool,
) -> Result<(Arc<dyn HalfIo>, u32), LinkError> {
    let host = host_name(key);
    let (h, conn) = node_netlink().map_err(|e| io_mismatch("netlink socket in the node", e))?;
    let r = async {
        if create {
            create_pair(&h, end, alias, mtu, &host).await?;
        }
        links::get_iface(&h, &host)
            .await
            .map_err(|e| io_mismatch(&format!("looking up {host} in the node"), e))?
            .ok_or_else(|| {
                LinkError::Mismatch(format!(
                    "host end {host} of {} is missing from the node",
                    end.ifname
                ))
            })
    }
    .await;
    conn.abort();
    let host_st = r?;
    let pod_st = Kernel::lookup(&end.netns, &end.ifname)
        .await?
        .ok_or_else(|| {
            LinkError::Mismatch(format!(
                "{} vanished from {}",
                end.ifname,
                end.netns.display()
            ))
        })?;
    if pod_st.link != Some(host_st.index) {
        return Err(LinkError::Mismatch(format!(
            "{} is not paired with host end {host}",
            end.ifname
        )));
    }
    // This thread is in the node's namespace (the daemon never moves its own threads), where the
    // host end is.
    let opts = PacketOptions {
        rx: RxMode::Read { rcvbuf: RCVBUF },
        ..PacketOptions::default()
    };
    let socket = PacketSocket::open(host_st.index, &opts)
        .map_err(|e| io_mismatch(&format!("AF_PACKET on {host}"), e))?;
    let (carrier, mut wanted) = watch::channel(host_st.up);
    let index = host_st.index;
    tokio::spawn(async move {
        // Ends when the half (the sender) is dropped.
        while wanted.changed().await.is_ok() {
            let up = *wanted.borrow_and_update();
            if let Err(e) = set_host_state(index, up).await {
                tracing::warn!(host_end = index, up, error = %e, "cannot set the wire's carrier");
            }
        }
    });
    let io = PacketHalf::new(
        socket,
        Box::new(move |up| {
            carrier.send_replace(up);
        }),
    )
    .map_err(|e| io_mismatch(&format!("the socket on {host}"), e))?;
    Ok((Arc::new(io), pod_st.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_differ() {
        let a = host_name(&("default".into(), 1));
        let b = host_name(&("default".into(), 2));
        let c = host_name(&("other".into(), 1));
        for n in [&a, &b, &c] {
            assert!(n.len() <= 15, "{n}");
            assert!(n.starts_with("mw"));
        }
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            host_name(&("default".into(), 1)),
            "stable across restarts"
        );
    }
}
