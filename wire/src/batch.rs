//! The batch codec: many frames of many wires in one gRPC message body.
//!
//! # Format
//!
//! A batch is a concatenation of records, nothing before, between or after them:
//!
//! ```text
//! batch  = record*
//! record = wire_id   : u32 little-endian      the WireId agreed on this stream
//!          frame_len : u32 little-endian      length of `frame`, MIN_FRAME..=MAX_FRAME
//!          vnet_hdr  : 10 bytes               struct virtio_net_hdr, passed through unchanged
//!          frame     : frame_len bytes        the Ethernet frame, from the destination MAC on
//! ```
//!
//! So a record costs [`RECORD_HEADER_LEN`] = 18 bytes on top of its frame: 28 % at 64-byte
//! frames, 1.2 % at 1500, 0.03 % for a 64 KiB GSO super-frame. Bytes are not what limits small
//! frames (a relay does ~200 kpps, a few MB/s at 64 bytes); per-frame CPU is, and fixed-width
//! fields decode without branches or loops. Varints would save ~6 bytes per record and buy
//! non-canonical encodings to reject.
//!
//! Why this layout:
//! - `vnet_hdr` sits directly before `frame`, exactly as a TAP `read()` and an AF_PACKET
//!   `PACKET_VNET_HDR` receive deliver them, so an endpoint reads straight into the batch
//!   ([`BatchEncoder::push_with`]): no copy between the kernel and the message body.
//! - Fixed little-endian fields, no padding: the encoding is **canonical** — every valid batch
//!   has exactly one encoding, so `encode(decode(b)) == b` byte for byte (the fuzz target and the
//!   property test check it).
//! - No batch header or version: the protobuf message that carries the body is versioned
//!   (`meshnet.v1`); a different record format would be a different field.
//!
//! # Invariants
//!
//! - Every record's `frame_len` is in `MIN_FRAME..=MAX_FRAME`. [`MIN_FRAME`] is an Ethernet
//!   header (the kernel refuses shorter TAP writes; this includes zero-length frames).
//!   [`MAX_FRAME`] = 64 KiB + 256: the largest frame the kernel hands over with GSO is a
//!   ≤ 64 KiB L3 packet (`GSO_LEGACY_MAX_SIZE`; IPv6 adds its 40-byte fixed header outside the
//!   16-bit payload length) plus 14 bytes of Ethernet and up to two 4-byte VLAN tags; 256 bytes
//!   covers those with room. A jumbo MTU (9000+) fits easily. BIG TCP (> 64 KiB GSO) is not
//!   enabled on our endpoints.
//! - [`decode`] never panics and never reads outside its input, whatever the bytes; the frames
//!   it yields are `Bytes::slice`s of the input (no copy). It stops at the first malformed
//!   record: it yields the frames before it, then one [`BatchError`], then nothing. The lengths
//!   after a bad record cannot be trusted, so there is no resynchronising.
//! - [`BatchEncoder`] accepts a record when the batch is empty or the record fits within the
//!   byte limit, so `Full` always means "flush, then retry", and the retry succeeds: a finished
//!   batch is at most `max(limit, MAX_RECORD)` bytes.
//! - The wire id is opaque here: whether a wire exists is the [`crate::table`]'s question.

use std::iter::FusedIterator;

use bytes::{BufMut, Bytes, BytesMut};

use crate::WireId;
use crate::vnet::{ETHERNET_HEADER_LEN, VNET_HDR_LEN, VnetBytes};

/// Bytes of a record before its frame: wire id, frame length, virtio-net header.
pub const RECORD_HEADER_LEN: usize = 4 + 4 + VNET_HDR_LEN;
/// Shortest frame carried: an Ethernet header.
pub const MIN_FRAME: usize = ETHERNET_HEADER_LEN;
/// Longest frame carried (see the module doc for why 64 KiB + 256).
pub const MAX_FRAME: usize = 65_536 + 256;
/// Longest record.
pub const MAX_RECORD: usize = RECORD_HEADER_LEN + MAX_FRAME;

/// The encoder never grows its arena by more than this at once (a huge limit does not turn
/// into a huge allocation per batch).
const MAX_CHUNK: usize = 4 << 20;

/// Whether a frame of `len` bytes can be carried.
pub const fn is_valid_frame_len(len: usize) -> bool {
    len >= MIN_FRAME && len <= MAX_FRAME
}

/// Encoded size of a record carrying a frame of `frame_len` bytes.
pub const fn record_len(frame_len: usize) -> usize {
    RECORD_HEADER_LEN + frame_len
}

/// One decoded frame, owning a zero-copy slice of the batch it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub wire: WireId,
    /// The virtio-net header, copied (10 bytes are cheaper to copy than to reference-count).
    pub vnet: VnetBytes,
    /// The Ethernet frame: a `Bytes::slice` of the batch.
    pub data: Bytes,
}

/// One decoded frame borrowed from the batch (for writing it out without touching refcounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub wire: WireId,
    pub vnet: &'a VnetBytes,
    pub data: &'a [u8],
}

/// Why a batch could not be decoded further. `at` is the byte offset of the bad record.
/// Small and `Copy`: counted on the hot path, not logged per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer than [`RECORD_HEADER_LEN`] bytes are left for a record header.
    #[error("record at {at}: header truncated, {remaining} of 18 bytes left")]
    TruncatedHeader { at: usize, remaining: usize },
    /// The frame length runs past the end of the batch.
    #[error("record at {at}: {len}-byte frame but only {remaining} bytes left")]
    TruncatedFrame {
        at: usize,
        len: u32,
        remaining: usize,
    },
    /// The frame length exceeds [`MAX_FRAME`].
    #[error("record at {at}: frame length {len} exceeds {MAX_FRAME}")]
    Oversize { at: usize, len: u32 },
    /// The frame length is below [`MIN_FRAME`] (zero-length included).
    #[error("record at {at}: frame length {len} is shorter than an Ethernet header")]
    TooShort { at: usize, len: u32 },
}

impl BatchError {
    /// Byte offset of the record that could not be decoded: the length of the well-formed
    /// prefix of the batch.
    pub const fn offset(&self) -> usize {
        match *self {
            BatchError::TruncatedHeader { at, .. }
            | BatchError::TruncatedFrame { at, .. }
            | BatchError::Oversize { at, .. }
            | BatchError::TooShort { at, .. } => at,
        }
    }
}

/// Why [`BatchEncoder::push`] did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The record does not fit within the limit: flush ([`BatchEncoder::finish`]) and retry.
    #[error("batch full: record needs {need} bytes, {remaining} left")]
    Full { need: usize, remaining: usize },
    /// The frame length is outside `MIN_FRAME..=MAX_FRAME`; it can never be carried (count it as
    /// [`crate::table::DropReason::Oversize`]).
    #[error("frame length {len} outside {MIN_FRAME}..={MAX_FRAME}")]
    BadLength { len: usize },
}

/// What [`BatchEncoder::push_with`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// A frame of this many bytes was appended.
    Frame(usize),
    /// The source had nothing ready; the batch is unchanged.
    NotReady,
    /// No room for a largest record: flush, then retry. The source was not called.
    Full,
    /// The source produced a frame (or bytes) of this length, outside `MIN_FRAME..=MAX_FRAME`, or
    /// appended a different number of bytes than it reported; it was discarded and the batch is
    /// unchanged. The frame is consumed: count a drop.
    BadLength(usize),
}

/// Builds one batch at a time into a reusable arena.
///
/// Bounded: a finished batch is at most `max(limit, MAX_RECORD)` bytes (see the module doc).
/// [`finish`](Self::finish) splits the batch off the arena, so the unused capacity serves the
/// next batches and small batches at low load do not cost an allocation each.
#[derive(Debug)]
pub struct BatchEncoder {
    buf: BytesMut,
    limit: usize,
    frames: usize,
}

impl BatchEncoder {
    /// An encoder whose batches stop growing at `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            frames: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Encoded bytes in the pending batch.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Frames in the pending batch.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Whether a record of `record_len` bytes would be accepted now.
    pub fn fits(&self, record_len: usize) -> bool {
        self.buf.is_empty() || self.buf.len().saturating_add(record_len) <= self.limit
    }

    /// Appends one record, copying `frame` into the batch.
    ///
    /// # Errors
    /// [`PushError::BadLength`] if `frame` is shorter than [`MIN_FRAME`] or longer than
    /// [`MAX_FRAME`]; [`PushError::Full`] if the batch is not empty and the record would take it
    /// past the limit. Either way the batch is unchanged.
    pub fn push(&mut self, wire: WireId, vnet: &VnetBytes, frame: &[u8]) -> Result<(), PushError> {
        if !is_valid_frame_len(frame.len()) {
            return Err(PushError::BadLength { len: frame.len() });
        }
        let need = record_len(frame.len());
        if !self.fits(need) {
            return Err(PushError::Full {
                need,
                remaining: self.limit.saturating_sub(self.buf.len()),
            });
        }
        self.reserve(need);
        self.buf.put_u32_le(wire.0);
        // In range by the check above: MAX_FRAME < u32::MAX.
        self.buf.put_u32_le(frame.len() as u32);
        self.buf.put_slice(vnet);
        self.buf.put_slice(frame);
        self.frames += 1;
        Ok(())
    }

    /// Appends one record whose virtio-net header and frame are written by `fill` directly into
    /// the batch — the zero-copy path for endpoints (`|buf| endpoint.recv(buf)`).
    ///
    /// `fill` gets an empty buffer with room for a largest record, must append exactly
    /// `[vnet header][frame]` and return `Ok(Some(frame_len))`, or append nothing and return
    /// `Ok(None)` when it has nothing ready. It cannot see or damage the records before.
    ///
    /// Because the length is only known after the read, this needs room for a largest record
    /// ([`MAX_RECORD`]); keep the limit well above it (the default policy uses 256 KiB).
    ///
    /// # Errors
    /// Whatever `fill` returns; the batch is then unchanged.
    pub fn push_with<E>(
        &mut self,
        wire: WireId,
        fill: impl FnOnce(&mut BytesMut) -> Result<Option<usize>, E>,
    ) -> Result<Filled, E> {
        if !self.fits(MAX_RECORD) {
            return Ok(Filled::Full);
        }
        self.reserve(MAX_RECORD);
        let start = self.buf.len();
        self.buf.put_u32_le(wire.0);
        self.buf.put_u32_le(0);
        // `fill` writes into the tail of the same allocation, then the two are joined again in
        // O(1); it never holds the earlier records.
        let mut tail = self.buf.split_off(start + 8);
        let outcome = match fill(&mut tail) {
            Err(e) => Err(e),
            Ok(None) if tail.is_empty() => Ok(Filled::NotReady),
            Ok(None) => Ok(Filled::BadLength(tail.len())),
            Ok(Some(len)) if tail.len() != VNET_HDR_LEN + len => {
                Ok(Filled::BadLength(tail.len().saturating_sub(VNET_HDR_LEN)))
            }
            Ok(Some(len)) if !is_valid_frame_len(len) => Ok(Filled::BadLength(len)),
            Ok(Some(len)) => Ok(Filled::Frame(len)),
        };
        if let Ok(Filled::Frame(len)) = outcome {
            self.buf[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
            self.buf.unsplit(tail);
            self.frames += 1;
        } else {
            self.buf.truncate(start);
        }
        outcome
    }

    /// Takes the pending batch (possibly empty) and starts a new one.
    pub fn finish(&mut self) -> Bytes {
        self.frames = 0;
        self.buf.split().freeze()
    }

    fn reserve(&mut self, need: usize) {
        if self.buf.capacity() - self.buf.len() < need {
            let chunk = self.limit.clamp(MAX_RECORD, MAX_CHUNK);
            self.buf.reserve(need.max(chunk));
        }
    }
}

/// Position of one well-formed record.
struct Record {
    wire: WireId,
    vnet: VnetBytes,
    /// Byte range of the frame within the batch.
    data: std::ops::Range<usize>,
}

/// Parses the record at `at` (`at < batch.len()`).
fn parse_record(batch: &[u8], at: usize) -> Result<Record, BatchError> {
    let rest = batch.get(at..).unwrap_or_default();
    let Some((header, body)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(BatchError::TruncatedHeader {
            at,
            remaining: rest.len(),
        });
    };
    let [w0, w1, w2, w3, l0, l1, l2, l3, vnet @ ..] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let frame_len = len as usize;
    if frame_len < MIN_FRAME {
        return Err(BatchError::TooShort { at, len });
    }
    if frame_len > MAX_FRAME {
        return Err(BatchError::Oversize { at, len });
    }
    if frame_len > body.len() {
        return Err(BatchError::TruncatedFrame {
            at,
            len,
            remaining: body.len(),
        });
    }
    let start = at + RECORD_HEADER_LEN;
    Ok(Record {
        wire: WireId(u32::from_le_bytes([w0, w1, w2, w3])),
        vnet,
        data: start..start + frame_len,
    })
}

/// Decodes a batch into owned frames that share its buffer (see the module doc for the error
/// behaviour).
pub fn decode(batch: Bytes) -> Decoder {
    Decoder {
        batch,
        at: 0,
        failed: false,
    }
}

/// Decodes a borrowed batch.
pub fn decode_ref(batch: &[u8]) -> DecoderRef<'_> {
    DecoderRef {
        batch,
        at: 0,
        failed: false,
    }
}

/// Iterator returned by [`decode`].
#[derive(Debug, Clone)]
pub struct Decoder {
    batch: Bytes,
    at: usize,
    failed: bool,
}

impl Decoder {
    /// Bytes not yet decoded.
    pub fn remaining(&self) -> usize {
        self.batch.len() - self.at
    }
}

impl Iterator for Decoder {
    type Item = Result<Frame, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.batch.len() {
            return None;
        }
        match parse_record(&self.batch, self.at) {
            Ok(r) => {
                self.at = r.data.end;
                Some(Ok(Frame {
                    wire: r.wire,
                    vnet: r.vnet,
                    data: self.batch.slice(r.data),
                }))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        size_hint(self.failed, self.batch.len() - self.at)
    }
}

impl FusedIterator for Decoder {}

/// Iterator returned by [`decode_ref`].
#[derive(Debug, Clone)]
pub struct DecoderRef<'a> {
    batch: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for DecoderRef<'a> {
    type Item = Result<FrameRef<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.batch.len() {
            return None;
        }
        match parse_record(self.batch, self.at) {
            Ok(r) => {
                let batch: &'a [u8] = self.batch;
                let vnet_at = r.data.start - VNET_HDR_LEN;
                let (vnet, _) = batch[vnet_at..].split_first_chunk::<VNET_HDR_LEN>()?;
                self.at = r.data.end;
                Some(Ok(FrameRef {
                    wire: r.wire,
                    vnet,
                    data: &batch[r.data],
                }))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        size_hint(self.failed, self.batch.len() - self.at)
    }
}

impl FusedIterator for DecoderRef<'_> {}

fn size_hint(failed: bool, remaining: usize) -> (usize, Option<usize>) {
    if failed || remaining == 0 {
        (0, Some(0))
    } else {
        // At least one item (a frame or the error); at most one per shortest record.
        (1, Some(remaining.div_ceil(RECORD_HEADER_LEN + MIN_FRAME)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
