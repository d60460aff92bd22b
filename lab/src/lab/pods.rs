//! Pods: the CNI chain run for each sandbox (ADD/DEL as a runtime runs it), and `restart`.

use super::*;

impl Lab {
    pub(super) fn conflist(&self, st: &LabState, node: &NodeState) -> Value {
        json!({
            "cniVersion": st.cni_version,
            "name": "kindnet",
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": false,
                    "mtu": 1500,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.dir.join(&node.name).join("ipam"),
                        "ranges": [[{"subnet": node.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {
                    "name": "meshnet",
                    "type": "meshnet",
                    "ipam": {},
                    "dns": {},
                    "daemon_socket": node.socket,
                    "log_file": self.dir.join(&node.name).join("meshnet-cni.log")
                }
            ]
        })
    }

    /// Runs the node's conflist for `cmd` as a CNI runtime does: each plugin in order (reverse
    /// for DEL), each result passed to the next as `prevResult`. Returns the final result.
    pub(super) fn run_chain(
        &self,
        st: &LabState,
        pod: &PodState,
        cmd: &str,
    ) -> anyhow::Result<Option<Value>> {
        let node = st
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .with_context(|| format!("pod {} on unknown node {}", pod.key(), pod.node))?;
        let conf = self.conflist(st, node);
        let plugins = conf["plugins"].as_array().cloned().unwrap_or_default();
        let pdir = plugin_dir()?;
        let bdir = bin_dir()?;
        let env = vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", pod.container_id.clone()),
            ("CNI_NETNS", pod.netns_path()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.namespace, pod.name, pod.container_id
                ),
            ),
            ("CNI_PATH", format!("{}:{}", pdir.display(), bdir.display())),
        ];
        let order: Vec<&Value> = if cmd == "DEL" {
            plugins.iter().rev().collect()
        } else {
            plugins.iter().collect()
        };
        let mut prev = if cmd == "ADD" {
            None
        } else {
            pod.result.clone()
        };
        let mut errors = Vec::new();
        for plugin in order {
            let ty = plugin["type"].as_str().unwrap_or_default().to_string();
            let mut nc = plugin.clone();
            nc["cniVersion"] = json!(st.cni_version);
            nc["name"] = conf["name"].clone();
            if let Some(p) = &prev {
                nc["prevResult"] = p.clone();
            }
            let exe = if ty == "meshnet" {
                bdir.join("meshnet")
            } else {
                pdir.join(&ty)
            };
            let exe_s = exe.display().to_string();
            let argv = ["ip", "netns", "exec", node.netns.as_str(), exe_s.as_str()];
            let (ok, out, err) = sys::run_with_input(&argv, &env, &serde_json::to_vec(&nc)?)?;
            if !ok {
                let msg = format!(
                    "CNI {cmd} of pod {} failed in plugin {ty}: {} {}",
                    pod.key(),
                    out.trim(),
                    err.trim()
                );
                if cmd == "DEL" {
                    // DEL goes on through the whole chain, as runtimes do.
                    errors.push(msg);
                    continue;
                }
                bail!(msg);
            }
            if cmd == "ADD" {
                prev = Some(serde_json::from_str(&out).with_context(|| {
                    format!("plugin {ty} returned a result that is not JSON: {out:?}")
                })?);
            }
        }
        if !errors.is_empty() {
            bail!(errors.join("; "));
        }
        Ok(prev)
    }

    pub(super) fn start_pod(
        &self,
        st: &LabState,
        p: &PodDecl,
        node: &str,
        generation: u32,
    ) -> anyhow::Result<PodState> {
        let mut pod = PodState {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node: node.to_string(),
            netns: format!(
                "{}{}-{}-{generation}",
                prefix(&self.name),
                p.namespace,
                p.name
            ),
            container_id: random_hex(64),
            generation,
            result: None,
        };
        self.add_netns(&pod.netns)?;
        sys::run(&["ip", "-n", &pod.netns, "link", "set", "lo", "up"])?;
        match self.run_chain(st, &pod, "ADD") {
            Ok(r) => {
                pod.result = r;
                Ok(pod)
            }
            Err(e) => {
                // Leave nothing half-built: undo the chain and drop the sandbox.
                let _ = self.run_chain(st, &pod, "DEL");
                sys::run_quiet(&["ip", "netns", "delete", &pod.netns]);
                Err(e)
            }
        }
    }

    pub(super) fn stop_pod(&self, st: &LabState, pod: &PodState) -> anyhow::Result<()> {
        let r = self.run_chain(st, pod, "DEL");
        sys::run_quiet(&["ip", "netns", "delete", &pod.netns]);
        r.map(|_| ())
    }

    /// `restart POD [--node NODE]`: DEL, a new sandbox (new namespace and container id) on the
    /// pod's node or on `node` (the pod moves), ADD; waits for the pod's links.
    ///
    /// # Errors
    /// Unknown pod, a failing chain, or links not up in time.
    pub fn restart(&self, pod: &str, node: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
        let mut st = self.load()?;
        let i = find_pod(&st, pod)?;
        let old = st.pods[i].clone();
        let node = match node {
            None => old.node.clone(),
            Some(n) if st.nodes.iter().any(|x| x.name == n) => n.to_string(),
            Some(n) => anyhow::bail!(
                "no node {n} in lab {} (nodes: {})",
                self.name,
                st.nodes
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.stop_pod(&st, &old)?;
        let decl = PodDecl {
            namespace: old.namespace.clone(),
            name: old.name.clone(),
            node_name: None,
        };
        let new = self.start_pod(&st, &decl, &node, old.generation + 1);
        match new {
            Ok(p) => st.pods[i] = p,
            Err(e) => {
                st.pods.remove(i);
                self.save(&st)?;
                return Err(e);
            }
        }
        self.save(&st)?;
        let key = st.pods[i].key();
        self.wait_links(&st, Some(&key), timeout)
    }
}
