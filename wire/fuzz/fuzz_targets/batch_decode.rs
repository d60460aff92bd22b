//! Fuzzes the batch decoder: any bytes decode without panicking, and every decoded frame
//! re-encodes to exactly the bytes it came from (see `tests/support/batch_oracle.rs`).
//!
//! `cargo +nightly fuzz run batch_decode` from `wire/` (seed corpus: `fuzz/corpus/batch_decode`).
#![no_main]

#[path = "../../tests/support/batch_oracle.rs"]
mod batch_oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = batch_oracle::check_batch(data);
});
