//! The `Topology` CustomResourceDefinition (`topologies.networkop.co.uk`, `v1beta1`), generated
//! from the Rust types below by `#[derive(CustomResource)]`.
//!
//! The types mirror [`meshnet_topology::topology`] field for field, with the same snake_case JSON
//! names (DESIGN.md §2); `From` converts both ways without loss. They exist only because the CRD
//! schema is derived from them: the store itself reads objects straight into the model type, which
//! tolerates every shape the Go implementation's clients write.
//!
//! Schema choices, matching the Go meshnet-cni CRD (`manifests/base/topology.yml` upstream):
//! * required per link: `uid`, `peer_pod`, `local_intf`, `peer_intf`; everything else optional;
//! * optional strings and lists are plain `string`/`array` (not `nullable`): the API server *prunes*
//!   a `null` sent for a non-nullable field, so Go clients' `skipped: null` or `local_ip: null`
//!   are accepted and stored as "absent", which is exactly what they mean. `""` is a valid string;
//! * `spec` itself is optional, as in the Go CRD (kube-derive would require it);
//! * no defaults are injected into stored objects, and lists stay `atomic` (the Go CRD's default),
//!   so a `kubectl apply` of a manifest replaces the whole `links` list;
//! * the extensions (`mtu`, `local_mac`, `peer_mac`, `impairment`, `status.node`, `status.links`) are optional
//!   additions; an old object validates unchanged.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, CustomResourceExt};
use meshnet_topology::impairment as model_impairment;
use meshnet_topology::topology as model;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Field manager name meshnet uses for server-side apply.
pub const FIELD_MANAGER: &str = "meshnet";

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Links of one pod, one entry per link end.
// clippy takes the repeated `type_ = "string"` of the printer columns for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networkop.co.uk",
    version = "v1beta1",
    kind = "Topology",
    plural = "topologies",
    singular = "topology",
    shortname = "topo",
    namespaced,
    status = "TopologyStatus",
    derive = "PartialEq",
    doc = "Links of the pod with the same name and namespace (meshnet)",
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        description = "Node the pod runs on"
    ),
    printcolumn(
        name = "Src IP",
        type_ = "string",
        json_path = ".status.src_ip",
        description = "Address of the node the pod runs on"
    ),
    printcolumn(
        name = "Container",
        type_ = "string",
        json_path = ".status.container_id",
        description = "Sandbox (pause container) ID; empty while the pod has no sandbox",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct TopologySpec {
    /// Point-to-point links of this pod, as declared by this end.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub links: Vec<Link>,
}

/// A complete definition of a p2p link, as one of its ends declares it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Link {
    /// Unique identifier of the link within the namespace; the same on both ends.
    pub uid: i64,
    /// Name of the peer pod, or `localhost` for a macvlan link to the node interface `peer_intf`.
    pub peer_pod: String,
    /// Interface name inside this pod.
    pub local_intf: String,
    /// Interface name inside the peer pod (or on the node, for `peer_pod: localhost`).
    pub peer_intf: String,
    /// (Optional) Address of the local interface, a CIDR such as 12.12.12.1/24.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_ip: String,
    /// (Optional) Address of the peer interface, a CIDR such as 12.12.12.2/24.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_ip: String,
    /// (Optional, meshnet-rs) MTU of both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mtu_schema")]
    pub mtu: Option<u32>,
    /// (Optional, meshnet-rs) MAC address of the local interface.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_mac: String,
    /// (Optional, meshnet-rs) MAC address of the peer interface.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_mac: String,
    /// (Optional, meshnet-rs) Impairments applied to the link: delay, jitter, loss, rate,
    /// duplicate, corrupt, reorder; both directions unless `side` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "impairment_schema")]
    pub impairment: Option<Impairment>,
    /// (Optional, meshnet-rs) `down` pulls the cable: both ends lose carrier, nothing is deleted.
    /// `up` or empty: up as usual.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub state: String,
}

/// A plain object (not nullable: the server prunes a `null`, which means "none"), numbers without
/// a `format` (Kubernetes knows none for floats), every field optional.
fn impairment_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let text = |d: &str| schemars::json_schema!({"type": "string", "description": d});
    let pct = |d: &str| schemars::json_schema!({"type": "number", "description": d});
    schemars::json_schema!({
        "type": "object",
        "description": "(Optional, meshnet-rs) Impairments applied to the link; both directions unless `side` names one.",
        "properties": {
            "delay": text("One-way delay added to every frame: 10ms, 1.5ms, 200us, 1s."),
            "jitter": text("Random variation of the delay (± this), same units."),
            "loss": pct("Percentage of frames dropped (0-100)."),
            "rate": text("Rate limit: 100mbit, 1gbit, 500kbit, 64000bit."),
            "duplicate": pct("Percentage of frames sent twice (0-100)."),
            "corrupt": pct("Percentage of frames with a bit flipped (0-100)."),
            "reorder": pct("Percentage of frames sent ahead of delayed ones (0-100; needs a delay)."),
            "side": text("local (what this pod sends), peer (what the peer sends), or both (the default)."),
        },
    })
}

/// (meshnet-rs) A link's declared impairments. Values are checked per link by meshnet (a bad one
/// is reported in the link's status), so the schema ([`impairment_schema`]) only fixes the shapes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Impairment {
    /// One-way delay added to every frame: `10ms`, `1.5ms`, `200us`, `1s`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub delay: String,
    /// Random variation of the delay (± this), same units.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub jitter: String,
    /// Percentage of frames dropped (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Rate limit: `100mbit`, `1gbit`, `500kbit`, `64000bit`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub rate: String,
    /// Percentage of frames sent twice (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<f64>,
    /// Percentage of frames with a bit flipped (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<f64>,
    /// Percentage of frames sent ahead of delayed ones (0–100; needs a delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<f64>,
    /// `local` (what this pod sends), `peer` (what the peer sends), or `both` (the default).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub side: String,
}

impl From<model_impairment::Impairment> for Impairment {
    fn from(i: model_impairment::Impairment) -> Self {
        Impairment {
            delay: i.delay,
            jitter: i.jitter,
            loss: i.loss.map(|p| p.0),
            rate: i.rate,
            duplicate: i.duplicate.map(|p| p.0),
            corrupt: i.corrupt.map(|p| p.0),
            reorder: i.reorder.map(|p| p.0),
            side: i.side,
        }
    }
}

impl From<Impairment> for model_impairment::Impairment {
    fn from(i: Impairment) -> Self {
        let p = |v: Option<f64>| v.map(model_impairment::Percent);
        model_impairment::Impairment {
            delay: i.delay,
            jitter: i.jitter,
            loss: p(i.loss),
            rate: i.rate,
            duplicate: p(i.duplicate),
            corrupt: p(i.corrupt),
            reorder: p(i.reorder),
            side: i.side,
        }
    }
}

/// An integer that fits `u32`, so that every stored object decodes; the usable range (68..=65535)
/// is checked per link by meshnet, which reports a bad value in that link's status instead of
/// refusing the whole object. (schemars' own `format: uint32` is unknown to Kubernetes.)
fn mtu_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["integer", "null"],
        "format": "int64",
        "minimum": 0,
        "maximum": u32::MAX,
    })
}

/// Written by the meshnet daemon of the node the pod runs on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct TopologyStatus {
    /// Address of the node the pod runs on (not the pod's).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub src_ip: String,
    /// Network namespace of the pod.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub net_ns: String,
    /// Sandbox ID of the pod.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// List of pods/interfaces that are skipped by the local pod (kept for compatibility).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub skipped: Vec<SkippedPod>,
    /// (meshnet-rs) Name of the node the pod runs on.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub node: String,
    /// (meshnet-rs) State of each declared link, as the pod's node sees it.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub links: Vec<LinkStatus>,
}

/// A link the local pod skipped.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = no_defaults)]
pub struct SkippedPod {
    /// Peer pod name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pod_name: String,
    /// Link uid.
    #[serde(default)]
    pub link_id: i64,
}

/// Drops the `default`s schemars derives from `#[serde(default)]` fields that are always
/// serialized: in a CRD they would be written into every stored object.
fn no_defaults(schema: &mut schemars::Schema) {
    if let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for p in props.values_mut() {
            if let Some(p) = p.as_object_mut() {
                p.remove("default");
            }
        }
    }
}

/// (meshnet-rs) State of one link end.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = no_defaults)]
pub struct LinkStatus {
    /// Link uid.
    pub uid: i64,
    /// Interface name inside the pod.
    #[serde(default, deserialize_with = "null_as_default")]
    pub local_intf: String,
    /// Peer pod name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub peer_pod: String,
    /// veth, vxlan, grpc or macvlan; empty while unknown.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    /// pending (waiting for the peer), up, or error (see message).
    pub state: LinkState,
    /// Why the link is not up.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub message: String,
    /// (meshnet-rs) The impairment in place on this end's egress and how, or why a declared one
    /// is not (`not applied: …`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub impairment: String,
}

/// State of a link end.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Waiting for the peer pod.
    #[default]
    Pending,
    /// Built and up.
    Up,
    /// Invalid declaration or a failure.
    Error,
    /// Built, and down because a Topology declares `state: down`.
    Down,
}

/// The CRD to install: kube-derive's, with `spec` made optional as in the Go CRD.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Topology::crd();
    for v in &mut crd.spec.versions {
        if let Some(root) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Some(required) = root.required.as_mut()
        {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                root.required = None;
            }
        }
    }
    crd
}

/// The CRD as the YAML document `crdgen` prints (and `manifests/base/topology-crd.yaml` holds).
///
/// # Errors
/// Only if the CRD cannot be serialized, which would be a bug in the types above.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!(
        "# Generated by `cargo run -p meshnet-kube --bin crdgen` from kube/src/crd.rs: do not edit.\n{body}"
    ))
}

impl From<model::Link> for Link {
    fn from(l: model::Link) -> Self {
        Link {
            uid: l.uid,
            peer_pod: l.peer_pod,
            local_intf: l.local_intf,
            peer_intf: l.peer_intf,
            local_ip: l.local_ip,
            peer_ip: l.peer_ip,
            mtu: l.mtu,
            local_mac: l.local_mac,
            peer_mac: l.peer_mac,
            impairment: l.impairment.map(Into::into),
            state: l.state,
        }
    }
}

impl From<Link> for model::Link {
    fn from(l: Link) -> Self {
        model::Link {
            uid: l.uid,
            peer_pod: l.peer_pod,
            local_intf: l.local_intf,
            peer_intf: l.peer_intf,
            local_ip: l.local_ip,
            peer_ip: l.peer_ip,
            mtu: l.mtu,
            local_mac: l.local_mac,
            peer_mac: l.peer_mac,
            impairment: l.impairment.map(Into::into),
            state: l.state,
        }
    }
}

impl From<model::LinkState> for LinkState {
    fn from(s: model::LinkState) -> Self {
        match s {
            model::LinkState::Pending => LinkState::Pending,
            model::LinkState::Up => LinkState::Up,
            model::LinkState::Error => LinkState::Error,
            model::LinkState::Down => LinkState::Down,
        }
    }
}

impl From<LinkState> for model::LinkState {
    fn from(s: LinkState) -> Self {
        match s {
            LinkState::Pending => model::LinkState::Pending,
            LinkState::Up => model::LinkState::Up,
            LinkState::Error => model::LinkState::Error,
            LinkState::Down => model::LinkState::Down,
        }
    }
}

impl From<model::TopologyStatus> for TopologyStatus {
    fn from(s: model::TopologyStatus) -> Self {
        TopologyStatus {
            src_ip: s.src_ip,
            net_ns: s.net_ns,
            container_id: s.container_id,
            skipped: s
                .skipped
                .into_iter()
                .map(|p| SkippedPod {
                    pod_name: p.pod_name,
                    link_id: p.link_id,
                })
                .collect(),
            node: s.node,
            links: s
                .links
                .into_iter()
                .map(|l| LinkStatus {
                    uid: l.uid,
                    local_intf: l.local_intf,
                    peer_pod: l.peer_pod,
                    kind: l.kind,
                    state: l.state.into(),
                    message: l.message,
                    impairment: l.impairment,
                })
                .collect(),
        }
    }
}

impl From<TopologyStatus> for model::TopologyStatus {
    fn from(s: TopologyStatus) -> Self {
        model::TopologyStatus {
            src_ip: s.src_ip,
            net_ns: s.net_ns,
            container_id: s.container_id,
            skipped: s
                .skipped
                .into_iter()
                .map(|p| model::SkippedPod {
                    pod_name: p.pod_name,
                    link_id: p.link_id,
                })
                .collect(),
            node: s.node,
            links: s
                .links
                .into_iter()
                .map(|l| model::LinkStatus {
                    uid: l.uid,
                    local_intf: l.local_intf,
                    peer_pod: l.peer_pod,
                    kind: l.kind,
                    state: l.state.into(),
                    message: l.message,
                    impairment: l.impairment,
                })
                .collect(),
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The model keeps only the metadata meshnet uses (name, namespace, resourceVersion, labels).
impl From<model::Topology> for Topology {
    fn from(t: model::Topology) -> Self {
        let status = (t.status != model::TopologyStatus::default()).then(|| t.status.into());
        Topology {
            metadata: ObjectMeta {
                name: non_empty(t.metadata.name),
                namespace: non_empty(t.metadata.namespace),
                resource_version: non_empty(t.metadata.resource_version),
                labels: (!t.metadata.labels.is_empty()).then_some(t.metadata.labels),
                ..ObjectMeta::default()
            },
            spec: TopologySpec {
                links: t.spec.links.into_iter().map(Link::from).collect(),
            },
            status,
        }
    }
}

impl From<Topology> for model::Topology {
    fn from(t: Topology) -> Self {
        let m = t.metadata;
        model::Topology {
            api_version: model::API_VERSION.to_string(),
            kind: model::KIND.to_string(),
            metadata: model::ObjectMeta {
                name: m.name.unwrap_or_default(),
                namespace: m.namespace.unwrap_or_default(),
                resource_version: m.resource_version.unwrap_or_default(),
                labels: m.labels.unwrap_or_default(),
            },
            spec: model::TopologySpec {
                links: t.spec.links.into_iter().map(model::Link::from).collect(),
            },
            status: t.status.map(Into::into).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests;
