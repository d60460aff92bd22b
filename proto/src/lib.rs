//! The meshnet.v1 protocol, generated from `proto/meshnet/v1/*.proto` at build time.
//!
//! * `Local` — the node-local API the `meshnet` CNI plugin calls on `meshnetd` over a unix socket.
//! * `Wire` — the node-to-node API of the gRPC wire: batches of frames between node daemons.
//!
//! Our own API, versioned; the Go meshnet-cni gRPC API is not a compatibility contract.
#![forbid(unsafe_code)]
#![allow(missing_debug_implementations, clippy::unwrap_used)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("meshnet.v1");
}
