//! Declared link impairments (an optional, additive `Topology` link extension):
//!
//! ```yaml
//! impairment: {delay: 10ms, jitter: 2ms, loss: 0.5, rate: 100mbit, duplicate: 0.1,
//!              corrupt: 0.1, reorder: 1, side: local}
//! ```
//!
//! Every impairment acts on one direction of the link: the frames an end *sends* (its egress),
//! which is where both engines can act — the gRPC wire before it forwards a frame, `tc` on a
//! kernel link's port. A declaration impairs both directions unless it names a `side`: `local`
//! (what this pod sends) or `peer` (what the peer pod sends). Either end may declare; when both
//! declare the same direction they must agree, or the link reports the clash.
//!
//! Units: durations `us`, `ms`, `s` (`10ms`, `1.5ms`); rates `bit`, `kbit`, `mbit`, `gbit`
//! (per second, decimal prefixes, as `tc` writes them); `loss`, `duplicate`, `corrupt` and
//! `reorder` are percentages from 0 to 100.
//!
//! Pure: parsing and the choice of what applies to which end. The engines live in the wire and
//! the daemon.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A percentage as declared (a number from 0 to 100). Compared bit for bit, so that a link
/// declaration stays `Eq`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Percent(pub f64);

impl PartialEq for Percent {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Percent {}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The `impairment` of a link as written in the Topology (strings as the user wrote them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impairment {
    /// One-way delay added to every frame, e.g. `10ms`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub delay: String,
    /// Random variation of the delay (uniform, ± this), e.g. `2ms`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub jitter: String,
    /// Percentage of frames dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    /// Rate limit, e.g. `100mbit`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub rate: String,
    /// Percentage of frames sent twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<Percent>,
    /// Percentage of frames with one bit flipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Percent>,
    /// Percentage of frames sent at once, ahead of delayed ones (needs a `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<Percent>,
    /// `local`, `peer`, or empty/`both`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub side: String,
}

/// Which direction(s) a declaration impairs, from the declaring pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Both,
    /// What the declaring pod sends.
    Local,
    /// What the peer pod sends.
    Peer,
}

/// One direction's impairment, parsed and checked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImpairSpec {
    pub delay: Duration,
    pub jitter: Duration,
    /// Percent, 0..=100.
    pub loss: f64,
    /// Bits per second; `None`: no limit.
    pub rate_bps: Option<u64>,
    pub duplicate: f64,
    pub corrupt: f64,
    pub reorder: f64,
}

impl ImpairSpec {
    /// Nothing to do.
    #[must_use]
    pub fn is_noop(&self) -> bool {
        *self == ImpairSpec::default()
    }

    /// Whether anything but a rate limit is asked for (what needs netem on a kernel link).
    #[must_use]
    pub fn needs_netem(&self) -> bool {
        ImpairSpec {
            rate_bps: None,
            ..*self
        } != ImpairSpec::default()
    }
}

impl fmt::Display for ImpairSpec {
    /// `delay 10ms jitter 2ms loss 0.5% rate 100mbit …`, only what is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.delay.is_zero() {
            parts.push(format!("delay {}", show_duration(self.delay)));
        }
        if !self.jitter.is_zero() {
            parts.push(format!("jitter {}", show_duration(self.jitter)));
        }
        for (name, v) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("reorder", self.reorder),
        ] {
            if v > 0.0 {
                parts.push(format!("{name} {v}%"));
            }
        }
        if let Some(r) = self.rate_bps {
            parts.push(format!("rate {}", show_rate(r)));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

fn show_rate(bps: u64) -> String {
    for (unit, f) in [
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bps >= f && bps.is_multiple_of(f) {
            return format!("{}{unit}", bps / f);
        }
    }
    format!("{bps}bit")
}

/// Parses `10ms`, `1.5ms`, `200us`, `1s`.
///
/// # Errors
/// A message naming the value and the accepted units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!(
            "{s:?}: want a duration such as 10ms, 1.5ms, 200us or 1s"
        ));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: want a duration such as 10ms, 1.5ms, 200us or 1s"))?;
    if !(0.0..=60.0).contains(&(v * scale)) {
        return Err(format!("{s:?}: a delay must be between 0 and 60s"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Parses `100mbit`, `1gbit`, `500kbit`, `64000bit` (bits per second).
///
/// # Errors
/// A message naming the value and the accepted units.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let units = [
        ("tbit", 1e12),
        ("gbit", 1e9),
        ("mbit", 1e6),
        ("kbit", 1e3),
        ("bit", 1.0),
    ];
    let want = || format!("{s:?}: want a rate such as 100mbit, 1gbit, 500kbit or 64000bit");
    let (num, f) = units
        .iter()
        .find_map(|(u, f)| t.strip_suffix(u).map(|n| (n, *f)))
        .ok_or_else(want)?;
    let v: f64 = num.trim().parse().map_err(|_| want())?;
    let bps = v * f;
    // tbf and the wire both need at least a frame's worth per second to do anything useful.
    if !(8000.0..=1e13).contains(&bps) {
        return Err(format!("{s:?}: a rate must be between 8kbit and 10tbit"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range checked above
    Ok(bps.round() as u64)
}

fn percent(name: &str, p: Option<Percent>) -> Result<f64, String> {
    match p {
        None => Ok(0.0),
        Some(Percent(v)) if (0.0..=100.0).contains(&v) => Ok(v),
        Some(Percent(v)) => Err(format!("{name} {v}: want a percentage from 0 to 100")),
    }
}

impl Impairment {
    /// The side this declaration impairs.
    ///
    /// # Errors
    /// `side` is not `local`, `peer`, `both` or empty.
    pub fn side(&self) -> Result<Side, String> {
        match self.side.as_str() {
            "" | "both" => Ok(Side::Both),
            "local" => Ok(Side::Local),
            "peer" => Ok(Side::Peer),
            other => Err(format!("side {other:?}: want local, peer or both")),
        }
    }

    /// Parses and checks the declaration.
    ///
    /// # Errors
    /// The first bad field, named.
    pub fn parse(&self) -> Result<ImpairSpec, String> {
        let dur = |name: &str, v: &str| {
            if v.is_empty() {
                Ok(Duration::ZERO)
            } else {
                parse_duration(v).map_err(|e| format!("{name} {e}"))
            }
        };
        let spec = ImpairSpec {
            delay: dur("delay", &self.delay)?,
            jitter: dur("jitter", &self.jitter)?,
            loss: percent("loss", self.loss)?,
            rate_bps: if self.rate.is_empty() {
                None
            } else {
                Some(parse_rate(&self.rate).map_err(|e| format!("rate {e}"))?)
            },
            duplicate: percent("duplicate", self.duplicate)?,
            corrupt: percent("corrupt", self.corrupt)?,
            reorder: percent("reorder", self.reorder)?,
        };
        self.side()?;
        if !spec.jitter.is_zero() && spec.delay.is_zero() {
            return Err("jitter needs a delay".into());
        }
        if spec.jitter > spec.delay {
            return Err(format!(
                "jitter {} is larger than delay {}: a frame cannot leave before it was sent",
                show_duration(spec.jitter),
                show_duration(spec.delay)
            ));
        }
        if spec.reorder > 0.0 && spec.delay.is_zero() {
            return Err("reorder needs a delay (reordered frames overtake delayed ones)".into());
        }
        Ok(spec)
    }
}

/// What one end's egress gets: its own declaration unless it names `peer`, and the peer's unless
/// it names `local`. `None`: nothing applies.
///
/// # Errors
/// A declaration is invalid, or both ends impair this direction differently.
pub fn egress(
    own: Option<&Impairment>,
    peer: Option<&Impairment>,
) -> Result<Option<ImpairSpec>, String> {
    let mine = match own {
        Some(i) if i.side()? != Side::Peer => {
            Some(i.parse().map_err(|e| format!("impairment: {e}"))?)
        }
        _ => None,
    };
    let theirs = match peer {
        Some(i) if i.side()? != Side::Local => Some(
            i.parse()
                .map_err(|e| format!("the peer's impairment: {e}"))?,
        ),
        _ => None,
    };
    match (mine, theirs) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "both ends impair this direction differently: {a} here, {b} declared by the peer"
        )),
        (a, b) => Ok(a.or(b).filter(|s| !s.is_noop())),
    }
}

#[cfg(test)]
mod tests;
