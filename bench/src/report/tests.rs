use super::*;

fn sample() -> Report {
    let mut runs = Runs::default();
    for (rep, (grpc, vxlan)) in [(5.0, 10.0), (6.0, 10.0), (4.0, 8.0)].iter().enumerate() {
        runs.add(
            Series::new("grpc", "tcp1_gbps", "plain"),
            "Gbit/s",
            rep,
            *grpc,
        );
        runs.add(
            Series::new("vxlan", "tcp1_gbps", "plain"),
            "Gbit/s",
            rep,
            *vxlan,
        );
        runs.add(
            Series::new("grpc", "udp64_kpps", "plain"),
            "kpps",
            rep,
            100.0,
        );
    }
    runs.add(Series::new("grpc", "up_s", "plain").links(100), "s", 0, 2.0);
    let mut r = Report {
        paths: ["vxlan", "grpc", "grpc-afpacket"]
            .iter()
            .map(|p| PathInfo {
                name: (*p).into(),
                description: format!("the {p} path"),
            })
            .collect(),
        results: runs.figures(),
        ratios: runs.ratios(&[("grpc", "vxlan")], &["tcp1_gbps", "udp64_kpps"]),
        ..Report::default()
    };
    r.settings.conditions = vec!["plain".into()];
    r.failures.push(Failure {
        path: "grpc-afpacket".into(),
        condition: "*".into(),
        metric: None,
        reason: "no | such\nthing".into(),
    });
    r
}

#[test]
fn figures_and_pairwise_ratios() {
    let r = sample();
    let g = r
        .results
        .iter()
        .find(|f| f.path == "grpc" && f.metric == "tcp1_gbps")
        .unwrap();
    assert_eq!((g.median, g.min, g.max), (5.0, 4.0, 6.0));
    assert_eq!(g.unit, "Gbit/s");
    // Ratios per repetition: 0.5, 0.6, 0.5 — not median(grpc) / median(vxlan) = 0.5.
    assert_eq!(r.ratios.len(), 1, "udp64 has no vxlan partner");
    let x = &r.ratios[0];
    assert_eq!(x.runs, vec![0.5, 0.6, 0.5]);
    assert_eq!((x.median, x.min, x.max), (0.5, 0.5, 0.6));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["results"][0]["runs"].as_array().unwrap().len(), 3);
    assert!(
        json["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["links"] == 100)
    );
}

#[test]
fn markdown_shows_numbers_ratios_and_failures() {
    let md = markdown(&sample());
    assert!(md.contains("| grpc | 5.00 (4.00–6.00) |"), "{md}");
    assert!(md.contains("| grpc ÷ vxlan | 0.50 (0.50–0.60) |"), "{md}");
    assert!(
        md.contains("| grpc-afpacket | **FAILED**: no / such thing |"),
        "{md}"
    );
    assert!(md.contains("| grpc | 100 | 2.00 |"), "{md}");
    // Every table row has as many cells as its header.
    for table in md.split("\n\n").filter(|t| t.starts_with("| path |")) {
        let cols: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
        assert!(cols.iter().all(|c| *c == cols[0]), "{table}");
    }
}

#[test]
fn svg_is_well_formed_enough() {
    let s = svg(&sample(), "plain");
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    // One bar per figure measured: tcp1 and udp64 of grpc, tcp1 of vxlan (+ background, legend).
    assert_eq!(s.matches("<title>").count(), 3);
    assert!(s.contains("<title>grpc tcp1_gbps: 5.000</title>"));
    assert!(s.contains(">failed</text>"));
    assert_eq!(s.matches('<').count(), s.matches('>').count());
}

#[test]
fn nice_axis_maxima() {
    assert_eq!(nice_max(7.3), 10.0);
    assert_eq!(nice_max(23.0), 25.0);
    assert_eq!(nice_max(180.0), 200.0);
    assert_eq!(nice_max(0.0), 1.0);
    assert_eq!(nice_max(1.0), 1.0);
}
