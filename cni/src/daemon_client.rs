//! [`GrpcDaemon`]: the [`Daemon`] that calls meshnetd's `meshnet.v1.Local` service over its unix
//! socket.
//!
//! One connection per call (a CNI invocation makes at most one call). The timeout bounds the
//! whole call, connect included, so a wedged daemon cannot hang the container runtime.

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
}

impl GrpcDaemon {
    /// A client for the daemon described by `config`.
    pub fn new(config: &DaemonConfig) -> Self {
        GrpcDaemon {
            socket: config.socket.clone(),
            timeout: config.timeout,
        }
    }

    async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, DaemonError>
    where
        F: FnOnce(LocalClient<Channel>) -> Fut + Send,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
    {
        let work = async {
            let channel = connect(&self.socket).await?;
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

/// Opens an HTTP/2 channel over the unix socket.
async fn connect(socket: &Path) -> Result<Channel, DaemonError> {
    let path = socket.to_path_buf();
    // The URI only satisfies the HTTP layer; the connector below dials the socket instead.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| DaemonError::Unreachable {
            socket: socket.to_path_buf(),
            detail: error_chain(&e),
        })
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
        self.call(|mut c| async move { c.add(pod).await }).await
    }

    async fn del(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.call(|mut c| async move { c.del(pod).await }).await
    }

    async fn check(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.call(|mut c| async move { c.check(pod).await }).await
    }

    async fn status(&self) -> Result<StatusReply, DaemonError> {
        self.call(|mut c| async move { c.status(StatusRequest {}).await })
            .await
    }

    async fn gc(&self, valid_attachments: Vec<Attachment>) -> Result<GcReply, DaemonError> {
        self.call(|mut c| async move { c.gc(GcRequest { valid_attachments }).await })
            .await
    }
}
