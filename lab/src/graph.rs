//! `meshnet-lab graph`: a picture of the topology as it is — pods grouped by node, one line per
//! link, coloured by its state, labelled with the interfaces, kind, MTU and current rates.
//!
//! Pure: [`Graph::build`] joins the daemons' `/topology` views (two samples, for rates) into links
//! by `(namespace, uid)`; the renderers turn a [`Graph`] into Graphviz `dot`, Mermaid or a
//! self-contained SVG (laid out here, so no Graphviz is needed to get a picture).
//!
//! A link's drawn state is the cable's: `up` when both ends say up and both ports have carrier;
//! `down` when both ends exist but a port is shut or has no carrier (the light is out), or an
//! end's status is `down` (a pulled cable, a far port shut); `error`
//! when an end reports one; `pending` otherwise (an end missing, the peer not there yet).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use meshnet_topology::topology::LOCALHOST;
use meshnet_topology::view::{EndView, NodeView};
use serde::Serialize;

use crate::lab::{HTTP_PORT, Lab};
use crate::sys;

/// Output formats of `graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Dot,
    Mermaid,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "svg" => Ok(Format::Svg),
            "dot" => Ok(Format::Dot),
            "mermaid" => Ok(Format::Mermaid),
            "json" => Ok(Format::Json),
            other => Err(format!("format {other:?}: want svg, dot, mermaid or json")),
        }
    }
}

/// A node and the pods alive on it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeBox {
    pub name: String,
    pub host_ip: String,
    /// `NAMESPACE/POD`, sorted.
    pub pods: Vec<String>,
}

/// One end of a drawn link.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndLabel {
    /// `NAMESPACE/POD`, or `node:NAME` for a macvlan link to a node interface.
    pub pod: String,
    pub interface: String,
    /// The end's own state from its pod's status; `absent` when no daemon reports the end.
    pub state: String,
    pub carrier: Option<bool>,
    pub admin_up: Option<bool>,
    pub mtu: Option<u32>,
}

/// A link, as drawn.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Edge {
    pub namespace: String,
    pub uid: i64,
    pub a: EndLabel,
    pub b: EndLabel,
    pub kind: String,
    /// `up`, `down`, `error` or `pending` (see the module doc).
    pub state: String,
    /// The first end's message when not up.
    pub message: String,
    /// The ends' impairment notes (`r1: delay 10ms (netem)`), empty when none is declared.
    pub impairment: String,
    /// Bits per second from a to b and from b to a, over the sampling interval.
    pub rate_ab_bps: Option<f64>,
    pub rate_ba_bps: Option<f64>,
}

/// Everything `graph` draws.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Graph {
    pub nodes: Vec<NodeBox>,
    pub links: Vec<Edge>,
}

/// A port's counters at one sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    tx: u64,
    rx: u64,
    ifindex: u32,
    at_ms: u64,
}

/// An end, the node that reported it, and when.
type SampledEnd<'a> = (&'a EndView, &'a str, u64);

fn pod_id(e: &EndView) -> String {
    format!("{}/{}", e.namespace, e.pod)
}

/// Bits per second of a byte counter between two samples; `None` when a sample is missing, the
/// counter went backwards (the port was replaced) or no time passed.
fn rate(before: Option<u64>, after: Option<u64>, dt_ms: u64) -> Option<f64> {
    let (b, a) = (before?, after?);
    if a < b || dt_ms == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // rates for display
    Some((a - b) as f64 * 8.0 * 1000.0 / dt_ms as f64)
}

impl Graph {
    /// Joins the node views into a graph. `before` and `after` are the same nodes sampled twice
    /// (`before` may be empty: no rates). Links are keyed by `(namespace, uid)`; an end that
    /// appears on no node is drawn as `absent`.
    #[must_use]
    pub fn build(before: &[NodeView], after: &[NodeView]) -> Graph {
        let mut nodes: Vec<NodeBox> = after
            .iter()
            .map(|n| {
                let mut pods: Vec<String> = n.ends.iter().map(pod_id).collect();
                pods.sort();
                pods.dedup();
                NodeBox {
                    name: n.node.clone(),
                    host_ip: n.host_ip.clone(),
                    pods,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));

        // The earlier sample of each port, and how long ago it was taken, for rates.
        let mut earlier: BTreeMap<(String, String), Sample> = BTreeMap::new();
        for n in before {
            for e in &n.ends {
                if let Some(p) = &e.port {
                    earlier.insert(
                        (pod_id(e), e.interface.clone()),
                        Sample {
                            tx: p.tx_bytes,
                            rx: p.rx_bytes,
                            ifindex: p.ifindex,
                            at_ms: n.sampled_at_ms,
                        },
                    );
                }
            }
        }

        // Ends by link; each end with the time its node was sampled.
        let mut by_link: BTreeMap<(String, i64), Vec<SampledEnd>> = BTreeMap::new();
        for n in after {
            for e in &n.ends {
                by_link
                    .entry((e.namespace.clone(), e.uid))
                    .or_default()
                    .push((e, &n.node, n.sampled_at_ms));
            }
        }

        // Bits per second the port sent (`sent`) or received, since the earlier sample.
        let port_rate = |e: &EndView, now_ms: u64, sent: bool| -> Option<f64> {
            let p = e.port.as_ref()?;
            let s = earlier.get(&(pod_id(e), e.interface.clone()))?;
            if s.ifindex != p.ifindex {
                return None;
            }
            let (then, now) = if sent {
                (s.tx, p.tx_bytes)
            } else {
                (s.rx, p.rx_bytes)
            };
            rate(Some(then), Some(now), now_ms.saturating_sub(s.at_ms))
        };

        let mut links = Vec::new();
        for ((namespace, uid), mut ends) in by_link {
            ends.sort_by(|x, y| (pod_id(x.0), &x.0.interface).cmp(&(pod_id(y.0), &y.0.interface)));
            let (first, node_a, t_a) = ends[0];
            let localhost = first.peer_pod == LOCALHOST;
            let a = end_label(first);
            let (b, b_view) = match ends.get(1) {
                Some((e, _, t)) => (end_label(e), Some((*e, *t))),
                None if first.peer_pod == LOCALHOST => (
                    EndLabel {
                        pod: format!("node:{node_a}"),
                        interface: first.peer_interface.clone(),
                        state: "up".into(),
                        carrier: None,
                        admin_up: None,
                        mtu: None,
                    },
                    None,
                ),
                None => (
                    EndLabel {
                        pod: format!("{namespace}/{}", first.peer_pod),
                        interface: first.peer_interface.clone(),
                        state: "absent".into(),
                        carrier: None,
                        admin_up: None,
                        mtu: None,
                    },
                    None,
                ),
            };
            let state = cable_state(&a, &b, localhost);
            let message = ends
                .iter()
                .map(|(e, _, _)| e.message.as_str())
                .find(|m| !m.is_empty())
                .unwrap_or_default()
                .to_string();
            let impairment = ends
                .iter()
                .filter(|(e, _, _)| !e.impairment.is_empty())
                .map(|(e, _, _)| format!("{}: {}", e.pod, e.impairment))
                .collect::<Vec<_>>()
                .join("; ");
            let kind = ends
                .iter()
                .map(|(e, _, _)| e.kind.as_str())
                .find(|k| !k.is_empty())
                .unwrap_or_default()
                .to_string();
            // a→b is what a sent; b→a what b sent, or (no b port: macvlan) what a received.
            let rate_ab = port_rate(first, t_a, true);
            let rate_ba = match b_view {
                Some((e, t)) => port_rate(e, t, true),
                None if localhost => port_rate(first, t_a, false),
                None => None,
            };
            links.push(Edge {
                namespace,
                uid,
                a,
                b,
                kind,
                state,
                message,
                impairment,
                rate_ab_bps: rate_ab,
                rate_ba_bps: rate_ba,
            });
        }
        Graph { nodes, links }
    }
}

fn end_label(e: &EndView) -> EndLabel {
    EndLabel {
        pod: pod_id(e),
        interface: e.interface.clone(),
        state: e.state.clone(),
        carrier: e.port.as_ref().map(|p| p.carrier),
        admin_up: e.port.as_ref().map(|p| p.admin_up),
        mtu: e.port.as_ref().map(|p| p.mtu),
    }
}

/// The cable's state from its two ends (see the module doc). Pure.
fn cable_state(a: &EndLabel, b: &EndLabel, localhost: bool) -> String {
    let ends = if localhost { vec![a] } else { vec![a, b] };
    if ends.iter().any(|e| e.state == "error") {
        return "error".into();
    }
    // An end whose status is `down` (a pulled cable, a far port shut) is a cable drawn down.
    if ends.iter().any(|e| e.state == "down") {
        return "down".into();
    }
    if ends.iter().any(|e| e.state != "up" || e.carrier.is_none()) {
        return "pending".into();
    }
    if ends
        .iter()
        .all(|e| e.carrier == Some(true) && e.admin_up == Some(true))
    {
        "up".into()
    } else {
        "down".into()
    }
}

/// A colour per drawn state (also the legend).
fn colour(state: &str) -> &'static str {
    match state {
        "up" => "#2e7d32",
        "down" => "#c62828",
        "error" => "#6a1b9a",
        _ => "#ef6c00",
    }
}

/// `1.2 Gbit/s`-style text.
fn human_rate(bps: f64) -> String {
    const UNITS: [(&str, f64); 4] = [
        ("Gbit/s", 1e9),
        ("Mbit/s", 1e6),
        ("kbit/s", 1e3),
        ("bit/s", 1.0),
    ];
    for (u, f) in UNITS {
        if bps >= f {
            return format!("{:.1} {u}", bps / f);
        }
    }
    "0 bit/s".into()
}

impl Edge {
    /// The label text: interfaces, then kind, MTU and rates (two lines).
    fn label_lines(&self) -> (String, String) {
        let mut second = Vec::new();
        if !self.kind.is_empty() {
            second.push(self.kind.clone());
        }
        if let Some(m) = self.a.mtu.or(self.b.mtu) {
            second.push(format!("mtu {m}"));
        }
        // Rates once a link carries traffic (≥ 10 kbit/s either way): hellos and neighbour
        // discovery are noise here.
        if [self.rate_ab_bps, self.rate_ba_bps]
            .iter()
            .flatten()
            .any(|r| *r >= 10_000.0)
        {
            let r = |x: Option<f64>| x.map_or("?".into(), human_rate);
            second.push(format!("→{} ←{}", r(self.rate_ab_bps), r(self.rate_ba_bps)));
        }
        if !self.impairment.is_empty() {
            second.push(format!("⚡ {}", self.impairment));
        }
        if self.state != "up" {
            second.push(self.state.clone());
        }
        (
            format!("{}–{}", self.a.interface, self.b.interface),
            second.join(" · "),
        )
    }

    fn a_id(&self) -> &str {
        &self.a.pod
    }
    fn b_id(&self) -> &str {
        &self.b.pod
    }
}

/// A name safe as a dot/mermaid identifier.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn short(pod: &str) -> &str {
    pod.rsplit('/').next().unwrap_or(pod)
}

/// Graphviz `dot` (undirected; one cluster per node).
#[must_use]
pub fn to_dot(g: &Graph) -> String {
    let mut s =
        String::from("graph meshnet {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for (i, n) in g.nodes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  subgraph cluster_{i} {{\n    label=\"{} ({})\";",
            dot_escape(&n.name),
            dot_escape(&n.host_ip)
        );
        for p in &n.pods {
            let _ = writeln!(
                s,
                "    \"{}\" [label=\"{}\"];",
                dot_escape(p),
                dot_escape(short(p))
            );
        }
        s.push_str("  }\n");
    }
    for e in &g.links {
        let (l1, l2) = e.label_lines();
        let style = if e.state == "up" { "solid" } else { "dashed" };
        let _ = writeln!(
            s,
            "  \"{}\" -- \"{}\" [color=\"{}\", style={style}, label=\"{}\\n{}\"];",
            dot_escape(e.a_id()),
            dot_escape(e.b_id()),
            colour(&e.state),
            dot_escape(&l1),
            dot_escape(&l2)
        );
    }
    s.push_str("}\n");
    s
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Mermaid `flowchart` (one subgraph per node; links styled by state).
#[must_use]
pub fn to_mermaid(g: &Graph) -> String {
    let mut s = String::from("flowchart LR\n");
    for n in &g.nodes {
        let _ = writeln!(
            s,
            "  subgraph {}[\"{} · {}\"]",
            ident(&format!("node {}", n.name)),
            mermaid_escape(&n.name),
            mermaid_escape(&n.host_ip)
        );
        for p in &n.pods {
            let _ = writeln!(s, "    {}[\"{}\"]", ident(p), mermaid_escape(short(p)));
        }
        s.push_str("  end\n");
    }
    for e in &g.links {
        let (l1, l2) = e.label_lines();
        let arrow = if e.state == "up" { "---" } else { "-.-" };
        let _ = writeln!(
            s,
            "  {} {arrow}|\"{}<br/>{}\"| {}",
            ident(e.a_id()),
            mermaid_escape(&l1),
            mermaid_escape(&l2),
            ident(e.b_id())
        );
    }
    for (i, e) in g.links.iter().enumerate() {
        let _ = writeln!(
            s,
            "  linkStyle {i} stroke:{},stroke-width:2px",
            colour(&e.state)
        );
    }
    s
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// SVG layout: one column per node, pods stacked in it; pods that only appear as a link's far end
// (absent, or a node interface) get a column of their own on the right.
const COL_W: f64 = 260.0;
const COL_GAP: f64 = 200.0;
const POD_W: f64 = 150.0;
const POD_H: f64 = 40.0;
const POD_GAP: f64 = 90.0;
const TOP: f64 = 170.0;
const MARGIN: f64 = 30.0;

/// A self-contained SVG.
#[must_use]
pub fn to_svg(g: &Graph) -> String {
    let mut columns: Vec<(String, String, Vec<String>)> = g
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.host_ip.clone(), n.pods.clone()))
        .collect();
    let placed: std::collections::HashSet<&String> =
        g.nodes.iter().flat_map(|n| n.pods.iter()).collect();
    let mut others: Vec<String> = g
        .links
        .iter()
        .flat_map(|e| [&e.a.pod, &e.b.pod])
        .filter(|p| !placed.contains(p))
        .cloned()
        .collect();
    others.sort();
    others.dedup();
    if !others.is_empty() {
        columns.push(("outside".into(), "not on a lab node".into(), others));
    }
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let rows = columns.iter().map(|c| c.2.len()).max().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)] // small counts
    let (width, height) = (
        2.0 * MARGIN
            + columns.len() as f64 * COL_W
            + (columns.len().saturating_sub(1)) as f64 * COL_GAP,
        TOP + rows as f64 * (POD_H + POD_GAP) - POD_GAP + 90.0,
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    for (ci, (name, ip, pods)) in columns.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x = MARGIN + ci as f64 * (COL_W + COL_GAP);
        #[allow(clippy::cast_precision_loss)]
        let h = 60.0 + pods.len() as f64 * (POD_H + POD_GAP) - POD_GAP;
        let _ = writeln!(
            s,
            r##"<rect x="{x:.0}" y="{y:.0}" width="{COL_W:.0}" height="{h:.0}" rx="10" fill="#f5f7fa" stroke="#90a4ae"/>"##,
            y = TOP - 40.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.0}" font-weight="bold">{} <tspan font-weight="normal" fill="#546e7a">{}</tspan></text>"##,
            x + 12.0,
            TOP - 18.0,
            xml_escape(name),
            xml_escape(ip)
        );
        for (pi, p) in pods.iter().enumerate() {
            let px = x + (COL_W - POD_W) / 2.0;
            #[allow(clippy::cast_precision_loss)]
            let py = TOP + 10.0 + pi as f64 * (POD_H + POD_GAP);
            pos.insert(p.as_str(), (px, py));
        }
    }
    // Links first, pods on top of them. Each link is a quadratic curve from pod centre to pod
    // centre: links within a column bow out to the right, links between neighbouring columns
    // bow apart a little (parallel links stay apart), and links that skip a column arc over the
    // node boxes. The interface names sit near each end, kind/MTU/rates/state in the middle.
    let col_step = COL_W + COL_GAP;
    let mut arcs = 0.0;
    // Text goes on top of everything: written after the pods.
    let mut labels = String::new();
    for (i, e) in g.links.iter().enumerate() {
        let (Some(&(ax, ay)), Some(&(bx, by))) = (pos.get(e.a_id()), pos.get(e.b_id())) else {
            continue;
        };
        let (p0, p2) = (
            (ax + POD_W / 2.0, ay + POD_H / 2.0),
            (bx + POD_W / 2.0, by + POD_H / 2.0),
        );
        #[allow(clippy::cast_precision_loss)]
        let spread = ((i % 5) as f64 - 2.0) * 14.0;
        // Crossing links between neighbouring columns meet in the middle: their labels are
        // staggered along the curve. Arcs and same-column links are labelled at their apex.
        let mut label_t = 0.5;
        let c = if (ax - bx).abs() < 1.0 {
            (
                p0.0 + POD_W * 0.9 + (p2.1 - p0.1).abs() * 0.25 + spread,
                (p0.1 + p2.1) / 2.0,
            )
        } else if (ax - bx).abs() > col_step + 1.0 {
            // The curve's peak (t = 0.5) is at 0.25·y0 + 0.5·cy + 0.25·y2: put it above the boxes.
            let peak = TOP - 55.0 - arcs * 16.0;
            arcs += 1.0;
            ((p0.0 + p2.0) / 2.0, 2.0 * peak - 0.5 * (p0.1 + p2.1))
        } else {
            label_t = [0.5, 0.3, 0.7][i % 3];
            ((p0.0 + p2.0) / 2.0, (p0.1 + p2.1) / 2.0 + spread)
        };
        let at = |t: f64| {
            let u = 1.0 - t;
            (
                u * u * p0.0 + 2.0 * u * t * c.0 + t * t * p2.0,
                u * u * p0.1 + 2.0 * u * t * c.1 + t * t * p2.1,
            )
        };
        let dash = if e.state == "up" {
            ""
        } else {
            r#" stroke-dasharray="6 4""#
        };
        let col = colour(&e.state);
        let _ = writeln!(
            s,
            r#"<path d="M{:.0},{:.0} Q{:.0},{:.0} {:.0},{:.0}" fill="none" stroke="{col}" stroke-width="2.5"{dash}><title>{}</title></path>"#,
            p0.0,
            p0.1,
            c.0,
            c.1,
            p2.0,
            p2.1,
            xml_escape(&format!(
                "{} uid {}: {}:{} – {}:{} {} {}",
                e.namespace,
                e.uid,
                e.a.pod,
                e.a.interface,
                e.b.pod,
                e.b.interface,
                e.state,
                e.message
            ))
        );
        let halo = r#"stroke="white" stroke-width="3" paint-order="stroke""#;
        // Interface names just outside each pod box (the boxes are drawn over the curve).
        let reach = |t_end: f64, toward: f64| {
            // Walk along the curve from the end until outside the box.
            let mut t = t_end;
            for _ in 0..40 {
                let (x, y) = at(t);
                let (bx, by) = if t_end < 0.5 { (ax, ay) } else { (bx, by) };
                if x < bx - 4.0 || x > bx + POD_W + 4.0 || y < by - 4.0 || y > by + POD_H + 4.0 {
                    break;
                }
                t += toward * 0.01;
            }
            at(t)
        };
        for ((x, y), (bx, by), name) in [
            (reach(0.0, 1.0), (ax, ay), &e.a.interface),
            (reach(1.0, -1.0), (bx, by), &e.b.interface),
        ] {
            // Anchored away from the box the curve leaves, so the text never sits under it.
            let (anchor, dx, dy) = if x > bx + POD_W {
                ("start", 3.0, 4.0)
            } else if x < bx {
                ("end", -3.0, 4.0)
            } else if y < by {
                ("middle", 0.0, -3.0)
            } else {
                ("middle", 0.0, 12.0)
            };
            let _ = writeln!(
                labels,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="{anchor}" font-size="11" fill="{col}" {halo}>{}</text>"#,
                x + dx,
                y + dy,
                xml_escape(name)
            );
        }
        let (_, l2) = e.label_lines();
        if !l2.is_empty() {
            let (mx, my) = at(label_t);
            let _ = writeln!(
                labels,
                r#"<text x="{mx:.0}" y="{:.0}" text-anchor="middle" font-size="10" fill="{col}" {halo}>{}</text>"#,
                my + 3.0,
                xml_escape(&l2)
            );
        }
    }
    for (p, (x, y)) in &pos {
        let _ = writeln!(
            s,
            r##"<rect x="{x:.0}" y="{y:.0}" width="{POD_W:.0}" height="{POD_H:.0}" rx="6" fill="#e3f2fd" stroke="#1565c0"/><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text>"##,
            x + POD_W / 2.0,
            y + POD_H / 2.0 + 4.0,
            xml_escape(short(p))
        );
    }
    s.push_str(&labels);
    // Legend.
    let ly = height - 30.0;
    for (i, st) in ["up", "down", "pending", "error"].iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let lx = MARGIN + i as f64 * 110.0;
        let dash = if *st == "up" {
            ""
        } else {
            r#" stroke-dasharray="6 4""#
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.0}" y1="{ly:.0}" x2="{:.0}" y2="{ly:.0}" stroke="{}" stroke-width="2.5"{dash}/><text x="{:.0}" y="{:.0}">{st}</text>"#,
            lx + 30.0,
            colour(st),
            lx + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Every node daemon's `/topology` of lab `lab`, now. A daemon that does not answer is left out
/// with a warning on stderr (its pods' ends are then drawn as absent by their peers).
///
/// # Errors
/// The lab's state cannot be read.
pub fn sample(lab: &Lab) -> anyhow::Result<Vec<NodeView>> {
    let st = lab.load()?;
    let mut out = Vec::new();
    for n in &st.nodes {
        let body = sys::run_in(
            &n.netns,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{HTTP_PORT}/topology"),
            ],
        );
        match body.map(|b| serde_json::from_str::<NodeView>(&b)) {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => eprintln!("graph: {}: unreadable /topology: {e}", n.name),
            Err(e) => eprintln!("graph: {}: daemon does not answer: {e:#}", n.name),
        }
    }
    Ok(out)
}

/// `graph`: samples every daemon twice, `interval` apart (rates), and renders the result.
///
/// # Errors
/// As [`sample`].
pub fn draw(lab: &Lab, format: Format, interval: std::time::Duration) -> anyhow::Result<String> {
    let before = if interval.is_zero() {
        Vec::new()
    } else {
        let b = sample(lab)?;
        std::thread::sleep(interval);
        b
    };
    let after = sample(lab)?;
    Ok(render(&Graph::build(&before, &after), format)?)
}

/// Renders `g` in `format`.
///
/// # Errors
/// JSON serialisation fails (it does not for this type).
pub fn render(g: &Graph, format: Format) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Svg => to_svg(g),
        Format::Dot => to_dot(g),
        Format::Mermaid => to_mermaid(g),
        Format::Json => serde_json::to_string_pretty(g)? + "\n",
    })
}

#[cfg(test)]
mod tests;
