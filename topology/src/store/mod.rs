//! Where `Topology` objects live: behind [`TopologyStore`], with two implementations — the file
//! store ([`file::FileStore`], the lab's embedded default) and the Kubernetes API (production).
//!
//! Every implementation gives the same guarantees, which the reconciler relies on:
//! * reads return the object with an opaque `metadata.resource_version`;
//! * [`TopologyStore::replace_status`] succeeds only if that version is still current
//!   (optimistic concurrency), so [`update_status`] never loses another writer's update;
//! * [`TopologyStore::watch`] reports every change (possibly coalesced) so that daemons react to
//!   each other's writes; [`StoreEvent::Resync`] means "some events were lost: re-list".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::topology::{PodKey, Topology, TopologyStatus};

pub mod file;

#[cfg(any(test, feature = "contract"))]
pub mod contract;

/// Errors of a topology store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("topology {0} not found")]
    NotFound(PodKey),
    #[error("topology {key} changed concurrently (expected version {expected:?}, found {found:?})")]
    Conflict {
        key: PodKey,
        expected: String,
        found: String,
    },
    #[error("invalid topology {key}: {reason}")]
    Invalid { key: PodKey, reason: String },
    #[error("store I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt topology file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("store backend: {0}")]
    Backend(String),
}

impl StoreError {
    /// Short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Invalid { .. } => "invalid",
            StoreError::Io { .. } => "io",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Backend(_) => "backend",
        }
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

/// Refuses keys the API server would refuse (or that would not form a valid URL path or file
/// name): namespaces are DNS-1123 labels, names DNS-1123 subdomains. Every store checks keys
/// with this one function, so the lab refuses exactly what a cluster refuses.
///
/// # Errors
/// [`StoreError::Invalid`] naming the part that is wrong.
pub fn check_key(key: &PodKey) -> Result<(), StoreError> {
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

/// A change seen in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The object with this key was created, changed or deleted.
    Changed(PodKey),
    /// Events may have been lost: every consumer should re-list.
    Resync,
}

/// Storage of `Topology` objects shared by all daemons of a cluster (or lab).
#[async_trait]
pub trait TopologyStore: Send + Sync + 'static {
    /// The object, or `None` if it does not exist.
    async fn get(&self, key: &PodKey) -> Result<Option<Topology>, StoreError>;
    /// Every object in every namespace.
    async fn list(&self) -> Result<Vec<Topology>, StoreError>;
    /// Creates the object or replaces its spec and labels (what `kubectl apply` does); the status
    /// is kept. Returns the stored object.
    async fn apply(&self, topo: &Topology) -> Result<Topology, StoreError>;
    /// Deletes the object; deleting a missing object is not an error.
    async fn delete(&self, key: &PodKey) -> Result<(), StoreError>;
    /// Replaces the status if `expected_version` is still the object's version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if someone else wrote in between, [`StoreError::NotFound`].
    async fn replace_status(
        &self,
        key: &PodKey,
        status: &TopologyStatus,
        expected_version: &str,
    ) -> Result<Topology, StoreError>;
    /// Subscribes to change events. Receivers that fall behind get [`StoreEvent::Resync`]
    /// (via `RecvError::Lagged`, which callers treat the same way).
    fn watch(&self) -> broadcast::Receiver<StoreEvent>;
    /// Short name for logs and metrics (`file`, `kube`).
    fn kind(&self) -> &'static str;
}

/// Bound on optimistic-concurrency retries: a status update that loses this many races in a row
/// is reported as an error rather than retried forever.
pub const MAX_CONFLICT_RETRIES: u32 = 64;

/// Read-modify-write of a status with conflict retry: `f` gets the current status and returns
/// whether it changed anything. Returns the stored object (unchanged if `f` returned false), or
/// `None` if the object does not exist.
///
/// # Errors
/// Store errors, or [`StoreError::Conflict`] after [`MAX_CONFLICT_RETRIES`] lost races.
pub async fn update_status<F>(
    store: &dyn TopologyStore,
    key: &PodKey,
    mut f: F,
) -> Result<Option<Topology>, StoreError>
where
    F: FnMut(&mut TopologyStatus) -> bool + Send,
{
    let mut attempt = 0;
    loop {
        let Some(current) = store.get(key).await? else {
            return Ok(None);
        };
        let mut status = current.status.clone();
        if !f(&mut status) {
            return Ok(Some(current));
        }
        match store
            .replace_status(key, &status, &current.metadata.resource_version)
            .await
        {
            Ok(t) => return Ok(Some(t)),
            Err(StoreError::Conflict { .. }) if attempt < MAX_CONFLICT_RETRIES => {
                attempt += 1;
                metrics::counter!("meshnet_store_conflicts_total").increment(1);
                // Small, growing, jittered pause so two writers do not collide in lockstep.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()));
                let cap = u64::from(attempt.min(10)) * 5 + 1;
                tokio::time::sleep(Duration::from_millis(nanos % cap)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A store shared by the tasks of a daemon.
pub type SharedStore = Arc<dyn TopologyStore>;

#[cfg(test)]
mod tests;
