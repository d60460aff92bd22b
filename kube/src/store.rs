//! [`KubeStore`]: the production [`TopologyStore`], backed by the Kubernetes API.
//!
//! * **Reads come from a cache, never a request per read.** One background
//!   [`kube::runtime::watcher`] over all namespaces feeds a [`kube::runtime::reflector`] store
//!   (objects decoded into the model type [`meshnet_topology::topology::Topology`] once, when the
//!   watch delivers them). [`TopologyStore::get`] and [`TopologyStore::list`] read that store: an
//!   ADD no longer lists every Topology of the cluster from the API server. The watcher starts on
//!   the first read or subscription; reads wait for its first list (at most the sync timeout,
//!   10 s by default, then [`StoreError::Backend`] with the watch's last error). The list is a
//!   quorum read (`ListSemantic::MostRecent`).
//! * **Read-your-writes.** Writes go to the API server; the object each write returns (or the
//!   fact of a deletion) is kept in a small overlay until the watch delivers that version or a
//!   later one (the deletion), and reads return whichever of overlay and cache is newer. So a read
//!   right after one's own write sees it, even before the watch event arrives, and never goes
//!   back to an older copy. "Newer" compares `resourceVersion`s as numbers: opaque by contract,
//!   but every etcd3-backed API server uses etcd's revision, which grows with every write; if one
//!   does not parse, only equality is known and the overlay wins until the watch delivers exactly
//!   that version. Overlay and cache are read under one lock, and the watcher retires an entry
//!   under it only after the reflector applied the event, so a read that finds no entry finds the
//!   cache with that version. A re-list
//!   (after `410 Gone`) replaces the cache and clears the overlay: the list is fresh, and any
//!   later write arrives as a watch event. Writes of *other* clients are seen once the watch
//!   delivers them (typically milliseconds), as with any informer.
//! * A [`TopologyStore::get`] that finds nothing in cache or overlay asks the API server (one GET):
//!   a Topology created a moment before its pod's ADD may not have reached the watch yet, and a
//!   pod without one would be passed through with no links.
//! * Objects are decoded into the model type, which tolerates every shape the Go implementation's
//!   clients write (`""`, `null`, no `spec`). One object that still does not decode is cached as
//!   such and skipped by [`TopologyStore::list`] (and counted), so it cannot stop every pod's
//!   reconcile; [`TopologyStore::get`] of it is [`StoreError::Corrupt`].
//! * [`TopologyStore::apply`] is a server-side apply with field manager [`FIELD_MANAGER`] and
//!   `force`: it creates the object or replaces its spec and the labels meshnet applied, like
//!   `kubectl apply --server-side --force-conflicts`. Status (a subresource) is never touched, and
//!   an apply that changes nothing does not bump `resourceVersion`.
//! * [`TopologyStore::replace_status`] is a `PUT …/status` carrying the expected
//!   `resourceVersion`: the API server answers 409 if someone else wrote in between, which becomes
//!   [`StoreError::Conflict`]. The server does not say which version won, so the store then reads
//!   the object once from the API server (`found` is its version) into the overlay: the
//!   caller's retry ([`meshnet_topology::store::update_status`]) starts from the winning version
//!   instead of waiting for the watch.
//! * [`TopologyStore::watch`] subscribes to a broadcast channel fed by the same watcher: a
//!   [`StoreEvent::Changed`] is sent after the cache has the change. It retries with exponential
//!   backoff (0.8 s to 30 s) forever and never panics. Every (re-)list — the first one, and the
//!   one after a `410 Gone` or any other desync — ends with [`StoreEvent::Resync`], since changes
//!   (deletions above all) between two watches are not reported one by one. A subscriber that
//!   sees its first `Resync` knows the watch is established (and the cache filled).
//!
//! Rate limiting: kube-rs has no client-side QPS limiter (client-go defaults to 5 QPS with a burst
//! of 10, slow for a node that brings up hundreds of links at once), and none is added here: a
//! low QPS only delays work. Instead at most [`MAX_IN_FLIGHT`]
//! requests of one store run at once; the others wait their turn in FIFO order (a tokio
//! semaphore), so a burst of thousands of status updates queues instead of failing. Requests the
//! server itself refuses with 429/503/504 (API priority and fairness) are retried by kube's client,
//! honouring `Retry-After`. The watch holds no permit; reads from the cache need none.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams,
    TypeMeta,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Config, CustomResourceExt};
use meshnet_topology::store::{StoreError, StoreEvent, TopologyStore, check_key};
use meshnet_topology::topology::{self as model, PodKey, TopologyStatus};
use serde_json::json;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::AbortHandle;

use crate::crd::{FIELD_MANAGER, Topology as TopologyCrd};

/// Most API requests of one store in flight at once (the watch not counted).
pub const MAX_IN_FLIGHT: usize = 32;

/// How long a read waits for the cache's first list by default.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How many change events a slow subscriber may fall behind before it is told to re-list.
const EVENT_BUFFER: usize = 1024;

/// The Kubernetes API as a topology store; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    resource: ApiResource,
    events: broadcast::Sender<StoreEvent>,
    /// The reflector's store: every Topology as the watch last delivered it.
    cache: Store<Cached>,
    /// The reflector's writer, until the watcher task takes it.
    writer: Mutex<Option<Writer<Cached>>>,
    /// This store's own writes the watch has not delivered yet (see the module documentation).
    /// Its lock is held across every read of the cache that consults it.
    written: Mutex<HashMap<PodKey, Written>>,
    /// The watch's last error, for the message of a read that times out waiting for the cache.
    last_watch_error: Mutex<Option<String>>,
    /// The highest `resourceVersion` the cache has applied (0: none numeric yet).
    watch_progress: AtomicU64,
    watcher: Mutex<Option<AbortHandle>>,
    permits: Semaphore,
    sync_timeout: Duration,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("resource", &self.inner.resource.plural)
            .field("cached", &self.inner.cache.len())
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

/// A Topology as the cache holds it: decoded once, when the watch delivers it.
#[derive(Debug, Clone)]
struct Cached {
    key: PodKey,
    resource_version: String,
    /// The decoded object, or why it does not decode.
    topo: Result<Arc<model::Topology>, String>,
}

impl Cached {
    fn from_object(obj: DynamicObject) -> Self {
        let key = key_of(&obj.metadata).unwrap_or_else(|| PodKey::new("", ""));
        let resource_version = obj.metadata.resource_version.clone().unwrap_or_default();
        let topo = to_model(obj).map(Arc::new).map_err(|e| e.to_string());
        Cached {
            key,
            resource_version,
            topo,
        }
    }

    fn object_ref(key: &PodKey) -> ObjectRef<Cached> {
        ObjectRef::new(&key.name).within(&key.namespace)
    }
}

/// What the reflector needs of a cached object: its identity and version.
impl Lookup for Cached {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        model::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <TopologyCrd as kube::Resource>::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        <TopologyCrd as kube::Resource>::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <TopologyCrd as kube::Resource>::plural(&())
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.key.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.key.namespace))
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.resource_version))
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// One of this store's own writes (or a fresh read) the watch has not delivered yet.
#[derive(Debug, Clone)]
enum Written {
    /// The object as the API server returned it.
    Present(Arc<model::Topology>),
    /// Deleted. The API server does not always say at which version (a custom resource's
    /// DELETE answers with a `Status`), so this is retired by the watch's deletion event only.
    Deleted,
}

impl Written {
    /// Whether a watch event for this key makes this entry obsolete: the cache has the write or
    /// something later.
    fn retired_by(&self, event: &watcher::Event<Cached>) -> bool {
        match (self, event) {
            (Written::Present(t), watcher::Event::Apply(c) | watcher::Event::Delete(c)) => {
                same_or_later(&c.resource_version, &t.metadata.resource_version)
            }
            (Written::Deleted, watcher::Event::Delete(_)) => true,
            _ => false,
        }
    }
}

/// Whether version `a` is `b` or later (see the module documentation).
fn same_or_later(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a >= b,
        _ => a == b,
    }
}

/// What a read of one key sees.
#[derive(Debug)]
enum View<'a> {
    Cache(&'a Cached),
    Mine(&'a Arc<model::Topology>),
    Absent,
}

/// The newer of the cache's copy and this store's own last write.
fn resolve<'a>(cached: Option<&'a Cached>, written: Option<&'a Written>) -> View<'a> {
    match (cached, written) {
        (c, None) => c.map_or(View::Absent, View::Cache),
        (Some(c), Some(Written::Present(t)))
            if same_or_later(&c.resource_version, &t.metadata.resource_version) =>
        {
            View::Cache(c)
        }
        (_, Some(Written::Present(t))) => View::Mine(t),
        // Until the watch delivers the deletion (a re-creation comes after it).
        (_, Some(Written::Deleted)) => View::Absent,
    }
}

fn decoded(c: &Cached) -> Result<model::Topology, StoreError> {
    c.topo
        .as_ref()
        .map(|t| t.as_ref().clone())
        .map_err(|reason| StoreError::Corrupt {
            path: object_path(&c.key),
            reason: reason.clone(),
        })
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

    /// A store using an existing client. Needs a tokio runtime (as the client does) that keeps
    /// running: the cache is filled by a background task, so on a current-thread runtime that
    /// only runs inside `block_on`, reads see the cache as of the last time it ran.
    pub fn from_client(client: Client) -> Self {
        Self::with_sync_timeout(client, DEFAULT_SYNC_TIMEOUT)
    }

    /// A store whose reads wait at most `sync_timeout` for the cache's first list.
    pub fn with_sync_timeout(client: Client, sync_timeout: Duration) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let writer = Writer::new(());
        KubeStore {
            inner: Arc::new(Inner {
                client,
                resource: TopologyCrd::api_resource(),
                events,
                cache: writer.as_reader(),
                writer: Mutex::new(Some(writer)),
                written: Mutex::new(HashMap::new()),
                last_watch_error: Mutex::new(None),
                watch_progress: AtomicU64::new(0),
                watcher: Mutex::new(None),
                permits: Semaphore::new(MAX_IN_FLIGHT),
                sync_timeout,
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

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.inner
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("store is shutting down".into()))
    }

    /// Starts the watcher that fills the cache, once.
    fn start_watcher(&self) {
        let Ok(mut slot) = self.inner.watcher.lock() else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("KubeStore used outside a tokio runtime; not watching");
            return;
        };
        let Some(writer) = self.inner.writer.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        // The task holds the store weakly: dropping the last `KubeStore` aborts it (Drop above).
        let task = rt.spawn(run_watcher(
            self.api_all(),
            writer,
            Arc::downgrade(&self.inner),
        ));
        *slot = Some(task.abort_handle());
    }

    /// Waits until the cache holds a first full list (bounded by the sync timeout).
    async fn synced(&self) -> Result<(), StoreError> {
        self.start_watcher();
        match tokio::time::timeout(self.inner.sync_timeout, self.inner.cache.wait_until_ready())
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Backend(
                "the Topology cache's watcher stopped before its first list".into(),
            )),
            Err(_) => {
                let last = self
                    .inner
                    .last_watch_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "no answer yet".into());
                Err(StoreError::Backend(format!(
                    "the Topology cache did not fill within {} s (listing and watching \
                     topologies.networkop.co.uk in all namespaces): {last}",
                    self.inner.sync_timeout.as_secs_f32()
                )))
            }
        }
    }

    fn written(&self) -> MutexGuard<'_, HashMap<PodKey, Written>> {
        // A panic while holding the lock cannot leave the map half-changed (single inserts and
        // removes), so a poisoned lock is still usable.
        self.inner
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a version this store wrote (or read fresh), unless the cache already has it or
    /// something later: the watch has passed that version (etcd revisions are global, so the
    /// cache then reflects a state at least as new — also when the object was deleted since, and
    /// no event would come to retire the entry), or the cached copy is that version or later. A
    /// deletion is recorded only while the cache still has the object: otherwise the watch has
    /// delivered the deletion already.
    fn remember(&self, key: PodKey, w: Written) {
        let mut written = self.written();
        let cached = self.inner.cache.get(&Cached::object_ref(&key));
        let needed = match (&w, cached) {
            (Written::Present(t), _) if self.watch_passed(&t.metadata.resource_version) => false,
            (Written::Present(t), Some(c)) => {
                !same_or_later(&c.resource_version, &t.metadata.resource_version)
            }
            (Written::Present(_), None) => true,
            (Written::Deleted, c) => c.is_some(),
        };
        if needed {
            written.insert(key, w);
        } else if matches!(w, Written::Deleted) {
            written.remove(&key);
        }
    }

    /// Whether the watch has delivered an event at `version` or later (numeric versions only).
    fn watch_passed(&self, version: &str) -> bool {
        version
            .parse::<u64>()
            .is_ok_and(|v| self.inner.watch_progress.load(Ordering::Acquire) >= v)
    }

    /// Number of own writes the watch has not delivered yet (for tests).
    #[doc(hidden)]
    pub fn pending_own_writes(&self) -> usize {
        self.written().len()
    }
}

/// Fills the reflector's cache from a watcher over all namespaces and tells subscribers, until
/// aborted; see the module documentation.
async fn run_watcher(
    api: Api<DynamicObject>,
    writer: Writer<Cached>,
    inner: std::sync::Weak<Inner>,
) {
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(|e| match e {
            watcher::Event::Apply(o) => watcher::Event::Apply(Cached::from_object(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(Cached::from_object(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(o) => watcher::Event::InitApply(Cached::from_object(o)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        });
    let mut stream = reflector::reflector(writer, events).boxed();
    let mut lists = 0u64;
    let mut listed_up_to = 0u64;
    while let Some(item) = stream.next().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // The reflector has applied the event: the cache is at least this far. A list's objects
        // count only once the list is swapped in, at `InitDone`.
        let version = |c: &Cached| c.resource_version.parse::<u64>().unwrap_or(0);
        match &item {
            Ok(watcher::Event::Apply(c) | watcher::Event::Delete(c)) => {
                inner
                    .watch_progress
                    .fetch_max(version(c), Ordering::Release);
            }
            Ok(watcher::Event::Init) => listed_up_to = 0,
            Ok(watcher::Event::InitApply(c)) => listed_up_to = listed_up_to.max(version(c)),
            Ok(watcher::Event::InitDone) => {
                inner
                    .watch_progress
                    .fetch_max(listed_up_to, Ordering::Release);
            }
            Err(_) => {}
        }
        // No receivers is fine: nobody is watching right now.
        match item {
            Ok(ref event @ (watcher::Event::Apply(ref c) | watcher::Event::Delete(ref c))) => {
                {
                    let mut written = inner
                        .written
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if written.get(&c.key).is_some_and(|w| w.retired_by(event)) {
                        written.remove(&c.key);
                    }
                }
                let _ = inner.events.send(StoreEvent::Changed(c.key.clone()));
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                lists += 1;
                inner
                    .written
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                if let Ok(mut e) = inner.last_watch_error.lock() {
                    *e = None;
                }
                if lists > 1 {
                    tracing::info!(lists, "topology watch re-listed; asking for resync");
                    metrics::counter!("meshnet_store_resyncs_total", "store" => "kube")
                        .increment(1);
                }
                let _ = inner.events.send(StoreEvent::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "topology watch failed; retrying with backoff");
                metrics::counter!("meshnet_store_watch_errors_total", "store" => "kube")
                    .increment(1);
                if let Ok(mut last) = inner.last_watch_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }
    // The backoff never gives up, so the stream does not end; say so loudly if it ever does.
    tracing::error!("topology watch ended; the Topology cache no longer follows the API server");
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
        self.synced().await?;
        {
            let written = self.written();
            let cached = self.inner.cache.get(&Cached::object_ref(key));
            match resolve(cached.as_deref(), written.get(key)) {
                View::Cache(c) => return decoded(c).map(Some),
                View::Mine(t) => return Ok(Some(t.as_ref().clone())),
                View::Absent if written.contains_key(key) => return Ok(None),
                View::Absent => {}
            }
        }
        // Not (yet) seen by the watch: ask the API server; see the module documentation.
        let obj = {
            let _permit = self.permit().await?;
            self.api_in(&key.namespace)
                .get_opt(&key.name)
                .await
                .map_err(|e| store_error(e, Some(key)))?
        };
        let Some(topo) = obj.map(to_model).transpose()? else {
            return Ok(None);
        };
        self.remember(key.clone(), Written::Present(Arc::new(topo.clone())));
        Ok(Some(topo))
    }

    async fn list(&self) -> Result<Vec<model::Topology>, StoreError> {
        self.synced().await?;
        let written = self.written();
        let cached = self.inner.cache.state();
        let mut out = Vec::with_capacity(cached.len() + written.len());
        let mut corrupt = 0u64;
        let mut push = |view: View<'_>| match view {
            View::Cache(c) => match &c.topo {
                Ok(t) => out.push(t.as_ref().clone()),
                Err(reason) => {
                    corrupt += 1;
                    tracing::error!(object = %object_path(&c.key), reason, "skipping a Topology that does not decode");
                }
            },
            View::Mine(t) => out.push(t.as_ref().clone()),
            View::Absent => {}
        };
        for c in &cached {
            push(resolve(Some(c), written.get(&c.key)));
        }
        // Own writes of objects the cache does not have yet.
        let in_cache: std::collections::HashSet<&PodKey> = cached.iter().map(|c| &c.key).collect();
        for w in written.iter().filter(|(k, _)| !in_cache.contains(k)) {
            push(resolve(None, Some(w.1)));
        }
        drop(written);
        if corrupt > 0 {
            metrics::counter!("meshnet_store_errors_total", "op" => "list", "reason" => "corrupt")
                .increment(corrupt);
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
        let obj = {
            let _permit = self.permit().await?;
            self.api_in(&key.namespace)
                .patch(&key.name, &params, &Patch::Apply(&body))
                .await
                .map_err(|e| match e {
                    // Apply creates: a 404 means the resource type itself is missing.
                    kube::Error::Api(s) if s.code == 404 => store_error(kube::Error::Api(s), None),
                    e => store_error(e, Some(&key)),
                })?
        };
        let stored = to_model(obj)?;
        self.remember(key, Written::Present(Arc::new(stored.clone())));
        Ok(stored)
    }

    async fn delete(&self, key: &PodKey) -> Result<(), StoreError> {
        check_key(key)?;
        let deleted = {
            let _permit = self.permit().await?;
            self.api_in(&key.namespace)
                .delete(&key.name, &DeleteParams::default())
                .await
        };
        match deleted {
            // Gone for this store's readers from now on (with finalizers pending, it is going).
            Ok(_) => {
                self.remember(key.clone(), Written::Deleted);
                Ok(())
            }
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
        let api = self.api_in(&key.namespace);
        let put = {
            let _permit = self.permit().await?;
            api.replace_status(&key.name, &PostParams::default(), &body)
                .await
        };
        match put.map_err(|e| store_error(e, Some(key))) {
            Ok(obj) => {
                let stored = to_model(obj)?;
                self.remember(key.clone(), Written::Present(Arc::new(stored.clone())));
                Ok(stored)
            }
            Err(StoreError::Conflict { key, found, .. }) => {
                // Someone else won: read the winner now so the caller's retry starts from it.
                let fresh = {
                    let _permit = self.permit().await?;
                    api.get_opt(&key.name).await
                };
                let mut found = found;
                if let Ok(Some(Ok(t))) = fresh.map(|o| o.map(to_model)) {
                    found.clone_from(&t.metadata.resource_version);
                    self.remember(key.clone(), Written::Present(Arc::new(t)));
                }
                Err(StoreError::Conflict {
                    key,
                    expected: expected_version.to_string(),
                    found,
                })
            }
            Err(e) => Err(e),
        }
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
