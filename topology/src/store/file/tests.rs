use tempfile::TempDir;

use super::*;
use crate::store::contract::{must_get, topo};
use crate::store::update_status;

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

crate::store_contract!(|name| async move {
    let (dir, a) = store();
    let b = FileStore::open(a.dir()).expect("second store on the same directory");
    crate::store::contract::Fixture {
        a: std::sync::Arc::new(a),
        b: std::sync::Arc::new(b),
        prefix: name.replace('_', "-"),
        initial_resync: false,
        guard: Box::new(dir),
    }
});

fn store() -> (TempDir, FileStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = FileStore::open(dir.path().join("topologies")).expect("open store");
    (dir, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn open_creates_the_directory() {
    let (_dir, s) = store();
    assert!(s.dir().is_dir());
    assert_eq!(s.kind(), "file");
    assert!(s.list().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reapplying_the_same_content_bumps_the_version() {
    // The file store writes on every apply (the API server's server-side apply does not).
    let (_dir, s) = store();
    let v1 = s.apply(&topo("default", "r1")).await.expect("apply");
    let v2 = s
        .apply(&topo("default", "r1"))
        .await
        .expect("apply unchanged");
    assert_ne!(v2.metadata.resource_version, v1.metadata.resource_version);
    assert_eq!(v2.spec, v1.spec);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_sorted_by_key_when_names_share_a_prefix() {
    // File names sort '-' and '.' before '_', keys sort the shorter name first.
    let (_dir, s) = store();
    for (ns, name) in [("a", "r1-b"), ("a", "r1"), ("a-b", "r1"), ("a", "r1.b")] {
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
        "a.b_r1.json",
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

#[tokio::test(flavor = "multi_thread")]
async fn update_status_that_changes_nothing_leaves_the_version_file() {
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
