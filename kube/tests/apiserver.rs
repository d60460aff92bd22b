//! KubeStore and the generated CRD against a real API server (see `common`). The tests share one
//! server and run in parallel, so each works in namespaces of its own (the server has no core/v1,
//! so namespaces need not exist) and looks only at those.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use kube::CustomResourceExt;
use kube::api::{Api, DynamicObject, PostParams};
use meshnet_kube::KubeStore;
use meshnet_kube::crd::Topology as TopologyCrd;
use meshnet_topology::store::contract::must_get;
use meshnet_topology::store::{StoreError, TopologyStore, update_status};
use meshnet_topology::topology::{Link, PodKey, Topology, TopologyStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use common::{shared, workspace};

meshnet_topology::store_contract!(|name| async move {
    meshnet_topology::store::contract::Fixture {
        a: std::sync::Arc::new(store().await),
        b: std::sync::Arc::new(store().await),
        prefix: name.replace('_', "-"),
        initial_resync: true,
        guard: Box::new(()),
    }
});

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

/// The object once the store's cache has it with `want` true: writes of other clients reach
/// the store through its watch.
async fn eventually(s: &KubeStore, k: &PodKey, want: impl Fn(&Topology) -> bool) -> Topology {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = s.get(k).await.expect("get");
        if let Some(t) = &seen
            && want(t)
        {
            return seen.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never saw the change of {k}; it last read {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
            // Earlier files declare the same pods: the store sees kubectl's write when its
            // watch delivers it, so wait for this file's spec (a wrong one fails after 10 s).
            eventually(&s, &want.key(), |got| got.spec == want.spec).await;
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
async fn reapplying_the_same_content_keeps_the_version() {
    // Server-side apply is idempotent: unlike the file store's, the version stays.
    let s = store().await;
    let t = topo("reapply-same", "r1");
    let v1 = s.apply(&t).await.expect("apply");
    let v2 = s.apply(&t).await.expect("apply unchanged");
    assert_eq!(v2, v1);
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

/// Read-your-writes on the cached store (the contract's `reads_right_after_own_writes_see_them`)
/// is served by an overlay of the store's own writes until the watch delivers them: once it has,
/// the overlay is empty and the cache alone answers.
#[tokio::test(flavor = "multi_thread")]
async fn the_overlay_of_own_writes_empties_once_the_watch_delivers_them() {
    let s = store().await;
    let ns = "ryw";
    let k = key(ns, "r1");
    s.apply(&topo(ns, "r1")).await.expect("apply");
    for i in 0..20 {
        update_status(&s, &k, |st| {
            st.container_id = format!("sandbox-{i}");
            true
        })
        .await
        .expect("update_status")
        .expect("exists");
    }
    s.delete(&k).await.expect("delete");
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
