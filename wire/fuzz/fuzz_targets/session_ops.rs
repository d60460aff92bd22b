//! Fuzzes the session engine: any bytes are a sequence of operations on two sessions back to
//! back (see `tests/support/session_oracle.rs`); the oracle panics on any broken invariant.
//!
//! `cargo +nightly fuzz run session_ops` from `wire/`.
#![no_main]

#[path = "../../tests/support/session_oracle.rs"]
mod session_oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    session_oracle::check_session_ops(data);
});
