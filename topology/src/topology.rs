//! The `Topology` resource (`networkop.co.uk/v1beta1`) and the pure checks on its content.
//!
//! Field names are snake_case exactly as the Go meshnet-cni wrote them (DESIGN.md §2). Objects
//! written by Go clients carry `""` for absent optional strings and `null` for absent lists; both
//! mean "absent" here. Extensions (`mtu`, `local_mac`, `peer_mac`, `status.links`, `status.node`)
//! are optional: an old `Topology` means exactly what it meant before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// API group/version and kind, as users' manifests spell them.
pub const API_VERSION: &str = "networkop.co.uk/v1beta1";
pub const KIND: &str = "Topology";

/// `peer_pod` value that means "a macvlan link to the node interface named in `peer_intf`".
pub const LOCALHOST: &str = "localhost";

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Object metadata: the subset meshnet reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub namespace: String,
    /// Opaque version used for optimistic concurrency (the store's, not the user's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// A `Topology` object: one per pod, same name and namespace as the pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: TopologySpec,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: TopologyStatus,
}

fn api_version() -> String {
    API_VERSION.to_string()
}
fn kind() -> String {
    KIND.to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologySpec {
    #[serde(default, deserialize_with = "null_as_default")]
    pub links: Vec<Link>,
}

/// One link as declared by one of its ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Unique per link within the namespace; the same on both ends.
    pub uid: i64,
    pub peer_pod: String,
    pub local_intf: String,
    pub peer_intf: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_ip: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_ip: String,
    /// Extension: MTU of both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Extension: MAC address of the local end.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_mac: String,
    /// Extension: MAC address of the peer end.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_mac: String,
    /// Extension: delay, loss, rate … applied to the link (see [`crate::impairment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impairment: Option<crate::impairment::Impairment>,
    /// Extension: `down` pulls the cable — both ends lose carrier, nothing is deleted; `up` or
    /// empty: the link is up as usual. Either end may declare it.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub state: String,
}

/// Written by the daemon of the node the pod runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyStatus {
    /// The NODE's address (not the pod's).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub src_ip: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub net_ns: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// Kept for compatibility; meshnet's correctness does not depend on it.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub skipped: Vec<SkippedPod>,
    /// Extension: name of the node the pod runs on.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub node: String,
    /// Extension: state of each declared link, as this pod's node sees it.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub links: Vec<LinkStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedPod {
    #[serde(default, deserialize_with = "null_as_default")]
    pub pod_name: String,
    #[serde(default)]
    pub link_id: i64,
}

/// Extension: per-link state in the pod's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub uid: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub local_intf: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub peer_pod: String,
    /// `veth`, `vxlan`, `grpc` or `macvlan`; empty while unknown.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    pub state: LinkState,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub message: String,
    /// Extension: the impairment in place on this end's egress, and how (`delay 10ms (netem)`),
    /// or why a declared one is not (`not applied: …`); empty when none is declared.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub impairment: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Waiting for the peer pod.
    #[default]
    Pending,
    /// Built and up.
    Up,
    /// Invalid declaration or a failure; see the message.
    Error,
    /// Built, and down because a Topology declares `state: down` (both ends without carrier).
    Down,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Pending => "pending",
            LinkState::Up => "up",
            LinkState::Error => "error",
            LinkState::Down => "down",
        })
    }
}

impl Topology {
    /// A new object with the given identity and links, no status.
    pub fn new(namespace: &str, name: &str, links: Vec<Link>) -> Self {
        Topology {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: name.to_string(),
                namespace: namespace.to_string(),
                ..Default::default()
            },
            spec: TopologySpec { links },
            status: TopologyStatus::default(),
        }
    }

    pub fn key(&self) -> PodKey {
        PodKey::new(&self.metadata.namespace, &self.metadata.name)
    }
}

impl TopologyStatus {
    /// A pod is alive once a CNI ADD recorded its sandbox, until DEL clears it.
    pub fn is_alive(&self) -> bool {
        !self.net_ns.is_empty() && !self.container_id.is_empty() && !self.src_ip.is_empty()
    }
}

/// Identity of a pod (and of its Topology): namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        PodKey {
            namespace: if namespace.is_empty() {
                "default".to_string()
            } else {
                namespace.to_string()
            },
            name: name.to_string(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("invalid MAC address {s:?}: want six hex octets"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("invalid MAC address {s:?}: octet {p:?}"));
            }
            b[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("invalid MAC address {s:?}: octet {p:?} is not hex"))?;
        }
        if b[0] & 1 == 1 {
            return Err(format!("invalid MAC address {s:?}: multicast bit set"));
        }
        if b == [0; 6] {
            return Err(format!("invalid MAC address {s:?}: all zero"));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Checks an interface name as the kernel would (`dev_valid_name`), with a message naming it.
///
/// `%` is refused too: the kernel accepts it, but a name with `%` given to a creating request is
/// a *template* (`p%d` becomes `p0`), so the interface would exist under a name nobody declared,
/// meshnet could not find it again and would leak it.
///
/// # Errors
/// Empty, longer than 15 bytes, `.`/`..`, or containing `/`, `:`, `%` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "interface name {name:?} is {} bytes, longer than {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

/// Parses an optional CIDR (`""` = absent). A bare address is refused: the prefix length decides
/// the connected route, so guessing it would be wrong half of the time.
///
/// # Errors
/// The string is not `ADDR/LEN`.
pub fn parse_cidr(field: &str, s: &str) -> Result<Option<IpNet>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpNet>()
        .map(Some)
        .map_err(|_| format!("{field} {s:?} is not a valid CIDR (want e.g. 12.12.12.1/24)"))
}

fn parse_mac(field: &str, s: &str) -> Result<Option<MacAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<MacAddr>()
        .map(Some)
        .map_err(|e| format!("{field}: {e}"))
}

/// Smallest and largest MTU meshnet accepts on a link.
pub const MTU_MIN: u32 = 68;
pub const MTU_MAX: u32 = 65_535;

/// One link end as this pod declares it, with its fields parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDecl {
    pub uid: i64,
    pub peer_pod: String,
    pub local_intf: String,
    pub peer_intf: String,
    pub local_ip: Option<IpNet>,
    pub peer_ip: Option<IpNet>,
    pub mtu: Option<u32>,
    pub local_mac: Option<MacAddr>,
    pub peer_mac: Option<MacAddr>,
}

impl LinkDecl {
    pub fn is_macvlan(&self) -> bool {
        self.peer_pod == LOCALHOST
    }
}

/// Parses and checks every link of one pod's Topology on its own (no peer needed).
///
/// Each link gets `Ok` or `Err(reason)`; a bad link never hides the good ones. `primary_if` is the
/// interface made by the plugins before meshnet (CNI_IFNAME), which no link may claim.
pub fn check_links(topo: &Topology, primary_if: &str) -> Vec<(i64, Result<LinkDecl, String>)> {
    let links = &topo.spec.links;
    let mut uid_count: HashMap<i64, usize> = HashMap::new();
    let mut intf_count: HashMap<&str, usize> = HashMap::new();
    for l in links {
        *uid_count.entry(l.uid).or_default() += 1;
        *intf_count.entry(l.local_intf.as_str()).or_default() += 1;
    }
    links
        .iter()
        .map(|l| {
            let r = (|| {
                if uid_count[&l.uid] > 1 {
                    return Err(format!(
                        "duplicate uid {}: {} links of this pod declare it",
                        l.uid, uid_count[&l.uid]
                    ));
                }
                if l.peer_pod.is_empty() {
                    return Err("peer_pod is empty".into());
                }
                if l.peer_pod == topo.metadata.name {
                    return Err(format!(
                        "link to itself (peer_pod {:?} is this pod)",
                        l.peer_pod
                    ));
                }
                check_ifname(&l.local_intf).map_err(|e| format!("local_intf: {e}"))?;
                check_ifname(&l.peer_intf).map_err(|e| format!("peer_intf: {e}"))?;
                if intf_count[l.local_intf.as_str()] > 1 {
                    return Err(format!(
                        "local_intf {:?} is declared by {} links of this pod",
                        l.local_intf,
                        intf_count[l.local_intf.as_str()]
                    ));
                }
                if l.local_intf == primary_if {
                    return Err(format!(
                        "local_intf {:?} is the pod's primary interface (CNI_IFNAME)",
                        l.local_intf
                    ));
                }
                if let Some(m) = l.mtu
                    && !(MTU_MIN..=MTU_MAX).contains(&m)
                {
                    return Err(format!("mtu {m} out of range {MTU_MIN}..={MTU_MAX}"));
                }
                Ok(LinkDecl {
                    uid: l.uid,
                    peer_pod: l.peer_pod.clone(),
                    local_intf: l.local_intf.clone(),
                    peer_intf: l.peer_intf.clone(),
                    local_ip: parse_cidr("local_ip", &l.local_ip)?,
                    peer_ip: parse_cidr("peer_ip", &l.peer_ip)?,
                    mtu: l.mtu,
                    local_mac: parse_mac("local_mac", &l.local_mac)?,
                    peer_mac: parse_mac("peer_mac", &l.peer_mac)?,
                })
            })();
            (l.uid, r)
        })
        .collect()
}

/// The two ends' declarations of one link must agree. Returns the merged view (addresses, MACs
/// and MTU of each end) as seen from `local`.
///
/// # Errors
/// The peer declares the link with other interface names, or the two ends disagree on an
/// address, MAC or MTU that both set.
pub fn merge_ends(local: &LinkDecl, local_pod: &str, peer: &LinkDecl) -> Result<LinkDecl, String> {
    if peer.peer_pod != local_pod {
        return Err(format!(
            "peer {} declares uid {} toward {:?}, not this pod",
            local.peer_pod, local.uid, peer.peer_pod
        ));
    }
    if peer.local_intf != local.peer_intf || peer.peer_intf != local.local_intf {
        return Err(format!(
            "mismatched ends for uid {}: this pod declares {}<->{}, peer {} declares {}<->{}",
            local.uid,
            local.local_intf,
            local.peer_intf,
            local.peer_pod,
            peer.peer_intf,
            peer.local_intf
        ));
    }
    fn pick<T: PartialEq + Copy + fmt::Display>(
        what: &str,
        ours: Option<T>,
        theirs: Option<T>,
    ) -> Result<Option<T>, String> {
        match (ours, theirs) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "ends disagree on {what}: this pod says {a}, peer says {b}"
            )),
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }
    Ok(LinkDecl {
        uid: local.uid,
        peer_pod: local.peer_pod.clone(),
        local_intf: local.local_intf.clone(),
        peer_intf: local.peer_intf.clone(),
        local_ip: pick("the local address", local.local_ip, peer.peer_ip)?,
        peer_ip: pick("the peer address", local.peer_ip, peer.local_ip)?,
        mtu: pick("mtu", local.mtu, peer.mtu)?,
        local_mac: pick("the local MAC", local.local_mac, peer.peer_mac)?,
        peer_mac: pick("the peer MAC", local.peer_mac, peer.local_mac)?,
    })
}

/// The pods of each namespace that declare each uid: `(namespace, uid)` -> pod names.
///
/// A uid names one link between two pods (or one macvlan link of one pod), so more than two
/// declarers — two pairs that happened to pick the same uid, or a third pod — is a clash that
/// [`uid_clash`] reports on every end; building one of the links and calling the others `up`
/// would be a lie.
pub fn uid_declarers(topos: &[Topology]) -> HashMap<(String, i64), BTreeSet<String>> {
    let mut out: HashMap<(String, i64), BTreeSet<String>> = HashMap::new();
    for t in topos {
        let k = t.key();
        for l in &t.spec.links {
            out.entry((k.namespace.clone(), l.uid))
                .or_default()
                .insert(k.name.clone());
        }
    }
    out
}

/// Why pod `key`'s declaration of `uid` clashes with other pods' declarations of it, naming
/// them; `None` when it does not. `macvlan`: this pod's declaration is `peer_pod: localhost`
/// (a link of its own, so any other declarer is a clash).
pub fn uid_clash(
    declarers: &HashMap<(String, i64), BTreeSet<String>>,
    key: &PodKey,
    uid: i64,
    macvlan: bool,
) -> Option<String> {
    let pods = declarers.get(&(key.namespace.clone(), uid))?;
    let others: Vec<&str> = pods
        .iter()
        .map(String::as_str)
        .filter(|p| *p != key.name)
        .collect();
    if pods.len() > 2 || (macvlan && !others.is_empty()) {
        return Some(format!(
            "uid {uid} is also declared by pod{} {} in namespace {}: a uid names one link between two pods",
            if others.len() == 1 { "" } else { "s" },
            others.join(", "),
            key.namespace
        ));
    }
    None
}

/// Returns true when `ip` is the address of the node (status `src_ip`) written by `node_ip`.
pub fn same_node(src_ip: &str, node_ip: &IpAddr) -> bool {
    src_ip.parse::<IpAddr>().is_ok_and(|a| a == *node_ip)
}

#[cfg(test)]
mod tests;
