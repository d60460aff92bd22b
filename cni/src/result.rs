//! The ADD result: `prevResult` passed through, converted to the requested version.
//!
//! meshnet adds nothing to the result (its links are not the pod's primary network), so ADD
//! echoes the previous plugin's result. The runtime normally hands `prevResult` over in the
//! netconf's version already; we convert anyway, so a result in any 0.3.0–1.1.0 format comes out
//! in the requested one. The only difference between those formats is `ips[].version`: present
//! ("4"/"6") before 1.0.0, absent from 1.0.0 on.
//!
//! The result is kept as JSON rather than decoded into structs: fields this plugin does not know
//! (1.1.0 route `table`/`scope`, interface `socketPath`, anything a future spec or another plugin
//! adds) pass through untouched. What the conversion relies on is checked: the shape of
//! `interfaces`, `ips`, `routes`, `dns`, and that addresses are CIDRs and gateways are IPs.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;

/// Converts a previous plugin's result to `to`, setting `cniVersion` and adding or removing
/// `ips[].version`; every other field is kept.
///
/// # Errors
/// 6 ("decoding prevResult: ...") when `prev` is not a result: not an object, lists that are not
/// lists of objects, an `ips[].address` or `routes[].dst` that is not a CIDR, a gateway that is
/// not an IP, an `ips[].version` that contradicts the address.
pub fn convert_result(prev: &Value, to: CniVersion) -> Result<Value, CniError> {
    let Value::Object(prev) = prev else {
        return Err(decode(format!(
            "expected a JSON object, found {}",
            kind(prev)
        )));
    };
    let mut out = prev.clone();
    out.insert("cniVersion".into(), to.as_str().into());
    if let Some(interfaces) = out.get("interfaces") {
        objects(interfaces, "interfaces")?;
    }
    if let Some(Value::Array(ips)) = out.get_mut("ips") {
        for (i, ip) in ips.iter_mut().enumerate() {
            let Value::Object(ip) = ip else {
                return Err(decode(format!(
                    "ips[{i}]: expected an object, found {}",
                    kind(ip)
                )));
            };
            convert_ip(ip, i, to)?;
        }
    } else if let Some(ips) = out.get("ips") {
        objects(ips, "ips")?;
    }
    if let Some(routes) = out.get("routes") {
        for (i, route) in objects(routes, "routes")?.iter().enumerate() {
            let dst = route
                .get("dst")
                .and_then(Value::as_str)
                .ok_or_else(|| decode(format!("routes[{i}].dst: missing or not a string")))?;
            cidr(dst, &format!("routes[{i}].dst"))?;
            if let Some(gw) = route.get("gw") {
                ip_addr(gw, &format!("routes[{i}].gw"))?;
            }
        }
    }
    match out.get("dns") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(other) => {
            return Err(decode(format!(
                "dns: expected an object, found {}",
                kind(other)
            )));
        }
    }
    Ok(Value::Object(out))
}

/// The result of an ADD that had no `prevResult` (meshnet first in its chain, which is a
/// misconfiguration but not ours to fail): no interfaces, no addresses.
pub fn empty_result(version: CniVersion) -> Value {
    json!({"cniVersion": version.as_str(), "interfaces": [], "ips": [], "dns": {}})
}

fn convert_ip(ip: &mut Map<String, Value>, i: usize, to: CniVersion) -> Result<(), CniError> {
    let address = ip
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| decode(format!("ips[{i}].address: missing or not a string")))?;
    let family = match cidr(address, &format!("ips[{i}].address"))? {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    };
    if let Some(gateway) = ip.get("gateway") {
        ip_addr(gateway, &format!("ips[{i}].gateway"))?;
    }
    if let Some(index) = ip.get("interface")
        && !index.is_u64()
    {
        return Err(decode(format!(
            "ips[{i}].interface: expected a non-negative integer, found {index}"
        )));
    }
    match ip.get("version") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if v == family => {}
        Some(v) => {
            return Err(decode(format!(
                "ips[{i}].version: {v} does not match address {address}"
            )));
        }
    }
    if to.ips_carry_version() {
        ip.insert("version".into(), family.into());
    } else {
        ip.remove("version");
    }
    Ok(())
}

/// `v` as a list of objects (`null` counts as empty).
fn objects<'a>(v: &'a Value, what: &str) -> Result<Vec<&'a Map<String, Value>>, CniError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_object().ok_or_else(|| {
                    decode(format!(
                        "{what}[{i}]: expected an object, found {}",
                        kind(item)
                    ))
                })
            })
            .collect(),
        other => Err(decode(format!(
            "{what}: expected a list, found {}",
            kind(other)
        ))),
    }
}

fn cidr(s: &str, what: &str) -> Result<IpNet, CniError> {
    s.parse().map_err(|_| {
        decode(format!(
            "{what}: {s:?} is not an IP address in CIDR notation"
        ))
    })
}

fn ip_addr(v: &Value, what: &str) -> Result<IpAddr, CniError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| decode(format!("{what}: {v} is not an IP address")))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn decode(why: String) -> CniError {
    CniError::new(ErrorCode::Decode, format!("decoding prevResult: {why}"))
}

#[cfg(test)]
mod tests;
