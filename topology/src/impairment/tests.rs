use super::*;

fn imp(yaml: &str) -> Impairment {
    serde_yaml::from_str(yaml).expect("impairment YAML")
}

#[test]
fn durations_and_rates_parse_in_tc_units() {
    assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
    assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
    assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
    assert_eq!(parse_duration(" 1s "), Ok(Duration::from_secs(1)));
    assert!(parse_duration("10").expect_err("invalid").contains("10ms"));
    assert!(parse_duration("fast").is_err());
    assert!(parse_duration("61s").expect_err("invalid").contains("60s"));
    assert!(parse_duration("-1ms").is_err());

    assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
    assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
    assert_eq!(parse_rate("2.5mbit"), Ok(2_500_000));
    assert_eq!(parse_rate("64000bit"), Ok(64_000));
    // Bytes per second are not accepted: "100mbps" would be ambiguous.
    assert!(
        parse_rate("100mbps")
            .expect_err("invalid")
            .contains("100mbit")
    );
    assert!(parse_rate("1bit").expect_err("invalid").contains("8kbit"));
}

#[test]
fn a_full_declaration_parses_and_prints_back() {
    let i = imp(
        "{delay: 10ms, jitter: 2ms, loss: 0.5, rate: 100mbit, duplicate: 0.1, corrupt: 0.1, reorder: 1}",
    );
    let s = i.parse().expect("valid");
    assert_eq!(s.delay, Duration::from_millis(10));
    assert_eq!(s.jitter, Duration::from_millis(2));
    assert_eq!(s.rate_bps, Some(100_000_000));
    assert!((s.loss - 0.5).abs() < f64::EPSILON);
    assert!(s.needs_netem());
    assert_eq!(
        s.to_string(),
        "delay 10ms jitter 2ms loss 0.5% duplicate 0.1% corrupt 0.1% reorder 1% rate 100mbit"
    );
    let rate_only = imp("{rate: 50mbit}").parse().expect("valid");
    assert!(!rate_only.needs_netem());
    assert_eq!(rate_only.to_string(), "rate 50mbit");
    assert!(imp("{}").parse().expect("valid").is_noop());
}

#[test]
fn bad_declarations_name_the_field() {
    for (yaml, want) in [
        ("{loss: 101}", "loss 101"),
        ("{loss: -1}", "loss -1"),
        ("{delay: 10}", "delay"),
        ("{rate: fast}", "rate"),
        ("{jitter: 2ms}", "jitter needs a delay"),
        ("{delay: 1ms, jitter: 2ms}", "larger than delay"),
        ("{reorder: 5}", "reorder needs a delay"),
        ("{delay: 1ms, side: left}", "side \"left\""),
    ] {
        let e = imp(yaml).parse().expect_err(yaml);
        assert!(e.contains(want), "{yaml}: {e}");
    }
}

#[test]
fn go_style_nulls_mean_absent() {
    let i = imp("{delay: null, rate: null, side: null, loss: null}");
    assert_eq!(i, Impairment::default());
}

#[test]
fn each_end_gets_its_own_and_the_peers_declaration_by_side() {
    let both = imp("{delay: 10ms}");
    let local = imp("{delay: 10ms, side: local}");
    let peer = imp("{delay: 10ms, side: peer}");
    let d = |o: Option<Option<ImpairSpec>>| o.map(|s| s.map(|s| s.delay));
    let ten = Some(Some(Duration::from_millis(10)));
    // Declared by A without a side: both A's and B's egress.
    assert_eq!(d(egress(Some(&both), None).ok()), ten);
    assert_eq!(d(egress(None, Some(&both)).ok()), ten);
    // side: local — only what A sends.
    assert_eq!(d(egress(Some(&local), None).ok()), ten);
    assert_eq!(d(egress(None, Some(&local)).ok()), Some(None));
    // side: peer — only what B sends.
    assert_eq!(d(egress(Some(&peer), None).ok()), Some(None));
    assert_eq!(d(egress(None, Some(&peer)).ok()), ten);
    // Both ends declare the same direction: equal is fine, different is a clash naming both.
    assert_eq!(d(egress(Some(&both), Some(&both)).ok()), ten);
    let e = egress(Some(&both), Some(&imp("{delay: 20ms}"))).expect_err("clash");
    assert!(
        e.contains("delay 10ms here") && e.contains("delay 20ms"),
        "{e}"
    );
    // A bad peer declaration is reported as the peer's.
    let e = egress(None, Some(&imp("{loss: 200}"))).expect_err("bad");
    assert!(e.starts_with("the peer's impairment: loss 200"), "{e}");
    // An empty declaration applies nothing.
    assert_eq!(egress(Some(&Impairment::default()), None), Ok(None));
}
