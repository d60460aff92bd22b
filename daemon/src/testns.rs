//! Test scaffolding shared by the daemon's unit tests that need real namespaces (root).

use std::path::PathBuf;
use std::process::Command;

/// A throw-away named namespace (`ip netns add`), deleted on drop, panic included. Names are
/// unique per process and call, so tests run in parallel.
#[derive(Debug)]
pub struct TestNs(pub String);

impl TestNs {
    /// # Panics
    /// The namespace cannot be made (not root).
    pub fn new(tag: &str) -> Self {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mnd-{tag}-{}-{seq}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        assert!(out.is_ok_and(|o| o.status.success()), "ip netns add {name}");
        let ns = TestNs(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    /// `ip -n NS ARGS…`, asserting success.
    ///
    /// # Panics
    /// The command fails.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a program inside the namespace; returns (success, stdout + stderr).
    pub fn run(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .output()
            .expect("ip netns exec runs");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
