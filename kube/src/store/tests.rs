use kube::core::Status;

use super::*;

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(Box::new(Status {
        code,
        reason: reason.into(),
        message: format!("{reason} happened"),
        ..Status::default()
    }))
}

fn object(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).expect("a DynamicObject")
}

#[test]
fn api_errors_map_to_store_errors() {
    let k = key("default", "r1");
    assert!(matches!(
        store_error(api_error(404, "NotFound"), Some(&k)),
        StoreError::NotFound(ref x) if *x == k
    ));
    assert!(matches!(
        store_error(api_error(409, "Conflict"), Some(&k)),
        StoreError::Conflict { ref key, .. } if *key == k
    ));
    for code in [400, 422] {
        match store_error(api_error(code, "Invalid"), Some(&k)) {
            StoreError::Invalid { key, reason } => {
                assert_eq!(key, k);
                assert_eq!(reason, "Invalid happened");
            }
            e => panic!("{code}: {e:?}"),
        }
    }
    for code in [401, 403, 429, 500, 503] {
        let e = store_error(api_error(code, "Nope"), Some(&k));
        assert!(matches!(e, StoreError::Backend(_)), "{code}: {e:?}");
        assert_eq!(e.metric_label(), "backend");
    }
    match store_error(api_error(404, "NotFound"), None) {
        StoreError::Backend(m) => assert!(m.contains("CRD"), "{m}"),
        e => panic!("{e:?}"),
    }
    let transport = kube::Error::LinesCodecMaxLineLengthExceeded;
    assert!(matches!(
        store_error(transport, Some(&k)),
        StoreError::Backend(_)
    ));
}

#[test]
fn objects_decode_into_the_model() {
    let t = to_model(object(json!({
        "apiVersion": "networkop.co.uk/v1beta1",
        "kind": "Topology",
        "metadata": {
            "name": "r1", "namespace": "lab", "resourceVersion": "17", "uid": "u-1",
            "labels": {"topo": "x"}, "managedFields": [{"manager": "kubectl"}],
            "creationTimestamp": "2025-01-01T00:00:00Z"
        },
        "spec": {"links": [{"uid": 1, "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1",
                            "local_ip": "", "mtu": null}]},
        "status": {"src_ip": "10.0.0.1", "skipped": null}
    })))
    .expect("decodes");
    assert_eq!(t.key(), key("lab", "r1"));
    assert_eq!(t.metadata.resource_version, "17");
    assert_eq!(t.metadata.labels.get("topo").map(String::as_str), Some("x"));
    assert_eq!(t.spec.links.len(), 1);
    assert_eq!(t.spec.links[0].local_ip, "");
    assert_eq!(t.status.src_ip, "10.0.0.1");
    assert!(t.status.skipped.is_empty());

    // No spec, no status, no apiVersion (as list items may come): an empty Topology.
    let bare = to_model(object(
        json!({"metadata": {"name": "r2", "namespace": "lab"}}),
    ))
    .expect("decodes");
    assert!(bare.spec.links.is_empty());
    assert_eq!(bare.api_version, model::API_VERSION);
}

#[test]
fn undecodable_objects_are_corrupt_with_their_path() {
    let e = to_model(object(json!({
        "metadata": {"name": "r1", "namespace": "lab"},
        "spec": {"links": [{"uid": "one"}]}
    })))
    .expect_err("uid is not a number");
    match e {
        StoreError::Corrupt { path, .. } => {
            assert_eq!(path, "networkop.co.uk/v1beta1/namespaces/lab/topologies/r1");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn watch_outside_a_server_does_not_panic() {
    // A client toward a closed port: the watcher fails and retries in the background.
    let config = Config::new("https://127.0.0.1:1".parse().expect("uri"));
    let store = KubeStore::with_sync_timeout(
        Client::try_from(config).expect("client"),
        std::time::Duration::from_millis(500),
    );
    let mut rx = store.watch();
    let _rx2 = store.watch();
    assert_eq!(store.kind(), "kube");
    let r = tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await;
    assert!(r.is_err(), "no event without a server: {r:?}");
    let e = store
        .get(&key("default", "r1"))
        .await
        .expect_err("no server");
    // The read waited for the cache, then said why it is empty.
    let StoreError::Backend(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("did not fill within"), "{msg}");
    drop(store);
}

fn cached(ns: &str, name: &str, version: &str) -> Cached {
    let mut t = model::Topology::new(ns, name, Vec::new());
    t.metadata.resource_version = version.into();
    Cached {
        key: key(ns, name),
        resource_version: version.into(),
        topo: Ok(Arc::new(t)),
    }
}

fn mine(version: &str) -> Written {
    let mut t = model::Topology::new("ns", "r1", Vec::new());
    t.metadata.resource_version = version.into();
    Written::Present(Arc::new(t))
}

fn seen(view: View<'_>) -> Option<String> {
    match view {
        View::Cache(c) => Some(format!("cache {}", c.resource_version)),
        View::Mine(t) => Some(format!("mine {}", t.metadata.resource_version)),
        View::Absent => None,
    }
}

#[test]
fn versions_compare_as_numbers_and_otherwise_only_by_equality() {
    assert!(same_or_later("10", "9"));
    assert!(same_or_later("10", "10"));
    assert!(!same_or_later("9", "10"));
    assert!(same_or_later("abc", "abc"));
    assert!(!same_or_later("abd", "abc"));
}

#[test]
fn a_read_sees_the_newer_of_cache_and_own_write() {
    let c = |v| cached("ns", "r1", v);
    // Nothing written: the cache, or nothing.
    assert_eq!(seen(resolve(Some(&c("5")), None)), Some("cache 5".into()));
    assert_eq!(seen(resolve(None, None)), None);
    // Own write not yet delivered by the watch: the write.
    assert_eq!(
        seen(resolve(Some(&c("5")), Some(&mine("7")))),
        Some("mine 7".into())
    );
    assert_eq!(seen(resolve(None, Some(&mine("7")))), Some("mine 7".into()));
    // The watch caught up, or someone wrote after us: the cache.
    assert_eq!(
        seen(resolve(Some(&c("7")), Some(&mine("7")))),
        Some("cache 7".into())
    );
    assert_eq!(
        seen(resolve(Some(&c("9")), Some(&mine("7")))),
        Some("cache 9".into())
    );
    // Deleted by us: gone until the watch delivers the deletion.
    assert_eq!(seen(resolve(Some(&c("7")), Some(&Written::Deleted))), None);
    assert_eq!(seen(resolve(None, Some(&Written::Deleted))), None);
    // Versions that are not numbers: the write wins until the watch delivers exactly it.
    assert_eq!(
        seen(resolve(Some(&c("b")), Some(&mine("a")))),
        Some("mine a".into())
    );
    assert_eq!(
        seen(resolve(Some(&c("a")), Some(&mine("a")))),
        Some("cache a".into())
    );
}

#[test]
fn the_watch_retires_own_writes_it_has_delivered() {
    let apply = |v| watcher::Event::Apply(cached("ns", "r1", v));
    let delete = |v| watcher::Event::Delete(cached("ns", "r1", v));
    assert!(!mine("7").retired_by(&apply("6")), "an older event");
    assert!(mine("7").retired_by(&apply("7")), "the write itself");
    assert!(mine("7").retired_by(&apply("8")), "a later write");
    assert!(mine("7").retired_by(&delete("9")), "deleted since");
    assert!(
        !Written::Deleted.retired_by(&apply("9")),
        "an update from before the delete"
    );
    assert!(Written::Deleted.retired_by(&delete("9")));
}
