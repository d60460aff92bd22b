//! The labs' topologies, as the Kubernetes YAML `meshnet-lab` reads.
//!
//! * The path lab: pods `a` (node1) and `b` (node2) joined by one cross-node link on `eth1`
//!   (10.10.1.1/24 – 10.10.1.2/24), and optionally pods `c` and `d`, both on node1, joined by a
//!   same-node link (10.10.2.1/24 – 10.10.2.2/24).
//! * The scale lab: pods `s1` (node1) and `s2` (node2) joined by N cross-node links on
//!   `e1`…`eN`, in a namespace whose links' VNIs do not collide (see [`scale_namespace`]).

use std::collections::HashSet;
use std::fmt::Write;

/// One end of a link: pod, interface, address (CIDR or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub pod: String,
    pub intf: String,
    pub ip: String,
}

/// A point-to-point link between two pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub uid: i64,
    pub a: End,
    pub b: End,
}

fn end(pod: &str, intf: &str, ip: &str) -> End {
    End {
        pod: pod.into(),
        intf: intf.into(),
        ip: ip.into(),
    }
}

/// The pair of pods a path is measured between, and the server's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPair {
    pub client: &'static str,
    pub server: &'static str,
    pub server_ip: &'static str,
}

/// Pods on different nodes, one cross-node link.
pub const CROSS: PodPair = PodPair {
    client: "a",
    server: "b",
    server_ip: "10.10.1.2",
};

/// Pods on the same node, one veth.
pub const SAME_NODE: PodPair = PodPair {
    client: "c",
    server: "d",
    server_ip: "10.10.2.2",
};

/// Writes Topology objects (one per pod that has links, each link seen from both ends) and Pod
/// objects pinned with `spec.nodeName`.
pub fn manifest(namespace: &str, pods: &[(&str, &str)], links: &[Link]) -> String {
    let mut out = String::new();
    for (pod, _) in pods {
        let mine: Vec<(&End, &End, i64)> = links
            .iter()
            .filter_map(|l| {
                if l.a.pod == *pod {
                    Some((&l.a, &l.b, l.uid))
                } else if l.b.pod == *pod {
                    Some((&l.b, &l.a, l.uid))
                } else {
                    None
                }
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "---\napiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata:\n  name: {pod}\n  namespace: {namespace}\nspec:\n  links:\n"
        );
        for (local, peer, uid) in mine {
            let _ = writeln!(
                out,
                "  - uid: {uid}\n    peer_pod: {}\n    local_intf: {}\n    peer_intf: {}\n    local_ip: \"{}\"\n    peer_ip: \"{}\"",
                peer.pod, local.intf, peer.intf, local.ip, peer.ip
            );
        }
    }
    for (pod, node) in pods {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {namespace}\nspec:\n  nodeName: {node}\n  containers:\n  - name: {pod}\n    image: alpine\n"
        );
    }
    out
}

/// The path lab (see the module doc); `same_node` adds the `c`–`d` pair.
pub fn path_lab(same_node: bool) -> String {
    let mut pods = vec![("a", "node1"), ("b", "node2")];
    let mut links = vec![Link {
        uid: 1,
        a: end("a", "eth1", "10.10.1.1/24"),
        b: end("b", "eth1", "10.10.1.2/24"),
    }];
    if same_node {
        pods.extend([("c", "node1"), ("d", "node1")]);
        links.push(Link {
            uid: 2,
            a: end("c", "eth1", "10.10.2.1/24"),
            b: end("d", "eth1", "10.10.2.2/24"),
        });
    }
    manifest("default", &pods, &links)
}

/// The pod a scale lab starts with (no links), so that its daemons are up before the links are
/// applied and timed.
pub fn scale_base() -> String {
    manifest("default", &[("idle", "node1")], &[])
}

/// `n` cross-node links between `s1` (node1) and `s2` (node2) on `e1`…`eN`, without addresses.
pub fn scale_lab(namespace: &str, n: u32) -> String {
    let links: Vec<Link> = (1..=n)
        .map(|i| Link {
            uid: i64::from(i),
            a: end("s1", &format!("e{i}"), ""),
            b: end("s2", &format!("e{i}"), ""),
        })
        .collect();
    manifest(namespace, &[("s1", "node1"), ("s2", "node2")], &links)
}

/// The VNI the daemon gives link `(namespace, uid)` (FNV-1a-64 over the namespace, `0xff` and
/// the uid little-endian, folded to 24 bits, 0 → 1; README "VNI scheme").
pub fn vni(namespace: &str, uid: i64) -> u32 {
    let h = meshnet_wire::table::link_hash(namespace, uid);
    (((h ^ (h >> 24) ^ (h >> 48)) & 0x00ff_ffff) as u32).max(1)
}

/// A namespace (`scale`, `scale-1`, …) in which uids `1..=n` get `n` distinct VNIs: the daemon
/// refuses the second of two links with one VNI, and a scale run measures set-up, not that.
pub fn scale_namespace(n: u32) -> String {
    (0..)
        .map(|i| {
            if i == 0 {
                "scale".to_string()
            } else {
                format!("scale-{i}")
            }
        })
        .find(|ns| {
            let mut seen = HashSet::new();
            (1..=i64::from(n)).all(|uid| seen.insert(vni(ns, uid)))
        })
        .unwrap_or_else(|| "scale".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_lab_declares_both_ends() {
        let y = path_lab(true);
        assert_eq!(y.matches("kind: Topology").count(), 4);
        assert_eq!(y.matches("kind: Pod").count(), 4);
        assert!(y.contains("name: b\n  namespace: default\nspec:\n  links:\n  - uid: 1\n    peer_pod: a\n    local_intf: eth1\n    peer_intf: eth1\n    local_ip: \"10.10.1.2/24\"\n    peer_ip: \"10.10.1.1/24\""), "{y}");
        assert!(y.contains("name: d\n  namespace: default\nspec:\n  nodeName: node1"));
        assert_eq!(path_lab(false).matches("kind: Pod").count(), 2);
    }

    #[test]
    fn scale_lab_has_n_links_per_pod() {
        let y = scale_lab("scale", 3);
        assert_eq!(y.matches("- uid:").count(), 6);
        assert!(y.contains("local_intf: e3"));
        assert!(scale_base().contains("name: idle"));
        assert!(!scale_base().contains("Topology"));
    }

    #[test]
    fn scale_namespace_avoids_vni_collisions() {
        for n in [10, 100, 1000, 3000] {
            let ns = scale_namespace(n);
            let vnis: HashSet<u32> = (1..=i64::from(n)).map(|u| vni(&ns, u)).collect();
            assert_eq!(vnis.len(), n as usize, "{ns}");
        }
    }

    #[test]
    fn vni_is_the_daemons() {
        for (ns, uid) in [("default", 1), ("scale", 1000), ("x", -5), ("", 0)] {
            assert_eq!(vni(ns, uid), meshnet_daemon::plan::vni(ns, uid));
        }
    }
}
