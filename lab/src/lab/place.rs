//! Pure decisions about placement: pods to nodes, the pod network split into node blocks, and
//! link addresses that would collide with it.

use super::*;

/// The pod network split into one block per node: `n` rounded up to a power of two equal
/// blocks, in order.
///
/// # Errors
/// Blocks would be smaller than a /28 (`MIN_NODE_BLOCK_BITS`), naming the largest prefix that fits.
pub fn node_blocks(pod_cidr: ipnet::Ipv4Net, n: usize) -> anyhow::Result<Vec<ipnet::Ipv4Net>> {
    let bits =
        u8::try_from(usize::BITS - n.max(1).saturating_sub(1).leading_zeros()).expect("at most 64");
    let plen = pod_cidr.prefix_len() + bits;
    if plen > 32 - MIN_NODE_BLOCK_BITS {
        bail!(
            "--pod-cidr {pod_cidr} is too small for {n} nodes: each node needs at least a /{}, \
             so the pod network must be a /{} or larger",
            32 - MIN_NODE_BLOCK_BITS,
            32 - MIN_NODE_BLOCK_BITS - bits
        );
    }
    let blocks: Vec<ipnet::Ipv4Net> = pod_cidr
        .trunc()
        .subnets(plen)
        .context("splitting the pod network")?
        .take(n)
        .collect();
    Ok(blocks)
}

/// Refuses link addresses that overlap the lab's pod network: the pods' eth0 routes (and the
/// node's host routes to them) would take their traffic, and `verify` would fail with no hint.
///
/// # Errors
/// The first overlap, naming the pod, the link and both ranges.
pub fn check_pod_network(topologies: &[Topology], pod_cidr: ipnet::Ipv4Net) -> anyhow::Result<()> {
    let pods = ipnet::IpNet::V4(pod_cidr.trunc());
    for t in topologies {
        for l in &t.spec.links {
            for (field, value) in [("local_ip", &l.local_ip), ("peer_ip", &l.peer_ip)] {
                let Ok(net) = value.parse::<ipnet::IpNet>() else {
                    // Not an address the lab can check (empty, or refused later with a reason).
                    continue;
                };
                if pods.contains(&net.trunc().network()) || net.trunc().contains(&pods.network()) {
                    bail!(
                        "Topology {}: link uid {} {field} {value} overlaps the lab's pod network \
                         {pod_cidr} (the pods' eth0); choose link addresses outside it, or \
                         another range with `up --pod-cidr`",
                        t.key(),
                        l.uid
                    );
                }
            }
        }
    }
    Ok(())
}

/// Pods to nodes: `spec.nodeName` when it names a lab node, else round-robin, continuing after
/// the `already` pods the lab runs (so pods added later spread like the first ones).
pub(super) fn place(
    pods: &[PodDecl],
    nodes: &[NodeState],
    already: usize,
) -> Vec<(PodDecl, String)> {
    let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut next = already;
    pods.iter()
        .map(|p| {
            let node = match &p.node_name {
                Some(n) if names.contains(n.as_str()) => n.clone(),
                _ => {
                    let n = nodes[next % nodes.len()].name.clone();
                    next += 1;
                    n
                }
            };
            (p.clone(), node)
        })
        .collect()
}

/// Finds a pod by `NAME` (unique across namespaces) or `NAMESPACE/NAME`.
///
/// # Errors
/// No such pod, or the name is ambiguous.
pub fn find_pod(st: &LabState, pod: &str) -> anyhow::Result<usize> {
    let matches: Vec<usize> = st
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| match pod.split_once('/') {
            Some((ns, n)) => p.namespace == ns && p.name == n,
            None => p.name == pod,
        })
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => bail!("no pod {pod:?} in lab {:?}", st.name),
        _ => bail!("pod name {pod:?} is ambiguous: use NAMESPACE/NAME"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> ipnet::Ipv4Net {
        s.parse().expect("CIDR")
    }

    #[test]
    fn the_pod_network_is_split_into_equal_node_blocks() {
        let blocks = |cidr, n| {
            node_blocks(net(cidr), n)
                .expect("fits")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(blocks("203.0.113.0/24", 1), ["203.0.113.0/24"]);
        assert_eq!(
            blocks("203.0.113.0/24", 3),
            ["203.0.113.0/26", "203.0.113.64/26", "203.0.113.128/26"]
        );
        assert_eq!(blocks("10.9.0.0/16", 16).len(), 16);
        let e = node_blocks(net("203.0.113.0/26"), 16).expect_err("16 /28s need a /24");
        assert!(e.to_string().contains("must be a /24 or larger"), "{e}");
    }

    #[test]
    fn link_addresses_in_the_pod_network_are_refused_naming_both() {
        let m = manifest::parse(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {name: r1}\n\
             spec:\n  links:\n  - {uid: 7, peer_pod: r2, local_intf: eth1, peer_intf: eth1,\n\
             \x20    local_ip: 198.51.100.9/31, peer_ip: 203.0.113.1/31}\n",
            "default",
        )
        .expect("manifest");
        let e = check_pod_network(&m.topologies, net("203.0.113.0/24")).expect_err("overlap");
        let msg = e.to_string();
        for part in [
            "default/r1",
            "uid 7",
            "peer_ip 203.0.113.1/31",
            "203.0.113.0/24",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        check_pod_network(&m.topologies, net("203.0.113.128/25")).expect("no overlap");
        // A link network that contains the whole pod network overlaps it too.
        assert!(check_pod_network(&m.topologies, net("198.51.100.8/30")).is_err());
    }
}

#[cfg(test)]
mod placement {
    use super::*;

    fn node(name: &str) -> NodeState {
        NodeState {
            name: name.into(),
            netns: format!("mnl-t-{name}"),
            ip: String::new(),
            pod_cidr: String::new(),
            socket: PathBuf::new(),
            pid: None,
            proxy_pid: None,
        }
    }

    fn decl(name: &str, node_name: Option<&str>) -> PodDecl {
        PodDecl {
            namespace: "default".into(),
            name: name.into(),
            node_name: node_name.map(Into::into),
        }
    }

    fn placed(p: &[(PodDecl, String)]) -> Vec<(&str, &str)> {
        p.iter()
            .map(|(d, n)| (d.name.as_str(), n.as_str()))
            .collect()
    }

    #[test]
    fn pods_go_round_robin_unless_pinned_to_a_lab_node() {
        let nodes = [node("node1"), node("node2"), node("node3")];
        let pods = [
            decl("r1", None),
            decl("r2", Some("node3")),
            decl("r3", None),
            decl("r4", Some("elsewhere")),
            decl("r5", None),
        ];
        assert_eq!(
            placed(&place(&pods, &nodes, 0)),
            [
                ("r1", "node1"),
                ("r2", "node3"),
                ("r3", "node2"),
                ("r4", "node3"),
                ("r5", "node1")
            ]
        );
        // Pods added later continue where the running ones left off.
        assert_eq!(
            placed(&place(&[decl("r6", None)], &nodes, 4)),
            [("r6", "node2")]
        );
    }

    #[test]
    fn pods_are_found_by_name_or_namespace_and_name() {
        let mut st = LabState::for_tests(Vec::new());
        for (ns, name) in [("default", "r1"), ("default", "r2"), ("other", "r2")] {
            st.pods.push(PodState {
                namespace: ns.into(),
                name: name.into(),
                node: "node1".into(),
                netns: String::new(),
                container_id: String::new(),
                generation: 1,
                result: None,
            });
        }
        assert_eq!(find_pod(&st, "r1").expect("r1"), 0);
        assert_eq!(find_pod(&st, "other/r2").expect("other/r2"), 2);
        let e = find_pod(&st, "r2").expect_err("ambiguous").to_string();
        assert!(e.contains("ambiguous"), "{e}");
        let e = find_pod(&st, "r9").expect_err("missing").to_string();
        assert!(e.contains("no pod \"r9\""), "{e}");
    }
}
