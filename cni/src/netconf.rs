//! The network configuration on stdin.
//!
//! Well-known keys: `cniVersion`, `name`, `type` (required), `prevResult`, and for GC
//! `cni.dev/valid-attachments`. meshnet's own optional keys: `daemon_socket`, `log_file`,
//! `timeout_seconds`. Any other key is ignored (the lab and installers pass `ipam`, `dns`, ...).
//!
//! Failure classes follow the spec: stdin that is not JSON, or a known key of the wrong type, is
//! 6 (decode); a missing required key or an out-of-range value is 7 (invalid config); a
//! `cniVersion` this plugin does not speak is 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshnet_proto::v1::Attachment;
use serde::Deserialize;
use serde_json::Value;

use crate::env::{CniEnv, MESHNET_CNI_LOG, MESHNET_SOCKET};
use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;

/// Where meshnetd listens unless the netconf or `MESHNET_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/meshnet/meshnetd.sock";
/// Where the plugin logs unless the netconf or `MESHNET_CNI_LOG` says otherwise.
pub const DEFAULT_LOG_FILE: &str = "/var/log/meshnet-cni.log";
/// How long one daemon call (connect included) may take unless `timeout_seconds` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest the plugin waits for meshnetd's socket to appear (a daemon restart, e.g. a
/// DaemonSet rollout) before answering 11, "try again later". See [`DaemonConfig::socket_wait`].
pub const MAX_SOCKET_WAIT: Duration = Duration::from_secs(15);
/// The largest `timeout_seconds` accepted.
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// The most stdin the plugin reads; a network configuration is a few KiB.
pub const MAX_STDIN_BYTES: usize = 4 << 20;

/// The GC key holding the attachments the runtime still knows about.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
/// The same list under the name libcni also sends (an early 1.1 spelling).
pub const ATTACHMENTS_ALIAS: &str = "cni.dev/attachments";

/// How to reach meshnetd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The daemon's unix socket.
    pub socket: PathBuf,
    /// Bound on one whole call, connect included.
    pub timeout: Duration,
}

impl DaemonConfig {
    /// How long ADD, DEL and CHECK wait for meshnetd to come back when its socket is missing or
    /// refuses connections: half the call's timeout, at most [`MAX_SOCKET_WAIT`]. Always less
    /// than the timeout, so the runtime gets the retryable 11 (and not its own deadline) when
    /// the daemon stays away; a daemon that restarts within the wait serves the call.
    pub fn socket_wait(&self) -> Duration {
        (self.timeout / 2).min(MAX_SOCKET_WAIT)
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: the version of the request and of every answer.
    pub version: CniVersion,
    /// `name`: the network name.
    pub name: String,
    /// `type`: the plugin's binary name.
    pub plugin_type: String,
    /// `prevResult`: the result of the plugins before meshnet in the chain (not yet checked).
    pub prev_result: Option<Value>,
    /// `daemon_socket`, `MESHNET_SOCKET` and `timeout_seconds`, resolved.
    pub daemon: DaemonConfig,
    /// `cni.dev/valid-attachments` (GC); `None` when the key is absent, empty when `null`.
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
struct RawNetConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    daemon_socket: Option<String>,
    timeout_seconds: Option<u64>,
    // Only the type is checked here; the value is used before parsing (see `log_file`).
    #[serde(rename = "log_file")]
    _log_file: Option<String>,
}

#[derive(Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl NetConf {
    /// Parses and validates stdin. `env` supplies `MESHNET_SOCKET`.
    ///
    /// # Errors
    /// 6 when stdin is not a JSON object or a known key has the wrong type; 7 when `cniVersion`,
    /// `name` or `type` is missing or a value is out of range; 1 for an unsupported `cniVersion`;
    /// 4 when `MESHNET_SOCKET` is used and not an absolute path.
    pub fn parse(stdin: &[u8], env: &CniEnv) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(ErrorCode::Decode, "decoding network config from stdin")
                .with_details(e.to_string())
        })?;
        let Value::Object(obj) = &value else {
            return Err(CniError::new(
                ErrorCode::Decode,
                "decoding network config from stdin: not a JSON object",
            ));
        };
        let raw = RawNetConf::deserialize(&value).map_err(|e| {
            CniError::new(ErrorCode::Decode, "decoding network config from stdin")
                .with_details(e.to_string())
        })?;
        let version = match raw.cni_version.as_deref() {
            None | Some("") => return Err(invalid_config("network config has no cniVersion")),
            Some(v) => CniVersion::parse(v).ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!(
                        "incompatible CNI version {v:?}: meshnet supports {}",
                        CniVersion::supported_list()
                    ),
                )
            })?,
        };
        let name = non_empty(raw.name, "name")?;
        let plugin_type = non_empty(raw.plugin_type, "type")?;
        let socket = match raw.daemon_socket {
            Some(s) => absolute(s, "daemon_socket", ErrorCode::InvalidNetworkConfig)?,
            None => match env.string(MESHNET_SOCKET)? {
                Some(s) => absolute(s.to_owned(), MESHNET_SOCKET, ErrorCode::InvalidEnvironment)?,
                None => PathBuf::from(DEFAULT_SOCKET),
            },
        };
        let timeout = match raw.timeout_seconds {
            None => DEFAULT_TIMEOUT,
            Some(s @ 1..=MAX_TIMEOUT_SECONDS) => Duration::from_secs(s),
            Some(s) => {
                return Err(invalid_config(format!(
                    "timeout_seconds {s} is not between 1 and {MAX_TIMEOUT_SECONDS}"
                )));
            }
        };
        let valid_attachments = match obj.get(VALID_ATTACHMENTS).or(obj.get(ATTACHMENTS_ALIAS)) {
            None => None,
            Some(Value::Null) => Some(Vec::new()),
            Some(v) => Some(
                Vec::<RawAttachment>::deserialize(v)
                    .map_err(|e| {
                        CniError::new(ErrorCode::Decode, format!("decoding {VALID_ATTACHMENTS}"))
                            .with_details(e.to_string())
                    })?
                    .into_iter()
                    .map(|a| Attachment {
                        container_id: a.container_id,
                        ifname: a.ifname,
                    })
                    .collect(),
            ),
        };
        Ok(NetConf {
            version,
            name,
            plugin_type,
            prev_result: raw.prev_result,
            daemon: DaemonConfig { socket, timeout },
            valid_attachments,
        })
    }
}

/// The request's `cniVersion` if stdin names one this plugin supports. Best effort, for
/// answering VERSION and tagging error JSON before (or when) stdin fails to parse.
pub fn sniff_version(stdin: &[u8]) -> Option<CniVersion> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(value.get("cniVersion")?.as_str()?)
}

/// Where to log: the netconf's `log_file`, else `MESHNET_CNI_LOG`, else [`DEFAULT_LOG_FILE`].
/// Best effort (logging starts before stdin is validated): a malformed stdin falls through to
/// the environment.
pub fn log_file(stdin: &[u8], env: &CniEnv) -> PathBuf {
    let from_conf = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("log_file")?.as_str().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    from_conf
        .or_else(|| {
            env.get(MESHNET_CNI_LOG)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_FILE))
}

fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

fn non_empty(v: Option<String>, key: &str) -> Result<String, CniError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| invalid_config(format!("network config has no {key}")))
}

fn absolute(s: String, what: &str, code: ErrorCode) -> Result<PathBuf, CniError> {
    if Path::new(&s).is_absolute() {
        Ok(PathBuf::from(s))
    } else {
        Err(CniError::new(
            code,
            format!("{what} {s:?} must be an absolute path"),
        ))
    }
}

#[cfg(test)]
mod tests;
