//! Per-link counters for the kernel's link kinds (veth, VXLAN, macvlan), read from each pod end's
//! interface statistics when `/metrics` is scraped.
//!
//! The gRPC wire counts its own frames; the kernel counts these links' frames itself, so there is
//! nothing to count on a hot path: a scrape dumps each namespace that holds a live kernel-link
//! end once (one netlink link dump, at most [`PARALLEL_DUMPS`] at a time) and renders one series
//! per end. The series are made at render time ([`families`], from [`Row`]s) from the
//! reconciler's current list of live ends ([`crate::reconcile::Reconciler::kernel_links`]) and
//! the wire's current halves ([`crate::gwire::WireNode::link_rows`]), so a link that goes stops
//! being exported at the next scrape — no stale carrier gauge stays at 1, on any kind.
//!
//! Names and labels are the gRPC links' (`namespace`, `pod`, `interface`, `peer_pod`, `uid`,
//! `kind`), so one query covers every kind; [`merge`] puts the samples into the exporter's
//! families of the same name (or adds the family when no gRPC link has made it). Directions are
//! the pod's: `tx` is what the pod sent into the link. Drops carry the kernel's two counters as
//! reasons `tx_dropped` and `rx_dropped`. `meshnet_link_admin_up` is 1 while the pod's port is up
//! (the router owns it: `ip link set … down`, FRR `shutdown`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use futures::StreamExt;

/// Namespaces dumped at once during a scrape.
pub const PARALLEL_DUMPS: usize = 4;

/// A link end's metric labels (every kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub namespace: String,
    pub pod: String,
    pub interface: String,
    pub peer_pod: String,
    pub uid: i64,
    /// `veth`, `vxlan`, `macvlan` or `grpc`.
    pub kind: &'static str,
}

/// One pod's end of a live kernel link, with its metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    pub labels: Labels,
    /// The pod's network namespace.
    pub netns: PathBuf,
}

/// A link end's counters and flags, as the kernel reports them (the view's port).
pub use crate::view::PortView as EndStats;

/// One metric family to add to the exposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub samples: Vec<String>,
}

/// Escapes a label value for the text exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One link end's series, whatever its kind: the labels and the values a scrape renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub labels: Labels,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// `(reason, frames)`, every reason of the kind (zeros included, so each series exists).
    pub drops: Vec<(&'static str, u64)>,
    pub carrier: bool,
    /// The pod's admin state of its port, where meshnet reads it (kernel link kinds).
    pub admin_up: Option<bool>,
}

impl Row {
    /// A kernel link's end, from its interface statistics.
    pub fn kernel(l: &KernelLink, s: &EndStats) -> Self {
        Row {
            labels: l.labels.clone(),
            tx_frames: s.tx_frames,
            tx_bytes: s.tx_bytes,
            rx_frames: s.rx_frames,
            rx_bytes: s.rx_bytes,
            drops: vec![("tx_dropped", s.tx_dropped), ("rx_dropped", s.rx_dropped)],
            carrier: s.carrier,
            admin_up: Some(s.admin_up),
        }
    }

    fn labels(&self, extra: Option<(&str, &str)>) -> String {
        let l = &self.labels;
        let mut s = format!(
            "namespace=\"{}\",pod=\"{}\",interface=\"{}\",peer_pod=\"{}\",uid=\"{}\",kind=\"{}\"",
            escape(&l.namespace),
            escape(&l.pod),
            escape(&l.interface),
            escape(&l.peer_pod),
            l.uid,
            l.kind
        );
        if let Some((k, v)) = extra {
            let _ = write!(s, ",{k}=\"{}\"", escape(v));
        }
        s
    }
}

/// The families for `rows` (pure; what a scrape renders). Made anew at every scrape from the
/// links that exist then, so a link that goes takes its series with it.
pub fn families(rows: &[Row]) -> Vec<Family> {
    type Pick = fn(&Row) -> u64;
    let counters: [(&'static str, &'static str, Pick); 4] = [
        (
            "meshnet_link_tx_frames_total",
            "Frames the pod sent into the link",
            |s| s.tx_frames,
        ),
        (
            "meshnet_link_tx_bytes_total",
            "Bytes the pod sent into the link",
            |s| s.tx_bytes,
        ),
        (
            "meshnet_link_rx_frames_total",
            "Frames the link delivered to the pod",
            |s| s.rx_frames,
        ),
        (
            "meshnet_link_rx_bytes_total",
            "Bytes the link delivered to the pod",
            |s| s.rx_bytes,
        ),
    ];
    let mut out: Vec<Family> = counters
        .iter()
        .map(|(name, help, pick)| Family {
            name,
            kind: "counter",
            help,
            samples: rows
                .iter()
                .map(|r| format!("{name}{{{}}} {}", r.labels(None), pick(r)))
                .collect(),
        })
        .collect();
    out.push(Family {
        name: "meshnet_link_drops_total",
        kind: "counter",
        help: "Frames dropped on this link, by reason",
        samples: rows
            .iter()
            .flat_map(|r| {
                r.drops.iter().map(|(reason, n)| {
                    format!(
                        "meshnet_link_drops_total{{{}}} {n}",
                        r.labels(Some(("reason", reason)))
                    )
                })
            })
            .collect(),
    });
    for (name, help, pick) in [
        (
            "meshnet_link_carrier",
            "1 when the link's carrier is up",
            (|r: &Row| Some(r.carrier)) as fn(&Row) -> Option<bool>,
        ),
        (
            "meshnet_link_admin_up",
            "1 while the pod's port is administratively up (the pod decides)",
            |r: &Row| r.admin_up,
        ),
    ] {
        out.push(Family {
            name,
            kind: "gauge",
            help,
            samples: rows
                .iter()
                .filter_map(|r| {
                    pick(r).map(|v| format!("{name}{{{}}} {}", r.labels(None), u8::from(v)))
                })
                .collect(),
        });
    }
    out.retain(|f| !f.samples.is_empty());
    out
}

/// Adds `families` to a Prometheus text exposition: each family's samples go at the end of the
/// exporter's block of the same name when there is one (a name must appear as one block), else
/// in a new block with its own `# HELP` and `# TYPE`.
pub fn merge(exposition: &str, families: &[Family]) -> String {
    let mut lines: Vec<String> = exposition.lines().map(str::to_string).collect();
    let mut appended: Vec<&Family> = Vec::new();
    let mut inserts: Vec<(usize, &Family)> = Vec::new();
    for f in families {
        let type_line = format!("# TYPE {} ", f.name);
        match lines.iter().position(|l| l.starts_with(&type_line)) {
            Some(i) => {
                let end = lines[i + 1..]
                    .iter()
                    .position(|l| l.is_empty() || l.starts_with('#'))
                    .map_or(lines.len(), |n| i + 1 + n);
                inserts.push((end, f));
            }
            None => appended.push(f),
        }
    }
    inserts.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    for (at, f) in inserts {
        lines.splice(at..at, f.samples.iter().cloned());
    }
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    for f in appended {
        let _ = write!(
            out,
            "\n# HELP {} {}\n# TYPE {} {}\n",
            f.name, f.help, f.name, f.kind
        );
        for s in &f.samples {
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}

/// Every interface's statistics in one namespace: name → stats.
async fn dump(netns: PathBuf) -> Option<HashMap<String, EndStats>> {
    crate::view::port_dump(netns).await
}

/// Reads the statistics of `links`, one dump per namespace; ends that are gone are left out.
pub async fn collect(links: Vec<KernelLink>) -> Vec<(KernelLink, EndStats)> {
    let mut by_ns: HashMap<PathBuf, Vec<KernelLink>> = HashMap::new();
    for l in links {
        by_ns.entry(l.netns.clone()).or_default().push(l);
    }
    futures::stream::iter(by_ns)
        .map(|(ns, ls)| async move {
            let Some(stats) = dump(ns).await else {
                return Vec::new();
            };
            ls.into_iter()
                .filter_map(|l| {
                    let s = stats.get(&l.labels.interface)?.clone();
                    Some((l, s))
                })
                .collect::<Vec<_>>()
        })
        .buffer_unordered(PARALLEL_DUMPS)
        .flat_map(futures::stream::iter)
        .collect()
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn end(pod: &str, kind: &'static str) -> KernelLink {
        KernelLink {
            labels: Labels {
                namespace: "default".into(),
                pod: pod.into(),
                interface: "eth1".into(),
                peer_pod: "r\"2".into(),
                uid: 7,
                kind,
            },
            netns: PathBuf::from("/run/netns/x"),
        }
    }

    const EXPORTER: &str = "# HELP meshnet_link_carrier 1 when the link's carrier is up\n\
        # TYPE meshnet_link_carrier gauge\n\
        meshnet_link_carrier{namespace=\"default\",pod=\"w1\",interface=\"eth1\",peer_pod=\"w2\",uid=\"3\",kind=\"grpc\"} 1\n\
        \n\
        # HELP meshnet_reconcile_runs_total Reconcile runs\n\
        # TYPE meshnet_reconcile_runs_total counter\n\
        meshnet_reconcile_runs_total 4\n";

    #[test]
    fn samples_join_the_exporters_family_or_make_their_own() {
        let stats = EndStats {
            tx_frames: 10,
            carrier: true,
            admin_up: false,
            ..EndStats::default()
        };
        let fams = families(&[Row::kernel(&end("r1", "veth"), &stats)]);
        let out = merge(EXPORTER, &fams);
        // One block per name: the gRPC and the veth carrier side by side.
        assert_eq!(
            out.matches("# TYPE meshnet_link_carrier ").count(),
            1,
            "{out}"
        );
        let carrier_block: Vec<&str> = out
            .split("\n\n")
            .find(|b| b.contains("# TYPE meshnet_link_carrier "))
            .unwrap()
            .lines()
            .collect();
        assert_eq!(carrier_block.len(), 4, "{out}");
        assert!(carrier_block[3].contains("kind=\"veth\"} 1"), "{out}");
        // Families the exporter did not have get their own header.
        assert!(out.contains("# TYPE meshnet_link_tx_frames_total counter\n"));
        assert!(out.contains("meshnet_link_admin_up{namespace=\"default\",pod=\"r1\",interface=\"eth1\",peer_pod=\"r\\\"2\",uid=\"7\",kind=\"veth\"} 0"), "{out}");
        assert!(out.contains("reason=\"tx_dropped\"} 0"));
        // The exporter's other families are untouched.
        assert!(out.contains("meshnet_reconcile_runs_total 4\n"));
    }

    /// A wire half's row: every drop reason it has, no admin series (the wire has no port
    /// state of its own to report); gone from the next render once the half is.
    #[test]
    fn a_wire_row_renders_its_reasons_and_goes_with_its_half() {
        let wire = Row {
            drops: vec![("peer_down", 3), ("stream_lost", 0)],
            admin_up: None,
            carrier: true,
            ..Row::kernel(&end("w1", "grpc"), &EndStats::default())
        };
        let out = merge(EXPORTER, &families(std::slice::from_ref(&wire)));
        assert!(out.contains("reason=\"peer_down\"} 3"), "{out}");
        assert!(out.contains("reason=\"stream_lost\"} 0"), "{out}");
        assert!(!out.contains("meshnet_link_admin_up"), "{out}");
        assert!(!out.contains("tx_dropped"), "{out}");
        let gone = merge("", &families(&[]));
        assert!(!gone.contains("pod=\"w1\""), "{gone}");
    }

    #[test]
    fn no_links_no_series() {
        assert!(families(&[]).is_empty());
        assert_eq!(merge(EXPORTER, &[]), EXPORTER);
    }
}
