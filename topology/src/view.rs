//! The node's view of its links, as the daemon serves it on `/topology` and tools (such as
//! `meshnet-lab graph`) read it: the declaration and status from the store joined with the pod's
//! port as the kernel has it. Only data and the pure join live here, so a reader does not link the
//! daemon or netlink.
//!
//! Counters are cumulative, stamped with `sampled_at_ms`; rates come from two views.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::topology::{LinkState, Topology};

/// The node's view: served as JSON by `/topology`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// This node's name (`NODE_NAME`).
    pub node: String,
    /// This node's address (`HOST_IP`).
    pub host_ip: String,
    /// When the kernel counters were read, in milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
    /// Every declared link end of every pod alive on this node.
    pub ends: Vec<EndView>,
}

/// One link end: a pod's port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndView {
    pub namespace: String,
    pub pod: String,
    pub interface: String,
    pub uid: i64,
    pub peer_pod: String,
    pub peer_interface: String,
    /// `veth`, `vxlan`, `grpc`, `macvlan`; empty until the reconciler has classified the link.
    pub kind: String,
    /// `up`, `pending` or `error`, as written to the pod's status.
    pub state: String,
    /// The reason for `pending`/`error`.
    pub message: String,
    /// The MTU the Topology declares (`None`: the node's default applies).
    pub declared_mtu: Option<u32>,
    /// What the end's impairment came to, as its status says (empty: none declared).
    #[serde(default)]
    pub impairment: String,
    /// The interface as the kernel has it; `None` when it does not exist (yet).
    pub port: Option<PortView>,
}

/// A pod's interface as the kernel reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PortView {
    pub ifindex: u32,
    pub mtu: u32,
    /// Administratively up (the pod's choice: meshnet never reverts it).
    pub admin_up: bool,
    /// Carrier: the far end is there and bound.
    pub carrier: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// The ends one pod declares, joined with its status and its ports (by interface name). Pure.
pub fn ends_of(t: &Topology, ports: &HashMap<String, PortView>) -> Vec<EndView> {
    t.spec
        .links
        .iter()
        .map(|l| {
            let status = t.status.links.iter().find(|s| s.uid == l.uid);
            EndView {
                namespace: t.metadata.namespace.clone(),
                pod: t.metadata.name.clone(),
                interface: l.local_intf.clone(),
                uid: l.uid,
                peer_pod: l.peer_pod.clone(),
                peer_interface: l.peer_intf.clone(),
                kind: status.map(|s| s.kind.clone()).unwrap_or_default(),
                state: status.map_or(LinkState::Pending, |s| s.state).to_string(),
                message: status.map(|s| s.message.clone()).unwrap_or_default(),
                impairment: status.map(|s| s.impairment.clone()).unwrap_or_default(),
                declared_mtu: l.mtu,
                port: ports.get(&l.local_intf).cloned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Link, LinkStatus, ObjectMeta, TopologySpec, TopologyStatus};

    fn topo() -> Topology {
        Topology {
            metadata: ObjectMeta {
                name: "r1".into(),
                namespace: "lab".into(),
                ..ObjectMeta::default()
            },
            spec: TopologySpec {
                links: vec![
                    Link {
                        uid: 1,
                        peer_pod: "r2".into(),
                        local_intf: "eth1".into(),
                        peer_intf: "eth2".into(),
                        mtu: Some(9000),
                        ..Link::default()
                    },
                    Link {
                        uid: 2,
                        peer_pod: "r3".into(),
                        local_intf: "eth2".into(),
                        peer_intf: "eth1".into(),
                        ..Link::default()
                    },
                ],
            },
            status: TopologyStatus {
                links: vec![LinkStatus {
                    uid: 1,
                    local_intf: "eth1".into(),
                    peer_pod: "r2".into(),
                    kind: "grpc".into(),
                    state: LinkState::Up,
                    message: String::new(),
                    impairment: String::new(),
                }],
                ..TopologyStatus::default()
            },
            ..Topology::default()
        }
    }

    #[test]
    fn ends_join_declaration_status_and_port() {
        let mut ports = HashMap::new();
        ports.insert(
            "eth1".to_string(),
            PortView {
                ifindex: 7,
                mtu: 9000,
                admin_up: true,
                carrier: true,
                rx_bytes: 10,
                ..PortView::default()
            },
        );
        let ends = ends_of(&topo(), &ports);
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[0].kind, "grpc");
        assert_eq!(ends[0].state, "up");
        assert_eq!(ends[0].declared_mtu, Some(9000));
        assert_eq!(ends[0].peer_interface, "eth2");
        assert_eq!(ends[0].port.as_ref().map(|p| p.ifindex), Some(7));
        // No status yet and no interface: pending, no port.
        assert_eq!(ends[1].state, "pending");
        assert_eq!(ends[1].kind, "");
        assert!(ends[1].port.is_none());
    }

    #[test]
    fn view_round_trips_as_json() {
        let v = NodeView {
            node: "node1".into(),
            host_ip: "198.51.100.1".into(),
            sampled_at_ms: 1,
            ends: ends_of(&topo(), &HashMap::new()),
        };
        let s = serde_json::to_string(&v).expect("serialises");
        let back: NodeView = serde_json::from_str(&s).expect("parses");
        assert_eq!(back, v);
    }
}
