//! [`KubeStore`]: the production [`TopologyStore`], backed by the Kubernetes API.
//!
//! * Reads and writes go through `Api<DynamicObject>` for the `Topology` resource, and objects are
//!   decoded straight into the model type ([`meshnet_topology::topology::Topology`]), which
//!   tolerates every shape the Go implementation's clients write (`""`, `null`, no `spec`). One
//!   object that still does not decode is skipped by [`TopologyStore::list`] (and counted), so it
//!   cannot stop every pod's reconcile.
//! * [`TopologyStore::apply`] is a server-side apply with field manager [`FIELD_MANAGER`] and
//!   `force`: it creates the object or replaces its spec and the labels meshnet applied, like
//!   `kubectl apply --server-side --force-conflicts`. Status (a subresource) is never touched, and
//!   an apply that changes nothing does not bump `resourceVersion`.
//! * [`TopologyStore::replace_status`] is a `PUT …/status` carrying the expected
//!   `resourceVersion`: the API server answers 409 if someone else wrote in between, which becomes
//!   [`StoreError::Conflict`] (its `found` is empty: the server does not say which version won).
//! * [`TopologyStore::watch`] feeds a broadcast channel from one background
//!   [`kube::runtime::watcher`] over all namespaces (metadata only: a key is all an event
//!   carries), started on the first subscription. It retries
//!   with exponential backoff (0.8 s to 30 s) forever and never panics. Every (re-)list — the first
//!   one, and the one after a `410 Gone` or any other desync — ends with [`StoreEvent::Resync`], since
//!   changes (deletions above all) between two watches are not reported one by one. A subscriber
//!   that sees its first `Resync` knows the watch is established.
//!
//! Rate limiting: kube-rs has no client-side QPS limiter (client-go defaults to 5 QPS with a burst
//! of 10, slow for a node that brings up hundreds of links at once), and none is added here: a
//! low QPS only delays work. Instead at most [`MAX_IN_FLIGHT`]
//! requests of one store run at once; the others wait their turn in FIFO order (a tokio
//! semaphore), so a burst of thousands of status updates queues instead of failing. Requests the
//! server itself refuses with 429/503/504 (API priority and fairness) are retried by kube's client,
//! honouring `Retry-After`. The watch holds no permit.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PartialObjectMeta,
    Patch, PatchParams, PostParams, TypeMeta,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, Config, CustomResourceExt};
use meshnet_topology::store::{StoreError, StoreEvent, TopologyStore};
use meshnet_topology::topology::{self as model, PodKey, TopologyStatus};
use serde_json::json;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::AbortHandle;

use crate::crd::{FIELD_MANAGER, Topology as TopologyCrd};

/// Most API requests of one store in flight at once (the watch not counted).
pub const MAX_IN_FLIGHT: usize = 32;

/// How many change events a slow subscriber may fall behind before it is told to re-list.
const EVENT_BUFFER: usize = 1024;

/// Objects per page when listing.
const LIST_PAGE: u32 = 500;

/// The Kubernetes API as a topology store; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    resource: ApiResource,
    events: broadcast::Sender<StoreEvent>,
    watcher: Mutex<Option<AbortHandle>>,
    permits: Semaphore,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("resource", &self.inner.resource.plural)
            .field("subscribers", &self.inner.events.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.watcher.get_mut().ok().and_then(Option::take) {
            h.abort();
        }
    }
}

impl KubeStore {
    /// Connects with the usual discovery: in-cluster service account, or `KUBECONFIG` /
    /// `~/.kube/config`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if no configuration is found or it is unusable.
    pub async fn connect() -> Result<Self, StoreError> {
        let client = Client::try_default().await.map_err(|e| {
            StoreError::Backend(format!("cannot configure the Kubernetes client: {e}"))
        })?;
        Ok(Self::from_client(client))
    }

    /// Connects with the current context of the kubeconfig file at `path`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the file cannot be read or used.
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("kubeconfig {}: {e}", path.display()))
        };
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(&e))?;
        let client = Client::try_from(config).map_err(|e| fail(&e))?;
        Ok(Self::from_client(client))
    }

    /// A store using an existing client. Needs a tokio runtime (as the client does).
    pub fn from_client(client: Client) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        KubeStore {
            inner: Arc::new(Inner {
                client,
                resource: TopologyCrd::api_resource(),
                events,
                watcher: Mutex::new(None),
                permits: Semaphore::new(MAX_IN_FLIGHT),
            }),
        }
    }

    /// The client this store uses.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn api_in(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.inner.client.clone(), namespace, &self.inner.resource)
    }

    fn api_all(&self) -> Api<DynamicObject> {
        Api::all_with(self.inner.client.clone(), &self.inner.resource)
    }

    /// Metadata-only requests: the watch needs keys, not the (possibly large) objects.
    fn meta_api_all(&self) -> Api<PartialObjectMeta<DynamicObject>> {
        Api::all_with(self.inner.client.clone(), &self.inner.resource)
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.inner
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("store is shutting down".into()))
    }

    fn start_watcher(&self) {
        let Ok(mut slot) = self.inner.watcher.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("KubeStore::watch called outside a tokio runtime; not watching");
            return;
        };
        let task = rt.spawn(run_watcher(self.meta_api_all(), self.inner.events.clone()));
        *slot = Some(task.abort_handle());
    }
}

/// Feeds `events` from a watcher over all namespaces until aborted; see the module documentation.
async fn run_watcher(
    api: Api<PartialObjectMeta<DynamicObject>>,
    events: broadcast::Sender<StoreEvent>,
) {
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut lists = 0u64;
    while let Some(item) = stream.next().await {
        // No receivers is fine: nobody is watching right now.
        match item {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                if let Some(key) = key_of(&o.metadata) {
                    let _ = events.send(StoreEvent::Changed(key));
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                lists += 1;
                if lists > 1 {
                    tracing::info!(lists, "topology watch re-listed; asking for resync");
                    metrics::counter!("meshnet_store_resyncs_total", "store" => "kube")
                        .increment(1);
                }
                let _ = events.send(StoreEvent::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "topology watch failed; retrying with backoff");
                metrics::counter!("meshnet_store_watch_errors_total", "store" => "kube")
                    .increment(1);
            }
        }
    }
    // The backoff never gives up, so the stream does not end; say so loudly if it ever does.
    tracing::error!("topology watch ended; changes are seen on periodic resync only");
}

fn key_of(meta: &ObjectMeta) -> Option<PodKey> {
    let name = meta.name.as_deref()?;
    Some(PodKey::new(meta.namespace.as_deref().unwrap_or(""), name))
}

/// Where an object lives, for error messages.
fn object_path(key: &PodKey) -> String {
    format!(
        "{}/namespaces/{}/{}/{}",
        model::API_VERSION,
        key.namespace,
        <TopologyCrd as kube::Resource>::plural(&()),
        key.name
    )
}

/// Decodes an object read from the API server into the model type.
fn to_model(obj: DynamicObject) -> Result<model::Topology, StoreError> {
    let key = key_of(&obj.metadata);
    let corrupt = |reason: String| StoreError::Corrupt {
        path: key
            .as_ref()
            .map_or_else(|| "(unnamed object)".to_string(), object_path),
        reason,
    };
    let value = serde_json::to_value(&obj).map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// Maps a kube error to a store error: the one place that knows the API's status codes.
///
/// `key` is the object the request was about, if any. A 409 becomes a [`StoreError::Conflict`]
/// with empty versions; the caller that knows the expected version fills it in.
fn store_error(err: kube::Error, key: Option<&PodKey>) -> StoreError {
    let kube::Error::Api(status) = &err else {
        return StoreError::Backend(format!("Kubernetes API: {err}"));
    };
    match (status.code, key) {
        (404, Some(k)) => StoreError::NotFound(k.clone()),
        (409, Some(k)) => StoreError::Conflict {
            key: k.clone(),
            expected: String::new(),
            found: String::new(),
        },
        (400 | 422, Some(k)) => StoreError::Invalid {
            key: k.clone(),
            reason: status.message.clone(),
        },
        (404, None) => StoreError::Backend(format!(
            "Kubernetes API: {} not found (is the Topology CRD installed?): {}",
            TopologyCrd::crd_name(),
            status.message
        )),
        _ => StoreError::Backend(format!(
            "Kubernetes API: {} {}: {}",
            status.code, status.reason, status.message
        )),
    }
}

/// A DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most `max` bytes).
fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Refuses keys the API server would refuse (or that would not form a valid URL path): namespaces
/// are DNS-1123 labels, names DNS-1123 subdomains.
fn check_key(key: &PodKey) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::Invalid {
        key: key.clone(),
        reason,
    };
    if !is_label(&key.namespace, 63) {
        return Err(invalid(format!(
            "namespace {:?} is not a valid Kubernetes namespace (DNS-1123 label)",
            key.namespace
        )));
    }
    if key.name.len() > 253 || !key.name.split('.').all(|p| is_label(p, 253)) {
        return Err(invalid(format!(
            "name {:?} is not a valid Kubernetes name (DNS-1123 subdomain)",
            key.name
        )));
    }
    Ok(())
}

fn type_meta() -> TypeMeta {
    TypeMeta {
        api_version: model::API_VERSION.to_string(),
        kind: model::KIND.to_string(),
    }
}

#[async_trait]
impl TopologyStore for KubeStore {
    async fn get(&self, key: &PodKey) -> Result<Option<model::Topology>, StoreError> {
        check_key(key)?;
        let _permit = self.permit().await?;
        let obj = self
            .api_in(&key.namespace)
            .get_opt(&key.name)
            .await
            .map_err(|e| store_error(e, Some(key)))?;
        obj.map(to_model).transpose()
    }

    async fn list(&self) -> Result<Vec<model::Topology>, StoreError> {
        let api = self.api_all();
        let mut out = Vec::new();
        let mut params = ListParams::default().limit(LIST_PAGE);
        loop {
            let page = {
                let _permit = self.permit().await?;
                api.list(&params).await.map_err(|e| store_error(e, None))?
            };
            for obj in page.items {
                match to_model(obj) {
                    Ok(t) => out.push(t),
                    Err(e) => {
                        tracing::error!(error = %e, "skipping a Topology that does not decode");
                        metrics::counter!("meshnet_store_errors_total", "op" => "list", "reason" => "corrupt")
                            .increment(1);
                    }
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        out.sort_by_key(model::Topology::key);
        Ok(out)
    }

    async fn apply(&self, topo: &model::Topology) -> Result<model::Topology, StoreError> {
        let key = topo.key();
        check_key(&key)?;
        let mut metadata = json!({ "name": key.name, "namespace": key.namespace });
        if !topo.metadata.labels.is_empty() {
            metadata["labels"] = json!(topo.metadata.labels);
        }
        let body = json!({
            "apiVersion": model::API_VERSION,
            "kind": model::KIND,
            "metadata": metadata,
            "spec": topo.spec,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let _permit = self.permit().await?;
        let obj = self
            .api_in(&key.namespace)
            .patch(&key.name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| match e {
                // Apply creates: a 404 means the resource type itself is missing.
                kube::Error::Api(s) if s.code == 404 => store_error(kube::Error::Api(s), None),
                e => store_error(e, Some(&key)),
            })?;
        to_model(obj)
    }

    async fn delete(&self, key: &PodKey) -> Result<(), StoreError> {
        check_key(key)?;
        let _permit = self.permit().await?;
        match self
            .api_in(&key.namespace)
            .delete(&key.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(store_error(e, Some(key))),
        }
    }

    async fn replace_status(
        &self,
        key: &PodKey,
        status: &TopologyStatus,
        expected_version: &str,
    ) -> Result<model::Topology, StoreError> {
        check_key(key)?;
        // An empty resourceVersion would make the PUT unconditional; no stored object has one.
        if expected_version.is_empty() {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: String::new(),
                found: String::new(),
            });
        }
        // The status subresource takes only `status` from the body (and `resourceVersion` as the
        // precondition); spec and labels stay as stored.
        let body = DynamicObject {
            types: Some(type_meta()),
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                resource_version: Some(expected_version.to_string()),
                ..ObjectMeta::default()
            },
            data: json!({ "status": status }),
        };
        let _permit = self.permit().await?;
        let obj = self
            .api_in(&key.namespace)
            .replace_status(&key.name, &PostParams::default(), &body)
            .await
            .map_err(|e| match store_error(e, Some(key)) {
                StoreError::Conflict { key, found, .. } => StoreError::Conflict {
                    key,
                    expected: expected_version.to_string(),
                    found,
                },
                other => other,
            })?;
        to_model(obj)
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        let rx = self.inner.events.subscribe();
        self.start_watcher();
        rx
    }

    fn kind(&self) -> &'static str {
        "kube"
    }
}

#[cfg(test)]
mod tests;
