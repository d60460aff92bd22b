//! The batching policy: when the frames gathered so far go out as one message.
//!
//! A pure state machine: it only counts. The I/O shell reads frames from its endpoints as they
//! become ready, tells the [`Batcher`] about each one, and asks it whether to flush:
//!
//! ```text
//! loop {
//!     match next ready frame of any wire {
//!         Some(frame) => {
//!             if !batcher.fits(rec)      { send(encoder.finish()); batcher.flushed(); }  // Bytes
//!             encoder.push(..); if let Some(cause) = batcher.append(rec) { send(..); batcher.flushed(); }
//!         }
//!         None => { if let Some(Idle) = batcher.idle() { send(..); batcher.flushed(); } wait for readiness }
//!     }
//! }
//! ```
//!
//! A batch is flushed when
//! - **nothing more is ready** ([`FlushCause::Idle`]): at low load every frame leaves as soon as
//!   it was read, in a batch of one — batching adds no latency and needs no timer;
//! - it reached the **byte bound** ([`FlushCause::Bytes`]): the next record would not fit, or the
//!   batch has reached `max_bytes` — this bounds message size and memory per stream;
//! - it reached the **frame bound** ([`FlushCause::Frames`]): this bounds how long the first
//!   frame of a batch waits while a fast source keeps the batch growing.
//!
//! Under load, batches grow only while frames are already waiting, so batch size follows the
//! offered load without a timer, and the time a frame waits in a batch is bounded by the time to
//! read `max_frames` frames or `max_bytes` bytes. When the stream cannot take a batch, the shell
//! stops reading its endpoints (back-pressure to the pods' qdiscs), it does not queue more.
//!
//! Invariants: a non-empty batch never exceeds `max_bytes` unless it holds a single record (a
//! record always fits an empty batch, so flush-then-append always makes progress), and never
//! holds more than `max_frames` frames. [`Batcher::idle`] never asks to flush an empty batch.

/// Bounds of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Encoded bytes per batch (records, headers included). Keep it well above
    /// [`crate::batch::MAX_RECORD`] and below the gRPC message limit (4 MiB by default).
    pub max_bytes: usize,
    /// Frames per batch; at least 1.
    pub max_frames: usize,
}

impl BatchLimits {
    /// The starting point, to be tuned with `bench/`: 256 KiB is four 64 KiB GSO super-frames or
    /// ~170 full-size 1500-byte frames (≈ 210 µs of data at 10 Gbit/s); 128 frames bounds batches
    /// of small frames to ~10 KiB.
    pub const DEFAULT: BatchLimits = BatchLimits {
        max_bytes: 256 << 10,
        max_frames: 128,
    };
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a batch was flushed (a metric label: batch sizes by cause tell whether the stream runs
/// at low load or saturated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushCause {
    /// Nothing more was ready.
    Idle,
    /// The byte bound was reached.
    Bytes,
    /// The frame bound was reached.
    Frames,
}

impl FlushCause {
    pub const fn as_label(self) -> &'static str {
        match self {
            FlushCause::Idle => "idle",
            FlushCause::Bytes => "bytes",
            FlushCause::Frames => "frames",
        }
    }
}

/// What one flushed batch held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSummary {
    pub frames: usize,
    pub bytes: usize,
}

/// The batching policy's state: what the pending batch holds.
#[derive(Debug, Clone)]
pub struct Batcher {
    limits: BatchLimits,
    pending: BatchSummary,
}

impl Batcher {
    /// A batcher with these limits (`max_frames` 0 is taken as 1).
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits: BatchLimits {
                max_frames: limits.max_frames.max(1),
                ..limits
            },
            pending: BatchSummary::default(),
        }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// What the pending batch holds.
    pub fn pending(&self) -> BatchSummary {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending.frames == 0
    }

    /// Whether a record of `record_len` encoded bytes may join the pending batch. If not, flush
    /// first (cause [`FlushCause::Bytes`]); an empty batch takes any record.
    pub fn fits(&self, record_len: usize) -> bool {
        self.is_empty() || self.pending.bytes.saturating_add(record_len) <= self.limits.max_bytes
    }

    /// Counts a record of `record_len` bytes into the pending batch. Returns `Some(cause)` when
    /// the batch has reached a bound and must be flushed now.
    pub fn append(&mut self, record_len: usize) -> Option<FlushCause> {
        self.pending.frames += 1;
        self.pending.bytes = self.pending.bytes.saturating_add(record_len);
        if self.pending.frames >= self.limits.max_frames {
            Some(FlushCause::Frames)
        } else if self.pending.bytes >= self.limits.max_bytes {
            Some(FlushCause::Bytes)
        } else {
            None
        }
    }

    /// Nothing more is ready: `Some(Idle)` if there is a batch to flush.
    pub fn idle(&self) -> Option<FlushCause> {
        (!self.is_empty()).then_some(FlushCause::Idle)
    }

    /// The pending batch was sent: returns what it held and starts a new one.
    pub fn flushed(&mut self) -> BatchSummary {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests;
