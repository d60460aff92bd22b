//! The store's watch survives an API server restart: a private server (see `common`) is stopped
//! and started again on the same data. Meanwhile the API server's watch cache starts over at
//! etcd's current revision, so resuming at the watcher's older `resourceVersion` gets
//! `410 Gone` and the watcher re-lists, which subscribers see as `Resync`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use meshnet_kube::KubeStore;
use meshnet_topology::store::{StoreEvent, TopologyStore};
use meshnet_topology::topology::{Link, PodKey, Topology};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use common::{CRD_NAME, Server};

fn topo(name: &str) -> Topology {
    Topology::new(
        "restart",
        name,
        vec![Link {
            uid: 1,
            peer_pod: "peer".into(),
            local_intf: "eth1".into(),
            peer_intf: "eth1".into(),
            ..Default::default()
        }],
    )
}

fn key(name: &str) -> PodKey {
    PodKey::new("restart", name)
}

async fn next_event(rx: &mut Receiver<StoreEvent>, deadline: Instant) -> Option<StoreEvent> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, rx.recv()).await {
        Ok(Ok(e)) => Some(e),
        Ok(Err(RecvError::Lagged(_))) => Some(StoreEvent::Resync),
        Ok(Err(RecvError::Closed)) => panic!("event channel closed"),
        Err(_) => None,
    }
}

async fn wait_for(rx: &mut Receiver<StoreEvent>, want: &StoreEvent, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(e) = next_event(rx, deadline).await {
        if &e == want {
            return;
        }
    }
    panic!("no {want:?} within {secs}s");
}

/// Retries a write while the restarted server is still coming up.
async fn apply_retrying(s: &KubeStore, t: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match s.apply(t).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("apply after restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("apply after restart: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_survives_an_api_server_restart() {
    let server = Server::start();
    let a = server.store().await;
    let b = server.store().await;
    let mut rx = b.watch();
    wait_for(&mut rx, &StoreEvent::Resync, 30).await;

    a.apply(&topo("r1")).await.expect("apply r1");
    wait_for(&mut rx, &StoreEvent::Changed(key("r1")), 20).await;

    // Move etcd's revision past everything b's watcher has seen (the CRD is another resource).
    for i in 0..3 {
        server.kubectl(&[
            "annotate",
            "crd",
            CRD_NAME,
            &format!("meshnet.test/bump=n{i}"),
            "--overwrite",
        ]);
    }
    let t0 = Instant::now();
    tokio::task::block_in_place(|| {
        server.compact_etcd();
        server.stop();
        eprintln!("stopped in {:?}", t0.elapsed());
        server.restart();
    });
    eprintln!("restarted in {:?}", t0.elapsed());

    // Changes made before b's watcher is back: r1 goes, r2 comes.
    apply_retrying(&a, &topo("r2")).await;
    a.delete(&key("r1")).await.expect("delete r1");

    // b learns both, one by one or through a re-list.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut saw_r1, mut saw_r2, mut resyncs) = (false, false, 0);
    while !(saw_r1 && saw_r2) {
        match next_event(&mut rx, deadline).await {
            Some(StoreEvent::Changed(k)) if k == key("r1") => saw_r1 = true,
            Some(StoreEvent::Changed(k)) if k == key("r2") => saw_r2 = true,
            Some(StoreEvent::Resync) => {
                resyncs += 1;
                // A subscriber re-lists: the list must already be the new truth.
                let keys: Vec<PodKey> = b
                    .list()
                    .await
                    .expect("list after resync")
                    .iter()
                    .map(Topology::key)
                    .collect();
                if keys.contains(&key("r2")) && !keys.contains(&key("r1")) {
                    saw_r1 = true;
                    saw_r2 = true;
                }
            }
            Some(StoreEvent::Changed(_)) => {}
            None => panic!("b did not learn of the changes made after the restart"),
        }
    }
    eprintln!(
        "resyncs after restart: {resyncs}; caught up {:?} after the restart",
        t0.elapsed()
    );
    assert!(
        resyncs >= 1,
        "the restarted server's watch cache starts past the watcher's version: a re-list (Resync) was expected"
    );

    // And the watch is live again.
    a.apply(&topo("r3")).await.expect("apply r3");
    wait_for(&mut rx, &StoreEvent::Changed(key("r3")), 30).await;
    assert!(b.get(&key("r3")).await.expect("get").is_some());
}
