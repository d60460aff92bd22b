//! A short run of the soak (`make soak` runs it for 10 minutes): mixed traffic while links flap
//! and the underlay is cut once (the wire's streams die mid-flight and reconnect), then every
//! frame accounted for — frames lost with the dead streams as `stream_lost` — memory bounded,
//! every link verified (needs root).

#[test]
fn short_soak_accounts_for_every_frame() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let lab = format!("soak-{}", std::process::id() % 100_000);
    let out = std::process::Command::new(repo.join("scripts/soak.py"))
        .args(["--seconds", "40", "--flap-every", "12", "--lab", &lab])
        .args(["--cut-every", "40", "--cut-for", "4"])
        .output()
        .expect("scripts/soak.py runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("\"flaps\": 3"), "{report}");
    // One cut, and it killed loaded streams (the script fails if no cut lost a frame).
    assert_eq!(
        report.matches("\"streams_back\": true").count(),
        1,
        "{report}"
    );
    eprintln!("{report}");
}
