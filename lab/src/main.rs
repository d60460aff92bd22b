//! `meshnet-lab` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshnet_lab::lab::{self, Lab, Order, UpOptions};

/// Runs meshnet labs: nodes and pods as network namespaces, real daemons, the real CNI chain.
#[derive(Debug, Parser)]
#[command(name = "meshnet-lab", version, about)]
struct Cli {
    /// Name of the lab (several labs can run side by side).
    #[arg(long, global = true, env = "MESHNET_LAB", default_value = "meshnet")]
    lab: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab from Kubernetes YAML and start its pods; exits 0 once every link is up.
    Up {
        file: PathBuf,
        /// Number of nodes.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Inter-node link type: vxlan or grpc.
        #[arg(long, default_value = "vxlan")]
        link: String,
        /// Pod start order: file, reverse, random or random:SEED.
        #[arg(long, default_value = "file")]
        order: Order,
        /// Start all pods at once (concurrent CNI ADDs).
        #[arg(long)]
        parallel: bool,
        /// Seconds to wait for every link to come up.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Use the Kubernetes API server of this kubeconfig (on this machine's loopback) as the
        /// store, instead of the file store: every daemon runs with `--store kube`.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Mutual TLS on the daemons' wire (a lab CA and one certificate per node).
        #[arg(long)]
        wire_tls: bool,
        /// MTU of the underlay between nodes.
        #[arg(long, default_value_t = 1500)]
        underlay_mtu: u32,
        /// cniVersion of the node's conflist.
        #[arg(long, default_value = "0.3.1")]
        cni_version: String,
        /// The pods' eth0 network, split among the nodes; link addresses of the topology may
        /// not overlap it.
        #[arg(long, default_value = lab::DEFAULT_POD_CIDR)]
        pod_cidr: ipnet::Ipv4Net,
        /// Address family of the underlay between nodes (the daemons' HOST_IP): ipv4
        /// (198.51.100.0/24) or ipv6 (2001:db8::/64).
        #[arg(long, default_value = "ipv4")]
        underlay: lab::Underlay,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        /// NAME or NAMESPACE/NAME.
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Pods and links with their state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ping both ends of every link with addresses; check that the others are present and up.
    Verify,
    /// Delete a pod's sandbox and start a new one (CNI DEL, new namespace, CNI ADD), on the same
    /// node or on `--node`.
    Restart {
        pod: String,
        /// Start the new sandbox on this node (the pod moves).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Store more Topologies and start the file's pods that are not running yet.
    Apply {
        file: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop (SIGTERM), start, or kill (SIGKILL) a node's daemon; pods are left alone.
    Daemon {
        node: String,
        /// stop, start or kill
        action: String,
    },
    /// Cut (down) or restore (up) a node's underlay.
    Node {
        node: String,
        /// down or up
        action: String,
    },
    /// Print a node daemon's /metrics.
    Metrics { node: String },
    /// Impair a link (stored in its Topology; the daemons follow): delay, loss, rate … on both
    /// directions, or only what POD sends (--side local) or receives (--side peer).
    Impair {
        /// POD:INTERFACE or NAMESPACE/POD:INTERFACE.
        end: String,
        /// One-way delay, e.g. 10ms.
        #[arg(long)]
        delay: Option<String>,
        /// Delay variation (± this), e.g. 2ms.
        #[arg(long)]
        jitter: Option<String>,
        /// Frames lost, e.g. 1%.
        #[arg(long)]
        loss: Option<String>,
        /// Rate limit, e.g. 50mbit.
        #[arg(long)]
        rate: Option<String>,
        /// Frames duplicated, e.g. 0.1%.
        #[arg(long)]
        duplicate: Option<String>,
        /// Frames with a bit flipped, e.g. 0.1%.
        #[arg(long)]
        corrupt: Option<String>,
        /// Frames sent ahead of delayed ones, e.g. 1% (needs --delay).
        #[arg(long)]
        reorder: Option<String>,
        /// local (what POD sends), peer (what POD receives) or both (default).
        #[arg(long)]
        side: Option<String>,
        /// Remove the link's impairment.
        #[arg(long)]
        clear: bool,
    },
    /// Pull (down) or plug back (up) a link's cable: both ends lose (regain) carrier, nothing
    /// is deleted; stored as `state` in the link's Topology, the daemons follow.
    Link {
        /// POD:INTERFACE or NAMESPACE/POD:INTERFACE.
        end: String,
        /// down or up
        action: String,
    },
    /// Draw the topology as it is: pods by node, links coloured by state, with interfaces, kind,
    /// MTU and current rates (sampled over --interval-ms).
    Graph {
        /// svg, dot (Graphviz), mermaid or json.
        #[arg(long, default_value = "svg")]
        format: meshnet_lab::graph::Format,
        /// Write here instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Milliseconds between the two samples that give the rates (0: no rates).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Live capture of a pod's interface as pcapng (any link kind, both directions), from the
    /// daemon of the pod's node: `capture r1:eth1 | wireshark -k -i -`.
    Capture {
        /// POD:INTERFACE, POD may be NAMESPACE/POD.
        target: String,
        /// Write to this file instead of stdout.
        #[arg(short = 'w')]
        write: Option<PathBuf>,
        /// Stop after this many frames (0: until Ctrl-C or the reader goes away).
        #[arg(short = 'c', default_value_t = 0)]
        count: u64,
    },
    /// Remove everything the lab made.
    Down,
    /// (internal) Relay 127.0.0.1:PORT inside a node namespace to the machine's loopback.
    #[command(hide = true)]
    KubeProxy { netns: PathBuf, port: u16 },
}

fn status(lab: &Lab, json: bool) -> anyhow::Result<()> {
    let st = lab.load()?;
    let links = lab.links(&st)?;
    let topos: std::collections::HashSet<(String, String)> = links
        .iter()
        .flat_map(|l| {
            [
                (l.namespace.clone(), l.a.pod.clone()),
                (l.namespace.clone(), l.b.pod.clone()),
            ]
        })
        .collect();
    if json {
        let pods: Vec<serde_json::Value> = st
            .pods
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name, "namespace": p.namespace, "node": p.node, "alive": true,
                    "netns": p.netns, "container_id": p.container_id,
                    "managed": topos.contains(&(p.namespace.clone(), p.name.clone())),
                })
            })
            .collect();
        let nodes: Vec<serde_json::Value> = st
            .nodes
            .iter()
            .map(
                |n| serde_json::json!({"name": n.name, "ip": n.ip, "netns": n.netns, "pid": n.pid}),
            )
            .collect();
        let out = serde_json::json!({"lab": st.name, "nodes": nodes, "pods": pods, "links": links});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "lab {} — {} nodes, {} pods, {} links",
        st.name,
        st.nodes.len(),
        st.pods.len(),
        links.len()
    );
    println!("{:<12} {:<20} {:<10}", "POD", "NAMESPACE", "NODE");
    for p in &st.pods {
        println!("{:<12} {:<20} {:<10}", p.name, p.namespace, p.node);
    }
    println!();
    println!(
        "{:<12} {:>4}  {:<24} {:<24} {:<8} {:<8} MESSAGE",
        "NAMESPACE", "UID", "END A", "END B", "KIND", "STATE"
    );
    for l in &links {
        println!(
            "{:<12} {:>4}  {:<24} {:<24} {:<8} {:<8} {}",
            l.namespace,
            l.uid,
            format!("{}:{}", l.a.pod, l.a.interface),
            format!("{}:{}", l.b.pod, l.b.interface),
            l.kind,
            l.state,
            l.message
        );
    }
    Ok(())
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // `exec` must not hold the lab lock while the user's command runs.
    if let Cmd::Exec { pod, cmd } = &cli.cmd {
        let st = Lab::open(&cli.lab)?.load()?;
        let i = lab::find_pod(&st, pod)?;
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &st.pods[i].netns])
            .args(cmd)
            .status()
            .context("running ip netns exec")?;
        return Ok(ExitCode::from(
            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
        ));
    }
    // Neither may `capture`, which runs until stopped.
    if let Cmd::Capture {
        target,
        write,
        count,
    } = &cli.cmd
    {
        let st = Lab::open(&cli.lab)?.load()?;
        meshnet_lab::capture::run(&st, target, write.as_deref(), *count)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::KubeProxy { netns, port } = &cli.cmd {
        lab::kube_proxy(netns, *port)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lab = Lab::open(&cli.lab)?;
    match cli.cmd {
        Cmd::Up {
            file,
            nodes,
            link,
            order,
            parallel,
            timeout,
            cni_version,
            underlay_mtu,
            kubeconfig,
            wire_tls,
            pod_cidr,
            underlay,
        } => {
            let opts = UpOptions {
                nodes,
                link,
                order,
                parallel,
                timeout: Duration::from_secs(timeout),
                cni_version,
                underlay_mtu,
                kubeconfig,
                wire_tls,
                pod_cidr,
                underlay,
            };
            let started = std::time::Instant::now();
            let st = lab.up(&file, &opts)?;
            println!(
                "lab {} up: {} nodes, {} pods, all links up in {:.1}s",
                st.name,
                st.nodes.len(),
                st.pods.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Cmd::Status { json } => status(&lab, json)?,
        Cmd::Verify => {
            let (lines, failures) = lab.verify()?;
            for l in &lines {
                println!("{l}");
            }
            if failures > 0 {
                eprintln!("verify: {failures} check(s) failed");
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "verify: all {} checks passed",
                lines.iter().filter(|l| l.starts_with("OK")).count()
            );
        }
        Cmd::Restart { pod, node, timeout } => {
            lab.restart(&pod, node.as_deref(), Duration::from_secs(timeout))?;
            match node {
                Some(n) => println!("pod {pod} restarted on {n}; its links are up"),
                None => println!("pod {pod} restarted; its links are up"),
            }
        }
        Cmd::Apply { file, timeout } => {
            let started = lab.apply(&file, Duration::from_secs(timeout))?;
            println!(
                "started {} pods ({}); all links up",
                started.len(),
                started.join(", ")
            );
        }
        Cmd::Daemon { node, action } => println!("{}", lab.daemon(&node, &action)?),
        Cmd::Node { node, action } => println!("{}", lab.node(&node, &action)?),
        Cmd::Metrics { node } => print!("{}", lab.metrics(&node)?),
        Cmd::Impair {
            end,
            delay,
            jitter,
            loss,
            rate,
            duplicate,
            corrupt,
            reorder,
            side,
            clear,
        } => {
            let decl = meshnet_lab::impair::declaration(&meshnet_lab::impair::ImpairFlags {
                delay,
                jitter,
                loss,
                rate,
                duplicate,
                corrupt,
                reorder,
                side,
                clear,
            })
            .map_err(anyhow::Error::msg)?;
            let what = decl
                .as_ref()
                .and_then(|i| i.parse().ok())
                .map_or("none".to_string(), |s| s.to_string());
            lab.edit_link(&end, |l| l.impairment = decl)?;
            println!("{end}: impairment {what}");
        }
        Cmd::Link { end, action } => {
            let state = match action.as_str() {
                "down" => "down",
                "up" => "",
                other => anyhow::bail!("link {end} {other}: want down or up"),
            };
            lab.edit_link(&end, |l| l.state = state.to_string())?;
            println!(
                "{end}: cable {}",
                if state.is_empty() {
                    "plugged in"
                } else {
                    "pulled"
                }
            );
        }
        Cmd::Graph {
            format,
            output,
            interval_ms,
        } => {
            let out = meshnet_lab::graph::draw(&lab, format, Duration::from_millis(interval_ms))?;
            match output {
                Some(path) => std::fs::write(&path, out)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{out}"),
            }
        }
        Cmd::Down => {
            for l in lab.down()? {
                println!("{l}");
            }
        }
        Cmd::Exec { .. } | Cmd::KubeProxy { .. } | Cmd::Capture { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshnet-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
