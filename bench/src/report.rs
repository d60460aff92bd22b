//! The report: the JSON document (machine facts, every summarised figure, pairwise ratios,
//! failures), a markdown table, and an SVG chart of throughput and packet rate per path.
//! Pure: built from [`Report`] alone.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::stats::{Summary, pairwise_ratios, summarize};

/// What the machine was.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
    pub kernel: String,
    pub iperf3: String,
    pub meshnet_version: String,
    pub git_commit: String,
    pub started: String,
}

/// How the run was configured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSettings {
    pub quick: bool,
    pub reps: usize,
    pub test_seconds: u32,
    pub pings: u32,
    pub ping_interval_ms: f64,
    pub udp_payload: u32,
    pub paths: Vec<String>,
    pub conditions: Vec<String>,
    pub scale_links: Vec<u32>,
    /// Idle CPU (largest scale run only): seconds waited after all links were up, then measured.
    pub idle_settle_seconds: u32,
    pub idle_seconds: u32,
    pub wall_seconds: f64,
}

/// One summarised figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub path: String,
    pub metric: String,
    pub unit: String,
    pub condition: String,
    /// Scale figures: how many links the topology had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<u32>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

/// A ratio of two paths' figures, taken per repetition and then summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    pub path: String,
    pub baseline: String,
    pub metric: String,
    pub condition: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

/// Something that could not be measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub path: String,
    pub condition: String,
    /// `None`: the whole path (it could not be set up).
    pub metric: Option<String>,
    pub reason: String,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: RunSettings,
    pub paths: Vec<PathInfo>,
    pub results: Vec<Figure>,
    pub ratios: Vec<Ratio>,
    pub failures: Vec<Failure>,
}

/// A path's name and what it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathInfo {
    pub name: String,
    pub description: String,
}

/// Which figure a run belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub path: String,
    pub metric: String,
    pub condition: String,
    /// Scale figures: how many links.
    pub links: Option<u32>,
}

impl Series {
    pub fn new(path: &str, metric: &str, condition: &str) -> Self {
        Series {
            path: path.into(),
            metric: metric.into(),
            condition: condition.into(),
            links: None,
        }
    }

    pub fn links(self, n: u32) -> Self {
        Series {
            links: Some(n),
            ..self
        }
    }
}

/// Raw runs before summarising: series → [(repetition, value)].
#[derive(Debug, Clone, Default)]
pub struct Runs {
    pub values: BTreeMap<Series, Vec<(usize, f64)>>,
    units: BTreeMap<String, String>,
}

impl Runs {
    /// Records repetition `rep`'s value of `series`, measured in `unit`.
    pub fn add(&mut self, series: Series, unit: &str, rep: usize, v: f64) {
        self.units.insert(series.metric.clone(), unit.into());
        self.values.entry(series).or_default().push((rep, v));
    }

    fn get(&self, path: &str, metric: &str, condition: &str) -> &[(usize, f64)] {
        self.values
            .get(&Series::new(path, metric, condition))
            .map_or(&[], Vec::as_slice)
    }

    /// Every summarised figure.
    pub fn figures(&self) -> Vec<Figure> {
        self.values
            .iter()
            .filter_map(|(k, runs)| {
                let vals: Vec<f64> = runs.iter().map(|(_, v)| *v).collect();
                let s = summarize(&vals)?;
                Some(Figure {
                    path: k.path.clone(),
                    metric: k.metric.clone(),
                    unit: self.units.get(&k.metric).cloned().unwrap_or_default(),
                    condition: k.condition.clone(),
                    links: k.links,
                    median: s.median,
                    min: s.min,
                    max: s.max,
                    runs: s.runs,
                })
            })
            .collect()
    }

    /// Ratios `path / baseline` for each `(path, baseline)` pair, metric in `metrics` and
    /// condition both were measured under, repetition by repetition.
    pub fn ratios(&self, pairs: &[(&str, &str)], metrics: &[&str]) -> Vec<Ratio> {
        let conditions: Vec<String> = {
            let mut c: Vec<String> = self.values.keys().map(|k| k.condition.clone()).collect();
            c.dedup();
            c.sort();
            c.dedup();
            c
        };
        let mut out = Vec::new();
        for cond in &conditions {
            for (path, base) in pairs {
                for m in metrics {
                    let r = pairwise_ratios(self.get(path, m, cond), self.get(base, m, cond));
                    if let Some(Summary {
                        median,
                        min,
                        max,
                        runs,
                    }) = summarize(&r)
                    {
                        out.push(Ratio {
                            path: (*path).into(),
                            baseline: (*base).into(),
                            metric: (*m).into(),
                            condition: cond.clone(),
                            median,
                            min,
                            max,
                            runs,
                        });
                    }
                }
            }
        }
        out
    }
}

/// The per-path metrics in table order: (metric, column title, decimals).
pub const PATH_METRICS: &[(&str, &str, usize)] = &[
    ("tcp1_gbps", "TCP 1 stream Gbit/s", 2),
    ("tcp4_gbps", "TCP 4 streams Gbit/s", 2),
    ("udp64_kpps", "UDP 64 B kpps rx", 0),
    ("udp64_loss_pct", "UDP 64 B loss %", 1),
    ("rtt_p50_us", "RTT p50 µs", 0),
    ("rtt_p99_us", "RTT p99 µs", 0),
    ("ping_cpu_pct", "daemon CPU % while pinging", 1),
    ("cpu_s_per_gb", "CPU s/GB", 2),
    ("daemon_cpu_s_per_gb", "daemon CPU s/GB", 2),
    ("rss_mb", "daemon peak RSS MB", 1),
];

/// The scale metrics in table order.
pub const SCALE_METRICS: &[(&str, &str, usize)] = &[
    ("up_s", "all up s", 2),
    ("links_per_s", "links/s", 0),
    ("rss_mb", "daemon RSS MB", 1),
    ("kib_per_link", "KiB/link", 1),
    ("idle_cpu_pct", "idle CPU %", 2),
];

/// Ratios shown in the markdown table.
pub const RATIO_METRICS: &[(&str, &str)] = &[
    ("tcp1_gbps", "TCP 1"),
    ("tcp4_gbps", "TCP 4"),
    ("udp64_kpps", "UDP 64 B pps"),
    ("rtt_p50_us", "RTT p50"),
    ("cpu_s_per_gb", "CPU/GB"),
];

fn cell(f: Option<&Figure>, decimals: usize) -> String {
    match f {
        Some(f) if f.runs.len() > 1 => format!(
            "{:.d$} ({:.d$}–{:.d$})",
            f.median,
            f.min,
            f.max,
            d = decimals
        ),
        Some(f) => format!("{:.d$}", f.median, d = decimals),
        None => "—".into(),
    }
}

fn ordered_conditions(r: &Report) -> Vec<String> {
    let mut c: Vec<String> = r.settings.conditions.clone();
    for f in &r.results {
        if !c.contains(&f.condition) {
            c.push(f.condition.clone());
        }
    }
    c
}

/// The markdown report: machine, one table per condition, ratios, scale, failures.
pub fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# meshnet-bench{}\n",
        if s.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        out,
        "{} cores ({}), {} MB, kernel {}, {}; meshnet {} ({}); started {}; {} repetitions, \
         {} s per throughput test, {} pings at {} ms; took {:.0} s.\n",
        m.cores,
        m.cpu_model,
        m.memory_mb,
        m.kernel,
        m.iperf3,
        m.meshnet_version,
        m.git_commit,
        m.started,
        s.reps,
        s.test_seconds,
        s.pings,
        s.ping_interval_ms,
        s.wall_seconds
    );
    let _ = writeln!(
        out,
        "Cells: median (min–max) over the repetitions. CPU s/GB: the relaying processes' user time \
         plus all kernel time (system, irq, softirq) on the machine during the 1-stream TCP test, \
         per GB received; daemon CPU s/GB and peak RSS (VmHWM, the larger of the two nodes): the \
         node daemons alone (for tcp-relay and tcp-relay-port: their two relay processes). \
         Paths were measured interleaved, repetition by repetition.\n"
    );
    for p in &r.paths {
        let _ = writeln!(out, "- `{}`: {}", p.name, p.description);
    }
    out.push('\n');
    for cond in ordered_conditions(r) {
        let figs: Vec<&Figure> = r
            .results
            .iter()
            .filter(|f| f.condition == cond && f.links.is_none())
            .collect();
        let path_fails: Vec<&Failure> = r
            .failures
            .iter()
            .filter(|f| f.condition == cond || f.condition == "*")
            .collect();
        if figs.is_empty() && path_fails.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## Condition: {cond}\n");
        out.push_str("| path |");
        for (_, title, _) in PATH_METRICS {
            let _ = write!(out, " {title} |");
        }
        out.push_str("\n|---|");
        for _ in PATH_METRICS {
            out.push_str("---|");
        }
        out.push('\n');
        for p in &r.paths {
            let whole = path_fails
                .iter()
                .find(|f| f.path == p.name && f.metric.is_none());
            if let Some(f) = whole {
                let _ = write!(out, "| {} | **FAILED**: {} |", p.name, one_line(&f.reason));
                for _ in 1..PATH_METRICS.len() {
                    out.push_str(" |");
                }
                out.push('\n');
                continue;
            }
            let mine: Vec<&&Figure> = figs.iter().filter(|f| f.path == p.name).collect();
            let failed_metrics: Vec<&&Failure> = path_fails
                .iter()
                .filter(|f| f.path == p.name && f.metric.is_some())
                .collect();
            if mine.is_empty() && failed_metrics.is_empty() {
                continue;
            }
            let _ = write!(out, "| {} |", p.name);
            for (metric, _, d) in PATH_METRICS {
                let f = mine.iter().find(|f| f.metric == *metric).map(|f| **f);
                let failed = failed_metrics
                    .iter()
                    .any(|x| x.metric.as_deref() == Some(*metric));
                let c = match (f, failed) {
                    (None, true) => "failed".to_string(),
                    (f, true) => format!("{} (some runs failed)", cell(f, *d)),
                    (f, false) => cell(f, *d),
                };
                let _ = write!(out, " {c} |");
            }
            out.push('\n');
        }
        out.push('\n');
        let ratios: Vec<&Ratio> = r.ratios.iter().filter(|x| x.condition == cond).collect();
        if !ratios.is_empty() {
            let _ = writeln!(
                out,
                "Ratios under {cond} (per repetition, then median (min–max); for RTT and CPU/GB \
                 lower is better):\n"
            );
            out.push_str("| path ÷ baseline |");
            for (_, title) in RATIO_METRICS {
                let _ = write!(out, " {title} |");
            }
            out.push_str("\n|---|");
            for _ in RATIO_METRICS {
                out.push_str("---|");
            }
            out.push('\n');
            let mut pairs: Vec<(&str, &str)> = Vec::new();
            for x in &ratios {
                if !pairs.contains(&(x.path.as_str(), x.baseline.as_str())) {
                    pairs.push((x.path.as_str(), x.baseline.as_str()));
                }
            }
            for (p, b) in pairs {
                let _ = write!(out, "| {p} ÷ {b} |");
                for (metric, _) in RATIO_METRICS {
                    let c = ratios
                        .iter()
                        .find(|x| x.path == p && x.baseline == b && x.metric == *metric)
                        .map_or("—".to_string(), |x| {
                            if x.runs.len() > 1 {
                                format!("{:.2} ({:.2}–{:.2})", x.median, x.min, x.max)
                            } else {
                                format!("{:.2}", x.median)
                            }
                        });
                    let _ = write!(out, " {c} |");
                }
                out.push('\n');
            }
            out.push('\n');
        }
    }
    let scale: Vec<&Figure> = r.results.iter().filter(|f| f.links.is_some()).collect();
    let scale_fails: Vec<&Failure> = r
        .failures
        .iter()
        .filter(|f| f.condition == "scale")
        .collect();
    if !scale.is_empty() || !scale_fails.is_empty() {
        let _ = writeln!(
            out,
            "## Scale: N cross-node links between two pods (`meshnet-lab apply`, timed until all \
             are up)\n\nIdle CPU: the busier daemon, largest N only, over {} s starting {} s after \
             all links were up (daemons at their default 30 s resync, so one full verification of \
             every link is included), with IPv6 turned off in the pods so that the links are \
             silent.\n",
            r.settings.idle_seconds, r.settings.idle_settle_seconds
        );
        out.push_str("| link | N |");
        for (_, title, _) in SCALE_METRICS {
            let _ = write!(out, " {title} |");
        }
        out.push_str("\n|---|---|");
        for _ in SCALE_METRICS {
            out.push_str("---|");
        }
        out.push('\n');
        let mut keys: Vec<(String, u32)> = scale
            .iter()
            .map(|f| (f.path.clone(), f.links.unwrap_or(0)))
            .collect();
        keys.sort();
        keys.dedup();
        for (path, n) in keys {
            let _ = write!(out, "| {path} | {n} |");
            for (metric, _, d) in SCALE_METRICS {
                let f = scale
                    .iter()
                    .find(|f| f.path == path && f.links == Some(n) && f.metric == *metric)
                    .copied();
                let _ = write!(out, " {} |", cell(f, *d));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    if !r.failures.is_empty() {
        out.push_str("## Failures\n\n");
        for f in &r.failures {
            let _ = writeln!(
                out,
                "- {} / {} / {}: {}",
                f.path,
                f.condition,
                f.metric.as_deref().unwrap_or("setup"),
                one_line(&f.reason)
            );
        }
        out.push('\n');
    }
    out
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let s = s.replace('|', "/");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v` (1, 2, 2.5 or 5 times a power of ten).
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

struct Panel<'a> {
    title: &'a str,
    metrics: &'a [(&'a str, &'a str, &'a str)],
}

/// An SVG chart for `condition`: TCP throughput (1 and 4 streams, Gbit/s) and 64-byte UDP
/// datagrams received (kpps) per path, medians as bars, min–max as whiskers. Paths that could
/// not be measured are marked.
pub fn svg(r: &Report, condition: &str) -> String {
    const W: f64 = 1100.0;
    const H: f64 = 460.0;
    let panels = [
        Panel {
            title: "TCP throughput (Gbit/s)",
            metrics: &[
                ("tcp1_gbps", "1 stream", "#3b6ea5"),
                ("tcp4_gbps", "4 streams", "#8fb3d9"),
            ],
        },
        Panel {
            title: "UDP 64-byte datagrams received (kpps)",
            metrics: &[("udp64_kpps", "64 B", "#d08c2f")],
        },
    ];
    let paths: Vec<&PathInfo> = r.paths.iter().collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">meshnet-bench — condition: {} (bars: median, whiskers: min–max)</text>"#,
        W / 2.0,
        esc(condition)
    );
    let panel_w = W / panels.len() as f64;
    for (pi, panel) in panels.iter().enumerate() {
        let x0 = pi as f64 * panel_w + 60.0;
        let x1 = (pi + 1) as f64 * panel_w - 20.0;
        let (y0, y1) = (60.0, H - 90.0);
        let figs = |path: &str, metric: &str| {
            r.results.iter().find(|f| {
                f.path == path
                    && f.metric == metric
                    && f.condition == condition
                    && f.links.is_none()
            })
        };
        let top = paths
            .iter()
            .flat_map(|p| panel.metrics.iter().filter_map(|m| figs(&p.name, m.0)))
            .map(|f| f.max)
            .fold(0.0, f64::max);
        let ymax = nice_max(top);
        let scale = |v: f64| y1 - (v / ymax).clamp(0.0, 1.0) * (y1 - y0);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="48" text-anchor="middle" font-size="13">{}</text>"#,
            (x0 + x1) / 2.0,
            esc(panel.title)
        );
        for i in 0..=5 {
            let v = ymax * f64::from(i) / 5.0;
            let y = scale(v);
            let _ = writeln!(
                out,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
                x0 - 6.0,
                y + 4.0,
                trim_num(v)
            );
        }
        let _ = writeln!(
            out,
            "<line x1=\"{x0}\" y1=\"{y1}\" x2=\"{x1}\" y2=\"{y1}\" stroke=\"#333\"/>"
        );
        let group = (x1 - x0) / paths.len().max(1) as f64;
        let bar = (group * 0.8) / panel.metrics.len() as f64;
        for (gi, p) in paths.iter().enumerate() {
            let gx = x0 + gi as f64 * group + group * 0.1;
            // Failed: the path could not be set up, or nothing of this panel could be measured.
            let measured = panel.metrics.iter().any(|m| figs(&p.name, m.0).is_some());
            let failed = r.failures.iter().find(|f| {
                f.path == p.name
                    && (f.condition == condition || f.condition == "*")
                    && (f.metric.is_none() || !measured)
            });
            for (mi, (metric, _, color)) in panel.metrics.iter().enumerate() {
                let bx = gx + mi as f64 * bar;
                if let Some(f) = figs(&p.name, metric) {
                    let (ym, ylo, yhi) = (scale(f.median), scale(f.min), scale(f.max));
                    let cx = bx + bar / 2.0;
                    let _ = writeln!(
                        out,
                        "<rect x=\"{bx:.1}\" y=\"{ym:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{} {}: {:.3}</title></rect>\
                         <line x1=\"{cx:.1}\" y1=\"{ylo:.1}\" x2=\"{cx:.1}\" y2=\"{yhi:.1}\" stroke=\"#222\"/>\
                         <line x1=\"{:.1}\" y1=\"{ylo:.1}\" x2=\"{:.1}\" y2=\"{ylo:.1}\" stroke=\"#222\"/>\
                         <line x1=\"{:.1}\" y1=\"{yhi:.1}\" x2=\"{:.1}\" y2=\"{yhi:.1}\" stroke=\"#222\"/>",
                        (bar - 2.0).max(1.0),
                        (y1 - ym).max(0.0),
                        esc(&p.name),
                        metric,
                        f.median,
                        cx - 4.0,
                        cx + 4.0,
                        cx - 4.0,
                        cx + 4.0
                    );
                    let _ = writeln!(
                        out,
                        "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#222\">{}</text>",
                        yhi - 4.0,
                        trim_num(f.median)
                    );
                }
            }
            let label_x = gx + group * 0.4;
            let _ = writeln!(
                out,
                "<text x=\"{label_x:.1}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-35 {label_x:.1} {})\">{}</text>",
                y1 + 16.0,
                y1 + 16.0,
                esc(&p.name)
            );
            if failed.is_some() {
                let _ = writeln!(
                    out,
                    "<text x=\"{label_x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#b00\">failed</text>",
                    y1 - 8.0
                );
            }
        }
        // Legend.
        for (mi, (_, label, color)) in panel.metrics.iter().enumerate() {
            let lx = x1 - 110.0;
            let ly = 62.0 + mi as f64 * 16.0;
            let _ = writeln!(
                out,
                "<rect x=\"{lx}\" y=\"{ly}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                lx + 16.0,
                ly + 10.0,
                esc(label)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn trim_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
