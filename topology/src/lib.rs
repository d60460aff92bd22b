//! The `Topology` resource and where it is stored, shared by the daemon, the lab and the
//! Kubernetes store: [`topology`] (the type, exactly compatible with `networkop.co.uk/v1beta1`,
//! and the pure checks on its content) and [`store`] (the `TopologyStore` trait and the file
//! store), and [`view`] (the node's links as `/topology` serves them). Kept apart from the daemon so the Kubernetes store can implement the trait without a
//! dependency cycle, and so tools that only read topologies do not link netlink.
#![forbid(unsafe_code)]

pub mod impairment;
pub mod store;
pub mod topology;
pub mod view;
