//! The `meshnet` CNI plugin: a chained plugin that asks the node daemon `meshnetd` to plumb a
//! pod's links, then passes the previous plugin's result through.
//!
//! Pure core, thin shell: [`Invocation::parse`] turns the environment and stdin into a validated
//! request without any I/O; [`Invocation::execute`] talks to meshnetd only through the
//! [`Daemon`] trait (the real one is [`daemon_client::GrpcDaemon`], tests use fakes); [`run`]
//! ties both together and renders the one thing that goes to stdout: the result JSON, or the
//! error JSON ([`CniError`]), or nothing. `main.rs` only reads the process environment and stdin,
//! sets up logging and the runtime, and prints the [`Outcome`].
//!
//! A pod is a Kubernetes pod when `CNI_ARGS` names `K8S_POD_NAME`; anything else is not
//! meshnet's business: ADD passes `prevResult` through, DEL and CHECK succeed, and meshnetd is
//! never contacted.
#![forbid(unsafe_code)]

pub mod daemon_client;
pub mod env;
pub mod error;
pub mod netconf;
pub mod result;
pub mod version;

use async_trait::async_trait;
use meshnet_proto::v1::{
    Attachment, GcReply, LinkReport, LinkState, PodReply, PodRequest, StatusReply,
};
use serde_json::Value;

pub use crate::env::{CniEnv, Command, PodName, Sandbox};
pub use crate::error::{CniError, DaemonError, ErrorCode};
pub use crate::netconf::{DaemonConfig, NetConf};
pub use crate::result::{convert_result, empty_result};
pub use crate::version::CniVersion;

/// The local API of meshnetd, as the plugin uses it. One call per method per invocation.
#[async_trait]
pub trait Daemon: Send + Sync {
    /// Plumbs the pod (CNI ADD).
    async fn add(&self, pod: PodRequest) -> Result<PodReply, DaemonError>;
    /// Releases the pod (CNI DEL). Idempotent on the daemon side.
    async fn del(&self, pod: PodRequest) -> Result<PodReply, DaemonError>;
    /// Reports the pod's links (CNI CHECK).
    async fn check(&self, pod: PodRequest) -> Result<PodReply, DaemonError>;
    /// Reports whether the daemon can serve ADD (CNI STATUS).
    async fn status(&self) -> Result<StatusReply, DaemonError>;
    /// Releases pods whose sandbox is not in `valid_attachments` (CNI GC).
    async fn gc(&self, valid_attachments: Vec<Attachment>) -> Result<GcReply, DaemonError>;
}

/// A borrowed daemon is a daemon (tests keep the fake to inspect it afterwards).
#[async_trait]
impl<T: Daemon + ?Sized> Daemon for &T {
    async fn add(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        (**self).add(pod).await
    }
    async fn del(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        (**self).del(pod).await
    }
    async fn check(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        (**self).check(pod).await
    }
    async fn status(&self) -> Result<StatusReply, DaemonError> {
        (**self).status().await
    }
    async fn gc(&self, valid_attachments: Vec<Attachment>) -> Result<GcReply, DaemonError> {
        (**self).gc(valid_attachments).await
    }
}

/// What one invocation asks for, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// VERSION.
    Version,
    /// ADD: `result` is `prevResult` already converted to the request's version.
    Add {
        /// The sandbox.
        sandbox: Sandbox,
        /// The Kubernetes pod; `None` when `CNI_ARGS` names none.
        pod: Option<PodName>,
        /// What ADD prints on success.
        result: Value,
    },
    /// DEL.
    Del {
        /// The sandbox (`netns` may be absent).
        sandbox: Sandbox,
        /// The Kubernetes pod; `None` when `CNI_ARGS` names none.
        pod: Option<PodName>,
    },
    /// CHECK (0.4.0+; `prevResult` present and valid).
    Check {
        /// The sandbox.
        sandbox: Sandbox,
        /// The Kubernetes pod; `None` when `CNI_ARGS` names none.
        pod: Option<PodName>,
    },
    /// STATUS (1.1.0+).
    Status,
    /// GC (1.1.0+).
    Gc {
        /// The attachments the runtime still has, of every network.
        valid_attachments: Vec<Attachment>,
    },
}

/// A validated invocation: the version to answer in, how to reach meshnetd, what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The request's `cniVersion` (VERSION: stdin's if supported, else the latest).
    pub version: CniVersion,
    /// How to reach meshnetd (defaults for VERSION).
    pub daemon: DaemonConfig,
    /// What to do.
    pub request: Request,
}

impl Invocation {
    /// Validates the environment and stdin. Does no I/O.
    ///
    /// # Errors
    /// The CNI error to print: 4 for the environment, 6/7/1 for stdin (see [`NetConf::parse`]),
    /// 1 for CHECK before 0.4.0 and STATUS/GC before 1.1.0, 7 for CHECK without `prevResult` or
    /// GC without `cni.dev/valid-attachments`, 6 for a `prevResult` that is not a result.
    pub fn parse(env: &CniEnv, stdin: &[u8]) -> Result<Invocation, CniError> {
        let command = env.command()?;
        if command == Command::Version {
            return Ok(Invocation {
                version: netconf::sniff_version(stdin).unwrap_or(CniVersion::LATEST),
                daemon: DaemonConfig::default(),
                request: Request::Version,
            });
        }
        let sandbox = match command {
            Command::Add | Command::Del | Command::Check => Some(env.sandbox(command)?),
            _ => None,
        };
        if stdin.len() > netconf::MAX_STDIN_BYTES {
            return Err(CniError::new(
                ErrorCode::Decode,
                format!(
                    "network config on stdin is larger than {} bytes",
                    netconf::MAX_STDIN_BYTES
                ),
            ));
        }
        let conf = NetConf::parse(stdin, env)?;
        let version = conf.version;
        let not_allowed = || {
            CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("config version {version} does not allow {command}"),
            )
        };
        let request = match (command, sandbox) {
            (Command::Add, Some(sandbox)) => Request::Add {
                pod: env.pod()?,
                result: match &conf.prev_result {
                    Some(prev) => convert_result(prev, version)?,
                    None => empty_result(version),
                },
                sandbox,
            },
            // DEL must get through: prevResult is not looked at.
            (Command::Del, Some(sandbox)) => Request::Del {
                pod: env.pod()?,
                sandbox,
            },
            (Command::Check, Some(sandbox)) => {
                if !version.allows_check() {
                    return Err(not_allowed());
                }
                let prev = conf.prev_result.as_ref().ok_or_else(|| {
                    CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK requires prevResult")
                })?;
                convert_result(prev, version)?;
                Request::Check {
                    pod: env.pod()?,
                    sandbox,
                }
            }
            (Command::Status, _) if version.allows_status_and_gc() => Request::Status,
            (Command::Gc, _) if version.allows_status_and_gc() => Request::Gc {
                valid_attachments: conf.valid_attachments.ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidNetworkConfig,
                        format!("GC requires {}", netconf::VALID_ATTACHMENTS),
                    )
                })?,
            },
            _ => return Err(not_allowed()),
        };
        Ok(Invocation {
            version,
            daemon: conf.daemon,
            request,
        })
    }

    /// The command this invocation runs.
    pub fn command(&self) -> Command {
        match self.request {
            Request::Version => Command::Version,
            Request::Add { .. } => Command::Add,
            Request::Del { .. } => Command::Del,
            Request::Check { .. } => Command::Check,
            Request::Status => Command::Status,
            Request::Gc { .. } => Command::Gc,
        }
    }

    /// The Kubernetes pod this invocation is about, if any.
    pub fn pod(&self) -> Option<&PodName> {
        match &self.request {
            Request::Add { pod, .. } | Request::Del { pod, .. } | Request::Check { pod, .. } => {
                pod.as_ref()
            }
            _ => None,
        }
    }

    /// Runs the request against meshnetd. Returns what to print on stdout (`None`: nothing).
    ///
    /// # Errors
    /// The CNI error to print: daemon failures as mapped by [`CniError::from_daemon`]; 100 when
    /// CHECK finds a link in error; 50 when STATUS finds meshnetd not ready.
    pub async fn execute(&self, daemon: &dyn Daemon) -> Result<Option<Value>, CniError> {
        let command = self.command();
        let failed = |e: DaemonError| CniError::from_daemon(&e, command);
        match &self.request {
            Request::Version => Ok(Some(self.version.version_info())),
            Request::Add {
                sandbox,
                pod,
                result,
            } => {
                if let Some(pod) = pod {
                    let reply = daemon
                        .add(pod_request(sandbox, pod))
                        .await
                        .map_err(failed)?;
                    log_reply(pod, &reply);
                } else {
                    tracing::info!("not a Kubernetes pod: passing prevResult through");
                }
                Ok(Some(result.clone()))
            }
            Request::Del { sandbox, pod } => {
                if let Some(pod) = pod {
                    daemon
                        .del(pod_request(sandbox, pod))
                        .await
                        .map_err(failed)?;
                }
                Ok(None)
            }
            Request::Check { sandbox, pod } => {
                if let Some(pod) = pod {
                    let reply = daemon
                        .check(pod_request(sandbox, pod))
                        .await
                        .map_err(failed)?;
                    log_reply(pod, &reply);
                    check_links(&reply)?;
                }
                Ok(None)
            }
            Request::Status => {
                let reply = daemon.status().await.map_err(failed)?;
                if reply.ready {
                    Ok(None)
                } else {
                    Err(CniError::new(
                        ErrorCode::NotAvailable,
                        format!("meshnetd is not ready: {}", reply.message),
                    ))
                }
            }
            Request::Gc { valid_attachments } => {
                let reply = daemon.gc(valid_attachments.clone()).await.map_err(failed)?;
                tracing::info!(released = ?reply.released, "GC done");
                Ok(None)
            }
        }
    }
}

fn pod_request(sandbox: &Sandbox, pod: &PodName) -> PodRequest {
    PodRequest {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        container_id: sandbox.container_id.clone(),
        net_ns: sandbox.netns.clone().unwrap_or_default(),
        ifname: sandbox.ifname.clone(),
    }
}

fn log_reply(pod: &PodName, reply: &PodReply) {
    if !reply.managed {
        tracing::info!(%pod, "pod has no Topology: passing prevResult through");
    }
    for link in &reply.links {
        tracing::info!(
            %pod,
            link_uid = link.uid,
            local_intf = %link.local_intf,
            peer_pod = %link.peer_pod,
            peer_intf = %link.peer_intf,
            kind = %link.kind,
            state = ?link.state(),
            message = %link.message,
            "link"
        );
    }
}

/// CHECK fails when meshnetd reports any link in error.
fn check_links(reply: &PodReply) -> Result<(), CniError> {
    let broken: Vec<String> = reply
        .links
        .iter()
        .filter(|l| l.state() == LinkState::Error)
        .map(describe_link)
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::LinkFailed,
            format!("meshnet: CHECK failed: {}", broken.join("; ")),
        ))
    }
}

fn describe_link(l: &LinkReport) -> String {
    format!(
        "link {} ({} to {}:{}): {}",
        l.uid, l.local_intf, l.peer_pod, l.peer_intf, l.message
    )
}

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The complete stdout: one JSON object and a newline, or nothing.
    pub stdout: String,
    /// 0 on success, 1 on a CNI error.
    pub exit_code: u8,
}

impl Outcome {
    /// Success, printing `value` if any.
    pub fn success(value: Option<&Value>) -> Outcome {
        Outcome {
            stdout: value.map(|v| format!("{v}\n")).unwrap_or_default(),
            exit_code: 0,
        }
    }

    /// Failure: the error JSON, tagged with `version`.
    pub fn failure(version: CniVersion, err: &CniError) -> Outcome {
        Outcome {
            stdout: format!("{}\n", err.to_json(version)),
            exit_code: 1,
        }
    }
}

/// Runs one invocation: parse, connect with `connect` (only when meshnetd is needed; it is
/// handed the resolved [`DaemonConfig`]), execute, render. Logs the request and its result.
pub async fn run<D: Daemon>(
    env: &CniEnv,
    stdin: &[u8],
    connect: impl FnOnce(&DaemonConfig) -> D,
) -> Outcome {
    let raw_command = env.display(env::CNI_COMMAND);
    let container_id = env.display(env::CNI_CONTAINERID);
    let pod = env
        .pod()
        .ok()
        .flatten()
        .map_or_else(|| "-".to_owned(), |p| p.to_string());
    tracing::info!(command = %raw_command, %container_id, %pod, "CNI request");
    let parsed = Invocation::parse(env, stdin);
    let version = match &parsed {
        Ok(inv) => inv.version,
        Err(_) => netconf::sniff_version(stdin).unwrap_or(CniVersion::LATEST),
    };
    let result = match parsed {
        Ok(inv) => {
            let daemon = connect(&inv.daemon);
            inv.execute(&daemon).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(out) => {
            tracing::info!(command = %raw_command, %container_id, %pod, cni_version = %version, "ok");
            Outcome::success(out.as_ref())
        }
        Err(e) => {
            tracing::warn!(
                command = %raw_command,
                %container_id,
                %pod,
                cni_version = %version,
                code = e.code.as_u32(),
                msg = ?e.msg,
                details = ?e.details,
                "failed"
            );
            Outcome::failure(version, &e)
        }
    }
}

#[cfg(test)]
mod tests;
