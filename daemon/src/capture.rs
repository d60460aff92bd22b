//! Live capture of a pod's interface (`meshnet.v1.Local/Capture`): a pcapng stream.
//!
//! Served on the local API only (the unix socket, mode 0600): pod traffic never leaves the node
//! through the network-reachable HTTP port.
//!
//! # Pipeline and its bound
//!
//! ```text
//! pod's port ──(kernel clones every frame)──▶ CaptureSocket (SO_RCVBUF 4 MiB)
//!     ──▶ reader thread: EPB bytes ──try_send──▶ queue (≤ QUEUE_FRAMES and ≤ QUEUE_BYTES)
//!     ──▶ forwarder task: chunks of ≤ CHUNK_BYTES ──▶ gRPC stream (HTTP/2 flow control)
//! ```
//!
//! The socket is a passive tap ([`meshnet_wire::sys::capture`]): the link's frames never wait
//! for it. When the client reads slowly, HTTP/2 flow control stops the forwarder, the queue
//! fills, and the reader **drops capture frames** (counted) instead of waiting; when the reader
//! thread itself falls behind, the kernel drops clones for this socket only (counted by
//! `PACKET_STATISTICS`). Both counts reach the client: in every chunk (`dropped`), and in the
//! pcapng as an Interface Statistics Block (`isb_ifdrop`) every [`STATS_EVERY`] and at the end.
//! Memory per capture is bounded by the socket buffer, the queue and one chunk.
//!
//! # What the stream says besides frames
//!
//! The section header's comment names the pod, interface, node and link, and the statistics
//! blocks' comments carry the **link's own view** at the start and the end: the kernel's counters
//! of the pod's interface (`/proc/net/dev` read inside the pod's namespace: frames and drops each
//! way), and for a gRPC wire the daemon's counters of that link (`meshnet_link_*` from the
//! metrics registry, read only: frames each way and drops by reason).
//!
//! Timestamps are the kernel's (`SO_TIMESTAMP`, µs): when the frame crossed the interface, not
//! when the reader got to it.

use std::fs::File;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use meshnet_proto::v1::{CaptureChunk, CaptureRequest};
use meshnet_wire::sys::capture::{CaptureSocket, SNAPLEN};
use meshnet_wire::sys::{netns::in_netns, wait_readable};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::pcapng::{self, Direction, Stats};
use crate::reconcile::Reconciler;
use crate::topology::{PodKey, Topology};

/// Frames queued between the reader thread and the stream, at most.
pub const QUEUE_FRAMES: usize = 4096;
/// Bytes queued between the reader thread and the stream, at most.
pub const QUEUE_BYTES: usize = 8 << 20;
/// A chunk is sent once it holds this much (or nothing more is queued).
pub const CHUNK_BYTES: usize = 64 << 10;
/// An Interface Statistics Block (drop counts) is written this often while frames flow or not.
pub const STATS_EVERY: Duration = Duration::from_secs(1);
/// Bytes of an EPB beyond the frame data, at most (header, padding, flags, end of options).
const EPB_OVERHEAD: usize = 48;
/// How often the reader thread checks whether the client went away when no frame arrives.
const POLL: Duration = Duration::from_millis(200);

/// The response stream of the RPC.
pub type CaptureStream = Pin<Box<dyn Stream<Item = Result<CaptureChunk, Status>> + Send>>;

/// What captures need from the daemon around them.
#[derive(Debug, Clone, Default)]
pub struct CaptureConfig {
    /// Read access to the daemon's metrics (the wire's own counters of a link).
    pub metrics: Option<PrometheusHandle>,
    /// Turns true when the daemon shuts down: every capture then ends (the local API server
    /// waits for open streams, so a capture must not outlive the daemon's stop).
    pub stop: Option<watch::Receiver<bool>>,
}

/// Resolves when `stop` turns true; never without one.
async fn stopping(stop: Option<watch::Receiver<bool>>) {
    match stop {
        Some(mut rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                // The daemon dropped its sender: it is gone.
            }
        }
        None => std::future::pending().await,
    }
}

/// What travels from the reader thread to the forwarder.
enum Msg {
    /// One Enhanced Packet Block.
    Frame(Vec<u8>),
    /// The capture ends, and why.
    End(String),
}

/// Counters shared by the reader thread and the forwarder.
#[derive(Default)]
struct Counters {
    /// Frames taken into the queue.
    queued: AtomicU64,
    /// Frames dropped because the queue was full (slow client).
    dropped_queue: AtomicU64,
    /// Frames the kernel dropped for the socket (reader thread behind).
    dropped_kernel: AtomicU64,
    /// Bytes in the queue now.
    queued_bytes: AtomicUsize,
}

impl Counters {
    fn dropped(&self) -> u64 {
        self.dropped_queue.load(Ordering::Relaxed) + self.dropped_kernel.load(Ordering::Relaxed)
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An interface name the kernel could have (checked before it reaches a syscall).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

/// Starts a capture: finds the pod's namespace from its Topology, opens the tap there and
/// returns the stream.
///
/// # Errors
/// `InvalidArgument` for a malformed request, `NotFound` for an unknown pod or interface,
/// `FailedPrecondition` for a pod not running on this node, `Unavailable` when the store
/// cannot be read, `Internal` when the socket cannot be opened.
pub async fn start(
    reconciler: &Reconciler,
    config: &CaptureConfig,
    req: CaptureRequest,
) -> Result<CaptureStream, Status> {
    if req.pod.is_empty() {
        return Err(Status::invalid_argument("capture: pod name is empty"));
    }
    if !valid_ifname(&req.interface) {
        return Err(Status::invalid_argument(format!(
            "capture: {:?} is not an interface name",
            req.interface
        )));
    }
    let key = PodKey::new(&req.namespace, &req.pod);
    let topo = reconciler
        .store()
        .get(&key)
        .await
        .map_err(|e| Status::unavailable(format!("topology store: {e}")))?
        .ok_or_else(|| Status::not_found(format!("capture: no Topology for pod {key}")))?;
    let node = &reconciler.node().name;
    if topo.status.node != *node || topo.status.net_ns.is_empty() {
        let where_ = if topo.status.node.is_empty() {
            "is not running".to_string()
        } else {
            format!("runs on node {:?}", topo.status.node)
        };
        return Err(Status::failed_precondition(format!(
            "capture: pod {key} {where_}, not on this node {node:?}"
        )));
    }
    let (kind, description) = describe_link(&topo, &req.interface);
    let intf = req.interface.clone();
    let net_ns = topo.status.net_ns.clone();
    let (sock, kernel_start) = tokio::task::spawn_blocking(move || open_in(&net_ns, &intf))
        .await
        .map_err(|e| Status::internal(format!("capture: opener failed: {e}")))??;
    let who = format!("{key}:{}", req.interface);
    let wire = (kind == "grpc").then(|| {
        (
            key.namespace.clone(),
            key.name.clone(),
            req.interface.clone(),
        )
    });
    let ctx = Context {
        who: who.clone(),
        net_ns: topo.status.net_ns.clone(),
        intf: req.interface.clone(),
        wire,
        metrics: config.metrics.clone(),
    };
    let start_view = format!(
        "start: {}{}",
        kernel_start,
        ctx.wire_view()
            .map(|w| format!("; {w}"))
            .unwrap_or_default()
    );
    let mut header = Vec::new();
    pcapng::section_header(
        &mut header,
        concat!("meshnetd ", env!("CARGO_PKG_VERSION")),
        &format!(
            "meshnet capture of {who} on node {node}. A passive tap: when the reader is slow, \
             capture frames are dropped and counted (isb_ifdrop), never frames of the link. {start_view}"
        ),
    );
    pcapng::interface(&mut header, SNAPLEN as u32, &who, &description);

    let counters = Arc::new(Counters::default());
    let (frames_tx, frames_rx) = mpsc::channel(QUEUE_FRAMES);
    let (out_tx, out_rx) = mpsc::channel(1);
    {
        let counters = Arc::clone(&counters);
        let max = req.max_frames;
        std::thread::Builder::new()
            .name("meshnet-capture".into())
            .spawn(move || read_loop(sock, &frames_tx, &counters, max))
            .map_err(|e| Status::internal(format!("capture: reader thread: {e}")))?;
    }
    tracing::info!(capture = %who, max_frames = req.max_frames, "capture started");
    tokio::spawn(forward(
        ctx,
        header,
        frames_rx,
        out_tx,
        counters,
        config.stop.clone(),
    ));
    Ok(Box::pin(ReceiverStream::new(out_rx)))
}

/// The kind of the meshnet link on `intf` (empty if unknown) and a description of it for the
/// pcapng interface block.
fn describe_link(topo: &Topology, intf: &str) -> (String, String) {
    let Some(link) = topo.spec.links.iter().find(|l| l.local_intf == intf) else {
        return (String::new(), "not a meshnet link".to_string());
    };
    let kind = topo
        .status
        .links
        .iter()
        .find(|s| s.uid == link.uid)
        .map(|s| s.kind.clone())
        .unwrap_or_default();
    let description = format!(
        "meshnet link uid {} to {}:{} ({})",
        link.uid,
        link.peer_pod,
        link.peer_intf,
        if kind.is_empty() {
            "kind unknown"
        } else {
            &kind
        }
    );
    (kind, description)
}

/// Opens the tap inside the pod's namespace and reads the interface's kernel counters there.
fn open_in(net_ns: &str, intf: &str) -> Result<(CaptureSocket, String), Status> {
    let file = File::open(Path::new(net_ns))
        .map_err(|e| Status::failed_precondition(format!("capture: netns {net_ns}: {e}")))?;
    let (sock, view) = in_netns(&file, || {
        (CaptureSocket::open_by_name(intf), kernel_view(intf))
    })
    .map_err(|e| Status::internal(format!("capture: entering {net_ns}: {e}")))?;
    let sock = sock.map_err(|e| match e {
        meshnet_wire::sys::afpacket::PacketError::NotFound { name } => {
            Status::not_found(format!("capture: the pod has no interface {name}"))
        }
        e => Status::internal(format!("capture: {e}")),
    })?;
    Ok((sock, view))
}

/// The kernel's counters of `intf` in the calling thread's namespace, as one line.
fn kernel_view(intf: &str) -> String {
    match std::fs::read_to_string("/proc/thread-self/net/dev") {
        Ok(text) => match parse_net_dev(&text, intf) {
            Some(c) => format!(
                "kernel {intf}: rx {} frames ({} dropped), tx {} frames ({} dropped)",
                c.rx_frames, c.rx_drops, c.tx_frames, c.tx_drops
            ),
            None => format!("kernel {intf}: not in /proc/net/dev"),
        },
        Err(e) => format!("kernel {intf}: /proc/net/dev: {e}"),
    }
}

/// One interface's line of `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DevCounters {
    rx_frames: u64,
    rx_drops: u64,
    tx_frames: u64,
    tx_drops: u64,
}

/// Finds `intf` in `/proc/net/dev` text: `name: rx_bytes rx_packets rx_errs rx_drop (4 more)
/// tx_bytes tx_packets tx_errs tx_drop …`.
fn parse_net_dev(text: &str, intf: &str) -> Option<DevCounters> {
    text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != intf {
            return None;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (f.len() >= 12).then(|| DevCounters {
            rx_frames: f[1],
            rx_drops: f[3],
            tx_frames: f[9],
            tx_drops: f[11],
        })
    })
}

/// The daemon's `meshnet_link_*` counters of one link, compacted into one line: each matching
/// series as `name[{reason}]=value`, zero-valued drop reasons left out.
fn wire_view_of(render: &str, namespace: &str, pod: &str, intf: &str) -> String {
    let want = [
        format!("namespace=\"{namespace}\""),
        format!("pod=\"{pod}\""),
        format!("interface=\"{intf}\""),
    ];
    let mut parts = Vec::new();
    for l in render.lines() {
        let Some(rest) = l.strip_prefix("meshnet_link_") else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let has = |w: &String| labels.split(',').any(|kv| kv == w);
        if !want.iter().all(has) {
            continue;
        }
        let reason = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("reason=\""))
            .map(|r| r.trim_end_matches('"'));
        match reason {
            Some(_) if value == "0" => {}
            Some(r) => parts.push(format!("{name}{{{r}}}={value}")),
            None => parts.push(format!("{name}={value}")),
        }
    }
    if parts.is_empty() {
        "wire: no counters for this link".to_string()
    } else {
        format!("wire: {}", parts.join(" "))
    }
}

/// What the forwarder needs to describe the capture.
struct Context {
    who: String,
    net_ns: String,
    intf: String,
    /// (namespace, pod, interface) of a gRPC wire, whose daemon counters are shown.
    wire: Option<(String, String, String)>,
    metrics: Option<PrometheusHandle>,
}

impl Context {
    fn wire_view(&self) -> Option<String> {
        let (ns, pod, intf) = self.wire.as_ref()?;
        let render = self.metrics.as_ref()?.render();
        Some(wire_view_of(&render, ns, pod, intf))
    }

    /// The link's counters at the end (kernel, and wire for a gRPC link).
    async fn end_view(&self) -> String {
        let (ns, intf) = (self.net_ns.clone(), self.intf.clone());
        let kernel = tokio::task::spawn_blocking(move || {
            let file = File::open(&ns).map_err(|e| format!("kernel: netns {ns}: {e}"))?;
            in_netns(&file, || kernel_view(&intf)).map_err(|e| format!("kernel: {e}"))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .unwrap_or_else(|e| e);
        match self.wire_view() {
            Some(w) => format!("{kernel}; {w}"),
            None => kernel,
        }
    }
}

/// The reader thread: frames into the queue until the client is gone, `max` frames were queued,
/// or the socket fails. Never blocks on the queue for a frame (see the module doc).
fn read_loop(mut sock: CaptureSocket, tx: &mpsc::Sender<Msg>, c: &Counters, max: u64) {
    let mut last_stats = Instant::now();
    let reason = 'outer: loop {
        if tx.is_closed() {
            return;
        }
        if let Err(e) = wait_readable(&[sock.fd()], POLL) {
            break format!("capture ended: poll: {e}");
        }
        if last_stats.elapsed() >= POLL {
            last_stats = Instant::now();
            if let Ok(d) = sock.kernel_drops() {
                c.dropped_kernel.fetch_add(d, Ordering::Relaxed);
            }
        }
        // Bounded so a flood still lets us notice a closed client.
        for _ in 0..1024 {
            let f = match sock.recv() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'outer format!("capture ended: {}: {e}", sock.name()),
            };
            // Full already: drop before the copy, so a stalled client costs the least CPU.
            if tx.capacity() == 0
                || c.queued_bytes.load(Ordering::Relaxed) + f.data.len() + EPB_OVERHEAD
                    > QUEUE_BYTES
            {
                c.dropped_queue.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let dir = if f.outgoing {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            let mut epb = Vec::with_capacity(f.data.len() + EPB_OVERHEAD);
            pcapng::packet(
                &mut epb,
                f.ts_us.unwrap_or_else(now_us),
                f.data,
                f.orig_len,
                dir,
                "",
            );
            let len = epb.len();
            match tx.try_send(Msg::Frame(epb)) {
                Ok(()) => {
                    c.queued_bytes.fetch_add(len, Ordering::Relaxed);
                    let n = c.queued.fetch_add(1, Ordering::Relaxed) + 1;
                    if max > 0 && n >= max {
                        break 'outer format!("capture ended: {max} frames");
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    c.dropped_queue.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    };
    if let Ok(d) = sock.kernel_drops() {
        c.dropped_kernel.fetch_add(d, Ordering::Relaxed);
    }
    // The end marker must arrive: wait for room (the client is reading, or gone).
    let _ = tx.blocking_send(Msg::End(reason));
}

/// The forwarder: header, then frames in chunks, a statistics block every [`STATS_EVERY`] and
/// at the end. Stops when the client goes away.
async fn forward(
    ctx: Context,
    header: Vec<u8>,
    mut rx: mpsc::Receiver<Msg>,
    out: mpsc::Sender<Result<CaptureChunk, Status>>,
    c: Arc<Counters>,
    stop: Option<watch::Receiver<bool>>,
) {
    let stop = stopping(stop);
    tokio::pin!(stop);
    let start_us = now_us();
    let mut written = 0u64;
    let stats = |written: u64, c: &Counters| Stats {
        start_us,
        end_us: now_us(),
        received: written + c.dropped(),
        dropped: c.dropped(),
    };
    let chunk = |data: Vec<u8>, written: u64, c: &Counters| {
        Ok(CaptureChunk {
            data: data.into(),
            frames: written,
            dropped: c.dropped(),
        })
    };
    if out.send(chunk(header, 0, &c)).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut reported = 0u64;
    let end = loop {
        let mut buf = Vec::new();
        tokio::select! {
            m = rx.recv() => {
                let mut next = m;
                let mut end = None;
                // Take what is queued, up to a chunk.
                loop {
                    match next {
                        Some(Msg::Frame(epb)) => {
                            c.queued_bytes.fetch_sub(epb.len(), Ordering::Relaxed);
                            buf.extend_from_slice(&epb);
                            written += 1;
                        }
                        Some(Msg::End(why)) => {
                            end = Some(why);
                            break;
                        }
                        None => {
                            end = Some("capture ended: reader stopped".to_string());
                            break;
                        }
                    }
                    if buf.len() >= CHUNK_BYTES {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(m) => next = Some(m),
                        Err(_) => break,
                    }
                }
                if let Some(why) = end {
                    break (buf, why);
                }
            }
            () = &mut stop => break (buf, "capture ended: the daemon is stopping".to_string()),
            _ = tick.tick() => {
                let d = c.dropped();
                let comment = if d > reported {
                    format!("{d} capture frames dropped so far (slow reader); the link lost none of them")
                } else {
                    String::new()
                };
                reported = d;
                pcapng::statistics(&mut buf, &stats(written, &c), &comment);
            }
        }
        let sent = tokio::select! {
            r = out.send(chunk(buf, written, &c)) => r.is_ok(),
            // A stalled client must not hold the daemon's shutdown.
            () = &mut stop => false,
        };
        if !sent {
            tracing::info!(capture = %ctx.who, frames = written, dropped = c.dropped(), "capture: client gone");
            return;
        }
    };
    let (mut buf, why) = end;
    let view = ctx.end_view().await;
    let d = c.dropped();
    pcapng::statistics(
        &mut buf,
        &stats(written, &c),
        &format!(
            "{why}; {written} frames written, {d} capture frames dropped ({} slow reader, {} \
             socket buffer); end: {view}",
            c.dropped_queue.load(Ordering::Relaxed),
            c.dropped_kernel.load(Ordering::Relaxed)
        ),
    );
    tracing::info!(capture = %ctx.who, frames = written, dropped = d, "{why}");
    tokio::select! {
        _ = out.send(chunk(buf, written, &c)) => {}
        () = &mut stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_line_is_found_by_exact_name() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
            eth10: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n  \
            eth1: 100 7 0 1 0 0 0 0 200 9 0 2 0 0 0 0\n";
        assert_eq!(
            parse_net_dev(text, "eth1"),
            Some(DevCounters {
                rx_frames: 7,
                rx_drops: 1,
                tx_frames: 9,
                tx_drops: 2
            })
        );
        assert_eq!(parse_net_dev(text, "eth2"), None);
    }

    #[test]
    fn wire_view_keeps_this_link_and_nonzero_drops() {
        let render = "\
# TYPE meshnet_link_tx_frames_total counter
meshnet_link_tx_frames_total{namespace=\"default\",pod=\"r1\",interface=\"eth1\",peer_pod=\"r2\",uid=\"1\",kind=\"grpc\"} 12
meshnet_link_tx_frames_total{namespace=\"default\",pod=\"r1\",interface=\"eth10\",peer_pod=\"r2\",uid=\"3\",kind=\"grpc\"} 99
meshnet_link_rx_frames_total{namespace=\"default\",pod=\"r1\",interface=\"eth1\",peer_pod=\"r2\",uid=\"1\",kind=\"grpc\"} 10
meshnet_link_drops_total{namespace=\"default\",pod=\"r1\",interface=\"eth1\",peer_pod=\"r2\",uid=\"1\",kind=\"grpc\",reason=\"no_peer\"} 3
meshnet_link_drops_total{namespace=\"default\",pod=\"r1\",interface=\"eth1\",peer_pod=\"r2\",uid=\"1\",kind=\"grpc\",reason=\"oversize\"} 0
meshnet_link_drops_total{namespace=\"other\",pod=\"r1\",interface=\"eth1\",peer_pod=\"r2\",uid=\"1\",kind=\"grpc\",reason=\"no_peer\"} 5
";
        assert_eq!(
            wire_view_of(render, "default", "r1", "eth1"),
            "wire: tx_frames_total=12 rx_frames_total=10 drops_total{no_peer}=3"
        );
        assert_eq!(
            wire_view_of(render, "default", "r9", "eth1"),
            "wire: no counters for this link"
        );
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_ifname("eth1"));
        for bad in ["", "a/b", "..", "has space", "sixteen-chars-xx"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }
}
