//! Declared impairments on kernel links (veth, VXLAN, macvlan): the kernel's own qdiscs on the
//! egress of the pod's port, set over rtnetlink — `netem` for delay, jitter, loss, duplication,
//! corruption and reordering (with its rate limit), `tbf` for a rate limit alone or where the
//! kernel has no `sch_netem` (common on minimal node images, and on this project's CI machine).
//!
//! Why hand-built attributes: netlink-packet-route 0.34 knows the options of `fq_codel` and
//! `ingress` only, and `netem`'s `TCA_OPTIONS` is not even a list of attributes (a fixed struct
//! followed by attributes). The two encoders below are pure and tested byte for byte against the
//! kernel's UAPI layout (`include/uapi/linux/pkt_sched.h`); the I/O is one request.
//!
//! Ownership: meshnet's root qdisc carries the handle [`HANDLE_MAJOR`]`:`; that is how it knows
//! what it set. A root qdisc with handle `0:` is the kernel's default and may be replaced; any other
//! root qdisc was set by the pod (the router owns its port) and is never touched — the link then
//! reports that its impairment cannot be applied, naming the qdisc.

use futures::StreamExt;
use meshnet_topology::impairment::ImpairSpec;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::Handle;
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};

/// Major handle of meshnet's root qdiscs ("MN").
pub const HANDLE_MAJOR: u16 = 0x4d4e;

const TCA_OPTIONS: u16 = 2;
// tbf attributes.
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
// netem attributes.
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
/// `TC_LINKLAYER_ETHERNET`: no rate table needed.
const LINKLAYER_ETHERNET: u8 = 1;
/// Packets netem may hold (its default is 1000; delayed traffic at line rate needs more).
const NETEM_LIMIT: u32 = 10_000;

/// Why an impairment is not (fully) in place.
#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    /// The pod set its own root qdisc; meshnet does not replace it.
    #[error("the pod has its own root qdisc ({kind} {major:x}:) on this port; meshnet leaves it")]
    Foreign { kind: String, major: u16 },
    /// The kernel lacks the qdisc (e.g. no `sch_netem`).
    #[error("this node's kernel has no sch_{kind}: {what} cannot be applied to kernel links")]
    Unsupported { kind: &'static str, what: String },
    #[error("netlink: {0}")]
    Netlink(String),
}

/// What is in place on a port after [`apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Nothing declared, nothing of ours left.
    None,
    /// All of it, with this qdisc.
    Full(&'static str),
    /// Only the rate limit (with `tbf`): the rest needs a qdisc this kernel lacks.
    RateOnly { missing: String },
}

/// `struct tc_ratespec` (12 bytes) for `bytes_per_s` (the u32 field saturates; the 64-bit
/// attribute carries the rest).
fn ratespec(bytes_per_s: u64) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[0] = 0; // cell_log
    r[1] = LINKLAYER_ETHERNET;
    // overhead (u16), cell_align (i16), mpu (u16): 0.
    let rate = u32::try_from(bytes_per_s).unwrap_or(u32::MAX);
    r[8..12].copy_from_slice(&rate.to_ne_bytes());
    r
}

/// One netlink attribute: header (length, type), value, padding to 4 bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).expect("attributes here are a few bytes");
    let mut out = Vec::with_capacity((usize::from(len) + 3) & !3);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// The token bucket for `rate_bps` on a port of `mtu`: burst (bytes) and queue limit (bytes).
/// Burst: 4 ms at the rate, at least two full frames plus headers; queue: 50 ms at the rate
/// plus the burst (what `tc … tbf latency 50ms` gives), so TCP sees a queue and not a wall.
#[must_use]
pub fn tbf_sizes(rate_bps: u64, mtu: u32) -> (u32, u32) {
    let bytes_per_s = rate_bps / 8;
    let burst = (bytes_per_s / 250).max(2 * (u64::from(mtu) + 18)).max(3000);
    let limit = bytes_per_s / 20 + burst;
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    (clamp(burst), clamp(limit))
}

/// `TCA_OPTIONS` payload of `tbf` (nested attributes: PARMS, RATE64, BURST). Pure.
#[must_use]
pub fn tbf_options(rate_bps: u64, mtu: u32) -> Vec<u8> {
    let bytes_per_s = rate_bps / 8;
    let (burst, limit) = tbf_sizes(rate_bps, mtu);
    // struct tc_tbf_qopt { tc_ratespec rate, peakrate; u32 limit, buffer, mtu; }
    let mut parms = Vec::with_capacity(36);
    parms.extend_from_slice(&ratespec(bytes_per_s));
    parms.extend_from_slice(&[0u8; 12]); // no peak rate
    parms.extend_from_slice(&limit.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes()); // buffer: given in bytes by TCA_TBF_BURST
    parms.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only with a peak rate
    let mut out = nla(TCA_TBF_PARMS, &parms);
    out.extend(nla(TCA_TBF_RATE64, &bytes_per_s.to_ne_bytes()));
    out.extend(nla(TCA_TBF_BURST, &burst.to_ne_bytes()));
    out
}

/// A percentage as netem's probability: a fraction of `u32::MAX`.
fn probability(percent: f64) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=1
    let p = (percent / 100.0).clamp(0.0, 1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let v = (p * f64::from(u32::MAX)).round() as u32;
    v
}

/// `TCA_OPTIONS` payload of `netem`: `struct tc_netem_qopt` then attributes (64-bit latency and
/// jitter in nanoseconds, reorder, corrupt, rate). Pure.
#[must_use]
pub fn netem_options(spec: &ImpairSpec) -> Vec<u8> {
    // struct tc_netem_qopt { u32 latency, limit, loss, gap, duplicate, jitter; } — latency and
    // jitter here are in scheduler ticks and superseded by the 64-bit attributes below.
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&NETEM_LIMIT.to_ne_bytes());
    out.extend_from_slice(&probability(spec.loss).to_ne_bytes());
    // gap: with reordering, netem sends every gap-th frame at once; 0 selects the
    // probability-based reordering of TCA_NETEM_REORDER.
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&probability(spec.duplicate).to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    let ns = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    out.extend(nla(TCA_NETEM_LATENCY64, &ns(spec.delay).to_ne_bytes()));
    out.extend(nla(TCA_NETEM_JITTER64, &ns(spec.jitter).to_ne_bytes()));
    if spec.reorder > 0.0 {
        // struct tc_netem_reorder { u32 probability, correlation; }
        let mut v = probability(spec.reorder).to_ne_bytes().to_vec();
        v.extend_from_slice(&0u32.to_ne_bytes());
        out.extend(nla(TCA_NETEM_REORDER, &v));
    }
    if spec.corrupt > 0.0 {
        // struct tc_netem_corrupt { u32 probability, correlation; }
        let mut v = probability(spec.corrupt).to_ne_bytes().to_vec();
        v.extend_from_slice(&0u32.to_ne_bytes());
        out.extend(nla(TCA_NETEM_CORRUPT, &v));
    }
    if let Some(bps) = spec.rate_bps {
        let bytes = bps / 8;
        // struct tc_netem_rate { u32 rate; s32 packet_overhead; u32 cell_size; s32 cell_overhead; }
        let mut v = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .to_ne_bytes()
            .to_vec();
        v.extend_from_slice(&[0u8; 12]);
        out.extend(nla(TCA_NETEM_RATE, &v));
        if bytes > u64::from(u32::MAX) {
            out.extend(nla(TCA_NETEM_RATE64, &bytes.to_ne_bytes()));
        }
    }
    out
}

/// The root qdisc of `ifindex`: (kind, major handle), if any.
async fn root_qdisc(handle: &Handle, ifindex: u32) -> Result<Option<(String, u16)>, QdiscError> {
    let mut dump = handle.qdisc().get().execute();
    let mut found = None;
    while let Some(m) = dump.next().await {
        let m = m.map_err(|e| QdiscError::Netlink(e.to_string()))?;
        if u32::try_from(m.header.index).ok() == Some(ifindex) && m.header.parent == TcHandle::ROOT
        {
            let kind = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            found = Some((kind, m.header.handle.major));
        }
    }
    Ok(found)
}

/// Sends one qdisc request and waits for the kernel's answer; `Err(errno)` on refusal.
async fn request(handle: &Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<(), i32> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut h = handle.clone();
    let mut resp = h.request(req).map_err(|_| libc::EIO)?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && let Some(code) = e.code
        {
            return Err(-code.get());
        }
    }
    Ok(())
}

fn root_message(ifindex: u32, kind: &str, options: Option<Vec<u8>>) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = i32::try_from(ifindex).unwrap_or(i32::MAX);
    m.header.parent = TcHandle::ROOT;
    m.header.handle = TcHandle {
        major: HANDLE_MAJOR,
        minor: 0,
    };
    if !kind.is_empty() {
        m.attributes.push(TcAttribute::Kind(kind.to_string()));
    }
    if let Some(o) = options {
        m.attributes
            .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, o)));
    }
    m
}

/// Puts `spec` on the egress of `ifindex` (a port of `mtu` in the namespace `handle` is bound to),
/// or removes meshnet's qdisc when `spec` is `None`. Idempotent: the qdisc is replaced in place.
///
/// # Errors
/// The pod has its own root qdisc; the kernel refuses; with netem missing and no rate asked,
/// [`QdiscError::Unsupported`] (with a rate, the rate is applied with tbf and the result says
/// what is missing).
pub async fn apply(
    handle: &Handle,
    ifindex: u32,
    mtu: u32,
    spec: Option<&ImpairSpec>,
) -> Result<Applied, QdiscError> {
    let current = root_qdisc(handle, ifindex).await?;
    let ours = matches!(&current, Some((_, major)) if *major == HANDLE_MAJOR);
    let Some(spec) = spec.filter(|s| !s.is_noop()) else {
        if ours {
            let m = root_message(ifindex, "", None);
            request(handle, RouteNetlinkMessage::DelQueueDiscipline(m), 0)
                .await
                .map_err(|e| QdiscError::Netlink(format!("removing meshnet's qdisc: errno {e}")))?;
        }
        return Ok(Applied::None);
    };
    if let Some((kind, major)) = &current
        && *major != 0
        && *major != HANDLE_MAJOR
    {
        return Err(QdiscError::Foreign {
            kind: kind.clone(),
            major: *major,
        });
    }
    // The kernel changes a qdisc in place only within its kind: to switch ours between netem
    // and tbf, the old one goes first (its queue with it, as with `tc qdisc replace`).
    let ours_kind = current
        .as_ref()
        .filter(|(_, major)| *major == HANDLE_MAJOR)
        .map(|(kind, _)| kind.clone());
    let replace = |kind: &'static str, opts: Vec<u8>| {
        let stale = ours_kind.as_deref().is_some_and(|k| k != kind);
        async move {
            if stale {
                let m = root_message(ifindex, "", None);
                request(handle, RouteNetlinkMessage::DelQueueDiscipline(m), 0).await?;
            }
            let m = root_message(ifindex, kind, Some(opts));
            request(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        }
    };
    if spec.needs_netem() {
        match replace("netem", netem_options(spec)).await {
            Ok(()) => return Ok(Applied::Full("netem")),
            // The kernel answers ENOENT for a qdisc kind it does not know.
            Err(libc::ENOENT | libc::EOPNOTSUPP) => {
                let what = ImpairSpec {
                    rate_bps: None,
                    ..*spec
                }
                .to_string();
                let Some(rate) = spec.rate_bps else {
                    return Err(QdiscError::Unsupported {
                        kind: "netem",
                        what,
                    });
                };
                replace("tbf", tbf_options(rate, mtu))
                    .await
                    .map_err(|e| QdiscError::Netlink(format!("tbf refused: errno {e}")))?;
                return Ok(Applied::RateOnly {
                    missing: QdiscError::Unsupported {
                        kind: "netem",
                        what,
                    }
                    .to_string(),
                });
            }
            Err(e) => return Err(QdiscError::Netlink(format!("netem refused: errno {e}"))),
        }
    }
    let rate = spec.rate_bps.unwrap_or(u64::MAX);
    match replace("tbf", tbf_options(rate, mtu)).await {
        Ok(()) => Ok(Applied::Full("tbf")),
        Err(libc::ENOENT | libc::EOPNOTSUPP) => Err(QdiscError::Unsupported {
            kind: "tbf",
            what: spec.to_string(),
        }),
        Err(e) => Err(QdiscError::Netlink(format!("tbf refused: errno {e}"))),
    }
}

#[cfg(test)]
mod tests;
