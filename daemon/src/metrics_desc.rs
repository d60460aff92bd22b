//! Help text and units for every metric the daemon exports (the exposition must pass
//! `promtool check metrics`). Call [`describe`] once after installing the recorder.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Registers the description of every meshnet metric.
pub fn describe() {
    // Per link (labels: namespace, pod, interface, peer_pod, uid, kind).
    describe_counter!(
        "meshnet_link_tx_frames_total",
        "Frames read from the pod's interface and sent toward the peer"
    );
    describe_counter!(
        "meshnet_link_tx_bytes_total",
        Unit::Bytes,
        "Bytes read from the pod's interface and sent toward the peer"
    );
    describe_counter!(
        "meshnet_link_rx_frames_total",
        "Frames received from the peer and written into the pod's interface"
    );
    describe_counter!(
        "meshnet_link_rx_bytes_total",
        Unit::Bytes,
        "Bytes received from the peer and written into the pod's interface"
    );
    describe_counter!(
        "meshnet_link_drops_total",
        "Frames dropped on this link, by reason (queue_full, peer_down, oversize, unknown_wire, io_error)"
    );
    describe_gauge!(
        "meshnet_link_carrier",
        "1 when the link's carrier is up (the peer's half is connected)"
    );
    describe_counter!(
        "meshnet_patchbay_dumps_total",
        "Full reads of the node's links by the patchbay (at start, after lost events, or when no reconcile run checked its table for a minute)"
    );
    describe_counter!(
        "meshnet_patch_reads_total",
        "Patch filters read by full runs (those that changed since their last reading, per the node's traffic-control events, or whose reading is older than five minutes)"
    );
    // The beacon (VXLAN links' far-end state; carrier is meshnet_link_carrier).
    describe_counter!(
        "meshnet_beacon_datagrams_total",
        "Beacon datagrams, by direction (sent, received: accepted from a tracked peer)"
    );
    describe_counter!(
        "meshnet_beacon_bad_total",
        "Beacon datagrams ignored, by reason (short, oversize, magic, version, length, state, unknown_peer, stale)"
    );
    describe_counter!(
        "meshnet_beacon_send_errors_total",
        "Beacon datagrams the kernel refused to send"
    );
    // Per peer node.
    describe_counter!(
        "meshnet_wire_connects_total",
        "gRPC wire streams established with a peer node"
    );
    describe_counter!(
        "meshnet_wire_reconnects_total",
        "gRPC wire streams re-established after a loss"
    );
    describe_gauge!(
        "meshnet_wire_connected",
        "1 while the stream of a shard toward a peer node is connected"
    );
    describe_counter!(
        "meshnet_wire_batches_total",
        "Batches received from a peer node"
    );
    describe_counter!(
        "meshnet_wire_batch_frames_total",
        "Frames in the batches received from a peer node (divided by batches: the mean batch size)"
    );
    describe_counter!(
        "meshnet_wire_unknown_wire_frames_total",
        "Frames from a peer for a wire id not bound to a local half"
    );
    describe_counter!(
        "meshnet_wire_malformed_batches_total",
        "Batches from a peer that failed to decode"
    );
    describe_counter!(
        "meshnet_wire_shard_tx_frames_total",
        "Frames queued toward a peer node on a shard's stream"
    );
    describe_counter!(
        "meshnet_wire_shard_rx_frames_total",
        "Frames received from a peer node on a shard's stream"
    );
    // Per daemon.
    describe_counter!(
        "meshnet_cni_requests_total",
        "CNI requests served, by operation and result"
    );
    describe_histogram!(
        "meshnet_cni_request_seconds",
        Unit::Seconds,
        "Time to serve a CNI request"
    );
    describe_counter!("meshnet_reconcile_runs_total", "Reconcile runs");
    describe_histogram!(
        "meshnet_reconcile_seconds",
        Unit::Seconds,
        "Duration of a reconcile run"
    );
    describe_counter!(
        "meshnet_reconcile_errors_total",
        "Reconcile runs that failed (the store could not be read)"
    );
    describe_counter!(
        "meshnet_links_plumbed_total",
        "Link ends built or repaired, by kind"
    );
    describe_counter!(
        "meshnet_link_errors_total",
        "Link ends that could not be built, by kind"
    );
    describe_counter!(
        "meshnet_store_conflicts_total",
        "Status updates retried after a concurrent write"
    );
    describe_counter!(
        "meshnet_store_errors_total",
        "Topology store errors, by operation and reason"
    );
    describe_counter!(
        "meshnet_store_resyncs_total",
        "Full re-lists of the topology store's watch"
    );
    describe_counter!(
        "meshnet_store_watch_errors_total",
        "Errors of the topology store's watch"
    );
}
