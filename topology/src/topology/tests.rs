use serde_json::{Value, json};

use super::*;

/// The seed README's `r1`, as `kubectl apply` would send it (YAML converted to JSON).
const R1: &str = r#"{
    "apiVersion": "networkop.co.uk/v1beta1",
    "kind": "Topology",
    "metadata": {"name": "r1"},
    "spec": {
        "links": [
            {
                "uid": 1,
                "peer_pod": "r2",
                "local_intf": "eth1",
                "local_ip": "12.12.12.1/24",
                "peer_intf": "eth1",
                "peer_ip": "12.12.12.2/24"
            }
        ]
    }
}"#;

fn parse(s: &str) -> Topology {
    serde_json::from_str(s).expect("valid Topology JSON")
}

fn to_value(t: &Topology) -> Value {
    serde_json::to_value(t).expect("Topology serializes")
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

fn net(s: &str) -> IpNet {
    s.parse().expect("valid CIDR")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("valid MAC")
}

/// The results of `check_links` for `r1` with these links and primary interface `eth0`.
fn check(links: Vec<Link>) -> Vec<(i64, Result<LinkDecl, String>)> {
    check_links(&Topology::new("default", "r1", links), "eth0")
}

fn err_of(r: &Result<LinkDecl, String>) -> &str {
    match r {
        Ok(d) => panic!("expected an error, got {d:?}"),
        Err(e) => e,
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

// ---- serde ----

#[test]
fn seed_readme_r1_parses_with_snake_case_fields() {
    let t = parse(R1);
    assert_eq!(t.api_version, API_VERSION);
    assert_eq!(t.kind, KIND);
    assert_eq!(t.metadata.name, "r1");
    assert_eq!(t.metadata.namespace, "");
    assert_eq!(t.key(), PodKey::new("default", "r1"));
    assert_eq!(
        t.spec.links,
        vec![Link {
            local_ip: "12.12.12.1/24".into(),
            peer_ip: "12.12.12.2/24".into(),
            ..link(1, "r2", "eth1", "eth1")
        }]
    );
    assert_eq!(t.status, TopologyStatus::default());
}

#[test]
fn seed_readme_r1_round_trips_with_the_same_field_names() {
    let t = parse(R1);
    let v = to_value(&t);
    assert_eq!(v["apiVersion"], API_VERSION);
    assert_eq!(v["kind"], KIND);
    let l = &v["spec"]["links"][0];
    assert_eq!(
        keys(l),
        [
            "local_intf",
            "local_ip",
            "peer_intf",
            "peer_ip",
            "peer_pod",
            "uid"
        ]
    );
    assert_eq!(l["uid"], 1);
    assert_eq!(l["peer_pod"], "r2");
    assert_eq!(l["local_ip"], "12.12.12.1/24");
    let back: Topology = serde_json::from_value(v).expect("re-parses");
    assert_eq!(back, t);
}

#[test]
fn status_round_trips_with_snake_case_fields() {
    let t = parse(
        r#"{
            "apiVersion": "networkop.co.uk/v1beta1",
            "kind": "Topology",
            "metadata": {"name": "r2", "namespace": "lab", "resourceVersion": "42"},
            "spec": {"links": [{"uid": 1, "peer_pod": "r1", "local_intf": "eth1", "peer_intf": "eth1"}]},
            "status": {
                "src_ip": "198.51.100.1",
                "net_ns": "/var/run/netns/cni-1234",
                "container_id": "0123456789abcdef",
                "skipped": [{"pod_name": "r1", "link_id": 1}]
            }
        }"#,
    );
    assert_eq!(t.metadata.resource_version, "42");
    assert_eq!(t.status.src_ip, "198.51.100.1");
    assert_eq!(t.status.net_ns, "/var/run/netns/cni-1234");
    assert_eq!(t.status.container_id, "0123456789abcdef");
    assert_eq!(
        t.status.skipped,
        vec![SkippedPod {
            pod_name: "r1".into(),
            link_id: 1
        }]
    );
    let v = to_value(&t);
    assert_eq!(v["metadata"]["resourceVersion"], "42");
    assert_eq!(
        keys(&v["status"]),
        ["container_id", "net_ns", "skipped", "src_ip"]
    );
    assert_eq!(keys(&v["status"]["skipped"][0]), ["link_id", "pod_name"]);
    let back: Topology = serde_json::from_value(v).expect("re-parses");
    assert_eq!(back, t);
}

#[test]
fn unknown_metadata_fields_from_the_api_server_are_accepted() {
    let t = parse(
        r#"{
            "apiVersion": "networkop.co.uk/v1beta1",
            "kind": "Topology",
            "metadata": {
                "name": "r1", "namespace": "default", "uid": "5f0c-11",
                "generation": 3, "creationTimestamp": "2024-01-01T00:00:00Z",
                "annotations": {"a": "b"}, "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {"links": []}
        }"#,
    );
    assert_eq!(t.key(), PodKey::new("default", "r1"));
}

#[test]
fn go_client_empty_and_null_fields_mean_absent() {
    let t = parse(
        r#"{
            "apiVersion": "networkop.co.uk/v1beta1",
            "kind": "Topology",
            "metadata": {"name": "r2", "namespace": "default", "labels": null},
            "spec": {"links": [
                {"uid": 7, "peer_pod": "r1", "local_intf": "eth1", "peer_intf": "eth2",
                 "local_ip": "", "peer_ip": "", "local_mac": "", "peer_mac": "", "mtu": null}
            ]},
            "status": null
        }"#,
    );
    assert_eq!(t.spec.links, vec![link(7, "r1", "eth1", "eth2")]);
    assert_eq!(t.status, TopologyStatus::default());
    assert!(t.metadata.labels.is_empty());
    let (uid, decl) = check_links(&t, "eth0").remove(0);
    assert_eq!(uid, 7);
    let decl = decl.expect("empty optional fields are valid");
    assert_eq!(decl.local_ip, None);
    assert_eq!(decl.peer_ip, None);
    assert_eq!(decl.local_mac, None);
    assert_eq!(decl.mtu, None);
    // Written back, the empty strings are gone rather than kept as "".
    let v = to_value(&t);
    assert_eq!(
        keys(&v["spec"]["links"][0]),
        ["local_intf", "peer_intf", "peer_pod", "uid"]
    );
}

#[test]
fn go_client_null_status_lists_and_empty_strings_mean_absent() {
    let t = parse(
        r#"{
            "metadata": {"name": "r1", "namespace": null},
            "spec": {"links": null},
            "status": {"src_ip": "", "net_ns": "", "container_id": "",
                       "skipped": null, "links": null, "node": null}
        }"#,
    );
    assert!(t.spec.links.is_empty());
    assert_eq!(t.status, TopologyStatus::default());
    assert!(!t.status.is_alive());
    assert_eq!(t.metadata.namespace, "");
    assert_eq!(t.key().namespace, "default");
    // apiVersion and kind default when a client leaves them out.
    assert_eq!(t.api_version, API_VERSION);
    assert_eq!(t.kind, KIND);
}

#[test]
fn null_spec_means_no_links() {
    let t = parse(r#"{"metadata": {"name": "r1"}, "spec": null}"#);
    assert!(t.spec.links.is_empty());
}

#[test]
fn link_without_required_field_is_rejected() {
    for missing in ["uid", "peer_pod", "local_intf", "peer_intf"] {
        let mut l = json!({"uid": 1, "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1"});
        l.as_object_mut().expect("object").remove(missing);
        let v = json!({"metadata": {"name": "r1"}, "spec": {"links": [l]}});
        assert!(
            serde_json::from_value::<Topology>(v).is_err(),
            "a link without {missing} must not parse"
        );
    }
}

#[test]
fn old_topology_serializes_without_extension_fields() {
    let mut t = Topology::new("default", "r1", vec![link(1, "r2", "eth1", "eth1")]);
    t.status.src_ip = "198.51.100.1".into();
    t.status.net_ns = "/proc/1/ns/net".into();
    t.status.container_id = "abc".into();
    let v = to_value(&t);
    assert_eq!(
        keys(&v["spec"]["links"][0]),
        ["local_intf", "peer_intf", "peer_pod", "uid"]
    );
    assert_eq!(keys(&v["status"]), ["container_id", "net_ns", "src_ip"]);
    assert_eq!(keys(&v["metadata"]), ["name", "namespace"]);
}

#[test]
fn extension_fields_round_trip() {
    let src = json!({
        "apiVersion": "networkop.co.uk/v1beta1",
        "kind": "Topology",
        "metadata": {"name": "r1", "namespace": "lab", "labels": {"topo": "3node"}},
        "spec": {"links": [{
            "uid": 3, "peer_pod": "r3", "local_intf": "eth2", "peer_intf": "eth1",
            "mtu": 9000, "local_mac": "02:00:00:00:00:01", "peer_mac": "02:00:00:00:00:03"
        }]},
        "status": {
            "src_ip": "198.51.100.1", "net_ns": "/var/run/netns/x", "container_id": "c1",
            "node": "node-a",
            "links": [
                {"uid": 3, "local_intf": "eth2", "peer_pod": "r3", "kind": "veth", "state": "up"},
                {"uid": 4, "local_intf": "eth3", "peer_pod": "r4", "state": "error", "message": "bad"}
            ]
        }
    });
    let t: Topology = serde_json::from_value(src.clone()).expect("parses");
    assert_eq!(t.spec.links[0].mtu, Some(9000));
    assert_eq!(t.spec.links[0].local_mac, "02:00:00:00:00:01");
    assert_eq!(t.status.node, "node-a");
    assert_eq!(t.status.links.len(), 2);
    assert_eq!(t.status.links[0].state, LinkState::Up);
    assert_eq!(t.status.links[1].state, LinkState::Error);
    assert_eq!(t.status.links[1].kind, "");
    assert_eq!(
        t.metadata.labels.get("topo").map(String::as_str),
        Some("3node")
    );
    // Serialized exactly as given: nothing added, nothing lost.
    assert_eq!(to_value(&t), src);
}

#[test]
fn link_state_names() {
    for (s, name) in [
        (LinkState::Pending, "pending"),
        (LinkState::Up, "up"),
        (LinkState::Error, "error"),
    ] {
        assert_eq!(s.to_string(), name);
        assert_eq!(serde_json::to_value(s).expect("serializes"), json!(name));
    }
    assert_eq!(LinkState::default(), LinkState::Pending);
    let st: LinkStatus =
        serde_json::from_value(json!({"uid": 1, "state": "pending"})).expect("parses");
    assert_eq!(st.state, LinkState::Pending);
    assert!(serde_json::from_value::<LinkStatus>(json!({"uid": 1, "state": "Up"})).is_err());
}

// ---- check_ifname ----

#[test]
fn ifname_length_limits() {
    assert!(check_ifname("").is_err());
    assert!(check_ifname("e").is_ok());
    assert!(check_ifname(&"a".repeat(15)).is_ok());
    let e = check_ifname(&"a".repeat(16)).expect_err("16 bytes is too long");
    assert!(e.contains("16 bytes"), "{e}");
    // Bytes, not characters: 8 two-byte characters are 16 bytes.
    assert!(check_ifname(&"é".repeat(8)).is_err());
    assert!(check_ifname(&"é".repeat(7)).is_ok());
}

#[test]
fn ifname_forbidden_characters_and_names() {
    for bad in [
        "eth/1", "eth:1", "eth 1", " eth1", "eth1\t", "eth\n1", ".", "..", "e\u{7f}", "p%", "eth%d",
    ] {
        assert!(check_ifname(bad).is_err(), "{bad:?} must be rejected");
    }
    for ok in ["eth1", "e1-1.100", "...", ".eth", "Ethernet1_1", "net@0"] {
        assert!(check_ifname(ok).is_ok(), "{ok:?} must be accepted");
    }
}

// ---- parse_cidr ----

#[test]
fn cidr_valid_v4_and_v6_keep_the_host_address() {
    let v4 = parse_cidr("local_ip", "12.12.12.1/24")
        .expect("valid")
        .expect("present");
    assert_eq!(v4.addr(), "12.12.12.1".parse::<IpAddr>().expect("ip"));
    assert_eq!(v4.prefix_len(), 24);
    let v6 = parse_cidr("peer_ip", "2001:db8::1/64")
        .expect("valid")
        .expect("present");
    assert_eq!(v6.addr(), "2001:db8::1".parse::<IpAddr>().expect("ip"));
    assert_eq!(v6.prefix_len(), 64);
    assert_eq!(parse_cidr("local_ip", ""), Ok(None));
}

#[test]
fn cidr_bare_address_and_garbage_rejected_naming_the_field() {
    for (field, bad) in [
        ("local_ip", "12.12.12.1"),
        ("peer_ip", "2001:db8::1"),
        ("local_ip", "not-an-ip"),
        ("peer_ip", "12.12.12.1/33"),
        ("local_ip", "12.12.12/24"),
        ("peer_ip", " 12.12.12.1/24"),
    ] {
        let e = parse_cidr(field, bad).expect_err(bad);
        assert!(e.contains(field), "message {e:?} must name {field}");
        assert!(e.contains(bad), "message {e:?} must quote {bad:?}");
    }
}

// ---- MacAddr ----

#[test]
fn mac_parse_and_display() {
    let m = mac("02:00:5e:aa:BB:0c");
    assert_eq!(m, MacAddr([0x02, 0x00, 0x5e, 0xaa, 0xbb, 0x0c]));
    assert_eq!(m.to_string(), "02:00:5e:aa:bb:0c");
    assert_eq!(mac("02-00-5e-aa-bb-0c"), m);
    assert_eq!(mac(&m.to_string()), m);
}

#[test]
fn mac_multicast_zero_and_malformed_rejected() {
    for bad in [
        "01:00:5e:00:00:01",
        "03:00:00:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "02:00:00:00:01",
        "02:00:00:00:00:01:02",
        "2:0:0:0:0:1",
        "02:00:00:00:00:0g",
        "020000000001",
        "",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} must be rejected");
    }
    let e = "01:00:5e:00:00:01"
        .parse::<MacAddr>()
        .expect_err("multicast");
    assert!(e.contains("multicast"), "{e}");
    let e = "00:00:00:00:00:00".parse::<MacAddr>().expect_err("zero");
    assert!(e.contains("zero"), "{e}");
}

// ---- check_links ----

#[test]
fn check_links_parses_a_good_link() {
    let r = check(vec![Link {
        local_ip: "12.12.12.1/24".into(),
        peer_ip: "12.12.12.2/24".into(),
        mtu: Some(9000),
        local_mac: "02:00:00:00:00:01".into(),
        peer_mac: "02:00:00:00:00:02".into(),
        ..link(1, "r2", "eth1", "eth1")
    }]);
    assert_eq!(r.len(), 1);
    let (uid, d) = &r[0];
    assert_eq!(*uid, 1);
    assert_eq!(
        d.as_ref().expect("valid"),
        &LinkDecl {
            uid: 1,
            peer_pod: "r2".into(),
            local_intf: "eth1".into(),
            peer_intf: "eth1".into(),
            local_ip: Some(net("12.12.12.1/24")),
            peer_ip: Some(net("12.12.12.2/24")),
            mtu: Some(9000),
            local_mac: Some(mac("02:00:00:00:00:01")),
            peer_mac: Some(mac("02:00:00:00:00:02")),
        }
    );
    assert!(!d.as_ref().expect("valid").is_macvlan());
}

#[test]
fn check_links_duplicate_uid_fails_both_links_only() {
    let r = check(vec![
        link(1, "r2", "eth1", "eth1"),
        link(2, "r3", "eth2", "eth1"),
        link(1, "r4", "eth3", "eth1"),
    ]);
    assert_eq!(r.iter().map(|(u, _)| *u).collect::<Vec<_>>(), [1, 2, 1]);
    assert!(err_of(&r[0].1).contains("duplicate uid"), "{:?}", r[0].1);
    assert!(err_of(&r[2].1).contains("duplicate uid"), "{:?}", r[2].1);
    assert!(r[1].1.is_ok(), "{:?}", r[1].1);
}

#[test]
fn check_links_rejects_a_link_to_itself() {
    let r = check(vec![link(1, "r1", "eth1", "eth2")]);
    assert!(err_of(&r[0].1).contains("itself"), "{:?}", r[0].1);
}

#[test]
fn check_links_rejects_empty_peer_pod() {
    let r = check(vec![link(1, "", "eth1", "eth2")]);
    assert!(err_of(&r[0].1).contains("peer_pod"), "{:?}", r[0].1);
}

#[test]
fn check_links_rejects_the_primary_interface() {
    let t = Topology::new("default", "r1", vec![link(1, "r2", "eth0", "eth1")]);
    let r = check_links(&t, "eth0");
    assert!(err_of(&r[0].1).contains("primary"), "{:?}", r[0].1);
    // Another primary name frees eth0 and takes its own name.
    assert!(check_links(&t, "net0")[0].1.is_ok());
    let t = Topology::new("default", "r1", vec![link(1, "r2", "net0", "eth1")]);
    assert!(check_links(&t, "net0")[0].1.is_err());
    // The peer's interface name is the peer's business.
    let t = Topology::new("default", "r1", vec![link(1, "r2", "eth1", "eth0")]);
    assert!(check_links(&t, "eth0")[0].1.is_ok());
}

#[test]
fn check_links_duplicate_local_intf_fails_both_links_only() {
    let r = check(vec![
        link(1, "r2", "eth1", "eth1"),
        link(2, "r3", "eth1", "eth1"),
        link(3, "r4", "eth3", "eth1"),
    ]);
    assert!(err_of(&r[0].1).contains("eth1"), "{:?}", r[0].1);
    assert!(err_of(&r[1].1).contains("eth1"), "{:?}", r[1].1);
    assert!(r[2].1.is_ok(), "{:?}", r[2].1);
}

#[test]
fn check_links_mtu_range() {
    let with_mtu = |m| Link {
        mtu: Some(m),
        ..link(1, "r2", "eth1", "eth1")
    };
    for ok in [MTU_MIN, 1500, 9000, MTU_MAX] {
        assert!(check(vec![with_mtu(ok)])[0].1.is_ok(), "mtu {ok}");
    }
    for bad in [0, MTU_MIN - 1, MTU_MAX + 1, u32::MAX] {
        let r = check(vec![with_mtu(bad)]);
        assert!(err_of(&r[0].1).contains("mtu"), "mtu {bad}: {:?}", r[0].1);
    }
}

#[test]
fn check_links_names_the_bad_field() {
    let cases = [
        (link(1, "r2", "this-is-too-long", "eth1"), "local_intf"),
        (link(1, "r2", "eth1", "eth:1"), "peer_intf"),
        (
            Link {
                local_ip: "12.12.12.1".into(),
                ..link(1, "r2", "eth1", "eth1")
            },
            "local_ip",
        ),
        (
            Link {
                peer_ip: "garbage".into(),
                ..link(1, "r2", "eth1", "eth1")
            },
            "peer_ip",
        ),
        (
            Link {
                local_mac: "01:00:00:00:00:01".into(),
                ..link(1, "r2", "eth1", "eth1")
            },
            "local_mac",
        ),
        (
            Link {
                peer_mac: "00:00:00:00:00:00".into(),
                ..link(1, "r2", "eth1", "eth1")
            },
            "peer_mac",
        ),
    ];
    for (l, field) in cases {
        let r = check(vec![l]);
        let e = err_of(&r[0].1);
        assert!(e.contains(field), "{e:?} must name {field}");
    }
}

#[test]
fn check_links_one_bad_link_does_not_affect_the_others() {
    let r = check(vec![
        link(1, "r2", "eth1", "eth1"),
        Link {
            local_ip: "bad".into(),
            ..link(2, "r3", "eth2", "eth1")
        },
        link(3, "r3", "this-is-too-long", "eth2"),
        link(4, "r1", "eth4", "eth1"),
        Link {
            mtu: Some(1),
            ..link(5, "r5", "eth5", "eth1")
        },
        link(6, "r6", "eth6", "eth1"),
    ]);
    let ok: Vec<i64> = r
        .iter()
        .filter(|(_, d)| d.is_ok())
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(ok, [1, 6]);
    assert_eq!(r.len(), 6);
}

#[test]
fn check_links_localhost_is_macvlan() {
    let r = check(vec![link(1, LOCALHOST, "eth1", "ens3")]);
    assert!(r[0].1.as_ref().expect("valid").is_macvlan());
}

#[test]
fn check_links_empty() {
    assert!(check(vec![]).is_empty());
}

// ---- merge_ends ----

fn decl(uid: i64, peer_pod: &str, local_intf: &str, peer_intf: &str) -> LinkDecl {
    LinkDecl {
        uid,
        peer_pod: peer_pod.into(),
        local_intf: local_intf.into(),
        peer_intf: peer_intf.into(),
        local_ip: None,
        peer_ip: None,
        mtu: None,
        local_mac: None,
        peer_mac: None,
    }
}

#[test]
fn merge_consistent_ends_takes_what_the_other_side_declares() {
    // r1 knows only its own address; r2 knows only its own address, the MTU and its MAC.
    let r1 = LinkDecl {
        local_ip: Some(net("12.12.12.1/24")),
        local_mac: Some(mac("02:00:00:00:00:01")),
        ..decl(1, "r2", "eth1", "eth2")
    };
    let r2 = LinkDecl {
        local_ip: Some(net("12.12.12.2/24")),
        mtu: Some(9000),
        local_mac: Some(mac("02:00:00:00:00:02")),
        ..decl(1, "r1", "eth2", "eth1")
    };
    let m = merge_ends(&r1, "r1", &r2).expect("consistent");
    assert_eq!(
        m,
        LinkDecl {
            local_ip: Some(net("12.12.12.1/24")),
            peer_ip: Some(net("12.12.12.2/24")),
            mtu: Some(9000),
            local_mac: Some(mac("02:00:00:00:00:01")),
            peer_mac: Some(mac("02:00:00:00:00:02")),
            ..decl(1, "r2", "eth1", "eth2")
        }
    );
    // The same link seen from the other end is the mirror image.
    let n = merge_ends(&r2, "r2", &r1).expect("consistent");
    assert_eq!(
        n,
        LinkDecl {
            local_ip: m.peer_ip,
            peer_ip: m.local_ip,
            mtu: m.mtu,
            local_mac: m.peer_mac,
            peer_mac: m.local_mac,
            ..decl(1, "r1", "eth2", "eth1")
        }
    );
}

#[test]
fn merge_one_side_declares_everything() {
    let r1 = LinkDecl {
        local_ip: Some(net("12.12.12.1/24")),
        peer_ip: Some(net("12.12.12.2/24")),
        ..decl(1, "r2", "eth1", "eth1")
    };
    let r2 = decl(1, "r1", "eth1", "eth1");
    let from_r2 = merge_ends(&r2, "r2", &r1).expect("consistent");
    assert_eq!(from_r2.local_ip, Some(net("12.12.12.2/24")));
    assert_eq!(from_r2.peer_ip, Some(net("12.12.12.1/24")));
    // Both sides saying the same thing is fine too.
    let r2 = LinkDecl {
        local_ip: Some(net("12.12.12.2/24")),
        peer_ip: Some(net("12.12.12.1/24")),
        ..r2
    };
    assert_eq!(merge_ends(&r2, "r2", &r1), Ok(from_r2));
}

#[test]
fn merge_mismatched_interface_names() {
    let r1 = decl(1, "r2", "eth1", "eth2");
    for r2 in [
        decl(1, "r1", "eth3", "eth1"), // r2 uses another local interface
        decl(1, "r1", "eth2", "eth9"), // r2 thinks r1's end is another interface
        decl(1, "r1", "eth1", "eth2"), // both sides written from r1's view
    ] {
        let e = merge_ends(&r1, "r1", &r2).expect_err("mismatched ends");
        assert!(e.contains("mismatched"), "{e}");
    }
}

#[test]
fn merge_disagreeing_addresses_mac_or_mtu() {
    let r1 = LinkDecl {
        local_ip: Some(net("12.12.12.1/24")),
        peer_ip: Some(net("12.12.12.2/24")),
        ..decl(1, "r2", "eth1", "eth1")
    };
    let r2 = decl(1, "r1", "eth1", "eth1");
    let cases = [
        LinkDecl {
            local_ip: Some(net("12.12.12.3/24")),
            ..r2.clone()
        },
        LinkDecl {
            peer_ip: Some(net("12.12.12.9/24")),
            ..r2.clone()
        },
        // Same address, other prefix length: still a disagreement.
        LinkDecl {
            local_ip: Some(net("12.12.12.2/25")),
            ..r2.clone()
        },
    ];
    for bad in cases {
        let e = merge_ends(&r1, "r1", &bad).expect_err("disagreeing addresses");
        assert!(e.contains("disagree"), "{e}");
        assert!(e.contains("address"), "{e}");
    }
    let r1 = LinkDecl {
        mtu: Some(1500),
        peer_mac: Some(mac("02:00:00:00:00:02")),
        ..decl(1, "r2", "eth1", "eth1")
    };
    let e = merge_ends(
        &r1,
        "r1",
        &LinkDecl {
            mtu: Some(9000),
            ..r2.clone()
        },
    )
    .expect_err("disagreeing mtu");
    assert!(e.contains("mtu"), "{e}");
    let e = merge_ends(
        &r1,
        "r1",
        &LinkDecl {
            local_mac: Some(mac("02:00:00:00:00:03")),
            ..r2
        },
    )
    .expect_err("disagreeing MAC");
    assert!(e.contains("MAC"), "{e}");
}

#[test]
fn merge_peer_pointing_at_another_pod() {
    let r1 = decl(1, "r2", "eth1", "eth1");
    let r2 = decl(1, "r3", "eth1", "eth1");
    let e = merge_ends(&r1, "r1", &r2).expect_err("peer points elsewhere");
    assert!(e.contains("r3"), "{e}");
    assert!(e.contains("not this pod"), "{e}");
}

// ---- status, keys, nodes ----

#[test]
fn alive_needs_netns_container_and_node() {
    let full = TopologyStatus {
        src_ip: "198.51.100.1".into(),
        net_ns: "/var/run/netns/x".into(),
        container_id: "c1".into(),
        ..Default::default()
    };
    assert!(full.is_alive());
    assert!(!TopologyStatus::default().is_alive());
    for clear in [
        |s: &mut TopologyStatus| s.src_ip.clear(),
        |s: &mut TopologyStatus| s.net_ns.clear(),
        |s: &mut TopologyStatus| s.container_id.clear(),
    ] {
        let mut s = full.clone();
        clear(&mut s);
        assert!(!s.is_alive(), "{s:?}");
    }
}

#[test]
fn pod_key_defaults_the_namespace() {
    assert_eq!(PodKey::new("", "r1").namespace, "default");
    assert_eq!(PodKey::new("", "r1"), PodKey::new("default", "r1"));
    assert_eq!(PodKey::new("lab", "r1").namespace, "lab");
    assert_eq!(PodKey::new("", "r1").to_string(), "default/r1");
    assert_eq!(
        Topology::new("", "r1", vec![]).key(),
        PodKey::new("default", "r1")
    );
}

#[test]
fn same_node_compares_addresses() {
    let node: IpAddr = "198.51.100.1".parse().expect("ip");
    assert!(same_node("198.51.100.1", &node));
    assert!(!same_node("198.51.100.2", &node));
    assert!(!same_node("", &node));
    assert!(!same_node("node-a", &node));
    let v6: IpAddr = "2001:db8::1".parse().expect("ip");
    assert!(same_node("2001:db8:0::1", &v6));
}
