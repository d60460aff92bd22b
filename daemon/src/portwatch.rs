//! Which pod ports their routers have shut: the admin state (`IFF_UP`) of the interfaces in
//! chosen pod namespaces, followed by netlink link events.
//!
//! The beacon ([`crate::beacon`]) tells the far end of a VXLAN link whether this end's port is
//! up; a router's `ip link set eth1 down` (or FRR's `shutdown`) must reach it within a second.
//! Polling every namespace that often would cost a thread and a dump per namespace per poll, so
//! each watched namespace gets one netlink socket subscribed to the link group (`RTNLGRP_LINK`),
//! made in the namespace (a socket stays bound to the namespace it was made in) by a short-lived
//! thread that enters it; a watcher thread in the daemon's own namespace then reads that socket:
//! a dump first, then every event. No thread stays in a pod's namespace. The watcher stops within
//! [`POLL`] of [`PortWatch::retain`] dropping its namespace, or when the namespace goes (the
//! socket then only times out; the reconciler retains it away).
//!
//! Only the admin flag counts: the carrier (`IFF_LOWER_UP`) is what meshnet itself switches off
//! with protodown when the far end is down, and must not feed back into what we tell the far end.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::Notify;

/// How long a watcher's read blocks before it checks whether it should stop.
pub const POLL: Duration = Duration::from_millis(250);
/// `RTNLGRP_LINK` as a group bit.
const RTMGRP_LINK: u32 = 1;

/// The interfaces of one namespace, by name: their admin state.
#[derive(Debug, Default)]
struct Ports {
    /// The first dump is in: a name absent from `up` is a missing port.
    dumped: bool,
    up: HashMap<String, bool>,
    /// Index → name, so a rename or a deletion without a name is applied.
    names: HashMap<u32, String>,
}

impl Ports {
    /// Applies one link message; returns whether an admin state changed (or a port came or
    /// went).
    fn apply(&mut self, msg: &LinkMessage, deleted: bool) -> bool {
        let index = msg.header.index;
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let mut changed = false;
        if let Some(old) = self.names.get(&index).cloned()
            && (deleted || name.as_ref().is_some_and(|n| *n != old))
        {
            self.names.remove(&index);
            changed |= self.up.remove(&old).is_some();
        }
        if deleted {
            return changed;
        }
        let Some(name) = name.or_else(|| self.names.get(&index).cloned()) else {
            return changed;
        };
        let up = msg.header.flags.contains(LinkFlags::Up);
        self.names.insert(index, name.clone());
        changed | (self.up.insert(name, up) != Some(up))
    }
}

#[derive(Debug)]
struct Watched {
    stop: Arc<AtomicBool>,
    ports: Arc<Mutex<Ports>>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PortWatch {
    namespaces: Mutex<HashMap<PathBuf, Watched>>,
    changed: Arc<Notify>,
}

impl PortWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fired when a port of a watched namespace changes admin state, appears or goes.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Watched>> {
        self.namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches exactly the namespaces in `keep`: starts watchers for new ones, stops the rest.
    pub fn retain(&self, keep: &HashSet<PathBuf>) {
        let mut ns = self.lock();
        ns.retain(|p, w| {
            let k = keep.contains(p);
            if !k {
                w.stop.store(true, Ordering::Relaxed);
            }
            k
        });
        for p in keep {
            if ns.contains_key(p) {
                continue;
            }
            let w = Watched {
                stop: Arc::new(AtomicBool::new(false)),
                ports: Arc::new(Mutex::new(Ports::default())),
            };
            let (path, stop, ports, changed) = (
                p.clone(),
                Arc::clone(&w.stop),
                Arc::clone(&w.ports),
                Arc::clone(&self.changed),
            );
            let spawned = std::thread::Builder::new()
                .name("portwatch".into())
                .spawn(move || {
                    if let Err(e) = watch(&path, &stop, &ports, &changed) {
                        tracing::warn!(netns = %path.display(), error = %e,
                            "cannot watch the pod's ports; their state is taken as up");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a port watcher");
                continue;
            }
            ns.insert(p.clone(), w);
        }
    }

    /// Whether the port `ifname` in `netns` is administratively up: `None` until its
    /// namespace's first dump is in (or if it is not watched), `Some(false)` if missing.
    pub fn admin_up(&self, netns: &Path, ifname: &str) -> Option<bool> {
        let ns = self.lock();
        let p = ns
            .get(netns)?
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.dumped.then(|| p.up.get(ifname).copied().unwrap_or(false))
    }
}

impl Drop for PortWatch {
    fn drop(&mut self) {
        for w in self.lock().values() {
            w.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// A netlink socket made inside `netns`, subscribed to link events.
fn socket_in(netns: &Path) -> std::io::Result<Socket> {
    let ns = File::open(netns)?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> std::io::Result<Socket> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            let mut s = Socket::new(NETLINK_ROUTE)?;
            s.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
            Ok(s)
        })?
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

fn watch(
    netns: &Path,
    stop: &AtomicBool,
    ports: &Mutex<Ports>,
    changed: &Notify,
) -> std::io::Result<()> {
    let socket = socket_in(netns)?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, i64::try_from(POLL.as_micros()).unwrap_or(250_000)),
    )?;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            // Events were lost (ENOBUFS): ask for the whole picture again.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                req.header.sequence_number += 1;
                let mut b = vec![0u8; req.buffer_len()];
                req.serialize(&mut b);
                socket.send(&b, 0)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut off = 0;
        let mut any = false;
        let mut p = ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while off < n {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n]) else {
                break;
            };
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    any |= p.apply(&m, false)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    any |= p.apply(&m, true)
                }
                NetlinkPayload::Done(_) => {
                    any |= !p.dumped;
                    p.dumped = true;
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
        drop(p);
        if any {
            changed.notify_one();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Instant;

    fn link(index: u32, name: Option<&str>, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.into()));
        }
        m
    }

    #[test]
    fn ports_follow_new_renamed_and_deleted_links() {
        let mut p = Ports::default();
        assert!(p.apply(&link(5, Some("eth1"), true), false));
        assert!(!p.apply(&link(5, Some("eth1"), true), false), "no change");
        assert!(
            p.apply(&link(5, None, false), false),
            "shut, name from the index"
        );
        assert_eq!(p.up.get("eth1"), Some(&false));
        assert!(p.apply(&link(5, Some("eth9"), false), false), "renamed");
        assert!(!p.up.contains_key("eth1"));
        assert!(p.apply(&link(5, None, false), true), "deleted");
        assert!(p.up.is_empty() && p.names.is_empty());
    }

    /// A real namespace: the dump, then `ip link set … down/up` seen through events.
    #[test]
    fn a_shut_port_is_seen_in_a_real_namespace() {
        let ns = crate::testns::TestNs::new("pw");
        let netns = ns.path();
        let ip = |args: &[&str]| ns.ip(args);
        // No dummy module on every kernel: a veth pair, both ends here.
        ip(&["link", "add", "pw0", "type", "veth", "peer", "name", "pw1"]);
        ip(&["link", "set", "pw0", "up"]);
        let w = PortWatch::new();
        w.retain(&HashSet::from([netns.clone()]));
        let wait = |want: Option<bool>| {
            let t = Instant::now();
            while w.admin_up(&netns, "pw0") != want {
                assert!(t.elapsed() < Duration::from_secs(3), "never {want:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
            t.elapsed()
        };
        wait(Some(true));
        assert_eq!(w.admin_up(&netns, "nothere"), Some(false));
        ip(&["link", "set", "pw0", "down"]);
        let took = wait(Some(false));
        eprintln!("shut seen after {took:?}");
        ip(&["link", "set", "pw0", "up"]);
        wait(Some(true));
        ip(&["link", "del", "pw0"]);
        wait(Some(false));
        w.retain(&HashSet::new());
        assert_eq!(w.admin_up(&netns, "pw0"), None);
    }
}
