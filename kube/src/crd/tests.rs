use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::{Value, json};

use super::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn link(uid: i64, peer: &str, intf: &str) -> model::Link {
    model::Link {
        uid,
        peer_pod: peer.into(),
        local_intf: intf.into(),
        peer_intf: "eth1".into(),
        ..Default::default()
    }
}

/// Every field set, extensions included.
fn full() -> model::Topology {
    let mut t = model::Topology::new(
        "lab",
        "r1",
        vec![
            model::Link {
                local_ip: "12.12.12.1/24".into(),
                peer_ip: "12.12.12.2/24".into(),
                mtu: Some(9000),
                local_mac: "02:00:00:00:00:01".into(),
                peer_mac: "02:00:00:00:00:02".into(),
                impairment: Some(meshnet_topology::impairment::Impairment {
                    delay: "10ms".into(),
                    jitter: "1ms".into(),
                    loss: Some(meshnet_topology::impairment::Percent(0.5)),
                    rate: "100mbit".into(),
                    side: "local".into(),
                    ..Default::default()
                }),
                ..link(1, "r2", "eth1")
            },
            link(2, "localhost", "eth2"),
        ],
    );
    t.metadata.resource_version = "42".into();
    t.metadata.labels.insert("topo".into(), "3node".into());
    t.status = model::TopologyStatus {
        src_ip: "198.51.100.1".into(),
        net_ns: "/var/run/netns/cni-1".into(),
        container_id: "c0ffee".into(),
        skipped: vec![model::SkippedPod {
            pod_name: "r3".into(),
            link_id: 7,
        }],
        node: "node-a".into(),
        links: vec![
            model::LinkStatus {
                uid: 1,
                local_intf: "eth1".into(),
                peer_pod: "r2".into(),
                kind: "veth".into(),
                state: model::LinkState::Up,
                message: String::new(),
                impairment: "delay 10ms (netem)".into(),
            },
            model::LinkStatus {
                uid: 2,
                state: model::LinkState::Error,
                message: "no such host interface".into(),
                ..Default::default()
            },
        ],
    };
    t
}

#[test]
fn model_round_trips_through_the_crd_type() {
    let plain = model::Topology::new("default", "r1", vec![link(1, "r2", "eth1")]);
    for t in [full(), plain] {
        let k: Topology = t.clone().into();
        assert_eq!(model::Topology::from(k), t);
    }
}

#[test]
fn crd_type_round_trips_through_the_model() {
    let k: Topology = full().into();
    assert_eq!(Topology::from(model::Topology::from(k.clone())), k);
}

#[test]
fn json_shapes_are_identical() {
    let t = full();
    let model_json = serde_json::to_value(&t).expect("model json");
    let crd_json = serde_json::to_value(Topology::from(t)).expect("crd json");
    assert_eq!(crd_json, model_json);
    // snake_case exactly as DESIGN.md §2 spells it
    let l = &crd_json["spec"]["links"][0];
    for f in [
        "uid",
        "peer_pod",
        "local_intf",
        "peer_intf",
        "local_ip",
        "peer_ip",
        "mtu",
        "local_mac",
        "peer_mac",
        "impairment",
    ] {
        assert!(l.get(f).is_some(), "link field {f} missing in {l}");
    }
    assert_eq!(l["impairment"]["loss"], 0.5, "{l}");
    assert_eq!(l["impairment"]["delay"], "10ms", "{l}");
    let s = &crd_json["status"];
    for f in [
        "src_ip",
        "net_ns",
        "container_id",
        "skipped",
        "node",
        "links",
    ] {
        assert!(s.get(f).is_some(), "status field {f} missing in {s}");
    }
    assert_eq!(s["skipped"][0], json!({"pod_name": "r3", "link_id": 7}));
    assert_eq!(s["links"][1]["state"], "error");
}

#[test]
fn go_client_shapes_decode_as_absent() {
    let go = json!({
        "apiVersion": "networkop.co.uk/v1beta1",
        "kind": "Topology",
        "metadata": {"name": "r1", "namespace": "default"},
        "spec": {"links": [{
            "uid": 1, "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth1",
            "local_ip": "", "peer_ip": "", "local_mac": null, "mtu": null
        }]},
        "status": {"skipped": null, "src_ip": "", "net_ns": "", "container_id": "", "links": null}
    });
    let k: Topology = serde_json::from_value(go.clone()).expect("crd type decodes");
    let m: model::Topology = serde_json::from_value(go).expect("model decodes");
    assert_eq!(model::Topology::from(k), m);
    assert_eq!(m.spec.links[0].local_ip, "");
    assert_eq!(m.spec.links[0].mtu, None);
    assert_eq!(m.status, model::TopologyStatus::default());
}

/// Every Topology document of the seed's manifests decodes the same through both types.
#[test]
fn seed_manifests_decode_identically() {
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace().join("tests")).expect("tests/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).expect("yaml");
            if v["kind"] != "Topology" {
                continue;
            }
            let k: Topology = serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let m: model::Topology = serde_json::from_value(v).expect("model");
            assert_eq!(model::Topology::from(k), m, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} Topology documents found");
}

fn root_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema")
}

fn prop<'a>(s: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    path.iter().fold(s, |s, p| {
        if *p == "[]" {
            match s.items.as_ref() {
                Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i)) => i,
                other => panic!("no items schema: {other:?}"),
            }
        } else {
            s.properties
                .as_ref()
                .and_then(|m| m.get(*p))
                .unwrap_or_else(|| panic!("no property {p}"))
        }
    })
}

#[test]
fn crd_matches_the_compatibility_contract() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("topologies.networkop.co.uk")
    );
    assert_eq!(crd.spec.group, "networkop.co.uk");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "Topology");
    assert_eq!(crd.spec.names.plural, "topologies");
    assert_eq!(crd.spec.names.singular.as_deref(), Some("topology"));
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["topo".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1beta1");
    assert!(v.served && v.storage);
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    let columns: Vec<(&str, &str)> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Node", ".status.node"),
            ("Src IP", ".status.src_ip"),
            ("Container", ".status.container_id"),
            ("Age", ".metadata.creationTimestamp")
        ]
    );

    let root = root_schema(&crd);
    assert_eq!(root.required, None, "spec is optional, as in the Go CRD");
    let item = prop(root, &["spec", "links", "[]"]);
    let mut required = item.required.clone().expect("required link fields");
    required.sort();
    assert_eq!(required, ["local_intf", "peer_intf", "peer_pod", "uid"]);
    assert_eq!(prop(item, &["uid"]).type_.as_deref(), Some("integer"));
    let skipped = prop(root, &["status", "skipped", "[]"]);
    assert_eq!(skipped.required, None);
    assert_eq!(
        prop(skipped, &["link_id"]).type_.as_deref(),
        Some("integer")
    );
}

/// Walks every subschema.
fn walk<'a>(s: &'a JSONSchemaProps, path: String, out: &mut Vec<(String, &'a JSONSchemaProps)>) {
    out.push((path.clone(), s));
    for (k, p) in s.properties.iter().flatten() {
        walk(p, format!("{path}.{k}"), out);
    }
    if let Some(
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i),
    ) = s.items.as_ref()
    {
        walk(i, format!("{path}[]"), out);
    }
}

#[test]
fn schema_injects_no_defaults_and_prunes_nulls_of_optional_fields() {
    let crd = crd();
    let mut all = Vec::new();
    walk(root_schema(&crd), String::new(), &mut all);
    for (path, s) in &all {
        assert!(
            s.default.is_none(),
            "{path} has a default: the server would store it"
        );
        assert!(
            s.x_kubernetes_preserve_unknown_fields.is_none(),
            "{path}: the schema must stay structural and pruning"
        );
        // Only the optional number and the status object itself keep an explicit null; for every
        // other field the server prunes a null (what Go clients send for absent lists).
        if s.nullable == Some(true) {
            assert!(
                path == ".status" || path == ".spec.links[].mtu",
                "{path} is nullable"
            );
        }
        if let Some(f) = &s.format {
            assert!(
                ["int32", "int64"].contains(&f.as_str()),
                "{path}: format {f}"
            );
        }
    }
    assert!(all.len() > 20);
}

#[test]
fn committed_crd_yaml_is_up_to_date() {
    let path = workspace().join("manifests/base/topology-crd.yaml");
    let committed = std::fs::read_to_string(&path).expect("manifests/base/topology-crd.yaml");
    let generated = crd_yaml().expect("render");
    assert!(
        committed == generated,
        "{} is stale: run `cargo run -p meshnet-kube --bin crdgen > manifests/base/topology-crd.yaml`",
        path.display()
    );
    // And it parses back into the same CRD.
    let parsed: CustomResourceDefinition = serde_yaml::from_str(&committed).expect("parse");
    assert_eq!(parsed, crd());
}
