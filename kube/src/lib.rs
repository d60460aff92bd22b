//! The Kubernetes side of meshnet: the `Topology` CRD generated from Rust ([`crd`]) and the
//! production [`TopologyStore`](meshnet_topology::store::TopologyStore), [`KubeStore`], on
//! kube-rs. Kept out of the daemon's core crates so that the dataplane's tests do not link
//! kube-rs and k8s-openapi.
#![forbid(unsafe_code)]

pub mod crd;
pub mod store;

pub use store::KubeStore;
