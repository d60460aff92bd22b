//! A short run of the soak (`make soak` runs it for 10 minutes): mixed traffic while links flap,
//! then every frame accounted for, memory bounded, every link verified (needs root).

#[test]
fn short_soak_accounts_for_every_frame() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let lab = format!("soak-{}", std::process::id() % 100_000);
    let out = std::process::Command::new(repo.join("scripts/soak.py"))
        .args(["--seconds", "40", "--flap-every", "12", "--lab", &lab])
        .output()
        .expect("scripts/soak.py runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("\"flaps\": 3"), "{report}");
    eprintln!("{report}");
}
