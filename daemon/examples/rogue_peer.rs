//! A misbehaving peer for the node-to-node API, used by the lab's abuse tests: run it inside a
//! node's namespace (`ip netns exec NODE rogue_peer TARGET MODE`) so it speaks from a node
//! address. Modes:
//! * `malformed` — a valid Hello, then batches that do not decode;
//! * `foreign` — batches for wire ids never bound, and a Bind for a link this node is not part of;
//! * `oversize` — a message over the server's size limit, and a batch record claiming a huge frame;
//! * `streams` — 1000 streams at once, each sending a Hello, then holding them open;
//! * `stall` — a stream that never reads what the server sends.
//!
//! Prints one line per mode with what the server answered. Exits 0 unless it cannot run at all.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use meshnet_proto::v1::wire_client::WireClient;
use meshnet_proto::v1::{Batches, Bind, Hello, WireMessage, wire_message::Body};

fn hello(me: &str, shard: u32, shards: u32) -> WireMessage {
    WireMessage {
        body: Some(Body::Hello(Hello {
            node_ip: me.to_string(),
            shard,
            shards,
            version: "rogue".into(),
            // Like a peer of a version without stream accounting.
            stream: 0,
        })),
    }
}

fn batches(b: Vec<Bytes>) -> WireMessage {
    WireMessage {
        body: Some(Body::Batches(Batches { batch: b })),
    }
}

/// A record header claiming `len` bytes of frame, followed by `actual` bytes.
fn record(wire: u32, len: u32, actual: usize) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32_le(wire);
    b.put_u32_le(len);
    b.put_slice(&[0u8; 10]);
    b.put_slice(&vec![0xab; actual]);
    b.freeze()
}

async fn client(target: &str) -> WireClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .expect("target")
        .connect()
        .await
        .expect("connect");
    WireClient::new(ch)
}

/// Sends `msgs` on one stream and reports how the call ended within `wait`.
async fn send(target: &str, msgs: Vec<WireMessage>, wait: Duration) -> String {
    let mut c = client(target).await;
    let out = futures::stream::iter(msgs).chain(futures::stream::pending());
    match tokio::time::timeout(wait, c.carry(out)).await {
        Err(_) => "no answer (stream held open)".into(),
        Ok(Err(s)) => format!("refused: {:?} {}", s.code(), s.message()),
        Ok(Ok(resp)) => {
            // Read what the server sends until it ends the stream or `wait` has passed (a
            // server re-announces its unbound halves now and then, so it never goes quiet).
            let mut inbound = resp.into_inner();
            let mut got = 0;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, inbound.message()).await {
                    Ok(Ok(Some(_))) => got += 1,
                    Ok(Ok(None)) => return format!("accepted ({got} messages back), then closed"),
                    Ok(Err(s)) => {
                        return format!(
                            "accepted ({got} messages back), then failed: {:?} {}",
                            s.code(),
                            s.message()
                        );
                    }
                    Err(_) => return format!("accepted ({got} messages back), stream held open"),
                }
            }
        }
    }
}

use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (target, mode, me) = match args.as_slice() {
        [_, t, m, me] => (t.clone(), m.clone(), me.clone()),
        _ => {
            eprintln!("usage: rogue_peer TARGET:PORT MODE MY_NODE_IP");
            std::process::exit(2);
        }
    };
    let wait = Duration::from_secs(2);
    // Shard 0 (every daemon has one); the server refuses it while a real stream holds it.
    let shards = 2;
    match mode.as_str() {
        "malformed" => {
            let junk = vec![
                Bytes::from_static(b"\x01\x02\x03"),
                record(1, 40, 3),
                Bytes::from(vec![0xff; 100]),
            ];
            println!(
                "malformed: {}",
                send(&target, vec![hello(&me, 0, shards), batches(junk)], wait).await
            );
        }
        "foreign" => {
            let bind = WireMessage {
                body: Some(Body::Bind(Bind {
                    wire_id: 7,
                    namespace: "not-ours".into(),
                    uid: 4242,
                    reply: false,
                })),
            };
            let frames = (0..100).map(|i| record(1000 + i, 60, 60)).collect();
            println!(
                "foreign: {}",
                send(
                    &target,
                    vec![hello(&me, 0, shards), bind, batches(frames)],
                    wait
                )
                .await
            );
        }
        "oversize" => {
            let huge = Bytes::from(vec![0u8; 8 * 1024 * 1024]);
            println!(
                "oversize message: {}",
                send(
                    &target,
                    vec![hello(&me, 0, shards), batches(vec![huge])],
                    wait
                )
                .await
            );
            let claim = vec![record(1, 10_000_000, 100)];
            println!(
                "oversize record: {}",
                send(&target, vec![hello(&me, 0, shards), batches(claim)], wait).await
            );
        }
        "streams" => {
            let c = client(&target).await;
            let mut held = Vec::new();
            let mut refused = 0;
            for i in 0..1000u32 {
                let mut c = c.clone();
                let out = futures::stream::iter(vec![hello(&me, i % shards, shards)])
                    .chain(futures::stream::pending());
                match tokio::time::timeout(wait, c.carry(out)).await {
                    Ok(Ok(r)) => held.push(r),
                    _ => refused += 1,
                }
            }
            println!(
                "streams: {} open, {} refused or timed out",
                held.len(),
                refused
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        "stall" => {
            let mut c = client(&target).await;
            let out = futures::stream::iter(vec![hello(&me, 0, shards)])
                .chain(futures::stream::pending());
            let r = c.carry(out).await;
            // Never read the response stream.
            println!(
                "stall: {}",
                if r.is_ok() {
                    "accepted; not reading"
                } else {
                    "refused"
                }
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(r);
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}
