//! Key checks shared by every store ([`check_key`]).

use super::*;

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

#[test]
fn valid_keys_pass() {
    for (ns, name) in [
        ("default", "r1"),
        ("lab-1", "r1.example-2"),
        ("a", "a"),
        ("mlink", "0r"),
    ] {
        check_key(&key(ns, name)).unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
    }
    check_key(&key("", "r1")).expect("empty namespace means default");
    check_key(&key("default", &"a".repeat(253))).expect("253 bytes");
}

#[test]
fn invalid_keys_are_refused() {
    for (ns, name) in [
        ("default", "R1"),
        ("Default", "r1"),
        ("default", "r_1"),
        ("my_ns", "r1"),
        ("default", ""),
        ("default", "-r1"),
        ("default", "r1-"),
        ("default", "r1/x"),
        ("default", ".."),
        ("default", "r1..x"),
        ("default", "r1.-x"),
        ("a.b", "r1"),
        ("default", &"a".repeat(254)),
    ] {
        let k = key(ns, name);
        assert!(
            matches!(check_key(&k), Err(StoreError::Invalid { .. })),
            "{ns}/{name} accepted"
        );
    }
    assert!(check_key(&key(&"a".repeat(64), "r1")).is_err());
}
