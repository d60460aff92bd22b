//! The [`TopologyStore`] contract as one test suite, run against every implementation: the file
//! store (`store/file/tests.rs`) and the Kubernetes store on a real API server
//! (`kube/tests/apiserver.rs`). The reconciler relies on exactly these guarantees, so a behaviour
//! that differs between the lab and a cluster shows up here, not in production.
//!
//! Each check is an `async fn(Fixture)`; [`store_contract!`](crate::store_contract) expands to one
//! `#[tokio::test]` per check for a backend, given an async expression that makes a [`Fixture`].
//! Guarantees that only one backend gives (the file store's on-disk layout; the API server's
//! server-side apply keeping the version of an unchanged apply) stay in that backend's own tests.
//!
//! Compiled for this crate's tests and, with the `contract` feature, for other crates' tests.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{StoreError, StoreEvent, TopologyStore, update_status};
use crate::topology::{Link, LinkState, LinkStatus, PodKey, SkippedPod, Topology, TopologyStatus};

/// What a check runs on.
pub struct Fixture {
    /// The store under test.
    pub a: Arc<dyn TopologyStore>,
    /// A second store over the same backend (another daemon's view).
    pub b: Arc<dyn TopologyStore>,
    /// A prefix unique to this check: its namespaces are `PREFIX-x`, so checks sharing one
    /// backend (one API server) see only their own objects.
    pub prefix: String,
    /// The backend sends one [`StoreEvent::Resync`] when a watch is established (the Kubernetes
    /// store does, once its watcher has listed); events of writes made before it may be folded
    /// into it.
    pub initial_resync: bool,
    /// Whatever must live as long as the check (a temporary directory).
    pub guard: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("kind", &self.a.kind())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// Namespace `suffix` of this check.
    pub fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Keys of the listed objects in this check's namespaces.
    async fn listed(&self, s: &dyn TopologyStore) -> Vec<PodKey> {
        let mine = format!("{}-", self.prefix);
        s.list()
            .await
            .expect("list")
            .iter()
            .map(Topology::key)
            .filter(|k| k.namespace.starts_with(&mine))
            .collect()
    }

    /// Subscribes to `s`'s events, returning once its watch is established.
    async fn watch(&self, s: &dyn TopologyStore) -> broadcast::Receiver<StoreEvent> {
        let mut rx = s.watch();
        self.established(&mut rx).await;
        rx
    }

    /// Returns once the watch of a receiver taken from a new store is established.
    async fn established(&self, rx: &mut broadcast::Receiver<StoreEvent>) {
        if self.initial_resync {
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
    }
}

/// Expands to one `#[tokio::test]` per contract check, each on a fresh fixture from `$fixture`
/// (a future of a [`Fixture`]; it may use `$name`, the check's name as a `&str`).
#[macro_export]
macro_rules! store_contract {
    (|$name:ident| $fixture:expr) => {
        $crate::store_contract!(@checks |$name| $fixture;
            apply_creates_and_get_returns_it_with_a_version,
            apply_with_empty_namespace_stores_in_default,
            apply_ignores_the_status_it_is_given,
            apply_again_keeps_status_and_replaces_spec_and_labels,
            list_returns_all_sorted_by_key,
            delete_is_idempotent,
            replace_status_checks_the_version,
            replace_status_of_a_missing_object_is_not_found,
            versions_are_not_reused_after_delete_and_create,
            invalid_names_are_refused,
            another_store_sees_changes,
            a_store_sees_its_own_changes,
            concurrent_updates_from_two_stores_lose_nothing,
            many_objects_at_once,
            update_status_of_a_missing_object_is_none,
            update_status_does_not_write_when_nothing_changed,
            update_status_writes_and_returns_the_new_object,
            reads_right_after_own_writes_see_them,
        );
    };
    (@checks |$name:ident| $fixture:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let $name: &str = stringify!($check);
                $crate::store::contract::$check($fixture.await).await;
            }
        )*
    };
}

fn link(uid: i64, peer_pod: &str, local_intf: &str) -> Link {
    Link {
        uid,
        peer_pod: peer_pod.into(),
        local_intf: local_intf.into(),
        peer_intf: "eth1".into(),
        ..Default::default()
    }
}

/// A Topology with one link.
pub fn topo(ns: &str, name: &str) -> Topology {
    Topology::new(ns, name, vec![link(1, "peer", "eth1")])
}

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

/// The status a daemon writes for a running pod.
pub fn alive() -> TopologyStatus {
    TopologyStatus {
        src_ip: "198.51.100.1".into(),
        net_ns: "/var/run/netns/x".into(),
        container_id: "c1".into(),
        ..Default::default()
    }
}

/// The object under `k`, which must exist.
pub async fn must_get(s: &dyn TopologyStore, k: &PodKey) -> Topology {
    s.get(k)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{k} is missing"))
}

/// The object once `s` has it with `want` true: writes of another store reach this one through
/// its watch, not necessarily at once.
async fn eventually(s: &dyn TopologyStore, k: &PodKey, want: impl Fn(Option<&Topology>) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = s.get(k).await.expect("get");
        if want(got.as_ref()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the {} store never saw the change of {k}: it has {got:?}",
            s.kind()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `Changed(want)`, skipping other events. A `Resync` also counts: the contract is
/// "re-list", and every caller checks the object with a read afterwards.
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

fn is_invalid<T>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Invalid { .. }))
}

/// A created object reads back whole (every field, extensions and status included), with a
/// version.
pub async fn apply_creates_and_get_returns_it_with_a_version(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("create");
    let k = key(&ns, "r1");
    assert!(s.get(&k).await.expect("get").is_none());
    let t = topo(&ns, "r1");
    let stored = s.apply(&t).await.expect("apply");
    assert!(!stored.metadata.resource_version.is_empty());
    assert_eq!(stored.spec, t.spec);
    assert_eq!(stored.status, TopologyStatus::default());
    assert_eq!(must_get(s, &k).await, stored);

    let mut full = Topology::new(
        &ns,
        "r2",
        vec![Link {
            local_ip: "192.0.2.1/24".into(),
            peer_ip: "192.0.2.2/24".into(),
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
        skipped: vec![SkippedPod {
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
            impairment: "delay 10ms".into(),
        }],
        ..alive()
    };
    let v = s
        .replace_status(&full.key(), &status, &stored.metadata.resource_version)
        .await
        .expect("status");
    assert_eq!(v.status, status);
    assert_eq!(must_get(s, &full.key()).await.status, status);
}

/// An empty namespace is `default` (as kubectl treats it).
pub async fn apply_with_empty_namespace_stores_in_default(f: Fixture) {
    let s = &*f.a;
    let name = format!("{}-r1", f.prefix);
    let stored = s.apply(&topo("", &name)).await.expect("apply");
    assert_eq!(stored.metadata.namespace, "default");
    assert_eq!(must_get(s, &key("default", &name)).await, stored);
    assert_eq!(must_get(s, &key("", &name)).await, stored);
    s.delete(&key("", &name)).await.expect("delete");
    assert!(s.get(&key("default", &name)).await.expect("get").is_none());
}

/// `apply` writes spec and labels only: the status is the daemons'.
pub async fn apply_ignores_the_status_it_is_given(f: Fixture) {
    let s = &*f.a;
    let mut t = topo(&f.ns("x"), "r1");
    t.status = alive();
    let stored = s.apply(&t).await.expect("apply");
    assert_eq!(stored.status, TopologyStatus::default());
}

/// Re-applying keeps the status and replaces spec and labels whole (fewer links, no labels).
pub async fn apply_again_keeps_status_and_replaces_spec_and_labels(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    let v1 = s.apply(&topo(&ns, "r1")).await.expect("apply");
    let v2 = s
        .replace_status(&k, &alive(), &v1.metadata.resource_version)
        .await
        .expect("replace_status");
    assert_ne!(v2.metadata.resource_version, v1.metadata.resource_version);

    let mut changed = topo(&ns, "r1");
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
    assert_eq!(must_get(s, &k).await, v3);

    // The same content again: same spec and status (whether the version moves is the backend's).
    let v4 = s.apply(&changed).await.expect("apply unchanged");
    assert_eq!((&v4.spec, &v4.status), (&v3.spec, &v3.status));

    let v5 = s.apply(&topo(&ns, "r1")).await.expect("apply fewer");
    assert_eq!(v5.spec, topo(&ns, "r1").spec);
    assert!(v5.metadata.labels.is_empty(), "{:?}", v5.metadata.labels);
    assert_eq!(v5.status, alive());
}

/// `list` returns every object sorted by key (namespace, then name — `r1` before `r1-b`).
pub async fn list_returns_all_sorted_by_key(f: Fixture) {
    let s = &*f.a;
    let (a, b) = (f.ns("a"), f.ns("b"));
    for (ns, name) in [(&b, "r2"), (&a, "r3"), (&b, "r1"), (&a, "r1"), (&a, "r1-b")] {
        s.apply(&topo(ns, name)).await.expect("apply");
    }
    assert_eq!(
        f.listed(s).await,
        [
            key(&a, "r1"),
            key(&a, "r1-b"),
            key(&a, "r3"),
            key(&b, "r1"),
            key(&b, "r2")
        ]
    );
}

/// Deleting a missing object is not an error.
pub async fn delete_is_idempotent(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    s.apply(&topo(&ns, "r1")).await.expect("apply");
    s.apply(&topo(&ns, "r2")).await.expect("apply");
    s.delete(&k).await.expect("delete");
    assert!(s.get(&k).await.expect("get").is_none());
    s.delete(&k).await.expect("delete again");
    s.delete(&key(&ns, "never"))
        .await
        .expect("delete a missing object");
    assert_eq!(f.listed(s).await, [key(&ns, "r2")]);
}

/// Optimistic concurrency: a status write from a stale (or empty) version is a conflict and
/// changes nothing; clearing a status clears it.
pub async fn replace_status_checks_the_version(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    let v1 = s.apply(&topo(&ns, "r1")).await.expect("apply");
    let v2 = s
        .replace_status(&k, &alive(), &v1.metadata.resource_version)
        .await
        .expect("current version");
    assert_eq!(v2.status, alive());
    assert_eq!(v2.spec, v1.spec);
    assert_eq!(must_get(s, &k).await, v2);

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
    assert_eq!(
        must_get(s, &k).await,
        v2,
        "the losing write changed nothing"
    );
    let r = s.replace_status(&k, &other, "").await;
    assert!(
        matches!(r, Err(StoreError::Conflict { .. })),
        "an empty version must never match: {r:?}"
    );

    let v3 = s
        .replace_status(&k, &other, &v2.metadata.resource_version)
        .await
        .expect("current version");
    assert_eq!(v3.status.container_id, "c2");
    assert_ne!(v3.metadata.resource_version, v2.metadata.resource_version);

    let v4 = s
        .replace_status(
            &k,
            &TopologyStatus::default(),
            &v3.metadata.resource_version,
        )
        .await
        .expect("clear");
    assert_eq!(v4.status, TopologyStatus::default());
    assert_eq!(must_get(s, &k).await.status, TopologyStatus::default());
}

pub async fn replace_status_of_a_missing_object_is_not_found(f: Fixture) {
    let r =
        f.a.replace_status(&key(&f.ns("x"), "r1"), &alive(), "1")
            .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

/// A version of a deleted object never matches the object made again under the same key.
pub async fn versions_are_not_reused_after_delete_and_create(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    let old = s.apply(&topo(&ns, "r1")).await.expect("apply");
    s.delete(&k).await.expect("delete");
    let new = s.apply(&topo(&ns, "r1")).await.expect("re-create");
    assert_ne!(new.metadata.resource_version, old.metadata.resource_version);
    let r = s
        .replace_status(&k, &alive(), &old.metadata.resource_version)
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
}

/// Keys the API server refuses are refused by every operation of every store
/// ([`super::check_key`]).
pub async fn invalid_names_are_refused(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    for (ns, name) in [
        (ns.as_str(), "R1"),
        ("Invalid", "r1"),
        (&ns, "r_1"),
        ("my_ns", "r1"),
        (&ns, ""),
        (&ns, "-r1"),
        (&ns, "r1-"),
        (&ns, "r1/x"),
        (&ns, ".."),
        ("a.b", "r1"),
    ] {
        let k = key(ns, name);
        assert!(is_invalid(&s.apply(&topo(ns, name)).await), "apply {k}");
        assert!(is_invalid(&s.get(&k).await), "get {k}");
        assert!(is_invalid(&s.delete(&k).await), "delete {k}");
        assert!(
            is_invalid(&s.replace_status(&k, &alive(), "1").await),
            "replace_status {k}"
        );
    }
    assert!(f.listed(s).await.is_empty());
    s.apply(&topo(&ns, "r1.example-2"))
        .await
        .expect("dots and dashes inside a name are fine");
}

/// Another store's watch reports every change, and its reads then show it.
pub async fn another_store_sees_changes(f: Fixture) {
    let (a, b) = (&*f.a, &*f.b);
    let mut rx = f.watch(b).await;
    let ns = f.ns("x");
    let k = key(&ns, "r1");

    let v = a.apply(&topo(&ns, "r1")).await.expect("apply");
    changed(&mut rx, &k).await;
    eventually(b, &k, |t| t == Some(&v)).await;

    a.replace_status(&k, &alive(), &v.metadata.resource_version)
        .await
        .expect("replace_status");
    changed(&mut rx, &k).await;
    eventually(b, &k, |t| t.is_some_and(|t| t.status == alive())).await;

    a.delete(&k).await.expect("delete");
    changed(&mut rx, &k).await;
    eventually(b, &k, |t| t.is_none()).await;
}

/// Every subscriber of a store sees that store's own writes.
pub async fn a_store_sees_its_own_changes(f: Fixture) {
    let s = &*f.a;
    let (mut rx, mut rx2) = (s.watch(), s.watch());
    f.established(&mut rx).await;
    f.established(&mut rx2).await;
    let k = key(&f.ns("x"), "r7");
    s.apply(&topo(&k.namespace, "r7")).await.expect("apply");
    changed(&mut rx, &k).await;
    changed(&mut rx2, &k).await;
    assert!(s.get(&k).await.expect("get").is_some());
}

/// The counter the concurrency check increments: `container_id` as a number.
fn count(s: &TopologyStatus) -> u64 {
    if s.container_id.is_empty() {
        0
    } else {
        s.container_id.parse().expect("a number")
    }
}

/// Two stores, two tasks each, [`update_status`] in a loop: no update is lost, and the other
/// store catches up with the last one.
pub async fn concurrent_updates_from_two_stores_lose_nothing(f: Fixture) {
    const PER_TASK: u64 = 100;
    const TASKS_PER_STORE: u64 = 2;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    f.a.apply(&topo(&ns, "r1")).await.expect("apply");

    let mut tasks = Vec::new();
    for (n, s) in [&f.a, &f.b].into_iter().enumerate() {
        for t in 0..TASKS_PER_STORE {
            let (s, k) = (Arc::clone(s), k.clone());
            let task = u64::try_from(n).unwrap() * TASKS_PER_STORE + t;
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let r = update_status(&*s, &k, |st| {
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
    // A store reads its own writes at once and the other store's when its watch delivers them:
    // the last update may be the other store's, so wait for `a` to have it (a lost update
    // never arrives, and fails here).
    eventually(&*f.a, &k, |t| t.is_some_and(|t| count(&t.status) == total)).await;
    let end = must_get(&*f.a, &k).await;
    assert_eq!(count(&end.status), total);
    let uids: BTreeSet<i64> = end.status.links.iter().map(|l| l.uid).collect();
    assert_eq!(end.status.links.len(), usize::try_from(total).unwrap());
    assert_eq!(uids.len(), end.status.links.len(), "every update kept once");
    eventually(&*f.b, &k, |t| t == Some(&end)).await;
}

/// A burst of creates, status writes and deletes at once (a node reboot, a large lab): nothing
/// throttled away (the Kubernetes store bounds its requests in flight far below this), `list`
/// complete (several pages from the API server) and sorted.
pub async fn many_objects_at_once(f: Fixture) {
    const N: usize = 700;
    let s = &f.a;
    let ns = f.ns("x");
    let names: Vec<String> = (0..N).map(|i| format!("r{i}")).collect();
    let results: Vec<_> = futures::stream::iter(&names)
        .map(|n| {
            let t = topo(&ns, n);
            async move { s.apply(&t).await }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let got = f.listed(&**s).await;
    assert_eq!(got.len(), N);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted);
    let results: Vec<_> = futures::stream::iter(&names)
        .map(|n| {
            let k = key(&ns, n);
            async move {
                update_status(&**s, &k, |st| {
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
    let results: Vec<_> = futures::stream::iter(&names)
        .map(|n| {
            let k = key(&ns, n);
            async move { s.delete(&k).await }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    for r in results {
        r.expect("delete");
    }
    assert!(f.listed(&**s).await.is_empty());
}

pub async fn update_status_of_a_missing_object_is_none(f: Fixture) {
    let mut called = false;
    let k = key(&f.ns("x"), "r1");
    let r = update_status(&*f.a, &k, |_| {
        called = true;
        true
    })
    .await
    .expect("update_status");
    assert!(r.is_none());
    assert!(!called);
    assert!(f.a.get(&k).await.expect("get").is_none());
}

/// A closure that changes nothing writes nothing (the version stays).
pub async fn update_status_does_not_write_when_nothing_changed(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    let v = s.apply(&topo(&ns, "r1")).await.expect("apply");
    let r = update_status(s, &k, |st| {
        st.container_id = "not kept".into();
        false
    })
    .await
    .expect("update_status")
    .expect("object exists");
    assert_eq!(r, v);
    assert_eq!(must_get(s, &k).await, v);
}

pub async fn update_status_writes_and_returns_the_new_object(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    let v = s.apply(&topo(&ns, "r1")).await.expect("apply");
    let r = update_status(s, &k, |st| {
        *st = alive();
        true
    })
    .await
    .expect("update_status")
    .expect("object exists");
    assert_eq!(r.status, alive());
    assert_ne!(r.metadata.resource_version, v.metadata.resource_version);
    assert_eq!(must_get(s, &k).await, r);
}

/// Read-your-writes: every read (get and list) right after a store's own write sees it.
pub async fn reads_right_after_own_writes_see_them(f: Fixture) {
    let s = &*f.a;
    let ns = f.ns("x");
    let k = key(&ns, "r1");
    s.apply(&topo(&ns, "r1")).await.expect("apply");
    assert!(s.get(&k).await.expect("get").is_some(), "own create");
    for i in 0..30 {
        let id = format!("sandbox-{i}");
        let written = update_status(s, &k, |st| {
            st.container_id.clone_from(&id);
            true
        })
        .await
        .expect("update_status")
        .expect("exists");
        assert_eq!(written.status.container_id, id);
        let got = must_get(s, &k).await;
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
    assert!(f.listed(s).await.is_empty(), "own delete, listed");
}
