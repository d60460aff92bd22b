//! What a lab is made of, as `lab.json` records it, and the options it is brought up with.

use super::*;

/// The address family of the lab's underlay (the nodes' `HOST_IP`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Underlay {
    #[default]
    Ipv4,
    Ipv6,
}

impl std::str::FromStr for Underlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipv4" => Ok(Underlay::Ipv4),
            "ipv6" => Ok(Underlay::Ipv6),
            _ => Err(format!("underlay {s:?}: want ipv4 or ipv6")),
        }
    }
}

impl Underlay {
    /// Node `i`'s underlay address and its prefix length.
    pub(super) fn node_address(self, i: usize) -> (String, u8) {
        match self {
            Underlay::Ipv4 => (format!("{UNDERLAY_PREFIX}.{i}"), 24),
            Underlay::Ipv6 => (format!("{UNDERLAY6_PREFIX}{i:x}"), 64),
        }
    }
}
/// A lab node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub pod_cidr: String,
    pub socket: PathBuf,
    pub pid: Option<i32>,
    /// The loopback proxy to the API server (kube store only).
    #[serde(default)]
    pub proxy_pid: Option<i32>,
}

/// A running pod (one sandbox).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub generation: u32,
    /// The chain's ADD result, given back as prevResult on DEL (as libcni caches it).
    pub result: Option<Value>,
}

impl PodState {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

/// Everything the lab made, persisted in `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub link: String,
    pub cni_version: String,
    pub underlay_netns: String,
    #[serde(default)]
    pub external_netns: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    #[serde(default = "file_store")]
    pub store: LabStore,
    #[serde(default)]
    pub wire_tls: bool,
    /// The pod (eth0) network, split among the nodes.
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: ipnet::Ipv4Net,
    /// The underlay's address family.
    #[serde(default)]
    pub underlay: Underlay,
}

pub(super) fn default_pod_cidr() -> ipnet::Ipv4Net {
    DEFAULT_POD_CIDR
        .parse()
        .expect("DEFAULT_POD_CIDR is a valid CIDR")
}

pub(super) fn file_store() -> LabStore {
    LabStore::File
}

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: usize,
    pub link: String,
    pub order: Order,
    pub parallel: bool,
    pub timeout: Duration,
    pub cni_version: String,
    /// MTU of the underlay (node `ul0` and the bridge).
    pub underlay_mtu: u32,
    /// `kube`: use the API server of this kubeconfig instead of the file store.
    pub kubeconfig: Option<PathBuf>,
    /// Mutual TLS between the daemons' wire servers (a lab CA, one certificate per node).
    pub wire_tls: bool,
    /// The pod (eth0) network, split among the nodes ([`DEFAULT_POD_CIDR`] by default).
    pub pod_cidr: ipnet::Ipv4Net,
    /// The underlay's address family (the nodes' `HOST_IP`).
    pub underlay: Underlay,
}

/// In which order pods are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    File,
    Reverse,
    Random(u64),
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(Order::File),
            "reverse" => Ok(Order::Reverse),
            "random" => Ok(Order::Random(rand::rng().random())),
            _ => match s.strip_prefix("random:").map(str::parse) {
                Some(Ok(seed)) => Ok(Order::Random(seed)),
                _ => Err(format!(
                    "order {s:?}: want file, reverse, random or random:SEED"
                )),
            },
        }
    }
}

/// Root of all labs' state (`$MESHNET_LAB_DIR`, default `/run/meshnet-lab`).
pub fn state_root() -> PathBuf {
    std::env::var_os("MESHNET_LAB_DIR")
        .map_or_else(|| PathBuf::from("/run/meshnet-lab"), PathBuf::from)
}

/// Checks a lab name: it becomes part of namespace names.
///
/// # Errors
/// Not 1-20 characters of `[a-z0-9-]`.
pub fn check_lab_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 20
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("lab name {name:?}: want 1-20 characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

/// Where the lab keeps its Topologies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabStore {
    /// One file per Topology in the lab's directory.
    File,
    /// A Kubernetes API server (the daemons reach it through a loopback proxy in their node).
    Kube {
        kubeconfig: PathBuf,
        server_port: u16,
    },
}

#[cfg(test)]
impl LabState {
    /// A lab state with these pods and nothing made (for tests of the pure parts).
    pub(crate) fn for_tests(pods: Vec<PodState>) -> Self {
        LabState {
            name: "t".into(),
            dir: PathBuf::from("/nonexistent"),
            link: "VXLAN".into(),
            cni_version: "1.0.0".into(),
            underlay_netns: String::new(),
            external_netns: String::new(),
            nodes: Vec::new(),
            pods,
            store: LabStore::File,
            wire_tls: false,
            pod_cidr: default_pod_cidr(),
            underlay: Underlay::Ipv4,
        }
    }
}
