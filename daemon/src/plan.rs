//! The pure half of reconciliation: from the store's `Topology` objects, what this node must
//! build. No I/O; the caller passes everything in, so every decision is unit-tested.
//!
//! A node owns the link ends of the pods whose status says they are alive on it (`src_ip` is the
//! node's address). For each such pod and declared link the plan is one of:
//! * build a veth pair (both pods alive on this node) — the same [`VethSpec`] appears in both
//!   pods' plans and is built once;
//! * report it pending (peer not alive yet, or no Topology for the peer);
//! * report it invalid (bad declaration on either end, the ends disagree, or the uid is also
//!   declared by pods that are not this link's ends — then on every end, naming the others).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::links::{self, EndSpec, VethSpec};
use crate::ports;
use crate::topology::{
    LOCALHOST, LinkDecl, PodKey, Topology, check_links, merge_ends, same_node, uid_clash,
    uid_declarers,
};

/// Primary interface assumed when the daemon has not seen the pod's ADD (e.g. after a restart).
pub const DEFAULT_PRIMARY_IF: &str = "eth0";

/// What to do about one declared link of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build (or keep) this veth pair.
    Veth(VethSpec),
    /// The peer is alive on another node; its kind is decided by the inter-node link type.
    Remote {
        peer_node_ip: String,
        decl: LinkDecl,
    },
    /// `peer_pod: localhost`: a macvlan on the node interface `parent`.
    Macvlan {
        parent: String,
        end: EndSpec,
        mtu: Option<u32>,
    },
    /// The peer is not alive (or has no Topology yet): nothing to build toward it. With the gRPC
    /// wire the pod still gets its half (carrier down), built from `decl`.
    Pending { reason: String, decl: LinkDecl },
    /// The declaration cannot be built as written.
    Invalid(String),
}

/// The plan for one link end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub uid: i64,
    pub local_intf: String,
    pub peer_pod: String,
    pub action: Action,
}

/// The plan for one pod alive on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub key: PodKey,
    pub container_id: String,
    pub net_ns: String,
    pub links: Vec<LinkPlan>,
}

/// The first 12 characters of a sandbox id, as container tools show it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Plans every pod alive on the node whose address is `node_ip`.
///
/// `primary_if` gives each pod's CNI_IFNAME where known ([`DEFAULT_PRIMARY_IF`] otherwise).
pub fn plan_node(
    node_ip: &IpAddr,
    topos: &[Topology],
    primary_if: &HashMap<PodKey, String>,
) -> Vec<PodPlan> {
    let by_key: HashMap<PodKey, &Topology> = topos.iter().map(|t| (t.key(), t)).collect();
    let primary = |k: &PodKey| primary_if.get(k).map_or(DEFAULT_PRIMARY_IF, String::as_str);
    // Each topology's links, checked once: key -> uid -> decl.
    let checked: HashMap<PodKey, BTreeMap<i64, Result<LinkDecl, String>>> = topos
        .iter()
        .map(|t| {
            let k = t.key();
            let m = check_links(t, primary(&k)).into_iter().collect();
            (k, m)
        })
        .collect();
    let declarers = uid_declarers(topos);

    let mut out = Vec::new();
    let mut mine: Vec<&Topology> = topos
        .iter()
        .filter(|t| t.status.is_alive() && same_node(&t.status.src_ip, node_ip))
        .collect();
    mine.sort_by_key(|t| t.key());
    for t in mine {
        let key = t.key();
        let mut links = Vec::new();
        for (link, (uid, decl)) in t.spec.links.iter().zip(check_links(t, primary(&key))) {
            let clash = uid_clash(&declarers, &key, uid, link.peer_pod == LOCALHOST);
            let action = match (decl, clash) {
                (Err(e), _) | (Ok(_), Some(e)) => Action::Invalid(e),
                (Ok(d), None) if d.is_macvlan() => Action::Macvlan {
                    parent: d.peer_intf.clone(),
                    end: EndSpec {
                        netns: t.status.net_ns.clone().into(),
                        ifname: d.local_intf.clone(),
                        ip: d.local_ip,
                        mac: d.local_mac,
                    },
                    mtu: d.mtu,
                },
                (Ok(d), None) => plan_peer(node_ip, t, &d, &by_key, &checked),
            };
            links.push(LinkPlan {
                uid,
                local_intf: link.local_intf.clone(),
                peer_pod: link.peer_pod.clone(),
                action,
            });
        }
        out.push(PodPlan {
            key,
            container_id: t.status.container_id.clone(),
            net_ns: t.status.net_ns.clone(),
            links,
        });
    }
    out
}

fn plan_peer(
    node_ip: &IpAddr,
    t: &Topology,
    d: &LinkDecl,
    by_key: &HashMap<PodKey, &Topology>,
    checked: &HashMap<PodKey, BTreeMap<i64, Result<LinkDecl, String>>>,
) -> Action {
    let key = t.key();
    let peer_key = PodKey::new(&key.namespace, &d.peer_pod);
    let Some(q) = by_key.get(&peer_key) else {
        return Action::Pending {
            reason: format!("peer pod {peer_key} has no Topology"),
            decl: d.clone(),
        };
    };
    let qd = match checked.get(&peer_key).and_then(|m| m.get(&d.uid)) {
        None => {
            return Action::Invalid(format!(
                "peer {peer_key} declares no link with uid {}",
                d.uid
            ));
        }
        Some(Err(e)) => {
            return Action::Invalid(format!(
                "peer {peer_key} declares uid {} invalidly: {e}",
                d.uid
            ));
        }
        Some(Ok(qd)) => qd,
    };
    let merged = match merge_ends(d, &key.name, qd) {
        Ok(m) => m,
        Err(e) => return Action::Invalid(e),
    };
    if !q.status.is_alive() {
        return Action::Pending {
            reason: format!("waiting for peer pod {peer_key}"),
            decl: merged,
        };
    }
    if !same_node(&q.status.src_ip, node_ip) {
        return Action::Remote {
            peer_node_ip: q.status.src_ip.clone(),
            decl: merged,
        };
    }
    // Both ends on this node: one veth pair, described the same way from either pod, ordered
    // by pod name so both pods' plans produce the identical spec.
    let here = EndSpec {
        netns: t.status.net_ns.clone().into(),
        ifname: merged.local_intf.clone(),
        ip: merged.local_ip,
        mac: merged.local_mac,
    };
    let there = EndSpec {
        netns: q.status.net_ns.clone().into(),
        ifname: merged.peer_intf.clone(),
        ip: merged.peer_ip,
        mac: merged.peer_mac,
    };
    let (a, b, ta, tb, na, nb) = if key.name < peer_key.name {
        (here, there, &t.status, &q.status, &key.name, &peer_key.name)
    } else {
        (there, here, &q.status, &t.status, &peer_key.name, &key.name)
    };
    let tag = format!("{}-{}", short(&ta.container_id), short(&tb.container_id));
    let port = |cid: &str, pod: &str| {
        (
            ports::port_alias(&key.namespace, d.uid, cid),
            ports::node_end_name(&key.namespace, d.uid, pod),
        )
    };
    Action::Veth(VethSpec {
        alias: links::alias(&key.namespace, d.uid, "veth", &tag),
        mtu: merged.mtu,
        a,
        b,
        ports: [port(&ta.container_id, na), port(&tb.container_id, nb)],
    })
}

/// The VNI of link `(namespace, uid)`: the same on every node without any coordination, and
/// different for the same uid in two namespaces (the Go plugin's `5000 + uid` collided there).
///
/// FNV-1a (64 bit) over `namespace`, a 0xff separator (never in a Kubernetes name) and the uid
/// as 8 little-endian bytes, folded to 24 bits; 0 becomes 1 (VNI 0 is avoided). Two links of one
/// node that still land on the same VNI are refused by the reconciler, never silently merged.
pub fn vni(namespace: &str, uid: i64) -> u32 {
    let h = meshnet_wire::table::link_hash(namespace, uid);
    let folded = (h ^ (h >> 24) ^ (h >> 48)) & 0x00ff_ffff;
    u32::try_from(folded).expect("masked to 24 bits").max(1)
}

#[cfg(test)]
mod tests;
