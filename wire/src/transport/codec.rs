//! The `Carry` stream's gRPC framing, below tonic's codec: no userspace copy of a payload byte
//! on either side.
//!
//! tonic's codec copies every byte twice: prost encodes a message into the codec's buffer, and
//! the decoder copies each HTTP/2 DATA frame into its own buffer before prost reads it. Here the
//! stream's body is ours (an [`http_body::Body`] of `Bytes` chunks under tonic's transport):
//!
//! * **Out**: a message of batches is a small header chunk (`[0][length u32 BE]` gRPC prefix,
//!   the protobuf tag and length of `WireMessage.batches` and of its first `batch`) followed by
//!   each batch's own `Bytes` (with a tag chunk between batches): h2 chains large chunks into its
//!   `writev` instead of copying them. Control messages (Hello, Bind, Unbind) are small and go
//!   through prost.
//! * **In**: the DATA chunks h2 hands over (slices of its read buffer) are queued in a
//!   [`ChunkBuf`], whose `copy_to_bytes` is a `Bytes::slice` whenever the bytes asked for lie in
//!   one chunk; prost decodes `bytes` fields with `copy_to_bytes`, so a batch that arrived in one
//!   DATA frame is never copied. (One that straddles two DATA frames is copied once, into one
//!   buffer of its own size.)
//!
//! The bytes on the wire are exactly the gRPC encoding of the generated `WireMessage` (field
//! numbers, wire types, minimal varints), so a plain tonic client or server on the generated
//! types interoperates with this one (`tests` below and `wire/tests/grpc_interop.rs`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use http_body::Frame;
use meshnet_proto::v1::WireMessage;
use prost::Message as _;

/// The gRPC message prefix: a compression flag and a big-endian length.
pub const PREFIX_LEN: usize = 5;
/// `WireMessage.batches` (field 4) and `Batches.batch` (field 1), both length-delimited.
const TAG_BATCHES: u8 = (4 << 3) | 2;
const TAG_BATCH: u8 = (1 << 3) | 2;
/// Most bytes of a varint-encoded `u32` length.
const MAX_VARINT: usize = 5;

/// One outbound message as the stream's source yields it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A control message (Hello, Bind, Unbind): encoded by prost (a few dozen bytes).
    Control(WireMessage),
    /// `WireMessage { batches: Batches { batch } }`, encoded around the batches without copying
    /// them.
    Batches(Vec<Bytes>),
}

/// Why the inbound bytes are not a `WireMessage` stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The compression flag is set: this stream never negotiates compression.
    #[error("compressed gRPC message (flag {0}); compression is not negotiated on the wire")]
    Compressed(u8),
    /// The length prefix exceeds the largest message accepted.
    #[error("gRPC message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The message is not a valid `WireMessage`.
    #[error("undecodable WireMessage: {0}")]
    Decode(String),
    /// The stream ended inside a message.
    #[error("stream ended {0} bytes into an unfinished gRPC message")]
    Truncated(usize),
}

fn varint_len(v: usize) -> usize {
    prost::encoding::encoded_len_varint(v as u64)
}

fn put_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    // The caller bounds messages far below 4 GiB (MAX_MESSAGE / MESSAGE_BYTES).
    out.put_u32(u32::try_from(len).expect("gRPC message length fits in u32"));
}

/// A control message with its gRPC prefix, as one chunk.
pub fn encode_control(m: &WireMessage) -> Bytes {
    let len = m.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX_LEN + len);
    put_prefix(&mut out, len);
    m.encode(&mut out)
        .expect("BytesMut grows: encoding cannot run out of room");
    out.freeze()
}

/// Appends the chunks of `WireMessage { batches: Batches { batch: batches } }` with its gRPC
/// prefix to `out`: small header chunks and the batches themselves (not copied). Empty
/// batches are encoded too (a `bytes` field may be empty); no chunk pushed is empty.
pub fn encode_batches(batches: Vec<Bytes>, out: &mut VecDeque<Bytes>) {
    let inner: usize = batches
        .iter()
        .map(|b| 1 + varint_len(b.len()) + b.len())
        .sum();
    let outer = 1 + varint_len(inner) + inner;
    let mut head = BytesMut::with_capacity(PREFIX_LEN + 1 + MAX_VARINT + 1 + MAX_VARINT);
    put_prefix(&mut head, outer);
    head.put_u8(TAG_BATCHES);
    prost::encoding::encode_varint(inner as u64, &mut head);
    for b in batches {
        head.put_u8(TAG_BATCH);
        prost::encoding::encode_varint(b.len() as u64, &mut head);
        out.push_back(head.split().freeze());
        if !b.is_empty() {
            out.push_back(b);
        }
    }
    if !head.is_empty() {
        out.push_back(head.freeze());
    }
}

/// The bytes one `Outgoing` puts on the stream (for tests and tools: the body does the same
/// chunk by chunk).
pub fn encode_to_vec(m: Outgoing) -> Vec<u8> {
    let mut chunks = VecDeque::new();
    match m {
        Outgoing::Control(c) => chunks.push_back(encode_control(&c)),
        Outgoing::Batches(b) => encode_batches(b, &mut chunks),
    }
    chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// A queue of received chunks read as one buffer. `copy_to_bytes` slices a chunk when the bytes
/// asked for lie within it (no copy) and copies only across a chunk boundary.
#[derive(Debug, Default)]
pub struct ChunkBuf {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl ChunkBuf {
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Copies the first `dst.len()` bytes out without consuming them; false if fewer are queued.
    fn peek(&self, dst: &mut [u8]) -> bool {
        if self.len < dst.len() {
            return false;
        }
        let mut at = 0;
        for c in &self.chunks {
            let n = (dst.len() - at).min(c.len());
            dst[at..at + n].copy_from_slice(&c[..n]);
            at += n;
            if at == dst.len() {
                break;
            }
        }
        true
    }
}

impl Buf for ChunkBuf {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of a ChunkBuf");
        self.len -= cnt;
        while cnt > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("len counts the chunks' bytes");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.len, "copy_to_bytes past the end of a ChunkBuf");
        if len == 0 {
            return Bytes::new();
        }
        let front = self.chunks.front_mut().expect("len > 0: a chunk is queued");
        if len <= front.len() {
            self.len -= len;
            let b = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return b;
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

/// Cuts `WireMessage`s out of the received chunks (pure: the caller pushes chunks).
#[derive(Debug)]
pub struct MessageReader {
    buf: ChunkBuf,
    max: usize,
}

impl MessageReader {
    /// A reader refusing messages longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: ChunkBuf::default(),
            max,
        }
    }

    pub fn push(&mut self, chunk: Bytes) {
        self.buf.push(chunk);
    }

    /// Bytes of an unfinished message held.
    pub fn pending(&self) -> usize {
        self.buf.remaining()
    }

    /// The next whole message, `Ok(None)` until one has arrived.
    ///
    /// # Errors
    /// The message is compressed, too large or not a `WireMessage`; the stream cannot go on.
    pub fn next_message(&mut self) -> Result<Option<WireMessage>, FrameError> {
        let mut prefix = [0u8; PREFIX_LEN];
        if !self.buf.peek(&mut prefix) {
            return Ok(None);
        }
        if prefix[0] != 0 {
            return Err(FrameError::Compressed(prefix[0]));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.remaining() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        WireMessage::decode((&mut self.buf).take(len))
            .map(Some)
            .map_err(|e| FrameError::Decode(e.to_string()))
    }
}

/// The stream's outbound body: the messages of `source`, chunk by chunk; at the end, on the
/// server side, the `grpc-status: 0` trailers.
pub struct OutboundBody<S> {
    source: S,
    chunks: VecDeque<Bytes>,
    trailers: bool,
    done: bool,
}

impl<S> std::fmt::Debug for OutboundBody<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundBody")
            .field("queued_chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl<S> OutboundBody<S> {
    /// The body of a request (`trailers: false`) or of a response (`true`).
    pub fn new(source: S, trailers: bool) -> Self {
        Self {
            source,
            chunks: VecDeque::new(),
            trailers,
            done: false,
        }
    }
}

impl<S: Stream<Item = Outgoing> + Unpin> http_body::Body for OutboundBody<S> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(c) = this.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(c))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.source).poll_next(cx)) {
                Some(Outgoing::Control(m)) => this.chunks.push_back(encode_control(&m)),
                Some(Outgoing::Batches(b)) => encode_batches(b, &mut this.chunks),
                None => {
                    this.done = true;
                    if this.trailers {
                        let mut t = http::HeaderMap::new();
                        t.insert("grpc-status", http::HeaderValue::from_static("0"));
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
            }
        }
    }
}

/// The stream's inbound side: messages cut from a body's DATA chunks; the trailers' status
/// ends it.
#[derive(Debug)]
pub struct Inbound {
    body: tonic::body::Body,
    reader: MessageReader,
    ended: bool,
}

impl Inbound {
    pub fn new(body: tonic::body::Body, max: usize) -> Self {
        Self {
            body,
            reader: MessageReader::new(max),
            ended: false,
        }
    }

    /// The next message; `Ok(None)` when the peer ended the stream cleanly.
    ///
    /// # Errors
    /// The body failed, ended inside a message, carried bad bytes or a non-OK status.
    pub async fn message(&mut self) -> Result<Option<WireMessage>, tonic::Status> {
        loop {
            match self.reader.next_message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(tonic::Status::internal(e.to_string())),
            }
            if self.ended {
                return match self.reader.pending() {
                    0 => Ok(None),
                    n => Err(tonic::Status::internal(
                        FrameError::Truncated(n).to_string(),
                    )),
                };
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None => self.ended = true,
                Some(Err(s)) => return Err(s),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.reader.push(d),
                    Err(f) => {
                        self.ended = true;
                        if let Some(s) = f
                            .trailers_ref()
                            .and_then(tonic::Status::from_header_map)
                            .filter(|s| s.code() != tonic::Code::Ok)
                        {
                            return Err(s);
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
