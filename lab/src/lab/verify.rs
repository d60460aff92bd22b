//! `verify`: every link checked by traffic (ping both ways) or, without addresses, by the ends'
//! flags.

use super::*;

pub(super) fn addr_of(cidr: &str) -> Option<String> {
    cidr.split_once('/').map(|(a, _)| a.to_string())
}

pub(super) fn ping(netns: &str, ip: &str) -> bool {
    (0..3).any(|_| {
        sys::run(&[
            "ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip,
        ])
        .is_ok()
    })
}

pub(super) fn iface_up(netns: &str, ifname: &str) -> Result<(), String> {
    let out = sys::run(&["ip", "-n", netns, "-j", "link", "show", "dev", ifname])
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let flags: Vec<&str> = v[0]["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if flags.contains(&"UP") && flags.contains(&"LOWER_UP") {
        Ok(())
    } else {
        Err(format!("{ifname} flags {flags:?}"))
    }
}

pub(super) fn verify_link(st: &LabState, l: &LinkView) -> Vec<(bool, String)> {
    let pod_ns = |name: &str| {
        st.pods
            .iter()
            .find(|p| p.namespace == l.namespace && p.name == name)
            .map(|p| p.netns.clone())
    };
    let mut out = Vec::new();
    let (Some(ns_a), Some(ns_b)) = (
        pod_ns(&l.a.pod),
        if l.b.pod == LOCALHOST {
            None
        } else {
            pod_ns(&l.b.pod)
        },
    ) else {
        // macvlan: the pod end must be present and up.
        if let Some(ns_a) = pod_ns(&l.a.pod) {
            let r = iface_up(&ns_a, &l.a.interface);
            out.push((
                r.is_ok(),
                format!(
                    "{} present and up {}",
                    l.label(),
                    r.err().unwrap_or_default()
                ),
            ));
            // Addressed on the external segment: it must reach the external device.
            let on_ext = l.a.ip.parse::<ipnet::IpNet>().is_ok_and(|n| {
                EXTERNAL_NET
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|e| e.contains(&n.addr()))
            });
            if on_ext {
                out.push((
                    ping(&ns_a, EXTERNAL_DEVICE),
                    format!(
                        "{} ping {} -> {EXTERNAL_DEVICE} (external device)",
                        l.label(),
                        l.a.pod
                    ),
                ));
            }
        }
        return out;
    };
    let (ip_a, ip_b) = (addr_of(&l.a.ip), addr_of(&l.b.ip));
    match (ip_a, ip_b) {
        (Some(a), Some(b)) => {
            out.push((
                ping(&ns_a, &b),
                format!("{} ping {} -> {b}", l.label(), l.a.pod),
            ));
            out.push((
                ping(&ns_b, &a),
                format!("{} ping {} -> {a}", l.label(), l.b.pod),
            ));
        }
        _ => {
            for (ns, ifname, pod) in [
                (&ns_a, &l.a.interface, &l.a.pod),
                (&ns_b, &l.b.interface, &l.b.pod),
            ] {
                let r = iface_up(ns, ifname);
                out.push((
                    r.is_ok(),
                    format!(
                        "{} {pod}:{ifname} up {}",
                        l.label(),
                        r.err().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    out
}
