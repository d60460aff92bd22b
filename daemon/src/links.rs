//! Link ends in the kernel: what exists, and making it match what is declared.
//!
//! The reconciler decides *what* to build; [`LinkOps`] is the narrow interface through which it
//! touches the kernel (youki's `Syscall` idea), and [`Kernel`] is the real netlink implementation,
//! tested in real namespaces.
//!
//! Ownership: every interface meshnet makes carries an alias (`IFLA_IFALIAS`, shown by
//! `ip link`) of the form `meshnet|NAMESPACE|UID|KIND|TAG|APPLIED`. The first five fields are the
//! link's identity: the tag names the sandboxes the end was built for, so a link whose peer
//! sandbox changed is recognised as stale. Meshnet deletes or replaces only interfaces that carry
//! such an alias — never one it did not make.
//!
//! The router owns its port. `APPLIED` ([`Applied`], e.g. `ip=10.0.1.1/24;mtu=1450`) records
//! the address, MTU (and a declared MAC) meshnet itself set. An end is configured in full (MTU, address, up) when it
//! is created; afterwards meshnet changes it only when the *declaration* moves away from that
//! record — it sets the new MTU or MAC, removes the address it had set and adds the new one — and
//! never reverts what the pod did: admin state, an MTU or MAC the router chose, addresses the pod
//! added or removed. Reading an interface ([`IfaceState`]) splits the alias into the identity (`alias`,
//! what every "is this the link's device" comparison uses) and the record (`applied`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::MacVlanMode;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkGetRequest, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVxlan};

use tokio::sync::Notify;

use crate::gwire::{WireKey, WireNode};
use crate::netns::{self, NetnsError};
use crate::ports::{Cable, Patchbay, PortSpec};
use crate::tapio::WireSpec;
use crate::topology::MacAddr;
use meshnet_topology::impairment::ImpairSpec;

/// Prefix of the alias of every interface meshnet made.
pub const ALIAS_PREFIX: &str = "meshnet|";

/// The alias that marks an interface as meshnet's: `meshnet|NS|UID|KIND|TAG`.
pub fn alias(namespace: &str, uid: i64, kind: &str, tag: &str) -> String {
    format!("{ALIAS_PREFIX}{namespace}|{uid}|{kind}|{tag}")
}

/// Parsed alias of a meshnet interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedAlias {
    pub namespace: String,
    pub uid: i64,
    pub kind: String,
    pub tag: String,
}

impl OwnedAlias {
    /// Parses a meshnet alias (the record of applied settings, if any, is ignored).
    pub fn parse(alias: &str) -> Option<Self> {
        let rest = alias.strip_prefix(ALIAS_PREFIX)?;
        let mut it = rest.splitn(5, '|');
        let namespace = it.next()?.to_string();
        let uid = it.next()?.parse().ok()?;
        let kind = it.next()?.to_string();
        let tag = it.next().unwrap_or_default().to_string();
        Some(OwnedAlias {
            namespace,
            uid,
            kind,
            tag,
        })
    }
}

/// The address, MTU and MAC meshnet set on an end, as recorded in its alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Applied {
    pub ip: Option<IpNet>,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

impl Applied {
    /// The alias field: `ip=ADDR/LEN;mtu=N` (either value may be empty), then `;mac=MAC` when
    /// one is declared (left out otherwise, to keep the alias short: the kernel takes 255 bytes).
    pub fn encode(&self) -> String {
        let mut s = format!(
            "ip={};mtu={}",
            self.ip.map(|i| i.to_string()).unwrap_or_default(),
            self.mtu.map(|m| m.to_string()).unwrap_or_default()
        );
        if let Some(m) = self.mac {
            s.push_str(&format!(";mac={m}"));
        }
        s
    }

    /// Parses [`Applied::encode`]'s output; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let mut out = Applied::default();
        for part in s.split(';') {
            match part.split_once('=')? {
                ("ip", "") | ("mtu", "") => {}
                ("ip", v) => out.ip = Some(v.parse().ok()?),
                ("mtu", v) => out.mtu = Some(v.parse().ok()?),
                ("mac", v) => out.mac = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// Splits an interface alias into meshnet's identity part and the record of what it applied
/// (`None` for foreign aliases and for ends configured before the record existed).
pub fn split_alias(raw: &str) -> (String, Option<Applied>) {
    if let Some(rest) = raw.strip_prefix(ALIAS_PREFIX)
        && let Some(i) = rest.match_indices('|').nth(3).map(|(i, _)| i)
    {
        let cut = ALIAS_PREFIX.len() + i;
        return (raw[..cut].to_string(), Applied::decode(&raw[cut + 1..]));
    }
    (raw.to_string(), None)
}

/// One end of a link: where it lives and how it is configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndSpec {
    pub netns: PathBuf,
    pub ifname: String,
    pub ip: Option<IpNet>,
    pub mac: Option<MacAddr>,
}

/// A link between two pods of this node: each pod's port ([`crate::ports`]), patched to each
/// other. `alias` names the link with both sandboxes (it changes when either pod is rebuilt);
/// each port carries its own alias, which names only its pod's sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VethSpec {
    pub alias: String,
    pub mtu: Option<u32>,
    pub a: EndSpec,
    pub b: EndSpec,
    /// Port alias and node end name of `a` and of `b`.
    pub ports: [(String, String); 2],
}

impl VethSpec {
    /// The port of end `a` (`0`) or `b` (`1`).
    pub fn port(&self, i: usize) -> PortSpec {
        let (alias, node) = self.ports[i].clone();
        PortSpec {
            alias,
            end: if i == 0 {
                self.a.clone()
            } else {
                self.b.clone()
            },
            mtu: self.mtu,
            node,
        }
    }
}

/// A link end that lives in one pod only and rides on a node interface: the pod's half of a
/// cross-node VXLAN link, or a macvlan link to the outside.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SingleSpec {
    pub alias: String,
    pub kind: SingleKind,
    pub mtu: Option<u32>,
    pub end: EndSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SingleKind {
    /// A vxlan device toward `remote`, its socket in the node's namespace on `underlay`.
    Vxlan {
        vni: u32,
        local: IpAddr,
        remote: IpAddr,
        underlay: u32,
        port: u16,
    },
    /// A macvlan (mode bridge) on the node interface with index `parent`.
    Macvlan { parent: u32 },
}

impl SingleKind {
    pub fn name(&self) -> &'static str {
        match self {
            SingleKind::Vxlan { .. } => "vxlan",
            SingleKind::Macvlan { .. } => "macvlan",
        }
    }
}

/// A node interface (in the daemon's namespace) that links ride on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
}

/// What the kernel has under one interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceState {
    pub index: u32,
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub link: Option<u32>,
    /// The alias, without the record of applied settings (see the module documentation).
    pub alias: Option<String>,
    /// What meshnet set on this end, from the alias; `None` if it recorded nothing.
    pub applied: Option<Applied>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// `IFF_LOWER_UP`: the interface has carrier.
    pub lower_up: bool,
    pub addrs: Vec<IpNet>,
}

/// Whether [`LinkOps::ensure_veth`] may change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Build or repair toward the spec.
    Repair,
    /// Only report whether the kernel matches the spec (CNI CHECK).
    Verify,
}

/// What ensuring a link did (ordered: unchanged < repaired < created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Already as declared.
    Unchanged,
    /// Existed, attributes corrected (address, MTU, up).
    Repaired,
    /// Built (or rebuilt) from scratch.
    Created,
}

/// Errors of link plumbing; each names the interface and namespace.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op} {ifname} in {netns}: {source}")]
    Netlink {
        op: &'static str,
        ifname: String,
        netns: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {ifname} already exists in {netns} and was not made by meshnet")]
    Occupied { ifname: String, netns: String },
    /// CHECK: the link's interface is not there.
    #[error("{ifname} missing in {netns}")]
    Missing { ifname: String, netns: String },
    /// CHECK: an interface of that name is there but is not this link's.
    #[error("{ifname} in {netns} is not this link's {kind}")]
    NotThisLink {
        ifname: String,
        netns: String,
        kind: &'static str,
    },
    /// CHECK: the declaration differs from what meshnet applied ([`end_drift`]).
    #[error("{detail}")]
    Drift { detail: String },
    #[error("{ifname} vanished from {netns} while configuring it")]
    Vanished { ifname: String, netns: String },
    #[error(
        "vxlan {ifname}: node address {local} and peer node address {remote} are of different families"
    )]
    Families {
        ifname: String,
        local: IpAddr,
        remote: IpAddr,
    },
    #[error("the gRPC wire is not running (INTER_NODE_LINK_TYPE is not GRPC)")]
    NoWire,
    /// The wire-half code (`tapio`, `afhalf`) reports its endpoint failures and differences as
    /// text; nothing else makes this. That code is moving to `wire/`, with its own error type.
    #[error("{0}")]
    Mismatch(String),
}

/// What kind of failure a [`LinkError`] is, for the protocol boundaries (the local API maps
/// each to one gRPC code in `api::status_of`) and the link's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkFault {
    /// An interface of the link's name exists and is not meshnet's.
    Occupied,
    /// The pod's namespace cannot be opened or entered.
    Namespace,
    /// The node cannot carry the link as declared (underlay or parent interface missing, VNI
    /// clash, peer node address unusable, no gRPC wire).
    Node,
    /// CHECK found the link missing or not as declared.
    Differs,
    /// The kernel or the wire endpoint refused.
    Kernel,
}

impl LinkError {
    /// See [`LinkFault`].
    pub fn fault(&self) -> LinkFault {
        match self {
            LinkError::Netns(_) => LinkFault::Namespace,
            LinkError::Occupied { .. } => LinkFault::Occupied,
            LinkError::Missing { .. } | LinkError::NotThisLink { .. } | LinkError::Drift { .. } => {
                LinkFault::Differs
            }
            LinkError::Families { .. } | LinkError::NoWire => LinkFault::Node,
            LinkError::Netlink { .. } | LinkError::Vanished { .. } | LinkError::Mismatch(_) => {
                LinkFault::Kernel
            }
        }
    }

    /// CHECK's error for an end that is absent (`None`) or not this link's.
    fn differs(end: &EndSpec, st: Option<&IfaceState>, kind: &'static str) -> Self {
        let (ifname, netns) = (end.ifname.clone(), end.netns.display().to_string());
        match st {
            None => LinkError::Missing { ifname, netns },
            Some(_) => LinkError::NotThisLink {
                ifname,
                netns,
                kind,
            },
        }
    }
}

impl LinkError {
    fn netlink(op: &'static str, ifname: &str, netns: &Path, source: rtnetlink::Error) -> Self {
        LinkError::Netlink {
            op,
            ifname: ifname.to_string(),
            netns: netns.display().to_string(),
            source,
        }
    }
}

/// Every side effect the reconciler has on the node: netlink, namespaces and the gRPC wire's
/// halves. [`Kernel`] is the real one; the reconciler's unit tests use a recording fake.
///
/// `snap` is the run's read-ahead of the namespaces it touches ([`LinkOps::snapshot`]); outside
/// a run (CNI CHECK, DEL) callers pass an empty [`Snapshot`](snapshot::Snapshot), which answers
/// nothing, so every lookup goes to the kernel.
#[async_trait]
pub trait LinkOps: Send + Sync + 'static {
    /// Reads every namespace in `netns` ahead of a run (one link and one address dump each).
    async fn snapshot(&self, netns: Vec<PathBuf>) -> snapshot::Snapshot;
    /// Makes (or in [`Mode::Verify`], checks) a pod's port ([`crate::ports`]).
    async fn ensure_port(
        &self,
        snap: &snapshot::Snapshot,
        spec: &PortSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError>;
    /// Patches two interfaces of the node's namespace to each other (or checks that they are):
    /// two ports' node ends, or a node end and the device that carries its link.
    async fn ensure_patch(
        &self,
        snap: &snapshot::Snapshot,
        a: &str,
        b: &str,
        mode: Mode,
    ) -> Result<Outcome, LinkError>;
    /// The carrier table of the node's ports ([`crate::ports::Patchbay`]), after every run.
    fn set_cables(&self, cables: Vec<Cable>);
    /// Makes (or checks) a single-end link (vxlan, macvlan) as `spec` says.
    async fn ensure_single(
        &self,
        snap: &snapshot::Snapshot,
        spec: &SingleSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError>;
    /// Makes (or checks) the pod's half of a gRPC wire and registers it with the wire.
    async fn ensure_half(
        &self,
        snap: &snapshot::Snapshot,
        spec: &WireSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError>;
    /// Whether the wire half of `key` is registered and its carrier up (`None`: no such half).
    fn half_carrier(&self, key: &WireKey) -> Option<bool>;
    /// Whether the carrier of the wire half of `key` is off because the far router shut its
    /// port (the peer's daemon said so).
    fn half_far_shut(&self, _key: &WireKey) -> bool {
        false
    }
    /// Puts the impairment of what the peer sends on the wire half of `key` (`None`: off).
    fn impair_half(&self, key: &WireKey, spec: Option<ImpairSpec>);
    /// Pulls (or plugs back) the cable of the wire half of `key`: its carrier goes off.
    fn pull_half(&self, key: &WireKey, pulled: bool);
    /// Drops every wire half not in `keep`, and allows streams only from `peers`.
    fn retain_halves(&self, keep: &HashSet<WireKey>, peers: HashSet<IpAddr>);
    /// Signalled when a wire half's carrier changes (`None` without the gRPC wire).
    fn carrier_changed(&self) -> Option<Arc<Notify>>;
    /// A node interface by name, or the one that holds `addr` when `name` is `None`.
    async fn node_iface(
        &self,
        name: Option<&str>,
        addr: IpAddr,
    ) -> Result<Option<NodeIface>, LinkError>;
    /// Interfaces in `netns` that carry a meshnet alias: `(ifname, alias)`.
    async fn owned(
        &self,
        snap: &snapshot::Snapshot,
        netns: &Path,
    ) -> Result<Vec<(String, OwnedAlias)>, LinkError>;
    /// Deletes `ifname` in `netns` if it exists and is meshnet's; a missing one is fine.
    async fn delete_owned(&self, netns: &Path, ifname: &str) -> Result<(), LinkError>;
    /// Deletes every port in `netns` in one request (their group, [`crate::ports::PORT_GROUP`]),
    /// both ends of each; ports made before groups are left for [`LinkOps::delete_owned`].
    async fn delete_ports(&self, _netns: &Path) -> Result<(), LinkError> {
        Ok(())
    }
    /// Whether the recorded sandbox namespace `netns` still exists.
    fn netns_exists(&self, netns: &Path) -> bool;
    /// Puts a declared impairment on the egress of the kernel link end `ifname` in `netns`
    /// (`None`: removes meshnet's, never the pod's own qdisc). See [`crate::qdisc::apply`].
    async fn impair(
        &self,
        netns: &Path,
        ifname: &str,
        spec: Option<ImpairSpec>,
    ) -> Result<crate::qdisc::Applied, crate::qdisc::QdiscError>;
    /// Sets the protocol-down flag of the kernel link end `ifname` in `netns`: its carrier goes
    /// off (on) without touching its admin state, which is the pod's. VXLAN and macvlan only:
    /// the kernel refuses it for veth and TAP.
    async fn set_protodown(&self, netns: &Path, ifname: &str, down: bool) -> Result<(), LinkError>;
    /// Follows the admin state of the ports in exactly these pod namespaces (VXLAN ends under
    /// the beacon; see [`crate::portwatch`]).
    fn watch_ports(&self, _netns: HashSet<PathBuf>) {}
    /// Whether the pod has its port `ifname` in `netns` administratively up (`Some(false)`:
    /// shut or missing; `None`: not known yet).
    fn port_admin_up(&self, _netns: &Path, _ifname: &str) -> Option<bool> {
        None
    }
    /// Fired when a watched port's admin state changes, or the set of ports whose far router
    /// shut its port ([`LinkOps::far_port_shut`]) does.
    fn ports_changed(&self) -> Option<Arc<Notify>> {
        None
    }
    /// Whether the same-node port whose node end is `node_end` has its carrier off because the
    /// far router shut its port ([`crate::ports::Patchbay::far_shut`]).
    fn far_port_shut(&self, _node_end: &str) -> bool {
        false
    }
}

/// Netlink errno of an rtnetlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn state_of(msg: &LinkMessage) -> IfaceState {
    let mut s = IfaceState {
        index: msg.header.index,
        kind: None,
        link: None,
        alias: None,
        applied: None,
        mtu: None,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        addrs: Vec::new(),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfAlias(x) => {
                let (alias, applied) = split_alias(x);
                s.alias = Some(alias);
                s.applied = applied;
            }
            LinkAttribute::Link(i) => s.link = Some(*i),
            LinkAttribute::Mtu(m) => s.mtu = Some(*m),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                s.mac = Some(m);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// A link request (dump or get) whose answers leave out the counters (`RTEXT_FILTER_SKIP_STATS`):
/// the kernel then neither sums every CPU's counters of each interface nor sends them, which is
/// most of the cost of dumping a node with thousands of ports. For reading state, never counters.
pub fn lean_links(handle: &Handle) -> LinkGetRequest {
    handle
        .link()
        .get()
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
}

/// Looks up `name` with `handle` (bound to some namespace), with its addresses.
pub async fn get_iface(
    handle: &Handle,
    name: &str,
) -> Result<Option<IfaceState>, rtnetlink::Error> {
    let mut links = lean_links(handle).match_name(name.to_string()).execute();
    let msg = match links.try_next().await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut s = state_of(&msg);
    let mut req = handle.address().get().set_link_index_filter(s.index);
    // Filtered by the kernel on a strict socket ([`connection`]), here otherwise.
    req.message_mut().header.index = s.index;
    let mut addrs = req.execute();
    while let Some(a) = addrs.try_next().await? {
        add_addresses(&mut s, &a);
    }
    Ok(Some(s))
}

/// Adds the interface addresses an address message carries (IPv4 local, IPv6 address).
fn add_addresses(s: &mut IfaceState, a: &AddressMessage) {
    for attr in &a.attributes {
        let ip = match attr {
            AddressAttribute::Local(ip) => *ip,
            AddressAttribute::Address(ip) if matches!(ip, IpAddr::V6(_)) => *ip,
            _ => continue,
        };
        if let Ok(n) = IpNet::new(ip, a.header.prefix_len)
            && !s.addrs.contains(&n)
        {
            s.addrs.push(n);
        }
    }
}

/// Brings an existing interface to its declaration without taking the port from the router.
/// (A MAC is a setting like the others, not part of the link's identity: a router that sets its
/// own MAC keeps its port.)
///
/// An end with no record of what meshnet applied (just created, or made before the record
/// existed) is configured in full: MTU, address, up. An end with a record is changed only where
/// the declaration (`ip`, `mtu`) differs from the record: the new MTU is set, the address
/// meshnet had set is removed and the declared one added. Admin state, an MTU the pod chose and
/// addresses the pod added or removed are never touched. The alias is rewritten with the new
/// record. Returns whether anything changed.
pub async fn configure_end(
    handle: &Handle,
    st: &IfaceState,
    alias: &str,
    ip: Option<IpNet>,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
) -> Result<bool, rtnetlink::Error> {
    let want = Applied { ip, mtu, mac };
    let fresh = st.applied.is_none();
    let prev = st.applied.unwrap_or_default();
    let mut changed = false;
    let mut msg = LinkUnspec::new_with_index(st.index);
    let mut set = false;
    if st.alias.as_deref() != Some(alias) || st.applied != Some(want) {
        msg = msg.alias(format!("{alias}|{}", want.encode()));
        set = true;
    }
    if let Some(m) = mtu
        && (fresh || prev.mtu != mtu)
        && st.mtu != Some(m)
    {
        msg = msg.mtu(m);
        set = true;
    }
    if let Some(m) = mac
        && (fresh || prev.mac != mac)
        && st.mac != Some(m.0)
    {
        msg = msg.address(m.0.to_vec());
        set = true;
    }
    if set {
        handle.link().set(msg.build()).execute().await?;
        changed = true;
    }
    if !fresh
        && prev.ip != ip
        && let Some(old) = prev.ip
        && st.addrs.contains(&old)
    {
        del_address(handle, st.index, old).await?;
        changed = true;
    }
    if let Some(ip) = ip
        && (fresh || prev.ip != Some(ip))
        && !st.addrs.contains(&ip)
    {
        match handle
            .address()
            .add(st.index, ip.addr(), ip.prefix_len())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        changed = true;
    }
    if fresh && !st.up {
        handle
            .link()
            .set(LinkUnspec::new_with_index(st.index).up().build())
            .execute()
            .await?;
        changed = true;
    }
    Ok(changed)
}

/// Removes address `ip` from interface `index` (gone already is fine).
async fn del_address(handle: &Handle, index: u32, ip: IpNet) -> Result<(), rtnetlink::Error> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(a) = addrs.try_next().await? {
        let mut one = IfaceState {
            index,
            kind: None,
            link: None,
            alias: None,
            applied: None,
            mtu: None,
            mac: None,
            up: false,
            lower_up: false,
            addrs: Vec::new(),
        };
        add_addresses(&mut one, &a);
        if one.addrs.contains(&ip) {
            return match handle.address().del(a).execute().await {
                Err(e) if errno(&e) != Some(libc::EADDRNOTAVAIL) => Err(e),
                _ => Ok(()),
            };
        }
    }
    Ok(())
}

/// The real kernel, through netlink, and the gRPC wire when it runs.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Handle in the daemon's own (the node's) namespace, where pairs are created.
    node: Handle,
    /// The gRPC wire (`INTER_NODE_LINK_TYPE=GRPC`).
    wire: Option<Arc<WireNode>>,
    /// Keeps the node ends' carrier (see [`crate::ports`]).
    bay: Arc<Patchbay>,
    /// Wire halves whose router shut its port (unbound from the peer until it opens it), and
    /// the peer node each half is planned toward.
    shut_halves: Arc<std::sync::Mutex<ShutHalves>>,
    /// Routers' admin state of the watched pod ports.
    ports: Arc<crate::portwatch::PortWatch>,
    /// Connections for the node-side link operations (ports, patches, wire TAPs).
    node_nl: Arc<NodeNetlink>,
}

/// Wire halves unbound because their router shut its port, and each half's planned peer.
type ShutHalves = (HashSet<WireKey>, HashMap<WireKey, Option<IpAddr>>);

impl Kernel {
    /// Opens a netlink connection in the calling thread's namespace (the node's).
    ///
    /// # Errors
    /// The netlink socket cannot be created.
    pub fn new() -> std::io::Result<Self> {
        let (conn, node) = connection()?;
        tokio::spawn(conn);
        let ports = Arc::new(crate::portwatch::PortWatch::new());
        Ok(Kernel {
            node,
            wire: None,
            bay: Patchbay::start(ports.changed())?,
            shut_halves: Arc::default(),
            ports,
            node_nl: Arc::default(),
        })
    }

    /// The same, with the gRPC wire whose halves [`LinkOps::ensure_half`] makes.
    #[must_use]
    pub fn with_wire(mut self, wire: Option<Arc<WireNode>>) -> Self {
        if let Some(w) = &wire {
            // A router shutting its port unbinds the half (its peer's carrier drops); opening
            // it binds the half toward its planned peer again.
            let (w, halves) = (Arc::clone(w), Arc::clone(&self.shut_halves));
            self.bay.on_shut(Box::new(move |key, shut| {
                let peer = {
                    let mut g = halves
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if shut {
                        g.0.insert(key.clone());
                    } else {
                        g.0.remove(key);
                    }
                    g.1.get(key).copied().flatten()
                };
                w.set_shut(key, shut, peer);
            }));
        }
        self.wire = wire;
        self
    }

    /// `ifname` in `netns`: from the run's snapshot `snap` if it can answer, else the kernel.
    pub(crate) async fn lookup_in(
        snap: &snapshot::Snapshot,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<IfaceState>, LinkError> {
        match snap.take(netns, ifname) {
            Some(known) => Ok(known),
            None => Self::lookup_kernel(netns, ifname).await,
        }
    }

    /// `ifname` in `netns`, for the wire-half code (`tapio`): answered from the snapshot of the
    /// run that called [`LinkOps::ensure_half`], which scopes it for that call only (the wire
    /// half code keeps its signatures while it moves to `wire/`).
    pub(crate) async fn lookup(
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<IfaceState>, LinkError> {
        match snapshot::take_scoped(netns, ifname) {
            Some(known) => Ok(known),
            None => Self::lookup_kernel(netns, ifname).await,
        }
    }

    async fn lookup_kernel(netns: &Path, ifname: &str) -> Result<Option<IfaceState>, LinkError> {
        let name = ifname.to_string();
        let (ns, n2) = (netns.to_path_buf(), name.clone());
        netns::in_netns(netns, move |h| async move { get_iface(&h, &n2).await })
            .await?
            .map_err(|e| LinkError::netlink("look up", &name, &ns, e))
    }

    pub(crate) async fn configure(
        end: &EndSpec,
        alias: &str,
        mtu: Option<u32>,
    ) -> Result<bool, LinkError> {
        let (name, ip, mac, alias_s) = (end.ifname.clone(), end.ip, end.mac, alias.to_string());
        let ns = end.netns.clone();
        netns::in_netns(&end.netns, move |h| async move {
            let st = get_iface(&h, &name)
                .await
                .map_err(|e| LinkError::netlink("look up", &name, &ns, e))?
                .ok_or_else(|| LinkError::Vanished {
                    ifname: name.clone(),
                    netns: ns.display().to_string(),
                })?;
            configure_end(&h, &st, &alias_s, ip, mtu, mac)
                .await
                .map_err(|e| LinkError::netlink("configure", &name, &ns, e))
        })
        .await?
    }

    pub(crate) async fn delete_in(netns: &Path, ifname: &str) -> Result<(), LinkError> {
        let name = ifname.to_string();
        let ns = netns.to_path_buf();
        netns::in_netns(netns, move |h| async move {
            let Some(st) = get_iface(&h, &name)
                .await
                .map_err(|e| LinkError::netlink("look up", &name, &ns, e))?
            else {
                return Ok(());
            };
            if !st
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
            {
                return Err(LinkError::Occupied {
                    ifname: name,
                    netns: ns.display().to_string(),
                });
            }
            match h.link().del(st.index).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(LinkError::netlink("delete", &name, &ns, e)),
            }
        })
        .await?
    }
}

/// Places a link being created in the pod's namespace, with its MTU and MAC.
fn finish<T>(
    b: LinkMessageBuilder<T>,
    ns: &File,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
) -> LinkMessage {
    let mut b = b.setns_by_fd(ns.as_raw_fd());
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    if let Some(mac) = mac {
        b = b.address(mac.0.to_vec());
    }
    b.build()
}

impl Kernel {
    async fn create_single(&self, spec: &SingleSpec) -> Result<(), LinkError> {
        // Created directly inside the pod's namespace under its final name: the device never
        // exists in the node's namespace (no clash with node interfaces, nothing to leak if a
        // later step fails), while its lower device and socket stay in the node's namespace.
        let ns = netns::open(&spec.end.netns)?;
        let name = spec.end.ifname.as_str();
        let (mtu, mac) = (spec.mtu, spec.end.mac);
        let msg = match &spec.kind {
            SingleKind::Vxlan {
                vni,
                local,
                remote,
                underlay,
                port,
            } => {
                let b = LinkVxlan::new(name, *vni)
                    .dev(*underlay)
                    .port(*port)
                    .learning(false);
                match (local, remote) {
                    (IpAddr::V4(l), IpAddr::V4(r)) => finish(b.local(*l).remote(*r), &ns, mtu, mac),
                    (IpAddr::V6(l), IpAddr::V6(r)) => {
                        finish(b.local6(*l).remote6(*r), &ns, mtu, mac)
                    }
                    _ => {
                        return Err(LinkError::Families {
                            ifname: name.to_string(),
                            local: *local,
                            remote: *remote,
                        });
                    }
                }
            }
            SingleKind::Macvlan { parent } => finish(
                LinkMacVlan::new(name, *parent, MacVlanMode::Bridge),
                &ns,
                mtu,
                mac,
            ),
        };
        let r = self.node.link().add(msg).execute().await;
        // The namespace fd must outlive the request.
        drop(ns);
        r.map_err(|e| LinkError::netlink("create", name, &spec.end.netns, e))
    }
}

/// How an end's declaration differs from what meshnet applied to it (its alias record), if it
/// does. What the pod changed itself (admin state, MTU, addresses) is not drift: the router owns
/// its port.
pub(crate) fn end_drift(end: &EndSpec, st: &IfaceState, mtu: Option<u32>) -> Option<String> {
    let want = Applied {
        ip: end.ip,
        mtu,
        mac: end.mac,
    };
    match st.applied {
        Some(a) if a == want => None,
        Some(a) => Some(format!(
            "{}: declared {}, meshnet had set {}",
            end.ifname,
            want.encode(),
            a.encode()
        )),
        None => Some(format!(
            "{}: no record of what meshnet set (alias {:?})",
            end.ifname,
            st.alias.as_deref().unwrap_or_default()
        )),
    }
}

pub(crate) fn is_owned(st: &IfaceState) -> bool {
    st.alias
        .as_deref()
        .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
}

/// Netlink connections in the node's namespace (the daemon's) for link operations, one per
/// operation at a time: a socket runs one dump at a time, and link operations run in parallel
/// (EBUSY otherwise). A connection goes back to the pool when its operation finished, so a
/// full run over a thousand links does not open and close a socket (and spawn its task) three
/// times per link.
#[derive(Debug, Default)]
struct NodeNetlink {
    free: std::sync::Mutex<Vec<(Handle, tokio::task::JoinHandle<()>)>>,
}

/// A connection of [`NodeNetlink`] lent to one operation.
struct Lease<'a> {
    pool: &'a NodeNetlink,
    handle: Handle,
    conn: Option<tokio::task::JoinHandle<()>>,
}

impl NodeNetlink {
    /// At most this many idle connections are kept (the reconciler's parallelism).
    const KEEP: usize = 16;

    fn lease(&self) -> std::io::Result<Lease<'_>> {
        let reused = {
            let mut free = self
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::iter::from_fn(|| free.pop()).find(|(_, conn)| !conn.is_finished())
        };
        let (handle, conn) = match reused {
            Some(c) => c,
            None => {
                let (conn, h) = connection()?;
                (h, tokio::spawn(conn))
            }
        };
        Ok(Lease {
            pool: self,
            handle,
            conn: Some(conn),
        })
    }

    /// Runs a link operation on a leased connection ([`Lease::run`]); a socket that cannot be
    /// opened is the operation's error.
    async fn with<T, F>(&self, op: impl FnOnce(Handle) -> F) -> Result<T, LinkError>
    where
        F: std::future::Future<Output = Result<T, LinkError>>,
    {
        let lease = self.lease().map_err(|source| {
            LinkError::Netns(NetnsError::Netlink {
                path: PathBuf::from("the node namespace"),
                source,
            })
        })?;
        lease.run(op).await
    }
}

impl Lease<'_> {
    /// Runs `op` on the leased connection; the connection goes back to the pool once `op`
    /// finished (a lease dropped mid-operation — its future cancelled, a dump perhaps half
    /// read — closes its connection instead).
    async fn run<T, F>(mut self, op: impl FnOnce(Handle) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let out = op(self.handle.clone()).await;
        if let Some(conn) = self.conn.take() {
            let mut free = self
                .pool
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if free.len() < NodeNetlink::KEEP {
                free.push((self.handle.clone(), conn));
            } else {
                conn.abort();
            }
        }
        out
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.abort();
        }
    }
}

/// A route netlink connection in the calling thread's namespace with strict checking of dump
/// requests (`NETLINK_GET_STRICT_CHK`, Linux 4.20+), so that the kernel itself filters an
/// address dump by interface: [`get_iface`] in a pod with a thousand ports reads its own
/// addresses, not everyone's (without it a burst of N ports costs O(N²)). On a kernel without
/// it the same requests work, filtered here.
///
/// # Errors
/// The socket cannot be opened.
pub fn connection() -> std::io::Result<(
    rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage>,
    Handle,
)> {
    let (mut conn, h, _) = rtnetlink::new_connection()?;
    use rtnetlink::sys::AsyncSocket as _;
    if let Err(e) = conn
        .socket_mut()
        .socket_mut()
        .set_netlink_get_strict_chk(true)
    {
        tracing::debug!(error = %e, "netlink strict checking not available: address dumps filtered here");
    }
    Ok((conn, h))
}

#[async_trait]
impl LinkOps for Kernel {
    async fn snapshot(&self, netns: Vec<PathBuf>) -> snapshot::Snapshot {
        let node = Path::new(crate::ports::NODE_NETNS);
        let snap = snapshot::Snapshot::read_with(netns, node, Some(self.bay.patch_memo())).await;
        // The node's dump checks the patchbay's table, which spares it a dump of its own.
        snap.dumped(node, |at, ifaces| {
            self.bay.check(at, ifaces);
        });
        snap
    }

    async fn ensure_half(
        &self,
        snap: &snapshot::Snapshot,
        spec: &WireSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        match &self.wire {
            Some(node) => {
                // A half whose router shut its port stays unbound whatever the plan says.
                let mut spec = spec.clone();
                {
                    let mut g = self
                        .shut_halves
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    g.1.insert(spec.key.clone(), spec.peer);
                    if g.0.contains(&spec.key) {
                        spec.peer = None;
                    }
                }
                let bay = &self.bay;
                self.node_nl
                    .with(|h| async move {
                        crate::tapio::ensure_half(node, bay, &h, snap, &spec, mode).await
                    })
                    .await
            }
            None => Err(LinkError::NoWire),
        }
    }

    fn half_carrier(&self, key: &WireKey) -> Option<bool> {
        self.wire.as_ref()?.carrier(key)
    }

    fn half_far_shut(&self, key: &WireKey) -> bool {
        self.wire.as_ref().is_some_and(|w| w.far_shut(key))
    }

    fn impair_half(&self, key: &WireKey, spec: Option<ImpairSpec>) {
        if let Some(w) = &self.wire {
            w.set_impairment(key, spec);
        }
    }

    fn pull_half(&self, key: &WireKey, pulled: bool) {
        if let Some(w) = &self.wire {
            w.set_pulled(key, pulled);
        }
    }

    fn retain_halves(&self, keep: &HashSet<WireKey>, peers: HashSet<IpAddr>) {
        if let Some(node) = &self.wire {
            node.retain(keep);
            node.set_allowed(peers);
        }
    }

    fn carrier_changed(&self) -> Option<Arc<Notify>> {
        self.wire.as_ref().map(|w| Arc::clone(&w.changed))
    }

    fn watch_ports(&self, netns: HashSet<PathBuf>) {
        self.ports.retain(&netns);
    }

    fn port_admin_up(&self, netns: &Path, ifname: &str) -> Option<bool> {
        self.ports.admin_up(netns, ifname)
    }

    fn ports_changed(&self) -> Option<Arc<Notify>> {
        Some(self.ports.changed())
    }

    fn far_port_shut(&self, node_end: &str) -> bool {
        self.bay.far_shut(node_end)
    }

    async fn ensure_port(
        &self,
        snap: &snapshot::Snapshot,
        spec: &PortSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        self.node_nl
            .with(|h| async move { crate::ports::ensure_port(&h, snap, spec, mode).await })
            .await
    }

    async fn ensure_patch(
        &self,
        snap: &snapshot::Snapshot,
        a: &str,
        b: &str,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        self.node_nl
            .with(|h| async move { crate::ports::ensure_patch(&h, snap, a, b, mode).await })
            .await
    }

    fn set_cables(&self, cables: Vec<Cable>) {
        self.bay.set(cables);
    }

    async fn ensure_single(
        &self,
        snap: &snapshot::Snapshot,
        spec: &SingleSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        let end = &spec.end;
        let st = Self::lookup_in(snap, &end.netns, &end.ifname).await?;
        if let Some(st) = &st
            && st.kind.as_deref() == Some(spec.kind.name())
            && st.alias.as_deref() == Some(spec.alias.as_str())
        {
            return match (end_drift(end, st, spec.mtu), mode) {
                (None, _) => Ok(Outcome::Unchanged),
                (Some(detail), Mode::Verify) => Err(LinkError::Drift { detail }),
                (Some(_), Mode::Repair) => {
                    Self::configure(end, &spec.alias, spec.mtu).await?;
                    Ok(Outcome::Repaired)
                }
            };
        }
        if mode == Mode::Verify {
            return Err(LinkError::differs(end, st.as_ref(), spec.kind.name()));
        }
        if let Some(st) = &st {
            if !is_owned(st) {
                return Err(LinkError::Occupied {
                    ifname: end.ifname.clone(),
                    netns: end.netns.display().to_string(),
                });
            }
            Self::delete_in(&end.netns, &end.ifname).await?;
        }
        self.create_single(spec).await?;
        if let Err(e) = Self::configure(end, &spec.alias, spec.mtu).await {
            if let Err(e2) = Self::delete_in(&end.netns, &end.ifname).await {
                tracing::warn!(error = %e2, "cleanup of half-built link failed");
            }
            return Err(e);
        }
        Ok(Outcome::Created)
    }

    async fn node_iface(
        &self,
        name: Option<&str>,
        addr: IpAddr,
    ) -> Result<Option<NodeIface>, LinkError> {
        let h = &self.node;
        let here = Path::new("the node namespace");
        let index = match name {
            Some(n) => match get_iface(h, n).await {
                Ok(Some(st)) => st.index,
                Ok(None) => return Ok(None),
                Err(e) => return Err(LinkError::netlink("look up", n, here, e)),
            },
            None => {
                let mut addrs = h.address().get().execute();
                let mut found = None;
                loop {
                    match addrs.try_next().await {
                        Ok(Some(a)) => {
                            let hit = a.attributes.iter().any(|x| match x {
                                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                                    *ip == addr
                                }
                                _ => false,
                            });
                            if hit {
                                found = Some(a.header.index);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Err(LinkError::netlink("list addresses", "*", here, e)),
                    }
                }
                match found {
                    Some(i) => i,
                    None => return Ok(None),
                }
            }
        };
        let mut links = lean_links(h).match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => {
                let st = state_of(&msg);
                let name = msg
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                Ok(Some(NodeIface {
                    index,
                    name,
                    mtu: st.mtu.unwrap_or(1500),
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(LinkError::netlink("look up", &index.to_string(), here, e)),
        }
    }

    async fn owned(
        &self,
        snap: &snapshot::Snapshot,
        netns: &Path,
    ) -> Result<Vec<(String, OwnedAlias)>, LinkError> {
        if let Some(known) = snap.owned(netns) {
            return Ok(known);
        }
        let ns = netns.to_path_buf();
        netns::in_netns(netns, move |h| async move {
            let mut out = Vec::new();
            let mut links = lean_links(&h).execute();
            loop {
                match links.try_next().await {
                    Ok(Some(msg)) => {
                        let mut name = None;
                        let mut alias = None;
                        for a in &msg.attributes {
                            match a {
                                LinkAttribute::IfName(n) => name = Some(n.clone()),
                                LinkAttribute::IfAlias(x) => alias = OwnedAlias::parse(x),
                                _ => {}
                            }
                        }
                        if let (Some(n), Some(a)) = (name, alias) {
                            out.push((n, a));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(LinkError::netlink("list links", "*", &ns, e)),
                }
            }
            Ok(out)
        })
        .await?
    }

    async fn delete_owned(&self, netns: &Path, ifname: &str) -> Result<(), LinkError> {
        Self::delete_in(netns, ifname).await
    }

    async fn delete_ports(&self, netns: &Path) -> Result<(), LinkError> {
        let ns = netns.to_path_buf();
        netns::in_netns(netns, move |h| async move {
            crate::ports::delete_group(&h)
                .await
                .map_err(|e| LinkError::netlink("delete the ports of", "the pod", &ns, e))
        })
        .await?
    }

    fn netns_exists(&self, netns: &Path) -> bool {
        netns::exists(netns)
    }

    async fn set_protodown(&self, netns: &Path, ifname: &str, down: bool) -> Result<(), LinkError> {
        let (name, ns) = (ifname.to_string(), netns.to_path_buf());
        netns::in_netns(netns, move |h| async move {
            let st = get_iface(&h, &name)
                .await
                .map_err(|e| LinkError::netlink("look up", &name, &ns, e))?
                .ok_or_else(|| LinkError::Missing {
                    ifname: name.clone(),
                    netns: ns.display().to_string(),
                })?;
            let mut msg = LinkUnspec::new_with_index(st.index).build();
            msg.attributes
                .push(LinkAttribute::ProtoDown(u8::from(down)));
            h.link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| LinkError::netlink("set protodown on", &name, &ns, e))
        })
        .await?
    }

    async fn impair(
        &self,
        netns: &Path,
        ifname: &str,
        spec: Option<ImpairSpec>,
    ) -> Result<crate::qdisc::Applied, crate::qdisc::QdiscError> {
        use crate::qdisc::QdiscError;
        let name = ifname.to_string();
        netns::in_netns(netns, move |h| async move {
            let iface = get_iface(&h, &name)
                .await
                .map_err(|e| QdiscError::Netlink(e.to_string()))?
                .ok_or_else(|| QdiscError::Netlink(format!("{name} does not exist")))?;
            crate::qdisc::apply(&h, iface.index, iface.mtu.unwrap_or(1500), spec.as_ref()).await
        })
        .await
        .map_err(|e| QdiscError::Netlink(e.to_string()))?
    }
}

/// Every interface of a namespace with its addresses, read with one link dump and one address
/// dump through rtnetlink's full decode: the reference that `dump::Reader`'s test compares with.
#[cfg(test)]
async fn dump_ifaces(handle: &Handle) -> Result<HashMap<String, IfaceState>, rtnetlink::Error> {
    let mut by_index: HashMap<u32, (String, IfaceState)> = HashMap::new();
    let mut links = lean_links(handle).execute();
    while let Some(msg) = links.try_next().await? {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            by_index.insert(msg.header.index, (name, state_of(&msg)));
        }
    }
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        if let Some((_, s)) = by_index.get_mut(&a.header.index) {
            add_addresses(s, &a);
        }
    }
    Ok(by_index.into_values().collect())
}

mod dump;

/// Interface state read ahead for a whole reconcile run.
///
/// Checking 1000 links one by one costs 1000 namespace threads, each with its own netlink
/// socket and two requests; a run that checks many links in few namespaces instead dumps each
/// namespace once ([`Snapshot::read`](snapshot::Snapshot::read)) and [`Kernel::lookup`] answers
/// from that dump, as does [`LinkOps::owned`] for the stale-link sweep.
///
/// Each name is answered from the dump **once**: the first lookup of a name sees the state at
/// the start of the run, any later lookup of it (after the link was built or changed) goes to
/// the kernel — unless the code that looked it up found it as it should be and changed nothing
/// ([`Snapshot::confirm`](snapshot::Snapshot::confirm)): a port's node end, checked by the port,
/// is then looked up again from the dump by its patch. Runs over many links (every full run)
/// dump the node's namespace too, so that verifying an unchanged port, its patch and its wire
/// TAP costs two filter reads and no link request. The owned list is answered from the dump
/// only for a namespace the run did not touch (every link there unchanged). Runs are
/// serialised (the reconciler's memo lock); the reconciler passes the run's snapshot to every
/// [`LinkOps`] call explicitly, so nothing outlives the run. The one task-local left
/// ([`Snapshot::with`]) carries it into the wire-half code (`tapio`) for the duration of one
/// [`LinkOps::ensure_half`] call, so that code keeps its signatures while it moves to `wire/`.
pub mod snapshot {
    use std::collections::{HashMap, HashSet};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use super::{IfaceState, OwnedAlias};
    use crate::ports::PatchMemo;

    #[derive(Debug, Default)]
    struct Namespace {
        ifaces: HashMap<String, IfaceState>,
        /// When the dump began.
        at: Option<std::time::Instant>,
        answered: HashSet<String>,
        /// Node namespace only: where each meshnet interface's patch points
        /// ([`super::dump::Reader::patches`]), and the ones answered.
        patches: HashMap<u32, Option<u32>>,
        patches_answered: HashSet<u32>,
        /// The run changed something here: the list of owned interfaces must be read again.
        touched: bool,
    }

    /// The dumps of one run.
    #[derive(Debug, Clone, Default)]
    pub struct Snapshot(Arc<Mutex<HashMap<PathBuf, Namespace>>>);

    tokio::task_local! {
        static CURRENT: Snapshot;
    }

    impl Snapshot {
        /// Dumps every namespace in `netns` (namespaces that cannot be read are left to
        /// per-link lookups, which report the error), the node's patches included.
        pub async fn read(netns: impl IntoIterator<Item = PathBuf>) -> Self {
            Self::read_with(netns, Path::new(crate::ports::NODE_NETNS), None).await
        }

        /// [`Snapshot::read`] with `node` as the node's namespace, whose meshnet interfaces'
        /// patches are read too: those `memo` still knows are not read again.
        pub async fn read_with(
            netns: impl IntoIterator<Item = PathBuf>,
            node: &Path,
            memo: Option<Arc<PatchMemo>>,
        ) -> Self {
            use futures::StreamExt;
            let dumps: HashMap<PathBuf, Namespace> = futures::stream::iter(netns)
                .map(|path| {
                    let memo = memo.clone().filter(|_| path == node);
                    let node = path == node;
                    async move {
                        let r = crate::netns::in_netns_sync(&path, move || {
                            let mut reader = super::dump::Reader::open()?;
                            let at = std::time::Instant::now();
                            let ifaces = reader.interfaces()?;
                            let patches = if node {
                                let ours: Vec<u32> = ifaces
                                    .values()
                                    .filter(|s| super::is_owned(s))
                                    .map(|s| s.index)
                                    .collect();
                                read_patches(&mut reader, &ours, memo.as_deref())
                            } else {
                                HashMap::new()
                            };
                            std::io::Result::Ok((at, ifaces, patches))
                        })
                        .await;
                        match r {
                            Ok(Ok((at, ifaces, patches))) => Some((
                                path,
                                Namespace {
                                    ifaces,
                                    at: Some(at),
                                    patches,
                                    ..Namespace::default()
                                },
                            )),
                            _ => None,
                        }
                    }
                })
                // One at a time: the kernel serialises dumps on its netlink lock, and a thread
                // dumping alongside another spins on that lock while it waits (7 % of an idle
                // daemon's CPU at a thousand ports, in the lab) and gains little time.
                .buffer_unordered(1)
                .filter_map(std::future::ready)
                .collect()
                .await;
            Snapshot(Arc::new(Mutex::new(dumps)))
        }

        /// Runs `f` with the wire-half code's lookups ([`Kernel::lookup`](super::Kernel))
        /// answered from this snapshot.
        pub async fn with<F: std::future::Future>(&self, f: F) -> F::Output {
            CURRENT.scope(self.clone(), f).await
        }

        /// Hands the dump of `netns`, as read (before the run changed anything), to `f` with
        /// the time it began; `None` when there is no dump of it.
        pub fn dumped<R>(
            &self,
            netns: &Path,
            f: impl FnOnce(std::time::Instant, &HashMap<String, IfaceState>) -> R,
        ) -> Option<R> {
            let d = self.lock();
            let ns = d.get(netns)?;
            Some(f(ns.at?, &ns.ifaces))
        }

        /// Records that the run changed `netns` (built, repaired or failed there).
        pub fn touched(&self, netns: &Path) {
            if let Some(ns) = self.lock().get_mut(netns) {
                ns.touched = true;
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Namespace>> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl Snapshot {
        /// The state of `ifname` in `netns` at the start of the run (`Some(None)`: absent), once
        /// per name; `None` when there is no dump for it or the name was answered before.
        pub fn take(&self, netns: &Path, ifname: &str) -> Option<Option<IfaceState>> {
            let mut d = self.lock();
            let ns = d.get_mut(netns)?;
            ns.answered
                .insert(ifname.to_string())
                .then(|| ns.ifaces.get(ifname).cloned())
        }

        /// Where the patch of interface `index` in `netns` pointed at the start of the run
        /// (`Some(None)`: no patch), once per interface; `None` when there is no reading of it
        /// or it was answered before.
        pub fn take_patch(&self, netns: &Path, index: u32) -> Option<Option<u32>> {
            let mut d = self.lock();
            let ns = d.get_mut(netns)?;
            let known = *ns.patches.get(&index)?;
            ns.patches_answered.insert(index).then_some(known)
        }

        /// The caller read `ifname` in `netns` from this snapshot and changed nothing about it:
        /// the next [`Snapshot::take`] of the name may answer from the dump again (a node end
        /// verified by its port, then looked up by its patch).
        pub fn confirm(&self, netns: &Path, ifname: &str) {
            if let Some(ns) = self.lock().get_mut(netns) {
                ns.answered.remove(ifname);
            }
        }

        /// The meshnet-owned interfaces of `netns` from the dump, unless the run touched it.
        pub fn owned(&self, netns: &Path) -> Option<Vec<(String, OwnedAlias)>> {
            let d = self.lock();
            let ns = d.get(netns).filter(|ns| !ns.touched)?;
            Some(
                ns.ifaces
                    .iter()
                    .filter_map(|(name, st)| {
                        let a = OwnedAlias::parse(st.alias.as_deref()?)?;
                        Some((name.clone(), a))
                    })
                    .collect(),
            )
        }
    }

    /// Where the patches of the interfaces `ours` point: from `memo` where it still knows,
    /// read (and recorded) for the others.
    fn read_patches(
        reader: &mut super::dump::Reader,
        ours: &[u32],
        memo: Option<&PatchMemo>,
    ) -> HashMap<u32, Option<u32>> {
        let Some(memo) = memo else {
            return reader.patches(ours.iter().copied());
        };
        let at = std::time::Instant::now();
        let (mut known, unknown) = memo.split(ours, at);
        let read = reader.patches(unknown);
        memo.record(at, ours, &read);
        known.extend(read);
        known
    }

    /// [`Snapshot::take`] on the snapshot scoped by [`Snapshot::with`], if any.
    pub(super) fn take_scoped(netns: &Path, ifname: &str) -> Option<Option<IfaceState>> {
        CURRENT.try_with(|s| s.take(netns, ifname)).ok().flatten()
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use crate::testns::TestNs;

    /// `s` with its addresses in order (dumps list them as the kernel holds them).
    pub(super) fn sorted(mut s: IfaceState) -> IfaceState {
        s.addrs.sort();
        s
    }

    /// The read-ahead dump answers like a per-name lookup, once per name; later lookups of the
    /// name (after the run changed it) see the kernel.
    #[tokio::test]
    async fn snapshot_answers_each_name_once_then_the_kernel() {
        let ns = TestNs::new("snap");
        ns.ip(&[
            "link", "add", "d0", "mtu", "1400", "type", "veth", "peer", "name", "d0p",
        ]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "d0"]);
        ns.ip(&["link", "set", "d0", "alias", "meshnet|t|1|veth|x", "up"]);
        let path = ns.path();
        let direct = Kernel::lookup(&path, "d0")
            .await
            .unwrap()
            .expect("d0 exists");
        assert_eq!(direct.mtu, Some(1400));

        let p2 = path.clone();
        let snap = snapshot::Snapshot::read([path.clone()]).await;
        let (first, again, absent, after_delete, created) = snap
            .with(async {
                let first = Kernel::lookup(&p2, "d0").await.unwrap();
                // Changed during the run: the dump must not answer for d0 again.
                ns.ip(&["link", "del", "d0"]);
                let again = Kernel::lookup(&p2, "d0").await.unwrap();
                let absent = Kernel::lookup(&p2, "nope").await.unwrap();
                ns.ip(&[
                    "link", "add", "nope", "type", "veth", "peer", "name", "nopep",
                ]);
                let after_delete = Kernel::lookup(&p2, "nope").await.unwrap();
                ns.ip(&[
                    "link", "add", "late", "type", "veth", "peer", "name", "latep",
                ]);
                let created = Kernel::lookup(&p2, "late").await.unwrap();
                (first, again, absent, after_delete, created)
            })
            .await;
        assert_eq!(sorted(first.expect("d0 in the dump")), sorted(direct));
        assert_eq!(again, None, "second lookup of d0 must go to the kernel");
        assert_eq!(absent, None, "absent from the dump");
        assert!(
            after_delete.is_some(),
            "second lookup of a name sees the kernel"
        );
        assert_eq!(
            created, None,
            "the dump is the state at the start of the run"
        );
        // Outside a run nothing is cached.
        assert!(Kernel::lookup(&path, "late").await.unwrap().is_some());
    }

    /// The sweep's list of owned interfaces comes from the dump while the run has not touched
    /// the namespace, and from the kernel once it has.
    #[tokio::test]
    async fn snapshot_owned_list_until_the_namespace_is_touched() {
        let ns = TestNs::new("owned");
        ns.ip(&["link", "add", "o1", "type", "veth", "peer", "name", "o1p"]);
        ns.ip(&["link", "set", "o1", "alias", "meshnet|t|7|veth|x"]);
        let path = ns.path();
        let kernel = Kernel::new().unwrap();
        let snap = snapshot::Snapshot::read([path.clone()]).await;
        ns.ip(&["link", "del", "o1"]);
        let names =
            |v: Vec<(String, OwnedAlias)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        let untouched = kernel.owned(&snap, &path).await.unwrap();
        assert_eq!(names(untouched), vec!["o1".to_string()], "from the dump");
        snap.touched(&path);
        let touched = kernel.owned(&snap, &path).await.unwrap();
        assert!(names(touched).is_empty(), "from the kernel once touched");
    }

    #[test]
    fn alias_record_round_trips_and_splits_off_the_identity() {
        let a = Applied {
            ip: Some("10.0.1.1/24".parse().unwrap()),
            mtu: Some(1450),
            mac: None,
        };
        assert_eq!(a.encode(), "ip=10.0.1.1/24;mtu=1450");
        assert_eq!(Applied::decode(&a.encode()), Some(a));
        let m = Applied {
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            ..a
        };
        assert_eq!(m.encode(), "ip=10.0.1.1/24;mtu=1450;mac=02:00:00:00:00:01");
        assert_eq!(Applied::decode(&m.encode()), Some(m));
        assert_eq!(Applied::decode("ip=;mtu="), Some(Applied::default()));
        assert_eq!(Applied::decode("bogus"), None);
        let raw = "meshnet|ns|7|vxlan|99-2001:db8::1-3-abc|ip=2001:db8::5/64;mtu=";
        let (id, rec) = split_alias(raw);
        assert_eq!(id, "meshnet|ns|7|vxlan|99-2001:db8::1-3-abc");
        assert_eq!(rec.unwrap().ip, Some("2001:db8::5/64".parse().unwrap()));
        // The identity of an alias is what OwnedAlias sees, record or not.
        assert_eq!(OwnedAlias::parse(raw), OwnedAlias::parse(&id));
        assert_eq!(OwnedAlias::parse(raw).unwrap().tag, "99-2001:db8::1-3-abc");
        // Before the record existed, and foreign aliases: all identity, no record.
        assert_eq!(
            split_alias("meshnet|ns|7|veth|a-b"),
            ("meshnet|ns|7|veth|a-b".into(), None)
        );
        assert_eq!(split_alias("uplink"), ("uplink".into(), None));
    }

    /// The router owns its port: after creation meshnet changes an end only when the
    /// declaration changes, and then removes only the address it had set.
    #[tokio::test]
    async fn configure_end_never_reverts_what_the_pod_changed() {
        let ns = TestNs::new("own");
        ns.ip(&["link", "add", "e1", "type", "veth", "peer", "name", "e1p"]);
        let path = ns.path();
        let end = |ip: &str| EndSpec {
            netns: path.clone(),
            ifname: "e1".into(),
            ip: Some(ip.parse().unwrap()),
            mac: None,
        };
        let alias = "meshnet|t|1|veth|x";
        let st = || async { Kernel::lookup(&path, "e1").await.unwrap().unwrap() };
        // Fresh: configured in full.
        assert!(
            Kernel::configure(&end("10.0.1.1/24"), alias, Some(1450))
                .await
                .unwrap()
        );
        let s = st().await;
        assert!(s.up);
        assert_eq!((s.mtu, s.alias.as_deref()), (Some(1450), Some(alias)));
        assert_eq!(end_drift(&end("10.0.1.1/24"), &s, Some(1450)), None);
        // The pod shuts the port, picks its own MTU and adds an address: none of it is drift,
        // and configuring again changes nothing.
        ns.ip(&["link", "set", "e1", "down", "mtu", "1400"]);
        ns.ip(&["addr", "add", "192.0.2.9/24", "dev", "e1"]);
        let s = st().await;
        assert_eq!(end_drift(&end("10.0.1.1/24"), &s, Some(1450)), None);
        assert!(
            !Kernel::configure(&end("10.0.1.1/24"), alias, Some(1450))
                .await
                .unwrap()
        );
        let s = st().await;
        assert!(!s.up, "admin state is the pod's");
        assert_eq!(s.mtu, Some(1400), "the MTU the pod chose stays");
        // The declaration changes: meshnet's old address goes, the new one comes, the pod's
        // stays; still down, MTU still the pod's.
        let new = end("10.9.1.1/24");
        assert!(end_drift(&new, &s, Some(1450)).is_some());
        assert!(Kernel::configure(&new, alias, Some(1450)).await.unwrap());
        let mut addrs = st().await.addrs;
        addrs.sort();
        let want: Vec<IpNet> = ["10.9.1.1/24", "192.0.2.9/24"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs, want);
        let s = st().await;
        assert!(!s.up);
        assert_eq!(s.mtu, Some(1400));
        // A changed declared MTU is applied.
        assert!(Kernel::configure(&new, alias, Some(1300)).await.unwrap());
        assert_eq!(st().await.mtu, Some(1300));
        assert_eq!(end_drift(&new, &st().await, Some(1300)), None);
        // A declared MAC is applied; the pod changing it afterwards is not drift.
        let with_mac = EndSpec {
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            ..new.clone()
        };
        assert!(end_drift(&with_mac, &st().await, Some(1300)).is_some());
        assert!(
            Kernel::configure(&with_mac, alias, Some(1300))
                .await
                .unwrap()
        );
        assert_eq!(st().await.mac, Some([2, 0, 0, 0, 0, 1]));
        ns.ip(&["link", "set", "e1", "address", "02:00:00:00:00:99"]);
        assert_eq!(end_drift(&with_mac, &st().await, Some(1300)), None);
        assert!(
            !Kernel::configure(&with_mac, alias, Some(1300))
                .await
                .unwrap()
        );
        assert_eq!(st().await.mac, Some([2, 0, 0, 0, 0, 0x99]));
    }

    /// A namespace that cannot be read is left to per-link lookups, which report it.
    #[tokio::test]
    async fn snapshot_of_a_missing_namespace_defers_to_the_lookup() {
        let missing = PathBuf::from(format!("/run/netns/mnd-missing-{}", std::process::id()));
        let m2 = missing.clone();
        let snap = snapshot::Snapshot::read([missing]).await;
        let r = snap.with(Kernel::lookup(&m2, "eth0")).await;
        assert!(r.is_err(), "{r:?}");
    }
}
