//! One namespace's interfaces, read in one link dump and one address dump, parsed in place.
//!
//! [`Snapshot`](super::snapshot::Snapshot) reads every namespace a run looks at this way. Through
//! rtnetlink (its connection) each message of a dump is decoded into owned attribute values —
//! every interface's IPv4 and IPv6 settings included (`IFLA_AF_SPEC`, about a hundred values) —
//! and in a node with thousands of ports that decoding was most of the daemon's CPU at idle,
//! spent by the full resync every 30 s. Here the link messages are walked as buffers
//! (netlink-packet-core's `NetlinkBuffer` and `NlasIterator`) and only the attributes
//! [`IfaceState`] holds are read; address messages, one or two per interface, are decoded as
//! rtnetlink would. The counters are not asked for (`RTEXT_FILTER_SKIP_STATS`). In the node's
//! namespace the ingress filters of meshnet's interfaces are read the same way
//! ([`Reader::patches`]: where each one's patch redirects to), one dump per interface on the
//! same socket, instead of one rtnetlink request per port end in every full run. Synchronous:
//! it runs on the thread that entered the namespace, on a socket of its own.

use std::collections::HashMap;
use std::io;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkFlags, LinkHeader, LinkMessage,
};
use netlink_packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, Parseable,
};
use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};

use super::{IfaceState, add_addresses, split_alias};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
/// `struct ifinfomsg`.
const LINK_HEADER_LEN: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_INFO_KIND: u16 = 1;
const RTM_NEWTFILTER: u16 = 44;
/// `struct tcmsg`.
const TC_HEADER_LEN: usize = 20;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_U32_ACT: u16 = 7;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
/// Offset of the target's ifindex in `struct tc_mirred` (`tc_gen`'s five 32-bit fields, then
/// `eaction`).
const MIRRED_IFINDEX_AT: usize = 24;
/// A dump the kernel marks interrupted (the table changed while it was read) is read again, at
/// most this many times in all; the last one is kept as it is.
const ATTEMPTS: usize = 3;

/// A route netlink socket in the calling thread's namespace, with its receive buffer: one
/// snapshot's dumps (interfaces, addresses, then patches in the node) share it.
pub(crate) struct Reader {
    sock: Socket,
    buf: Vec<u8>,
    /// Sequence number of the last request; answers to an earlier one are skipped.
    seq: u32,
}

impl Reader {
    /// Opens the socket.
    ///
    /// # Errors
    /// The socket cannot be opened.
    pub(crate) fn open() -> io::Result<Self> {
        let sock = Socket::new(NETLINK_ROUTE)?;
        // Only filters the address dump by the kernel; without it the same request works.
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Reader {
            sock,
            buf: vec![0u8; 64 * 1024],
            seq: 0,
        })
    }

    /// The interfaces of the namespace, by name, with their addresses.
    ///
    /// # Errors
    /// The kernel refuses a dump.
    pub(crate) fn interfaces(&mut self) -> io::Result<HashMap<String, IfaceState>> {
        let mut by_index: HashMap<u32, (String, IfaceState)> = HashMap::new();
        let mut links = LinkMessage::default();
        links
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.retried(|r| {
            by_index.clear();
            r.dump(
                RouteNetlinkMessage::GetLink(links.clone()),
                |ty, payload| {
                    if ty == RTM_NEWLINK
                        && let Some((name, st)) = parse_link(payload)
                    {
                        by_index.insert(st.index, (name, st));
                    }
                },
            )
        })?;
        let mut addrs = Vec::new();
        self.retried(|r| {
            addrs.clear();
            r.dump(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                |ty, payload| {
                    if ty == RTM_NEWADDR
                        && let Ok(a) = AddressMessage::parse(payload)
                    {
                        addrs.push(a);
                    }
                },
            )
        })?;
        for a in &addrs {
            if let Some((_, s)) = by_index.get_mut(&a.header.index) {
                add_addresses(s, a);
            }
        }
        Ok(by_index.into_values().collect())
    }

    /// For each interface of `indexes`, where its ingress patch (a u32 filter with a mirred
    /// redirect, [`crate::ports::patch`]) sends frames: `None` when it has none. An interface
    /// whose filters cannot be read (gone meanwhile) is left out, for the caller to read itself.
    pub(crate) fn patches(
        &mut self,
        indexes: impl IntoIterator<Item = u32>,
    ) -> HashMap<u32, Option<u32>> {
        let mut out = HashMap::new();
        for index in indexes {
            let mut msg = TcMessage::default();
            msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
            msg.header.parent = TcHandle {
                major: 0xffff,
                minor: TcHandle::MIN_INGRESS,
            };
            let mut target = None;
            let r = self.dump(RouteNetlinkMessage::GetTrafficFilter(msg), |ty, payload| {
                if ty == RTM_NEWTFILTER
                    && let Some(t) = mirred_target(payload)
                {
                    target = Some(t);
                }
            });
            if r.is_ok() {
                out.insert(index, target);
            }
        }
        out
    }

    /// Runs `dump` (which says whether it was interrupted) until it was not, [`ATTEMPTS`] at
    /// most.
    fn retried(&mut self, mut dump: impl FnMut(&mut Self) -> io::Result<bool>) -> io::Result<()> {
        for _ in 1..ATTEMPTS {
            if !dump(self)? {
                return Ok(());
            }
        }
        dump(self).map(|_| ())
    }

    /// Sends the dump request `msg` and hands each answer's type and payload to `each` until
    /// the dump is done; returns whether the kernel marked it interrupted. Answers to an
    /// earlier request (one that failed half-read) are skipped.
    fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<bool> {
        self.seq = self.seq.wrapping_add(1);
        let mut req =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let mut interrupted = false;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let m = NetlinkBuffer::new_checked(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                off += (m.length() as usize + 3) & !3;
                if m.sequence_number() != self.seq {
                    continue;
                }
                interrupted |= m.flags() & NLM_F_DUMP_INTR != 0;
                match m.message_type() {
                    // Both carry an errno (negative) first; a dump's DONE may carry its error
                    // too.
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = m
                            .payload()
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .map_or(0, i32::from_ne_bytes);
                        if code < 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        if m.message_type() == NLMSG_DONE {
                            return Ok(interrupted);
                        }
                    }
                    ty => each(ty, m.payload()),
                }
            }
        }
    }
}

/// The redirect target of one `RTM_NEWTFILTER` payload, if it is a u32 filter with a mirred
/// action (the last one, as the kernel runs them in order).
fn mirred_target(payload: &[u8]) -> Option<u32> {
    let attrs = || NlasIterator::new(payload.get(TC_HEADER_LEN..).unwrap_or_default()).flatten();
    let u32_filter =
        attrs().any(|a| a.kind() == TCA_KIND && c_string(a.value()).as_deref() == Some("u32"));
    if !u32_filter {
        return None;
    }
    let mut target = None;
    for opts in attrs().filter(|a| a.kind() == TCA_OPTIONS) {
        for acts in NlasIterator::new(opts.value()).flatten() {
            if acts.kind() != TCA_U32_ACT {
                continue;
            }
            // Each action is a nested attribute whose type is its order.
            for act in NlasIterator::new(acts.value()).flatten() {
                let parts = || NlasIterator::new(act.value()).flatten();
                if !parts().any(|a| {
                    a.kind() == TCA_ACT_KIND && c_string(a.value()).as_deref() == Some("mirred")
                }) {
                    continue;
                }
                for o in parts().filter(|a| a.kind() == TCA_ACT_OPTIONS) {
                    for p in NlasIterator::new(o.value()).flatten() {
                        if p.kind() == TCA_MIRRED_PARMS
                            && let Some(i) = p.value().get(MIRRED_IFINDEX_AT..).and_then(u32_of)
                        {
                            target = Some(i);
                        }
                    }
                }
            }
        }
    }
    target
}

/// The name and state of one `RTM_NEWLINK` payload (`None`: malformed, or no name).
fn parse_link(payload: &[u8]) -> Option<(String, IfaceState)> {
    let h = LinkHeader::parse(payload).ok()?;
    let mut s = IfaceState {
        index: h.index,
        kind: None,
        link: None,
        alias: None,
        applied: None,
        mtu: None,
        mac: None,
        up: h.flags.contains(LinkFlags::Up),
        lower_up: h.flags.contains(LinkFlags::LowerUp),
        addrs: Vec::new(),
    };
    let mut name = None;
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..)?) {
        let Ok(nla) = nla else { break };
        let v = nla.value();
        match nla.kind() {
            IFLA_IFNAME => name = c_string(v),
            IFLA_MTU => s.mtu = u32_of(v),
            IFLA_LINK => s.link = u32_of(v),
            IFLA_ADDRESS => s.mac = v.try_into().ok(),
            IFLA_IFALIAS => {
                if let Some(a) = c_string(v) {
                    let (alias, applied) = split_alias(&a);
                    s.alias = Some(alias);
                    s.applied = applied;
                }
            }
            IFLA_LINKINFO => {
                for info in NlasIterator::new(v).flatten() {
                    if info.kind() == IFLA_INFO_KIND {
                        s.kind = c_string(info.value());
                    }
                }
            }
            _ => {}
        }
    }
    Some((name?, s))
}

/// A netlink string attribute: up to its NUL.
fn c_string(v: &[u8]) -> Option<String> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    std::str::from_utf8(&v[..end]).ok().map(str::to_string)
}

fn u32_of(v: &[u8]) -> Option<u32> {
    v.get(..4)?.try_into().ok().map(u32::from_ne_bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::testns::TestNs;

    /// The in-place parse reads what rtnetlink's full decode reads, interface by interface, in
    /// a namespace with every kind of state a run looks at: veth pairs (peer index), an alias
    /// with a record of applied settings, MTU, MAC, up and down, IPv4 and IPv6 addresses, a
    /// bridge (another kind), and many interfaces (several reads per dump).
    #[tokio::test]
    async fn reads_what_rtnetlink_decodes() {
        let ns = TestNs::new("dump");
        ns.ip(&[
            "link", "add", "d0", "mtu", "1400", "type", "veth", "peer", "name", "d0p",
        ]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "d0"]);
        ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "d0"]);
        ns.ip(&[
            "link",
            "set",
            "d0",
            "alias",
            "meshnet|t|1|veth|x|ip=192.0.2.1/24;mtu=1400",
            "up",
        ]);
        ns.ip(&["link", "set", "d0", "address", "02:00:00:00:00:01"]);
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        for i in 0..150 {
            let (x, y) = (format!("x{i}"), format!("y{i}"));
            ns.ip(&["link", "add", &x, "type", "veth", "peer", "name", &y]);
        }
        let path = ns.path();
        let want = crate::netns::in_netns(&path, |h| async move {
            super::super::dump_ifaces(&h).await.unwrap()
        })
        .await
        .unwrap();
        let got = crate::netns::in_netns_sync(&path, || Reader::open()?.interfaces())
            .await
            .unwrap()
            .unwrap();
        let sorted = crate::links::tests::sorted;
        assert_eq!(got.len(), want.len());
        assert!(got.len() > 300, "{} interfaces", got.len());
        for (name, w) in want {
            let g = got.get(&name).cloned().expect(&name);
            assert_eq!(sorted(g), sorted(w), "{name}");
        }
        let d0 = &got["d0"];
        assert_eq!(d0.kind.as_deref(), Some("veth"));
        assert_eq!(d0.alias.as_deref(), Some("meshnet|t|1|veth|x"));
        assert_eq!(d0.applied.as_ref().and_then(|a| a.mtu), Some(1400));
        assert_eq!(d0.link, Some(got["d0p"].index));
        assert_eq!(d0.mtu, Some(1400));
        assert_eq!(d0.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(d0.up && !got["d0p"].up);
        assert_eq!(d0.addrs.len(), 2, "{:?}", d0.addrs);
        assert_eq!(got["br0"].kind.as_deref(), Some("bridge"));
    }

    /// The in-place read of patches finds what rtnetlink's decode finds (`ports::patched_to`):
    /// a pair patched both ways by `ports::patch`, a port end re-patched elsewhere, and an
    /// interface without a filter.
    #[tokio::test]
    async fn reads_patches_as_rtnetlink_decodes_them() {
        use crate::links::{Mode, get_iface, snapshot::Snapshot};
        let ns = TestNs::new("patch");
        ns.ip(&["link", "add", "pa", "type", "veth", "peer", "name", "pb"]);
        ns.ip(&["link", "add", "pc", "type", "veth", "peer", "name", "pd"]);
        let path = ns.path();
        let (want, got, [a, b, c, d]) = crate::netns::in_netns(&path, |h| async move {
            let mut st = Vec::new();
            for n in ["pa", "pb", "pc", "pd"] {
                st.push(get_iface(&h, n).await.unwrap().unwrap());
            }
            let snap = Snapshot::default();
            let patch = |from: usize, to: usize| {
                let (h, snap, from, to) = (h.clone(), snap.clone(), st[from].clone(), st[to].index);
                async move {
                    crate::ports::patch(&h, &snap, &from, "x", to, Mode::Repair)
                        .await
                        .unwrap()
                }
            };
            patch(0, 1).await;
            patch(1, 0).await;
            patch(2, 3).await;
            // Re-pointed: the old filter goes, the new one is read.
            patch(2, 1).await;
            let idx: Vec<u32> = st.iter().map(|s| s.index).collect();
            let mut want = HashMap::new();
            for i in &idx {
                want.insert(*i, crate::ports::patched_to(&h, *i).await.unwrap());
            }
            let got = Reader::open().unwrap().patches(idx.iter().copied());
            (want, got, [idx[0], idx[1], idx[2], idx[3]])
        })
        .await
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(got[&a], Some(b));
        assert_eq!(got[&b], Some(a));
        assert_eq!(got[&c], Some(b));
        assert_eq!(got[&d], None);
    }
}
