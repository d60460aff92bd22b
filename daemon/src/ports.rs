//! Pod ports that behave like cables (issue 12, README "DESIGN notes: ports").
//!
//! Every kernel-carried port of a pod is one end of a veth pair: the *pod end* under its final
//! name in the pod's namespace, the *node end* ([`node_end_name`]) in the node's namespace (the
//! daemon's own). The pair is made once for (pod sandbox, link) and never replaced while the
//! pod lives and the link stays declared, whatever happens at the far end: what carries the link
//! is patched to the node end instead.
//!
//! * **Patching** ([`patch`]): an `ingress` qdisc on a node end and one u32 filter that matches
//!   every frame with `mirred egress redirect` to the other side — for two ports of this node,
//!   node end ⇄ node end. GSO super-frames and partial checksums pass mirred intact. The filter
//!   names its target by ifindex, so a rebuilt far end is patched again (the reconciler does it
//!   whenever the far port's sandbox changed, and a full run checks every filter).
//! * **Carrier** ([`Patchbay`]): a veth has carrier only while both its ends are administratively
//!   up, so the carrier the pod sees is its node end's admin state, which meshnet alone sets. A
//!   node end is up only while its far port exists, is patched back to it, its router keeps it
//!   up, and nobody declared `state: down`. The patchbay watches link events in the node's
//!   namespace (one multicast socket: every far-end event of same-node links is visible there at
//!   once) and switches node ends; after a node end went down it stays down at least [`HOLD`],
//!   so that a far end that restarts at once is still seen as a link-down by the router.
//!   Its table of the node's links is kept from those events; the reconciler's full runs dump
//!   the node's namespace anyway, and each such dump is handed over as a check
//!   ([`Patchbay::check`]): a disagreement (an event lost without an overrun report) makes the
//!   patchbay read the links again, and it dumps on its own only when no check came for
//!   [`RESYNC`] — an idle node with a thousand ports is dumped once per resync, not twice.
//!   The same socket follows the node's traffic-control events, which keep the patches' memo
//!   ([`PatchMemo`]): a full run reads again only the patches that changed since it last read
//!   them (or whose reading is older than [`memo::TRUST`]).
//! * **The node end** has IPv6 disabled, no address, and the largest MTU a veth takes, so the MTU
//!   the router chooses on its pod end is the one that counts. Its alias is the port's.
//! * **The pod end** is configured once (address, MTU, up) and then belongs to the router
//!   ([`crate::links::configure_end`]): the daemon never touches its admin state again.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcOption,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::links::snapshot::Snapshot;
use crate::links::{
    self, EndSpec, IfaceState, Kernel, LinkError, Mode, Outcome, end_drift, is_owned,
};
use crate::netns;

mod memo;
pub use memo::PatchMemo;

/// Shortest time a node end stays down once it went down: long enough for the pod's kernel to
/// report the carrier loss (veth carrier changes are urgent events, reported at once) and for a
/// routing daemon to act on it, short enough not to matter for a link that comes back.
pub const HOLD: Duration = Duration::from_millis(300);

/// How often the admin state of pod ends whose node end is held down is read while a far port
/// waits on it (no event in the node's namespace says when a router turns its port back on
/// while meshnet holds its node end down).
pub const POLL: Duration = Duration::from_millis(250);

/// How many pod ends a pass reads at once (each read is a short-lived thread in the pod's
/// namespace; a node whose peer node went away may have a thousand to read).
const POD_READS: usize = 16;

/// How long the patchbay goes without a check of its table ([`Patchbay::check`]) before it reads
/// the node's links in full itself although it follows their events (a safety net: an event
/// lost without an overrun report would otherwise never be corrected).
pub const RESYNC: Duration = Duration::from_secs(60);

/// The interface group of pod ends (`ip link show group 1835951476`, "mnet"): a DEL removes a
/// pod's ports in one request ([`delete_group`]), which the kernel does in one batch — one by
/// one, each costs tens of milliseconds (an RCU grace period), 20 s for a pod with a thousand.
pub const PORT_GROUP: u32 = 0x6d6e_6574;

/// Deletes every interface of group [`PORT_GROUP`] in the namespace `h` is in (none: fine).
///
/// # Errors
/// Netlink refuses.
pub async fn delete_group(h: &Handle) -> Result<(), rtnetlink::Error> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::Group(PORT_GROUP));
    match h.link().del_with_message(msg).execute().await {
        Err(e) if links::errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

/// MTU of node ends: the largest a veth takes, so that only the pod end's MTU counts.
pub const NODE_END_MTU: u32 = 65535;

/// `htons(ETH_P_ALL)` as tc's filter protocol field wants it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

/// Priority of meshnet's patch filter on a node end.
const PATCH_PRIO: u16 = 1;

/// The daemon's own namespace (the node's), as a path the namespace helpers open.
pub const NODE_NETNS: &str = "/proc/self/ns/net";

/// Name of the node-side device that carries link (namespace, uid) to another node (its vxlan
/// device): `mx` and 12 hex digits of the link hash folded to 48 bits, as [`node_end_name`].
pub fn device_name(namespace: &str, uid: i64) -> String {
    node_side_name("mx", meshnet_wire::table::link_hash(namespace, uid))
}

/// `prefix` and 12 hex digits of `h` folded to 48 bits: 14 bytes, within the kernel's 15.
fn node_side_name(prefix: &str, h: u64) -> String {
    format!("{prefix}{:012x}", (h ^ (h >> 48)) & 0xffff_ffff_ffff)
}

/// Name of the node-side TAP that the gRPC wire reads and writes for link (namespace, uid):
/// `mt` and the same 12 hex digits as [`device_name`].
pub fn wire_tap_name(namespace: &str, uid: i64) -> String {
    node_side_name("mt", meshnet_wire::table::link_hash(namespace, uid))
}

/// A pod's port: the pod end as declared, and the name of its node end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// Alias of both ends: `meshnet|NS|UID|port|SANDBOX` ([`port_alias`]).
    pub alias: String,
    pub end: EndSpec,
    /// The pod end's MTU (`None`: the kernel's default).
    pub mtu: Option<u32>,
    /// Name of the node end ([`node_end_name`]).
    pub node: String,
}

/// The alias of a port: the link identity and the pod's sandbox, nothing about the far end, so
/// that the port stays whatever becomes of the far end.
pub fn port_alias(namespace: &str, uid: i64, container_id: &str) -> String {
    links::alias(namespace, uid, "port", crate::plan::short(container_id))
}

/// Name of a port's node end: `mp` and 12 hex digits of FNV-1a-64 over (namespace, `0xff`, uid
/// little-endian, `0xff`, pod name), folded to 48 bits — 14 bytes. Both ends of a same-node link
/// are on one node, hence the pod name; a restarted daemon and a recreated pod find the same name.
pub fn node_end_name(namespace: &str, uid: i64, pod: &str) -> String {
    let link = meshnet_wire::table::link_hash(namespace, uid);
    node_side_name(
        "mp",
        meshnet_wire::table::fnv1a_extend(link, [0xff].into_iter().chain(pod.bytes())),
    )
}

/// A netlink error on interface `ifname` of the node's namespace.
pub(crate) fn node_err(op: &'static str, ifname: &str, source: rtnetlink::Error) -> LinkError {
    LinkError::Netlink {
        op,
        ifname: ifname.to_string(),
        netns: "the node".into(),
        source,
    }
}

/// Interface `name` of the node's namespace, if it exists: from the run's snapshot `snap` if
/// it holds a dump of the node's namespace that can answer ([`Snapshot::take`]), else the
/// kernel.
pub(crate) async fn node_side(
    node: &Handle,
    snap: &Snapshot,
    name: &str,
) -> Result<Option<IfaceState>, LinkError> {
    if let Some(known) = snap.take(Path::new(NODE_NETNS), name) {
        return Ok(known);
    }
    links::get_iface(node, name)
        .await
        .map_err(|e| node_err("look up", name, e))
}

/// Turns IPv6 off on node-side interface `name` (`what` it is, for the log): no link-local
/// address, no ND/MLD of its own. Best effort: in a container /proc/sys may be read-only, and the
/// interface works without it.
pub(crate) fn disable_ipv6(name: &str, what: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(%path, error = %e, "cannot disable IPv6 on {what}");
    }
}

/// Makes (or in [`Mode::Verify`], checks) a port: the pair, the pod end configured. `node` is a
/// handle in the node's namespace. A pod end of the port's name that is meshnet's but not this
/// port's (an old-style link end from before ports, a stale sandbox's) is replaced once.
///
/// # Errors
/// A name is taken by an interface meshnet did not make, a namespace cannot be entered, or
/// netlink refuses.
pub async fn ensure_port(
    node: &Handle,
    snap: &Snapshot,
    spec: &PortSpec,
    mode: Mode,
) -> Result<Outcome, LinkError> {
    let end = &spec.end;
    let pod = Kernel::lookup_in(snap, &end.netns, &end.ifname).await?;
    let host = node_side(node, snap, &spec.node).await?;
    if let (Some(p), Some(h)) = (&pod, &host)
        && p.kind.as_deref() == Some("veth")
        && p.alias.as_deref() == Some(spec.alias.as_str())
        && p.link == Some(h.index)
    {
        let named = h.alias.as_deref() == Some(spec.alias.as_str());
        return match (end_drift(end, p, spec.mtu), mode) {
            (None, mode) => {
                // A node end made before ports named theirs (the kernel ignored the alias).
                let rename = mode == Mode::Repair && !named;
                if rename {
                    name_node_end(node, spec).await?;
                }
                // Its patch looks the node end up next.
                snap.confirm(Path::new(NODE_NETNS), &spec.node);
                Ok(if rename {
                    Outcome::Repaired
                } else {
                    Outcome::Unchanged
                })
            }
            (Some(detail), Mode::Verify) => Err(LinkError::Drift { detail }),
            (Some(_), Mode::Repair) => {
                Kernel::configure(end, &spec.alias, spec.mtu).await?;
                Ok(Outcome::Repaired)
            }
        };
    }
    if mode == Mode::Verify {
        return Err(match &pod {
            Some(p) => LinkError::NotThisLink {
                ifname: end.ifname.clone(),
                netns: end.netns.display().to_string(),
                kind: if p.alias.as_deref() == Some(spec.alias.as_str()) {
                    "port (its node end is missing)"
                } else {
                    "port"
                },
            },
            None => LinkError::Missing {
                ifname: end.ifname.clone(),
                netns: end.netns.display().to_string(),
            },
        });
    }
    if let Some(p) = &pod {
        if !is_owned(p) {
            return Err(LinkError::Occupied {
                ifname: end.ifname.clone(),
                netns: end.netns.display().to_string(),
            });
        }
        Kernel::delete_in(&end.netns, &end.ifname).await?;
    }
    if let Some(h) = &host {
        if !is_owned(h) {
            return Err(LinkError::Occupied {
                ifname: spec.node.clone(),
                netns: "the node".into(),
            });
        }
        match node.link().del(h.index).execute().await {
            Err(e) if links::errno(&e) != Some(libc::ENODEV) => {
                return Err(node_err("delete stale node end", &spec.node, e));
            }
            _ => {}
        }
    }
    create_pair(node, spec).await?;
    if let Err(e) = Kernel::configure(end, &spec.alias, spec.mtu).await {
        if let Err(e2) = Kernel::delete_in(&end.netns, &end.ifname).await {
            tracing::warn!(error = %e2, "cleanup of a half-built port failed");
        }
        return Err(e);
    }
    Ok(Outcome::Created)
}

/// The pair: node end down (no carrier until patched), pod end in the pod's namespace.
async fn create_pair(node: &Handle, spec: &PortSpec) -> Result<(), LinkError> {
    let end = &spec.end;
    let pod_ns = netns::open(&end.netns)?;
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(end.ifname.clone())
        .alias(spec.alias.clone())
        .append_extra_attribute(LinkAttribute::Group(PORT_GROUP))
        .setns_by_fd(pod_ns.as_raw_fd());
    if let Some(m) = spec.mtu {
        peer = peer.mtu(m);
    }
    if let Some(mac) = end.mac {
        peer = peer.address(mac.0.to_vec());
    }
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(spec.node.clone())
        .alias(spec.alias.clone())
        .mtu(NODE_END_MTU)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    let r = node.link().add(msg.build()).execute().await;
    // The namespace fd must outlive the request.
    drop(pod_ns);
    r.map_err(|e| LinkError::Netlink {
        op: "create port",
        ifname: format!("{} / {}", spec.node, end.ifname),
        netns: end.netns.display().to_string(),
        source: e,
    })?;
    if let Err(e) = name_node_end(node, spec).await {
        // Deleting the pod end takes the pair.
        if let Err(e2) = Kernel::delete_in(&end.netns, &end.ifname).await {
            tracing::warn!(error = %e2, "cleanup of a half-built port failed");
        }
        return Err(e);
    }
    disable_ipv6(&spec.node, "a node end");
    Ok(())
}

/// Gives the node end its port's alias. The kernel takes an alias only when it changes a link,
/// not when it creates one, so [`create_pair`]'s is ignored: without this the node end would not
/// be known as meshnet's (a run's snapshot reads the patches of meshnet's interfaces only, and a
/// node end left over would be "occupied").
async fn name_node_end(node: &Handle, spec: &PortSpec) -> Result<(), LinkError> {
    let msg = LinkUnspec::new_with_name(&spec.node).alias(spec.alias.clone());
    node.link()
        .set(msg.build())
        .execute()
        .await
        .map_err(|e| node_err("name", &spec.node, e))
}

/// Where the patch filter on node end `index` sends frames (`None`: no filter of ours).
///
/// # Errors
/// Netlink refuses the dump.
pub async fn patched_to(node: &Handle, index: u32) -> Result<Option<u32>, rtnetlink::Error> {
    let mut filters = node
        .traffic_filter(i32::try_from(index).unwrap_or(i32::MAX))
        .get()
        .ingress()
        .execute();
    let mut target = None;
    while let Some(f) = filters.try_next().await? {
        let mirrored = f
            .attributes
            .iter()
            .filter_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Action(actions)) => Some(actions),
                _ => None,
            })
            .flatten()
            .flat_map(|act| &act.attributes)
            .filter_map(|a| match a {
                TcActionAttribute::Options(o) => Some(o),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.ifindex),
                _ => None,
            })
            .next_back();
        target = mirrored.or(target);
    }
    Ok(target)
}

/// Patches node end `from` to `to` (frames entering `from` leave through `to`), unless it
/// already is (as the run's snapshot `snap` read it, if it did, else as the kernel says);
/// `Verify` only reports. Returns whether it changed anything.
///
/// # Errors
/// Netlink refuses; in `Verify`, the patch is not in place.
pub async fn patch(
    node: &Handle,
    snap: &Snapshot,
    from: &IfaceState,
    from_name: &str,
    to: u32,
    mode: Mode,
) -> Result<bool, LinkError> {
    let current = match snap.take_patch(Path::new(NODE_NETNS), from.index) {
        Some(known) => known,
        None => patched_to(node, from.index)
            .await
            .map_err(|e| node_err("read the patch of", from_name, e))?,
    };
    if current == Some(to) {
        return Ok(false);
    }
    if mode == Mode::Verify {
        return Err(LinkError::Drift {
            detail: format!("node end {from_name} is not patched to its far end"),
        });
    }
    let idx = i32::try_from(from.index).unwrap_or(i32::MAX);
    let mut q = node.qdisc().add(idx).ingress();
    q = q.handle(0xffff, 0);
    match q.execute().await {
        Err(e) if links::errno(&e) != Some(libc::EEXIST) => {
            return Err(node_err("add the ingress qdisc to", from_name, e));
        }
        _ => {}
    }
    if current.is_some() {
        // No priority: the whole ingress chain of this node end (meshnet's alone) goes.
        node.traffic_filter(idx)
            .del()
            .ingress()
            .execute()
            .await
            .map_err(|e| node_err("remove the old patch of", from_name, e))?;
    }
    node.traffic_filter(idx)
        .add()
        .ingress()
        .priority(PATCH_PRIO)
        .protocol(ETH_P_ALL_BE)
        .redirect(to)
        .map_err(|e| node_err("build the patch of", from_name, e))?
        .execute()
        .await
        .map_err(|e| node_err("patch", from_name, e))?;
    Ok(true)
}

/// Patches two node-side interfaces to each other (both must exist): two ports' node ends, or
/// a port's node end and the device that carries its link.
///
/// # Errors
/// An interface is missing, or [`patch`] fails.
pub async fn ensure_patch(
    node: &Handle,
    snap: &Snapshot,
    a: &str,
    b: &str,
    mode: Mode,
) -> Result<Outcome, LinkError> {
    let mut ends = Vec::with_capacity(2);
    for n in [a, b] {
        let st = node_side(node, snap, n)
            .await?
            .ok_or_else(|| LinkError::Missing {
                ifname: n.to_string(),
                netns: "the node".into(),
            })?;
        ends.push(st);
    }
    let ab = patch(node, snap, &ends[0], a, ends[1].index, mode).await?;
    let ba = patch(node, snap, &ends[1], b, ends[0].index, mode).await?;
    Ok(if ab || ba {
        Outcome::Repaired
    } else {
        Outcome::Unchanged
    })
}

/// What the patchbay keeps one node end at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cable {
    /// The node end.
    pub node: String,
    /// Its pod end (namespace, interface): where the router's admin state is read.
    pub pod: (PathBuf, String),
    /// The far side it is patched to (`None`: nothing yet, carrier off).
    pub far: Option<Far>,
    /// `state: down` declared on the link: carrier off.
    pub pulled: bool,
}

/// What a node end is patched to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Far {
    /// Another port's node end on this node (its own [`Cable`] in the table).
    Port(String),
    /// A device in the node's namespace that carries the link to another node (a vxlan
    /// device): the far end is there while it exists and is up.
    Device(String),
    /// The gRPC wire: the far end is there while the wire's half is bound (what the wire
    /// reports through [`Patchbay::wire_carrier`]), and its node-side TAP, if it has one, is
    /// patched to the node end.
    Wire,
}

/// What the wire said about a half whose port is the node end it is keyed by.
#[derive(Debug, Clone, Default)]
struct WireState {
    /// The link the half is for.
    key: (String, i64),
    up: bool,
    /// The node-side TAP patched to the node end (`None`: the wire reads the node end itself).
    device: Option<String>,
}

/// Keeps node ends' admin state (their pods' carrier) as the far ends are (module docs).
pub struct Patchbay {
    table: watch::Sender<Vec<Cable>>,
    wires: Arc<std::sync::Mutex<HashMap<String, WireState>>>,
    on_shut: Arc<std::sync::Mutex<Option<ShutHook>>>,
    /// Node ends of same-node ports held down because the far router shut its port, as of the
    /// last evaluation (what the link's status says).
    far_shut: Arc<std::sync::Mutex<HashSet<String>>>,
    checks: watch::Sender<Option<Arc<Check>>>,
    /// Full reads of the node's links so far.
    dumps: Arc<AtomicU64>,
    /// The node's patches as last read, kept from the same events ([`PatchMemo`]).
    memo: Arc<PatchMemo>,
}

/// A dump of the node's namespace made elsewhere (the reconciler's), to check the patchbay's
/// table against ([`Patchbay::check`]).
#[derive(Debug)]
struct Check {
    /// When the dump began: a name with an event since then is not compared (either may be
    /// the newer).
    at: std::time::Instant,
    links: HashMap<String, NodeEnd>,
}

impl std::fmt::Debug for Patchbay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patchbay").finish_non_exhaustive()
    }
}

/// Told when the router behind a wire half's port shuts it (`true`) or opens it again: the
/// half is then unbound from its peer, so the far port loses carrier too.
pub type ShutHook = Box<dyn Fn(&(String, i64), bool) + Send + Sync>;

impl Patchbay {
    /// Starts the patchbay in the calling thread's namespace (the node's): a netlink socket
    /// subscribed to link events, and a thread of its own that runs the passes. The thread ends
    /// when the patchbay is dropped. `changed` is notified when the set of ports whose far
    /// router shut its port changes ([`Patchbay::far_shut`]).
    ///
    /// The passes run on their own thread, not as a task of the daemon's runtime: a port whose
    /// wire blinked must come back after its hold time, and on a node whose wire is flooded the
    /// runtime's one thread is busy with batches for seconds at a time (a pass is a few netlink
    /// round trips, each a wake-up behind them). The hook set by [`Patchbay::on_shut`] is called
    /// in the context of the runtime that called `start`, so what it spawns runs there.
    ///
    /// # Errors
    /// The thread cannot be started or the netlink sockets cannot be opened.
    pub fn start(changed: Arc<Notify>) -> std::io::Result<Arc<Self>> {
        let (table, rx) = watch::channel(Vec::new());
        let wires = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let on_shut = Arc::new(std::sync::Mutex::new(None));
        let far_shut = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let (checks, checks_rx) = watch::channel(None);
        let dumps = Arc::new(AtomicU64::new(0));
        let memo = Arc::new(PatchMemo::default());
        let shared = Shared {
            checks: checks_rx,
            dumps: Arc::clone(&dumps),
            memo: Arc::clone(&memo),
            wires: Arc::clone(&wires),
            on_shut: Arc::clone(&on_shut),
            far_shut: (Arc::clone(&far_shut), changed),
            caller: tokio::runtime::Handle::try_current().ok(),
        };
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("patchbay".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    // The socket registers with the runtime it is made in: this one.
                    let (mut conn, handle, events) = match rtnetlink::new_multicast_connection(&[
                        rtnetlink::MulticastGroup::Link,
                        rtnetlink::MulticastGroup::Tc,
                    ]) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    {
                        use rtnetlink::sys::AsyncSocket as _;
                        events_buffer(conn.socket_mut().socket_ref());
                    }
                    let _ = ready.send(Ok(()));
                    tokio::spawn(conn);
                    run(handle, rx, events, shared).await;
                });
            })?;
        // A wait of one socket's creation.
        started.recv().map_err(|_| {
            std::io::Error::other("the patchbay's thread ended before it started")
        })??;
        Ok(Arc::new(Patchbay {
            table,
            wires,
            on_shut,
            far_shut,
            checks,
            dumps,
            memo,
        }))
    }

    /// The node's patches as the patchbay's events leave them known, for the full runs' reads.
    pub fn patch_memo(&self) -> Arc<PatchMemo> {
        Arc::clone(&self.memo)
    }

    /// Hands the patchbay a dump of the node's namespace that began at `at` (the reconciler's),
    /// to check its table against in place of a dump of its own; a disagreement makes it read
    /// the node's links again. Cheap: the comparison runs on the patchbay's thread.
    pub fn check(&self, at: std::time::Instant, ifaces: &HashMap<String, IfaceState>) {
        let links = ifaces
            .iter()
            .map(|(name, st)| {
                let end = NodeEnd {
                    index: st.index,
                    up: st.up,
                    lower_up: st.lower_up,
                };
                (name.clone(), end)
            })
            .collect();
        self.checks
            .send_replace(Some(Arc::new(Check { at, links })));
    }

    /// How many times the patchbay has read the node's links in full (at start, after an
    /// overrun or a failed check, and when no check came for [`RESYNC`]).
    pub fn dumps(&self) -> u64 {
        self.dumps.load(Ordering::Relaxed)
    }

    /// Whether the same-node port whose node end is `node_end` has its carrier off because the
    /// router at the far port shut it.
    pub fn far_shut(&self, node_end: &str) -> bool {
        self.far_shut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(node_end)
    }

    /// Installs what is told when a wire half's router shuts or opens its port.
    pub fn on_shut(&self, hook: ShutHook) {
        *self
            .on_shut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hook);
    }

    fn wires(&self) -> std::sync::MutexGuard<'_, HashMap<String, WireState>> {
        self.wires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A wire half was attached to the port whose node end is `node_end`, through `device` (its
    /// node-side TAP) or the node end itself (`None`); carrier off until the wire says.
    pub fn wire_attached(&self, node_end: &str, device: Option<String>, key: (String, i64)) {
        self.wires().insert(
            node_end.to_string(),
            WireState {
                key,
                up: false,
                device,
            },
        );
        self.table.send_modify(|_| {});
    }

    /// The wire's verdict on the half at `node_end`: bound to the peer's half (`up`) or not.
    /// Called from the wire's tasks; cheap (the patchbay task applies it).
    pub fn wire_carrier(&self, node_end: &str, up: bool) {
        let changed = match self.wires().get_mut(node_end) {
            Some(w) if w.up != up => {
                w.up = up;
                true
            }
            _ => false,
        };
        if changed {
            self.table.send_modify(|_| {});
        }
    }

    /// The cables to keep, replacing the previous table (node ends not in it are left as they
    /// are). Every call re-evaluates, so a run that re-patched a far end is seen at once.
    pub fn set(&self, cables: Vec<Cable>) {
        self.table.send_replace(cables);
    }
}

type Events = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// What the patchbay's thread shares with its [`Patchbay`] handle.
struct Shared {
    checks: watch::Receiver<Option<Arc<Check>>>,
    dumps: Arc<AtomicU64>,
    memo: Arc<PatchMemo>,
    wires: Arc<std::sync::Mutex<HashMap<String, WireState>>>,
    on_shut: Arc<std::sync::Mutex<Option<ShutHook>>>,
    far_shut: (Arc<std::sync::Mutex<HashSet<String>>>, Arc<Notify>),
    /// The runtime that started the patchbay, in whose context the shut hook runs.
    caller: Option<tokio::runtime::Handle>,
}

async fn run(h: Handle, mut table: watch::Receiver<Vec<Cable>>, mut events: Events, sh: Shared) {
    let Shared {
        mut checks,
        dumps,
        memo,
        wires,
        on_shut,
        far_shut: (far_shut, far_shut_changed),
        caller,
    } = sh;
    let mut bay = Bay {
        live: wires,
        memo,
        ..Bay::default()
    };
    let mut next: Option<Instant> = None;
    // The node's links are followed from their events; a full dump at start, when the event
    // socket overran, when a check disagrees, and after RESYNC without a check as a safety
    // net. (A new table needs none: the node ends it names were made before it was handed
    // over, and their events are on their way.)
    let mut dump_due = true;
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
    let mut checks_open = true;
    loop {
        let wake = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = table.changed() => if changed.is_err() { return },
            ev = events.next() => match ev {
                None => {
                    tracing::warn!("node link events closed; carrier follows reconcile runs only");
                    events = futures::channel::mpsc::unbounded().1;
                    bay.memo.blind();
                    dump_due = true;
                }
                Some((m, _)) => {
                    // A burst (a namespace going away) is one evaluation; traffic-control
                    // events alone (the patches' memo) need none.
                    let mut link = bay.apply(m, &mut dump_due);
                    while let Ok((m, _)) = events.try_recv() {
                        link |= bay.apply(m, &mut dump_due);
                    }
                    if !link && !dump_due && next.is_none_or(|t| t > Instant::now()) {
                        continue;
                    }
                }
            },
            _ = resync.tick() => dump_due = true,
            changed = checks.changed(), if checks_open => {
                checks_open = changed.is_ok();
                let check = checks.borrow_and_update().clone();
                if let Some(c) = check {
                    resync.reset();
                    // Events already queued are older than the check: applied first, they do
                    // not count as a disagreement.
                    let mut applied = false;
                    while let Ok((m, _)) = events.try_recv() {
                        applied |= bay.apply(m, &mut dump_due);
                    }
                    if let Some(name) = bay.links.disagrees(&c) {
                        tracing::info!(interface = %name, "patchbay: the node's links are not as its events said; reading them again");
                        dump_due = true;
                    } else if !applied && !dump_due && next.is_none_or(|t| t > Instant::now()) {
                        // Nothing new: no pass is due.
                        continue;
                    }
                }
            }
            () = wake => {}
        }
        if dump_due {
            dumps.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("meshnet_patchbay_dumps_total").increment(1);
            match NodeLinks::dump(&h).await {
                Ok(l) => {
                    bay.links = l;
                    dump_due = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "patchbay: cannot read the node's links");
                    next = Some(Instant::now() + POLL);
                    continue;
                }
            }
        }
        let cables = table.borrow_and_update().clone();
        next = bay.evaluate(&h, &cables).await;
        if !bay.shut_changes.is_empty() {
            let hook = on_shut
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _in_caller = caller.as_ref().map(tokio::runtime::Handle::enter);
            for (key, shut) in bay.shut_changes.drain(..) {
                tracing::info!(link = ?key, shut, "router shut or opened a wire port: half unbound or bound");
                if let Some(f) = hook.as_ref() {
                    f(&key, shut);
                }
            }
        }
        {
            let mut told = far_shut
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *told != bay.far_shut {
                told.clone_from(&bay.far_shut);
                far_shut_changed.notify_one();
            }
        }
    }
}

/// A node end as the node's link dump shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeEnd {
    index: u32,
    up: bool,
    /// Carrier: for a veth node end that is up, whether the router keeps its pod end up.
    lower_up: bool,
}

/// Every interface of the node's namespace by name, as of the last dump and the link events
/// since. Following events instead of dumping the namespace at every one keeps a burst of N
/// port changes O(N), not O(N²), with thousands of node ends and wire TAPs.
#[derive(Debug, Default)]
struct NodeLinks {
    by_name: HashMap<String, NodeEnd>,
    names: HashMap<u32, String>,
    /// When an event last changed each name (since the dump this table began with).
    evented: HashMap<String, std::time::Instant>,
    /// When the dump this table began with was asked for: a check from before it says nothing
    /// new.
    since: Option<std::time::Instant>,
}

impl NodeLinks {
    /// One link dump of the namespace `h` is in.
    async fn dump(h: &Handle) -> Result<Self, rtnetlink::Error> {
        let mut out = NodeLinks {
            since: Some(std::time::Instant::now()),
            ..NodeLinks::default()
        };
        let mut links = links::lean_links(h).execute();
        while let Some(msg) = links.try_next().await? {
            out.put(&msg);
        }
        Ok(out)
    }

    /// Records one link message; returns its name.
    fn put(&mut self, msg: &LinkMessage) -> Option<String> {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })?;
        let index = msg.header.index;
        // A renamed interface leaves its old name.
        if let Some(old) = self.names.insert(index, name.clone())
            && old != name
        {
            self.by_name.remove(&old);
        }
        self.by_name.insert(
            name.clone(),
            NodeEnd {
                index,
                up: msg.header.flags.contains(LinkFlags::Up),
                lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            },
        );
        Some(name)
    }

    /// Applies one link event; `true` when events were lost (the socket overran) and only a
    /// new dump tells the truth.
    fn apply(&mut self, m: rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>) -> bool {
        use rtnetlink::packet_core::NetlinkPayload;
        let now = std::time::Instant::now();
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                if let Some(old) = self.names.get(&l.header.index) {
                    self.evented.insert(old.clone(), now);
                }
                if let Some(name) = self.put(&l) {
                    self.evented.insert(name, now);
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                if let Some(name) = self.names.remove(&l.header.index) {
                    self.by_name.remove(&name);
                    self.evented.insert(name, now);
                }
            }
            NetlinkPayload::Overrun(_) => return true,
            _ => {}
        }
        false
    }

    fn get(&self, name: &str) -> Option<&NodeEnd> {
        self.by_name.get(name)
    }

    /// The first name on which this table and the dump `c` disagree, among the names no event
    /// changed since the dump began (for those, the table may be the newer, or an event on its
    /// way will bring it up to date); `None` if they agree, or if `c` is older than the table's
    /// own dump. Forgets events older than `c`.
    fn disagrees(&mut self, c: &Check) -> Option<String> {
        if self.since.is_some_and(|t| c.at < t) {
            return None;
        }
        self.evented.retain(|_, t| *t >= c.at);
        let settled = |n: &String| !self.evented.contains_key(n);
        c.links
            .iter()
            .filter(|(n, _)| settled(n))
            .find(|(n, e)| self.by_name.get(*n) != Some(*e))
            .map(|(n, _)| n.clone())
            .or_else(|| {
                self.by_name
                    .keys()
                    .find(|n| settled(n) && !c.links.contains_key(*n))
                    .cloned()
            })
    }
}

#[derive(Debug, Default)]
struct Bay {
    /// The node's interfaces.
    links: NodeLinks,
    /// Pairs of node-side interfaces (by ifindex, which the kernel does not reuse) found patched
    /// to each other; a rebuilt far end has a new ifindex, so a new pair is checked again.
    patched: HashSet<(u32, u32)>,
    /// When each node end went down.
    down_since: HashMap<String, Instant>,
    /// Node ends up at the last evaluation.
    was_up: HashSet<String>,
    /// The wire's halves by node end, as they are now (what [`Patchbay::wire_carrier`]
    /// updates): each evaluation decides from a copy, and checks a switch against this before
    /// it is made.
    live: Arc<std::sync::Mutex<HashMap<String, WireState>>>,
    /// Wire ports whose router has shut them, as last told.
    shut: HashMap<String, bool>,
    /// Shut/opened wire ports found by the last evaluation, to tell.
    shut_changes: Vec<((String, i64), bool)>,
    /// Node ends of same-node ports whose far router has its port shut.
    far_shut: HashSet<String>,
    /// The node's patches as last read, told of traffic-control events.
    memo: Arc<PatchMemo>,
}

impl Bay {
    /// Applies one event of the node's namespace: its link to the table, its traffic control
    /// to the patches' memo. Returns whether it was not a traffic-control event (one the table
    /// may change for); sets `lost` when events were lost (the socket overran) and only a new
    /// dump tells the truth.
    fn apply(
        &mut self,
        m: rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        lost: &mut bool,
    ) -> bool {
        use rtnetlink::packet_core::NetlinkPayload;
        match &m.payload {
            NetlinkPayload::InnerMessage(r) if self.memo.event(r) => return false,
            NetlinkPayload::Overrun(_) => self.memo.lost(),
            _ => {}
        }
        *lost |= self.links.apply(m);
        true
    }
}

/// Gives the patchbay's event socket room for a burst: a traffic-control event takes a page
/// of the receive buffer, and a pod with a thousand ports sends a few thousand at once (an
/// overrun costs a dump of the node's links and every patch reading). Forced past
/// `net.core.rmem_max` where the daemon may (it runs privileged); the default otherwise.
fn events_buffer(sock: &rtnetlink::sys::Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    const SIZE: usize = 8 << 20;
    if let Err(e) = setsockopt(sock, sockopt::RcvBufForce, &SIZE)
        .or_else(|_| setsockopt(sock, sockopt::RcvBuf, &SIZE))
    {
        tracing::debug!(error = %e, "patchbay: event buffer left at its default");
    }
}

/// What one evaluation decided for a node end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Up,
    Down,
    /// Wants up, but the hold time is not over.
    Wait,
    Keep,
}

/// The pure rule: `want` is whether the node end should carry, `up` whether it does,
/// `held_for` how long it has been down.
pub fn decide(want: bool, up: bool, held_for: Option<Duration>) -> Switch {
    match (want, up) {
        (true, true) | (false, false) => Switch::Keep,
        (false, true) => Switch::Down,
        (true, false) if held_for.is_some_and(|d| d < HOLD) => Switch::Wait,
        (true, false) => Switch::Up,
    }
}

impl Bay {
    /// One pass over the table; returns when to look again (hold times, polled pod ends).
    async fn evaluate(&mut self, h: &Handle, cables: &[Cable]) -> Option<Instant> {
        let mut wanted: HashSet<&str> = cables.iter().map(|c| c.node.as_str()).collect();
        let wires = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        wanted.extend(cables.iter().filter_map(|c| match &c.far {
            Some(Far::Device(d)) => Some(d.as_str()),
            Some(Far::Wire) => wires.get(&c.node).and_then(|w| w.device.as_deref()),
            _ => None,
        }));
        let ends: HashMap<String, NodeEnd> = wanted
            .iter()
            .filter_map(|n| self.links.get(n).map(|e| ((*n).to_string(), *e)))
            .collect();
        self.patched
            .retain(|(a, b)| self.links.names.contains_key(a) && self.links.names.contains_key(b));
        let by_node: HashMap<&str, &Cable> = cables.iter().map(|c| (c.node.as_str(), c)).collect();
        let now = Instant::now();
        // A node end that was up and is now down (its far end's pod or node end vanished,
        // the router shut it) is held from now; one first seen down (new, or at daemon start)
        // is not held.
        self.down_since
            .retain(|n, _| ends.get(n).is_some_and(|e| !e.up));
        for (n, e) in &ends {
            if !e.up && self.was_up.contains(n) {
                self.down_since.entry(n.clone()).or_insert(now);
            }
        }
        self.was_up = ends
            .iter()
            .filter(|(_, e)| e.up)
            .map(|(n, _)| n.clone())
            .collect();
        let mut next: Option<Instant> = None;
        let soon = |t: Instant, next: &mut Option<Instant>| {
            *next = Some(next.map_or(t, |n| n.min(t)));
        };
        // Pod ends whose node end is down: their router's state is read directly, several at
        // once (each read is a thread in the pod's namespace).
        let to_read: HashMap<&str, &(PathBuf, String)> = cables
            .iter()
            .filter(|c| !c.pulled && ends.contains_key(&c.node))
            .filter_map(|c| match &c.far {
                Some(Far::Port(f)) => match (ends.get(f), by_node.get(f.as_str())) {
                    (Some(fe), Some(fc)) if !fe.up => Some((f.as_str(), &fc.pod)),
                    _ => None,
                },
                Some(Far::Wire)
                    if wires.contains_key(&c.node) && ends.get(&c.node).is_some_and(|e| !e.up) =>
                {
                    Some((c.node.as_str(), &c.pod))
                }
                _ => None,
            })
            .collect();
        let polled: HashMap<&str, Option<bool>> = futures::stream::iter(to_read)
            .map(|(n, (ns, ifname))| async move { (n, pod_end_state(ns, ifname).await) })
            .buffer_unordered(POD_READS)
            .collect()
            .await;
        if !polled.is_empty() {
            soon(now + POLL, &mut next);
        }
        let mut decided: Vec<(&Cable, NodeEnd, Switch)> = Vec::with_capacity(cables.len());
        self.far_shut.clear();
        for c in cables {
            let Some(x) = ends.get(&c.node) else { continue };
            let want = match (&c.far, c.pulled) {
                (None, _) | (_, true) => false,
                (Some(Far::Port(f)), false) => match (ends.get(f), by_node.get(f.as_str())) {
                    (Some(fe), Some(_)) => {
                        // A pod end that cannot be read (gone): off.
                        let far_on = if fe.up {
                            fe.lower_up
                        } else {
                            polled.get(f.as_str()).copied().flatten() == Some(true)
                        };
                        if !far_on {
                            self.far_shut.insert(c.node.clone());
                        }
                        far_on && (x.up || self.patched_both(h, x.index, fe.index).await)
                    }
                    _ => false,
                },
                (Some(Far::Device(d)), false) => match ends.get(d) {
                    Some(de) => de.up && (x.up || self.patched_both(h, x.index, de.index).await),
                    None => false,
                },
                (Some(Far::Wire), false) => match wires.get(&c.node) {
                    Some(w) => {
                        // The router behind this port shut it: the half is unbound (the far
                        // port loses carrier too); opened again: bound again.
                        // A pod end that cannot be read (its namespace going away) says nothing:
                        // a gone port is not a shut one.
                        let pod_on = if x.up {
                            Some(x.lower_up)
                        } else {
                            polled.get(c.node.as_str()).copied().flatten()
                        };
                        if let Some(on) = pod_on
                            && self.shut.get(&c.node).copied().unwrap_or(false) == on
                        {
                            self.shut.insert(c.node.clone(), !on);
                            self.shut_changes.push((w.key.clone(), !on));
                        }
                        w.up && match &w.device {
                            None => true,
                            Some(d) => match ends.get(d) {
                                Some(de) => x.up || self.patched_both(h, x.index, de.index).await,
                                None => false,
                            },
                        }
                    }
                    None => false,
                },
            };
            let held = self.down_since.get(&c.node).map(|t| now - *t);
            decided.push((c, *x, decide(want, x.up, held)));
        }
        // Two ports come up together: one whose far end still waits out its hold waits too
        // (else frames it sends would fall into a node end that is down).
        let waiting: HashSet<&str> = decided
            .iter()
            .filter(|(_, _, s)| *s == Switch::Wait)
            .map(|(c, _, _)| c.node.as_str())
            .collect();
        for (c, x, sw) in decided {
            let sw = match (&c.far, sw) {
                (Some(Far::Port(f)), Switch::Up) if waiting.contains(f.as_str()) => Switch::Wait,
                (_, sw) => sw,
            };
            match sw {
                Switch::Keep => {}
                Switch::Wait => {
                    let t = self.down_since.get(&c.node).copied().unwrap_or(now);
                    soon((t + HOLD).max(now + Duration::from_millis(10)), &mut next);
                }
                s @ (Switch::Up | Switch::Down) => {
                    let up = s == Switch::Up;
                    if self.wire_changed(c, &wires) {
                        // Decided from the wire's verdict at the start of this pass, which the
                        // wire has changed since (a slow pass on a loaded node: each switch
                        // and pod-end read is a netlink round trip). Switching now could take
                        // down a port whose wire is back up, and hold it down; the change has
                        // already asked for the next pass, which decides afresh.
                        tracing::info!(node_end = %c.node, up, "port carrier: left to the next pass, the wire changed its verdict meanwhile");
                        continue;
                    }
                    let msg = LinkUnspec::new_with_index(x.index);
                    let msg = if up { msg.up() } else { msg.down() };
                    match h.link().set(msg.build()).execute().await {
                        Ok(()) => {
                            tracing::info!(node_end = %c.node, pod_end = %c.pod.1, carrier = up, "port carrier");
                            if up {
                                self.down_since.remove(&c.node);
                            } else {
                                self.down_since.insert(c.node.clone(), now);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(node_end = %c.node, up, error = %e, "cannot switch a port's carrier");
                            soon(now + POLL, &mut next);
                        }
                    }
                }
            }
        }
        next
    }

    /// Whether cable `c` is a wire port whose wire's verdict is no longer the one in `seen`
    /// (the copy this pass decided from).
    fn wire_changed(&self, c: &Cable, seen: &HashMap<String, WireState>) -> bool {
        matches!(c.far, Some(Far::Wire))
            && self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&c.node)
                .map(|w| w.up)
                != seen.get(&c.node).map(|w| w.up)
    }

    /// Whether node ends `a` and `b` are patched to each other (asked of the kernel until it
    /// says yes once).
    async fn patched_both(&mut self, h: &Handle, a: u32, b: u32) -> bool {
        if self.patched.contains(&(a, b)) {
            return true;
        }
        let yes = matches!(patched_to(h, a).await, Ok(Some(t)) if t == b)
            && matches!(patched_to(h, b).await, Ok(Some(t)) if t == a);
        if yes {
            self.patched.insert((a, b));
        }
        yes
    }
}

/// The router's admin state of its pod end; `None` if the pod end cannot be read.
async fn pod_end_state(netns: &Path, ifname: &str) -> Option<bool> {
    match Kernel::lookup(netns, ifname).await {
        Ok(Some(st)) => Some(st.up),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
