use super::*;

fn pod(ns: &str, name: &str) -> Option<PodName> {
    Some(PodName {
        namespace: ns.into(),
        name: name.into(),
    })
}

#[test]
fn cni_args_give_the_pod() {
    assert_eq!(
        parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=r1;K8S_POD_INFRA_CONTAINER_ID=abc"
        ),
        Ok(pod("lab", "r1"))
    );
    // The namespace defaults to "default"; order does not matter; a trailing ';' is fine.
    assert_eq!(
        parse_cni_args("K8S_POD_NAME=r1;IgnoreUnknown=1;"),
        Ok(pod("default", "r1"))
    );
    assert_eq!(
        parse_cni_args("K8S_POD_NAMESPACE=;K8S_POD_NAME=r1"),
        Ok(pod("default", "r1"))
    );
    // The last value wins, as with the Go parser.
    assert_eq!(
        parse_cni_args("K8S_POD_NAME=a;K8S_POD_NAME=b"),
        Ok(pod("default", "b"))
    );
}

#[test]
fn cni_args_without_a_pod_name_mean_no_pod() {
    assert_eq!(parse_cni_args(""), Ok(None));
    assert_eq!(parse_cni_args("IgnoreUnknown=1"), Ok(None));
    assert_eq!(parse_cni_args("K8S_POD_NAMESPACE=lab"), Ok(None));
    assert_eq!(parse_cni_args("K8S_POD_NAME="), Ok(None));
}

#[test]
fn malformed_cni_args_are_error_4() {
    for bad in [
        "IgnoreUnknown",
        "K8S_POD_NAME=r1;junk",
        "K8S_POD_NAME=../../etc",
        "K8S_POD_NAME=R1",
        "K8S_POD_NAME=-r1",
        "K8S_POD_NAME=r1;K8S_POD_NAMESPACE=a.b",
        "K8S_POD_NAME=r1;K8S_POD_NAMESPACE=a/b",
    ] {
        let e = parse_cni_args(bad).expect_err(bad);
        assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{bad}");
        assert!(e.msg.starts_with("CNI_ARGS"), "{bad}: {}", e.msg);
    }
    let long = format!("K8S_POD_NAME={}", "a".repeat(254));
    assert!(parse_cni_args(&long).is_err());
    let ok = format!("K8S_POD_NAME={}", "a".repeat(253));
    assert!(parse_cni_args(&ok).is_ok());
}

#[test]
fn ifnames_follow_the_kernel_rules() {
    for good in ["eth0", "e", "net1.100", "a-b_c@d", "123456789012345"] {
        assert_eq!(validate_ifname(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        ".",
        "..",
        "eth/0",
        "eth:0",
        "eth 0",
        "eth\t0",
        "eth\n",
        "1234567890123456",
    ] {
        let e = validate_ifname(bad).expect_err(bad);
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
    }
    // 15 bytes, but more than 15 bytes in UTF-8.
    assert!(validate_ifname("ééééééééé").is_err());
}

#[test]
fn container_ids_follow_the_spec() {
    assert_eq!(validate_container_id("abc-DEF_1.2"), Ok(()));
    for bad in ["", "a/b", "a b", "a;b", "ä"] {
        assert!(validate_container_id(bad).is_err(), "{bad}");
    }
}

#[test]
fn netns_must_be_absolute() {
    assert_eq!(validate_netns("/var/run/netns/cni-1"), Ok(()));
    assert!(validate_netns("var/run/netns").is_err());
    assert!(validate_netns(&format!("/{}", "a".repeat(4095))).is_err());
}

fn env(pairs: &[(&str, &str)]) -> CniEnv {
    CniEnv::from_pairs(pairs.iter().copied())
}

#[test]
fn commands_parse_and_unknown_ones_are_error_4() {
    assert_eq!(env(&[("CNI_COMMAND", "ADD")]).command(), Ok(Command::Add));
    for c in [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Version,
        Command::Status,
        Command::Gc,
    ] {
        assert_eq!(Command::parse(c.as_str()), Some(c));
    }
    let e = env(&[]).command().expect_err("missing");
    assert_eq!(e.code, ErrorCode::InvalidEnvironment);
    assert!(e.msg.contains("CNI_COMMAND"));
    let e = env(&[("CNI_COMMAND", "add")])
        .command()
        .expect_err("lowercase");
    assert_eq!(e.code, ErrorCode::InvalidEnvironment);
}

#[test]
fn sandbox_names_every_missing_variable() {
    let e = env(&[("CNI_IFNAME", "eth0")])
        .sandbox(Command::Add)
        .expect_err("missing");
    assert_eq!(
        e.msg,
        "required env variables CNI_CONTAINERID, CNI_NETNS missing"
    );
    let e = env(&[("CNI_CONTAINERID", ""), ("CNI_IFNAME", "eth0")])
        .sandbox(Command::Del)
        .expect_err("empty");
    assert_eq!(e.msg, "required env variable CNI_CONTAINERID missing");
}

#[test]
fn del_does_not_need_a_netns() {
    let s = env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")])
        .sandbox(Command::Del)
        .expect("valid");
    assert_eq!(s.netns, None);
    let e = env(&[
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "relative"),
    ])
    .sandbox(Command::Del)
    .expect_err("relative netns");
    assert!(e.msg.contains("CNI_NETNS"));
}

#[test]
fn non_utf8_values_are_error_4() {
    use std::os::unix::ffi::OsStringExt;
    let e = CniEnv::from_pairs([
        ("CNI_CONTAINERID", OsString::from("c1")),
        ("CNI_IFNAME", OsString::from("eth0")),
        ("CNI_NETNS", OsString::from_vec(vec![b'/', 0xff])),
    ])
    .sandbox(Command::Add)
    .expect_err("not utf-8");
    assert_eq!(e.code, ErrorCode::InvalidEnvironment);
    assert_eq!(e.msg, "CNI_NETNS is not valid UTF-8");
}
