//! Reading Kubernetes YAML as `kubectl apply -f` does: multi-document files and `kind: List`,
//! keeping the `Topology` objects and the pods (bare `Pod`s, and the pods of StatefulSets and
//! Deployments); other kinds are ignored.

use anyhow::{Context, bail};
use meshnet_topology::topology::{API_VERSION, Topology};
use serde::Deserialize;
use serde_yaml::Value;

/// A pod the lab will start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDecl {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`, if the manifest pins the pod.
    pub node_name: Option<String>,
}

/// What a manifest declares.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    pub topologies: Vec<Topology>,
    pub pods: Vec<PodDecl>,
    /// Kinds seen and ignored (for the user's information).
    pub ignored: Vec<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn namespace_of(v: &Value, default_ns: &str) -> String {
    str_at(v, &["metadata", "namespace"])
        .filter(|s| !s.is_empty())
        .unwrap_or(default_ns)
        .to_string()
}

/// Parses one or more YAML documents.
///
/// # Errors
/// Malformed YAML, or a Topology/Pod that lacks a name, with the document's position.
pub fn parse(text: &str, default_ns: &str) -> anyhow::Result<Manifest> {
    let mut m = Manifest::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("YAML document {}", i + 1))?;
        if v.is_null() {
            continue;
        }
        add_object(&mut m, &v, default_ns).with_context(|| format!("YAML document {}", i + 1))?;
    }
    Ok(m)
}

fn add_object(m: &mut Manifest, v: &Value, default_ns: &str) -> anyhow::Result<()> {
    let kind = str_at(v, &["kind"]).unwrap_or("");
    let api = str_at(v, &["apiVersion"]).unwrap_or("");
    match kind {
        "List" => {
            let items = v
                .get("items")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for (j, it) in items.iter().enumerate() {
                add_object(m, it, default_ns).with_context(|| format!("List item {}", j + 1))?;
            }
        }
        "Topology" => {
            if api != API_VERSION {
                bail!("Topology with apiVersion {api:?}: want {API_VERSION}");
            }
            let json = serde_json::to_value(v).context("Topology to JSON")?;
            let mut t: Topology = serde_json::from_value(json).context("Topology")?;
            if t.metadata.name.is_empty() {
                bail!("Topology without metadata.name");
            }
            t.metadata.namespace = namespace_of(v, default_ns);
            // What a user applies has no status; the daemons write it.
            t.status = Default::default();
            m.topologies.push(t);
        }
        "Pod" => {
            let name = str_at(v, &["metadata", "name"]).context("Pod without metadata.name")?;
            m.pods.push(PodDecl {
                namespace: namespace_of(v, default_ns),
                name: name.to_string(),
                node_name: str_at(v, &["spec", "nodeName"]).map(str::to_string),
            });
        }
        "StatefulSet" | "Deployment" => {
            let name = str_at(v, &["metadata", "name"])
                .with_context(|| format!("{kind} without metadata.name"))?;
            let replicas = v
                .get("spec")
                .and_then(|s| s.get("replicas"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            if replicas != 1 {
                bail!(
                    "{kind} {name} has {replicas} replicas: the lab runs workloads with one replica"
                );
            }
            // A StatefulSet's single pod is NAME-0, which is what Topologies refer to.
            let pod = if kind == "StatefulSet" {
                format!("{name}-0")
            } else {
                format!("{name}-lab0")
            };
            m.pods.push(PodDecl {
                namespace: namespace_of(v, default_ns),
                name: pod,
                node_name: str_at(v, &["spec", "template", "spec", "nodeName"]).map(str::to_string),
            });
        }
        "" => bail!("object without kind"),
        other => m.ignored.push(other.to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_and_list() {
        let y = r#"
apiVersion: v1
kind: List
items:
- apiVersion: networkop.co.uk/v1beta1
  kind: Topology
  metadata: {name: r1}
  spec:
    links:
    - {uid: 1, peer_pod: r2, local_intf: eth1, peer_intf: eth1, local_ip: 12.12.12.1/24, peer_ip: 12.12.12.2/24}
- apiVersion: v1
  kind: Pod
  metadata: {name: r1, labels: {test: x}}
  spec: {nodeName: node2, containers: []}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: r2, namespace: lab}
spec: {replicas: 1, template: {spec: {containers: []}}}
---
apiVersion: v1
kind: Service
metadata: {name: s}
"#;
        let m = parse(y, "default").expect("parses");
        assert_eq!(m.topologies.len(), 1);
        assert_eq!(m.topologies[0].spec.links[0].local_ip, "12.12.12.1/24");
        assert_eq!(m.topologies[0].metadata.namespace, "default");
        assert_eq!(
            m.pods,
            vec![
                PodDecl {
                    namespace: "default".into(),
                    name: "r1".into(),
                    node_name: Some("node2".into())
                },
                PodDecl {
                    namespace: "lab".into(),
                    name: "r2-0".into(),
                    node_name: None
                },
            ]
        );
        assert_eq!(m.ignored, vec!["Service".to_string()]);
    }

    #[test]
    fn errors_name_the_document() {
        let e = parse("kind: Pod\n---\nkind: Pod\nmetadata: {}\n", "default").expect_err("no name");
        assert!(format!("{e:#}").contains("YAML document 1"), "{e:#}");
        let e = parse("a: [\n", "default").expect_err("bad yaml");
        assert!(format!("{e:#}").contains("YAML document 1"), "{e:#}");
        let e = parse(
            "apiVersion: networkop.co.uk/v1\nkind: Topology\nmetadata: {name: x}\n",
            "d",
        )
        .expect_err("wrong version");
        assert!(format!("{e:#}").contains("v1beta1"), "{e:#}");
    }
}
