//! Running netlink work inside another network namespace.
//!
//! `setns(2)` changes only the calling thread, so namespace work never runs on a tokio worker or
//! the blocking pool (their threads are reused by unrelated tasks). [`in_netns`] starts a
//! dedicated OS thread, enters the namespace there, opens a netlink socket (a socket stays bound to
//! the namespace it was created in), runs the caller's future on a current-thread runtime and
//! hands the result back. The thread then exits, so no thread is ever left in a pod's namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace: {source}")]
    NotNetns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("netlink socket in {path}: {source}")]
    Netlink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace worker for {path} failed: {reason}")]
    Worker { path: PathBuf, reason: String },
}

/// Opens a namespace file (e.g. `/run/netns/x`, `/proc/PID/ns/net`).
///
/// # Errors
/// The path does not exist or cannot be opened.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `f` with a netlink handle bound to the network namespace at `path`, on a dedicated thread.
///
/// # Errors
/// The namespace cannot be opened or entered, or the netlink socket cannot be created. Errors of
/// `f` itself are returned inside `Ok`.
pub async fn in_netns<F, Fut, T>(path: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.to_path_buf();
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| NetnsError::Worker {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        rt.block_on(async {
            let (conn, handle) =
                crate::links::connection().map_err(|source| NetnsError::Netlink {
                    path: p.clone(),
                    source,
                })?;
            let conn = tokio::spawn(conn);
            let out = f(handle).await;
            conn.abort();
            Ok(out)
        })
    };
    spawn_in(path, run, move |r| {
        let _ = tx.send(r.and_then(|r| r));
    })?;
    rx.await.map_err(|_| NetnsError::Worker {
        path: path.to_path_buf(),
        reason: "worker thread panicked".into(),
    })?
}

/// Runs the synchronous `f` on a dedicated thread in the network namespace at `path` (no
/// runtime, no netlink connection of its own: `f` makes what it needs).
///
/// # Errors
/// The namespace cannot be opened or entered. Errors of `f` itself are returned inside `Ok`.
pub async fn in_netns_sync<F, T>(path: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_in(path, f, move |r| {
        let _ = tx.send(r);
    })?;
    rx.await.map_err(|_| NetnsError::Worker {
        path: path.to_path_buf(),
        reason: "worker thread panicked".into(),
    })?
}

/// Starts a thread that enters the namespace at `path`, runs `f` there and hands its result
/// (or why it could not enter) to `done`.
fn spawn_in<R>(
    path: &Path,
    f: impl FnOnce() -> R + Send + 'static,
    done: impl FnOnce(Result<R, NetnsError>) + Send + 'static,
) -> Result<(), NetnsError> {
    let ns = open(path)?;
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            done(
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::NotNetns { path: p, source })
                    .map(|()| f()),
            );
        })
        .map(|_| ())
        .map_err(|e| NetnsError::Worker {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Whether `path` is (still) a network namespace: a bind mount of one (`/run/netns/x`) or a
/// process's namespace link (`/proc/PID/ns/net`), both on nsfs. A sandbox removed while the
/// daemon was down leaves its recorded path missing, or — if only unmounted — a plain file on
/// another filesystem; either way the pod is gone. Cheap (one `statfs`), no thread.
pub fn exists(path: &Path) -> bool {
    use nix::sys::statfs::{NSFS_MAGIC, statfs};
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Checks that `path` names a network namespace that can be entered.
///
/// # Errors
/// As [`in_netns`].
pub async fn check(path: &Path) -> Result<(), NetnsError> {
    in_netns(path, |_h| async {}).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exists_only_for_network_namespaces() {
        assert!(exists(Path::new("/proc/self/ns/net")));
        let dir = std::env::temp_dir().join(format!("mnd-nsfs-{}", std::process::id()));
        std::fs::write(&dir, b"not a namespace").unwrap();
        assert!(!exists(&dir), "a plain file (an unmounted netns path)");
        std::fs::remove_file(&dir).unwrap();
        assert!(!exists(&dir), "a missing path");
    }
}
