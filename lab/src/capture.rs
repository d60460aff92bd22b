//! `meshnet-lab capture POD:INTF`: the client of a node daemon's `Local/Capture` RPC.
//!
//! The lab finds the pod's node in its state and talks to that daemon's **unix socket** (the
//! local API; capture is not served on the network-reachable HTTP port). The pcapng bytes are
//! copied as they come to a file or stdout (`| wireshark -k -i -`, `| tcpdump -r -`), until the
//! daemon ends the stream (`-c N` frames written), Ctrl-C, or the reader of stdout going away
//! (a broken pipe ends the capture quietly). A summary goes to stderr.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use meshnet_proto::v1::CaptureRequest;
use meshnet_proto::v1::local_client::LocalClient;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::lab::{LabState, find_pod};

/// Splits `POD:INTF` (POD may be `NAMESPACE/POD`) at its last colon.
///
/// # Errors
/// No colon, or an empty side.
pub fn parse_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.rsplit_once(':') {
        Some((pod, intf)) if !pod.is_empty() && !intf.is_empty() => Ok((pod, intf)),
        _ => bail!("capture target {target:?} is not POD:INTERFACE (e.g. r1:eth1)"),
    }
}

/// How the capture ended, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The daemon closed the stream (frame limit reached, or the interface went away).
    Daemon,
    Interrupted,
    ReaderGone,
}

/// Runs a capture of `target` in the lab `st` to `write` (or stdout), stopping after `count`
/// frames if non-zero.
///
/// # Errors
/// Unknown pod or node, the daemon unreachable or refusing the capture (its message names
/// why), or the output file cannot be written.
pub fn run(st: &LabState, target: &str, write: Option<&Path>, count: u64) -> anyhow::Result<()> {
    let (pod, intf) = parse_target(target)?;
    let p = &st.pods[find_pod(st, pod)?];
    let node = st
        .nodes
        .iter()
        .find(|n| n.name == p.node)
        .with_context(|| format!("pod {pod} runs on node {:?}, not in the lab", p.node))?;
    let req = CaptureRequest {
        namespace: p.namespace.clone(),
        pod: p.name.clone(),
        interface: intf.to_string(),
        max_frames: count,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let socket = node.socket.clone();
    let write = write.map(Path::to_path_buf);
    let r = rt.block_on(stream(socket, req, write));
    // A write to a stalled stdout may still be pending on a blocking thread after Ctrl-C:
    // do not wait for it (the process exits right after).
    rt.shutdown_background();
    r
}

async fn stream(
    socket: PathBuf,
    req: CaptureRequest,
    write: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut out = match &write {
        Some(path) => tokio::fs::File::create(path)
            .await
            .with_context(|| format!("creating {}", path.display()))?,
        None => {
            let fd = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating stdout")?;
            tokio::fs::File::from_std(std::fs::File::from(fd))
        }
    };
    let what = format!("{}/{}:{}", req.namespace, req.pod, req.interface);
    let channel = connect(&socket).await?;
    let mut s = LocalClient::new(channel)
        .capture(req)
        .await
        .map_err(|e| anyhow::anyhow!("capture of {what}: {}", e.message()))?
        .into_inner();
    let (mut frames, mut dropped) = (0u64, 0u64);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let ended = loop {
        let chunk = tokio::select! {
            c = s.message() => c,
            _ = &mut ctrl_c => break Ended::Interrupted,
        };
        let chunk = match chunk {
            Ok(Some(c)) => c,
            Ok(None) => break Ended::Daemon,
            Err(e) => bail!("capture of {what}: {}", e.message()),
        };
        (frames, dropped) = (chunk.frames, chunk.dropped);
        let written = tokio::select! {
            w = async {
                out.write_all(&chunk.data).await?;
                out.flush().await
            } => w,
            _ = &mut ctrl_c => break Ended::Interrupted,
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Ended::ReaderGone,
            Err(e) => {
                return Err(e).with_context(|| match &write {
                    Some(p) => format!("writing {}", p.display()),
                    None => "writing stdout".to_string(),
                });
            }
        }
    };
    let how = match ended {
        Ended::Daemon => "ended",
        Ended::Interrupted => "interrupted",
        Ended::ReaderGone => "reader gone",
    };
    // The totals of the last chunk received: after Ctrl-C on a stalled reader, what the daemon
    // had counted when it sent that chunk (the stream's statistics blocks say the same).
    eprintln!(
        "capture of {what} {how}: {frames} frames written, {dropped} capture frames dropped \
         (a slow reader loses capture frames, never link frames)"
    );
    Ok(())
}

/// An HTTP/2 channel over the daemon's unix socket.
async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let path = socket.to_path_buf();
    // The URI only satisfies the HTTP layer; the connector dials the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to the node daemon at {}", socket.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("r1:eth1").ok(), Some(("r1", "eth1")));
        assert_eq!(parse_target("ns/r1:eth1").ok(), Some(("ns/r1", "eth1")));
        for bad in ["r1", ":eth1", "r1:", ""] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }
}
