//! Nodes: the underlay, the daemons (and their certificates, the API server proxy), and what the
//! `daemon`, `node` and `metrics` commands do to them.

use super::*;

/// Drops every UDP 4789 (VXLAN) packet a node sends, and counts it.
pub(super) fn block_vxlan(netns: &str) -> anyhow::Result<()> {
    let nft = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", netns, "nft"];
        full.extend_from_slice(args);
        sys::run(&full)
    };
    nft(&["add", "table", "inet", "meshnet_lab"])?;
    nft(&[
        "add",
        "chain",
        "inet",
        "meshnet_lab",
        "out",
        "{ type filter hook output priority 0; policy accept; }",
    ])?;
    nft(&[
        "add",
        "rule",
        "inet",
        "meshnet_lab",
        "out",
        "udp",
        "dport",
        "4789",
        "counter",
        "drop",
    ])?;
    Ok(())
}

/// The API server's port, from the kubeconfig's `server: https://127.0.0.1:PORT`.
pub(super) fn kube_server_port(kubeconfig: &Path) -> anyhow::Result<u16> {
    let text = fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", kubeconfig.display()))?;
    let server = v["clusters"][0]["cluster"]["server"]
        .as_str()
        .with_context(|| format!("{}: no clusters[0].cluster.server", kubeconfig.display()))?;
    let rest = server
        .strip_prefix("https://127.0.0.1:")
        .or_else(|| server.strip_prefix("https://localhost:"))
        .with_context(|| {
            format!("the lab runs against an API server on this machine's loopback, not {server}")
        })?;
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("port of {server}"))
}

/// `kube-proxy NETNS PORT`: listens on 127.0.0.1:PORT inside the node namespace NETNS and relays
/// every connection to 127.0.0.1:PORT of the machine, where the API server is. The listening
/// socket is made by a thread that entered the node's namespace (a socket stays in the
/// namespace it was made in); connections out are made from this process's own namespace.
///
/// # Errors
/// The namespace cannot be entered or the port is taken there.
pub fn kube_proxy(netns: &Path, port: u16) -> anyhow::Result<()> {
    use std::net::{TcpListener, TcpStream};
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let listener = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<TcpListener> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            TcpListener::bind(("127.0.0.1", port)).context("binding in the node namespace")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("proxy thread panicked"))?
    })?;
    for conn in listener.incoming() {
        let Ok(down) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                return;
            };
            let a = std::thread::spawn(move || {
                let (mut r, mut w) = (down, up);
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
            let (mut r, mut w) = (up2, down2);
            let _ = std::io::copy(&mut r, &mut w);
            let _ = w.shutdown(std::net::Shutdown::Write);
            let _ = a.join();
        });
    }
    Ok(())
}

pub(super) fn stop_process(pid: i32) {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if kill(p, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// The daemons' `--resync-seconds`: `MESHNET_LAB_RESYNC_SECONDS`, else 10.
pub(super) fn resync_seconds() -> anyhow::Result<u64> {
    match std::env::var("MESHNET_LAB_RESYNC_SECONDS") {
        Ok(v) => v.parse::<u64>().ok().filter(|n| *n > 0).with_context(|| {
            format!("MESHNET_LAB_RESYNC_SECONDS={v:?} is not a positive number of seconds")
        }),
        Err(_) => Ok(10),
    }
}

impl Lab {
    pub(super) fn build_underlay(
        &self,
        st: &mut LabState,
        n: usize,
        mtu: u32,
    ) -> anyhow::Result<()> {
        let ul = st.underlay_netns.clone();
        let ext = st.external_netns.clone();
        let mtu_s = mtu.to_string();
        let blocks = node_blocks(st.pod_cidr, n)?;
        for ns in [&ul, &ext] {
            self.add_netns(ns)?;
            sys::run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sys::run(&["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])?;
            sys::run(&["ip", "-n", ns, "link", "set", "br0", "up"])?;
        }
        sys::run(&["ip", "-n", &ul, "link", "set", "br0", "mtu", &mtu_s])?;
        // The external device: a host on the outside segment.
        sys::run(&[
            "ip", "-n", &ext, "link", "add", "dev0", "type", "veth", "peer", "name", "dev0-br",
        ])?;
        sys::run(&[
            "ip", "-n", &ext, "link", "set", "dev0-br", "master", "br0", "up",
        ])?;
        sys::run(&[
            "ip",
            "-n",
            &ext,
            "addr",
            "add",
            &format!("{EXTERNAL_DEVICE}/24"),
            "dev",
            "dev0",
        ])?;
        sys::run(&["ip", "-n", &ext, "link", "set", "dev0", "up"])?;
        for (i, pod_block) in (1..=n).zip(blocks) {
            let name = format!("node{i}");
            let netns = format!("{}{name}", prefix(&self.name));
            self.add_netns(&netns)?;
            sys::run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
            let ul_end = format!("n{i}");
            sys::run(&[
                "ip", "-n", &ul, "link", "add", &ul_end, "type", "veth", "peer", "name", "ul0",
                "netns", &netns,
            ])?;
            sys::run(&[
                "ip", "-n", &ul, "link", "set", &ul_end, "mtu", &mtu_s, "master", "br0", "up",
            ])?;
            let (ip, plen) = st.underlay.node_address(i);
            // nodad: an IPv6 address is usable at once, not after duplicate address detection
            // (the daemon binds and peers connect right away); the lab assigns them uniquely.
            let cidr = format!("{ip}/{plen}");
            let mut add = vec!["ip", "-n", &netns, "addr", "add", &cidr, "dev", "ul0"];
            if st.underlay == Underlay::Ipv6 {
                add.push("nodad");
            }
            sys::run(&add)?;
            sys::run(&[
                "ip", "-n", &netns, "link", "set", "ul0", "mtu", &mtu_s, "up",
            ])?;
            // The node's interface to the outside segment, for macvlan links.
            sys::run(&[
                "ip", "-n", &ext, "link", "add", &ul_end, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ])?;
            sys::run(&[
                "ip", "-n", &ext, "link", "set", &ul_end, "master", "br0", "up",
            ])?;
            sys::run(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
            if st.link == "grpc" {
                // Prove the point of the gRPC wire: VXLAN (UDP 4789) cannot leave a node; only
                // TCP to the daemons' wire port crosses the underlay.
                block_vxlan(&netns)?;
            }
            let pod_cidr = pod_block.to_string();
            let ndir = self.dir.join(&name);
            fs::create_dir_all(&ndir)?;
            st.nodes.push(NodeState {
                name,
                netns,
                ip,
                pod_cidr,
                socket: ndir.join("meshnetd.sock"),
                pid: None,
                proxy_pid: None,
            });
        }
        Ok(())
    }

    pub(super) fn start_daemon(
        &self,
        st: &mut LabState,
        i: usize,
        meshnetd: &Path,
    ) -> anyhow::Result<()> {
        let node = &st.nodes[i];
        let ndir = self.dir.join(&node.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ndir.join("meshnetd.log"))
            .context("daemon log")?;
        let _ = fs::remove_file(&node.socket);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns])
            .arg(meshnetd)
            .args(["--node-name", &node.name, "--host-ip", &node.ip])
            .arg("--socket")
            .arg(&node.socket)
            .args(["--http-addr", &format!("[::]:{HTTP_PORT}")]);
        if st.wire_tls {
            cmd.arg("--wire-tls-dir").arg(ndir.join("tls"));
        }
        match &st.store {
            LabStore::File => {
                cmd.arg("--store")
                    .arg(format!("file:{}", self.dir.join("store").display()));
            }
            LabStore::Kube { kubeconfig, .. } => {
                // The API server listens on the machine's loopback; the node's own loopback
                // reaches it through the lab's proxy (see `kube_proxy`).
                cmd.args(["--store", "kube"]).env("KUBECONFIG", kubeconfig);
            }
        }
        let resync = resync_seconds()?;
        let child = cmd
            .args(["--resync-seconds", &resync.to_string()])
            .args(["--inter-node-link-type", &st.link])
            .env(
                "RUST_LOG",
                std::env::var("MESHNET_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting meshnetd")?;
        let pid = i32::try_from(child.id()).context("pid")?;
        st.nodes[i].pid = Some(pid);
        if let LabStore::Kube { server_port, .. } = &st.store
            && st.nodes[i]
                .proxy_pid
                .is_none_or(|p| kill(Pid::from_raw(p), None).is_err())
        {
            let proxy = Command::new(std::env::current_exe().context("locating meshnet-lab")?)
                .args([
                    "kube-proxy",
                    &format!("/run/netns/{}", st.nodes[i].netns),
                    &server_port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(ndir.join("kube-proxy.log"))?,
                )
                .process_group(0)
                .spawn()
                .context("starting the API server proxy")?;
            st.nodes[i].proxy_pid = Some(i32::try_from(proxy.id()).context("pid")?);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut child = child;
        while !st.nodes[i].socket.exists() {
            // try_wait reaps a daemon that exited at once (a zombie would still answer kill 0).
            if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
                let log = ndir.join("meshnetd.log");
                let text = fs::read_to_string(&log).unwrap_or_default();
                // The daemon's own error line (anyhow prints "Error: ..."), else the last line.
                let last = text
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("Error: "))
                    .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default();
                bail!(
                    "meshnetd on {} did not come up; see {}{last}",
                    st.nodes[i].name,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The daemon outlives this command; it is stopped by `down`.
        drop(child);
        Ok(())
    }

    /// A lab CA and, per node, `tls.crt`/`tls.key`/`ca.crt` valid for the wire's TLS name, for
    /// both serving and dialling (what a cluster would put in the `meshnet-wire-tls` Secret).
    pub(super) fn make_certificates(&self, st: &LabState) -> anyhow::Result<()> {
        let ca_dir = self.dir.join("ca");
        fs::create_dir_all(&ca_dir)?;
        let p = |d: &Path, f: &str| d.join(f).display().to_string();
        sys::run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=meshnet-lab-ca",
            "-keyout",
            &p(&ca_dir, "ca.key"),
            "-out",
            &p(&ca_dir, "ca.crt"),
        ])?;
        let ext = ca_dir.join("ext.cnf");
        fs::write(
            &ext,
            "subjectAltName=DNS:meshnet-wire\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        for n in &st.nodes {
            let d = self.dir.join(&n.name).join("tls");
            fs::create_dir_all(&d)?;
            sys::run(&[
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={}", n.name),
                "-keyout",
                &p(&d, "tls.key"),
                "-out",
                &p(&d, "tls.csr"),
            ])?;
            sys::run(&[
                "openssl",
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                &p(&d, "tls.csr"),
                "-CA",
                &p(&ca_dir, "ca.crt"),
                "-CAkey",
                &p(&ca_dir, "ca.key"),
                "-CAcreateserial",
                "-out",
                &p(&d, "tls.crt"),
                "-extfile",
                &ext.display().to_string(),
            ])?;
            fs::copy(ca_dir.join("ca.crt"), d.join("ca.crt"))?;
        }
        Ok(())
    }

    /// `daemon NODE stop|start|kill`: SIGTERM (and wait), start again, or SIGKILL a node's
    /// daemon. Pods and their interfaces are left alone.
    ///
    /// # Errors
    /// Unknown node or action; the daemon does not come up.
    pub fn daemon(&self, node: &str, action: &str) -> anyhow::Result<String> {
        let mut st = self.load()?;
        let i = st
            .nodes
            .iter()
            .position(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        let pid = st.nodes[i]
            .pid
            .filter(|p| kill(Pid::from_raw(*p), None).is_ok());
        let msg = match (action, pid) {
            ("stop", Some(p)) => {
                stop_process(p);
                st.nodes[i].pid = None;
                format!("meshnetd on {node} stopped (pid {p})")
            }
            ("kill", Some(p)) => {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while kill(Pid::from_raw(p), None).is_ok() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                st.nodes[i].pid = None;
                format!("meshnetd on {node} killed (pid {p})")
            }
            ("stop" | "kill", None) => format!("meshnetd on {node} is not running"),
            ("start", Some(p)) => format!("meshnetd on {node} is already running (pid {p})"),
            ("start", None) => {
                self.start_daemon(&mut st, i, &find_bin("meshnetd")?)?;
                format!(
                    "meshnetd on {node} started (pid {})",
                    st.nodes[i].pid.unwrap_or_default()
                )
            }
            (other, _) => bail!("daemon action {other:?}: want stop, start or kill"),
        };
        self.save(&st)?;
        Ok(msg)
    }

    /// `node NODE down|up`: cuts (or restores) a node's underlay, as a failed NIC or switch port
    /// would; the daemon keeps running.
    ///
    /// # Errors
    /// Unknown node or action.
    pub fn node(&self, node: &str, action: &str) -> anyhow::Result<String> {
        let st = self.load()?;
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        let state = match action {
            "down" | "up" => action,
            other => bail!("node action {other:?}: want down or up"),
        };
        sys::run(&[
            "ip",
            "-n",
            &st.underlay_netns,
            "link",
            "set",
            &format!("n{}", &n.name["node".len()..]),
            state,
        ])?;
        Ok(format!("underlay of {node} {state}"))
    }

    /// `metrics NODE`: the Prometheus exposition of a node's daemon.
    ///
    /// # Errors
    /// Unknown node, or the daemon does not answer.
    pub fn metrics(&self, node: &str) -> anyhow::Result<String> {
        let st = self.load()?;
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        sys::run_in(
            &n.netns,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{HTTP_PORT}/metrics"),
            ],
        )
    }
}
