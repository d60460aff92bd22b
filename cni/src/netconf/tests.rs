use super::*;

fn parse(s: &str) -> Result<NetConf, CniError> {
    NetConf::parse(s.as_bytes(), &CniEnv::default())
}

fn code(s: &str) -> u32 {
    parse(s).expect_err(s).code.as_u32()
}

#[test]
fn minimal_config_uses_defaults() {
    let c = parse(r#"{"cniVersion":"1.0.0","name":"kindnet","type":"meshnet"}"#).expect("valid");
    assert_eq!(c.version, CniVersion::V1_0_0);
    assert_eq!(c.name, "kindnet");
    assert_eq!(c.plugin_type, "meshnet");
    assert_eq!(c.prev_result, None);
    assert_eq!(c.daemon, DaemonConfig::default());
    assert_eq!(c.valid_attachments, None);
}

#[test]
fn meshnet_keys_are_read() {
    let c = parse(
        r#"{"cniVersion":"0.4.0","name":"n","type":"meshnet","daemon_socket":"/tmp/d.sock",
            "timeout_seconds":5,"log_file":"/tmp/l.log","ipam":{},"dns":{}}"#,
    )
    .expect("valid");
    assert_eq!(c.daemon.socket, PathBuf::from("/tmp/d.sock"));
    assert_eq!(c.daemon.timeout, Duration::from_secs(5));
}

#[test]
fn socket_netconf_beats_env_beats_default() {
    let env = CniEnv::from_pairs([(MESHNET_SOCKET, "/env.sock")]);
    let base = r#"{"cniVersion":"1.1.0","name":"n","type":"meshnet""#;
    let with_key = format!(r#"{base},"daemon_socket":"/conf.sock"}}"#);
    let c = NetConf::parse(with_key.as_bytes(), &env).expect("valid");
    assert_eq!(c.daemon.socket, PathBuf::from("/conf.sock"));
    let c = NetConf::parse(format!("{base}}}").as_bytes(), &env).expect("valid");
    assert_eq!(c.daemon.socket, PathBuf::from("/env.sock"));
    let relative = CniEnv::from_pairs([(MESHNET_SOCKET, "env.sock")]);
    let e = NetConf::parse(format!("{base}}}").as_bytes(), &relative).expect_err("relative");
    assert_eq!(e.code, ErrorCode::InvalidEnvironment);
}

#[test]
fn failure_classes() {
    // Not JSON, truncated, not an object, wrong types: 6.
    assert_eq!(code(""), 6);
    assert_eq!(code("{not json"), 6);
    assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","#), 6);
    assert_eq!(code(r#"["cniVersion"]"#), 6);
    assert_eq!(code(r#"{"cniVersion":1.0,"name":"n","type":"meshnet"}"#), 6);
    assert_eq!(
        code(r#"{"cniVersion":"1.0.0","name":"n","type":"meshnet","timeout_seconds":"5"}"#),
        6
    );
    assert_eq!(
        code(r#"{"cniVersion":"1.0.0","name":"n","type":"meshnet","daemon_socket":5}"#),
        6
    );
    assert_eq!(
        code(r#"{"cniVersion":"1.0.0","name":"n","type":"meshnet","log_file":[]}"#),
        6
    );
    // Missing or out of range: 7.
    assert_eq!(code(r#"{"name":"n","type":"meshnet"}"#), 7);
    assert_eq!(code(r#"{"cniVersion":"","name":"n","type":"meshnet"}"#), 7);
    assert_eq!(code(r#"{"cniVersion":"1.0.0","type":"meshnet"}"#), 7);
    assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n"}"#), 7);
    assert_eq!(
        code(r#"{"cniVersion":"1.0.0","name":"n","type":"meshnet","timeout_seconds":0}"#),
        7
    );
    assert_eq!(
        code(r#"{"cniVersion":"1.0.0","name":"n","type":"meshnet","timeout_seconds":3601}"#),
        7
    );
    assert_eq!(
        code(r#"{"cniVersion":"1.0.0","name":"n","type":"meshnet","daemon_socket":"rel"}"#),
        7
    );
    // Unknown version: 1, naming it and the supported ones.
    let e = parse(r#"{"cniVersion":"9.9.9","name":"n","type":"meshnet"}"#).expect_err("9.9.9");
    assert_eq!(e.code, ErrorCode::IncompatibleVersion);
    assert_eq!(
        e.msg,
        r#"incompatible CNI version "9.9.9": meshnet supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"#
    );
}

#[test]
fn valid_attachments_absent_null_and_listed() {
    let base = r#"{"cniVersion":"1.1.0","name":"n","type":"meshnet""#;
    let c = parse(&format!(r#"{base},"cni.dev/valid-attachments":null}}"#)).expect("null");
    assert_eq!(c.valid_attachments, Some(Vec::new()));
    let c = parse(&format!(
        r#"{base},"cni.dev/valid-attachments":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
    ))
    .expect("listed");
    assert_eq!(
        c.valid_attachments,
        Some(vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }])
    );
    let c = parse(&format!(
        r#"{base},"cni.dev/attachments":[{{"containerID":"c2","ifname":"eth0"}}]}}"#
    ))
    .expect("alias");
    assert_eq!(c.valid_attachments.map(|a| a.len()), Some(1));
    assert_eq!(
        code(&format!(
            r#"{base},"cni.dev/valid-attachments":[{{"containerID":1}}]}}"#
        )),
        6
    );
}

#[test]
fn sniffing_is_best_effort() {
    assert_eq!(
        sniff_version(br#"{"cniVersion":"0.3.1"}"#),
        Some(CniVersion::V0_3_1)
    );
    assert_eq!(sniff_version(br#"{"cniVersion":"9.9.9"}"#), None);
    assert_eq!(sniff_version(br#"{"cniVersion":1}"#), None);
    assert_eq!(sniff_version(b"{trunc"), None);
    assert_eq!(sniff_version(b""), None);
}

#[test]
fn log_file_netconf_beats_env_beats_default() {
    let env = CniEnv::from_pairs([(MESHNET_CNI_LOG, "/env.log")]);
    assert_eq!(
        log_file(br#"{"log_file":"/conf.log"}"#, &env),
        PathBuf::from("/conf.log")
    );
    assert_eq!(log_file(b"garbage", &env), PathBuf::from("/env.log"));
    assert_eq!(
        log_file(b"{}", &CniEnv::default()),
        PathBuf::from(DEFAULT_LOG_FILE)
    );
}

#[test]
fn the_socket_wait_is_half_the_timeout_and_at_most_the_cap() {
    let wait = |secs| {
        DaemonConfig {
            timeout: Duration::from_secs(secs),
            ..DaemonConfig::default()
        }
        .socket_wait()
    };
    assert_eq!(wait(2), Duration::from_secs(1));
    assert_eq!(wait(10), Duration::from_secs(5));
    assert_eq!(wait(120), MAX_SOCKET_WAIT);
    assert!(
        wait(1) < Duration::from_secs(1),
        "always less than the timeout"
    );
}
