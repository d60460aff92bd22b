//! Prints the `Topology` CRD as YAML: `cargo run -p meshnet-kube --bin crdgen >
//! manifests/base/topology-crd.yaml`. A test fails when the committed file differs.

use std::io::Write;

fn main() -> std::process::ExitCode {
    let yaml = match meshnet_kube::crd::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(yaml.as_bytes()) {
        eprintln!("crdgen: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
