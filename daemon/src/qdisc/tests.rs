#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::*;
use crate::testns::TestNs;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// (type, value) of each attribute in a buffer of attributes.
fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]);
        out.push((kind, b[4..len].to_vec()));
        b = &b[(len + 3) & !3..];
    }
    out
}

#[test]
fn tbf_options_follow_the_uapi_layout() {
    let o = tbf_options(50_000_000, 1500);
    let a = attrs(&o);
    assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 4, 6]);
    let parms = &a[0].1;
    assert_eq!(parms.len(), 36, "struct tc_tbf_qopt");
    assert_eq!(parms[1], 1, "rate.linklayer = ethernet");
    assert_eq!(u32_at(parms, 8), 6_250_000, "rate in bytes/s");
    assert_eq!(&parms[12..24], &[0u8; 12], "no peak rate");
    let (burst, limit) = tbf_sizes(50_000_000, 1500);
    assert_eq!(u32_at(parms, 24), limit);
    assert_eq!(a[1].1, 6_250_000u64.to_ne_bytes());
    assert_eq!(a[2].1, burst.to_ne_bytes());
    // 4 ms at 6.25 MB/s = 25 000 bytes; queue 50 ms more.
    assert_eq!((burst, limit), (25_000, 337_500));
    // Slow links still get two full frames of burst; a rate beyond u32 bytes/s is in RATE64 only.
    assert_eq!(tbf_sizes(64_000, 9000).0, 2 * 9018);
    let fast = attrs(&tbf_options(100_000_000_000, 1500));
    assert_eq!(u32_at(&fast[0].1, 8), u32::MAX);
    assert_eq!(fast[1].1, 12_500_000_000u64.to_ne_bytes());
}

#[test]
fn netem_options_are_the_qopt_struct_then_attributes() {
    let spec = ImpairSpec {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(2),
        loss: 10.0,
        rate_bps: Some(100_000_000),
        duplicate: 0.0,
        corrupt: 1.0,
        reorder: 25.0,
    };
    let o = netem_options(&spec);
    assert_eq!(u32_at(&o, 4), NETEM_LIMIT);
    assert_eq!(u32_at(&o, 8), 429_496_730, "10 % of u32::MAX");
    assert_eq!(u32_at(&o, 16), 0, "no duplication");
    let a = attrs(&o[24..]);
    assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), [10, 11, 3, 4, 6]);
    assert_eq!(a[0].1, 10_000_000i64.to_ne_bytes());
    assert_eq!(a[1].1, 2_000_000i64.to_ne_bytes());
    assert_eq!(u32_at(&a[2].1, 0), 1_073_741_824, "25 %");
    assert_eq!(u32_at(&a[3].1, 0), 42_949_673, "1 %");
    assert_eq!(u32_at(&a[4].1, 0), 12_500_000, "rate in bytes/s");
    assert_eq!(probability(100.0), u32::MAX);
    assert_eq!(probability(0.0), 0);
}

fn tc_show(ns: &TestNs, dev: &str) -> String {
    ns.run(&["tc", "qdisc", "show", "dev", dev]).1
}

async fn apply_in(ns: &TestNs, dev: &str, spec: Option<ImpairSpec>) -> Result<Applied, QdiscError> {
    let dev = dev.to_string();
    crate::netns::in_netns(&ns.path(), move |h| async move {
        let idx = crate::links::get_iface(&h, &dev)
            .await
            .unwrap()
            .expect("device")
            .index;
        apply(&h, idx, 1500, spec.as_ref()).await
    })
    .await
    .unwrap()
}

fn rate(bps: u64) -> ImpairSpec {
    ImpairSpec {
        rate_bps: Some(bps),
        ..ImpairSpec::default()
    }
}

#[tokio::test]
async fn a_rate_is_set_replaced_and_removed_and_the_pods_own_qdisc_is_left_alone() {
    let ns = TestNs::new("qd");
    ns.ip(&["link", "add", "p1", "type", "veth", "peer", "name", "p2"]);
    ns.ip(&["link", "set", "p1", "up"]);

    assert_eq!(
        apply_in(&ns, "p1", Some(rate(50_000_000))).await.unwrap(),
        Applied::Full("tbf")
    );
    let s = tc_show(&ns, "p1");
    assert!(
        s.contains("qdisc tbf 4d4e: root") && s.contains("rate 50Mbit"),
        "{s}"
    );
    // Changed in place.
    apply_in(&ns, "p1", Some(rate(20_000_000))).await.unwrap();
    let s = tc_show(&ns, "p1");
    assert!(s.contains("rate 20Mbit") && !s.contains("50Mbit"), "{s}");
    // Switched to another kind (netem where the kernel has it, else the rate-only fallback
    // replaces it): never refused because ours is a tbf.
    let delay_and_rate = ImpairSpec {
        delay: Duration::from_millis(5),
        ..rate(20_000_000)
    };
    let r = apply_in(&ns, "p1", Some(delay_and_rate)).await.unwrap();
    assert!(
        matches!(r, Applied::Full("netem") | Applied::RateOnly { .. }),
        "{r:?}"
    );
    assert_eq!(
        apply_in(&ns, "p1", Some(rate(20_000_000))).await.unwrap(),
        Applied::Full("tbf")
    );
    // Removed: the kernel's default comes back.
    assert_eq!(apply_in(&ns, "p1", None).await.unwrap(), Applied::None);
    assert!(
        !tc_show(&ns, "p1").contains("tbf"),
        "{}",
        tc_show(&ns, "p1")
    );

    // The pod's own root qdisc: never replaced, never removed.
    let (ok, out) = ns.run(&[
        "tc", "qdisc", "add", "dev", "p2", "root", "handle", "1:", "tbf", "rate", "1mbit", "burst",
        "32kbit", "latency", "400ms",
    ]);
    assert!(ok, "{out}");
    let e = apply_in(&ns, "p2", Some(rate(50_000_000)))
        .await
        .expect_err("foreign");
    assert!(e.to_string().contains("tbf 1:"), "{e}");
    assert_eq!(apply_in(&ns, "p2", None).await.unwrap(), Applied::None);
    assert!(tc_show(&ns, "p2").contains("tbf 1: root"));
}

#[tokio::test]
async fn delay_needs_netem_and_says_so_where_the_kernel_lacks_it() {
    let ns = TestNs::new("qn");
    ns.ip(&["link", "add", "p1", "type", "veth", "peer", "name", "p2"]);
    let netem = ImpairSpec {
        delay: Duration::from_millis(10),
        ..ImpairSpec::default()
    };
    let with_rate = ImpairSpec {
        rate_bps: Some(10_000_000),
        ..netem
    };
    let has_netem = ns
        .run(&[
            "tc", "qdisc", "add", "dev", "p2", "root", "netem", "delay", "1ms",
        ])
        .0;
    if has_netem {
        assert_eq!(
            apply_in(&ns, "p1", Some(netem)).await.unwrap(),
            Applied::Full("netem")
        );
        assert!(tc_show(&ns, "p1").contains("delay 10ms"));
    } else {
        let e = apply_in(&ns, "p1", Some(netem))
            .await
            .expect_err("no netem");
        assert!(e.to_string().contains("no sch_netem: delay 10ms"), "{e}");
        // With a rate as well, the rate is applied and the rest named.
        match apply_in(&ns, "p1", Some(with_rate)).await.unwrap() {
            Applied::RateOnly { missing } => assert!(missing.contains("delay 10ms"), "{missing}"),
            other => panic!("{other:?}"),
        }
        assert!(tc_show(&ns, "p1").contains("rate 10Mbit"));
    }
}

/// What the declaration promises, measured: iperf3 TCP through a 50 Mbit/s tbf.
#[tokio::test]
async fn a_50mbit_rate_holds_tcp_near_50mbit() {
    let a = TestNs::new("qra");
    let b = TestNs::new("qrb");
    a.ip(&[
        "link", "add", "p1", "type", "veth", "peer", "name", "p2", "netns", &b.0,
    ]);
    a.ip(&["addr", "add", "192.0.2.1/30", "dev", "p1"]);
    b.ip(&["addr", "add", "192.0.2.2/30", "dev", "p2"]);
    a.ip(&["link", "set", "p1", "up"]);
    b.ip(&["link", "set", "p2", "up"]);
    apply_in(&a, "p1", Some(rate(50_000_000))).await.unwrap();
    let (ok, out) = b.run(&["iperf3", "-s", "-1", "-D", "-B", "192.0.2.2"]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out) = a.run(&["iperf3", "-c", "192.0.2.2", "-t", "3", "-J"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(
        (45e6..=55e6).contains(&bps),
        "TCP through a 50mbit tbf: {bps} bit/s"
    );
}
