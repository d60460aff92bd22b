//! The store's watch survives an API server restart: a private server (see `common`) is stopped
//! and started again on the same data. Meanwhile the API server's watch cache starts over at
//! etcd's current revision, so resuming at the watcher's older `resourceVersion` gets
//! `410 Gone` and the watcher re-lists, which subscribers see as `Resync`.
//!
//! Also on a private server (whose request counters no other test moves): reads come from the
//! store's cache, not from a LIST per request.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use meshnet_kube::KubeStore;
use meshnet_topology::store::{StoreEvent, TopologyStore, update_status};
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

/// `verb` requests for Topologies the API server has served so far (from its /metrics).
fn topology_requests(server: &Server, verb: &str) -> u64 {
    let pki = server.run_dir.join("pki");
    let out = std::process::Command::new("curl")
        .arg("-sf")
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://127.0.0.1:{}/metrics", server.port))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "GET /metrics: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"resource="topologies""#)
                && l.contains(&format!(r#"verb="{verb}""#))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What a busy node does — ADD after ADD, each reading its pod and every Topology and writing
/// status — sends no LIST and no GET once the cache is filled (the watch's one initial list):
/// only the status writes reach the API server.
#[tokio::test(flavor = "multi_thread")]
async fn reads_come_from_the_cache_not_from_a_list_per_request() {
    let server = Server::start();
    let s = server.store().await;
    for i in 0..20 {
        s.apply(&topo(&format!("r{i}"))).await.expect("apply");
    }
    assert_eq!(s.list().await.expect("list").len(), 20);
    let lists = topology_requests(&server, "LIST");
    let gets = topology_requests(&server, "GET");
    assert!(lists >= 1, "the cache was filled by a LIST");
    for i in 0..100 {
        let k = key(&format!("r{}", i % 20));
        let id = format!("c{i}");
        update_status(&s, &k, |st| {
            st.container_id.clone_from(&id);
            true
        })
        .await
        .expect("update_status")
        .expect("exists");
        let all = s.list().await.expect("list");
        assert_eq!(all.len(), 20);
        let got = s.get(&k).await.expect("get").expect("exists");
        assert_eq!(got.status.container_id, id);
    }
    assert_eq!(
        topology_requests(&server, "LIST"),
        lists,
        "LISTs sent by reads"
    );
    assert_eq!(
        topology_requests(&server, "GET"),
        gets,
        "GETs sent by reads"
    );
    // A key the cache does not have is asked for once (it may be newer than the watch).
    assert!(s.get(&key("absent")).await.expect("get").is_none());
    assert_eq!(
        topology_requests(&server, "GET"),
        gets + 1,
        "a miss asks the API server"
    );
}
