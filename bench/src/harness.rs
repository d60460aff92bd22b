//! Orchestration: the labs, the paths in them, the underlay conditions, the interleaved
//! repetitions, the scale runs, and the report files.
//!
//! Labs (all 2 nodes, all up at once, named `mbPID-…` so that two runs never meet):
//! * `…-vx`, `--link vxlan`: pods `a`/`b` across nodes (`vxlan`), `c`/`d` on node1 (`veth`), and
//!   the `tcp-relay` baseline's two pod namespaces (`mnl-LAB-relay-a|b`, swept with the lab)
//!   with relay processes in the node namespaces, and `tcp-relay-port`'s (`mnl-LAB-relayport-a|b`,
//!   the relays' TAPs in the node namespaces behind the wire's port);
//! * `…-gr`, `…-afp`, `…-pf`, `…-un`, `--link grpc`: pods `a`/`b` across nodes, the daemons run
//!   with the product's wire, the AF_PACKET endpoint, and the two legacy designs.
//!
//! For each condition, for each repetition, each path in turn: ping first (idle path), then TCP
//! 1 stream (with CPU sampled), TCP 4 streams, UDP 64 B flood, then the daemons' peak RSS.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::parse;
use crate::relay;
use crate::report::{self, Failure, Machine, PathInfo, Report, RunSettings, Runs, Series};
use crate::stats::percentile;
use crate::system::{self, Owned, run, run_in, run_limited, run_ok};
use crate::topo;

/// Port of the iperf3 servers (each in its own pod namespace).
const IPERF_PORT: &str = "5201";
/// Port of the tcp-relay baseline on node1's underlay address (tcp-relay-port: the next one).
const RELAY_PORT: u16 = 5300;
/// UDP payload of the packet-rate test.
pub const UDP_PAYLOAD: u32 = 64;
/// meshnetd's default `--resync-seconds` (a full verification of every link this often).
const DAEMON_RESYNC_SECONDS: u32 = 30;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the time since the run started.
fn progress(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("meshnet-bench [{:02}:{:02}] {msg}", t / 60, t % 60);
}

/// A path frames take between two pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    Veth,
    Vxlan,
    Grpc,
    GrpcOneQueue,
    GrpcPoll,
    GrpcAfpacket,
    TcpRelay,
    TcpRelayPort,
    GrpcPerFrame,
    GrpcUnary,
}

impl PathKind {
    pub const ALL: [PathKind; 10] = [
        PathKind::Veth,
        PathKind::Vxlan,
        PathKind::Grpc,
        PathKind::GrpcOneQueue,
        PathKind::GrpcPoll,
        PathKind::GrpcAfpacket,
        PathKind::TcpRelay,
        PathKind::TcpRelayPort,
        PathKind::GrpcPerFrame,
        PathKind::GrpcUnary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Veth => "veth",
            PathKind::Vxlan => "vxlan",
            PathKind::Grpc => "grpc",
            PathKind::GrpcOneQueue => "grpc-1q",
            PathKind::GrpcPoll => "grpc-poll",
            PathKind::GrpcAfpacket => "grpc-afpacket",
            PathKind::TcpRelay => "tcp-relay",
            PathKind::TcpRelayPort => "tcp-relay-port",
            PathKind::GrpcPerFrame => "grpc-per-frame",
            PathKind::GrpcUnary => "grpc-unary",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            PathKind::Veth => "same-node veth pair (kernel)",
            PathKind::Vxlan => "kernel VXLAN across nodes (`--link vxlan`)",
            PathKind::Grpc => {
                "meshnet's gRPC wire (`--link grpc`): TAP with the virtio-net header, batches, \
                 sharded HTTP/2 streams, multi-queue TAPs (`--wire-queues` = the shard count: \
                 each queue's flows on its own stream) and a runtime thread per shard"
            }
            PathKind::GrpcOneQueue => {
                "meshnet's gRPC wire with one TAP queue per link (`--wire-queues 1`, the \
                 daemon's default): a link's frames on one reader and one stream, the daemon \
                 on one thread"
            }
            PathKind::GrpcPoll => {
                "meshnet's gRPC wire in its low-latency mode (`--wire-poll-us 5000`: one \
                 thread per daemon, which keeps polling for 5 ms after frames moved)"
            }
            PathKind::GrpcAfpacket => {
                "meshnet's gRPC wire with the AF_PACKET endpoint (`--wire-endpoint afpacket`: \
                 a veth whose host end the daemon reads with PACKET_VNET_HDR)"
            }
            PathKind::TcpRelay => {
                "baseline, not the product: the smallest userspace relay with the same TAP \
                 endpoints and the virtio-net header, TAP→TCP→TAP over one plain TCP socket, a \
                 thread per direction, one read/write per frame"
            }
            PathKind::TcpRelayPort => {
                "baseline, not the product: tcp-relay behind the wire's port (its TAP in the \
                 node's namespace, patched by tc mirred to the node end of a veth pair whose \
                 pod end is eth1), so that it pays what every wire link pays in the kernel"
            }
            PathKind::GrpcPerFrame => {
                "reproduces the per-frame stream design in our code (`--wire-legacy per-frame \
                 --wire-shards 1`): one frame per gRPC message, no virtio-net offloads, one \
                 stream per node pair, pod TX offloads off"
            }
            PathKind::GrpcUnary => {
                "reproduces the Go meshnet-cni wire's unary design in our code (`--wire-legacy \
                 unary --wire-shards 1`): one unary gRPC call per frame, awaited, no offloads"
            }
        }
    }

    fn lab(self) -> LabKind {
        match self {
            PathKind::Veth | PathKind::Vxlan | PathKind::TcpRelay | PathKind::TcpRelayPort => {
                LabKind::Kernel
            }
            PathKind::Grpc => LabKind::Grpc,
            PathKind::GrpcOneQueue => LabKind::OneQueue,
            PathKind::GrpcPoll => LabKind::Poll,
            PathKind::GrpcAfpacket => LabKind::AfPacket,
            PathKind::GrpcPerFrame => LabKind::PerFrame,
            PathKind::GrpcUnary => LabKind::Unary,
        }
    }
}

impl std::str::FromStr for PathKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PathKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "path {s:?}: want one of {}",
                    PathKind::ALL.map(PathKind::name).join(", ")
                )
            })
    }
}

/// A condition of the underlay between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Plain,
    /// 1 ms added on each underlay veth's egress (`tc netem` in the underlay namespace): 2 ms
    /// more round trip between nodes.
    Delay1ms,
    /// TSO, GSO and GRO off on every node's `ul0`.
    OffloadsOff,
}

impl Condition {
    pub const ALL: [Condition; 3] = [
        Condition::Plain,
        Condition::Delay1ms,
        Condition::OffloadsOff,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Plain => "plain",
            Condition::Delay1ms => "delay-1ms",
            Condition::OffloadsOff => "underlay-offloads-off",
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Condition::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "condition {s:?}: want one of {}",
                    Condition::ALL.map(Condition::name).join(", ")
                )
            })
    }
}

/// Which lab hosts a path, and how its daemons run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LabKind {
    Kernel,
    Grpc,
    OneQueue,
    Poll,
    AfPacket,
    PerFrame,
    Unary,
}

impl LabKind {
    fn suffix(self) -> &'static str {
        match self {
            LabKind::Kernel => "vx",
            LabKind::Grpc => "gr",
            LabKind::OneQueue => "1q",
            LabKind::Poll => "po",
            LabKind::AfPacket => "afp",
            LabKind::PerFrame => "pf",
            LabKind::Unary => "un",
        }
    }

    fn link(self) -> &'static str {
        match self {
            LabKind::Kernel => "vxlan",
            _ => "grpc",
        }
    }

    /// The daemons' wire settings (inherited through `meshnet-lab up`), always explicit.
    fn env(self, default_shards: &str) -> Vec<(&'static str, String)> {
        let poll = if self == LabKind::Poll {
            GRPC_POLL_US
        } else {
            "0"
        };
        let (endpoint, legacy, shards) = match self {
            LabKind::Kernel | LabKind::Grpc | LabKind::OneQueue | LabKind::Poll => {
                ("tap", "none", default_shards.to_string())
            }
            LabKind::AfPacket => ("afpacket", "none", default_shards.to_string()),
            LabKind::PerFrame => ("tap", "per-frame", "1".into()),
            LabKind::Unary => ("tap", "unary", "1".into()),
        };
        // One TAP queue per shard, or one per link (the daemon's default).
        let queues = if self == LabKind::OneQueue {
            "1".to_string()
        } else {
            shards.clone()
        };
        // Multi-queue TAPs with a runtime thread per shard (what the daemon picks for them),
        // else the daemon's default: one thread.
        let threads = if self == LabKind::Grpc {
            shards.clone()
        } else {
            "1".to_string()
        };
        vec![
            ("MESHNET_WIRE_ENDPOINT", endpoint.into()),
            ("MESHNET_WIRE_LEGACY", legacy.into()),
            ("MESHNET_WIRE_SHARDS", shards),
            ("MESHNET_WIRE_QUEUES", queues),
            ("MESHNET_WIRE_POLL_US", poll.into()),
            ("MESHNET_THREADS", threads),
        ]
    }
}

/// The `grpc-poll` path's `--wire-poll-us`: 5 ms, longer than the 2 ms between the ping
/// train's pings, so that its daemons poll through the gaps (what the mode is for: a steady
/// trickle of frames — hellos, pings — met without a sleeping thread's wake-up). The cost
/// shows as the daemons' CPU while pinging; idle wires do not spin.
const GRPC_POLL_US: &str = "5000";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out_dir: PathBuf,
    pub json: Option<PathBuf>,
    pub paths: Vec<PathKind>,
    pub conditions: Vec<Condition>,
    pub reps: usize,
    pub seconds: u32,
    pub pings: u32,
    /// Time between the pings of a round-trip measurement, in ms (`ping -i`). 2 ms by default:
    /// the CPUs go idle between pings, as with a routing protocol's hellos; shorter keeps them
    /// busy (see README: the host's idle penalty).
    pub ping_interval_ms: f64,
    pub scale: Vec<u32>,
    pub scale_reps: usize,
    /// Idle CPU (largest scale run only): wait this long after all links are up (the pods'
    /// own start-up chatter — IPv6 DAD, MLD, router solicitations — crosses the wires), …
    pub idle_settle_seconds: u32,
    /// … then measure for this long: one full resync interval of the daemon, so the periodic
    /// verification of every link is in the figure.
    pub idle_seconds: u32,
    /// Where `meshnet-lab`, `meshnetd` and `meshnet` are.
    pub bin_dir: PathBuf,
}

impl Options {
    /// The full run's defaults (`make bench`).
    pub fn full(out_dir: PathBuf, bin_dir: PathBuf) -> Self {
        Options {
            quick: false,
            out_dir,
            json: None,
            paths: PathKind::ALL.to_vec(),
            conditions: Condition::ALL.to_vec(),
            reps: 3,
            seconds: 5,
            pings: 1000,
            ping_interval_ms: 2.0,
            scale: vec![10, 100, 1000],
            scale_reps: 3,
            idle_settle_seconds: 10,
            idle_seconds: DAEMON_RESYNC_SECONDS,
            bin_dir,
        }
    }

    /// `--quick`: short tests, the plain underlay only, smaller scale runs (under 5 minutes).
    pub fn quick(out_dir: PathBuf, bin_dir: PathBuf) -> Self {
        Options {
            quick: true,
            conditions: vec![Condition::Plain],
            seconds: 1,
            pings: 200,
            scale: vec![10, 100],
            idle_settle_seconds: 2,
            idle_seconds: 5,
            ..Options::full(out_dir, bin_dir)
        }
    }
}

/// A lab this run brought up; taken down on drop.
#[derive(Debug)]
struct Lab {
    name: String,
    bin: PathBuf,
    nodes: Vec<(String, i32)>,
    pods: BTreeMap<String, String>,
    down: bool,
}

impl Lab {
    fn up(
        o: &Options,
        name: &str,
        yaml: &str,
        link: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Lab> {
        let bin = o.bin_dir.join("meshnet-lab");
        let file = o.out_dir.join("tmp").join(format!("{name}.yml"));
        std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
        system::register_lab(&bin, name);
        let mut lab = Lab {
            name: name.into(),
            bin,
            nodes: Vec::new(),
            pods: BTreeMap::new(),
            down: false,
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let b = lab.bin.display().to_string();
        let f = file.display().to_string();
        run_ok(
            &[
                &b,
                "--lab",
                name,
                "up",
                &f,
                "--nodes",
                "2",
                "--link",
                link,
                "--timeout",
                "120",
            ],
            &env,
            Duration::from_secs(240),
        )
        .with_context(|| format!("bringing up lab {name}"))?;
        lab.refresh()?;
        Ok(lab)
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        let b = self.bin.display().to_string();
        let out = run(&[&b, "--lab", &self.name, "status", "--json"])?;
        let v: Value = serde_json::from_str(&out).context("meshnet-lab status --json")?;
        self.nodes = v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        Some((
                            n["netns"].as_str()?.to_string(),
                            i32::try_from(n["pid"].as_i64()?).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.pods = v["pods"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        Some((
                            p["name"].as_str()?.to_string(),
                            p["netns"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if self.nodes.len() != 2 {
            bail!(
                "lab {} reports {} running daemons",
                self.name,
                self.nodes.len()
            );
        }
        Ok(())
    }

    fn apply(&mut self, o: &Options, yaml: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let file = o
            .out_dir
            .join("tmp")
            .join(format!("{}-apply.yml", self.name));
        std::fs::write(&file, yaml)?;
        let b = self.bin.display().to_string();
        let f = file.display().to_string();
        let t = timeout.as_secs().to_string();
        let started = Instant::now();
        run_ok(
            &[&b, "--lab", &self.name, "apply", &f, "--timeout", &t],
            &[],
            timeout + Duration::from_secs(60),
        )?;
        let took = started.elapsed();
        self.refresh()?;
        Ok(took)
    }

    fn pod(&self, name: &str) -> anyhow::Result<&str> {
        self.pods
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("lab {} has no pod {name}", self.name))
    }

    fn daemons(&self) -> Vec<i32> {
        self.nodes.iter().map(|(_, p)| *p).collect()
    }

    fn node_netns(&self) -> Vec<&str> {
        self.nodes.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn underlay(&self) -> String {
        format!("mnl-{}-ul", self.name)
    }

    fn down(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let b = self.bin.display().to_string();
        if let Err(e) = run_limited(
            &[&b, "--lab", &self.name, "down"],
            &[],
            Duration::from_secs(120),
        ) {
            eprintln!("meshnet-bench: taking lab {} down: {e:#}", self.name);
        }
        system::unregister_lab(&self.name);
        // `meshnet-lab down` keeps the lab's lock file; this run's lab names are its own.
        let _ = std::fs::remove_file(system::lab_state_root().join(format!("{}.lock", self.name)));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

/// A path ready to measure.
#[derive(Debug)]
struct PathRt {
    kind: PathKind,
    lab: usize,
    client_ns: String,
    server_ns: String,
    server_ip: String,
    /// The processes that move its frames in userspace (daemons or relays): CPU and RSS.
    procs: Vec<i32>,
    server: Option<Owned>,
    /// The relay processes (tcp-relay only).
    _relays: Vec<Owned>,
}

impl PathRt {
    fn start_server(&mut self, log: &Path) -> anyhow::Result<()> {
        self.server = None;
        let s = Owned::spawn(
            &[
                "ip",
                "netns",
                "exec",
                &self.server_ns,
                "iperf3",
                "-s",
                "-p",
                IPERF_PORT,
            ],
            &[],
            Some(log),
            false,
        )?;
        self.server = Some(s);
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }
}

/// Samples of CPU around a test.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    machine: parse::CpuTimes,
    procs_user: u64,
    procs_total: u64,
}

fn sample_cpu(procs: &[i32]) -> anyhow::Result<CpuSample> {
    let machine = system::machine_cpu()?;
    let (mut u, mut t) = (0, 0);
    for p in procs {
        let (ut, st) = system::pid_cpu(*p)?;
        u += ut;
        t += ut + st;
    }
    Ok(CpuSample {
        machine,
        procs_user: u,
        procs_total: t,
    })
}

/// The run's state: options, labs, paths, raw runs, failures.
struct Bench {
    o: Options,
    labs: Vec<Lab>,
    paths: Vec<PathRt>,
    runs: Runs,
    failures: Vec<Failure>,
    log: PathBuf,
    tag: String,
}

fn fail(
    failures: &mut Vec<Failure>,
    path: &str,
    cond: &str,
    metric: Option<&str>,
    e: &anyhow::Error,
) {
    let reason = format!("{e:#}");
    eprintln!(
        "  FAILED {path} / {cond} / {}: {}",
        metric.unwrap_or("setup"),
        reason.lines().next().unwrap_or_default()
    );
    failures.push(Failure {
        path: path.into(),
        condition: cond.into(),
        metric: metric.map(str::to_string),
        reason,
    });
}

/// Runs the benchmark and writes its report; returns the report.
///
/// # Errors
/// Preconditions (root, tools, binaries) or the output directory; a path or figure that fails
/// is reported in the results, not here.
pub fn run_bench(o: Options) -> anyhow::Result<Report> {
    let started = *START.get_or_init(Instant::now);
    preflight(&o)?;
    std::fs::create_dir_all(o.out_dir.join("tmp"))
        .with_context(|| format!("creating {}", o.out_dir.display()))?;
    let machine = machine_facts();
    let mut b = Bench {
        tag: format!("mb{}", std::process::id() % 100_000),
        log: o.out_dir.join("tmp").join("bench.log"),
        o,
        labs: Vec::new(),
        paths: Vec::new(),
        runs: Runs::default(),
        failures: Vec::new(),
    };
    b.set_up_paths();
    b.measure_paths();
    // Servers and relays stop before their labs go.
    b.paths.clear();
    for mut l in b.labs.drain(..) {
        l.down();
    }
    b.measure_scale();
    let settings = RunSettings {
        quick: b.o.quick,
        reps: b.o.reps,
        test_seconds: b.o.seconds,
        pings: b.o.pings,
        ping_interval_ms: b.o.ping_interval_ms,
        udp_payload: UDP_PAYLOAD,
        paths: b.o.paths.iter().map(|p| p.name().to_string()).collect(),
        conditions: b
            .o
            .conditions
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        scale_links: b.o.scale.clone(),
        idle_settle_seconds: b.o.idle_settle_seconds,
        idle_seconds: b.o.idle_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let report = b.report(machine, settings);
    write_outputs(&b.o, &report)?;
    Ok(report)
}

impl Bench {
    fn lab_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.tag)
    }

    fn set_up_paths(&mut self) {
        let shards = std::thread::available_parallelism()
            .map_or(2, |n| n.get().min(4))
            .to_string();
        let mut kinds: Vec<LabKind> = self.o.paths.iter().map(|p| p.lab()).collect();
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            let name = self.lab_name(kind.suffix());
            progress(&format!("lab {name} ({} link)", kind.link()));
            let same_node = kind == LabKind::Kernel && self.o.paths.contains(&PathKind::Veth);
            let hosted: Vec<PathKind> = self
                .o
                .paths
                .iter()
                .copied()
                .filter(|p| p.lab() == kind)
                .collect();
            let lab = match Lab::up(
                &self.o,
                &name,
                &topo::path_lab(same_node),
                kind.link(),
                &kind.env(&shards),
            ) {
                Ok(l) => l,
                Err(e) => {
                    for p in hosted {
                        fail(&mut self.failures, p.name(), "*", None, &e);
                    }
                    continue;
                }
            };
            self.labs.push(lab);
            let li = self.labs.len() - 1;
            for p in hosted {
                match self.path(p, li) {
                    Ok(mut rt) => match rt.start_server(&self.log) {
                        Ok(()) => self.paths.push(rt),
                        Err(e) => fail(&mut self.failures, p.name(), "*", None, &e),
                    },
                    Err(e) => fail(&mut self.failures, p.name(), "*", None, &e),
                }
            }
        }
    }

    fn path(&self, kind: PathKind, li: usize) -> anyhow::Result<PathRt> {
        let lab = &self.labs[li];
        let pair = match kind {
            PathKind::Veth => topo::SAME_NODE,
            _ => topo::CROSS,
        };
        let mut rt = PathRt {
            kind,
            lab: li,
            client_ns: String::new(),
            server_ns: String::new(),
            server_ip: pair.server_ip.into(),
            procs: lab.daemons(),
            server: None,
            _relays: Vec::new(),
        };
        match kind {
            PathKind::TcpRelay => self.relay(&mut rt, lab, false)?,
            PathKind::TcpRelayPort => self.relay(&mut rt, lab, true)?,
            _ => {
                rt.client_ns = lab.pod(pair.client)?.into();
                rt.server_ns = lab.pod(pair.server)?.into();
            }
        }
        if matches!(kind, PathKind::GrpcPerFrame | PathKind::GrpcUnary) {
            // As the legacy designs are run: the pods' TX offloads off. (The TAP, opened without
            // offloads, already refuses most; what it refuses is not an error.)
            for ns in [&rt.client_ns, &rt.server_ns] {
                let _ = run_in(
                    ns,
                    &[
                        "ethtool", "-K", "eth1", "tx", "off", "tso", "off", "gso", "off",
                    ],
                );
            }
        }
        Ok(rt)
    }

    /// The tcp-relay baselines: two pod namespaces in the lab's prefix (its `down` removes them),
    /// a relay process in each node's namespace, the pods' `eth1` in a subnet of their own.
    /// With `ported` (tcp-relay-port) the relays' TAPs are in the node namespaces behind the
    /// wire's port ([`relay::patch_port`]); else (tcp-relay) each TAP is the pod's `eth1`.
    fn relay(&self, rt: &mut PathRt, lab: &Lab, ported: bool) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating meshnet-bench")?;
        let exe = exe.display().to_string();
        let nodes = lab.node_netns();
        let (kind, port, net) = if ported {
            ("relayport", RELAY_PORT + 1, "10.10.4")
        } else {
            ("relay", RELAY_PORT, "10.10.3")
        };
        // Ported: the TAP is the node's, named apart from the daemon's (`mt…`) interfaces.
        let tap = if ported { "mbrtap" } else { "eth1" };
        let mut relays = Vec::new();
        let mut ready = Vec::new();
        for (i, side) in ["a", "b"].iter().enumerate() {
            let ns = format!("mnl-{}-{kind}-{side}", lab.name);
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            let role = if i == 0 { "--listen" } else { "--connect" };
            let addr = format!("198.51.100.1:{port}");
            let tap_ns = format!("/run/netns/{}", if ported { nodes[i] } else { &ns });
            let mut o = Owned::spawn(
                &[
                    "ip",
                    "netns",
                    "exec",
                    nodes[i],
                    &exe,
                    "relay",
                    "--tap-netns",
                    &tap_ns,
                    "--tap",
                    tap,
                    role,
                    &addr,
                ],
                &[],
                Some(&self.log),
                true,
            )?;
            let out = o.take_stdout().context("relay stdout")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            });
            ready.push(rx);
            relays.push(o);
            if i == 0 {
                // The listener first.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for rx in ready {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .context("the relay did not report ready (see tmp/bench.log)")?;
            if line.trim() != "ready" {
                bail!("the relay failed to start (see tmp/bench.log)");
            }
        }
        for (i, side) in ["a", "b"].iter().enumerate() {
            let ns = format!("mnl-{}-{kind}-{side}", lab.name);
            if ported {
                relay::patch_port(nodes[i], &ns, tap, "mbrport")?;
            }
            let ip = format!("{net}.{}/24", i + 1);
            run(&["ip", "-n", &ns, "addr", "add", &ip, "dev", "eth1"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth1", "up"])?;
        }
        rt.client_ns = format!("mnl-{}-{kind}-a", lab.name);
        rt.server_ns = format!("mnl-{}-{kind}-b", lab.name);
        rt.server_ip = format!("{net}.2");
        rt.procs = relays
            .iter()
            .filter_map(|r| i32::try_from(r.pid()).ok())
            .collect();
        rt._relays = relays;
        Ok(())
    }

    fn measure_paths(&mut self) {
        let conditions = self.o.conditions.clone();
        for cond in conditions {
            progress(&format!("condition {}", cond.name()));
            let mut undo = Vec::new();
            let mut broken_labs = Vec::new();
            for (li, lab) in self.labs.iter().enumerate() {
                match apply_condition(lab, cond) {
                    Ok(u) => undo.push((li, u)),
                    Err(e) => {
                        // (The same-node path is not measured under underlay conditions.)
                        for p in self
                            .paths
                            .iter()
                            .filter(|p| p.lab == li && p.kind != PathKind::Veth)
                        {
                            fail(&mut self.failures, p.kind.name(), cond.name(), None, &e);
                        }
                        broken_labs.push(li);
                    }
                }
            }
            for rep in 0..self.o.reps {
                for i in 0..self.paths.len() {
                    let (kind, li) = (self.paths[i].kind, self.paths[i].lab);
                    if broken_labs.contains(&li) {
                        continue;
                    }
                    // The same-node path never touches the underlay.
                    if kind == PathKind::Veth && cond != Condition::Plain {
                        continue;
                    }
                    progress(&format!(
                        "{} rep {}/{} {}",
                        cond.name(),
                        rep + 1,
                        self.o.reps,
                        kind.name()
                    ));
                    self.measure_one(i, cond, rep);
                }
            }
            for (li, u) in undo {
                if let Err(e) = u.undo(&self.labs[li]) {
                    eprintln!("meshnet-bench: undoing {}: {e:#}", cond.name());
                }
            }
        }
    }

    fn record(
        &mut self,
        kind: PathKind,
        metric: &str,
        unit: &str,
        cond: Condition,
        rep: usize,
        v: f64,
    ) {
        self.runs
            .add(Series::new(kind.name(), metric, cond.name()), unit, rep, v);
    }

    fn measure_one(&mut self, i: usize, cond: Condition, rep: usize) {
        let kind = self.paths[i].kind;
        let c = cond.name();
        match self.rtt(i) {
            Ok((p50, p99, cpu)) => {
                self.record(kind, "rtt_p50_us", "µs", cond, rep, p50);
                self.record(kind, "rtt_p99_us", "µs", cond, rep, p99);
                if let Some(c) = cpu {
                    self.record(kind, "ping_cpu_pct", "%", cond, rep, c);
                }
            }
            Err(e) => fail(&mut self.failures, kind.name(), c, Some("rtt_p50_us"), &e),
        }
        match self.tcp(i, 1, true) {
            Ok((gbps, cpu, relay_cpu)) => {
                self.record(kind, "tcp1_gbps", "Gbit/s", cond, rep, gbps);
                if let Some(c) = cpu {
                    self.record(kind, "cpu_s_per_gb", "CPU s/GB", cond, rep, c);
                }
                if let Some(c) = relay_cpu {
                    self.record(kind, "daemon_cpu_s_per_gb", "CPU s/GB", cond, rep, c);
                }
            }
            Err(e) => {
                fail(&mut self.failures, kind.name(), c, Some("tcp1_gbps"), &e);
                self.restart_server(i);
            }
        }
        match self.tcp(i, 4, false) {
            Ok((gbps, _, _)) => self.record(kind, "tcp4_gbps", "Gbit/s", cond, rep, gbps),
            Err(e) => {
                fail(&mut self.failures, kind.name(), c, Some("tcp4_gbps"), &e);
                self.restart_server(i);
            }
        }
        match self.udp(i) {
            Ok(u) => {
                self.record(kind, "udp64_kpps", "kpps", cond, rep, u.kpps);
                self.record(kind, "udp64_loss_pct", "%", cond, rep, u.loss_pct);
            }
            Err(e) => {
                fail(&mut self.failures, kind.name(), c, Some("udp64_kpps"), &e);
                self.restart_server(i);
            }
        }
        // Let the flood's queues drain before the next path's ping.
        std::thread::sleep(Duration::from_millis(500));
        let hwm: anyhow::Result<Vec<u64>> = self.paths[i]
            .procs
            .iter()
            .map(|p| system::pid_status_kib(*p, "VmHWM"))
            .collect();
        match hwm {
            Ok(v) => {
                let max = v.into_iter().max().unwrap_or(0);
                self.record(kind, "rss_mb", "MB", cond, rep, max as f64 / 1024.0);
            }
            Err(e) => fail(&mut self.failures, kind.name(), c, Some("rss_mb"), &e),
        }
    }

    fn restart_server(&mut self, i: usize) {
        let log = self.log.clone();
        if let Err(e) = self.paths[i].start_server(&log) {
            eprintln!("meshnet-bench: restarting iperf3 server: {e:#}");
        }
    }

    /// The ping train's p50 and p99 round trip (µs), and the CPU the path's own processes
    /// (daemons or relays; `None`: it has none) used meanwhile, in % of one core: what a
    /// light, steady load costs — the low-latency mode's spinning shows here.
    fn rtt(&self, i: usize) -> anyhow::Result<(f64, f64, Option<f64>)> {
        let p = &self.paths[i];
        // Warm up (neighbour resolution, the wire's first frames).
        let _ = run_limited(
            &[
                "ip",
                "netns",
                "exec",
                &p.client_ns,
                "ping",
                "-n",
                "-c",
                "5",
                "-i",
                "0.05",
                "-W",
                "1",
                &p.server_ip,
            ],
            &[],
            Duration::from_secs(15),
        );
        let count = self.o.pings.to_string();
        let interval = format!("{:.4}", self.o.ping_interval_ms / 1000.0);
        let limit = Duration::from_secs(20)
            + Duration::from_secs_f64(f64::from(self.o.pings) * self.o.ping_interval_ms / 200.0);
        let procs = &self.paths[i].procs;
        let before = sample_cpu(procs).ok();
        let started = Instant::now();
        let out = run_limited(
            &[
                "ip",
                "netns",
                "exec",
                &p.client_ns,
                "ping",
                "-n",
                "-c",
                &count,
                "-i",
                &interval,
                "-W",
                "1",
                &p.server_ip,
            ],
            &[],
            limit,
        )?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = match (before, sample_cpu(procs).ok()) {
            (Some(b), Some(a)) if !procs.is_empty() && wall > 0.0 => {
                let used = a.procs_total.saturating_sub(b.procs_total) as f64;
                Some(100.0 * used / system::clk_tck() / wall)
            }
            _ => None,
        };
        let rtts = parse::ping_rtts_us(&out.stdout);
        if rtts.len() < (self.o.pings as usize).div_ceil(2) {
            bail!(
                "only {} of {} pings answered: {}",
                rtts.len(),
                self.o.pings,
                out.stderr.trim()
            );
        }
        Ok((
            percentile(&rtts, 50.0).unwrap_or(f64::NAN),
            percentile(&rtts, 99.0).unwrap_or(f64::NAN),
            cpu,
        ))
    }

    fn iperf(&self, i: usize, extra: &[&str]) -> anyhow::Result<String> {
        let p = &self.paths[i];
        let secs = self.o.seconds.to_string();
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            &p.client_ns,
            "iperf3",
            "-c",
            &p.server_ip,
            "-p",
            IPERF_PORT,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        // TCP: leave the first second (slow start) out. Not for UDP: with an omitted interval
        // iperf3 counts the datagrams sent in it as lost (losses above 100 %).
        if self.o.seconds >= 3 && !extra.contains(&"-u") {
            argv.extend(["-O", "1"]);
        }
        argv.extend_from_slice(extra);
        let limit = Duration::from_secs(u64::from(self.o.seconds) + 30);
        let out = run_limited(&argv, &[], limit)?;
        if !out.ok && !out.stdout.contains("\"error\"") {
            bail!("iperf3 failed: {} {}", out.stderr.trim(), out.stdout.trim());
        }
        Ok(out.stdout)
    }

    /// TCP with `streams` streams: Gbit/s, and with `cpu`: machine CPU s/GB (relay processes'
    /// user time + all kernel time) and relay processes' CPU s/GB.
    fn tcp(
        &self,
        i: usize,
        streams: u32,
        cpu: bool,
    ) -> anyhow::Result<(f64, Option<f64>, Option<f64>)> {
        let p = &self.paths[i];
        let before = if cpu {
            Some(sample_cpu(&p.procs)?)
        } else {
            None
        };
        let n = streams.to_string();
        let extra: Vec<&str> = if streams > 1 { vec!["-P", &n] } else { vec![] };
        let text = self.iperf(i, &extra)?;
        let after = if cpu {
            Some(sample_cpu(&p.procs)?)
        } else {
            None
        };
        let r = parse::iperf_tcp(&text)?;
        let gb = r.bytes as f64 / 1e9;
        let (mut total, mut relay) = (None, None);
        if let (Some(b), Some(a)) = (before, after)
            && gb > 0.0
        {
            let tck = system::clk_tck();
            let user = a.procs_user.saturating_sub(b.procs_user) as f64 / tck;
            let kernel = a.machine.kernel_since(&b.machine) as f64 / tck;
            total = Some((user + kernel) / gb);
            relay = Some(a.procs_total.saturating_sub(b.procs_total) as f64 / tck / gb);
        }
        Ok((r.gbps, total, relay))
    }

    fn udp(&self, i: usize) -> anyhow::Result<parse::UdpResult> {
        let len = UDP_PAYLOAD.to_string();
        let text = self.iperf(i, &["-u", "-l", &len, "-b", "0"])?;
        parse::iperf_udp(&text, UDP_PAYLOAD)
    }

    fn measure_scale(&mut self) {
        if self.o.scale.is_empty() {
            return;
        }
        let sizes = self.o.scale.clone();
        for n in sizes {
            for rep in 0..self.o.scale_reps {
                for link in ["vxlan", "grpc"] {
                    progress(&format!(
                        "scale {link} {n} links rep {}/{}",
                        rep + 1,
                        self.o.scale_reps
                    ));
                    if let Err(e) = self.scale_once(link, n, rep) {
                        fail(
                            &mut self.failures,
                            link,
                            "scale",
                            Some(&format!("links{n}")),
                            &e,
                        );
                    }
                }
            }
        }
    }

    fn scale_once(&mut self, link: &str, n: u32, rep: usize) -> anyhow::Result<()> {
        let name = self.lab_name("sc");
        let mut env = if link == "grpc" {
            let shards = std::thread::available_parallelism()
                .map_or(2, |n| n.get().min(4))
                .to_string();
            // The daemon's default: one TAP queue per link.
            LabKind::OneQueue.env(&shards)
        } else {
            LabKind::Kernel.env("1")
        };
        // The daemon's own resync interval, not the lab's shorter one: idle CPU as users get it.
        env.push((
            "MESHNET_LAB_RESYNC_SECONDS",
            DAEMON_RESYNC_SECONDS.to_string(),
        ));
        let measure_idle = self.o.scale.iter().max() == Some(&n);
        let mut lab = Lab::up(&self.o, &name, &topo::scale_base(), link, &env)?;
        std::thread::sleep(Duration::from_millis(500));
        let daemons = lab.daemons();
        let rss = |pids: &[i32]| -> anyhow::Result<Vec<u64>> {
            pids.iter()
                .map(|p| system::pid_status_kib(*p, "VmRSS"))
                .collect()
        };
        let before = rss(&daemons)?;
        let ns = topo::scale_namespace(n);
        let timeout = Duration::from_secs(120 + u64::from(n) / 2);
        let took = lab.apply(&self.o, &topo::scale_lab(&ns, n), timeout)?;
        std::thread::sleep(Duration::from_secs(1));
        let idle_pct = if measure_idle {
            // Idle means silent links: a fresh interface's IPv6 router solicitations never stop
            // (RFC 7559 backoff), and 1000 of them are traffic the wire must carry (README).
            for ns in lab.pods.values() {
                run_ok(
                    &[
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                    ],
                    &[],
                    Duration::from_secs(10),
                )?;
            }
            std::thread::sleep(Duration::from_secs(u64::from(self.o.idle_settle_seconds)));
            let c0: anyhow::Result<Vec<(u64, u64)>> =
                daemons.iter().map(|p| system::pid_cpu(*p)).collect();
            let c0 = c0?;
            let idle = Duration::from_secs(u64::from(self.o.idle_seconds));
            std::thread::sleep(idle);
            let c1: anyhow::Result<Vec<(u64, u64)>> =
                daemons.iter().map(|p| system::pid_cpu(*p)).collect();
            let tck = system::clk_tck();
            Some(
                c0.iter()
                    .zip(&c1?)
                    .map(|(a, b)| {
                        (b.0 + b.1).saturating_sub(a.0 + a.1) as f64 / tck / idle.as_secs_f64()
                            * 100.0
                    })
                    .fold(0.0, f64::max),
            )
        } else {
            None
        };
        let after = rss(&daemons)?;
        lab.down();
        let rss_mb = after.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        let per_link = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (*a as f64 - *b as f64) / f64::from(n))
            .sum::<f64>()
            / before.len().max(1) as f64;
        let secs = took.as_secs_f64();
        for (m, unit, v) in [
            ("up_s", "s", Some(secs)),
            ("links_per_s", "links/s", Some(f64::from(n) / secs)),
            ("rss_mb", "MB", Some(rss_mb)),
            ("kib_per_link", "KiB", Some(per_link)),
            ("idle_cpu_pct", "% of a core", idle_pct),
        ] {
            let Some(v) = v else { continue };
            self.runs
                .add(Series::new(link, m, "plain").links(n), unit, rep, v);
        }
        Ok(())
    }

    fn report(&self, machine: Machine, settings: RunSettings) -> Report {
        let names: Vec<&str> = self.o.paths.iter().map(|p| p.name()).collect();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for base in ["vxlan", "tcp-relay", "tcp-relay-port"] {
            if names.contains(&base) {
                for p in &names {
                    // The relays against each other once: the port's own cost.
                    if *p != base && (*p, base) != ("tcp-relay", "tcp-relay-port") {
                        pairs.push((p, base));
                    }
                }
            }
        }
        for (p, b) in [
            ("grpc", "grpc-per-frame"),
            ("grpc-poll", "grpc"),
            ("grpc", "grpc-unary"),
            ("grpc-afpacket", "grpc"),
            ("grpc", "grpc-1q"),
        ] {
            if names.contains(&p) && names.contains(&b) {
                pairs.push((p, b));
            }
        }
        let metrics: Vec<&str> = report::PATH_METRICS.iter().map(|m| m.0).collect();
        Report {
            machine,
            settings,
            paths: self
                .o
                .paths
                .iter()
                .map(|p| PathInfo {
                    name: p.name().into(),
                    description: p.description().into(),
                })
                .collect(),
            results: self.runs.figures(),
            ratios: self.runs.ratios(&pairs, &metrics),
            failures: merge_failures(&self.failures),
        }
    }
}

/// Identical failures of several repetitions become one, with a count.
fn merge_failures(fs: &[Failure]) -> Vec<Failure> {
    let mut out: Vec<(Failure, usize)> = Vec::new();
    for f in fs {
        match out
            .iter_mut()
            .find(|(g, _)| g.path == f.path && g.condition == f.condition && g.metric == f.metric)
        {
            Some((_, n)) => *n += 1,
            None => out.push((f.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(mut f, n)| {
            if n > 1 {
                f.reason = format!("{} ({n} runs failed)", f.reason);
            }
            f
        })
        .collect()
}

/// How to undo a condition on one lab.
#[derive(Debug)]
enum Undo {
    Nothing,
    Netem(String, Vec<String>),
    Offloads(Vec<(String, Vec<(String, String)>)>),
}

impl Undo {
    fn undo(self, _lab: &Lab) -> anyhow::Result<()> {
        match self {
            Undo::Nothing => Ok(()),
            Undo::Netem(ul, devs) => {
                for d in devs {
                    run_in(&ul, &["tc", "qdisc", "del", "dev", &d, "root"])?;
                }
                Ok(())
            }
            Undo::Offloads(nodes) => {
                for (ns, feats) in nodes {
                    let mut argv = vec!["ethtool", "-K", "ul0"];
                    for (k, v) in &feats {
                        argv.push(k);
                        argv.push(v);
                    }
                    run_in(&ns, &argv)?;
                }
                Ok(())
            }
        }
    }
}

/// `ethtool -k` names of the features the offloads condition turns off, and their short names.
const UL_FEATURES: [(&str, &str); 3] = [
    ("tcp-segmentation-offload", "tso"),
    ("generic-segmentation-offload", "gso"),
    ("generic-receive-offload", "gro"),
];

fn apply_condition(lab: &Lab, cond: Condition) -> anyhow::Result<Undo> {
    match cond {
        Condition::Plain => Ok(Undo::Nothing),
        Condition::Delay1ms => {
            let ul = lab.underlay();
            let mut done = Vec::new();
            for i in 1..=lab.nodes.len() {
                let dev = format!("n{i}");
                run_in(
                    &ul,
                    &[
                        "tc", "qdisc", "replace", "dev", &dev, "root", "netem", "delay", "1ms",
                        "limit", "100000",
                    ],
                )
                .map_err(|e| {
                    if format!("{e}").contains("qdisc kind is unknown") {
                        e.context(
                            "no netem in this kernel (CONFIG_NET_SCH_NETEM is not set), so no \
                             delay can be added to the underlay",
                        )
                    } else {
                        e
                    }
                })?;
                done.push(dev);
            }
            Ok(Undo::Netem(ul, done))
        }
        Condition::OffloadsOff => {
            let mut saved = Vec::new();
            for ns in lab.node_netns() {
                let k = run_in(ns, &["ethtool", "-k", "ul0"])?;
                let feats: Vec<(String, String)> = UL_FEATURES
                    .iter()
                    .filter_map(|(long, short)| {
                        let line = k.lines().find(|l| l.starts_with(&format!("{long}:")))?;
                        let on = line.split(':').nth(1)?.trim().starts_with("on");
                        Some((
                            (*short).to_string(),
                            if on { "on" } else { "off" }.to_string(),
                        ))
                    })
                    .collect();
                run_in(
                    ns,
                    &[
                        "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "gro", "off",
                    ],
                )?;
                saved.push((ns.to_string(), feats));
            }
            Ok(Undo::Offloads(saved))
        }
    }
}

fn preflight(o: &Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("meshnet-bench needs root (the lab makes network namespaces)");
    }
    for tool in ["ip", "iperf3", "ping", "ethtool", "tc"] {
        if run(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            bail!("{tool} is not installed (scripts/install-deps.sh installs what the lab needs)");
        }
    }
    for bin in ["meshnet-lab", "meshnetd", "meshnet"] {
        let p = o.bin_dir.join(bin);
        if !p.is_file() {
            bail!(
                "{} not found: build the release binaries with `cargo build --release --workspace \
                 --bins` (or set MESHNET_BIN_DIR)",
                p.display()
            );
        }
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

fn machine_facts() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let git = |args: &[&str]| -> String {
        let mut argv = vec!["git"];
        argv.extend_from_slice(args);
        run(&argv).map(|s| s.trim().to_string()).unwrap_or_default()
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]);
    if !commit.is_empty() && !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str("-dirty");
    }
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
        memory_mb: parse::status_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
        kernel: first_line(
            &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        ),
        iperf3: run(&["iperf3", "--version"])
            .map(|s| first_line(&s))
            .unwrap_or_default(),
        meshnet_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: commit,
        started: run(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

fn write_outputs(o: &Options, r: &Report) -> anyhow::Result<()> {
    let json = o
        .json
        .clone()
        .unwrap_or_else(|| o.out_dir.join("bench.json"));
    if let Some(d) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&json, serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = report::markdown(r);
    let md_path = o.out_dir.join("bench.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let mut written = vec![json.display().to_string(), md_path.display().to_string()];
    for (i, c) in r.settings.conditions.iter().enumerate() {
        let p = if i == 0 {
            o.out_dir.join("bench.svg")
        } else {
            o.out_dir.join(format!("bench-{c}.svg"))
        };
        std::fs::write(&p, report::svg(r, c))
            .with_context(|| format!("writing {}", p.display()))?;
        written.push(p.display().to_string());
    }
    println!("{md}");
    eprintln!("meshnet-bench: wrote {}", written.join(", "));
    Ok(())
}
