//! The file store: one JSON file per `Topology` in a directory that several daemons share.
//!
//! * Layout: `DIR/NAMESPACE_NAME.json` (Kubernetes names cannot contain `_`), plus `DIR/.lock`
//!   and `DIR/.version`.
//! * Atomicity: every write goes to a temporary file in `DIR` that is then renamed over the
//!   target, so a reader sees the old or the new object, never half of one.
//! * Concurrency: writers hold an exclusive `flock` on `DIR/.lock` for their read-check-write; the
//!   object's `resourceVersion` comes from a directory-wide counter (`DIR/.version`), so a
//!   version is never reused, not even after delete + create (no ABA).
//! * Notification: inotify on `DIR` (renames into it, deletions); every daemon on the machine
//!   sees every other's writes. On inotify queue overflow subscribers get [`StoreEvent::Resync`].

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::broadcast;

use super::{StoreError, StoreEvent, TopologyStore};
use crate::topology::{PodKey, Topology, TopologyStatus};

/// How many change events a slow subscriber may fall behind before it is told to re-list.
const EVENT_BUFFER: usize = 1024;

/// A directory of Topology files; see the module documentation.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    events: broadcast::Sender<StoreEvent>,
    watcher: OnceLock<()>,
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileStore {
    /// Opens (creating if needed) the store directory.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir,
                events,
                watcher: OnceLock::new(),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn path_of(&self, key: &PodKey) -> Result<PathBuf, StoreError> {
        super::check_key(key)?;
        Ok(self
            .inner
            .dir
            .join(format!("{}_{}.json", key.namespace, key.name)))
    }

    fn key_of_file(name: &str) -> Option<PodKey> {
        let stem = name.strip_suffix(".json")?;
        let (ns, n) = stem.split_once('_')?;
        let key = PodKey::new(ns, n);
        // `PodKey::new` reads an empty namespace as `default`: a file `_r1.json` is not one.
        (!ns.is_empty() && super::check_key(&key).is_ok()).then_some(key)
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.inner.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io_err(&path, e.into()))
    }

    /// Next directory-wide version; call with the lock held.
    fn next_version(&self) -> Result<String, StoreError> {
        let path = self.inner.dir.join(".version");
        let current = match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&path, e)),
        };
        let next = (current + 1).to_string();
        self.write_atomic(&path, next.as_bytes())?;
        Ok(next)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.inner.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            path.file_name().and_then(|s| s.to_str()).unwrap_or("x")
        ));
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_data().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    }

    fn read_file(path: &Path) -> Result<Option<Topology>, StoreError> {
        let mut s = String::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_string(&mut s).map_err(|e| io_err(path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
        };
        serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    fn write_object(&self, path: &Path, topo: &Topology) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(topo).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.write_atomic(path, &bytes)
    }

    fn get_sync(&self, key: &PodKey) -> Result<Option<Topology>, StoreError> {
        Self::read_file(&self.path_of(key)?)
    }

    fn list_sync(&self) -> Result<Vec<Topology>, StoreError> {
        let dir = &self.inner.dir;
        let mut out = Vec::new();
        let names: Vec<String> = fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| Self::key_of_file(n).is_some())
            .collect();
        for n in names {
            // A file deleted between read_dir and open is simply gone. One corrupt file (say,
            // edited by hand) must not stop every pod's reconcile: skip it, loudly.
            match Self::read_file(&dir.join(&n)) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(file = %n, error = %e, "skipping corrupt topology file");
                    metrics::counter!("meshnet_store_errors_total", "op" => "list", "reason" => "corrupt")
                        .increment(1);
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(Topology::key);
        Ok(out)
    }

    fn apply_sync(&self, topo: &Topology) -> Result<Topology, StoreError> {
        let key = topo.key();
        let path = self.path_of(&key)?;
        let _lock = self.lock()?;
        let mut stored = topo.clone();
        stored.metadata.namespace = key.namespace.clone();
        stored.status = match Self::read_file(&path)? {
            Some(old) => old.status,
            None => TopologyStatus::default(),
        };
        stored.metadata.resource_version = self.next_version()?;
        self.write_object(&path, &stored)?;
        Ok(stored)
    }

    fn delete_sync(&self, key: &PodKey) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let _lock = self.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn replace_status_sync(
        &self,
        key: &PodKey,
        status: &TopologyStatus,
        expected: &str,
    ) -> Result<Topology, StoreError> {
        let path = self.path_of(key)?;
        let _lock = self.lock()?;
        let mut current =
            Self::read_file(&path)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        if current.metadata.resource_version != expected {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: expected.to_string(),
                found: current.metadata.resource_version,
            });
        }
        current.status = status.clone();
        current.metadata.resource_version = self.next_version()?;
        self.write_object(&path, &current)?;
        Ok(current)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(FileStore) -> Result<T, StoreError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    fn start_watcher(&self) {
        let inner = Arc::clone(&self.inner);
        let spawn = || -> std::io::Result<()> {
            let ino = Inotify::init()?;
            ino.watches()
                .add(&inner.dir, WatchMask::MOVED_TO | WatchMask::DELETE)?;
            let mut stream = ino.into_event_stream(vec![0u8; 64 * 1024])?;
            let events = inner.events.clone();
            tokio::spawn(async move {
                while let Some(ev) = stream.next().await {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::warn!(error = %e, "inotify read failed; asking for resync");
                            let _ = events.send(StoreEvent::Resync);
                            continue;
                        }
                    };
                    if ev.mask.contains(EventMask::Q_OVERFLOW) {
                        let _ = events.send(StoreEvent::Resync);
                        continue;
                    }
                    let key = ev
                        .name
                        .as_ref()
                        .and_then(|n| n.to_str())
                        .and_then(FileStore::key_of_file);
                    if let Some(key) = key {
                        // No receivers is fine: nobody is watching yet.
                        let _ = events.send(StoreEvent::Changed(key));
                    }
                }
            });
            Ok(())
        };
        if let Err(e) = spawn() {
            tracing::error!(dir = %inner.dir.display(), error = %e,
                "cannot watch the store directory; changes are seen on periodic resync only");
        }
    }
}

#[async_trait]
impl TopologyStore for FileStore {
    async fn get(&self, key: &PodKey) -> Result<Option<Topology>, StoreError> {
        let key = key.clone();
        self.blocking(move |s| s.get_sync(&key)).await
    }

    async fn list(&self) -> Result<Vec<Topology>, StoreError> {
        self.blocking(|s| s.list_sync()).await
    }

    async fn apply(&self, topo: &Topology) -> Result<Topology, StoreError> {
        let topo = topo.clone();
        self.blocking(move |s| s.apply_sync(&topo)).await
    }

    async fn delete(&self, key: &PodKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.blocking(move |s| s.delete_sync(&key)).await
    }

    async fn replace_status(
        &self,
        key: &PodKey,
        status: &TopologyStatus,
        expected_version: &str,
    ) -> Result<Topology, StoreError> {
        let (key, status, expected) = (key.clone(), status.clone(), expected_version.to_string());
        self.blocking(move |s| s.replace_status_sync(&key, &status, &expected))
            .await
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        let rx = self.inner.events.subscribe();
        self.inner.watcher.get_or_init(|| self.start_watcher());
        rx
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests;
