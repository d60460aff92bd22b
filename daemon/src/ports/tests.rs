#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use super::*;
use crate::links::snapshot::Snapshot;
use crate::testns::TestNs;

#[test]
fn node_end_names_fit_and_differ_per_pod() {
    let a = node_end_name("default", 1, "r1");
    let b = node_end_name("default", 1, "r2");
    let c = node_end_name("default", 2, "r1");
    let d = node_end_name("other", 1, "r1");
    for n in [&a, &b, &c, &d] {
        assert!(n.len() <= 15 && n.starts_with("mp"), "{n}");
    }
    assert!(a != b && a != c && a != d && b != c);
    assert_eq!(a, node_end_name("default", 1, "r1"), "stable");
    // What daemons already running gave this port: a new daemon must find the same node end.
    assert_eq!(a, "mpe32e44be4c1f");
}

#[test]
fn carrier_comes_back_only_after_the_hold() {
    assert_eq!(decide(true, true, None), Switch::Keep);
    assert_eq!(decide(false, false, Some(HOLD)), Switch::Keep);
    assert_eq!(decide(false, true, None), Switch::Down);
    assert_eq!(
        decide(true, false, Some(HOLD / 3)),
        Switch::Wait,
        "a far end back at once still gives a link-down the router sees"
    );
    assert_eq!(decide(true, false, Some(HOLD)), Switch::Up);
}

/// A pass decided from the wire's verdicts as they were when it began; a wire port whose
/// verdict changed meanwhile is left to the next pass (which that change asks for), whatever
/// the stale decision was. Ports of other kinds, and wire ports whose wire did not change, are
/// switched as decided (a pulled cable goes down although its wire is bound).
#[test]
fn a_pass_does_not_switch_a_wire_port_whose_wire_changed_since_it_began() {
    let state = |up| WireState {
        key: ("default".into(), 1),
        up,
        device: None,
    };
    let cable = |node: &str, far| Cable {
        node: node.into(),
        pod: (PathBuf::from("/run/netns/x"), "eth1".into()),
        far,
        pulled: false,
    };
    let bay = Bay::default();
    bay.live.lock().unwrap().extend([
        ("w1".to_string(), state(true)),
        ("w2".to_string(), state(true)),
    ]);
    let seen: HashMap<String, WireState> = [
        ("w1".to_string(), state(false)),
        ("w2".to_string(), state(true)),
    ]
    .into();
    assert!(
        bay.wire_changed(&cable("w1", Some(Far::Wire)), &seen),
        "bound since"
    );
    assert!(
        !bay.wire_changed(&cable("w2", Some(Far::Wire)), &seen),
        "unchanged"
    );
    assert!(
        !bay.wire_changed(&cable("w1", Some(Far::Port("p".into()))), &seen),
        "not a wire port"
    );
    assert!(
        bay.wire_changed(
            &cable("w3", Some(Far::Wire)),
            &[("w3".to_string(), state(true))].into()
        ),
        "gone from the wire since"
    );
    bay.live.lock().unwrap().insert("w3".into(), state(false));
    assert!(
        bay.wire_changed(&cable("w3", Some(Far::Wire)), &HashMap::new()),
        "attached since"
    );
}

fn carrier(ns: &str, ifname: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", ifname])
        .output()
        .expect("ip runs");
    let s = String::from_utf8_lossy(&out.stdout);
    s.contains("LOWER_UP") && !s.contains("NO-CARRIER")
}

fn ifindex(ns: &str, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", ifname])
        .output()
        .expect("ip runs");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = s.split("link/ether ").nth(1).unwrap_or("").to_string();
    format!(
        "{}{}",
        s.split(':').next().unwrap_or(""),
        mac.split(' ').next().unwrap_or("")
    )
}

async fn wait_carrier(ns: &str, ifname: &str, want: bool) {
    for _ in 0..100 {
        if carrier(ns, ifname) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{ifname} in {ns}: carrier never became {want}");
}

fn ping(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", to])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn port(ns: &TestNs, pod: &str, cid: &str, ip: &str) -> PortSpec {
    PortSpec {
        alias: port_alias("t", 1, cid),
        end: EndSpec {
            netns: ns.path(),
            ifname: "eth1".into(),
            ip: Some(ip.parse().unwrap()),
            mac: None,
        },
        mtu: None,
        node: node_end_name(&format!("t{}", std::process::id()), 1, pod),
    }
}

fn cables(a: &PortSpec, b: Option<&PortSpec>, pulled: bool) -> Vec<Cable> {
    let mut v = vec![Cable {
        node: a.node.clone(),
        pod: (a.end.netns.clone(), a.end.ifname.clone()),
        far: b.map(|b| Far::Port(b.node.clone())),
        pulled,
    }];
    if let Some(b) = b {
        v.push(Cable {
            node: b.node.clone(),
            pod: (b.end.netns.clone(), b.end.ifname.clone()),
            far: Some(Far::Port(a.node.clone())),
            pulled,
        });
    }
    v
}

/// Two ports patched on a node: frames pass; the far pod going away (its namespace deleted)
/// takes the survivor's carrier off, and a recreated far pod brings it back — the survivor's
/// port keeps its ifindex and MAC throughout. The far router shutting its port, and a declared
/// `state: down`, take the carrier off too; each comes back.
#[tokio::test]
async fn a_patched_port_survives_its_peer_and_its_carrier_follows_it() {
    let node = TestNs::new("pnode");
    let ra = TestNs::new("pa");
    let rb = TestNs::new("pb");
    let rb2 = TestNs::new("pb2");
    let (na, nb, nb2) = (ra.0.clone(), rb.0.clone(), rb2.0.clone());
    let a = port(&ra, "ra", "aaaa", "192.0.2.1/24");
    let b = port(&rb, "rb", "bbbb", "192.0.2.2/24");
    let b2 = port(&rb2, "rb", "cccc", "192.0.2.2/24");
    crate::netns::in_netns(&node.path(), move |h| async move {
        let snap = Snapshot::default();
        let told = Arc::new(tokio::sync::Notify::new());
        let bay = Patchbay::start(Arc::clone(&told)).unwrap();
        for p in [&a, &b] {
            assert_eq!(
                ensure_port(&h, &snap, p, Mode::Repair).await.unwrap(),
                Outcome::Created
            );
        }
        assert!(!carrier(&na, "eth1"), "no carrier before the patch");
        assert_eq!(
            ensure_patch(&h, &Snapshot::default(), &a.node, &b.node, Mode::Repair)
                .await
                .unwrap(),
            Outcome::Repaired
        );
        assert_eq!(
            ensure_patch(&h, &Snapshot::default(), &a.node, &b.node, Mode::Verify)
                .await
                .unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(
            ensure_port(&h, &snap, &a, Mode::Verify).await.unwrap(),
            Outcome::Unchanged
        );
        let survivor = ifindex(&na, "eth1");
        bay.set(cables(&a, Some(&b), false));
        wait_carrier(&na, "eth1", true).await;
        wait_carrier(&nb, "eth1", true).await;
        assert!(ping(&na, "192.0.2.2"), "frames pass the patch");

        // The far pod goes away: carrier off at once, port kept.
        Command::new("ip")
            .args(["netns", "del", &nb])
            .output()
            .unwrap();
        wait_carrier(&na, "eth1", false).await;
        // It comes back in a new sandbox: a new port for it, patched again.
        ensure_port(&h, &snap, &b2, Mode::Repair).await.unwrap();
        assert!(
            ensure_patch(&h, &Snapshot::default(), &a.node, &b2.node, Mode::Verify)
                .await
                .is_err()
        );
        ensure_patch(&h, &Snapshot::default(), &a.node, &b2.node, Mode::Repair)
            .await
            .unwrap();
        bay.set(cables(&a, Some(&b2), false));
        wait_carrier(&na, "eth1", true).await;
        wait_carrier(&nb2, "eth1", true).await;
        assert!(ping(&na, "192.0.2.2"), "frames pass the new patch");
        assert_eq!(ifindex(&na, "eth1"), survivor, "same ifindex and MAC");

        assert!(!bay.far_shut(&a.node));
        // The far router shuts its port, and turns it back on: the carrier follows, and the
        // patchbay says why (the status) and tells that it changed.
        Command::new("ip")
            .args(["-n", &nb2, "link", "set", "eth1", "down"])
            .output()
            .unwrap();
        wait_carrier(&na, "eth1", false).await;
        tokio::time::timeout(Duration::from_secs(2), told.notified())
            .await
            .expect("told that a far port was shut");
        assert!(bay.far_shut(&a.node), "a's far router shut its port");
        assert!(
            !bay.far_shut(&b2.node),
            "b2's own router shut, not its far one"
        );
        Command::new("ip")
            .args(["-n", &nb2, "link", "set", "eth1", "up"])
            .output()
            .unwrap();
        wait_carrier(&na, "eth1", true).await;
        assert!(!bay.far_shut(&a.node));
        // Both routers shut their ports, then turn them on: both carriers come back.
        for ns in [&na, &nb2] {
            Command::new("ip")
                .args(["-n", ns, "link", "set", "eth1", "down"])
                .output()
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for ns in [&na, &nb2] {
            Command::new("ip")
                .args(["-n", ns, "link", "set", "eth1", "up"])
                .output()
                .unwrap();
        }
        wait_carrier(&na, "eth1", true).await;
        wait_carrier(&nb2, "eth1", true).await;

        // state: down, then up again.
        bay.set(cables(&a, Some(&b2), true));
        wait_carrier(&na, "eth1", false).await;
        wait_carrier(&nb2, "eth1", false).await;
        bay.set(cables(&a, Some(&b2), false));
        wait_carrier(&na, "eth1", true).await;
        assert_eq!(ifindex(&na, "eth1"), survivor, "same ifindex and MAC");
    })
    .await
    .unwrap();
    drop((node, ra, rb, rb2));
}

/// Waits for `ifname`'s carrier to be `want` without yielding: the calling runtime's thread is
/// busy throughout, as a daemon's is under a flood of frames.
fn wait_carrier_blocking(ns: &str, ifname: &str, want: bool) {
    let t = std::time::Instant::now();
    while carrier(ns, ifname) != want {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{ifname} in {ns}: carrier never became {want} while the runtime was busy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A wire port's carrier follows the wire's verdict while the runtime that started the
/// patchbay never gets to run a task (its passes run on their own thread), and the shut hook
/// runs in that runtime's context (what it spawns runs there, not on the patchbay's thread).
#[tokio::test]
async fn a_wire_port_follows_its_wire_while_the_runtime_is_busy() {
    let node = TestNs::new("pwnode");
    let ra = TestNs::new("pwa");
    let na = ra.0.clone();
    let a = port(&ra, "rw", "wwww", "192.0.2.1/24");
    crate::netns::in_netns(&node.path(), move |h| async move {
        let told = Arc::new(tokio::sync::Notify::new());
        let bay = Patchbay::start(told).unwrap();
        ensure_port(&h, &Snapshot::default(), &a, Mode::Repair)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        bay.on_shut(Box::new(move |_key, shut| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((shut, std::thread::current().name().map(String::from)));
            });
        }));
        bay.wire_attached(&a.node, None, ("t".into(), 1));
        bay.set(vec![Cable {
            node: a.node.clone(),
            pod: (a.end.netns.clone(), a.end.ifname.clone()),
            far: Some(Far::Wire),
            pulled: false,
        }]);
        assert!(!carrier(&na, "eth1"), "no carrier before the wire binds");
        bay.wire_carrier(&a.node, true);
        wait_carrier_blocking(&na, "eth1", true);
        // The wire blinks: the port goes down and comes back after its hold.
        bay.wire_carrier(&a.node, false);
        wait_carrier_blocking(&na, "eth1", false);
        bay.wire_carrier(&a.node, true);
        wait_carrier_blocking(&na, "eth1", true);

        // The router shuts its port: the hook is told, and what it spawned runs here.
        Command::new("ip")
            .args(["-n", &na, "link", "set", "eth1", "down"])
            .output()
            .unwrap();
        let (shut, thread) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("told that the router shut its port")
            .unwrap();
        assert!(shut);
        assert_eq!(
            thread.as_deref(),
            Some("netns"),
            "spawned on the caller's runtime"
        );
    })
    .await
    .unwrap();
    drop((node, ra));
}

fn link_msg(name: &str, index: u32, up: bool) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if up {
        m.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
    }
    m.attributes.push(LinkAttribute::IfName(name.into()));
    m
}

fn end(index: u32, up: bool) -> NodeEnd {
    NodeEnd {
        index,
        up,
        lower_up: up,
    }
}

/// A check finds a name whose state, presence or absence the events did not bring, and leaves
/// out the names an event changed since its dump began.
#[test]
fn a_check_finds_what_the_events_missed_and_skips_what_they_changed() {
    let mut t = NodeLinks::default();
    t.put(&link_msg("a", 1, true));
    t.put(&link_msg("b", 2, false));
    let at = std::time::Instant::now();
    let check = |links: &[(&str, NodeEnd)], at| Check {
        at,
        links: links.iter().map(|(n, e)| ((*n).to_string(), *e)).collect(),
    };
    let same = [("a", end(1, true)), ("b", end(2, false))];
    assert_eq!(t.disagrees(&check(&same, at)), None);
    let b_up = [("a", end(1, true)), ("b", end(2, true))];
    assert_eq!(t.disagrees(&check(&b_up, at)), Some("b".into()), "state");
    assert_eq!(
        t.disagrees(&check(&[("a", end(1, true))], at)),
        Some("b".into()),
        "gone from the node"
    );
    let more = [
        ("a", end(1, true)),
        ("b", end(2, false)),
        ("c", end(3, true)),
    ];
    assert_eq!(t.disagrees(&check(&more, at)), Some("c".into()), "new");
    assert_eq!(
        t.disagrees(&check(&[("a", end(4, true)), ("b", end(2, false))], at)),
        Some("a".into()),
        "rebuilt under its name"
    );

    // An event after the dump began: the table may be the newer, not compared.
    assert!(!t.apply(RouteNetlinkMessage::NewLink(link_msg("b", 2, true)).into()));
    assert!(!t.apply(RouteNetlinkMessage::DelLink(link_msg("a", 1, true)).into()));
    assert_eq!(t.disagrees(&check(&same, at)), None);
    // A dump begun after those events is compared in full.
    let later = std::time::Instant::now();
    assert_eq!(
        t.disagrees(&check(&[("b", end(2, false))], later)),
        Some("b".into())
    );
    assert_eq!(
        t.disagrees(&check(&[("b", end(2, true))], later)),
        None,
        "as the events left it"
    );
    assert!(
        t.evented.is_empty(),
        "events older than a check are forgotten"
    );

    // A check older than the table's own dump says nothing new.
    t.since = Some(std::time::Instant::now());
    assert_eq!(t.disagrees(&check(&[], later)), None);
    assert_eq!(
        t.disagrees(&check(&[], std::time::Instant::now())),
        Some("b".into())
    );
}

async fn wait_dumps(bay: &Patchbay, want: u64) {
    for _ in 0..200 {
        if bay.dumps() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the patchbay dumped {} times, not {want}", bay.dumps());
}

/// The patchbay takes the reconciler's dump of the node as a check of the table it keeps from
/// events: one that agrees spares it a dump of its own, one that does not (an event lost)
/// makes it read the node's links again, and one older than an event leaves that name alone.
#[tokio::test]
async fn the_patchbay_reads_the_node_again_only_when_a_check_disagrees() {
    let node = TestNs::new("pchk");
    let (name, path) = (node.0.clone(), node.path());
    crate::netns::in_netns(&node.path(), move |_h| async move {
        let bay = Patchbay::start(Arc::new(tokio::sync::Notify::new())).unwrap();
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(["-n", &name]).args(args).status();
            assert!(ok.is_ok_and(|s| s.success()), "ip {args:?}");
        };
        // The first dump comes with the first table.
        bay.set(Vec::new());
        wait_dumps(&bay, 1).await;
        ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
        // Its events are in the table before the dumps below begin.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // (The daemon reads its own namespace, NODE_NETNS; this test's thread is in another.)
        let read = || Snapshot::read([path.clone()]);
        let snap = read().await;
        let check = |snap: &Snapshot, flip: bool| {
            snap.dumped(&path, |at, ifaces| {
                let mut ifaces = ifaces.clone();
                let d0 = ifaces.get_mut("d0").expect("d0 in the dump");
                d0.up ^= flip;
                bay.check(at, &ifaces);
            })
            .expect("a dump of the node")
        };
        // The event of d0 may come after the dump began: then d0 is not compared, either way.
        check(&snap, false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bay.dumps(), 1, "a check that agrees");

        let snap = read().await;
        check(&snap, true);
        wait_dumps(&bay, 2).await;
        check(&snap, false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bay.dumps(), 2, "a check older than the patchbay's own dump");

        // d0 goes up after the dump began: the stale dump says nothing about it.
        let stale = read().await;
        ip(&["link", "set", "d0", "up"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        check(&stale, false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bay.dumps(), 2, "a dump older than the event");
        check(&read().await, false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bay.dumps(), 2, "a new one agrees");
    })
    .await
    .unwrap();
}

fn alias_of(ns: &str, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-o", "link", "show", ifname])
        .output()
        .expect("ip runs");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.split(" alias ")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

/// A port's node end carries the port's alias (the kernel ignores one given at creation), so
/// that it is known as meshnet's; one made without it (an older daemon's) is named by the next
/// run, once.
#[tokio::test]
async fn a_node_end_carries_its_ports_alias() {
    let node = TestNs::new("pname");
    let pod = TestNs::new("pnamep");
    let a = port(&pod, "ra", "aaaa", "192.0.2.1/24");
    let nn = node.0.clone();
    crate::netns::in_netns(&node.path(), move |h| async move {
        let snap = Snapshot::default();
        assert_eq!(
            ensure_port(&h, &snap, &a, Mode::Repair).await.unwrap(),
            Outcome::Created
        );
        assert_eq!(alias_of(&nn, &a.node), a.alias);
        let ip = Command::new("ip")
            .args(["-n", &nn, "link", "set", &a.node, "alias", ""])
            .status()
            .unwrap();
        assert!(ip.success());
        assert_eq!(alias_of(&nn, &a.node), "");
        assert_eq!(
            ensure_port(&h, &snap, &a, Mode::Verify).await.unwrap(),
            Outcome::Unchanged,
            "a check does not change it"
        );
        assert_eq!(
            ensure_port(&h, &snap, &a, Mode::Repair).await.unwrap(),
            Outcome::Repaired
        );
        assert_eq!(alias_of(&nn, &a.node), a.alias);
        assert_eq!(
            ensure_port(&h, &snap, &a, Mode::Repair).await.unwrap(),
            Outcome::Unchanged
        );
    })
    .await
    .unwrap();
}

/// A full run reads a patch again only when the node's traffic-control events say it changed:
/// a second snapshot reads no filter and answers as the first; a filter deleted by hand (not
/// meshnet's doing) and a re-patch are read again, and only they.
#[tokio::test]
async fn a_full_run_reads_only_the_patches_that_changed() {
    let node = TestNs::new("pmemo");
    let (name, path) = (node.0.clone(), node.path());
    crate::netns::in_netns(&node.path(), move |h| async move {
        let bay = Patchbay::start(Arc::new(tokio::sync::Notify::new())).unwrap();
        let memo = bay.patch_memo();
        let run = |cmd: &str, args: &[&str]| {
            let ok = Command::new(cmd).args(["-n", &name]).args(args).status();
            assert!(ok.is_ok_and(|s| s.success()), "{cmd} {args:?}");
        };
        let mut st = Vec::new();
        for (a, b) in [("na", "nb"), ("nc", "nd")] {
            run("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
            for n in [a, b] {
                run(
                    "ip",
                    &["link", "set", n, "alias", &format!("meshnet|t|1|veth|{n}")],
                );
                st.push(links::get_iface(&h, n).await.unwrap().unwrap());
            }
        }
        let idx: Vec<u32> = st.iter().map(|s| s.index).collect();
        let patch = |from: usize, to: usize| {
            let (h, from, to) = (h.clone(), st[from].clone(), idx[to]);
            async move {
                patch(&h, &Snapshot::default(), &from, "x", to, Mode::Repair)
                    .await
                    .unwrap()
            }
        };
        for (from, to) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
            assert!(patch(from, to).await);
        }
        // Waits until the memo has the events of a change to `i` (its reading is stale), and
        // a while for any that follow (a reading that began before one is read again).
        let stale = |i: u32| {
            let memo = Arc::clone(&memo);
            async move {
                for _ in 0..200 {
                    if memo.split(&[i], std::time::Instant::now()).1 == [i] {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("no event for interface {i}");
            }
        };
        stale(idx[3]).await;
        let read = || Snapshot::read_with([path.clone()], &path, Some(Arc::clone(&memo)));
        let answers = |snap: &Snapshot| -> Vec<Option<u32>> {
            idx.iter()
                .map(|i| snap.take_patch(&path, *i).expect("a reading"))
                .collect()
        };
        let (a, b, c, d) = (Some(idx[0]), Some(idx[1]), Some(idx[2]), Some(idx[3]));

        assert_eq!(answers(&read().await), [b, a, d, c]);
        assert_eq!(memo.reads(), 4);
        assert_eq!(answers(&read().await), [b, a, d, c], "from the memo");
        assert_eq!(memo.reads(), 4, "nothing changed: no filter read");

        // Someone deletes nc's filter: nc alone is read again, and found unpatched.
        run("tc", &["filter", "del", "dev", "nc", "ingress"]);
        stale(idx[2]).await;
        assert_eq!(answers(&read().await), [b, a, None, c]);
        assert_eq!(memo.reads(), 5);

        // meshnet re-patches nc (to na): read again, once.
        assert!(patch(2, 0).await);
        stale(idx[2]).await;
        assert_eq!(answers(&read().await), [b, a, a, c]);
        assert_eq!(answers(&read().await), [b, a, a, c]);
        assert_eq!(memo.reads(), 6);
    })
    .await
    .unwrap();
}
