//! The gRPC side of the transport: the `Wire` service (accepting streams), the dialler (the
//! node with the lower address dials, with backoff), the outbound message stream of a shard,
//! the inbound loop, TLS, and the server builder.
//!
//! A stream starts with a Hello each way: the dialler names itself, its shard and its shard
//! count; the server checks the address and answers with its own count. Both use the smaller
//! count from then on ([`WireNode::set_active`]). The dialler's Hello also carries a fresh
//! token naming the stream on both nodes, which the server echoes. Then the tallies of the
//! sender's ended streams, the session's Binds, and data — on the dialler's side only once the
//! server's Hello came (see [`crate::tally`] for the accounting of frames lost with a stream).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use meshnet_proto::v1::wire_client::WireClient;
use meshnet_proto::v1::wire_server::{Wire, WireServer};
use meshnet_proto::v1::{
    Ack, Bind, Hello, Tally as TallyMsg, UnaryFrame, Unbind, WireMessage, wire_message::Body,
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::codec::{Inbound, OutboundBody, Outgoing};
use super::node::{Peer, Shard};
use super::{Legacy, MAX_MESSAGE, MAX_SHARDS, MESSAGE_BYTES, WireNode};
use crate::WireId;
use crate::session::{Control, Message};
use crate::table::WireKey;
use crate::tally::{Sent, Tally};

/// HTTP/2 windows sized for throughput (a 1 ms underlay at 10 Gbit/s holds ~1.25 MB in flight).
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept: a combined message travels in few DATA frames instead of one
/// per 16 KiB (h2's default), which costs a header, a buffer and a wake-up each on both sides.
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Keepalive: a peer that stops answering is declared gone within about two seconds.
pub const KEEPALIVE: Duration = Duration::from_millis(700);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(1000);

pub(crate) type Client = WireClient<tonic::transport::Channel>;

/// Mutual TLS for the node-to-node API, from a directory laid out like a Kubernetes TLS Secret
/// plus its CA: `tls.crt`, `tls.key` (this node's certificate and key) and `ca.crt` (the CA that
/// signs every node's certificate). Each side requires the other's certificate to chain to the
/// CA; the server certificate must be valid for the name [`WIRE_TLS_NAME`] (node addresses change,
/// the name does not). Without TLS a node still accepts streams only from the address of a node
/// it shares a wire with.
#[derive(Clone)]
pub struct WireTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The name every node's wire certificate carries (as a DNS subject alternative name).
pub const WIRE_TLS_NAME: &str = "meshnet-wire";

impl std::fmt::Debug for WireTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireTls { .. }")
    }
}

impl WireTls {
    /// Reads `tls.crt`, `tls.key` and `ca.crt` from `dir`; `Ok(None)` when `dir` holds no
    /// `tls.crt` (an optional Secret that is not there).
    ///
    /// # Errors
    /// A certificate file exists but the set is incomplete or unreadable.
    pub fn load(dir: &std::path::Path) -> std::io::Result<Option<Self>> {
        if !dir.join("tls.crt").exists() {
            return Ok(None);
        }
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(f).display()))
            })
        };
        Ok(Some(WireTls {
            ca: read("ca.crt")?,
            cert: read("tls.crt")?,
            key: read("tls.key")?,
        }))
    }

    fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert, &self.key)
    }

    fn ca(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(&self.ca)
    }

    /// The server side: our certificate, and client certificates required to chain to the CA.
    pub fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
    }

    fn client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
            .domain_name(WIRE_TLS_NAME)
    }
}

/// Serves the node's `Wire` service on `listener` until `shutdown` resolves (with TLS when
/// the node's options have it).
///
/// # Errors
/// The TLS configuration is refused, or the server fails.
pub async fn serve(
    node: Arc<WireNode>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let fallback = WireServer::new(WireService(Arc::clone(&node)))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let svc = CarryServer {
        node: Arc::clone(&node),
        fallback,
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &node.opts.tls {
        builder = builder.tls_config(tls.server())?;
    }
    builder
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
                r.inspect(|s| {
                    if let Err(e) = tune(s) {
                        tracing::warn!(error = %e, "cannot tune a wire connection");
                    }
                })
            }),
            shutdown,
        )
        .await
}

/// Options of every wire connection, both ends: no Nagle delay, and a small unsent backlog in
/// the kernel (see [`crate::sys::tcp::NOTSENT_LOWAT`]) so control is not queued behind seconds of
/// data.
fn tune(s: &tokio::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    s.set_nodelay(true)?;
    crate::sys::tcp::set_notsent_lowat(s.as_fd(), crate::sys::tcp::NOTSENT_LOWAT)
}

/// The dialler's connector: a TCP connection to the peer's wire port, tuned (tonic adds TLS on
/// top when configured).
#[derive(Debug, Clone, Copy)]
struct Dial(SocketAddr);

impl tower::Service<tonic::transport::Uri> for Dial {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            tune(&s)?;
            Ok(hyper_util::rt::TokioIo::new(s))
        })
    }
}

fn hello(me: IpAddr, shard: u32, shards: u32, stream: u64) -> WireMessage {
    WireMessage {
        body: Some(Body::Hello(Hello {
            node_ip: me.to_string(),
            shard,
            shards,
            version: env!("CARGO_PKG_VERSION").to_string(),
            stream,
        })),
    }
}

/// A tally of an ended stream as it goes on a later one.
fn tally_msg(t: Tally) -> WireMessage {
    WireMessage {
        body: Some(Body::Tally(TallyMsg {
            stream: t.stream,
            wire_id: t.id.0,
            frames: t.frames,
        })),
    }
}

/// A session control message as it goes on the stream.
fn control_msg(c: Control) -> WireMessage {
    WireMessage {
        body: Some(match c {
            Control::Bind { id, key, reply } => Body::Bind(Bind {
                wire_id: id.0,
                namespace: key.namespace,
                uid: key.uid,
                reply,
            }),
            Control::Unbind { id, shut } => Body::Unbind(Unbind {
                wire_id: id.0,
                shut,
            }),
        }),
    }
}

/// A stream message as the session takes it (`None`: a Hello or an empty message).
fn session_msg(m: WireMessage) -> Vec<Message> {
    match m.body {
        Some(Body::Bind(b)) => vec![Message::Control(Control::Bind {
            id: WireId(b.wire_id),
            key: WireKey::new(b.namespace, b.uid),
            reply: b.reply,
        })],
        Some(Body::Unbind(u)) => vec![Message::Control(Control::Unbind {
            id: WireId(u.wire_id),
            shut: u.shut,
        })],
        Some(Body::Batches(bs)) => bs.batch.into_iter().map(Message::Batch).collect(),
        Some(Body::Hello(_) | Body::Tally(_)) | None => Vec::new(),
    }
}

impl WireNode {
    /// Keeps the shards of a peer we dial connected, reconnecting with backoff.
    pub(crate) async fn dial(self: Arc<Self>, peer: Arc<Peer>) {
        let tasks: Vec<_> = peer
            .shards
            .iter()
            .map(|shard| {
                let (node, peer, shard) = (Arc::clone(&self), Arc::clone(&peer), Arc::clone(shard));
                tokio::spawn(async move { node.dial_shard(peer, shard).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    fn endpoint(&self, ip: IpAddr) -> Result<tonic::transport::Endpoint, String> {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = match ip {
            IpAddr::V4(a) => format!("{scheme}://{a}:{}", self.opts.port),
            IpAddr::V6(a) => format!("{scheme}://[{a}]:{}", self.opts.port),
        };
        let e = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| format!("bad peer address: {e}"))?
            .connect_timeout(self.opts.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        match &self.opts.tls {
            None => Ok(e),
            Some(t) => e
                .tls_config(t.client())
                .map_err(|e| format!("wire TLS configuration refused: {e}")),
        }
    }

    async fn dial_shard(self: Arc<Self>, peer: Arc<Peer>, shard: Arc<Shard>) {
        let endpoint = match self.endpoint(peer.ip) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(peer = %peer.ip, error = %e, "cannot dial");
                return;
            }
        };
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            // Shards past the agreed count stay idle (the peer may run fewer). Shard 0 always
            // dials: its Hello tells the count.
            if shard.index >= peer.active.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            // A fresh token per stream, non-zero (0 means "not accounted").
            let stream = rand::random::<u64>().max(1);
            let h = hello(self.opts.me, shard.index, peer.shards.len() as u32, stream);
            match Arc::clone(&self)
                .open_stream(&endpoint, &peer, Arc::clone(&shard), h, stream)
                .await
            {
                Ok((inbound, generation)) => {
                    backoff = Duration::from_millis(50);
                    if !first {
                        peer.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    first = false;
                    peer.counters.connects.fetch_add(1, Ordering::Relaxed);
                    shard.connected.store(true, Ordering::Release);
                    Arc::clone(&self)
                        .on_stream(Arc::clone(&peer), Arc::clone(&shard), inbound, generation)
                        .await;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.ip, shard = shard.index, error = %e, "wire connect failed");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.opts.connect_timeout);
        }
    }

    /// Dials one stream: connect, start the bidirectional call, read the server's Hello.
    async fn open_stream(
        self: Arc<Self>,
        endpoint: &tonic::transport::Endpoint,
        peer: &Arc<Peer>,
        shard: Arc<Shard>,
        hello: WireMessage,
        stream: u64,
    ) -> Result<(Inbound, u64), String> {
        let channel = endpoint
            .connect_with_connector(Dial(SocketAddr::new(peer.ip, self.opts.port)))
            .await
            .map_err(|e| e.to_string())?;
        let (out, generation) = self
            .outbound(Arc::clone(&shard), Some(hello), stream, false)
            .await;
        let mut inbound = call_carry(channel, out)
            .await
            .map_err(|s| s.message().to_string())?;
        // The server's Hello: its shard count.
        let theirs = match inbound.message().await {
            Ok(Some(WireMessage {
                body: Some(Body::Hello(h)),
            })) => h.shards,
            Ok(_) => return Err("the server's first message is not a Hello".into()),
            Err(s) => return Err(s.message().to_string()),
        };
        if theirs == 0 {
            return Err("the server runs 0 shards".into());
        }
        self.set_active(peer, theirs.min(peer.shards.len() as u32));
        if shard.index >= peer.active.load(Ordering::Acquire) {
            return Err(format!("shard {} is past the agreed count", shard.index));
        }
        // The server took the stream: data may flow.
        {
            let mut st = shard.state.lock().expect("shard lock");
            if st.owner == generation {
                st.open = generation;
            }
        }
        shard.wake.wake();
        Ok((inbound, generation))
    }

    /// The outbound message stream of a shard for a new stream; takes over the shard's session
    /// (connected now: it announces every attached half) and data queue from any previous
    /// stream. `stream` is its token (0: not accounted); `open`: it may carry data at once (the
    /// server's), else once [`ShardState::open`](super::node::ShardState) says so. Returns the
    /// stream and its generation.
    async fn outbound(
        &self,
        shard: Arc<Shard>,
        hello: Option<WireMessage>,
        stream: u64,
        open: bool,
    ) -> (OutboundStream, u64) {
        let mut gen_now = 0;
        shard.generation.send_modify(|v| {
            *v += 1;
            gen_now = *v;
        });
        // Held by the previous outbound stream until it is dropped (its tally is then final).
        let queue = Arc::clone(&shard.rx).lock_owned().await;
        let reports = {
            let mut st = shard.state.lock().expect("shard lock");
            st.end_stream();
            st.owner = gen_now;
            st.stream = stream;
            st.open = if open { gen_now } else { 0 };
            // A predecessor that has not ended yet leaves no binding behind.
            st.session.disconnected(|e| self.apply(shard.index, &e));
            st.session.connected(Instant::now());
            // A peer without tokens knows no tallies (the dialler learns it only from the
            // answer: an older server ignores them).
            if stream == 0 {
                Vec::new()
            } else {
                st.reports.tallies()
            }
        };
        let mut gen_rx = shard.generation.subscribe();
        let out = OutboundStream {
            pending: hello,
            reports: reports.into_iter().map(tally_msg).collect(),
            generation: gen_now,
            stream,
            sent: Sent::default(),
            shard,
            queue,
            superseded: Box::pin(async move { superseded(&mut gen_rx, gen_now).await }),
            combine: self.opts.legacy == Legacy::None,
        };
        (out, gen_now)
    }

    /// Runs one connected stream's inbound side until it ends; the shard is connected meanwhile.
    async fn on_stream(
        self: Arc<Self>,
        peer: Arc<Peer>,
        shard: Arc<Shard>,
        mut inbound: Inbound,
        generation: u64,
    ) {
        tracing::info!(peer = %peer.ip, shard = shard.index, "wire stream up");
        loop {
            match inbound.message().await {
                Ok(Some(m)) => self.on_message(&peer, &shard, m),
                Ok(None) => break,
                Err(s) => {
                    tracing::info!(peer = %peer.ip, shard = shard.index, error = %s.message(), "wire stream failed");
                    break;
                }
            }
        }
        // End our side of the stream too, and unbind, unless a successor owns the shard now
        // (then this never ends or unbinds the successor's stream).
        let mine = {
            let mut st = shard.state.lock().expect("shard lock");
            let mine = st.owner == generation;
            if mine {
                st.end_stream();
                st.session.disconnected(|e| self.apply(shard.index, &e));
            }
            mine
        };
        if mine {
            shard.generation.send_modify(|g| *g += 1);
            shard.connected.store(false, Ordering::Release);
        }
        tracing::info!(peer = %peer.ip, shard = shard.index, "wire stream down");
    }

    fn on_message(&self, peer: &Peer, shard: &Shard, m: WireMessage) {
        if let Some(Body::Tally(t)) = &m.body {
            let t = Tally {
                stream: t.stream,
                id: WireId(t.wire_id),
                frames: t.frames,
            };
            let lost = shard.state.lock().expect("shard lock").ledger.settle(t);
            if lost > 0 {
                tracing::info!(peer = %peer.ip, shard = shard.index, wire_id = t.id.0, lost, "frames lost with a dead stream");
            }
            return;
        }
        for msg in session_msg(m) {
            match msg {
                Message::Batch(b) => self.deliver(peer, shard, b),
                control => {
                    let queued = {
                        let mut st = shard.state.lock().expect("shard lock");
                        st.session.handle(control, Instant::now(), |e| {
                            self.apply(shard.index, &e);
                            Ok(())
                        });
                        st.session.pending_control() > 0
                    };
                    if queued {
                        shard.wake.wake();
                    }
                }
            }
        }
    }

    /// Legacy unary design: sends one record in its own `Send` call and waits for the answer.
    /// Returns whether the peer took it.
    pub(crate) async fn unary_send(&self, peer: IpAddr, shard: u32, batch: Bytes) -> bool {
        let client = {
            let mut clients = self.unary.lock().expect("unary lock");
            match clients.get(&peer) {
                Some(c) => c.clone(),
                None => {
                    let Ok(ep) = self.endpoint(peer) else {
                        return false;
                    };
                    let c = WireClient::new(ep.connect_lazy());
                    clients.insert(peer, c.clone());
                    c
                }
            }
        };
        let mut client = client;
        client
            .send(Request::new(UnaryFrame { shard, batch }))
            .await
            .is_ok()
    }

    /// Legacy unary design: a frame from a peer node, checked as a stream's would be (the caller
    /// must be a peer of one of our halves, and wire ids resolve only through that peer's binds).
    fn unary_receive(&self, request: Request<UnaryFrame>) -> Result<Ack, Status> {
        if self.opts.legacy != Legacy::Unary {
            return Err(Status::unimplemented(
                "Send is the legacy unary design; this node does not run it",
            ));
        }
        // A dual-stack listener (`[::]` with IPV6_V6ONLY off) sees IPv4 peers as ::ffff:a.b.c.d.
        let remote = request
            .remote_addr()
            .map(|a| a.ip().to_canonical())
            .ok_or_else(|| Status::permission_denied("no remote address"))?;
        if !self.allowed.lock().expect("allowed lock").contains(&remote) {
            return Err(Status::permission_denied(format!(
                "node {remote} carries no wire with this node"
            )));
        }
        let frame = request.into_inner();
        let peer = self
            .peers
            .lock()
            .expect("peers lock")
            .get(&remote)
            .cloned()
            .ok_or_else(|| Status::failed_precondition("no stream with this node yet"))?;
        let shard = peer
            .shards
            .get(frame.shard as usize)
            .cloned()
            .ok_or_else(|| Status::invalid_argument("shard out of range"))?;
        self.deliver(&peer, &shard, frame.batch);
        Ok(Ack {})
    }
}

/// A stream's outbound messages, polled directly by tonic's HTTP/2 body (no task or channel in
/// between): the Hello, then at every poll the session's control first and only then data from
/// the shard's queue, combining batches already queued into one message. Ends when a newer
/// stream takes over the shard.
///
/// A named type rather than a combinator chain: tonic's client needs the request stream to be
/// provably `Send`, which rustc cannot show for `async` closures inside `unfold`.
pub(crate) struct OutboundStream {
    pending: Option<WireMessage>,
    /// Tallies of ended streams, sent after the Hello.
    reports: std::collections::VecDeque<WireMessage>,
    generation: u64,
    /// This stream's token, and the frames it was handed per wire id (see [`crate::tally`]);
    /// given to the shard's reports when it is dropped.
    stream: u64,
    sent: Sent,
    shard: Arc<Shard>,
    queue: tokio::sync::OwnedMutexGuard<mpsc::Receiver<super::node::Queued>>,
    superseded: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// Combine queued batches into one message (not in a legacy design: one frame per message).
    combine: bool,
}

impl Stream for OutboundStream {
    type Item = Outgoing;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        if self.superseded.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Some(m) = self.pending.take() {
            return Poll::Ready(Some(Outgoing::Control(m)));
        }
        if let Some(m) = self.reports.pop_front() {
            return Poll::Ready(Some(Outgoing::Control(m)));
        }
        // Register before looking, so control queued (or the stream opened) after the look
        // wakes us.
        self.shard.wake.register(cx.waker());
        let (control, open) = {
            let mut st = self.shard.state.lock().expect("shard lock");
            (st.session.poll_transmit(), st.open == self.generation)
        };
        if let Some(c) = control {
            return Poll::Ready(Some(Outgoing::Control(control_msg(c))));
        }
        if !open {
            return Poll::Pending;
        }
        let first = match self.queue.poll_recv(cx) {
            // The permit goes here: the half may queue another batch.
            Poll::Ready(Some((b, _permit))) => b,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let mut size = first.len();
        let mut batch = vec![first];
        // Combine what is already queued, up to a bound: no waiting for more.
        while size < MESSAGE_BYTES && self.combine {
            match self.queue.try_recv() {
                Ok((b, _permit)) => {
                    size += b.len();
                    batch.push(b);
                }
                Err(_) => break,
            }
        }
        if self.stream != 0 {
            for b in &batch {
                self.sent.count_batch(b);
            }
        }
        Poll::Ready(Some(Outgoing::Batches(batch)))
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        // Before the queue guard (a field) is released: the next stream's reports include this.
        let sent = std::mem::take(&mut self.sent);
        if let Ok(mut st) = self.shard.state.lock() {
            st.reports.finish(self.stream, sent);
        }
    }
}

/// Resolves when a newer stream took over the shard (its generation moved past `mine`).
async fn superseded(rx: &mut watch::Receiver<u64>, mine: u64) {
    loop {
        if *rx.borrow_and_update() != mine {
            return;
        }
        if rx.changed().await.is_err() {
            // The shard is gone: its queue ends the stream instead.
            std::future::pending::<()>().await;
        }
    }
}

/// The path of the `Carry` method, which [`CarryServer`] serves with the raw codec.
pub const CARRY_PATH: &str = "/meshnet.v1.Wire/Carry";

/// Starts a `Carry` call on `channel` whose request body is `source`'s messages (encoded by
/// [`super::codec`], no copy of a batch); returns the response's messages.
///
/// # Errors
/// The call failed or the server refused it (its status).
pub async fn call_carry<S>(
    mut channel: tonic::transport::Channel,
    source: S,
) -> Result<Inbound, Status>
where
    S: Stream<Item = Outgoing> + Send + Unpin + 'static,
{
    use tower::{Service, ServiceExt};
    let req = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(CARRY_PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(OutboundBody::new(source, false)))
        .map_err(|e| Status::internal(format!("building the Carry request: {e}")))?;
    let ready = channel
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let resp = ready
        .call(req)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if resp.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "Carry answered HTTP {}",
            resp.status()
        )));
    }
    // A trailers-only answer: the call was refused.
    if let Some(s) = Status::from_header_map(resp.headers())
        && s.code() != tonic::Code::Ok
    {
        return Err(s);
    }
    Ok(Inbound::new(resp.into_body(), MAX_MESSAGE))
}

/// The node's `Wire` service as tonic serves it: `Carry` with the raw codec (see
/// [`super::codec`]), every other method by the generated server.
#[derive(Clone)]
struct CarryServer {
    node: Arc<WireNode>,
    fallback: WireServer<WireService>,
}

impl tonic::server::NamedService for CarryServer {
    const NAME: &'static str = "meshnet.v1.Wire";
}

impl tower::Service<http::Request<tonic::body::Body>> for CarryServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != CARRY_PATH {
            let mut fallback = self.fallback.clone();
            return Box::pin(async move { fallback.call(req).await });
        }
        let node = Arc::clone(&self.node);
        Box::pin(async move {
            let req = Request::from_http(req);
            let remote = req.remote_addr();
            let inbound = Inbound::new(req.into_inner(), MAX_MESSAGE);
            Ok(match accept(&node, remote, inbound).await {
                Ok(out) => {
                    let mut resp =
                        http::Response::new(tonic::body::Body::new(OutboundBody::new(out, true)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    resp
                }
                Err(s) => s.into_http(),
            })
        })
    }
}

/// A `Carry` stream from a peer node: checks its Hello, takes over the shard, answers.
async fn accept(
    node: &Arc<WireNode>,
    remote: Option<SocketAddr>,
    mut inbound: Inbound,
) -> Result<OutboundStream, Status> {
    let hello = match inbound.message().await? {
        Some(WireMessage {
            body: Some(Body::Hello(h)),
        }) => h,
        _ => {
            return Err(Status::invalid_argument(
                "the first message must be a Hello",
            ));
        }
    };
    let claimed: IpAddr = hello
        .node_ip
        .parse()
        .map_err(|_| Status::invalid_argument("Hello.node_ip is not an IP address"))?;
    // As above: compare the canonical form (an IPv4 peer on a dual-stack listener).
    if remote.map(|r| r.ip().to_canonical()) != Some(claimed) {
        return Err(Status::permission_denied(format!(
            "Hello says node {claimed}, but the connection comes from {remote:?}"
        )));
    }
    if !node
        .allowed
        .lock()
        .expect("allowed lock")
        .contains(&claimed)
    {
        return Err(Status::permission_denied(format!(
            "node {claimed} carries no wire with this node"
        )));
    }
    if hello.shards == 0 || hello.shards > MAX_SHARDS || hello.shard >= hello.shards {
        return Err(Status::invalid_argument("Hello.shard/shards out of range"));
    }
    let peer = node.peer(claimed);
    let ours = peer.shards.len() as u32;
    let agreed = hello.shards.min(ours);
    node.set_active(&peer, agreed);
    let Some(shard) = peer
        .shards
        .get(hello.shard as usize)
        .filter(|s| s.index < agreed)
        .cloned()
    else {
        return Err(Status::failed_precondition(format!(
            "shard {} unknown: {agreed} shards agreed with {claimed} (it runs {}, this node {ours})",
            hello.shard, hello.shards
        )));
    };
    // A live stream is never displaced: a second connection for a busy shard is refused
    // (a restarted peer's old stream ends at once with its TCP connection, or within the
    // keepalive timeout, and the peer's dialler retries).
    if shard
        .connected
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(Status::already_exists(format!(
            "shard {} of node {claimed} already has a live stream",
            hello.shard
        )));
    }
    peer.counters.connects.fetch_add(1, Ordering::Relaxed);
    // The dialler's token, echoed (0 from an older dialler: its stream is not accounted).
    let answer = super::grpc::hello(node.opts.me, shard.index, ours, hello.stream);
    let (out, generation) = node
        .outbound(Arc::clone(&shard), Some(answer), hello.stream, true)
        .await;
    let (n2, p2, s2) = (Arc::clone(node), Arc::clone(&peer), Arc::clone(&shard));
    tokio::spawn(n2.on_stream(p2, s2, inbound, generation));
    Ok(out)
}

/// The server side: accepts streams from peer nodes.
#[derive(Clone, Debug)]
pub struct WireService(pub Arc<WireNode>);

#[tonic::async_trait]
impl Wire for WireService {
    type CarryStream = Pin<Box<dyn Stream<Item = Result<WireMessage, Status>> + Send>>;

    async fn carry(
        &self,
        _: Request<Streaming<WireMessage>>,
    ) -> Result<Response<Self::CarryStream>, Status> {
        // Never reached: `CarryServer` serves this path with the raw codec.
        Err(Status::unimplemented(
            "Carry is served by the wire's own codec",
        ))
    }

    /// Legacy unary design only (see [`Legacy::Unary`]).
    async fn send(&self, request: Request<UnaryFrame>) -> Result<Response<Ack>, Status> {
        self.0.unary_receive(request).map(Response::new)
    }
}
