//! The wire's own `Carry` codec (`transport::codec`: no copy of a batch, no tonic codec) keeps
//! the gRPC wire format: a plain tonic client and server on the generated types talk to it, in
//! both directions, on loopback.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use meshnet_proto::v1::wire_client::WireClient;
use meshnet_proto::v1::wire_server::{Wire, WireServer};
use meshnet_proto::v1::{Ack, Batches, Hello, UnaryFrame, WireMessage, wire_message::Body};
use meshnet_wire::WireId;
use meshnet_wire::batch::BatchEncoder;
use meshnet_wire::transport::codec::Outgoing;
use meshnet_wire::transport::grpc::{call_carry, serve};
use meshnet_wire::transport::{WireNode, WireOptions};
use tonic::{Request, Response, Status, Streaming};

fn hello(ip: &str, shards: u32) -> WireMessage {
    WireMessage {
        body: Some(Body::Hello(Hello {
            node_ip: ip.into(),
            shard: 0,
            shards,
            version: "plain-tonic".into(),
            // An older peer: no stream token, so no tallies.
            stream: 0,
        })),
    }
}

/// A batch of `n` records of wire `id`, 60-byte frames.
fn batch(id: u32, n: usize) -> Bytes {
    let mut enc = BatchEncoder::new(1 << 20);
    for i in 0..n {
        let mut frame = [0u8; 10 + 60];
        frame[10] = i as u8;
        enc.push(WireId(id), &frame[..10].try_into().unwrap(), &frame[10..])
            .unwrap();
    }
    enc.finish()
}

fn batches(b: Vec<Bytes>) -> WireMessage {
    WireMessage {
        body: Some(Body::Batches(Batches { batch: b })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tonic_client_talks_to_the_wire_server() {
    let node = WireNode::new(WireOptions::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        std::sync::Arc::clone(&node),
        listener,
        std::future::pending(),
    ));
    let mut client = WireClient::connect(format!("http://{addr}")).await.unwrap();

    // Refused (no wire with 127.0.0.1 yet): the status reaches the plain client.
    let Err(refused) = client
        .carry(futures::stream::iter([hello("127.0.0.1", 1)]))
        .await
    else {
        panic!("a node without a wire toward us is refused");
    };
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    node.set_allowed(HashSet::from([IpAddr::V4(Ipv4Addr::LOCALHOST)]));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("127.0.0.1", 1)).await.unwrap();
    let mut inbound = client
        .carry(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match inbound.message().await.unwrap() {
        Some(WireMessage {
            body: Some(Body::Hello(h)),
        }) => assert!(h.shards >= 1, "{h:?}"),
        other => panic!("the server's first message is not a Hello: {other:?}"),
    }
    // Frames for a wire id nobody bound: decoded (all 7 counted), none malformed.
    tx.send(batches(vec![batch(77, 3), batch(77, 4)]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = node.peer_stats();
        let s = stats
            .iter()
            .find(|s| s.peer == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("the peer is known once its stream is accepted");
        if s.batch_frames == 7 {
            assert_eq!((s.batches, s.malformed), (2, 0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server decoded {} of 7 frames",
            s.batch_frames
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain tonic `Wire` server that answers a Hello and echoes every other message.
struct Echo;

#[tonic::async_trait]
impl Wire for Echo {
    type CarryStream = Pin<Box<dyn Stream<Item = Result<WireMessage, Status>> + Send>>;

    async fn carry(
        &self,
        request: Request<Streaming<WireMessage>>,
    ) -> Result<Response<Self::CarryStream>, Status> {
        let inbound = request.into_inner();
        let out = inbound.map(|m| {
            let m = m?;
            Ok(match m.body {
                Some(Body::Hello(_)) => hello("127.0.0.3", 1),
                _ => m,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn send(&self, _: Request<UnaryFrame>) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_client_talks_to_a_plain_tonic_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WireServer::new(Echo).max_decoding_message_size(8 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A big batch (split over several HTTP/2 frames by a 16 KiB-frame peer), small ones, an
    // empty message of batches.
    let sent = vec![
        batches(vec![batch(1, 2000), batch(2, 1)]),
        batches(vec![]),
        batches(vec![batch(3, 5)]),
    ];
    let outgoing: Vec<Outgoing> = std::iter::once(Outgoing::Control(hello("127.0.0.1", 1)))
        .chain(sent.iter().map(|m| match &m.body {
            Some(Body::Batches(b)) => Outgoing::Batches(b.batch.clone()),
            _ => unreachable!(),
        }))
        .collect();
    let source = futures::stream::iter(outgoing);
    let mut inbound = call_carry(channel, source).await.unwrap();
    assert_eq!(
        inbound.message().await.unwrap(),
        Some(hello("127.0.0.3", 1))
    );
    for m in &sent {
        assert_eq!(inbound.message().await.unwrap().as_ref(), Some(m));
    }
    // The request ended, so did the echo: a clean end (grpc-status 0 in the trailers).
    assert_eq!(inbound.message().await.unwrap(), None);
}
