//! The reconciler's decisions, on the recording [`FakeOps`] and a file store in a temp dir: no
//! root, no kernel. What it builds, skips, sweeps and refuses is read from the calls it made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::links::fake::{Call, FakeOps};
use crate::store::file::FileStore;
use crate::topology::Link;

const NODE: &str = "198.51.100.1";
const OTHER: &str = "198.51.100.2";

struct Env {
    dir: PathBuf,
    ops: Arc<FakeOps>,
    rec: Reconciler,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(inter: InterNodeLink) -> Env {
    env_with(inter, None)
}

fn env_with(inter: InterNodeLink, beacon: Option<Arc<crate::beacon::Beacon>>) -> Env {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mnd-reconcile-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let store: SharedStore = Arc::new(FileStore::open(&dir).unwrap());
    let ops = FakeOps::new();
    ops.set_underlay(NodeIface {
        index: 2,
        name: "eth0".into(),
        mtu: 1500,
    });
    let rec = Reconciler::new(
        NodeIdentity {
            name: "node1".into(),
            ip: NODE.parse().unwrap(),
        },
        store,
        Arc::clone(&ops) as Arc<dyn LinkOps>,
        inter,
        None,
    );
    let rec = match beacon {
        Some(b) => rec.with_beacon(b),
        None => rec,
    };
    Env { dir, ops, rec }
}

fn link(uid: i64, peer: &str, local_intf: &str, peer_intf: &str) -> Link {
    Link {
        uid,
        peer_pod: peer.into(),
        local_intf: local_intf.into(),
        peer_intf: peer_intf.into(),
        ..Link::default()
    }
}

fn netns(pod: &str, cid: &str) -> String {
    format!("/run/netns/fake-{pod}-{cid}")
}

impl Env {
    /// Stores `pod`'s Topology, alive on `node` with sandbox `cid`.
    async fn pod(&self, pod: &str, links: Vec<Link>, node: &str, cid: &str) {
        let store = self.rec.store();
        store
            .apply(&Topology::new("default", pod, links))
            .await
            .unwrap();
        self.sandbox(pod, node, cid).await;
    }

    /// Records `pod` alive on `node` with sandbox `cid` (as an ADD on that node would).
    async fn sandbox(&self, pod: &str, node: &str, cid: &str) {
        let (node, ns, cid) = (node.to_string(), netns(pod, cid), cid.to_string());
        store::update_status(
            self.rec.store().as_ref(),
            &PodKey::new("default", pod),
            |s| {
                s.src_ip = node.clone();
                s.net_ns = ns.clone();
                s.container_id = cid.clone();
                true
            },
        )
        .await
        .unwrap();
    }

    async fn status(&self, pod: &str) -> TopologyStatus {
        let key = PodKey::new("default", pod);
        self.rec.store().get(&key).await.unwrap().unwrap().status
    }

    fn ensures(&self) -> Vec<Call> {
        self.ops
            .take_calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::RetainHalves { .. } | Call::Impair { .. }))
            .collect()
    }

    /// The impairments the run put on (or took off) ports: (pod, interface, spec).
    fn impairs(&self) -> Vec<(String, String, Option<String>)> {
        self.ops
            .take_calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Impair {
                    netns,
                    ifname,
                    spec,
                } => {
                    let pod = netns.to_string_lossy().split('-').nth(1)?.to_string();
                    Some((pod, ifname, spec))
                }
                _ => None,
            })
            .collect()
    }
}

fn result<'a>(reports: &'a [PodReport], pod: &str, uid: i64) -> &'a LinkResult {
    let r = reports.iter().find(|r| r.key.name == pod).unwrap();
    &r.links.iter().find(|(l, _)| l.uid == uid).unwrap().1
}

/// Two pods of this node declaring uid 1 to each other.
async fn pair(e: &Env) {
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], NODE, "bbbb")
        .await;
}

/// The calls that build (or check) the same-node link uid 1 between r1 (sandbox `c1`) and r2
/// (`c2`): each pod's port, then the patch between their node ends.
fn patch_calls(c1: &str, c2: &str) -> Vec<Call> {
    vec![
        Call::EnsurePort {
            alias: format!("meshnet|default|1|port|{c1}"),
            mode: Mode::Repair,
        },
        Call::EnsurePort {
            alias: format!("meshnet|default|1|port|{c2}"),
            mode: Mode::Repair,
        },
        Call::EnsurePatch {
            a: ports::node_end_name("default", 1, "r1"),
            b: ports::node_end_name("default", 1, "r2"),
            mode: Mode::Repair,
        },
    ]
}

/// Event-driven runs trust the memo: a built link is not touched again until its spec changes;
/// a full run checks every link again.
#[tokio::test]
async fn memo_skips_unchanged_links_until_a_full_run() {
    let e = env(InterNodeLink::Vxlan);
    pair(&e).await;
    let reports = e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(result(&reports, "r1", 1), &LinkResult::Up { kind: "veth" });
    assert_eq!(
        e.ensures(),
        patch_calls("aaaa", "bbbb"),
        "built once, though it is in both pods' plans"
    );
    // Each port's node end carries, patched to the other's.
    let cables = e.ops.cables();
    assert_eq!(cables.len(), 2, "{cables:?}");
    for c in &cables {
        let far = cables.iter().find(|o| o.node != c.node).unwrap();
        assert_eq!(c.far, Some(Far::Port(far.node.clone())));
        assert!(!c.pulled);
    }
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(
        e.ensures(),
        [],
        "nothing changed: the kernel is not touched"
    );
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(e.ensures(), patch_calls("aaaa", "bbbb"));
    assert_eq!(e.status("r2").await.links[0].state, LinkState::Up);
}

/// The sweep removes meshnet interfaces that the pod's plan no longer has (a link removed from
/// the Topology) and keeps the planned ones.
#[tokio::test]
async fn sweep_removes_stale_link_ends_only() {
    let e = env(InterNodeLink::Vxlan);
    pair(&e).await;
    let r1 = netns("r1", "aaaa");
    e.ops
        .add_iface(&r1, "eth9", "meshnet|default|9|veth|aaaa-cccc");
    e.rec.run(Depth::Changes).await.unwrap();
    let calls = e.ensures();
    assert!(
        calls.contains(&Call::Delete {
            netns: r1.clone().into(),
            ifname: "eth9".into()
        }),
        "{calls:?}"
    );
    assert_eq!(
        e.ops.ifaces(&r1).keys().collect::<Vec<_>>(),
        ["eth1"],
        "the planned link stays"
    );
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Delete { ifname, .. } if ifname == "eth1"))
    );
}

/// A peer's sandbox replaced (new container id, new namespace): the new sandbox gets a new
/// port, patched to the survivor's, whose port stays as it was (its alias names only its own
/// sandbox).
#[tokio::test]
async fn replaced_sandbox_rebuilds_the_link_for_the_new_one() {
    let e = env(InterNodeLink::Vxlan);
    pair(&e).await;
    e.rec.run(Depth::Changes).await.unwrap();
    e.ops.take_calls();
    e.ops.remove_netns(&netns("r2", "bbbb"));
    e.sandbox("r2", NODE, "cccc").await;
    let reports = e.rec.run(Depth::Changes).await.unwrap();
    let calls = e.ensures();
    assert_eq!(calls, patch_calls("aaaa", "cccc"));
    assert_eq!(result(&reports, "r2", 1), &LinkResult::Up { kind: "veth" });
    assert_eq!(
        e.ops.ifaces(&netns("r1", "aaaa"))["eth1"],
        "meshnet|default|1|port|aaaa"
    );
    assert_eq!(
        e.ops.ifaces(&netns("r2", "cccc"))["eth1"],
        "meshnet|default|1|port|cccc"
    );
}

/// Two uids of one namespace whose VNIs collide.
fn clashing_uids() -> (i64, i64) {
    let mut seen: HashMap<u32, i64> = HashMap::new();
    for uid in 1.. {
        if let Some(first) = seen.insert(plan::vni("default", uid), uid) {
            return (first, uid);
        }
    }
    unreachable!("a 24-bit VNI space has collisions")
}

/// Two VXLAN links of this node on one VNI: the smaller (namespace, uid) is built, the other is
/// refused naming it — never a shared device.
#[tokio::test]
async fn vni_clash_builds_one_link_and_refuses_the_other() {
    let (u1, u2) = clashing_uids();
    let e = env(InterNodeLink::Vxlan);
    e.pod(
        "a",
        vec![link(u1, "b", "eth1", "eth1"), link(u2, "c", "eth2", "eth1")],
        NODE,
        "aaaa",
    )
    .await;
    e.pod("b", vec![link(u1, "a", "eth1", "eth1")], OTHER, "bbbb")
        .await;
    e.pod("c", vec![link(u2, "a", "eth1", "eth2")], OTHER, "cccc")
        .await;
    let reports = e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(result(&reports, "a", u1), &LinkResult::Up { kind: "vxlan" });
    match result(&reports, "a", u2) {
        LinkResult::Failed {
            kind,
            fault,
            message,
        } => {
            assert_eq!((*kind, *fault), ("vxlan", LinkFault::Node));
            assert!(
                message.contains(&format!("clashes with link default/uid {u1}")),
                "{message}"
            );
        }
        other => panic!("want the clash refused, got {other:?}"),
    }
    let calls = e.ensures();
    assert_eq!(calls.len(), 3, "only the first link is built: {calls:?}");
    assert!(matches!(&calls[0], Call::EnsurePort { alias, .. }
        if *alias == format!("meshnet|default|{u1}|port|aaaa")));
    assert!(matches!(&calls[1], Call::EnsureSingle { alias, .. }
        if alias.starts_with(&format!("meshnet|default|{u1}|vxlan|"))));
    assert_eq!(
        calls[2],
        Call::EnsurePatch {
            a: ports::node_end_name("default", u1, "a"),
            b: ports::device_name("default", u1),
            mode: Mode::Repair
        },
        "the port's node end is patched to the link's vxlan device in the node"
    );
}

/// A pod whose namespace vanished is released: status cleared, nothing built toward it, its
/// peer pending — and the peer keeps its port, carrier off.
#[tokio::test]
async fn a_pod_whose_namespace_vanished_is_released() {
    let e = env(InterNodeLink::Vxlan);
    pair(&e).await;
    e.ops.remove_netns(&netns("r2", "bbbb"));
    let reports = e.rec.run(Depth::Full).await.unwrap();
    assert!(!e.status("r2").await.is_alive());
    assert!(reports.iter().all(|r| r.key.name != "r2"));
    match result(&reports, "r1", 1) {
        LinkResult::Pending(m) => assert!(m.contains("waiting for peer pod default/r2"), "{m}"),
        other => panic!("want pending, got {other:?}"),
    }
    assert_eq!(
        e.ensures(),
        [Call::EnsurePort {
            alias: "meshnet|default|1|port|aaaa".into(),
            mode: Mode::Repair
        }],
        "the survivor's port only: nothing is built toward a gone pod"
    );
    let cables = e.ops.cables();
    assert_eq!(cables.len(), 1);
    assert_eq!(cables[0].node, ports::node_end_name("default", 1, "r1"));
    assert_eq!(cables[0].far, None, "nothing patched to it: carrier off");
}

/// With the gRPC wire a pod gets its half before the peer exists; the link is up only once the
/// half's carrier is, and halves no longer planned are dropped.
#[tokio::test]
async fn wire_half_is_made_at_once_and_up_only_with_carrier() {
    let e = env(InterNodeLink::Grpc);
    e.pod("w1", vec![link(3, "w2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.rec
        .store()
        .apply(&Topology::new(
            "default",
            "w2",
            vec![link(3, "w1", "eth1", "eth1")],
        ))
        .await
        .unwrap();
    let reports = e.rec.run(Depth::Changes).await.unwrap();
    assert!(
        matches!(result(&reports, "w1", 3), LinkResult::Pending(m) if m.contains("half ready")),
        "{reports:?}"
    );
    let calls = e.ops.take_calls();
    assert!(calls.contains(&Call::EnsureHalf {
        alias: "meshnet|default|3|grpc|aaaa".into(),
        mode: Mode::Repair
    }));
    assert!(calls.contains(&Call::RetainHalves {
        keep: vec![("default".into(), 3)]
    }));
    e.ops.set_carrier(("default".into(), 3), true);
    let reports = e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(result(&reports, "w1", 3), &LinkResult::Up { kind: "grpc" });
    // CNI CHECK goes through the same seam, verifying only.
    let checked = e.rec.check(&PodKey::new("default", "w1"), "aaaa").await;
    assert!(checked.is_ok(), "{checked:?}");
    assert!(e.ops.take_calls().contains(&Call::EnsureHalf {
        alias: "meshnet|default|3|grpc|aaaa".into(),
        mode: Mode::Verify
    }));
}

fn impaired(uid: i64, peer: &str, yaml: &str) -> Link {
    Link {
        impairment: Some(serde_yaml::from_str(yaml).unwrap()),
        ..link(uid, peer, "eth1", "eth1")
    }
}

fn note(st: &TopologyStatus, uid: i64) -> String {
    st.links
        .iter()
        .find(|l| l.uid == uid)
        .unwrap()
        .impairment
        .clone()
}

/// A declaration impairs both ends' egress unless it names a side; it is applied once, not on
/// every resync; a change is applied; clearing it takes meshnet's qdisc off.
#[tokio::test]
async fn impairments_go_on_the_egress_they_name_once_per_change() {
    let e = env(InterNodeLink::Vxlan);
    e.pod("r1", vec![impaired(1, "r2", "{delay: 10ms}")], NODE, "aaaa")
        .await;
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], NODE, "bbbb")
        .await;
    e.rec.run(Depth::Full).await.unwrap();
    let mut got = e.impairs();
    got.sort();
    let ten = Some("delay 10ms".to_string());
    assert_eq!(
        got,
        [
            ("r1".into(), "eth1".into(), ten.clone()),
            ("r2".into(), "eth1".into(), ten.clone())
        ]
    );
    assert_eq!(note(&e.status("r1").await, 1), "delay 10ms (netem)");
    assert_eq!(note(&e.status("r2").await, 1), "delay 10ms (netem)");
    // A resync leaves the qdiscs alone.
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(e.impairs(), []);

    // side: local — only what r1 sends; r2's end is cleared.
    e.pod(
        "r1",
        vec![impaired(1, "r2", "{rate: 50mbit, side: local}")],
        NODE,
        "aaaa",
    )
    .await;
    e.rec.run(Depth::Full).await.unwrap();
    let mut got = e.impairs();
    got.sort();
    assert_eq!(
        got,
        [
            ("r1".into(), "eth1".into(), Some("rate 50mbit".into())),
            ("r2".into(), "eth1".into(), None)
        ]
    );
    assert_eq!(note(&e.status("r1").await, 1), "rate 50mbit (tbf)");
    assert_eq!(note(&e.status("r2").await, 1), "");

    // Cleared.
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(e.impairs(), [("r1".into(), "eth1".into(), None)]);
    assert_eq!(note(&e.status("r1").await, 1), "");
}

/// What the node cannot do, or what is declared wrong, is said in the status; the link stays up.
#[tokio::test]
async fn an_impairment_the_node_cannot_apply_is_named_in_the_status() {
    let e = env(InterNodeLink::Vxlan);
    e.ops.without_netem();
    e.pod(
        "r1",
        vec![impaired(1, "r2", "{delay: 10ms, side: local}")],
        NODE,
        "aaaa",
    )
    .await;
    e.pod(
        "r2",
        vec![impaired(1, "r1", "{delay: 5ms, rate: 10mbit, side: local}")],
        NODE,
        "bbbb",
    )
    .await;
    let reports = e.rec.run(Depth::Full).await.unwrap();
    assert!(matches!(result(&reports, "r1", 1), LinkResult::Up { .. }));
    let n1 = note(&e.status("r1").await, 1);
    assert!(
        n1.starts_with("not applied:") && n1.contains("no sch_netem"),
        "{n1}"
    );
    let n2 = note(&e.status("r2").await, 1);
    assert_eq!(n2, "rate 10mbit (tbf); not applied: no sch_netem");

    // Both ends impairing one direction differently: a clash, named on that end.
    e.pod(
        "r2",
        vec![impaired(1, "r1", "{delay: 5ms, side: peer}")],
        NODE,
        "bbbb",
    )
    .await;
    e.rec.run(Depth::Full).await.unwrap();
    let n1 = note(&e.status("r1").await, 1);
    assert!(
        n1.contains("both ends impair this direction differently"),
        "{n1}"
    );
    // An invalid value is refused by name; the link stays up.
    e.pod("r1", vec![impaired(1, "r2", "{loss: 200}")], NODE, "aaaa")
        .await;
    let reports = e.rec.run(Depth::Full).await.unwrap();
    assert!(matches!(result(&reports, "r1", 1), LinkResult::Up { .. }));
    assert!(note(&e.status("r1").await, 1).contains("loss 200"));
    // Said once: the next resync does not touch the port again.
    e.ops.take_calls();
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(e.impairs(), []);
}

/// `state: down` on either end pulls the cable: a VXLAN link's port is handed to the patchbay
/// pulled (its node end goes down), and plugged back; on a same-node link both ports' node ends
/// are pulled.
#[tokio::test]
async fn a_declared_down_state_pulls_the_cable_once_per_change() {
    let e = env(InterNodeLink::Vxlan);
    let down = Link {
        state: "down".into(),
        ..link(1, "r1", "eth1", "eth1")
    };
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.pod("r2", vec![down], OTHER, "bbbb").await;
    let pulled = |e: &Env| -> Vec<(bool, Option<Far>)> {
        assert!(
            !e.ops
                .take_calls()
                .iter()
                .any(|c| matches!(c, Call::ProtoDown { .. })),
            "a port's carrier is its node end's, not protodown"
        );
        e.ops
            .cables()
            .into_iter()
            .map(|c| (c.pulled, c.far))
            .collect()
    };
    let far = Some(Far::Device(ports::device_name("default", 1)));
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(
        pulled(&e),
        [(true, far.clone())],
        "the peer's declaration pulls this end"
    );
    let st = e.status("r1").await;
    assert_eq!(st.links[0].state, LinkState::Down);
    assert_eq!(st.links[0].message, "state: down (declared by r2)");
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(pulled(&e), [(true, far.clone())], "still, on a resync");
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], OTHER, "bbbb")
        .await;
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(pulled(&e), [(false, far)]);
    assert_eq!(e.status("r1").await.links[0].state, LinkState::Up);

    // A same-node link: no protodown; both node ends pulled; down, declared by r1.
    let v = env(InterNodeLink::Vxlan);
    let down = Link {
        state: "down".into(),
        ..link(1, "r2", "eth1", "eth1")
    };
    v.pod("r1", vec![down], NODE, "aaaa").await;
    v.pod("r2", vec![link(1, "r1", "eth1", "eth1")], NODE, "bbbb")
        .await;
    v.rec.run(Depth::Full).await.unwrap();
    assert!(pulled(&v).iter().all(|(p, f)| *p && f.is_some()));
    let st = v.status("r2").await;
    assert_eq!(st.links[0].state, LinkState::Down);
    assert_eq!(st.links[0].message, "state: down (declared by r1)");
    let cables = v.ops.cables();
    assert_eq!(cables.len(), 2);
    assert!(cables.iter().all(|c| c.pulled), "{cables:?}");
    v.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    v.rec.run(Depth::Full).await.unwrap();
    assert!(v.ops.cables().iter().all(|c| !c.pulled));
    assert_eq!(v.status("r2").await.links[0].state, LinkState::Up);

    // r2's router shuts its port: r1's carrier is off (the patchbay found it), and r1's status
    // says so; r2's own status stays up. Opened again: both up.
    let r1_node = ports::node_end_name("default", 1, "r1");
    v.ops.set_far_shut(&r1_node, true);
    v.rec.run(Depth::Changes).await.unwrap();
    let st = v.status("r1").await;
    assert_eq!(st.links[0].state, LinkState::Down, "{st:?}");
    assert_eq!(st.links[0].message, "carrier off: far router shut its port");
    assert_eq!(v.status("r2").await.links[0].state, LinkState::Up);
    assert!(
        v.ops.cables().iter().all(|c| !c.pulled),
        "not a pulled cable"
    );
    v.ops.set_far_shut(&r1_node, false);
    v.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(v.status("r1").await.links[0].state, LinkState::Up);
}

/// On a gRPC wire this node applies the impairment of what the *peer* sends (the peer's node
/// does the other direction), says what this end sends is impaired, and pulls the half on a
/// declared `state: down` — each once per change.
#[tokio::test]
async fn a_wire_end_gets_the_incoming_impairment_and_its_cable_state() {
    let e = env(InterNodeLink::Grpc);
    let key = ("default".to_string(), 1);
    e.ops.set_carrier(key.clone(), true);
    e.pod(
        "r1",
        vec![impaired(1, "r2", "{delay: 10ms, side: local}")],
        NODE,
        "aaaa",
    )
    .await;
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], OTHER, "bbbb")
        .await;
    let half_calls = |e: &Env| -> Vec<Call> {
        e.ops
            .take_calls()
            .into_iter()
            .filter(|c| matches!(c, Call::ImpairHalf { .. } | Call::PullHalf { .. }))
            .collect()
    };
    e.rec.run(Depth::Full).await.unwrap();
    // side: local of r1 is what r1 sends: the peer's node delays it, not this one.
    assert_eq!(half_calls(&e), []);
    assert_eq!(note(&e.status("r1").await, 1), "delay 10ms (wire)");

    // side: peer — what r2 sends, which arrives here: this node delays it.
    e.pod(
        "r1",
        vec![impaired(1, "r2", "{delay: 10ms, side: peer}")],
        NODE,
        "aaaa",
    )
    .await;
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(
        half_calls(&e),
        [Call::ImpairHalf {
            key: key.clone(),
            spec: Some("delay 10ms".into())
        }]
    );
    assert_eq!(note(&e.status("r1").await, 1), "");
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(half_calls(&e), [], "not again on a resync");

    // The peer declares state: down: this half's cable is pulled, the status says down.
    e.pod(
        "r2",
        vec![Link {
            state: "down".into(),
            ..link(1, "r1", "eth1", "eth1")
        }],
        OTHER,
        "bbbb",
    )
    .await;
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(
        half_calls(&e),
        [Call::PullHalf {
            key: key.clone(),
            pulled: true
        }]
    );
    assert_eq!(e.status("r1").await.links[0].state, LinkState::Down);
}

/// The run deleted nothing in the pod namespace `ns`.
fn assert_nothing_deleted_in(calls: &[Call], ns: &str) {
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Delete { netns, .. } if netns.as_os_str() == ns)),
        "{calls:?}"
    );
}

/// Under VXLAN the pod's port stays whatever the peer does: the vxlan device in the node's
/// namespace is rebuilt when the peer moves to another node, and removed when it goes (the
/// port stays, nothing patched to it); the pod's interface is never deleted.
#[tokio::test]
async fn a_vxlan_port_stays_when_the_peer_moves_or_goes() {
    const THIRD: &str = "198.51.100.3";
    let e = env(InterNodeLink::Vxlan);
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], OTHER, "bbbb")
        .await;
    let r1 = netns("r1", "aaaa");
    let dev = ports::device_name("default", 1);
    let node_devs = |e: &Env| e.ops.ifaces(ports::NODE_NETNS);
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(e.ops.ifaces(&r1)["eth1"], "meshnet|default|1|port|aaaa");
    assert!(node_devs(&e)[&dev].contains(&format!("-{OTHER}-")));
    e.ops.take_calls();
    // The peer moves to another node: a new device toward it, the same port.
    e.sandbox("r2", THIRD, "cccc").await;
    e.rec.run(Depth::Changes).await.unwrap();
    assert!(node_devs(&e)[&dev].contains(&format!("-{THIRD}-")));
    let calls = e.ops.take_calls();
    assert_nothing_deleted_in(&calls, &r1);
    // The peer goes: the device is removed from the node, the port stays, carrier off.
    store::update_status(e.rec.store().as_ref(), &PodKey::new("default", "r2"), |s| {
        s.net_ns.clear();
        s.container_id.clear();
        s.src_ip.clear();
        true
    })
    .await
    .unwrap();
    e.rec.run(Depth::Changes).await.unwrap();
    assert!(!node_devs(&e).contains_key(&dev), "{:?}", node_devs(&e));
    assert_eq!(e.ops.ifaces(&r1)["eth1"], "meshnet|default|1|port|aaaa");
    assert_eq!(e.ops.cables()[0].far, None);
}

/// In GRPC mode a pod whose peer is not there yet gets a wire half on its port; when the peer
/// lands on the same node the link becomes a patch of two ports and the pod's interface (the
/// port) is kept, never deleted.
#[tokio::test]
async fn a_wire_half_becomes_a_patch_on_the_same_port() {
    let e = env(InterNodeLink::Grpc);
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.rec.run(Depth::Changes).await.unwrap();
    let r1 = netns("r1", "aaaa");
    assert_eq!(e.ops.ifaces(&r1)["eth1"], "meshnet|default|1|port|aaaa");
    assert_eq!(e.ops.cables()[0].far, Some(Far::Wire));
    e.ops.take_calls();
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], NODE, "bbbb")
        .await;
    e.rec.run(Depth::Changes).await.unwrap();
    let calls = e.ops.take_calls();
    assert_nothing_deleted_in(&calls, &r1);
    assert!(
        calls.contains(&Call::RetainHalves { keep: vec![] }),
        "{calls:?}"
    );
    assert_eq!(e.ops.ifaces(&r1)["eth1"], "meshnet|default|1|port|aaaa");
    let far: Vec<_> = e.ops.cables().into_iter().map(|c| c.far).collect();
    assert!(
        far.iter().all(|f| matches!(f, Some(Far::Port(_)))),
        "{far:?}"
    );
}

/// r2 on the far node 127.0.0.2, its end of uid 1 declaring `state`.
async fn r2_far(e: &Env, state: &str) {
    let l = Link {
        state: state.into(),
        ..link(1, "r1", "eth1", "eth1")
    };
    e.pod("r2", vec![l], "127.0.0.2", "bbbb").await;
}

/// A VXLAN end under the beacon: this side's port state goes to the far daemon (here a socket on
/// 127.0.0.2 standing in for it), and what the far daemon says switches this end's carrier
/// (the port's node end, through the patchbay) and its status — combined with `state: down`.
#[tokio::test]
async fn a_vxlan_end_follows_its_far_end_through_the_beacon() {
    use crate::beacon::{self, Beacon, BeaconOptions, FarEnd};
    let socket = beacon::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let b = Beacon::start(socket, BeaconOptions::default()).unwrap();
    // The far node's daemon: 127.0.0.2 on the beacon port (all nodes use the same port).
    let far = tokio::net::UdpSocket::bind(("127.0.0.2", port))
        .await
        .unwrap();
    let e = env_with(InterNodeLink::Vxlan, Some(Arc::clone(&b)));
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    r2_far(&e, "").await;
    let ns1 = PathBuf::from(netns("r1", "aaaa"));
    let key = meshnet_wire::table::link_hash("default", 1);
    // The port's carrier as the patchbay is told to keep it (off: the cable is pulled).
    let pulls = |e: &Env| -> Vec<bool> { e.ops.cables().into_iter().map(|c| c.pulled).collect() };
    let heard = |want: bool| {
        let far = &far;
        async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, _) = tokio::time::timeout(Duration::from_secs(2), far.recv_from(&mut buf))
                    .await
                    .expect("a datagram within 2 s")
                    .unwrap();
                if beacon::decode(&buf[..n]).unwrap().links == [(key, want)] {
                    return;
                }
            }
        }
    };
    let mut seq = 0;
    let mut say = |up: bool| {
        seq += 1;
        let d = beacon::encode(7, seq, &[(key, up)]);
        let far = &far;
        async move {
            far.send_to(&d, ("127.0.0.1", port)).await.unwrap();
        }
    };
    let verdict = |want: FarEnd| {
        let b = &b;
        async move {
            let t = Instant::now();
            while b.far_end(key) != want {
                assert!(t.elapsed() < Duration::from_secs(2), "never {want:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(e.ops.watched(), HashSet::from([ns1.clone()]));
    assert_eq!(pulls(&e), [false]);
    assert_eq!(e.status("r1").await.links[0].state, LinkState::Up);
    heard(true).await;

    // The far router shuts its port.
    say(false).await;
    verdict(FarEnd::PortDown).await;
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(pulls(&e), [true]);
    let st = e.status("r1").await;
    assert_eq!(st.links[0].state, LinkState::Down);
    assert!(
        st.links[0].message.contains("far router shut its port"),
        "{st:?}"
    );
    // ... and opens it again (after the hold-down).
    tokio::time::sleep(Duration::from_millis(300)).await;
    say(true).await;
    verdict(FarEnd::Up).await;
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(pulls(&e), [false]);
    assert_eq!(e.status("r1").await.links[0].state, LinkState::Up);

    // This pod shuts its own port: the far daemon is told.
    e.ops.set_admin(&netns("r1", "aaaa"), "eth1", false);
    e.rec.run(Depth::Changes).await.unwrap();
    heard(false).await;
    e.ops.set_admin(&netns("r1", "aaaa"), "eth1", true);

    // A declared state: down and a silent far end: pulled, the declaration named.
    r2_far(&e, "down").await;
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(pulls(&e), [true]);
    verdict(FarEnd::Silent).await;
    e.rec.run(Depth::Full).await.unwrap();
    assert_eq!(pulls(&e), [true]);
    assert_eq!(
        e.status("r1").await.links[0].message,
        "state: down (declared by r2)"
    );
    // The declaration lifted, the far end still silent: the carrier stays off, and says why.
    r2_far(&e, "").await;
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(pulls(&e), [true]);
    let st = e.status("r1").await;
    assert_eq!(st.links[0].state, LinkState::Down);
    assert!(
        st.links[0].message.contains("far end silent since"),
        "{st:?}"
    );

    // The link goes: the beacon and the port watch forget it.
    e.rec
        .store()
        .delete(&PodKey::new("default", "r2"))
        .await
        .unwrap();
    e.rec.run(Depth::Changes).await.unwrap();
    assert!(b.verdict(key).is_none());
    assert!(e.ops.watched().is_empty());
}

/// A pod between two sandboxes: its link's device in the node's namespace waits for the next
/// full run instead of being deleted by the DEL's run (the next sandbox takes it over), and a
/// full run removes a device no pod of this node plans.
#[tokio::test]
async fn a_device_of_a_pod_between_sandboxes_waits_for_a_full_run() {
    let e = env(InterNodeLink::Vxlan);
    e.pod("r1", vec![link(1, "r2", "eth1", "eth1")], NODE, "aaaa")
        .await;
    e.pod("r2", vec![link(1, "r1", "eth1", "eth1")], OTHER, "bbbb")
        .await;
    let dev = ports::device_name("default", 1);
    let node_devs = |e: &Env| e.ops.ifaces(ports::NODE_NETNS);
    e.rec.run(Depth::Changes).await.unwrap();
    let made = node_devs(&e)[&dev].clone();
    e.rec
        .del(&PodKey::new("default", "r1"), "aaaa", &netns("r1", "aaaa"))
        .await
        .unwrap();
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(
        node_devs(&e).get(&dev),
        Some(&made),
        "kept for the next sandbox"
    );
    // The next sandbox finds it as it was.
    e.sandbox("r1", NODE, "cccc").await;
    e.ops.take_calls();
    e.rec.run(Depth::Changes).await.unwrap();
    assert_eq!(node_devs(&e).get(&dev), Some(&made));
    assert_nothing_deleted_in(&e.ops.take_calls(), ports::NODE_NETNS);
    // Gone for good: the full run removes it.
    e.rec
        .del(&PodKey::new("default", "r1"), "cccc", &netns("r1", "cccc"))
        .await
        .unwrap();
    e.rec.run(Depth::Full).await.unwrap();
    assert!(!node_devs(&e).contains_key(&dev), "{:?}", node_devs(&e));
}
