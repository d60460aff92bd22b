//! Reading what the tools and the kernel report: iperf3's JSON, ping's per-packet lines,
//! `/proc/stat`, `/proc/PID/stat` and `/proc/PID/status`. Pure functions over text.

use anyhow::{Context, bail};
use serde_json::Value;

/// A TCP test as the receiver counted it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpResult {
    pub gbps: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub retransmits: Option<u64>,
}

/// A UDP test as the receiver counted it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    /// Datagrams received per second, in thousands.
    pub kpps: f64,
    /// Datagrams sent that did not arrive, in percent of those sent.
    pub loss_pct: f64,
    pub sent: u64,
}

fn iperf_json(text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text).context("iperf3 output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn num(v: &Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .with_context(|| format!("iperf3 JSON has no {}", path.join(".")))?;
    }
    cur.as_f64()
        .with_context(|| format!("iperf3 JSON: {} is not a number", path.join(".")))
}

/// `iperf3 -c … -J` of a TCP test: `end.sum_received` (and the sender's retransmits).
///
/// # Errors
/// Not JSON, an `error` reported by iperf3, or fields missing.
pub fn iperf_tcp(text: &str) -> anyhow::Result<TcpResult> {
    let v = iperf_json(text)?;
    let seconds = num(&v, &["end", "sum_received", "seconds"])?;
    let bytes = num(&v, &["end", "sum_received", "bytes"])?;
    if seconds <= 0.0 {
        bail!("iperf3 reports a test of {seconds} s");
    }
    Ok(TcpResult {
        gbps: bytes * 8.0 / seconds / 1e9,
        bytes: bytes as u64,
        seconds,
        retransmits: num(&v, &["end", "sum_sent", "retransmits"])
            .ok()
            .map(|r| r as u64),
    })
}

/// `iperf3 -c … -u -J` of a UDP test with `payload`-byte datagrams: `end.sum_received`
/// (datagrams received = bytes / payload; loss as the receiver reports it).
///
/// # Errors
/// Not JSON, an `error` reported by iperf3, or fields missing.
pub fn iperf_udp(text: &str, payload: u32) -> anyhow::Result<UdpResult> {
    let v = iperf_json(text)?;
    let seconds = num(&v, &["end", "sum_received", "seconds"])?;
    let bytes = num(&v, &["end", "sum_received", "bytes"])?;
    let sent = num(&v, &["end", "sum_received", "packets"])?;
    let loss_pct = num(&v, &["end", "sum_received", "lost_percent"])?;
    if seconds <= 0.0 {
        bail!("iperf3 reports a test of {seconds} s");
    }
    Ok(UdpResult {
        kpps: bytes / f64::from(payload.max(1)) / seconds / 1e3,
        loss_pct,
        sent: sent as u64,
    })
}

/// Round-trip times in microseconds from ping's per-reply lines (`… time=0.064 ms`).
pub fn ping_rtts_us(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.split_once(" time=").or_else(|| l.split_once(" time<"))?.1;
            let (val, unit) = rest.trim().split_once(' ')?;
            let v: f64 = val.parse().ok()?;
            match unit.trim() {
                "ms" => Some(v * 1e3),
                "s" => Some(v * 1e6),
                "us" | "µs" => Some(v),
                _ => None,
            }
        })
        .collect()
}

/// The machine's CPU time by kind (`/proc/stat`, first `cpu` line), in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Time spent in the kernel: system calls, interrupts, softirqs (the network stack).
    pub fn kernel(&self) -> u64 {
        self.system + self.irq + self.softirq
    }

    /// Ticks elapsed from `earlier` to `self` in the kernel.
    pub fn kernel_since(&self, earlier: &CpuTimes) -> u64 {
        self.kernel().saturating_sub(earlier.kernel())
    }
}

/// Parses `/proc/stat`.
///
/// # Errors
/// No aggregate `cpu` line.
pub fn proc_stat(text: &str) -> anyhow::Result<CpuTimes> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok(CpuTimes {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    })
}

/// `(utime, stime)` in clock ticks from `/proc/PID/stat` (fields 14 and 15; the command name
/// in parentheses may itself hold spaces and parentheses, so fields count from the last `)`).
///
/// # Errors
/// Malformed contents.
pub fn pid_stat_times(text: &str) -> anyhow::Result<(u64, u64)> {
    let rest = text
        .rsplit_once(')')
        .context("/proc/PID/stat without a command name")?
        .1;
    // After ")": state is field 3, so utime (14) and stime (15) are at indices 11 and 12.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .context("/proc/PID/stat is short")?
            .parse()
            .context("/proc/PID/stat field is not a number")
    };
    Ok((get(11)?, get(12)?))
}

/// A `Vm…:` field of `/proc/PID/status` in KiB (e.g. `VmHWM`, `VmRSS`).
pub fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
