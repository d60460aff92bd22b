//! What a CNI ADD costs in the Kubernetes store, with many Topologies stored.
//!
//! `add_latency KUBECONFIG [TOPOLOGIES] [ADDS]` creates TOPOLOGIES (default 1000) Topologies in
//! namespace `add-latency` of the API server KUBECONFIG points at, then times ADDS (default 100)
//! repetitions of the store operations one ADD does in the daemon (`Reconciler::add`): the
//! read-modify-write of the pod's status (get + PUT), the reconcile's read of every Topology
//! (`list`), and the write of the pod's link status (get + PUT). Prints p50, p99 and max in
//! milliseconds. The kernel work of an ADD is not included: this is the store's share only.
//! Run it against a throw-away server (`scripts/envtest-apiserver.sh` or
//! `../shared/k8s/apiserver.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use meshnet_kube::KubeStore;
use meshnet_topology::store::{TopologyStore, update_status};
use meshnet_topology::topology::{Link, LinkState, LinkStatus, PodKey, Topology};

const NAMESPACE: &str = "add-latency";

fn pod(i: usize) -> String {
    format!("r{i}")
}

/// Pods in pairs: r0–r1, r2–r3, … (each with one link to its partner).
fn topology(i: usize) -> Topology {
    let peer = i ^ 1;
    Topology::new(
        NAMESPACE,
        &pod(i),
        vec![Link {
            uid: i64::try_from(i / 2).unwrap(),
            peer_pod: pod(peer),
            local_intf: "eth1".into(),
            peer_intf: "eth1".into(),
            ..Default::default()
        }],
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let kubeconfig = PathBuf::from(
        args.next()
            .expect("usage: add_latency KUBECONFIG [TOPOLOGIES] [ADDS]"),
    );
    let count: usize = args.next().map_or(1000, |a| a.parse().expect("TOPOLOGIES"));
    let adds: usize = args.next().map_or(100, |a| a.parse().expect("ADDS"));
    let store = KubeStore::from_kubeconfig(&kubeconfig)
        .await
        .expect("kubeconfig");

    let t = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            async move { store.apply(&topology(i)).await.expect("apply") }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    eprintln!(
        "created {count} Topologies in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The first read may set things up (a cache fills here); ADDs on a running daemon never pay it.
    store.list().await.expect("list");

    let mut times = Vec::with_capacity(adds);
    for n in 0..adds {
        let key = PodKey::new(NAMESPACE, &pod(n % count));
        let container_id = format!("sandbox-{n}");
        let t = Instant::now();
        // 1. record the pod alive on this node
        update_status(&store, &key, |s| {
            s.src_ip = "192.0.2.1".into();
            s.net_ns = format!("/run/netns/{container_id}");
            s.container_id.clone_from(&container_id);
            s.node = "node1".into();
            s.links.clear();
            true
        })
        .await
        .expect("status")
        .expect("exists");
        // 2. the reconcile reads every Topology and must see that write
        let all = store.list().await.expect("list");
        let me = all.iter().find(|t| t.key() == key).expect("listed");
        assert_eq!(me.status.container_id, container_id, "read my own write");
        // 3. the pod's link status
        update_status(&store, &key, |s| {
            s.links = vec![LinkStatus {
                uid: i64::try_from(n / 2).unwrap(),
                local_intf: "eth1".into(),
                peer_pod: pod((n % count) ^ 1),
                kind: String::new(),
                state: LinkState::Pending,
                message: "peer not alive".into(),
                impairment: String::new(),
            }];
            true
        })
        .await
        .expect("status")
        .expect("exists");
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "store {}: {count} Topologies stored, {adds} ADDs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        store.kind(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        percentile(&times, 100.0)
    );
}
