//! `crdgen` prints exactly the committed `manifests/base/topology-crd.yaml`: CI fails on a diff.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn crdgen_output_matches_the_committed_manifest() {
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen")).output().unwrap();
    assert!(out.status.success(), "crdgen failed: {out:?}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base/topology-crd.yaml");
    let committed = std::fs::read(&path).unwrap();
    assert!(
        out.stdout == committed,
        "{} differs from crdgen's output: run `cargo run -p meshnet-kube --bin crdgen > manifests/base/topology-crd.yaml`",
        path.display()
    );
}
