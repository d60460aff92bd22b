use super::*;

fn v04() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/x"}],
        "ips": [
            {"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0},
            {"version": "6", "address": "fd00::5/64", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"]}
    })
}

fn v10() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/x"}],
        "ips": [
            {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0},
            {"address": "fd00::5/64", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"]}
    })
}

fn with_version(mut v: Value, version: &str) -> Value {
    v["cniVersion"] = version.into();
    v
}

#[test]
fn down_to_pre_1_0_adds_ip_versions() {
    for to in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
        assert_eq!(
            convert_result(&v10(), to),
            Ok(with_version(v04(), to.as_str()))
        );
    }
}

#[test]
fn up_to_1_x_removes_ip_versions() {
    for to in [CniVersion::V1_0_0, CniVersion::V1_1_0] {
        assert_eq!(
            convert_result(&v04(), to),
            Ok(with_version(v10(), to.as_str()))
        );
    }
}

#[test]
fn same_version_is_unchanged() {
    assert_eq!(convert_result(&v04(), CniVersion::V0_4_0), Ok(v04()));
    assert_eq!(convert_result(&v10(), CniVersion::V1_0_0), Ok(v10()));
}

#[test]
fn unknown_fields_pass_through() {
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "socketPath": "/run/x.sock", "mtu": 9000}],
        "ips": [{"address": "10.0.0.2/31", "interface": 0, "x-vendor": {"a": 1}}],
        "routes": [{"dst": "10.0.0.0/8", "table": 100, "scope": 253}],
        "x-top": [1, 2]
    });
    let out = convert_result(&prev, CniVersion::V0_4_0).expect("valid");
    assert_eq!(out["x-top"], json!([1, 2]));
    assert_eq!(out["ips"][0]["x-vendor"], json!({"a": 1}));
    assert_eq!(out["ips"][0]["version"], "4");
    assert_eq!(out["routes"][0]["table"], 100);
    assert_eq!(out["interfaces"][0]["socketPath"], "/run/x.sock");
}

#[test]
fn a_result_without_lists_stays_minimal() {
    assert_eq!(
        convert_result(&json!({"cniVersion": "0.3.1"}), CniVersion::V1_1_0),
        Ok(json!({"cniVersion": "1.1.0"}))
    );
    assert_eq!(
        convert_result(&json!({"ips": null, "dns": null}), CniVersion::V1_0_0),
        Ok(json!({"cniVersion": "1.0.0", "ips": null, "dns": null}))
    );
}

#[test]
fn empty_result_shape() {
    assert_eq!(
        empty_result(CniVersion::V0_3_0),
        json!({"cniVersion": "0.3.0", "interfaces": [], "ips": [], "dns": {}})
    );
}

#[test]
fn bad_results_are_error_6() {
    for bad in [
        json!("a string"),
        json!([1]),
        json!(null),
        json!({"ips": "10.0.0.1/24"}),
        json!({"ips": ["10.0.0.1/24"]}),
        json!({"ips": [{"address": "10.0.0.1"}]}),
        json!({"ips": [{"address": "not-an-ip/24"}]}),
        json!({"ips": [{"address": 5}]}),
        json!({"ips": [{}]}),
        json!({"ips": [{"address": "10.0.0.1/24", "gateway": "nope"}]}),
        json!({"ips": [{"address": "10.0.0.1/24", "interface": -1}]}),
        json!({"ips": [{"address": "10.0.0.1/24", "interface": "0"}]}),
        json!({"ips": [{"address": "10.0.0.1/24", "version": "6"}]}),
        json!({"ips": [{"address": "10.0.0.1/24", "version": 4}]}),
        json!({"interfaces": {"name": "eth0"}}),
        json!({"interfaces": ["eth0"]}),
        json!({"routes": [{"gw": "10.0.0.1"}]}),
        json!({"routes": [{"dst": "10.0.0.0"}]}),
        json!({"routes": [{"dst": "10.0.0.0/8", "gw": 1}]}),
        json!({"dns": ["10.0.0.1"]}),
    ] {
        let e = convert_result(&bad, CniVersion::V1_0_0).expect_err(&bad.to_string());
        assert_eq!(e.code, ErrorCode::Decode, "{bad}");
        assert!(e.msg.starts_with("decoding prevResult: "), "{}", e.msg);
    }
}
