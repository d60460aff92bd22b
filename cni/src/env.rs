//! The `CNI_*` environment: which command, which sandbox, which pod.
//!
//! Everything here comes from the container runtime and is checked before it is used or sent to
//! meshnetd: interface names as the kernel accepts them, container ids as the spec defines them,
//! absolute netns paths, and Kubernetes names for the pod identity in `CNI_ARGS` (they become
//! store keys in the daemon). Any violation is error 4, naming the variable.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;

use crate::error::{CniError, ErrorCode};

/// Environment variables this plugin reads.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// The sandbox (container) id.
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// Path of the sandbox's network namespace.
pub const CNI_NETNS: &str = "CNI_NETNS";
/// The interface the previous plugins created in the sandbox.
pub const CNI_IFNAME: &str = "CNI_IFNAME";
/// `KEY=VALUE;...` extra arguments (the pod identity).
pub const CNI_ARGS: &str = "CNI_ARGS";
/// Plugin search path (unused: meshnet delegates to no plugin).
pub const CNI_PATH: &str = "CNI_PATH";
/// Overrides the default daemon socket (the netconf key `daemon_socket` wins).
pub const MESHNET_SOCKET: &str = "MESHNET_SOCKET";
/// Overrides the default log file (the netconf key `log_file` wins).
pub const MESHNET_CNI_LOG: &str = "MESHNET_CNI_LOG";

/// The longest interface name Linux accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;
/// The longest path Linux accepts (`PATH_MAX - 1`).
pub const MAX_PATH_LEN: usize = 4095;

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// ADD: plumb the pod.
    Add,
    /// DEL: release the pod.
    Del,
    /// CHECK: verify the pod (0.4.0+).
    Check,
    /// VERSION: report supported versions.
    Version,
    /// STATUS: report readiness (1.1.0+).
    Status,
    /// GC: release stale attachments (1.1.0+).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The command as the runtime spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The variables the spec requires for this command (beyond `CNI_COMMAND`).
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME],
            Command::Del => &[CNI_CONTAINERID, CNI_IFNAME],
            Command::Version | Command::Status | Command::Gc => &[],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The environment variables of one invocation (only the ones this plugin reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    vars: BTreeMap<String, OsString>,
}

impl CniEnv {
    /// Every variable the plugin reads.
    pub const VARS: [&'static str; 8] = [
        CNI_COMMAND,
        CNI_CONTAINERID,
        CNI_NETNS,
        CNI_IFNAME,
        CNI_ARGS,
        CNI_PATH,
        MESHNET_SOCKET,
        MESHNET_CNI_LOG,
    ];

    /// Reads the plugin's variables from the process environment.
    pub fn from_process() -> Self {
        Self::from_pairs(
            Self::VARS
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
    }

    /// Builds an environment from `(name, value)` pairs (tests, embedding).
    pub fn from_pairs<K: Into<String>, V: Into<OsString>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        CniEnv {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value of a variable.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(name).map(OsString::as_os_str)
    }

    /// The value for logs: lossy, empty when unset.
    pub fn display(&self, name: &str) -> String {
        self.get(name)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The value as UTF-8; unset and empty are both `None`.
    ///
    /// # Errors
    /// 4 when the value is not UTF-8 (it could not be sent to meshnetd faithfully).
    pub fn string(&self, name: &str) -> Result<Option<&str>, CniError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Some("") => Ok(None),
                Some(s) => Ok(Some(s)),
                None => Err(invalid_env(format!("{name} is not valid UTF-8"))),
            },
        }
    }

    /// The command to run.
    ///
    /// # Errors
    /// 4 when `CNI_COMMAND` is missing or not a CNI command.
    pub fn command(&self) -> Result<Command, CniError> {
        let raw = self
            .string(CNI_COMMAND)?
            .ok_or_else(|| invalid_env(format!("required env variable {CNI_COMMAND} missing")))?;
        Command::parse(raw).ok_or_else(|| invalid_env(format!("unknown {CNI_COMMAND}: {raw:?}")))
    }

    /// The sandbox of an ADD, DEL or CHECK, validated.
    ///
    /// # Errors
    /// 4 naming every required variable that is missing, or the first one that is invalid.
    pub fn sandbox(&self, command: Command) -> Result<Sandbox, CniError> {
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| matches!(self.string(k), Ok(None)))
            .collect();
        if !missing.is_empty() {
            let s = if missing.len() == 1 { "" } else { "s" };
            return Err(invalid_env(format!(
                "required env variable{s} {} missing",
                missing.join(", ")
            )));
        }
        let container_id = self.string(CNI_CONTAINERID)?.unwrap_or_default();
        validate_container_id(container_id)?;
        let ifname = self.string(CNI_IFNAME)?.unwrap_or_default();
        validate_ifname(ifname)?;
        let netns = self.string(CNI_NETNS)?;
        if let Some(p) = netns {
            validate_netns(p)?;
        }
        Ok(Sandbox {
            container_id: container_id.to_owned(),
            netns: netns.map(str::to_owned),
            ifname: ifname.to_owned(),
        })
    }

    /// The Kubernetes pod named in `CNI_ARGS`; `None` when it names none (not a Kubernetes pod).
    ///
    /// # Errors
    /// 4 when `CNI_ARGS` is malformed or names an invalid pod.
    pub fn pod(&self) -> Result<Option<PodName>, CniError> {
        parse_cni_args(self.string(CNI_ARGS)?.unwrap_or_default())
    }
}

/// The sandbox an ADD, DEL or CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; always set for ADD and CHECK, may be absent on DEL.
    pub netns: Option<String>,
    /// `CNI_IFNAME`: the interface the earlier plugins made (meshnet never touches it).
    pub ifname: String,
}

/// A Kubernetes pod, from `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodName {
    /// `K8S_POD_NAMESPACE` (default `default`).
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn invalid_env(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

/// Parses `CNI_ARGS` (`KEY=VALUE;KEY=VALUE`) for the pod identity. Unknown keys are ignored;
/// empty items (a trailing `;`) are tolerated; an empty `K8S_POD_NAME` means no pod.
///
/// # Errors
/// 4 for an item without `=`, or a pod name/namespace Kubernetes would not accept.
pub fn parse_cni_args(args: &str) -> Result<Option<PodName>, CniError> {
    let mut name = None;
    let mut namespace = None;
    for item in args.split(';').filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| invalid_env(format!("{CNI_ARGS}: invalid pair {item:?}")))?;
        match k {
            "K8S_POD_NAME" => name = Some(v),
            "K8S_POD_NAMESPACE" => namespace = Some(v),
            _ => {}
        }
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    let namespace = namespace.filter(|n| !n.is_empty()).unwrap_or("default");
    if !is_dns_subdomain(name) {
        return Err(invalid_env(format!(
            "{CNI_ARGS}: K8S_POD_NAME {name:?} is not a valid Kubernetes name"
        )));
    }
    if !is_dns_label(namespace) {
        return Err(invalid_env(format!(
            "{CNI_ARGS}: K8S_POD_NAMESPACE {namespace:?} is not a valid Kubernetes namespace"
        )));
    }
    Ok(Some(PodName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }))
}

/// Checks `CNI_IFNAME` as the kernel's `dev_valid_name` does.
///
/// # Errors
/// 4 for an empty name, one longer than 15 bytes, `.`/`..`, or one containing `/`, `:` or
/// whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is not a valid interface name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(invalid_env(format!("{CNI_IFNAME} {name:?} {why}")))
}

/// Checks `CNI_CONTAINERID`: non-empty, only alphanumerics, `_`, `.` and `-` (spec 1.0).
///
/// # Errors
/// 4 otherwise.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid_env(format!(
            "{CNI_CONTAINERID} {id:?} must be non-empty and contain only [A-Za-z0-9_.-]"
        )))
    }
}

/// Checks `CNI_NETNS`: an absolute path no longer than `PATH_MAX`. meshnetd checks that it is a
/// network namespace.
///
/// # Errors
/// 4 otherwise.
pub fn validate_netns(path: &str) -> Result<(), CniError> {
    if path.starts_with('/') && path.len() <= MAX_PATH_LEN {
        Ok(())
    } else {
        Err(invalid_env(format!(
            "{CNI_NETNS} {path:?} must be an absolute path"
        )))
    }
}

/// A DNS-1123 label (Kubernetes namespaces): 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && alnum_ends(s)
}

/// A DNS-1123 subdomain (Kubernetes object names): 1–253 of `[a-z0-9.-]`, alphanumeric at both
/// ends.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && alnum_ends(s)
}

fn alnum_ends(s: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    alnum(s.as_bytes().first()) && alnum(s.as_bytes().last())
}

#[cfg(test)]
mod tests;
