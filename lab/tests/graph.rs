//! `meshnet-lab graph` and the daemons' `/topology` on a real 3-node lab (needs root): what is
//! drawn is what the kernel and the statuses say, rates included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{LabGuard, topo};

fn graph_json(lab: &LabGuard, interval_ms: &str) -> serde_json::Value {
    serde_json::from_str(&lab.ok(&["graph", "--format", "json", "--interval-ms", interval_ms]))
        .expect("graph JSON")
}

fn link(g: &serde_json::Value, uid: i64) -> serde_json::Value {
    g["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["uid"] == uid)
        .unwrap_or_else(|| panic!("no link {uid} in {g}"))
        .clone()
}

#[test]
fn graph_of_5node_across_three_nodes_shows_placement_state_and_rates() {
    let lab = LabGuard::new("graph");
    lab.ok(&["up", &topo("5node.yml"), "--nodes", "3"]);
    lab.assert_links_up(8);

    // Pods are drawn on the node the lab placed them on.
    let st = lab.status();
    let g = graph_json(&lab, "0");
    let nodes = g["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{g}");
    for p in st["pods"].as_array().unwrap() {
        let id = format!(
            "{}/{}",
            p["namespace"].as_str().unwrap(),
            p["name"].as_str().unwrap()
        );
        let n = nodes.iter().find(|n| n["name"] == p["node"]).unwrap();
        assert!(
            n["pods"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == id.as_str()),
            "{id} not on {}: {g}",
            p["node"]
        );
    }
    // Every link up, with its kind and the ports' MTU; 5node has one same-node pair (r2–r5).
    let links = g["links"].as_array().unwrap();
    assert_eq!(links.len(), 8, "{g}");
    for l in links {
        assert_eq!(l["state"], "up", "{l}");
        assert!(l["a"]["mtu"].as_u64().unwrap() > 0, "{l}");
        assert!(l["b"]["mtu"].as_u64().unwrap() > 0, "{l}");
    }
    let veth = link(&g, 5);
    assert_eq!(veth["kind"], "veth");
    assert_eq!(veth["a"]["pod"], "default/r2");
    assert_eq!(veth["a"]["interface"], "eth3");
    assert_eq!(link(&g, 1)["kind"], "vxlan");

    // Traffic r2 → r5 at 20 Mbit/s shows up as that link's rate (measured by the ports'
    // counters between two samples one second apart).
    lab.ok(&["exec", "r5", "--", "iperf3", "-s", "-1", "-D"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let client = std::process::Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
        .args(["--lab", &lab.name, "exec", "r2", "--"])
        .args(["iperf3", "-c", "25.25.25.5", "-t", "5", "-b", "20M"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let g = graph_json(&lab, "1000");
    let rate = link(&g, 5)["rate_ab_bps"].as_f64().unwrap();
    assert!(
        (10e6..40e6).contains(&rate),
        "r2→r5 at 20 Mbit/s drawn as {rate} bit/s"
    );
    let mut client = client;
    let _ = client.wait();

    // A port the router shuts: that cable is drawn down, the others stay up.
    lab.ok(&["exec", "r2", "--", "ip", "link", "set", "eth3", "down"]);
    let g = graph_json(&lab, "0");
    let veth = link(&g, 5);
    assert_eq!(veth["state"], "down", "{veth}");
    assert_eq!(veth["a"]["admin_up"], false, "{veth}");
    assert_eq!(link(&g, 1)["state"], "up");

    // The other formats render the same graph.
    let svg_path = std::env::temp_dir().join(format!("{}.svg", lab.name));
    lab.ok(&[
        "graph",
        "-o",
        svg_path.to_str().unwrap(),
        "--interval-ms",
        "0",
    ]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let _ = std::fs::remove_file(&svg_path);
    assert!(svg.starts_with("<svg "), "{svg}");
    assert_eq!(svg.matches("<path ").count(), 8);
    for pod in ["r1", "r2", "r3", "r4", "r5"] {
        assert!(svg.contains(&format!(">{pod}</text>")), "{pod} missing");
    }
    let dot = lab.ok(&["graph", "--format", "dot", "--interval-ms", "0"]);
    assert_eq!(dot.matches("subgraph cluster_").count(), 3);
    assert_eq!(dot.matches(" -- ").count(), 8);
    let mermaid = lab.ok(&["graph", "--format", "mermaid", "--interval-ms", "0"]);
    assert_eq!(mermaid.matches("linkStyle ").count(), 8);
    assert_eq!(
        lab.run(&["graph", "--format", "png"]).status.code(),
        Some(2)
    );
}
