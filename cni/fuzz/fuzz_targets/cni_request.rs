//! Fuzzes the CNI request parser: the first line of the input is CNI_ARGS, the second the
//! command, the rest is stdin (the network config). Parsing must never panic, and every refusal
//! must be a well-formed CNI error (a known code, a message, renderable JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshnet_cni::{CniEnv, Invocation};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let args = parts.next().unwrap_or_default().to_string();
    let cmd = parts.next().unwrap_or("ADD").to_string();
    let stdin = parts.next().unwrap_or_default().as_bytes().to_vec();
    let env = CniEnv::from_pairs([
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "c0ffee".to_string()),
        ("CNI_NETNS", "/run/netns/fuzz".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]);
    if let Err(e) = Invocation::parse(&env, &stdin) {
        assert!(!e.msg.is_empty(), "an error without a message");
        let json = e.to_json(meshnet_cni::CniVersion::parse("1.0.0").expect("known version"));
        assert!(json["code"].as_u64().is_some_and(|c| c > 0), "{json}");
    }
});
