use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::broadcast::error::RecvError;

use super::*;
use crate::store::update_status;
use crate::topology::{Link, LinkState, LinkStatus};

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

fn store() -> (TempDir, FileStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = FileStore::open(dir.path().join("topologies")).expect("open store");
    (dir, s)
}

async fn must_get(s: &FileStore, k: &PodKey) -> Topology {
    s.get(k)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{k} is missing"))
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(
        matches!(r, Err(StoreError::Invalid { .. })),
        "expected Invalid, got {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_creates_the_directory() {
    let (_dir, s) = store();
    assert!(s.dir().is_dir());
    assert_eq!(s.kind(), "file");
    assert!(s.list().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_creates_and_get_returns_it_with_a_version() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    assert!(s.get(&k).await.expect("get").is_none());
    let t = topo("default", "r1");
    let stored = s.apply(&t).await.expect("apply");
    assert!(!stored.metadata.resource_version.is_empty());
    assert_eq!(stored.spec, t.spec);
    assert_eq!(stored.status, TopologyStatus::default());
    assert_eq!(must_get(&s, &k).await, stored);
    assert!(s.dir().join("default_r1.json").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_with_empty_namespace_stores_in_default() {
    let (_dir, s) = store();
    let stored = s.apply(&topo("", "r1")).await.expect("apply");
    assert_eq!(stored.metadata.namespace, "default");
    assert_eq!(must_get(&s, &key("default", "r1")).await, stored);
    assert_eq!(must_get(&s, &key("", "r1")).await, stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_ignores_the_status_it_is_given() {
    let (_dir, s) = store();
    let mut t = topo("default", "r1");
    t.status = alive();
    let stored = s.apply(&t).await.expect("apply");
    assert_eq!(stored.status, TopologyStatus::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_again_keeps_status_and_bumps_version() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    let v1 = s.apply(&topo("default", "r1")).await.expect("apply");
    let v2 = s
        .replace_status(&k, &alive(), &v1.metadata.resource_version)
        .await
        .expect("replace_status");
    assert_ne!(v2.metadata.resource_version, v1.metadata.resource_version);

    let mut changed = topo("default", "r1");
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

    // Re-applying the same content still produces a new version.
    let v4 = s.apply(&changed).await.expect("apply unchanged");
    assert_ne!(v4.metadata.resource_version, v3.metadata.resource_version);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_returns_all_sorted_by_key() {
    let (_dir, s) = store();
    for (ns, name) in [
        ("lab", "r2"),
        ("default", "r3"),
        ("lab", "r1"),
        ("default", "r1"),
    ] {
        s.apply(&topo(ns, name)).await.expect("apply");
    }
    let got: Vec<PodKey> = s
        .list()
        .await
        .expect("list")
        .iter()
        .map(Topology::key)
        .collect();
    assert_eq!(
        got,
        [
            key("default", "r1"),
            key("default", "r3"),
            key("lab", "r1"),
            key("lab", "r2")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_sorted_by_key_when_names_share_a_prefix() {
    // File names sort '-' and '.' before '_', keys sort the shorter name first.
    let (_dir, s) = store();
    for (ns, name) in [("a", "r1-b"), ("a", "r1"), ("a-b", "r1"), ("a.b", "r1")] {
        s.apply(&topo(ns, name)).await.expect("apply");
    }
    let got: Vec<PodKey> = s
        .list()
        .await
        .expect("list")
        .iter()
        .map(Topology::key)
        .collect();
    let mut want = got.clone();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_is_idempotent() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    s.apply(&topo("default", "r1")).await.expect("apply");
    s.apply(&topo("default", "r2")).await.expect("apply");
    s.delete(&k).await.expect("delete");
    assert!(s.get(&k).await.expect("get").is_none());
    s.delete(&k).await.expect("delete again");
    s.delete(&key("default", "never"))
        .await
        .expect("delete a missing object");
    let left: Vec<PodKey> = s
        .list()
        .await
        .expect("list")
        .iter()
        .map(Topology::key)
        .collect();
    assert_eq!(left, [key("default", "r2")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_status_checks_the_version() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    let v1 = s.apply(&topo("default", "r1")).await.expect("apply");
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
            key: ck,
            expected,
            found,
        }) => {
            assert_eq!(ck, k);
            assert_eq!(expected, v1.metadata.resource_version);
            assert_eq!(found, v2.metadata.resource_version);
        }
        r => panic!("expected Conflict, got {r:?}"),
    }
    // The losing write changed nothing.
    assert_eq!(must_get(&s, &k).await, v2);

    let v3 = s
        .replace_status(&k, &other, &v2.metadata.resource_version)
        .await
        .expect("current version");
    assert_eq!(v3.status.container_id, "c2");
    assert_ne!(v3.metadata.resource_version, v2.metadata.resource_version);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_status_of_a_missing_object_is_not_found() {
    let (_dir, s) = store();
    let r = s.replace_status(&key("default", "r1"), &alive(), "1").await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_not_reused_after_delete_and_create() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    let old = s.apply(&topo("default", "r1")).await.expect("apply");
    s.delete(&k).await.expect("delete");
    let new = s.apply(&topo("default", "r1")).await.expect("re-create");
    assert_ne!(new.metadata.resource_version, old.metadata.resource_version);
    let r = s
        .replace_status(&k, &alive(), &old.metadata.resource_version)
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_are_refused() {
    let (_dir, s) = store();
    for (ns, name) in [
        ("default", "R1"),
        ("Default", "r1"),
        ("default", "r_1"),
        ("my_ns", "r1"),
        ("default", ""),
        ("default", "-r1"),
        ("default", "r1-"),
        ("default", "r1/x"),
        ("default", ".."),
    ] {
        let k = key(ns, name);
        assert_invalid(s.apply(&topo(ns, name)).await);
        assert_invalid(s.get(&k).await);
        assert_invalid(s.delete(&k).await);
        assert_invalid(s.replace_status(&k, &alive(), "1").await);
    }
    assert!(s.list().await.expect("list").is_empty());
    // Dots and dashes inside a name are fine.
    s.apply(&topo("lab-1", "r1.example-2"))
        .await
        .expect("valid names");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_file_is_reported() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    for bad in ["{not json", "", r#"{"metadata": 3}"#] {
        fs::write(s.dir().join("default_r1.json"), bad).expect("write");
        let r = s.get(&k).await;
        assert!(
            matches!(r, Err(StoreError::Corrupt { .. })),
            "{bad:?}: {r:?}"
        );
    }
    // list skips the corrupt file and still returns the good ones.
    s.apply(&topo("default", "r2")).await.expect("apply r2");
    let all = s.list().await.expect("list survives a corrupt file");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].metadata.name, "r2");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_ignores_files_that_are_not_topologies() {
    let (_dir, s) = store();
    s.apply(&topo("default", "r1")).await.expect("apply");
    s.apply(&topo("lab", "r2")).await.expect("apply");
    for name in [
        "README",
        "notes.txt",
        "plain.json",
        "Bad_Name.json",
        "default_r1.json.bak",
        ".tmp-1-default_r3.json",
        ".hidden_x.json",
        "default_.json",
        "_r1.json",
    ] {
        fs::write(s.dir().join(name), "garbage").expect("write");
    }
    fs::create_dir(s.dir().join("subdir")).expect("mkdir");
    let got: Vec<PodKey> = s
        .list()
        .await
        .expect("list")
        .iter()
        .map(Topology::key)
        .collect();
    assert_eq!(got, [key("default", "r1"), key("lab", "r2")]);
}

/// Waits for `Changed(want)`, skipping other keys' events.
async fn changed(rx: &mut broadcast::Receiver<StoreEvent>, want: &PodKey) {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(StoreEvent::Changed(k)) if &k == want => return,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no Changed({want}) within 5s"));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_store_on_the_same_dir_sees_changes() {
    let (_dir, a) = store();
    let b = FileStore::open(a.dir()).expect("second store");
    let mut rx = b.watch();
    let k = key("default", "r1");

    let v = a.apply(&topo("default", "r1")).await.expect("apply");
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
    let (_dir, s) = store();
    let mut rx = s.watch();
    let mut rx2 = s.watch();
    s.apply(&topo("lab", "r7")).await.expect("apply");
    changed(&mut rx, &key("lab", "r7")).await;
    changed(&mut rx2, &key("lab", "r7")).await;
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
    const PER_TASK: u64 = 200;
    const TASKS_PER_STORE: u64 = 2;
    let (_dir, a) = store();
    let b = FileStore::open(a.dir()).expect("second store");
    let k = key("default", "r1");
    a.apply(&topo("default", "r1")).await.expect("apply");

    let mut tasks = Vec::new();
    for s in [&a, &b] {
        for t in 0..TASKS_PER_STORE {
            let (s, k) = (s.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let r = update_status(&s, &k, |st| {
                        st.container_id = (count(st) + 1).to_string();
                        // A second, independent counter: one entry per update.
                        st.links.push(LinkStatus {
                            uid: i64::try_from(t * PER_TASK + i).expect("small"),
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
    assert_eq!(
        end.status.links.len(),
        usize::try_from(total).expect("small")
    );
    assert_eq!(must_get(&b, &k).await, end);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_status_of_a_missing_object_is_none() {
    let (_dir, s) = store();
    let mut called = false;
    let r = update_status(&s, &key("default", "r1"), |_| {
        called = true;
        true
    })
    .await
    .expect("update_status");
    assert!(r.is_none());
    assert!(!called);
    assert!(s.get(&key("default", "r1")).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn update_status_does_not_write_when_nothing_changed() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    let v = s.apply(&topo("default", "r1")).await.expect("apply");
    let version_file = fs::read_to_string(s.dir().join(".version")).expect(".version");
    let r = update_status(&s, &k, |st| {
        st.container_id = "not kept".into();
        false
    })
    .await
    .expect("update_status")
    .expect("object exists");
    assert_eq!(r, v);
    assert_eq!(must_get(&s, &k).await, v);
    assert_eq!(
        fs::read_to_string(s.dir().join(".version")).expect(".version"),
        version_file
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_status_writes_and_returns_the_new_object() {
    let (_dir, s) = store();
    let k = key("default", "r1");
    let v = s.apply(&topo("default", "r1")).await.expect("apply");
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
