//! The node's underlay, decided once when meshnetd starts: which address its links use, and
//! whether a node-wide default link MTU fits through it.
//!
//! * **Link address.** `HOST_IP` is the node's address (written as `src_ip`; peers send VXLAN and
//!   connect the gRPC wire to it). With `HOST_INTF` naming a dedicated data NIC that does not hold
//!   `HOST_IP`, the node's links must use that NIC's address instead — as the VXLAN source, and
//!   as the `src_ip` the peers send to — or a jumbo data network is bypassed in one direction.
//!   [`link_address`] picks it: `HOST_IP` if the interface holds it, else the interface's first
//!   global address of `HOST_IP`'s family, else of the other family.
//! * **Default MTU** (`MESHNET_DEFAULT_MTU`): applied to every link that declares none. With
//!   VXLAN it must fit the underlay's MTU less the encapsulation ([`check_default_mtu`]); a
//!   value that does not is refused at start, with the numbers.
//!
//! Pure choices over an [`Interface`] value; [`read_interface`] is the thin reader of the kernel
//! (`getifaddrs`, and the MTU from sysfs, which shows the daemon's own network namespace).

use std::net::IpAddr;

use crate::InterNodeLink;
use crate::plan::{Action, PodPlan};

/// An interface of the node, as far as the underlay choices need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<IpAddr>,
}

/// Why the underlay settings cannot be used. Each names the interface and the numbers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnderlayError {
    /// `HOST_INTF` names no interface.
    #[error("underlay interface {0:?} (HOST_INTF) not found")]
    NoInterface(String),
    /// No interface holds `HOST_IP` (and `HOST_INTF` is unset).
    #[error("no interface holds the node address {0} (HOST_IP); set HOST_INTF")]
    NoInterfaceFor(IpAddr),
    /// The interface has no address the node's links could use.
    #[error("underlay interface {0:?} (HOST_INTF) has no global address for the node's links")]
    NoAddress(String),
    /// The default MTU plus VXLAN's encapsulation exceeds the underlay's MTU.
    #[error(
        "MESHNET_DEFAULT_MTU {mtu} does not fit the underlay: {intf} has mtu {intf_mtu}, VXLAN \
         needs {overhead} bytes, so at most {room}"
    )]
    MtuTooLarge {
        mtu: u32,
        intf: String,
        intf_mtu: u32,
        overhead: u32,
        room: u32,
    },
    /// The interfaces could not be read.
    #[error("reading the node's interfaces: {0}")]
    Read(String),
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unspecified() && !a.is_unicast_link_local(),
    }
}

/// The address the node's links use on `intf` (see the module doc).
///
/// # Errors
/// [`UnderlayError::NoAddress`] when `intf` has no usable address.
pub fn link_address(host_ip: IpAddr, intf: &Interface) -> Result<IpAddr, UnderlayError> {
    if intf.addrs.contains(&host_ip) {
        return Ok(host_ip);
    }
    let same_family = intf
        .addrs
        .iter()
        .find(|a| usable(a) && a.is_ipv4() == host_ip.is_ipv4());
    same_family
        .or_else(|| intf.addrs.iter().find(|a| usable(a)))
        .copied()
        .ok_or_else(|| UnderlayError::NoAddress(intf.name.clone()))
}

/// Whether links of `mtu` bytes fit through `intf` when carried by `link` from `addr`.
///
/// # Errors
/// [`UnderlayError::MtuTooLarge`] with the numbers.
pub fn check_default_mtu(
    mtu: u32,
    link: InterNodeLink,
    intf: &Interface,
    addr: IpAddr,
) -> Result<(), UnderlayError> {
    if link != InterNodeLink::Vxlan {
        // The gRPC wire carries frames in TCP: no per-packet overhead on the underlay.
        return Ok(());
    }
    let overhead = crate::reconcile::vxlan_overhead(&addr);
    let room = intf.mtu.saturating_sub(overhead);
    if mtu > room {
        return Err(UnderlayError::MtuTooLarge {
            mtu,
            intf: intf.name.clone(),
            intf_mtu: intf.mtu,
            overhead,
            room,
        });
    }
    Ok(())
}

/// What meshnetd does at start: the node's link address — `host_ip`, or with `host_intf` an
/// address of that interface ([`link_address`]) — with `default_mtu` checked against the
/// underlay ([`check_default_mtu`]; when the underlay cannot be read the check is left to the
/// per-link ones, which refuse a VXLAN link that does not fit).
///
/// # Errors
/// `host_intf` is missing or has no usable address; the default MTU does not fit.
pub fn node_link_address(
    host_ip: IpAddr,
    host_intf: Option<&str>,
    default_mtu: Option<u32>,
    link: InterNodeLink,
) -> Result<IpAddr, UnderlayError> {
    let mut addr = host_ip;
    if let Some(name) = host_intf {
        let intf = read_interface(Some(name), host_ip)?;
        addr = link_address(host_ip, &intf)?;
        if addr != host_ip {
            tracing::info!(host_intf = name, %host_ip, link_address = %addr,
                "HOST_INTF does not hold HOST_IP: the node's links use its address");
        }
    }
    if let Some(mtu) = default_mtu {
        match read_interface(host_intf, addr) {
            Ok(intf) => check_default_mtu(mtu, link, &intf, addr)?,
            Err(e) => tracing::warn!(error = %e, "MESHNET_DEFAULT_MTU not checked at start"),
        }
    }
    Ok(addr)
}

/// Gives every link of `plans` that declares no MTU the node-wide default: veth pairs, VXLAN and
/// gRPC wire halves. A macvlan link keeps its parent's MTU (the kernel refuses a larger one).
pub fn apply_default_mtu(plans: &mut [PodPlan], mtu: u32) {
    for l in plans.iter_mut().flat_map(|p| p.links.iter_mut()) {
        match &mut l.action {
            Action::Veth(spec) => {
                spec.mtu.get_or_insert(mtu);
            }
            Action::Remote { decl, .. } | Action::Pending { decl, .. } => {
                decl.mtu.get_or_insert(mtu);
            }
            Action::Macvlan { .. } | Action::Invalid(_) => {}
        }
    }
}

/// Reads interface `name`, or with `None` the interface that holds `host_ip`.
///
/// # Errors
/// The interface is not there, or the kernel's lists cannot be read.
pub fn read_interface(name: Option<&str>, host_ip: IpAddr) -> Result<Interface, UnderlayError> {
    let mut by_name: Vec<(String, IpAddr)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(|e| UnderlayError::Read(e.to_string()))? {
        names.push(ifa.interface_name.clone());
        let ip = ifa.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        if let Some(ip) = ip {
            by_name.push((ifa.interface_name, ip));
        }
    }
    let name = match name {
        Some(n) if names.iter().any(|x| x == n) => n.to_string(),
        Some(n) => return Err(UnderlayError::NoInterface(n.to_string())),
        None => by_name
            .iter()
            .find(|(_, ip)| *ip == host_ip)
            .map(|(n, _)| n.clone())
            .ok_or(UnderlayError::NoInterfaceFor(host_ip))?,
    };
    let mtu_path = format!("/sys/class/net/{name}/mtu");
    let mtu = std::fs::read_to_string(&mtu_path)
        .map_err(|e| UnderlayError::Read(format!("{mtu_path}: {e}")))?
        .trim()
        .parse()
        .map_err(|e| UnderlayError::Read(format!("{mtu_path}: {e}")))?;
    let addrs = by_name
        .into_iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, ip)| ip)
        .collect();
    Ok(Interface { name, mtu, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intf(mtu: u32, addrs: &[&str]) -> Interface {
        Interface {
            name: "data0".into(),
            mtu,
            addrs: addrs.iter().map(|a| a.parse().expect("IP")).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("IP")
    }

    #[test]
    fn the_link_address_is_host_ip_when_the_interface_holds_it() {
        let i = intf(9000, &["198.51.100.7", "192.0.2.7"]);
        assert_eq!(link_address(ip("192.0.2.7"), &i), Ok(ip("192.0.2.7")));
    }

    #[test]
    fn a_data_nic_without_host_ip_gives_its_own_address_same_family_first() {
        let i = intf(
            9000,
            &["fe80::1", "2001:db8:9::7", "169.254.0.3", "198.51.100.7"],
        );
        assert_eq!(link_address(ip("192.0.2.7"), &i), Ok(ip("198.51.100.7")));
        assert_eq!(link_address(ip("2001:db8::1"), &i), Ok(ip("2001:db8:9::7")));
        // Only the other family: that one.
        let v6_only = intf(9000, &["fe80::1", "2001:db8:9::7"]);
        assert_eq!(
            link_address(ip("192.0.2.7"), &v6_only),
            Ok(ip("2001:db8:9::7"))
        );
        // Link-local only: nothing a peer on another segment can reach.
        let e = link_address(ip("192.0.2.7"), &intf(9000, &["fe80::1", "169.254.1.1"]));
        assert_eq!(e, Err(UnderlayError::NoAddress("data0".into())));
    }

    #[test]
    fn a_default_mtu_that_does_not_fit_vxlan_is_refused_with_the_numbers() {
        let i = intf(1500, &["198.51.100.7"]);
        let v4 = ip("198.51.100.7");
        assert_eq!(
            check_default_mtu(1450, InterNodeLink::Vxlan, &i, v4),
            Ok(())
        );
        let e = check_default_mtu(9000, InterNodeLink::Vxlan, &i, v4).expect_err("too big");
        assert_eq!(
            e.to_string(),
            "MESHNET_DEFAULT_MTU 9000 does not fit the underlay: data0 has mtu 1500, VXLAN needs \
             50 bytes, so at most 1450"
        );
        // IPv6 outer header: 20 bytes more.
        let e = check_default_mtu(1450, InterNodeLink::Vxlan, &i, ip("2001:db8::7"))
            .expect_err("v6 overhead");
        assert!(
            e.to_string().ends_with("needs 70 bytes, so at most 1430"),
            "{e}"
        );
        // Jumbo underlay: jumbo links.
        assert_eq!(
            check_default_mtu(8950, InterNodeLink::Vxlan, &intf(9000, &[]), v4),
            Ok(())
        );
        // The gRPC wire has no per-packet overhead.
        assert_eq!(check_default_mtu(9000, InterNodeLink::Grpc, &i, v4), Ok(()));
    }

    #[test]
    fn reading_the_loopback_interface() {
        let lo = read_interface(Some("lo"), ip("127.0.0.1")).expect("lo");
        assert!(lo.mtu >= 1280, "{lo:?}");
        assert!(lo.addrs.contains(&ip("127.0.0.1")), "{lo:?}");
        assert_eq!(
            read_interface(None, ip("127.0.0.1"))
                .expect("holder of 127.0.0.1")
                .name,
            "lo"
        );
        assert_eq!(
            read_interface(Some("no-such-if0"), ip("127.0.0.1")),
            Err(UnderlayError::NoInterface("no-such-if0".into()))
        );
    }
}
