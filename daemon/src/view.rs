//! `GET /topology`: this node's part of the topology as JSON, for pictures and other tools.
//!
//! The view joins two sources that are each authoritative for their half: the store (which pods
//! are alive on this node, what each declares, and the per-link state the reconciler wrote) and the
//! kernel (the pod's interface as it is now: ifindex, MTU, carrier, admin state and the interface
//! counters). Kernel counters are read for every link kind alike (veth, VXLAN, macvlan, gRPC wire
//! TAP), from inside the pod's namespace, so they count what the pod sent and received.
//!
//! Counters are cumulative and stamped with `sampled_at_ms`; a reader that wants rates takes two
//! views and divides (`meshnet-lab graph` does). The daemon keeps no per-reader state.
//!
//! The view only reads: one link dump per alive pod namespace, on the namespace threads of
//! [`crate::netns`], the pods in parallel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use meshnet_topology::store::SharedStore;
use meshnet_topology::topology::{Topology, same_node};
pub use meshnet_topology::view::{EndView, NodeView, PortView, ends_of};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

/// Builds the view from the store and the kernel.
///
/// A pod whose namespace cannot be read (e.g. gone since its status was written) is listed with
/// `port: None` on each end: the view shows what is, and never fails for one pod.
///
/// # Errors
/// The store cannot be listed.
pub async fn node_view(
    store: &SharedStore,
    node: &str,
    host_ip: IpAddr,
) -> Result<NodeView, meshnet_topology::store::StoreError> {
    let topos = store.list().await?;
    let mine: Vec<Topology> = topos
        .into_iter()
        .filter(|t| t.status.is_alive() && same_node(&t.status.src_ip, &host_ip))
        .collect();
    let dumps = futures::future::join_all(mine.iter().map(|t| {
        let path = PathBuf::from(&t.status.net_ns);
        async move { port_dump(path).await.unwrap_or_default() }
    }))
    .await;
    let sampled_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut ends = Vec::new();
    for (t, ports) in mine.iter().zip(dumps) {
        ends.extend(ends_of(t, &ports));
    }
    ends.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.interface).cmp(&(&b.namespace, &b.pod, &b.interface))
    });
    Ok(NodeView {
        node: node.to_string(),
        host_ip: host_ip.to_string(),
        sampled_at_ms,
        ends,
    })
}

/// Every interface of the namespace at `path`, by name.
pub(crate) async fn port_dump(path: PathBuf) -> Option<HashMap<String, PortView>> {
    let out = crate::netns::in_netns(&path, |handle| async move {
        let mut links = handle.link().get().execute();
        let mut out = HashMap::new();
        while let Ok(Some(msg)) = links.try_next().await {
            if let Some((name, port)) = port_of(&msg) {
                out.insert(name, port);
            }
        }
        out
    })
    .await;
    out.ok()
}

/// Name and state of one interface from its link message. Pure.
fn port_of(msg: &LinkMessage) -> Option<(String, PortView)> {
    let mut name = None;
    let mut p = PortView {
        ifindex: msg.header.index,
        admin_up: msg.header.flags.contains(LinkFlags::Up),
        // `IFF_LOWER_UP`: what `ip link` shows as carrier (LOWER_UP / NO-CARRIER).
        carrier: msg.header.flags.contains(LinkFlags::LowerUp),
        ..PortView::default()
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => p.mtu = *m,
            LinkAttribute::Stats64(s) => {
                p.rx_bytes = s.rx_bytes;
                p.tx_bytes = s.tx_bytes;
                p.rx_frames = s.rx_packets;
                p.tx_frames = s.tx_packets;
                p.rx_dropped = s.rx_dropped;
                p.tx_dropped = s.tx_dropped;
            }
            _ => {}
        }
    }
    name.map(|n| (n, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::Stats64;

    #[test]
    fn port_reads_flags_mtu_and_counters() {
        let mut stats = Stats64::default();
        (stats.rx_bytes, stats.tx_bytes) = (1, 2);
        (stats.rx_packets, stats.tx_packets) = (3, 4);
        (stats.rx_dropped, stats.tx_dropped) = (5, 6);
        let mut msg = LinkMessage::default();
        msg.header.index = 42;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        msg.attributes = vec![
            LinkAttribute::IfName("eth1".into()),
            LinkAttribute::Mtu(9000),
            LinkAttribute::Stats64(stats),
        ];
        let (name, p) = port_of(&msg).expect("named");
        assert_eq!(name, "eth1");
        assert_eq!(
            p,
            PortView {
                ifindex: 42,
                mtu: 9000,
                admin_up: true,
                carrier: true,
                rx_bytes: 1,
                tx_bytes: 2,
                rx_frames: 3,
                tx_frames: 4,
                rx_dropped: 5,
                tx_dropped: 6,
            }
        );
        // Admin down and no carrier: both read as such; a message without a name is skipped.
        msg.header.flags = LinkFlags::empty();
        let (_, p) = port_of(&msg).expect("named");
        assert!(!p.admin_up && !p.carrier);
        msg.attributes.clear();
        assert!(port_of(&msg).is_none());
    }
}
