use super::*;
use meshnet_topology::view::PortView;

fn end(
    pod: &str,
    intf: &str,
    uid: i64,
    peer: &str,
    state: &str,
    port: Option<PortView>,
) -> EndView {
    EndView {
        namespace: "lab".into(),
        pod: pod.into(),
        interface: intf.into(),
        uid,
        peer_pod: peer.into(),
        peer_interface: "eth1".into(),
        kind: "grpc".into(),
        state: state.into(),
        message: if state == "up" {
            String::new()
        } else {
            format!("{state} because")
        },
        declared_mtu: None,
        impairment: String::new(),
        port,
    }
}

fn port(ifindex: u32, tx: u64, rx: u64) -> Option<PortView> {
    Some(PortView {
        ifindex,
        mtu: 1500,
        admin_up: true,
        carrier: true,
        tx_bytes: tx,
        rx_bytes: rx,
        ..PortView::default()
    })
}

fn node(name: &str, at: u64, ends: Vec<EndView>) -> NodeView {
    NodeView {
        node: name.into(),
        host_ip: format!("198.51.100.{}", name.trim_start_matches("node")),
        sampled_at_ms: at,
        ends,
    }
}

#[test]
fn a_cross_node_link_is_up_with_rates_from_two_samples() {
    let before = [
        node(
            "node1",
            1000,
            vec![end("r1", "eth1", 1, "r2", "up", port(5, 0, 0))],
        ),
        node(
            "node2",
            1000,
            vec![end("r2", "eth1", 1, "r1", "up", port(9, 0, 0))],
        ),
    ];
    // r1 sent 125 000 bytes in 1 s (1 Mbit/s), r2 250 000 in 0.5 s (4 Mbit/s).
    let after = [
        node(
            "node1",
            2000,
            vec![end("r1", "eth1", 1, "r2", "up", port(5, 125_000, 0))],
        ),
        node(
            "node2",
            1500,
            vec![end("r2", "eth1", 1, "r1", "up", port(9, 250_000, 0))],
        ),
    ];
    let g = Graph::build(&before, &after);
    assert_eq!(g.nodes.len(), 2);
    assert_eq!(g.nodes[0].pods, vec!["lab/r1".to_string()]);
    assert_eq!(g.links.len(), 1);
    let l = &g.links[0];
    assert_eq!((l.a.pod.as_str(), l.b.pod.as_str()), ("lab/r1", "lab/r2"));
    assert_eq!(l.state, "up");
    assert_eq!(l.kind, "grpc");
    assert_eq!(l.rate_ab_bps, Some(1_000_000.0));
    assert_eq!(l.rate_ba_bps, Some(4_000_000.0));
    assert_eq!(
        l.label_lines().1,
        "grpc · mtu 1500 · →1.0 Mbit/s ←4.0 Mbit/s"
    );
}

#[test]
fn a_replaced_port_or_a_missing_sample_gives_no_rate() {
    let before = [node(
        "node1",
        0,
        vec![end("r1", "eth1", 1, "r2", "up", port(5, 0, 0))],
    )];
    let after = [node(
        "node1",
        1000,
        vec![
            end("r1", "eth1", 1, "r2", "up", port(6, 1000, 0)),
            end("r2", "eth1", 1, "r1", "up", port(7, 1000, 0)),
        ],
    )];
    let g = Graph::build(&before, &after);
    assert_eq!(g.links[0].rate_ab_bps, None, "ifindex changed");
    assert_eq!(g.links[0].rate_ba_bps, None, "no earlier sample");
    assert_eq!(Graph::build(&[], &after).links[0].rate_ab_bps, None);
}

#[test]
fn the_cable_state_follows_ports_and_statuses() {
    let shut = Some(PortView {
        admin_up: false,
        ..port(1, 0, 0).expect("some")
    });
    let dark = Some(PortView {
        carrier: false,
        ..port(2, 0, 0).expect("some")
    });
    let cases = [
        (
            vec![
                end("a", "e1", 1, "b", "up", shut),
                end("b", "e1", 1, "a", "up", port(3, 0, 0)),
            ],
            "down",
        ),
        (
            vec![
                end("a", "e1", 1, "b", "up", dark),
                end("b", "e1", 1, "a", "up", port(3, 0, 0)),
            ],
            "down",
        ),
        (
            vec![
                end("a", "e1", 1, "b", "error", None),
                end("b", "e1", 1, "a", "up", port(3, 0, 0)),
            ],
            "error",
        ),
        (
            vec![end("a", "e1", 1, "b", "pending", port(1, 0, 0))],
            "pending",
        ),
        // An end whose status is down (its far router shut its port, a pulled cable).
        (
            vec![
                end("a", "e1", 1, "b", "up", port(3, 0, 0)),
                end("b", "e1", 1, "a", "down", port(1, 0, 0)),
            ],
            "down",
        ),
        (
            vec![
                end("a", "e1", 1, "b", "up", None),
                end("b", "e1", 1, "a", "up", port(3, 0, 0)),
            ],
            "pending",
        ),
    ];
    for (ends, want) in cases {
        let g = Graph::build(&[], &[node("node1", 0, ends)]);
        assert_eq!(g.links[0].state, want, "{:?}", g.links[0]);
    }
    // Only one end known: the other is drawn as absent, with the first end's message.
    let g = Graph::build(
        &[],
        &[node(
            "node1",
            0,
            vec![end("a", "e1", 1, "b", "pending", None)],
        )],
    );
    assert_eq!(g.links[0].b.pod, "lab/b");
    assert_eq!(g.links[0].b.state, "absent");
    assert_eq!(g.links[0].message, "pending because");
}

#[test]
fn a_macvlan_link_ends_at_the_node_and_its_return_rate_is_what_the_pod_received() {
    let before = [node(
        "node1",
        0,
        vec![end("r2", "eth3", 4, "localhost", "up", port(3, 0, 0))],
    )];
    let after = [node(
        "node1",
        1000,
        vec![end("r2", "eth3", 4, "localhost", "up", port(3, 1000, 2000))],
    )];
    let g = Graph::build(&before, &after);
    let l = &g.links[0];
    assert_eq!(l.b.pod, "node:node1");
    assert_eq!(l.state, "up");
    assert_eq!(l.rate_ab_bps, Some(8000.0));
    assert_eq!(l.rate_ba_bps, Some(16000.0));
}

fn sample() -> Graph {
    Graph::build(
        &[],
        &[
            node(
                "node1",
                0,
                vec![
                    end("r1", "eth1", 1, "r2", "up", port(5, 0, 0)),
                    end("r1", "eth2", 2, "r3", "up", port(6, 0, 0)),
                    end("r3", "eth1", 2, "r1", "up", port(7, 0, 0)),
                ],
            ),
            node("node2", 0, vec![end("r2", "eth1", 1, "r1", "error", None)]),
        ],
    )
}

#[test]
fn impairment_notes_are_drawn_with_the_pod_that_reports_them() {
    let mut a = end("r1", "eth1", 1, "r2", "up", port(5, 0, 0));
    a.impairment = "rate 50mbit (tbf)".into();
    let b = end("r2", "eth1", 1, "r1", "up", port(6, 0, 0));
    let g = Graph::build(&[], &[node("node1", 0, vec![a, b])]);
    assert_eq!(g.links[0].impairment, "r1: rate 50mbit (tbf)");
    assert!(
        g.links[0]
            .label_lines()
            .1
            .contains("⚡ r1: rate 50mbit (tbf)")
    );
    assert!(to_svg(&g).contains("r1: rate 50mbit (tbf)"));
}

#[test]
fn dot_has_a_cluster_per_node_and_a_coloured_edge_per_link() {
    let d = to_dot(&sample());
    assert!(d.starts_with("graph meshnet {"));
    assert_eq!(d.matches("subgraph cluster_").count(), 2);
    assert_eq!(d.matches(" -- ").count(), 2);
    assert!(
        d.contains(r##""lab/r1" -- "lab/r2" [color="#6a1b9a", style=dashed"##),
        "{d}"
    );
    assert!(
        d.contains(r##""lab/r1" -- "lab/r3" [color="#2e7d32", style=solid"##),
        "{d}"
    );
}

#[test]
fn mermaid_styles_each_link() {
    let m = to_mermaid(&sample());
    assert!(m.starts_with("flowchart LR\n"));
    assert_eq!(m.matches("  end\n").count(), 2);
    assert!(m.contains("lab_r1 -.-|"), "{m}");
    assert!(m.contains("lab_r1 ---|"), "{m}");
    assert!(m.contains("linkStyle 1 stroke:#2e7d32"), "{m}");
}

#[test]
fn svg_draws_every_pod_and_link_and_escapes_text() {
    let mut g = sample();
    g.links[0].message = "<bad> & \"quoted\"".into();
    let s = to_svg(&g);
    assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(s.trim_end().ends_with("</svg>"));
    assert_eq!(s.matches("<path ").count(), 2);
    // Three pods plus two node boxes, the background and nothing else are rects.
    assert_eq!(s.matches("<rect ").count(), 1 + 2 + 3);
    assert!(s.contains("&lt;bad&gt; &amp; &quot;quoted&quot;"));
    assert!(!s.contains("<bad>"));
    assert_eq!(s.matches('<').count(), s.matches('>').count());
}

#[test]
fn formats_parse_by_name() {
    assert_eq!("svg".parse::<Format>(), Ok(Format::Svg));
    assert_eq!("mermaid".parse::<Format>(), Ok(Format::Mermaid));
    assert!("png".parse::<Format>().expect_err("no png").contains("png"));
}
