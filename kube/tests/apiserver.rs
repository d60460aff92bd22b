//! KubeStore and the generated CRD against a real API server (see `common`). The tests share one
//! server and run in parallel, so each works in namespaces of its own (the server has no core/v1,
//! so namespaces need not exist) and looks only at those.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use kube::CustomResourceExt;
use kube::api::{Api, DynamicObject, PostParams};
use meshnet_kube::KubeStore;
use meshnet_kube::crd::Topology as TopologyCrd;
use meshnet_topology::store::{StoreError, StoreEvent, TopologyStore, update_status};
use meshnet_topology::topology::{Link, LinkState, LinkStatus, PodKey, Topology, TopologyStatus};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use common::{shared, workspace};

fn link(uid: i64, peer_pod: &str, local_intf: &str) -> Link {
    Link {
        uid,
        peer_pod: peer_pod.into(),
        local_intf: local_intf.into(),
        peer_intf: "eth1".into(),
        ..Default::default()
    }
}

fn topo(ns: &str, name: &str) -> Topology {
    Topology::new(ns, name, vec![link(1, "peer", "eth1")])
}

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

fn alive() -> TopologyStatus {
    TopologyStatus {
        src_ip: "198.51.100.1".into(),
        net_ns: "/var/run/netns/x".into(),
        container_id: "c1".into(),
        ..Default::default()
    }
}

async fn store() -> KubeStore {
    shared().store().await
}

async fn must_get(s: &KubeStore, k: &PodKey) -> Topology {
    s.get(k)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{k} is missing"))
}

/// Keys of the listed objects in the given namespaces (other tests write elsewhere).
/// The object once the store's cache has it with `want` true: writes of other clients reach
/// the store through its watch.
async fn eventually(s: &KubeStore, k: &PodKey, want: impl Fn(&Topology) -> bool) -> Topology {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = s.get(k).await.expect("get")
            && want(&t)
        {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never saw the change of {k}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listed(s: &KubeStore, namespaces: &[&str]) -> Vec<PodKey> {
    s.list()
        .await
        .expect("list")
        .iter()
        .map(Topology::key)
        .filter(|k| namespaces.contains(&k.namespace.as_str()))
        .collect()
}

fn raw_api(s: &KubeStore, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(s.client().clone(), ns, &TopologyCrd::api_resource())
}

/// The Topology documents of a manifest file, as YAML text (other kinds dropped).
fn topology_docs(path: &std::path::Path) -> (String, Vec<Topology>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut yaml = String::new();
    let mut topos = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.get("kind").and_then(serde_yaml::Value::as_str) != Some("Topology") {
            continue;
        }
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&v).unwrap());
        topos.push(serde_yaml::from_value(v).unwrap());
    }
    (yaml, topos)
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_manifests_apply_unchanged_with_kubectl() {
    let server = shared();
    let s = store().await;
    let mut files: Vec<_> = std::fs::read_dir(workspace().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yml"))
        .collect();
    files.sort();
    let mut total = 0;
    for file in files {
        let (yaml, topos) = topology_docs(&file);
        if topos.is_empty() {
            continue;
        }
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), yaml).unwrap();
        // Documents without a namespace go to the kubeconfig's (`default`), as on a cluster.
        server.kubectl(&["apply", "--server-side", "-f", tmp.path().to_str().unwrap()]);
        for want in &topos {
            let got = must_get(&s, &want.key()).await;
            assert_eq!(got.spec, want.spec, "{}: {}", file.display(), want.key());
            total += 1;
        }
    }
    assert!(total >= 10, "only {total} Topology documents applied");
    // The printer columns are served.
    let table = server.kubectl(&["get", "topo", "-A", "-o", "wide"]);
    let header = table.lines().next().unwrap();
    for col in ["NODE", "SRC IP", "CONTAINER", "AGE"] {
        assert!(header.contains(col), "{header}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_written_as_go_clients_write_them_are_accepted() {
    let s = store().await;
    let ns = "go-client";
    let api = raw_api(&s, ns);
    // A Go client sends every field of its structs: "" for unset strings, null for nil slices,
    // and a status on create (dropped: status is a subresource).
    let go: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networkop.co.uk/v1beta1",
        "kind": "Topology",
        "metadata": {"name": "r1", "namespace": ns},
        "spec": {"links": [{
            "uid": 1, "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1",
            "local_ip": "", "peer_ip": ""
        }]},
        "status": {"skipped": null, "src_ip": "", "net_ns": "", "container_id": ""}
    }))
    .unwrap();
    let created = api
        .create(&PostParams::default(), &go)
        .await
        .expect("create");
    assert_eq!(created.data["spec"]["links"][0]["local_ip"], "");
    let status = created.data.get("status").cloned().unwrap_or(Value::Null);
    assert!(
        status.is_null() || status == json!({}),
        "status on create: {status}"
    );

    // UpdateStatus from Go: the whole object, nil slices as null.
    let mut update = created.clone();
    update.data["status"] = json!({
        "skipped": null, "src_ip": "10.1.1.1", "net_ns": "/run/netns/cni-1",
        "container_id": "abc", "links": null
    });
    let stored = api
        .replace_status("r1", &PostParams::default(), &update)
        .await
        .expect("Go-style status accepted");
    assert_eq!(
        stored.data["status"],
        json!({"src_ip": "10.1.1.1", "net_ns": "/run/netns/cni-1", "container_id": "abc"}),
        "nulls of non-nullable fields are pruned"
    );
    let t = eventually(&s, &key(ns, "r1"), |t| t.status.src_ip == "10.1.1.1").await;
    assert_eq!(t.spec.links[0].local_ip, "");
    assert!(t.status.skipped.is_empty());
    assert!(t.status.is_alive());

    // A Go client that skips a link.
    update = stored.clone();
    update.data["status"]["skipped"] = json!([{"pod_name": "r2", "link_id": 1}]);
    api.replace_status("r1", &PostParams::default(), &update)
        .await
        .expect("skipped list");
    let t = eventually(&s, &key(ns, "r1"), |t| !t.status.skipped.is_empty()).await;
    assert_eq!(t.status.skipped.len(), 1);
    assert_eq!(t.status.skipped[0].pod_name, "r2");

    // No spec at all (the Go CRD did not require one).
    let bare: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networkop.co.uk/v1beta1", "kind": "Topology",
        "metadata": {"name": "bare", "namespace": ns}
    }))
    .unwrap();
    api.create(&PostParams::default(), &bare)
        .await
        .expect("no spec");
    assert!(must_get(&s, &key(ns, "bare")).await.spec.links.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schema_refuses_what_it_should() {
    let s = store().await;
    let api = raw_api(&s, "schema");
    for (name, bad) in [
        (
            "no-uid",
            json!({"peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1"}),
        ),
        (
            "no-peer",
            json!({"uid": 1, "local_intf": "eth1", "peer_intf": "eth1"}),
        ),
        (
            "str-uid",
            json!({"uid": "1", "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1"}),
        ),
        (
            "neg-mtu",
            json!({"uid": 1, "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1", "mtu": -1}),
        ),
    ] {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networkop.co.uk/v1beta1", "kind": "Topology",
            "metadata": {"name": name, "namespace": "schema"},
            "spec": {"links": [bad]}
        }))
        .unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(st)) => assert_eq!(st.code, 422, "{name}: {st:?}"),
            r => panic!("{name}: expected 422, got {r:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_creates_and_get_returns_it_with_a_version() {
    let s = store().await;
    assert_eq!(s.kind(), "kube");
    let k = key("create", "r1");
    assert!(s.get(&k).await.expect("get").is_none());
    let t = topo("create", "r1");
    let stored = s.apply(&t).await.expect("apply");
    assert!(!stored.metadata.resource_version.is_empty());
    assert_eq!(stored.spec, t.spec);
    assert_eq!(stored.status, TopologyStatus::default());
    assert_eq!(must_get(&s, &k).await, stored);

    // Every field, extensions included, survives the server.
    let mut full = Topology::new(
        "create",
        "r2",
        vec![Link {
            local_ip: "12.12.12.1/24".into(),
            peer_ip: "12.12.12.2/24".into(),
            mtu: Some(9000),
            local_mac: "02:00:00:00:00:01".into(),
            peer_mac: "02:00:00:00:00:02".into(),
            ..link(7, "r1", "eth7")
        }],
    );
    full.metadata.labels.insert("topo".into(), "full".into());
    let stored = s.apply(&full).await.expect("apply full");
    assert_eq!(stored.spec, full.spec);
    assert_eq!(stored.metadata.labels, full.metadata.labels);
    let status = TopologyStatus {
        skipped: vec![meshnet_topology::topology::SkippedPod {
            pod_name: "r9".into(),
            link_id: 9,
        }],
        node: "node-a".into(),
        links: vec![LinkStatus {
            uid: 7,
            local_intf: "eth7".into(),
            peer_pod: "r1".into(),
            kind: "veth".into(),
            state: LinkState::Error,
            message: "boom".into(),
            impairment: String::new(),
        }],
        ..alive()
    };
    let v = s
        .replace_status(&full.key(), &status, &stored.metadata.resource_version)
        .await
        .expect("status");
    assert_eq!(v.status, status);
    assert_eq!(must_get(&s, &full.key()).await.status, status);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_with_empty_namespace_stores_in_default() {
    let s = store().await;
    let name = "empty-namespace-r1";
    let stored = s.apply(&topo("", name)).await.expect("apply");
    assert_eq!(stored.metadata.namespace, "default");
    assert_eq!(must_get(&s, &key("default", name)).await, stored);
    assert_eq!(must_get(&s, &key("", name)).await, stored);
    s.delete(&key("", name)).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_ignores_the_status_it_is_given() {
    let s = store().await;
    let mut t = topo("ignore-status", "r1");
    t.status = alive();
    let stored = s.apply(&t).await.expect("apply");
    assert_eq!(stored.status, TopologyStatus::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_again_keeps_status_and_replaces_spec_and_labels() {
    let s = store().await;
    let ns = "reapply";
    let k = key(ns, "r1");
    let v1 = s.apply(&topo(ns, "r1")).await.expect("apply");
    let v2 = s
        .replace_status(&k, &alive(), &v1.metadata.resource_version)
        .await
        .expect("replace_status");
    assert_ne!(v2.metadata.resource_version, v1.metadata.resource_version);

    let mut changed = topo(ns, "r1");
    changed.spec.links.push(link(2, "r3", "eth2"));
    changed
        .metadata
        .labels
        .insert("topo".into(), "3node".into());
    let v3 = s.apply(&changed).await.expect("apply again");
    assert_eq!(v3.status, alive());
    assert_eq!(v3.spec, changed.spec);
    assert_eq!(v3.metadata.labels, changed.metadata.labels);
    assert_ne!(v3.metadata.resource_version, v1.metadata.resource_version);
    assert_ne!(v3.metadata.resource_version, v2.metadata.resource_version);
    assert_eq!(must_get(&s, &k).await, v3);

    // Re-applying the same content changes nothing (server-side apply is idempotent: unlike the
    // file store, the version stays).
    let v4 = s.apply(&changed).await.expect("apply unchanged");
    assert_eq!(v4, v3);

    // Fewer links and no labels: the list is replaced (atomic), meshnet's label removed.
    let v5 = s.apply(&topo(ns, "r1")).await.expect("apply fewer");
    assert_eq!(v5.spec, topo(ns, "r1").spec);
    assert!(v5.metadata.labels.is_empty(), "{:?}", v5.metadata.labels);
    assert_eq!(v5.status, alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_takes_over_objects_applied_by_kubectl() {
    let server = shared();
    let s = store().await;
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tmp.path(),
        "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata:\n  name: r1\n  namespace: takeover\n  labels: {owner: kubectl}\nspec:\n  links:\n  - {uid: 1, peer_pod: r2, local_intf: eth1, peer_intf: eth1}\n",
    )
    .unwrap();
    server.kubectl(&["apply", "--server-side", "-f", tmp.path().to_str().unwrap()]);
    let mut t = topo("takeover", "r1");
    t.spec.links = vec![link(5, "r5", "eth5")];
    let stored = s.apply(&t).await.expect("apply over kubectl's fields");
    assert_eq!(stored.spec, t.spec);
    // kubectl's label is kubectl's: server-side apply leaves it alone.
    assert_eq!(
        stored.metadata.labels.get("owner").map(String::as_str),
        Some("kubectl")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_returns_all_sorted_by_key() {
    let s = store().await;
    for (ns, name) in [
        ("list-b", "r2"),
        ("list-a", "r3"),
        ("list-b", "r1"),
        ("list-a", "r1"),
        ("list-a", "r1-b"),
    ] {
        s.apply(&topo(ns, name)).await.expect("apply");
    }
    let got = listed(&s, &["list-a", "list-b"]).await;
    assert_eq!(
        got,
        [
            key("list-a", "r1"),
            key("list-a", "r1-b"),
            key("list-a", "r3"),
            key("list-b", "r1"),
            key("list-b", "r2")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_is_idempotent() {
    let s = store().await;
    let ns = "delete";
    let k = key(ns, "r1");
    s.apply(&topo(ns, "r1")).await.expect("apply");
    s.apply(&topo(ns, "r2")).await.expect("apply");
    s.delete(&k).await.expect("delete");
    assert!(s.get(&k).await.expect("get").is_none());
    s.delete(&k).await.expect("delete again");
    s.delete(&key(ns, "never"))
        .await
        .expect("delete a missing object");
    assert_eq!(listed(&s, &[ns]).await, [key(ns, "r2")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_status_checks_the_version() {
    let s = store().await;
    let ns = "status-version";
    let k = key(ns, "r1");
    let v1 = s.apply(&topo(ns, "r1")).await.expect("apply");
    let v2 = s
        .replace_status(&k, &alive(), &v1.metadata.resource_version)
        .await
        .expect("current version");
    assert_eq!(v2.status, alive());
    assert_eq!(v2.spec, v1.spec);
    assert_eq!(must_get(&s, &k).await, v2);

    let mut other = alive();
    other.container_id = "c2".into();
    match s
        .replace_status(&k, &other, &v1.metadata.resource_version)
        .await
    {
        Err(StoreError::Conflict {
            key: ck, expected, ..
        }) => {
            assert_eq!(ck, k);
            assert_eq!(expected, v1.metadata.resource_version);
        }
        r => panic!("expected Conflict, got {r:?}"),
    }
    // The losing write changed nothing.
    assert_eq!(must_get(&s, &k).await, v2);
    // An empty version never matches (it would make the PUT unconditional).
    let r = s.replace_status(&k, &other, "").await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");

    let v3 = s
        .replace_status(&k, &other, &v2.metadata.resource_version)
        .await
        .expect("current version");
    assert_eq!(v3.status.container_id, "c2");
    assert_ne!(v3.metadata.resource_version, v2.metadata.resource_version);

    // Clearing the status (what DEL does) really clears it.
    let v4 = s
        .replace_status(
            &k,
            &TopologyStatus::default(),
            &v3.metadata.resource_version,
        )
        .await
        .expect("clear");
    assert_eq!(v4.status, TopologyStatus::default());
    assert_eq!(must_get(&s, &k).await.status, TopologyStatus::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_status_of_a_missing_object_is_not_found() {
    let s = store().await;
    let r = s
        .replace_status(&key("status-missing", "r1"), &alive(), "1")
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_not_reused_after_delete_and_create() {
    let s = store().await;
    let ns = "recreate";
    let k = key(ns, "r1");
    let old = s.apply(&topo(ns, "r1")).await.expect("apply");
    s.delete(&k).await.expect("delete");
    let new = s.apply(&topo(ns, "r1")).await.expect("re-create");
    assert_ne!(new.metadata.resource_version, old.metadata.resource_version);
    let r = s
        .replace_status(&k, &alive(), &old.metadata.resource_version)
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_are_refused() {
    let s = store().await;
    for (ns, name) in [
        ("invalid", "R1"),
        ("Invalid", "r1"),
        ("invalid", "r_1"),
        ("my_ns", "r1"),
        ("invalid", ""),
        ("invalid", "-r1"),
        ("invalid", "r1-"),
        ("invalid", "r1/x"),
        ("invalid", ".."),
        ("a.b", "r1"),
    ] {
        let k = key(ns, name);
        for r in [
            s.apply(&topo(ns, name)).await.map(|_| ()),
            s.get(&k).await.map(|_| ()),
            s.delete(&k).await,
            s.replace_status(&k, &alive(), "1").await.map(|_| ()),
        ] {
            assert!(
                matches!(r, Err(StoreError::Invalid { .. })),
                "{ns}/{name}: expected Invalid, got {r:?}"
            );
        }
    }
    assert!(listed(&s, &["invalid"]).await.is_empty());
    s.apply(&topo("invalid", "r1.example-2"))
        .await
        .expect("valid names");
}

/// Waits for `Changed(want)`, skipping other events. A `Resync` (the watch re-listed, e.g. after
/// an error on a loaded machine) also counts: the contract is "re-list", and every caller checks
/// the object with a read afterwards.
async fn changed(rx: &mut broadcast::Receiver<StoreEvent>, want: &PodKey) {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(StoreEvent::Changed(k)) if &k == want => return,
                Ok(StoreEvent::Resync) | Err(RecvError::Lagged(_)) => return,
                Ok(_) => {}
                Err(RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no Changed({want}) within 60s"));
}

/// Waits for the first `Resync`: the watch is established from then on.
async fn watching(rx: &mut broadcast::Receiver<StoreEvent>) {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(StoreEvent::Resync) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("no initial Resync within 20s");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_store_sees_changes() {
    let a = store().await;
    let b = store().await;
    let mut rx = b.watch();
    watching(&mut rx).await;
    let k = key("watch-other", "r1");

    let v = a.apply(&topo("watch-other", "r1")).await.expect("apply");
    changed(&mut rx, &k).await;
    assert_eq!(must_get(&b, &k).await, v);

    a.replace_status(&k, &alive(), &v.metadata.resource_version)
        .await
        .expect("replace_status");
    changed(&mut rx, &k).await;
    assert_eq!(must_get(&b, &k).await.status, alive());

    a.delete(&k).await.expect("delete");
    changed(&mut rx, &k).await;
    assert!(b.get(&k).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_sees_its_own_changes() {
    let s = store().await;
    let mut rx = s.watch();
    let mut rx2 = s.watch();
    watching(&mut rx).await;
    watching(&mut rx2).await;
    s.apply(&topo("watch-own", "r7")).await.expect("apply");
    changed(&mut rx, &key("watch-own", "r7")).await;
    changed(&mut rx2, &key("watch-own", "r7")).await;
    assert!(s.get(&key("watch-own", "r7")).await.expect("get").is_some());
}

/// The counter the concurrency test increments: `container_id` as a number.
fn count(s: &TopologyStatus) -> u64 {
    if s.container_id.is_empty() {
        0
    } else {
        s.container_id.parse().expect("a number")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_two_stores_lose_nothing() {
    const PER_TASK: u64 = 100;
    const TASKS_PER_STORE: u64 = 2;
    let a = store().await;
    let b = store().await;
    let k = key("concurrent", "r1");
    a.apply(&topo("concurrent", "r1")).await.expect("apply");

    let mut tasks = Vec::new();
    for (n, s) in [&a, &b].into_iter().enumerate() {
        for t in 0..TASKS_PER_STORE {
            let (s, k) = (s.clone(), k.clone());
            let task = u64::try_from(n).unwrap() * TASKS_PER_STORE + t;
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let r = update_status(&s, &k, |st| {
                        st.container_id = (count(st) + 1).to_string();
                        // A second, independent counter: one entry per update.
                        st.links.push(LinkStatus {
                            uid: i64::try_from(task * PER_TASK + i).unwrap(),
                            state: LinkState::Up,
                            ..Default::default()
                        });
                        true
                    })
                    .await;
                    let stored = r.expect("update_status").expect("object exists");
                    assert!(count(&stored.status) >= 1);
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let total = 2 * TASKS_PER_STORE * PER_TASK;
    let end = must_get(&a, &k).await;
    assert_eq!(count(&end.status), total);
    assert_eq!(end.status.links.len(), usize::try_from(total).unwrap());
    let uids: BTreeSet<i64> = end.status.links.iter().map(|l| l.uid).collect();
    assert_eq!(
        uids.len(),
        usize::try_from(total).unwrap(),
        "every update kept once"
    );
    // The other store reads from its watch cache: it sees a's last write once the watch
    // delivers it (reads are read-your-own-writes, others' writes eventually).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = must_get(&b, &k).await;
        if seen == end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store b never caught up: at resourceVersion {} of {}",
            seen.metadata.resource_version,
            end.metadata.resource_version
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A burst far above the in-flight bound queues instead of failing, and `list` pages through it.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_topology_is_neither_throttled_nor_truncated() {
    const N: usize = 700;
    let s = store().await;
    let ns = "large";
    let results: Vec<_> = futures::stream::iter(0..N)
        .map(|i| {
            let s = s.clone();
            async move {
                let t = Topology::new(
                    ns,
                    &format!("r{i}"),
                    vec![link(1, &format!("r{}", (i + 1) % N), "eth1")],
                );
                s.apply(&t).await
            }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let got = listed(&s, &[ns]).await;
    assert_eq!(got.len(), N, "list spans several pages");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted);

    // Status updates of every pod at once, as after a node reboot.
    let results: Vec<_> = futures::stream::iter(0..N)
        .map(|i| {
            let s = s.clone();
            async move {
                update_status(&s, &key(ns, &format!("r{i}")), |st| {
                    *st = alive();
                    true
                })
                .await
            }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    for r in results {
        assert!(r.expect("update_status").is_some());
    }
    let results: Vec<_> = futures::stream::iter(0..N)
        .map(|i| {
            let s = s.clone();
            async move { s.delete(&key(ns, &format!("r{i}"))).await }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    for r in results {
        r.expect("delete");
    }
    assert!(listed(&s, &[ns]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn update_status_of_a_missing_object_is_none() {
    let s = store().await;
    let mut called = false;
    let r = update_status(&s, &key("update-missing", "r1"), |_| {
        called = true;
        true
    })
    .await
    .expect("update_status");
    assert!(r.is_none());
    assert!(!called);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_status_does_not_write_when_nothing_changed() {
    let s = store().await;
    let k = key("update-noop", "r1");
    let v = s.apply(&topo("update-noop", "r1")).await.expect("apply");
    let r = update_status(&s, &k, |st| {
        st.container_id = "not kept".into();
        false
    })
    .await
    .expect("update_status")
    .expect("object exists");
    assert_eq!(r, v);
    assert_eq!(must_get(&s, &k).await, v);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_status_writes_and_returns_the_new_object() {
    let s = store().await;
    let k = key("update-write", "r1");
    let v = s.apply(&topo("update-write", "r1")).await.expect("apply");
    let r = update_status(&s, &k, |st| {
        *st = alive();
        true
    })
    .await
    .expect("update_status")
    .expect("object exists");
    assert_eq!(r.status, alive());
    assert_ne!(r.metadata.resource_version, v.metadata.resource_version);
    assert_eq!(must_get(&s, &k).await, r);
}

/// Read-your-writes on the cached store: every read right after one's own write sees it (get
/// and list), before the watch has necessarily delivered it; once it has, the overlay is empty.
#[tokio::test(flavor = "multi_thread")]
async fn reads_right_after_own_writes_see_them() {
    let s = store().await;
    let ns = "ryw";
    let k = key(ns, "r1");
    s.apply(&topo(ns, "r1")).await.expect("apply");
    assert!(s.get(&k).await.expect("get").is_some(), "own create");
    for i in 0..50 {
        let id = format!("sandbox-{i}");
        let written = update_status(&s, &k, |st| {
            st.container_id.clone_from(&id);
            true
        })
        .await
        .expect("update_status")
        .expect("exists");
        assert_eq!(written.status.container_id, id);
        let got = must_get(&s, &k).await;
        assert_eq!(got.status.container_id, id, "get after own write {i}");
        assert_eq!(
            got.metadata.resource_version,
            written.metadata.resource_version
        );
        let all = s.list().await.expect("list");
        let mine = all.iter().find(|t| t.key() == k).expect("listed");
        assert_eq!(mine.status.container_id, id, "list after own write {i}");
    }
    s.delete(&k).await.expect("delete");
    assert!(s.get(&k).await.expect("get").is_none(), "own delete");
    assert!(listed(&s, &[ns]).await.is_empty(), "own delete, listed");
    // The watch delivers every write, retiring the overlay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.pending_own_writes() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "overlay never emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.get(&k).await.expect("get").is_none(),
        "still deleted from the cache"
    );
}

/// Another client's write reaches the cache through the watch, and a status write that races it
/// converges on the first retry (the conflict reads the winner from the API server).
#[tokio::test(flavor = "multi_thread")]
async fn another_clients_write_reaches_the_cache_and_a_racing_write_converges() {
    let s = store().await;
    let ns = "other-writer";
    let k = key(ns, "r1");
    s.apply(&topo(ns, "r1")).await.expect("apply");
    let before = must_get(&s, &k).await;
    // Another client writes the status behind this store's back.
    let api = raw_api(&s, ns);
    let mut obj = api.get("r1").await.expect("raw get");
    obj.data["status"] = json!({"src_ip": "192.0.2.9"});
    api.replace_status("r1", &PostParams::default(), &obj)
        .await
        .expect("raw status");
    // A write from the stale version conflicts, and the conflict refreshed this store's view.
    let stale = s
        .replace_status(&k, &alive(), &before.metadata.resource_version)
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(
        must_get(&s, &k).await.status.src_ip,
        "192.0.2.9",
        "refreshed"
    );
    let t = update_status(&s, &k, |st| {
        st.container_id = "c1".into();
        true
    })
    .await
    .expect("update_status")
    .expect("exists");
    assert_eq!(
        t.status.src_ip, "192.0.2.9",
        "kept the other writer's field"
    );
    assert_eq!(t.status.container_id, "c1");
    // A write the store never made arrives through the watch.
    let mut obj = api.get("r1").await.expect("raw get");
    obj.data["status"]["net_ns"] = json!("/run/netns/x");
    api.replace_status("r1", &PostParams::default(), &obj)
        .await
        .expect("raw status");
    eventually(&s, &k, |t| t.status.net_ns == "/run/netns/x").await;
}
