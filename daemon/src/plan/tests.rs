use std::path::PathBuf;

use ipnet::IpNet;

use super::*;
use crate::links::OwnedAlias;
use crate::topology::{Link, MacAddr};

const NODE: &str = "198.51.100.1";
const OTHER_NODE: &str = "198.51.100.2";

fn node() -> IpAddr {
    NODE.parse().expect("node ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid CIDR")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("valid MAC")
}

fn link(uid: i64, peer_pod: &str, local_intf: &str, peer_intf: &str) -> Link {
    Link {
        uid,
        peer_pod: peer_pod.into(),
        local_intf: local_intf.into(),
        peer_intf: peer_intf.into(),
        ..Default::default()
    }
}

fn with_ips(l: Link, local_ip: &str, peer_ip: &str) -> Link {
    Link {
        local_ip: local_ip.into(),
        peer_ip: peer_ip.into(),
        ..l
    }
}

/// A 64-hex-digit container id, distinct per pod and namespace, longer than the 12 used in tags.
fn container_id(ns: &str, pod: &str) -> String {
    let seed: String = format!("{pod}{ns}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{seed:0<64}")
}

fn netns_path(ns: &str, pod: &str) -> String {
    format!("/var/run/netns/cni-{ns}-{pod}")
}

/// Marks the pod alive on the node with address `src_ip`, as CNI ADD does.
fn alive_on(mut t: Topology, src_ip: &str) -> Topology {
    let (ns, name) = (t.metadata.namespace.clone(), t.metadata.name.clone());
    t.status.src_ip = src_ip.into();
    t.status.net_ns = netns_path(&ns, &name);
    t.status.container_id = container_id(&ns, &name);
    t
}

/// The seed's 3-node triangle in namespace `ns`, declared from each end:
/// r1:eth1 <-1-> r2:eth1, r2:eth2 <-2-> r3:eth2, r1:eth2 <-3-> r3:eth1.
fn r1(ns: &str) -> Topology {
    Topology::new(
        ns,
        "r1",
        vec![
            with_ips(
                link(1, "r2", "eth1", "eth1"),
                "12.12.12.1/24",
                "12.12.12.2/24",
            ),
            with_ips(
                link(3, "r3", "eth2", "eth1"),
                "13.13.13.1/24",
                "13.13.13.3/24",
            ),
        ],
    )
}

fn r2(ns: &str) -> Topology {
    Topology::new(
        ns,
        "r2",
        vec![
            with_ips(
                link(1, "r1", "eth1", "eth1"),
                "12.12.12.2/24",
                "12.12.12.1/24",
            ),
            with_ips(
                link(2, "r3", "eth2", "eth2"),
                "23.23.23.2/24",
                "23.23.23.3/24",
            ),
        ],
    )
}

fn r3(ns: &str) -> Topology {
    Topology::new(
        ns,
        "r3",
        vec![
            with_ips(
                link(2, "r2", "eth2", "eth2"),
                "23.23.23.3/24",
                "23.23.23.2/24",
            ),
            with_ips(
                link(3, "r1", "eth1", "eth2"),
                "13.13.13.3/24",
                "13.13.13.1/24",
            ),
        ],
    )
}

fn triangle_alive(ns: &str) -> Vec<Topology> {
    vec![
        alive_on(r1(ns), NODE),
        alive_on(r2(ns), NODE),
        alive_on(r3(ns), NODE),
    ]
}

fn plan(topos: &[Topology]) -> Vec<PodPlan> {
    plan_node(&node(), topos, &HashMap::new())
}

fn pod<'a>(plans: &'a [PodPlan], ns: &str, name: &str) -> &'a PodPlan {
    plans
        .iter()
        .find(|p| p.key == PodKey::new(ns, name))
        .unwrap_or_else(|| panic!("no plan for {ns}/{name} in {plans:#?}"))
}

fn action<'a>(plans: &'a [PodPlan], ns: &str, name: &str, uid: i64) -> &'a Action {
    let p = pod(plans, ns, name);
    let l: Vec<&LinkPlan> = p.links.iter().filter(|l| l.uid == uid).collect();
    assert_eq!(l.len(), 1, "{ns}/{name} uid {uid}: {p:#?}");
    &l[0].action
}

fn veth<'a>(plans: &'a [PodPlan], ns: &str, name: &str, uid: i64) -> &'a VethSpec {
    match action(plans, ns, name, uid) {
        Action::Veth(v) => v,
        other => panic!("{ns}/{name} uid {uid}: expected Veth, got {other:?}"),
    }
}

fn assert_pending(a: &Action, what: &str) {
    match a {
        Action::Pending { reason: m, .. } => {
            assert!(m.contains(what), "pending message {m:?} lacks {what:?}")
        }
        other => panic!("expected Pending mentioning {what:?}, got {other:?}"),
    }
}

fn assert_invalid(a: &Action, what: &str) {
    match a {
        Action::Invalid(m) => assert!(m.contains(what), "invalid message {m:?} lacks {what:?}"),
        other => panic!("expected Invalid mentioning {what:?}, got {other:?}"),
    }
}

fn keys(plans: &[PodPlan]) -> Vec<String> {
    plans.iter().map(|p| p.key.to_string()).collect()
}

#[test]
fn both_ends_alive_here_give_one_identical_veth_spec() {
    let plans = plan(&triangle_alive("default"));
    assert_eq!(keys(&plans), ["default/r1", "default/r2", "default/r3"]);

    let from_r1 = veth(&plans, "default", "r1", 1);
    let from_r2 = veth(&plans, "default", "r2", 1);
    assert_eq!(from_r1, from_r2);
    assert_eq!(from_r1.a.netns, PathBuf::from(netns_path("default", "r1")));
    assert_eq!(from_r1.a.ifname, "eth1");
    assert_eq!(from_r1.a.ip, Some(net("12.12.12.1/24")));
    assert_eq!(from_r1.b.netns, PathBuf::from(netns_path("default", "r2")));
    assert_eq!(from_r1.b.ifname, "eth1");
    assert_eq!(from_r1.b.ip, Some(net("12.12.12.2/24")));
    assert_eq!(from_r1.mtu, None);

    for (x, y, uid) in [("r2", "r3", 2), ("r1", "r3", 3)] {
        assert_eq!(
            veth(&plans, "default", x, uid),
            veth(&plans, "default", y, uid),
            "uid {uid}"
        );
    }
    // uid 3: r1:eth2 <-> r3:eth1, with a = r1 whichever pod's plan it came from.
    let v3 = veth(&plans, "default", "r3", 3);
    assert_eq!(v3.a.netns, PathBuf::from(netns_path("default", "r1")));
    assert_eq!(v3.a.ifname, "eth2");
    assert_eq!(v3.a.ip, Some(net("13.13.13.1/24")));
    assert_eq!(v3.b.ifname, "eth1");
    assert_eq!(v3.b.ip, Some(net("13.13.13.3/24")));
}

#[test]
fn veth_alias_names_namespace_uid_and_both_sandboxes() {
    let plans = plan(&triangle_alive("lab"));
    let v = veth(&plans, "lab", "r2", 2);
    let alias = OwnedAlias::parse(&v.alias).expect("a meshnet alias");
    assert_eq!(alias.namespace, "lab");
    assert_eq!(alias.uid, 2);
    assert_eq!(alias.kind, "veth");
    let (c2, c3) = (container_id("lab", "r2"), container_id("lab", "r3"));
    assert_eq!(alias.tag, format!("{}-{}", &c2[..12], &c3[..12]));
    // A different sandbox for either pod changes the tag, so the old pair is recognised as stale.
    let mut topos = triangle_alive("lab");
    topos[2].status.container_id = "ffffffffffff0000".into();
    let v2 = veth(&plan(&topos), "lab", "r2", 2).clone();
    assert_ne!(v2.alias, v.alias);
}

#[test]
fn a_is_the_smaller_pod_name_even_when_declared_from_the_other_end() {
    // "alpha" < "beta"; only beta declares addresses, MTU and MACs.
    let a = Topology::new(
        "default",
        "beta",
        vec![Link {
            local_ip: "10.0.0.2/31".into(),
            peer_ip: "10.0.0.1/31".into(),
            mtu: Some(9000),
            local_mac: "02:00:00:00:00:0b".into(),
            peer_mac: "02:00:00:00:00:0a".into(),
            ..link(5, "alpha", "e-beta", "e-alpha")
        }],
    );
    let b = Topology::new(
        "default",
        "alpha",
        vec![link(5, "beta", "e-alpha", "e-beta")],
    );
    let plans = plan(&[alive_on(a, NODE), alive_on(b, NODE)]);
    let v = veth(&plans, "default", "beta", 5);
    assert_eq!(v, veth(&plans, "default", "alpha", 5));
    assert_eq!(v.a.netns, PathBuf::from(netns_path("default", "alpha")));
    assert_eq!(v.a.ifname, "e-alpha");
    assert_eq!(v.a.ip, Some(net("10.0.0.1/31")));
    assert_eq!(v.a.mac, Some(mac("02:00:00:00:00:0a")));
    assert_eq!(v.b.netns, PathBuf::from(netns_path("default", "beta")));
    assert_eq!(v.b.ifname, "e-beta");
    assert_eq!(v.b.ip, Some(net("10.0.0.2/31")));
    assert_eq!(v.b.mac, Some(mac("02:00:00:00:00:0b")));
    assert_eq!(v.mtu, Some(9000));
    let (ca, cb) = (
        container_id("default", "alpha"),
        container_id("default", "beta"),
    );
    assert_eq!(
        OwnedAlias::parse(&v.alias).expect("alias").tag,
        format!("{}-{}", &ca[..12], &cb[..12])
    );
}

#[test]
fn pod_plan_carries_the_sandbox() {
    let plans = plan(&triangle_alive("default"));
    let p = pod(&plans, "default", "r2");
    assert_eq!(p.container_id, container_id("default", "r2"));
    assert_eq!(p.net_ns, netns_path("default", "r2"));
    let l: Vec<(i64, &str, &str)> = p
        .links
        .iter()
        .map(|l| (l.uid, l.local_intf.as_str(), l.peer_pod.as_str()))
        .collect();
    assert_eq!(l, [(1, "eth1", "r1"), (2, "eth2", "r3")]);
}

#[test]
fn peer_not_alive_is_pending() {
    let topos = vec![
        alive_on(r1("default"), NODE),
        r2("default"),
        alive_on(r3("default"), NODE),
    ];
    let plans = plan(&topos);
    assert_eq!(keys(&plans), ["default/r1", "default/r3"]);
    assert_pending(action(&plans, "default", "r1", 1), "r2");
    assert_pending(action(&plans, "default", "r3", 2), "r2");
    assert!(matches!(
        action(&plans, "default", "r1", 3),
        Action::Veth(_)
    ));
}

#[test]
fn peer_without_topology_is_pending() {
    let topos = vec![alive_on(r1("default"), NODE), alive_on(r3("default"), NODE)];
    let plans = plan(&topos);
    assert_pending(action(&plans, "default", "r1", 1), "no Topology");
    assert_pending(action(&plans, "default", "r3", 2), "no Topology");
    assert!(matches!(
        action(&plans, "default", "r3", 3),
        Action::Veth(_)
    ));
}

#[test]
fn peer_without_the_uid_is_invalid() {
    let mut q = r2("default");
    q.spec.links.retain(|l| l.uid != 1);
    let topos = vec![
        alive_on(r1("default"), NODE),
        alive_on(q, NODE),
        alive_on(r3("default"), NODE),
    ];
    let plans = plan(&topos);
    assert_invalid(action(&plans, "default", "r1", 1), "no link with uid 1");
    assert!(matches!(
        action(&plans, "default", "r1", 3),
        Action::Veth(_)
    ));
    assert!(matches!(
        action(&plans, "default", "r2", 2),
        Action::Veth(_)
    ));
}

#[test]
fn peer_without_the_uid_is_invalid_even_while_not_alive() {
    let mut q = r2("default");
    q.spec.links.retain(|l| l.uid != 1);
    let plans = plan(&[alive_on(r1("default"), NODE), q]);
    assert_invalid(action(&plans, "default", "r1", 1), "no link with uid 1");
}

#[test]
fn peer_declaring_the_uid_invalidly_is_invalid_here_too() {
    let mut q = r2("default");
    q.spec.links[0].local_ip = "12.12.12.2".into(); // bare address
    let plans = plan(&[alive_on(r1("default"), NODE), alive_on(q, NODE)]);
    assert_invalid(action(&plans, "default", "r1", 1), "local_ip");
    assert_invalid(action(&plans, "default", "r2", 1), "local_ip");
}

#[test]
fn ends_that_disagree_are_invalid_on_both_sides() {
    let mut q = r2("default");
    q.spec.links[0].local_intf = "eth9".into();
    let plans = plan(&[alive_on(r1("default"), NODE), alive_on(q, NODE)]);
    assert_invalid(action(&plans, "default", "r1", 1), "mismatched");
    assert_invalid(action(&plans, "default", "r2", 1), "mismatched");

    let mut q = r2("default");
    q.spec.links[0].local_ip = "12.12.12.9/24".into();
    let plans = plan(&[alive_on(r1("default"), NODE), alive_on(q, NODE)]);
    assert_invalid(action(&plans, "default", "r1", 1), "disagree");
    assert_invalid(action(&plans, "default", "r2", 1), "disagree");
}

#[test]
fn peer_on_another_node_is_remote() {
    let topos = vec![
        alive_on(r1("default"), NODE),
        alive_on(r2("default"), OTHER_NODE),
        alive_on(r3("default"), NODE),
    ];
    let plans = plan(&topos);
    assert_eq!(keys(&plans), ["default/r1", "default/r3"]);
    match action(&plans, "default", "r1", 1) {
        Action::Remote { peer_node_ip, decl } => {
            assert_eq!(peer_node_ip, OTHER_NODE);
            assert_eq!(decl.uid, 1);
            assert_eq!(decl.peer_pod, "r2");
            assert_eq!(decl.local_intf, "eth1");
            assert_eq!(decl.peer_intf, "eth1");
            assert_eq!(decl.local_ip, Some(net("12.12.12.1/24")));
            assert_eq!(decl.peer_ip, Some(net("12.12.12.2/24")));
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(matches!(
        action(&plans, "default", "r3", 2),
        Action::Remote { peer_node_ip, .. } if peer_node_ip == OTHER_NODE
    ));
    assert!(matches!(
        action(&plans, "default", "r3", 3),
        Action::Veth(_)
    ));
}

#[test]
fn remote_decl_is_merged_with_the_peer_declaration() {
    let mut q = r2("default");
    q.spec.links[0].mtu = Some(9000);
    let mut p = r1("default");
    p.spec.links[0].peer_ip = String::new();
    let plans = plan(&[alive_on(p, NODE), alive_on(q, OTHER_NODE)]);
    match action(&plans, "default", "r1", 1) {
        Action::Remote { decl, .. } => {
            assert_eq!(decl.peer_ip, Some(net("12.12.12.2/24")));
            assert_eq!(decl.mtu, Some(9000));
        }
        other => panic!("expected Remote, got {other:?}"),
    }
}

#[test]
fn pods_of_other_nodes_are_not_planned() {
    let topos: Vec<Topology> = [r1("default"), r2("default"), r3("default")]
        .into_iter()
        .map(|t| alive_on(t, OTHER_NODE))
        .collect();
    assert!(plan(&topos).is_empty());
}

#[test]
fn pods_that_are_not_alive_are_not_planned() {
    // src_ip says this node but the sandbox is gone (DEL cleared it).
    let mut t = alive_on(r1("default"), NODE);
    t.status.net_ns.clear();
    t.status.container_id.clear();
    assert!(
        plan(&[t, alive_on(r2("default"), NODE)])
            .iter()
            .all(|p| p.key.name != "r1")
    );
    assert!(plan(&[r1("default"), r2("default")]).is_empty());
}

#[test]
fn invalid_link_does_not_stop_the_others() {
    let mut p = r1("default");
    p.spec.links.push(link(9, "r3", "this-is-too-long", "eth9"));
    p.spec.links.push(Link {
        mtu: Some(10),
        ..link(10, "r2", "eth10", "eth10")
    });
    let topos = vec![
        alive_on(p, NODE),
        alive_on(r2("default"), NODE),
        alive_on(r3("default"), NODE),
    ];
    let plans = plan(&topos);
    let r1_plan = pod(&plans, "default", "r1");
    assert_eq!(
        r1_plan.links.iter().map(|l| l.uid).collect::<Vec<_>>(),
        [1, 3, 9, 10]
    );
    assert_invalid(action(&plans, "default", "r1", 9), "local_intf");
    assert_invalid(action(&plans, "default", "r1", 10), "mtu");
    assert!(matches!(
        action(&plans, "default", "r1", 1),
        Action::Veth(_)
    ));
    assert!(matches!(
        action(&plans, "default", "r1", 3),
        Action::Veth(_)
    ));
    assert_eq!(
        veth(&plans, "default", "r1", 1),
        veth(&plans, "default", "r2", 1)
    );
}

#[test]
fn duplicate_uid_in_a_pod_is_invalid_there_and_at_the_peer() {
    let mut p = r1("default");
    p.spec.links[1].uid = 1; // r1 now declares uid 1 twice
    let topos = vec![
        alive_on(p, NODE),
        alive_on(r2("default"), NODE),
        alive_on(r3("default"), NODE),
    ];
    let plans = plan(&topos);
    let r1_plan = pod(&plans, "default", "r1");
    assert_eq!(r1_plan.links.len(), 2);
    for l in &r1_plan.links {
        assert_invalid(&l.action, "duplicate uid");
    }
    assert_invalid(action(&plans, "default", "r2", 1), "duplicate uid");
    assert!(matches!(
        action(&plans, "default", "r2", 2),
        Action::Veth(_)
    ));
}

/// r1–r3 and r2–r4 both picked uid 7: only one veth could carry (namespace, 7), so neither pair
/// may be planned as built; every end is refused, naming the other declarers.
#[test]
fn one_uid_used_by_two_pairs_is_invalid_on_every_end_naming_the_others() {
    let pair = |a: &str, b: &str| {
        [
            Topology::new("default", a, vec![link(7, b, "eth1", "eth1")]),
            Topology::new("default", b, vec![link(7, a, "eth1", "eth1")]),
        ]
    };
    let topos: Vec<Topology> = pair("r1", "r3")
        .into_iter()
        .chain(pair("r2", "r4"))
        .map(|t| alive_on(t, NODE))
        .collect();
    let plans = plan(&topos);
    for (me, others) in [
        ("r1", "r2, r3, r4"),
        ("r2", "r1, r3, r4"),
        ("r3", "r1, r2, r4"),
        ("r4", "r1, r2, r3"),
    ] {
        assert_invalid(
            action(&plans, "default", me, 7),
            &format!("uid 7 is also declared by pods {others} in namespace default"),
        );
    }
}

/// A third pod declaring a pair's uid (even while it is not alive) spoils it for all three.
#[test]
fn a_third_declarer_of_a_uid_is_a_clash_on_every_end() {
    let third = Topology::new("default", "r9", vec![link(1, "r1", "eth9", "eth1")]);
    let topos = vec![
        alive_on(r1("default"), NODE),
        alive_on(r2("default"), NODE),
        third,
    ];
    let plans = plan(&topos);
    assert_invalid(action(&plans, "default", "r1", 1), "pods r2, r9");
    assert_invalid(action(&plans, "default", "r2", 1), "pods r1, r9");
    // The pair's other links are untouched.
    assert!(matches!(
        action(&plans, "default", "r1", 3),
        Action::Pending { .. }
    ));
}

/// A macvlan link is a link of one pod: another pod declaring its uid is a clash, on both.
#[test]
fn a_macvlan_uid_declared_by_another_pod_is_a_clash() {
    let mut a = r1("default");
    a.spec.links.push(link(20, "localhost", "eth20", "ens3"));
    let mut b = r2("default");
    b.spec.links.push(link(20, "localhost", "eth20", "ens3"));
    let plans = plan(&[alive_on(a.clone(), NODE), alive_on(b, NODE)]);
    assert_invalid(
        action(&plans, "default", "r1", 20),
        "also declared by pod r2",
    );
    assert_invalid(
        action(&plans, "default", "r2", 20),
        "also declared by pod r1",
    );
    // The same uid in another namespace is another link.
    let mut c = r1("blue");
    c.spec.links.push(link(20, "localhost", "eth20", "ens3"));
    let plans = plan(&[alive_on(a, NODE), alive_on(c, NODE)]);
    assert!(matches!(
        action(&plans, "blue", "r1", 20),
        Action::Macvlan { .. }
    ));
}

#[test]
fn localhost_peer_is_a_macvlan_on_the_named_node_interface() {
    let mut p = r1("default");
    let mut l = link(20, "localhost", "eth20", "ens3");
    l.local_ip = "192.0.2.20/24".into();
    l.mtu = Some(1400);
    p.spec.links.push(l);
    let plans = plan(&[alive_on(p, NODE), alive_on(r2("default"), NODE)]);
    match action(&plans, "default", "r1", 20) {
        Action::Macvlan { parent, end, mtu } => {
            assert_eq!(parent, "ens3");
            assert_eq!(end.ifname, "eth20");
            assert_eq!(end.ip, Some("192.0.2.20/24".parse().expect("cidr")));
            assert_eq!(end.netns, PathBuf::from(netns_path("default", "r1")));
            assert_eq!(*mtu, Some(1400));
        }
        other => panic!("want Macvlan, got {other:?}"),
    }
    assert!(matches!(
        action(&plans, "default", "r1", 1),
        Action::Veth(_)
    ));
}

#[test]
fn vni_is_stable_per_namespace_and_uid() {
    use crate::plan::vni;
    assert_eq!(vni("default", 1), vni("default", 1));
    assert_ne!(vni("default", 1), vni("default", 2));
    assert_ne!(vni("red", 1), vni("blue", 1), "same uid in two namespaces");
    // Small uids across a few namespaces spread without clashing.
    let mut seen = std::collections::HashSet::new();
    for ns in ["default", "mlink", "red", "blue", "lab-1"] {
        for uid in 0..200 {
            let v = vni(ns, uid);
            assert!((1..=0x00ff_ffff).contains(&v));
            assert!(seen.insert(v), "clash at {ns}/{uid}");
        }
    }
}

#[test]
fn namespaces_do_not_interfere() {
    let mut topos = triangle_alive("red");
    topos.extend(triangle_alive("blue"));
    let plans = plan(&topos);
    assert_eq!(
        keys(&plans),
        [
            "blue/r1", "blue/r2", "blue/r3", "red/r1", "red/r2", "red/r3"
        ]
    );
    for ns in ["red", "blue"] {
        for (x, y, uid) in [("r1", "r2", 1), ("r2", "r3", 2), ("r1", "r3", 3)] {
            let v = veth(&plans, ns, x, uid);
            assert_eq!(v, veth(&plans, ns, y, uid));
            assert_eq!(v.a.netns, PathBuf::from(netns_path(ns, x)));
            assert_eq!(v.b.netns, PathBuf::from(netns_path(ns, y)));
            let alias = OwnedAlias::parse(&v.alias).expect("alias");
            assert_eq!((alias.namespace.as_str(), alias.uid), (ns, uid));
        }
    }
    assert_ne!(veth(&plans, "red", "r1", 1), veth(&plans, "blue", "r1", 1));
}

#[test]
fn peer_is_looked_up_in_the_pods_own_namespace() {
    // red/r1's peer r2 exists only in blue: red/r1 must wait, not wire to blue/r2.
    let topos = vec![alive_on(r1("red"), NODE), alive_on(r2("blue"), NODE)];
    let plans = plan(&topos);
    assert_pending(action(&plans, "red", "r1", 1), "red/r2");
    assert_pending(action(&plans, "blue", "r2", 1), "blue/r1");
}

#[test]
fn empty_namespace_is_default() {
    let topos = vec![alive_on(r1(""), NODE), alive_on(r2("default"), NODE)];
    let plans = plan(&topos);
    assert_eq!(keys(&plans), ["default/r1", "default/r2"]);
    let v = veth(&plans, "default", "r1", 1);
    assert_eq!(v, veth(&plans, "default", "r2", 1));
    assert_eq!(
        OwnedAlias::parse(&v.alias).expect("alias").namespace,
        "default"
    );
}

#[test]
fn primary_interface_defaults_to_eth0() {
    let p = Topology::new("default", "r1", vec![link(1, "r2", "eth0", "eth1")]);
    let q = Topology::new("default", "r2", vec![link(1, "r1", "eth1", "eth0")]);
    let plans = plan(&[alive_on(p, NODE), alive_on(q, NODE)]);
    assert_invalid(action(&plans, "default", "r1", 1), "primary");
    // r2's own declaration is fine, but its peer's end is invalid.
    assert_invalid(action(&plans, "default", "r2", 1), "primary");
}

#[test]
fn primary_interface_map_is_respected() {
    let p = Topology::new(
        "default",
        "r1",
        vec![link(1, "r2", "eth0", "eth1"), link(2, "r2", "net0", "eth2")],
    );
    let q = Topology::new(
        "default",
        "r2",
        vec![link(1, "r1", "eth1", "eth0"), link(2, "r1", "eth2", "net0")],
    );
    let topos = [alive_on(p, NODE), alive_on(q, NODE)];
    let primary = HashMap::from([(PodKey::new("default", "r1"), "net0".to_string())]);
    let plans = plan_node(&node(), &topos, &primary);
    // With r1's primary interface net0, eth0 is free and net0 is taken.
    assert!(matches!(
        action(&plans, "default", "r1", 1),
        Action::Veth(_)
    ));
    assert_eq!(
        veth(&plans, "default", "r1", 1),
        veth(&plans, "default", "r2", 1)
    );
    assert_invalid(action(&plans, "default", "r1", 2), "primary");
    assert_invalid(action(&plans, "default", "r2", 2), "primary");
    // The same objects without the map: eth0 is taken, net0 is free.
    let plans = plan(&topos);
    assert_invalid(action(&plans, "default", "r1", 1), "primary");
    assert!(matches!(
        action(&plans, "default", "r1", 2),
        Action::Veth(_)
    ));
}

#[test]
fn planning_is_independent_of_input_order() {
    let mut topos = triangle_alive("default");
    topos.extend(triangle_alive("lab"));
    let forward = plan(&topos);
    topos.reverse();
    assert_eq!(plan(&topos), forward);
}
