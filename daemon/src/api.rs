//! The local API (`meshnet.v1.Local`) served to the CNI plugin on a unix socket.
//!
//! Maps requests onto the [`Reconciler`] and its errors onto `tonic::Status` in exactly one place
//! ([`status_of`]): invalid requests are `InvalidArgument`, store outages `Unavailable`, a link
//! whose name is taken `AlreadyExists`, a link the node or namespace cannot carry (or that CHECK
//! finds missing) `FailedPrecondition`, kernel failures `Internal` — the CNI plugin turns those
//! into CNI error codes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use meshnet_proto::v1::local_server::Local;
use meshnet_proto::v1::{
    GcReply, GcRequest, LinkReport, LinkState as PbState, PodReply, PodRequest, StatusReply,
    StatusRequest,
};
use tonic::{Request, Response, Status};

use crate::links::LinkFault;
use crate::netns;
use crate::reconcile::{PodReport, ReconcileError, Reconciler};
use crate::store::StoreError;
use crate::topology::{LinkState, PodKey};

/// The `Local` service.
#[derive(Debug, Clone)]
pub struct LocalApi {
    reconciler: Arc<Reconciler>,
    ready: Arc<AtomicBool>,
    capture: crate::capture::CaptureConfig,
}

impl LocalApi {
    pub fn new(reconciler: Arc<Reconciler>, ready: Arc<AtomicBool>) -> Self {
        LocalApi {
            reconciler,
            ready,
            capture: crate::capture::CaptureConfig::default(),
        }
    }

    /// What live captures need (metrics, the daemon's stop signal).
    pub fn with_capture(mut self, capture: crate::capture::CaptureConfig) -> Self {
        self.capture = capture;
        self
    }
}

/// The one place reconciler errors become gRPC codes (the plugin turns `Unavailable` into CNI
/// code 11, `InvalidArgument` into 4/7, everything else into 100 with the message).
fn status_of(e: ReconcileError) -> Status {
    let m = e.to_string();
    match e {
        ReconcileError::Store(StoreError::Io { .. } | StoreError::Backend(_)) => {
            Status::unavailable(format!("topology store unavailable: {m}"))
        }
        ReconcileError::Store(StoreError::Invalid { .. }) => Status::invalid_argument(m),
        ReconcileError::Store(_) => Status::internal(m),
        ReconcileError::Link { fault, .. } => match fault {
            LinkFault::Occupied => Status::already_exists(m),
            LinkFault::Namespace | LinkFault::Node | LinkFault::Differs => {
                Status::failed_precondition(m)
            }
            LinkFault::Kernel => Status::internal(m),
        },
        ReconcileError::NotRecorded { .. } | ReconcileError::NotOnThisNode { .. } => {
            Status::failed_precondition(m)
        }
        ReconcileError::VanishedDuringAdd { .. } => Status::aborted(m),
    }
}

fn report_pb(r: &PodReport) -> Vec<LinkReport> {
    r.statuses()
        .into_iter()
        .zip(&r.links)
        .map(|(s, (p, _))| LinkReport {
            uid: s.uid,
            local_intf: s.local_intf,
            peer_pod: s.peer_pod,
            peer_intf: match &p.action {
                crate::plan::Action::Veth(v) => {
                    if v.a.ifname == p.local_intf {
                        v.b.ifname.clone()
                    } else {
                        v.a.ifname.clone()
                    }
                }
                _ => String::new(),
            },
            kind: s.kind,
            state: match s.state {
                LinkState::Pending => PbState::Pending,
                LinkState::Up => PbState::Up,
                LinkState::Error => PbState::Error,
                LinkState::Down => PbState::Down,
            } as i32,
            message: s.message,
        })
        .collect()
}

/// Checks the fields every pod request needs, naming the first one that is wrong.
fn pod_key(req: &PodRequest) -> Result<PodKey, Status> {
    if req.name.is_empty() {
        return Err(Status::invalid_argument("pod name is empty (K8S_POD_NAME)"));
    }
    if req.container_id.is_empty() {
        return Err(Status::invalid_argument(
            "container id is empty (CNI_CONTAINERID)",
        ));
    }
    Ok(PodKey::new(&req.namespace, &req.name))
}

fn observe(op: &'static str, started: Instant, ok: bool) {
    metrics::histogram!("meshnet_cni_request_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("meshnet_cni_requests_total", "op" => op, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

#[tonic::async_trait]
impl Local for LocalApi {
    async fn add(&self, request: Request<PodRequest>) -> Result<Response<PodReply>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let r = async {
            let key = pod_key(&req)?;
            if req.net_ns.is_empty() {
                return Err(Status::invalid_argument("network namespace is empty (CNI_NETNS)"));
            }
            netns::check(Path::new(&req.net_ns))
                .await
                .map_err(|e| Status::invalid_argument(format!("CNI_NETNS: {e}")))?;
            tracing::info!(pod = %key, container_id = %req.container_id, net_ns = %req.net_ns, "ADD");
            let report = self
                .reconciler
                .add(&key, &req.container_id, &req.net_ns, &req.ifname)
                .await
                .map_err(status_of)?;
            Ok(PodReply {
                managed: report.is_some(),
                links: report.as_ref().map(report_pb).unwrap_or_default(),
            })
        }
        .await;
        observe("add", started, r.is_ok());
        if let Err(e) = &r {
            tracing::warn!(pod = %req.name, namespace = %req.namespace, error = %e.message(), "ADD failed");
        }
        r.map(Response::new)
    }

    async fn del(&self, request: Request<PodRequest>) -> Result<Response<PodReply>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let r = async {
            if req.name.is_empty() {
                // Nothing identifies a pod: nothing of ours can be attached to it.
                return Ok(PodReply::default());
            }
            let key = PodKey::new(&req.namespace, &req.name);
            tracing::info!(pod = %key, container_id = %req.container_id, "DEL");
            let managed = self
                .reconciler
                .del(&key, &req.container_id, &req.net_ns)
                .await
                .map_err(status_of)?;
            Ok(PodReply {
                managed,
                links: Vec::new(),
            })
        }
        .await;
        observe("del", started, r.is_ok());
        r.map(Response::new)
    }

    async fn check(&self, request: Request<PodRequest>) -> Result<Response<PodReply>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let r = async {
            let key = pod_key(&req)?;
            let report = self
                .reconciler
                .check(&key, &req.container_id)
                .await
                .map_err(status_of)?;
            Ok(PodReply {
                managed: report.is_some(),
                links: report.as_ref().map(report_pb).unwrap_or_default(),
            })
        }
        .await;
        observe("check", started, r.is_ok());
        r.map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let ready = self.ready.load(Ordering::Acquire);
        Ok(Response::new(StatusReply {
            ready,
            message: if ready {
                String::new()
            } else {
                "initial sync with the topology store has not completed".into()
            },
            node_name: self.reconciler.node().name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn gc(&self, request: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let started = Instant::now();
        let valid: HashSet<String> = request
            .into_inner()
            .valid_attachments
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        let r = self.reconciler.gc(&valid).await.map_err(status_of);
        observe("gc", started, r.is_ok());
        Ok(Response::new(GcReply {
            released: r?.into_iter().map(|k| k.to_string()).collect(),
        }))
    }

    type CaptureStream = crate::capture::CaptureStream;

    /// Live capture: see [`crate::capture`].
    async fn capture(
        &self,
        request: Request<meshnet_proto::v1::CaptureRequest>,
    ) -> Result<Response<Self::CaptureStream>, Status> {
        crate::capture::start(&self.reconciler, &self.capture, request.into_inner())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn link(fault: LinkFault) -> ReconcileError {
        ReconcileError::Link {
            pod: PodKey::new("default", "r1"),
            uid: 1,
            local_intf: "eth1".into(),
            fault,
            message: "why".into(),
        }
    }

    #[test]
    fn each_error_maps_to_one_code_and_keeps_its_message() {
        for (fault, code) in [
            (LinkFault::Occupied, Code::AlreadyExists),
            (LinkFault::Namespace, Code::FailedPrecondition),
            (LinkFault::Node, Code::FailedPrecondition),
            (LinkFault::Differs, Code::FailedPrecondition),
            (LinkFault::Kernel, Code::Internal),
        ] {
            let s = status_of(link(fault));
            assert_eq!(s.code(), code, "{fault:?}");
            assert_eq!(s.message(), "link uid 1 (eth1) of pod default/r1: why");
        }
        let s = status_of(ReconcileError::VanishedDuringAdd {
            pod: PodKey::new("default", "r1"),
        });
        assert_eq!(s.code(), Code::Aborted);
        let s = status_of(ReconcileError::NotOnThisNode {
            pod: PodKey::new("default", "r1"),
            src_ip: "198.51.100.2".into(),
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("198.51.100.2"), "{}", s.message());
    }
}
