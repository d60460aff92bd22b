//! `meshnet-lab`: real `meshnetd` daemons and the real `meshnet` CNI plugin on one machine, with
//! network namespaces as nodes and pods and the file store as the datastore. See [`lab`].
#![forbid(unsafe_code)]

pub mod capture;
pub mod graph;
pub mod impair;
pub mod lab;
pub mod manifest;
pub mod sys;
