//! The kustomize manifests (`manifests/`), rendered as `kubectl apply -k` renders them, checked
//! for what DESIGN.md §2–§3 and the DaemonSet's contract with `meshnetd` require: the link type
//! per overlay (set by name, exactly once), the CNI paths the installer uses matching the volumes
//! that put them on the node, least-privilege RBAC, probes and metrics annotations.
//!
//! Needs `kubectl` (its built-in kustomize) or `kustomize`; without either the tests say so and
//! pass, except under CI (`CI` set), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate sits in the workspace")
        .to_path_buf()
}

/// The rendered objects of a kustomization directory, or None when no renderer is installed.
fn render(dir: &str) -> Option<Vec<Value>> {
    let path = repo().join(dir);
    let attempts: [(&str, &[&str]); 2] = [("kubectl", &["kustomize"]), ("kustomize", &["build"])];
    for (tool, args) in attempts {
        let out = match Command::new(tool).args(args).arg(&path).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("running {tool}: {e}"),
        };
        assert!(
            out.status.success(),
            "{tool} {} {dir} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("UTF-8 YAML");
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
            .filter(|v: &Value| !v.is_null())
            .collect();
        assert!(!docs.is_empty(), "{dir} rendered nothing");
        return Some(docs);
    }
    panic!("neither kubectl nor kustomize is installed: the manifests cannot be rendered");
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn objects<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| s(d, &["kind"]) == Some(kind))
        .collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = objects(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn by_name<'a>(items: &'a [Value], name: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|i| s(i, &["name"]) == Some(name))
        .collect()
}

/// The DaemonSet's pod spec and its `meshnet` container.
fn daemon(docs: &[Value]) -> (&Value, &Value) {
    let ds = one(docs, "DaemonSet");
    let pod = get(ds, &["spec", "template", "spec"]).expect("pod spec");
    let containers = seq(pod, &["containers"]);
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    assert_eq!(s(c, &["name"]), Some("meshnet"));
    (pod, c)
}

/// The value of env var `name`, asserting it is set exactly once.
fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    let found = by_name(seq(c, &["env"]), name);
    assert_eq!(found.len(), 1, "env {name} set {} times", found.len());
    found[0]
}

fn env_value<'a>(c: &'a Value, name: &str) -> &'a str {
    s(env(c, name), &["value"]).unwrap_or_else(|| panic!("env {name} has no literal value"))
}

fn host_path<'a>(pod: &'a Value, volume: &str) -> &'a str {
    let v = by_name(seq(pod, &["volumes"]), volume);
    assert_eq!(v.len(), 1, "volume {volume}");
    s(v[0], &["hostPath", "path"]).unwrap_or_else(|| panic!("volume {volume} is no hostPath"))
}

fn mount<'a>(c: &'a Value, volume: &str) -> &'a Value {
    let m = by_name(seq(c, &["volumeMounts"]), volume);
    assert_eq!(m.len(), 1, "mount of {volume}");
    m[0]
}

fn ports(c: &Value) -> Vec<(Option<&str>, i64)> {
    seq(c, &["ports"])
        .iter()
        .map(|p| {
            (
                s(p, &["name"]),
                get(p, &["containerPort"])
                    .and_then(Value::as_i64)
                    .expect("containerPort"),
            )
        })
        .collect()
}

/// Container `c` mounts the node's CNI dirs at the paths its env tells meshnetd.
fn check_cni_mounts(c: &Value) {
    assert_eq!(
        s(mount(c, "cni-dir"), &["mountPath"]),
        Some(env_value(c, "MESHNET_CNI_CONF_DIR"))
    );
    assert_eq!(
        s(mount(c, "cni-bin"), &["mountPath"]),
        Some(env_value(c, "MESHNET_CNI_BIN_DIR"))
    );
}

/// What every rendering must satisfy.
fn check_common(docs: &[Value]) {
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert!(!objects(docs, kind).is_empty(), "no {kind}");
    }
    assert_eq!(
        s(one(docs, "Namespace"), &["metadata", "name"]),
        Some("meshnet")
    );
    let crd = one(docs, "CustomResourceDefinition");
    assert_eq!(
        s(crd, &["metadata", "name"]),
        Some("topologies.networkop.co.uk")
    );
    for kind in ["ServiceAccount", "DaemonSet"] {
        assert_eq!(
            s(one(docs, kind), &["metadata", "namespace"]),
            Some("meshnet"),
            "{kind} namespace"
        );
    }

    check_rbac(docs);

    let ds = one(docs, "DaemonSet");
    assert_eq!(
        s(ds, &["spec", "updateStrategy", "type"]),
        Some("RollingUpdate")
    );
    let annotations = get(ds, &["spec", "template", "metadata", "annotations"]).expect("annot.");
    assert_eq!(s(annotations, &["prometheus.io/scrape"]), Some("true"));
    assert_eq!(s(annotations, &["prometheus.io/port"]), Some("51112"));
    assert_eq!(s(annotations, &["prometheus.io/path"]), Some("/metrics"));

    let (pod, c) = daemon(docs);
    assert_eq!(s(pod, &["serviceAccountName"]), Some("meshnet"));
    for key in ["hostNetwork", "hostPID"] {
        assert_eq!(
            get(pod, &[key]).and_then(Value::as_bool),
            Some(true),
            "{key}"
        );
    }
    assert!(
        get(pod, &["terminationGracePeriodSeconds"]).is_some_and(Value::is_i64),
        "terminationGracePeriodSeconds"
    );
    let tolerations = seq(pod, &["tolerations"]);
    assert!(
        tolerations
            .iter()
            .any(|t| s(t, &["operator"]) == Some("Exists") && get(t, &["key"]).is_none()),
        "a toleration of every taint: {tolerations:?}"
    );
    assert_eq!(
        get(c, &["securityContext", "privileged"]).and_then(Value::as_bool),
        Some(true)
    );
    let image = s(c, &["image"]).expect("image");
    assert!(image.starts_with("meshnet/meshnet:"), "{image}");
    assert_eq!(s(c, &["imagePullPolicy"]), Some("IfNotPresent"));

    // The downward API gives the node's identity; no read of Nodes needed.
    assert_eq!(
        s(env(c, "NODE_NAME"), &["valueFrom", "fieldRef", "fieldPath"]),
        Some("spec.nodeName")
    );
    assert_eq!(
        s(env(c, "HOST_IP"), &["valueFrom", "fieldRef", "fieldPath"]),
        Some("status.hostIP")
    );
    assert_eq!(env_value(c, "MESHNET_STORE"), "kube");

    // Probes and metrics on the HTTP address.
    let http_port: i64 = env_value(c, "MESHNET_HTTP_ADDR")
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("MESHNET_HTTP_ADDR has a port");
    assert_eq!(http_port, 51112);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let p = get(c, &[probe, "httpGet"]).unwrap_or_else(|| panic!("{probe}"));
        assert_eq!(s(p, &["path"]), Some(path), "{probe}");
        assert_eq!(
            get(p, &["port"]).and_then(Value::as_i64),
            Some(http_port),
            "{probe}"
        );
    }
    assert!(ports(c).contains(&(Some("metrics"), 51112)));
    let requests = get(c, &["resources", "requests"]).expect("requests");
    assert_eq!(s(requests, &["cpu"]), Some("50m"));
    assert_eq!(s(requests, &["memory"]), Some("64Mi"));
    assert_eq!(
        s(c, &["resources", "limits", "memory"]),
        Some("512Mi"),
        "memory limit"
    );

    // The installer writes where the volumes put the node's CNI directories.
    check_cni_mounts(c);
    assert_eq!(host_path(pod, "cni-dir"), "/etc/cni/net.d");
    // The socket is in the directory shared with the node, where the plugin dials it.
    let socket = Path::new(env_value(c, "MESHNET_SOCKET"));
    assert_eq!(
        socket.parent().and_then(Path::to_str),
        s(mount(c, "meshnet-run"), &["mountPath"])
    );
    assert_eq!(host_path(pod, "meshnet-run"), "/run/meshnet");
    // Pod namespaces pinned after the daemon started must show up in its view.
    let netns = mount(c, "netns");
    assert_eq!(s(netns, &["mountPath"]), Some("/var/run/netns"));
    assert_eq!(s(netns, &["mountPropagation"]), Some("HostToContainer"));
    assert_eq!(host_path(pod, "netns"), "/var/run/netns");
}

/// Least privilege: Topologies read and watched, their status written; nothing else.
fn check_rbac(docs: &[Value]) {
    let roles: Vec<&Value> = ["ClusterRole", "Role"]
        .iter()
        .flat_map(|k| objects(docs, k))
        .collect();
    assert_eq!(roles.len(), 1, "one role");
    let mut granted: Vec<(String, String)> = Vec::new();
    for rule in seq(roles[0], &["rules"]) {
        let list = |key: &str| -> Vec<&str> {
            seq(rule, &[key]).iter().filter_map(Value::as_str).collect()
        };
        let (groups, resources, verbs) = (list("apiGroups"), list("resources"), list("verbs"));
        for v in [&groups, &resources, &verbs] {
            assert!(!v.contains(&"*"), "wildcard in {rule:?}");
        }
        assert!(
            get(rule, &["nonResourceURLs"]).is_none(),
            "non-resource URLs: {rule:?}"
        );
        assert!(
            get(rule, &["resourceNames"]).is_none(),
            "unexpected resourceNames"
        );
        // "" is the core group: pods, nodes, secrets, ... — none needed.
        assert_eq!(groups, ["networkop.co.uk"], "{rule:?}");
        for r in &resources {
            for v in &verbs {
                granted.push((r.to_string(), v.to_string()));
            }
        }
    }
    granted.sort();
    let mut want: Vec<(String, String)> = [
        ("topologies", "get"),
        ("topologies", "list"),
        ("topologies", "watch"),
        ("topologies/status", "get"),
        ("topologies/status", "patch"),
        ("topologies/status", "update"),
    ]
    .iter()
    .map(|(r, v)| (r.to_string(), v.to_string()))
    .collect();
    want.sort();
    assert_eq!(granted, want);

    let binding = one(docs, "ClusterRoleBinding");
    assert_eq!(
        s(binding, &["roleRef", "name"]),
        s(roles[0], &["metadata", "name"])
    );
    let subjects = seq(binding, &["subjects"]);
    assert_eq!(subjects.len(), 1);
    assert_eq!(s(&subjects[0], &["kind"]), Some("ServiceAccount"));
    assert_eq!(s(&subjects[0], &["name"]), Some("meshnet"));
    assert_eq!(s(&subjects[0], &["namespace"]), Some("meshnet"));
}

#[test]
fn base_renders_with_vxlan() {
    let Some(docs) = render("manifests/base") else {
        return;
    };
    check_common(&docs);
    let (pod, c) = daemon(&docs);
    assert_eq!(env_value(c, "INTER_NODE_LINK_TYPE"), "VXLAN");
    assert_eq!(host_path(pod, "cni-bin"), "/opt/cni/bin");
    assert!(
        !ports(c).iter().any(|(_, p)| *p == 51111),
        "no wire port without the gRPC wire"
    );
    assert!(by_name(seq(c, &["env"]), "MESHNET_WIRE_ADDR").is_empty());
    assert_eq!(env_value(c, "MESHNET_BEACON_PORT"), "51112");
}

#[test]
fn grpc_link_overlay_switches_the_link_type_by_name() {
    let Some(docs) = render("manifests/overlays/grpc-link") else {
        return;
    };
    check_common(&docs);
    let (pod, c) = daemon(&docs);
    // Replaced, not appended: exactly one entry (env() asserts that), and it says GRPC.
    assert_eq!(env_value(c, "INTER_NODE_LINK_TYPE"), "GRPC");
    assert_eq!(env_value(c, "MESHNET_WIRE_ADDR"), "[::]:51111");
    assert!(ports(c).contains(&(Some("wire"), 51111)), "{:?}", ports(c));
    // Mutual TLS material, optional.
    let tls = mount(c, "wire-tls");
    assert_eq!(
        s(tls, &["mountPath"]),
        Some(env_value(c, "MESHNET_WIRE_TLS_DIR"))
    );
    assert_eq!(get(tls, &["readOnly"]).and_then(Value::as_bool), Some(true));
    let vol = by_name(seq(pod, &["volumes"]), "wire-tls");
    assert_eq!(vol.len(), 1);
    assert_eq!(
        s(vol[0], &["secret", "secretName"]),
        Some("meshnet-wire-tls")
    );
    assert_eq!(
        get(vol[0], &["secret", "optional"]).and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(host_path(pod, "cni-bin"), "/opt/cni/bin");
}

#[test]
fn kops_overlay_moves_the_cni_bin_dir() {
    let Some(docs) = render("manifests/overlays/kops") else {
        return;
    };
    check_common(&docs);
    let (pod, c) = daemon(&docs);
    assert_eq!(host_path(pod, "cni-bin"), "/home/kubernetes/bin");
    assert_eq!(
        seq(pod, &["volumes"]).len(),
        4,
        "patched in place, not added"
    );
    assert_eq!(env_value(c, "INTER_NODE_LINK_TYPE"), "VXLAN");
}

#[test]
fn a_rollout_keeps_the_chain_and_the_cleanup_removes_it_on_every_node() {
    let Some(base) = render("manifests/base") else {
        return;
    };
    let (base_pod, c) = daemon(&base);
    // A rollout SIGTERMs meshnetd: it must keep 00-meshnet.conflist (its default).
    assert!(by_name(seq(c, &["env"]), "MESHNET_REMOVE_CNI_CONFIG_ON_EXIT").is_empty());
    let Some(docs) = render("manifests/uninstall") else {
        return;
    };
    let ds = one(&docs, "DaemonSet");
    assert_eq!(s(ds, &["metadata", "namespace"]), Some("meshnet"));
    let pod = get(ds, &["spec", "template", "spec"]).expect("pod spec");
    assert_eq!(
        get(pod, &["hostNetwork"]).and_then(Value::as_bool),
        Some(true),
        "on the pod network its own sandbox would go through the meshnet chain it removes"
    );
    assert!(
        seq(pod, &["tolerations"])
            .iter()
            .any(|t| s(t, &["operator"]) == Some("Exists")),
        "every node, tainted ones included"
    );
    let init = seq(pod, &["initContainers"]);
    assert_eq!(init.len(), 1, "the removal gates readiness");
    let commands: Vec<Vec<&str>> = init
        .iter()
        .chain(seq(pod, &["containers"]))
        .map(|c| {
            seq(c, &["command"])
                .iter()
                .filter_map(Value::as_str)
                .collect()
        })
        .collect();
    assert_eq!(
        commands,
        [
            vec!["/usr/local/bin/meshnetd", "uninstall"],
            vec!["/usr/local/bin/meshnetd", "uninstall", "--hold"]
        ]
    );
    // The same node directories as the DaemonSet that installed, at the paths the env names.
    for vol in ["cni-dir", "cni-bin"] {
        assert_eq!(host_path(pod, vol), host_path(base_pod, vol), "{vol}");
    }
    for c in init.iter().chain(seq(pod, &["containers"])) {
        check_cni_mounts(c);
        assert_eq!(
            s(c, &["image"]),
            s(
                get(base_pod, &["containers"])
                    .and_then(|cs| cs.get(0))
                    .expect("base container"),
                &["image"]
            )
        );
    }
}

/// What the Go meshnet's and KNE's manifests install (their rendered DaemonSet selector, and the
/// names of their wildcard role and its binding): facts from those projects' manifests, which
/// an in-place upgrade applies over.
const GO_DAEMONSET_SELECTOR: [(&str, &str); 2] = [("app", "meshnet"), ("name", "meshnet")];
const GO_CLUSTER_ROLE: &str = "meshnet-clusterrole";
const GO_CLUSTER_ROLE_BINDING: &str = "meshnet-clusterrolebinding";

#[test]
fn manifests_apply_in_place_over_the_go_and_kne_meshnet() {
    for dir in [
        "manifests/base",
        "manifests/overlays/grpc-link",
        "manifests/overlays/kops",
    ] {
        let Some(docs) = render(dir) else {
            return;
        };
        let ds = one(&docs, "DaemonSet");
        assert_eq!(s(ds, &["metadata", "name"]), Some("meshnet"), "{dir}");
        assert_eq!(s(ds, &["metadata", "namespace"]), Some("meshnet"), "{dir}");
        // The selector is immutable: it must equal theirs exactly, or `kubectl apply` fails.
        let selector = get(ds, &["spec", "selector", "matchLabels"])
            .and_then(Value::as_mapping)
            .expect("matchLabels");
        let mut got: Vec<(&str, &str)> = selector
            .iter()
            .map(|(k, v)| (k.as_str().expect("key"), v.as_str().expect("value")))
            .collect();
        got.sort_unstable();
        assert_eq!(got, GO_DAEMONSET_SELECTOR, "{dir}: selector");
        assert!(
            get(ds, &["spec", "selector", "matchExpressions"]).is_none(),
            "{dir}"
        );
        // The pods carry the selector's labels (or the DaemonSet is refused).
        for (k, v) in GO_DAEMONSET_SELECTOR {
            assert_eq!(
                s(ds, &["spec", "template", "metadata", "labels", k]),
                Some(v),
                "{dir}: pod label {k}"
            );
        }
        // Same names as their role and binding: applied over them, our least-privilege rules
        // replace the wildcard ones (check_rbac: no "*"), and no second binding is left.
        let roles = objects(&docs, "ClusterRole");
        assert_eq!(roles.len(), 1, "{dir}");
        assert_eq!(s(roles[0], &["metadata", "name"]), Some(GO_CLUSTER_ROLE));
        let binding = one(&docs, "ClusterRoleBinding");
        assert_eq!(
            s(binding, &["metadata", "name"]),
            Some(GO_CLUSTER_ROLE_BINDING)
        );
        // roleRef is immutable too: it must name the same role as theirs.
        assert_eq!(s(binding, &["roleRef", "name"]), Some(GO_CLUSTER_ROLE));
        check_rbac(&docs);
    }
}
