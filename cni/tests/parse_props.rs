//! Stable-Rust companion of the cargo-fuzz target `cni_request`: many seeded random and mutated
//! requests through the parser. Never a panic; every refusal is a CNI error with a code and a
//! message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshnet_cni::{CniEnv, CniVersion, Invocation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VALID: &str = r#"{"cniVersion":"1.0.0","name":"kindnet","type":"meshnet","ipam":{},"dns":{},
"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],
"ips":[{"address":"203.0.113.5/26","gateway":"203.0.113.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#;

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..8) {
        if v.is_empty() {
            v.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..5) {
            0 => v[i] = rng.random(),
            1 => v.truncate(i),
            2 => {
                v.remove(i);
            }
            3 => v.insert(i, b"{}[]\":,0-9e\\"[rng.random_range(0..12)]),
            _ => {
                let j = rng.random_range(0..v.len());
                v.swap(i, j);
            }
        }
    }
    v
}

#[test]
fn random_and_mutated_requests_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x6d65_7368);
    let commands = [
        "ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "add", "", "ADD\0",
    ];
    let args = [
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=r1",
        "",
        "K8S_POD_NAME=../../x",
        "a=b=c;;",
        "IgnoreUnknown=1;K8S_POD_NAME=",
    ];
    let mut errors = 0;
    for n in 0..60_000 {
        let stdin = if n % 3 == 0 {
            (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
        } else {
            mutate(&mut rng, VALID.as_bytes())
        };
        let env = CniEnv::from_pairs([
            ("CNI_COMMAND", commands[n % commands.len()].to_string()),
            ("CNI_CONTAINERID", "c0ffee".to_string()),
            ("CNI_NETNS", "/run/netns/fuzz".to_string()),
            (
                "CNI_IFNAME",
                if n % 7 == 0 {
                    "a/b".to_string()
                } else {
                    "eth0".to_string()
                },
            ),
            ("CNI_ARGS", args[n % args.len()].to_string()),
        ]);
        if let Err(e) = Invocation::parse(&env, &stdin) {
            errors += 1;
            assert!(!e.msg.is_empty());
            let json = e.to_json(CniVersion::parse("1.0.0").unwrap());
            assert!(json["code"].as_u64().is_some_and(|c| c > 0), "{json}");
        }
    }
    assert!(
        errors > 30_000,
        "most mutated requests are refused: {errors}"
    );
}
