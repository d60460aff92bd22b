//! The DaemonSet image (`Dockerfile`, `scripts/image-context.sh`) builds with no registry and
//! runs: the context is assembled from the debug binaries this test run already built, built with
//! podman (`FROM scratch`: nothing is pulled) and both binaries are started in it, with no network.
//!
//! Skipped, saying so, when podman is not installed or cannot run containers here
//! (`scripts/install-deps.sh` installs it as an optional package), or when the CNI binary
//! (`meshnet`, of the meshnet-cni package) has not been built next to `meshnetd` — `make test`
//! builds every binary first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate sits in the workspace")
        .to_path_buf()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("running podman")
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test never skips: `make test` installs podman and builds the plugin first, so a missing
/// piece is a failure with the reason.
fn missing(why: &str) -> ! {
    panic!("the image test cannot run: {why} (run `make deps build` first)");
}

/// Removes the test's image, however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

#[test]
fn image_builds_offline_and_runs() {
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => missing("podman is not installed"),
    }
    if !podman(&["info"]).status.success() {
        missing("`podman info` fails: no usable container storage or runtime");
    }
    let meshnetd = PathBuf::from(env!("CARGO_BIN_EXE_meshnetd"));
    let profile_dir = meshnetd.parent().expect("target/PROFILE");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile name");
    let target = profile_dir.parent().expect("target dir");
    if !profile_dir.join("meshnet").exists() {
        missing(&format!(
            "{} is not built (cargo build -p meshnet-cni)",
            profile_dir.join("meshnet").display()
        ));
    }

    let ctx = tempfile::tempdir().expect("tempdir");
    let out = Command::new(repo().join("scripts/image-context.sh"))
        .args([profile, ctx.path().to_str().expect("UTF-8 path")])
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("running image-context.sh");
    check("image-context.sh", &out);
    for bin in ["meshnetd", "meshnet"] {
        assert!(ctx.path().join("rootfs/usr/local/bin").join(bin).exists());
    }

    // Unique per run and per process: tests in parallel never share an image.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let image = Image(format!(
        "localhost/meshnet-image-test:{}-{nanos}",
        std::process::id()
    ));
    let dockerfile = repo().join("Dockerfile");
    let out = podman(&[
        "build",
        "--quiet",
        "--pull=never",
        "--network=none",
        "-f",
        dockerfile.to_str().expect("UTF-8 path"),
        "-t",
        &image.0,
        ctx.path().to_str().expect("UTF-8 path"),
    ]);
    check("podman build", &out);

    // Explicit, low rlimits: podman's defaults are above what an unprivileged-resource sandbox
    // (no CAP_SYS_RESOURCE, as on CI) may set, and neither command needs more.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--network=none",
            "--ulimit=nofile=1024:1024",
            "--ulimit=nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        podman(&args)
    };
    let out = run(&[&image.0, "--version"]);
    check("meshnetd --version in the image", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("meshnetd {}", env!("CARGO_PKG_VERSION"))
    );

    // The plugin, whose libraries must resolve in the image too (the installer copies it out).
    let out = run(&[
        "--env=CNI_COMMAND=VERSION",
        "--entrypoint=/usr/local/bin/meshnet",
        &image.0,
    ]);
    check("meshnet (CNI VERSION) in the image", &out);
    let version: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("CNI VERSION prints JSON");
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{version}"
    );

    let out = podman(&["image", "inspect", "--format", "{{.Size}}", &image.0]);
    check("podman image inspect", &out);
    let size: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("image size");
    eprintln!("image {} ({profile} binaries): {size} bytes", image.0);
    // Two stripped binaries and libc: far from a distro image.
    assert!(size < 200 << 20, "image is {size} bytes");
}
