//! [`GrpcDaemon`]: the [`Daemon`] that calls meshnetd's `meshnet.v1.Local` service over its unix
//! socket.
//!
//! One connection per call (a CNI invocation makes at most one call). The timeout bounds the
//! whole call, connect included, so a wedged daemon cannot hang the container runtime.
//!
//! A daemon that is away — its socket missing or refusing, as during a DaemonSet rollout, when
//! the conflist stays in place and the plugin is still called — is waited for, polling every
//! [`SOCKET_POLL`], for [`DaemonConfig::socket_wait`] (ADD, DEL, CHECK; STATUS and GC answer at
//! once). The wait is shorter than the timeout, so a daemon that stays away ends in the
//! retryable 11 and the runtime tries the sandbox again; one that comes back serves the call.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use meshnet_proto::v1::local_client::LocalClient;
use meshnet_proto::v1::{
    Attachment, GcReply, GcRequest, PodReply, PodRequest, StatusReply, StatusRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::netconf::DaemonConfig;
use crate::{Daemon, DaemonError};

/// meshnetd reached over its unix socket. Creating one does no I/O.
#[derive(Debug, Clone)]
pub struct GrpcDaemon {
    socket: PathBuf,
    timeout: Duration,
    socket_wait: Duration,
}

/// How often a missing or refusing socket is tried again while waiting for meshnetd.
pub const SOCKET_POLL: Duration = Duration::from_millis(100);

impl GrpcDaemon {
    /// A client for the daemon described by `config`.
    pub fn new(config: &DaemonConfig) -> Self {
        GrpcDaemon {
            socket: config.socket.clone(),
            timeout: config.timeout,
            socket_wait: config.socket_wait(),
        }
    }

    /// One call; `wait` says whether an absent daemon is waited for (see the module doc).
    async fn call<T, F, Fut>(&self, wait: bool, rpc: F) -> Result<T, DaemonError>
    where
        F: FnOnce(LocalClient<Channel>) -> Fut + Send,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
    {
        let work = async {
            let wait = if wait {
                self.socket_wait
            } else {
                Duration::ZERO
            };
            let channel = connect(&self.socket, wait).await?;
            Ok(rpc(LocalClient::new(channel)).await?.into_inner())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| DaemonError::Timeout {
                socket: self.socket.clone(),
                after: self.timeout,
            })?
    }
}

/// Opens an HTTP/2 channel over the unix socket, waiting up to `wait` for a daemon that is away.
async fn connect(socket: &Path, wait: Duration) -> Result<Channel, DaemonError> {
    let path = socket.to_path_buf();
    let deadline = tokio::time::Instant::now() + wait;
    // The URI only satisfies the HTTP layer; the connector below dials the socket instead.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(dial(&path, deadline).await?)) }
        }))
        .await
        .map_err(|e| {
            let mut detail = error_chain(&e);
            if !wait.is_zero() {
                detail.push_str(&format!(
                    " (waited {:.1}s for meshnetd)",
                    wait.as_secs_f64()
                ));
            }
            DaemonError::Unreachable {
                socket: socket.to_path_buf(),
                detail,
            }
        })
}

/// Connects to `path`, trying again until `deadline` while nobody is there: the socket file is
/// missing (daemon not started yet) or refuses (daemon gone, stale file). Any other error, e.g.
/// permission denied, is final at once.
async fn dial(path: &Path, deadline: tokio::time::Instant) -> io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if daemon_away(&e) && tokio::time::Instant::now() + SOCKET_POLL <= deadline => {
                tokio::time::sleep(SOCKET_POLL).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn daemon_away(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// `e` and its causes, joined: tonic's transport error alone says only "transport error". A
/// cause whose text its wrapper already repeats is skipped.
fn error_chain(e: &tonic::transport::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[async_trait]
impl Daemon for GrpcDaemon {
    async fn add(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.call(true, |mut c| async move { c.add(pod).await })
            .await
    }

    async fn del(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.call(true, |mut c| async move { c.del(pod).await })
            .await
    }

    async fn check(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.call(true, |mut c| async move { c.check(pod).await })
            .await
    }

    async fn status(&self) -> Result<StatusReply, DaemonError> {
        self.call(
            false,
            |mut c| async move { c.status(StatusRequest {}).await },
        )
        .await
    }

    async fn gc(&self, valid_attachments: Vec<Attachment>) -> Result<GcReply, DaemonError> {
        self.call(false, |mut c| async move {
            c.gc(GcRequest { valid_attachments }).await
        })
        .await
    }
}
