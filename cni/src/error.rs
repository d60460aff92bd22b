//! CNI errors: the well-known codes, the JSON printed on stdout, and the one place where daemon
//! failures become CNI error codes ([`CniError::from_daemon`]).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::env::Command;
use crate::version::CniVersion;

/// The CNI error codes this plugin returns. 0–99 are the spec's well-known codes; 100 and up are
/// ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: incompatible CNI version (unknown `cniVersion`, or a command the version lacks).
    IncompatibleVersion,
    /// 4: invalid or missing `CNI_*` environment variables (`CNI_ARGS` included).
    InvalidEnvironment,
    /// 5: I/O failure (reading stdin).
    Io,
    /// 6: stdin or `prevResult` could not be decoded.
    Decode,
    /// 7: the network configuration is invalid.
    InvalidNetworkConfig,
    /// 11: try again later (meshnetd unreachable or temporarily unable).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now.
    NotAvailable,
    /// 100: meshnet-specific: a link could not be built, or CHECK found one broken.
    LinkFailed,
}

impl ErrorCode {
    /// The numeric code written in the error JSON.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::LinkFailed => 100,
        }
    }
}

/// A CNI error as the spec defines it: printed on stdout as the only output, exit code non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}{}", code.as_u32(), if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// The error code.
    pub code: ErrorCode,
    /// A short message.
    pub msg: String,
    /// Longer detail (the underlying cause); may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a message and no details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the longer explanation.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON printed on stdout, tagged with the request's `cniVersion`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        json!({
            "cniVersion": version.as_str(),
            "code": self.code.as_u32(),
            "msg": self.msg,
            "details": self.details,
        })
    }

    /// Maps a failed daemon call for `command` onto a CNI error. The only place this happens.
    ///
    /// * STATUS: any failure is 50 (the plugin cannot serve ADD).
    /// * Unreachable socket, timeout, `Unavailable`, `DeadlineExceeded`: 11, try again later.
    /// * `InvalidArgument`: 4 when the daemon names a value that came from the environment
    ///   (`CNI_NETNS`, `CNI_CONTAINERID`, `K8S_POD_NAME`, ...), else 7.
    /// * Anything else (link build failures, `FailedPrecondition`, `Internal`): 100.
    pub fn from_daemon(err: &DaemonError, command: Command) -> Self {
        let transient = if command == Command::Status {
            ErrorCode::NotAvailable
        } else {
            ErrorCode::TryAgainLater
        };
        match err {
            DaemonError::Unreachable { socket, detail } => CniError::new(
                transient,
                format!("meshnetd is not reachable at {}", socket.display()),
            )
            .with_details(detail.clone()),
            DaemonError::Timeout { socket, after } => CniError::new(
                transient,
                format!(
                    "meshnetd at {} did not answer within {}s",
                    socket.display(),
                    after.as_secs()
                ),
            ),
            DaemonError::Rpc(status) => {
                let message = status.message();
                let details = format!("meshnetd answered {:?}", status.code());
                let code = match status.code() {
                    _ if command == Command::Status => ErrorCode::NotAvailable,
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        ErrorCode::TryAgainLater
                    }
                    tonic::Code::InvalidArgument if names_environment(message) => {
                        ErrorCode::InvalidEnvironment
                    }
                    tonic::Code::InvalidArgument => ErrorCode::InvalidNetworkConfig,
                    _ => ErrorCode::LinkFailed,
                };
                CniError::new(code, format!("meshnet: {message}")).with_details(details)
            }
        }
    }
}

/// Whether a daemon message is about a value the runtime passed in the environment.
fn names_environment(message: &str) -> bool {
    message.contains("CNI_") || message.contains("K8S_POD_")
}

/// Why a call to meshnetd failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The unix socket could not be connected to.
    #[error("meshnetd is not reachable at {}: {detail}", socket.display())]
    Unreachable {
        /// The socket path tried.
        socket: PathBuf,
        /// The connection error, with its causes.
        detail: String,
    },
    /// The whole call (connect included) took longer than the configured timeout.
    #[error("meshnetd at {} did not answer within {after:?}", socket.display())]
    Timeout {
        /// The socket path called.
        socket: PathBuf,
        /// The timeout that expired.
        after: Duration,
    },
    /// meshnetd answered with an error.
    #[error("meshnetd: {0}")]
    Rpc(#[from] tonic::Status),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_exactly_the_spec_fields() {
        let e = CniError::new(ErrorCode::Decode, "decoding stdin").with_details("EOF at 1:3");
        assert_eq!(
            e.to_json(CniVersion::V0_4_0),
            json!({"cniVersion": "0.4.0", "code": 6, "msg": "decoding stdin", "details": "EOF at 1:3"})
        );
        let bare = CniError::new(ErrorCode::LinkFailed, "x").to_json(CniVersion::V1_1_0);
        assert_eq!(bare["details"], "");
        assert_eq!(bare["code"], 100);
    }

    #[test]
    fn plugin_specific_codes_are_at_least_100() {
        assert!(ErrorCode::LinkFailed.as_u32() >= 100);
        assert!(ErrorCode::NotAvailable.as_u32() < 100);
    }

    fn map(err: DaemonError, command: Command) -> (u32, String) {
        let e = CniError::from_daemon(&err, command);
        (e.code.as_u32(), e.msg)
    }

    #[test]
    fn daemon_errors_map_to_cni_codes() {
        let socket = PathBuf::from("/run/meshnet/meshnetd.sock");
        let unreachable = || DaemonError::Unreachable {
            socket: socket.clone(),
            detail: "No such file or directory".into(),
        };
        let (code, msg) = map(unreachable(), Command::Add);
        assert_eq!(code, 11);
        assert_eq!(
            msg,
            "meshnetd is not reachable at /run/meshnet/meshnetd.sock"
        );
        assert_eq!(map(unreachable(), Command::Status).0, 50);
        let timeout = DaemonError::Timeout {
            socket: socket.clone(),
            after: Duration::from_secs(120),
        };
        assert_eq!(map(timeout, Command::Del).0, 11);

        let rpc = |s: tonic::Status, c| map(DaemonError::Rpc(s), c).0;
        assert_eq!(
            rpc(tonic::Status::unavailable("store down"), Command::Add),
            11
        );
        assert_eq!(
            rpc(
                tonic::Status::invalid_argument("CNI_NETNS: no such file"),
                Command::Add
            ),
            4
        );
        assert_eq!(
            rpc(
                tonic::Status::invalid_argument("pod name is empty (K8S_POD_NAME)"),
                Command::Del
            ),
            4
        );
        assert_eq!(
            rpc(
                tonic::Status::invalid_argument("topology default/r1: bad uid"),
                Command::Add
            ),
            7
        );
        assert_eq!(
            rpc(tonic::Status::internal("veth failed"), Command::Add),
            100
        );
        assert_eq!(
            rpc(tonic::Status::failed_precondition("no"), Command::Check),
            100
        );
        assert_eq!(rpc(tonic::Status::internal("boom"), Command::Status), 50);
        let (_, msg) = map(
            DaemonError::Rpc(tonic::Status::internal("veth failed")),
            Command::Add,
        );
        assert_eq!(msg, "meshnet: veth failed");
    }
}
