#![allow(clippy::unwrap_used)]

use super::*;
use meshnet_proto::v1::{Batches, Bind, Hello, wire_message::Body};

fn batches(v: &[Bytes]) -> WireMessage {
    WireMessage {
        body: Some(Body::Batches(Batches { batch: v.to_vec() })),
    }
}

/// A Hello of node 192.0.2.1 for shard 1 of 2 on stream `stream`.
fn hello(stream: u64) -> WireMessage {
    WireMessage {
        body: Some(Body::Hello(Hello {
            node_ip: "192.0.2.1".into(),
            shard: 1,
            shards: 2,
            version: "x".into(),
            stream,
        })),
    }
}

/// What tonic's prost codec puts on the stream for `m`.
fn tonic_bytes(m: &WireMessage) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut v = vec![0u8];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

fn sample_batches() -> Vec<Vec<Bytes>> {
    vec![
        vec![],
        vec![Bytes::new()],
        vec![Bytes::from_static(b"one")],
        vec![
            Bytes::from(vec![0xab; 200]),
            Bytes::from(vec![0xcd; 70_000]),
        ],
        vec![
            Bytes::from(vec![1; 127]),
            Bytes::from(vec![2; 128]),
            Bytes::new(),
        ],
    ]
}

#[test]
fn batches_encode_exactly_as_prost_does() {
    for v in sample_batches() {
        assert_eq!(
            encode_to_vec(Outgoing::Batches(v.clone())),
            tonic_bytes(&batches(&v)),
            "{} batches",
            v.len()
        );
    }
    let hello = hello(9);
    assert_eq!(
        encode_to_vec(Outgoing::Control(hello.clone())),
        tonic_bytes(&hello)
    );
}

#[test]
fn batches_are_not_copied_on_the_way_out() {
    let big = Bytes::from(vec![7u8; 4096]);
    let mut out = VecDeque::new();
    encode_batches(vec![big.clone(), big.clone()], &mut out);
    let sent: Vec<_> = out.iter().filter(|c| c.len() == 4096).collect();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|c| c.as_ptr() == big.as_ptr()));
    assert!(out.iter().all(|c| !c.is_empty()));
}

#[test]
fn reader_takes_messages_split_anywhere() {
    let msgs: Vec<WireMessage> = sample_batches()
        .iter()
        .map(|v| batches(v))
        .chain([WireMessage {
            body: Some(Body::Bind(Bind {
                wire_id: 9,
                namespace: "ns".into(),
                uid: -3,
                reply: true,
            })),
        }])
        .collect();
    let stream: Vec<u8> = msgs.iter().flat_map(tonic_bytes).collect();
    for cut in [1, 2, 5, 6, 7, 100, 4096, stream.len()] {
        let mut r = MessageReader::new(1 << 20);
        let mut got = Vec::new();
        for chunk in stream.chunks(cut) {
            r.push(Bytes::copy_from_slice(chunk));
            while let Some(m) = r.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs, "chunks of {cut}");
        assert_eq!(r.pending(), 0);
    }
}

#[test]
fn a_batch_within_one_chunk_is_a_slice_of_it() {
    // As the sender's chunks arrive: header chunk, then each batch in its own DATA frame.
    let v = vec![Bytes::from(vec![5u8; 3000]), Bytes::from(vec![6u8; 100])];
    let mut chunks = VecDeque::new();
    encode_batches(v.clone(), &mut chunks);
    let received: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    let mut r = MessageReader::new(1 << 20);
    for c in &received {
        r.push(c.clone());
    }
    let Some(Body::Batches(b)) = r.next_message().unwrap().unwrap().body else {
        panic!("not batches");
    };
    assert_eq!(b.batch, v);
    for (got, chunk) in b
        .batch
        .iter()
        .zip(received.iter().filter(|c| c.len() >= 100))
    {
        assert_eq!(got.as_ptr(), chunk.as_ptr(), "decoded without a copy");
    }
}

#[test]
fn bad_streams_are_refused_with_the_reason() {
    let mut r = MessageReader::new(1 << 20);
    r.push(Bytes::from_static(&[1, 0, 0, 0, 0]));
    assert_eq!(r.next_message(), Err(FrameError::Compressed(1)));

    let mut r = MessageReader::new(100);
    r.push(Bytes::from_static(&[0, 0, 0, 0, 101]));
    assert_eq!(
        r.next_message(),
        Err(FrameError::TooLarge { len: 101, max: 100 })
    );

    let mut r = MessageReader::new(100);
    r.push(Bytes::from_static(&[0, 0, 0, 0, 2, 0x22, 0x05]));
    assert!(matches!(r.next_message(), Err(FrameError::Decode(_))));

    // A message not yet whole is waited for, not refused.
    let mut r = MessageReader::new(100);
    r.push(Bytes::from_static(&[0, 0, 0, 0, 3, 0x22]));
    assert_eq!(r.next_message(), Ok(None));
    assert_eq!(r.pending(), 6);
}

#[test]
fn chunk_buf_reads_across_chunks() {
    let mut b = ChunkBuf::default();
    b.push(Bytes::from_static(b"abc"));
    b.push(Bytes::new());
    b.push(Bytes::from_static(b"defg"));
    assert_eq!(b.remaining(), 7);
    let mut p = [0u8; 5];
    assert!(b.peek(&mut p));
    assert_eq!(&p, b"abcde");
    assert_eq!(b.copy_to_bytes(2), Bytes::from_static(b"ab"));
    assert_eq!(b.copy_to_bytes(3), Bytes::from_static(b"cde"));
    b.advance(1);
    assert_eq!(b.chunk(), b"g");
    assert_eq!(b.copy_to_bytes(1), Bytes::from_static(b"g"));
    assert_eq!(b.remaining(), 0);
    assert!(!b.peek(&mut [0u8; 1]));
}

/// `WireMessage` and `Hello` as a version without stream accounting declared them (fields 1-4).
mod before_tallies {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Hello {
        #[prost(string, tag = "1")]
        pub node_ip: String,
        #[prost(uint32, tag = "2")]
        pub shard: u32,
        #[prost(uint32, tag = "3")]
        pub shards: u32,
        #[prost(string, tag = "4")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WireMessage {
        #[prost(message, optional, tag = "1")]
        pub hello: Option<Hello>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub bind: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub unbind: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub batches: Option<Vec<u8>>,
    }
}

#[test]
fn a_peer_without_stream_accounting_reads_the_token_and_tallies_as_nothing() {
    use meshnet_proto::v1::Tally;
    use prost::Message as _;
    let hello = hello(0xdead_beef);
    let old = before_tallies::WireMessage::decode(hello.encode_to_vec().as_slice()).unwrap();
    let h = old.hello.unwrap();
    assert_eq!((h.node_ip.as_str(), h.shard, h.shards), ("192.0.2.1", 1, 2));
    let tally = WireMessage {
        body: Some(Body::Tally(Tally {
            stream: 7,
            wire_id: 3,
            frames: 1000,
        })),
    };
    let old = before_tallies::WireMessage::decode(tally.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        old,
        before_tallies::WireMessage::default(),
        "an empty message"
    );
    // And our reader takes a Tally whole, as any control message.
    let mut r = MessageReader::new(crate::transport::MAX_MESSAGE);
    r.push(Bytes::from(encode_to_vec(Outgoing::Control(tally.clone()))));
    assert_eq!(r.next_message().unwrap(), Some(tally));
}
