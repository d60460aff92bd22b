//! The installer: chains `meshnet` after the node's primary CNI network and puts the plugin binary
//! where the container runtime looks for it (DESIGN.md §2, "Install").
//!
//! The runtime (containerd, CRI-O; kubelet before them) uses the first network configuration in
//! its conf dir by file name. meshnet writes `00-meshnet.conflist`, which sorts first: a copy of
//! the *primary* configuration — the first other `.conf`/`.conflist`/`.json` file, by name, that is
//! a valid CNI configuration — with the `meshnet` plugin appended to its plugin list. A `.conf`
//! (one plugin) becomes a conflist whose first plugin is the original object, unchanged; the
//! top-level `cniVersion` and `name` are the original ones (the Go meshnet forced `0.3.0`; we
//! don't, so the chain keeps speaking the version its other plugins were configured for).
//!
//! Shape: the decisions are pure functions over `(file name, bytes)` pairs ([`choose_primary`],
//! [`to_conflist`], [`with_meshnet`], [`render`]); [`install`], [`uninstall`] and
//! [`watch_and_refresh`] are the thin I/O shell around them.
//!
//! Invariants:
//! * Writes are atomic (a temporary file in the target directory, fsync, rename, fsync of the
//!   directory) and happen only when the content differs, so a re-run is a no-op that touches
//!   nothing — which is also what keeps the watcher from looping on its own writes.
//! * The binary goes in before the conflist that makes the runtime call it.
//! * Only meshnet's own files are ever written or removed: `00-meshnet.conflist` and
//!   `BIN_DIR/meshnet` (and this module's temporary files next to them).
//! * The primary configuration is never modified.
//! * Ours follows the primary: with no primary left (the node's network plugin uninstalled), the
//!   watcher removes `00-meshnet.conflist` — a stale copy would keep the node looking
//!   network-ready with a network that is gone — and writes it again when a primary comes back.
//!   The binary stays (harmless, and the next install needs it anyway).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

#[cfg(test)]
mod tests;

/// The file meshnet writes in the CNI conf dir. Sorts before every usual primary (`05-cilium`,
/// `10-calico`, `10-flannel`, `10-kindnet`, ...), so the runtime picks it.
pub const CONFLIST_NAME: &str = "00-meshnet.conflist";
/// The plugin binary's name in the CNI bin dir; it is also the plugin's `type`.
pub const BINARY_NAME: &str = "meshnet";
/// The usual CNI conf dir.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// The usual CNI bin dir.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// The file extensions the runtimes read from the conf dir (libcni `ConfFiles`).
pub const CONFIG_EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];
/// Larger files in the conf dir are not read (a network configuration is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How long the watcher waits for the conf dir to go quiet before re-installing.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(250);
/// Upper bound on that wait when the directory keeps changing.
const WATCH_DEBOUNCE_MAX: Duration = Duration::from_secs(2);
const TEMP_SUFFIX: &str = ".meshnet-tmp";

/// What to install and where.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallConfig {
    /// The CNI conf dir (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The CNI bin dir (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The `meshnet` CNI binary to copy into `bin_dir` (in the image: `/usr/local/bin/meshnet`).
    pub binary: PathBuf,
    /// meshnet's entry in the conflist; see [`meshnet_plugin`].
    pub plugin: Value,
}

impl InstallConfig {
    /// A configuration with the default plugin entry ([`meshnet_plugin`] with no options).
    pub fn new(
        conf_dir: impl Into<PathBuf>,
        bin_dir: impl Into<PathBuf>,
        binary: impl Into<PathBuf>,
    ) -> Self {
        InstallConfig {
            conf_dir: conf_dir.into(),
            bin_dir: bin_dir.into(),
            binary: binary.into(),
            plugin: meshnet_plugin(&PluginOptions::default()),
        }
    }

    /// Where the conflist goes.
    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(CONFLIST_NAME)
    }

    /// Where the binary goes.
    pub fn binary_path(&self) -> PathBuf {
        self.bin_dir.join(BINARY_NAME)
    }
}

/// The plugin's own keys in its conflist entry (see the plugin's `netconf` module); `None` leaves
/// a key out, so the plugin's default applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginOptions {
    /// `daemon_socket`: where meshnetd listens (the plugin's default: `/run/meshnet/meshnetd.sock`).
    pub daemon_socket: Option<PathBuf>,
    /// `log_file`: where the plugin logs (its default: `/var/log/meshnet-cni.log`).
    pub log_file: Option<PathBuf>,
    /// `timeout_seconds`: bound on one daemon call (its default: 120; it accepts 1..=3600).
    pub timeout_seconds: Option<u64>,
}

/// meshnet's conflist entry, as the seed writes it: `{"name":"meshnet","type":"meshnet",
/// "ipam":{},"dns":{}}`, plus the plugin's own keys that `opts` sets.
pub fn meshnet_plugin(opts: &PluginOptions) -> Value {
    let mut v = json!({"name": "meshnet", "type": BINARY_NAME, "ipam": {}, "dns": {}});
    if let Some(obj) = v.as_object_mut() {
        if let Some(sock) = &opts.daemon_socket {
            obj.insert("daemon_socket".into(), json!(sock.display().to_string()));
        }
        if let Some(log) = &opts.log_file {
            obj.insert("log_file".into(), json!(log.display().to_string()));
        }
        if let Some(t) = opts.timeout_seconds {
            obj.insert("timeout_seconds".into(), json!(t));
        }
    }
    v
}

/// Installer errors. Each names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No file in the conf dir is a usable primary network configuration.
    #[error(
        "no primary CNI network configuration in {dir}: meshnet chains after the node's network \
         plugin (kindnet, flannel, calico, ...), whose *.conf/*.conflist/*.json must be there first{}",
        skipped_note(.skipped)
    )]
    NoPrimary {
        dir: PathBuf,
        /// The candidate files passed over, and why.
        skipped: Vec<Skipped>,
    },
    /// A configuration file is not a valid CNI network configuration.
    #[error("CNI configuration {name}: {reason}")]
    InvalidConfig { name: String, reason: String },
    /// A file system operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The conf dir cannot be watched, or the watch ended (the directory was removed or moved).
    #[error("watching {}: {reason}", .dir.display())]
    Watch { dir: PathBuf, reason: String },
}

fn skipped_note(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = skipped
        .iter()
        .map(|s| format!("{}: {}", s.name, s.reason))
        .collect();
    format!(" (passed over: {})", list.join("; "))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A candidate configuration file that was not chosen as the primary, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// The outcome of looking for the primary configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The chosen file's name and its parsed content.
    pub primary: Option<(String, Value)>,
    /// The candidates before it (by name) that were passed over.
    pub skipped: Vec<Skipped>,
}

/// Whether the runtimes would read a file of this name as a network configuration.
pub fn is_config_name(name: &str) -> bool {
    CONFIG_EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

/// The primary network configuration among the conf dir's files: the first by name (byte-wise,
/// as the runtimes sort) with a configuration extension that parses as a valid CNI configuration,
/// skipping meshnet's own [`CONFLIST_NAME`] and any configuration that already chains `meshnet`.
pub fn choose_primary(files: &[(String, Vec<u8>)]) -> Option<(String, Value)> {
    select_primary(files).primary
}

/// [`choose_primary`], also saying why each earlier candidate was passed over.
pub fn select_primary(files: &[(String, Vec<u8>)]) -> Selection {
    let mut candidates: Vec<&(String, Vec<u8>)> =
        files.iter().filter(|(n, _)| is_config_name(n)).collect();
    candidates.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut skipped = Vec::new();
    let mut skip = |name: &str, reason: String| {
        skipped.push(Skipped {
            name: name.to_string(),
            reason,
        })
    };
    for (name, bytes) in candidates {
        if name == CONFLIST_NAME {
            skip(name, "meshnet's own output".into());
            continue;
        }
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                skip(name, format!("not JSON: {e}"));
                continue;
            }
        };
        let list = match to_conflist(name, &value) {
            Ok(l) => l,
            Err(InstallError::InvalidConfig { reason, .. }) => {
                skip(name, reason);
                continue;
            }
            Err(e) => {
                skip(name, e.to_string());
                continue;
            }
        };
        if chains_meshnet(&list) {
            skip(name, "already chains meshnet".into());
            continue;
        }
        return Selection {
            primary: Some((name.clone(), value)),
            skipped,
        };
    }
    Selection {
        primary: None,
        skipped,
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> InstallError {
    InstallError::InvalidConfig {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn plugin_type(p: &Value) -> Option<&str> {
    p.get("type").and_then(Value::as_str)
}

/// The configuration `value` of file `name` as a conflist.
///
/// A `.conflist` (or any file whose object has a `plugins` list and no `type`) is returned as is,
/// after checking that every plugin has a `type`. A `.conf`/`.json` single-plugin configuration
/// becomes `{"cniVersion": its cniVersion, "name": its name, "plugins": [itself]}` — the seed's
/// conversion (weave's `.conf` → conflist), keys absent from the original left out.
///
/// # Errors
/// [`InstallError::InvalidConfig`] when `value` is neither shape.
pub fn to_conflist(name: &str, value: &Value) -> Result<Value, InstallError> {
    let obj = value
        .as_object()
        .ok_or_else(|| invalid(name, "not a JSON object"))?;
    let is_list =
        name.ends_with(".conflist") || (obj.contains_key("plugins") && !obj.contains_key("type"));
    if is_list {
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(name, "a conflist needs a \"plugins\" list"))?;
        if plugins.is_empty() {
            return Err(invalid(name, "\"plugins\" is empty"));
        }
        if let Some(i) = plugins
            .iter()
            .position(|p| plugin_type(p).is_none_or(str::is_empty))
        {
            return Err(invalid(name, format!("plugins[{i}] has no \"type\"")));
        }
        return Ok(value.clone());
    }
    if plugin_type(value).is_none_or(str::is_empty) {
        return Err(invalid(name, "a network configuration needs a \"type\""));
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = obj.get(key) {
            list.insert(key.to_string(), v.clone());
        }
    }
    list.insert("plugins".into(), Value::Array(vec![value.clone()]));
    Ok(Value::Object(list))
}

/// Whether a conflist already has a `meshnet` plugin.
pub fn chains_meshnet(conflist: &Value) -> bool {
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| plugin_type(p) == Some(BINARY_NAME)))
}

/// `conflist` with `plugin` as its last plugin: any existing `meshnet` entry is dropped first, so
/// there is exactly one. Everything else — `cniVersion` included — is kept as it is.
pub fn with_meshnet(mut conflist: Value, plugin: &Value) -> Value {
    if let Some(obj) = conflist.as_object_mut() {
        // The original cniVersion is kept (the Go plugin forced 0.3.0 on everyone), except below
        // 0.3.0: chaining (prevResult) starts at 0.3.0, so an older list cannot carry meshnet and
        // its primary plugin's result at once. 0.3.0 is the oldest version that can.
        let old = obj.get("cniVersion").and_then(Value::as_str).unwrap_or("");
        if matches!(old, "0.1.0" | "0.2.0" | "") {
            obj.insert("cniVersion".into(), Value::String("0.3.0".into()));
        }
        let plugins = obj
            .entry("plugins")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !plugins.is_array() {
            *plugins = Value::Array(Vec::new());
        }
        if let Some(ps) = plugins.as_array_mut() {
            ps.retain(|p| plugin_type(p) != Some(BINARY_NAME));
            ps.push(plugin.clone());
        }
    }
    conflist
}

/// The bytes written to [`CONFLIST_NAME`]: pretty JSON and a final newline. Deterministic for a
/// given value, which is what makes a re-run a no-op.
pub fn render(conflist: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(conflist).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The primary configuration's file name.
    pub primary: String,
    /// Candidates before it that were passed over, and why.
    pub skipped: Vec<Skipped>,
    pub conflist: PathBuf,
    /// Whether the conflist was (re)written; false when it already had this content.
    pub conflist_changed: bool,
    pub binary: PathBuf,
    /// Whether the binary was (re)copied; false when it already had these bytes and mode 0755.
    pub binary_changed: bool,
}

impl InstallReport {
    /// Whether anything on disk changed.
    pub fn changed(&self) -> bool {
        self.conflist_changed || self.binary_changed
    }
}

/// The conf dir's candidate files: `(file name, content)`.
type ConfFiles = Vec<(String, Vec<u8>)>;

/// Reads the conf dir's candidate files: regular files (symlinks followed) with a configuration
/// extension, at most [`MAX_CONFIG_BYTES`] each. Unreadable or oversized files are reported as
/// skipped rather than failing the whole install.
fn read_conf_dir(dir: &Path) -> Result<(ConfFiles, Vec<Skipped>), InstallError> {
    let mut files = Vec::new();
    let mut unread = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_config_name(&name) {
            continue;
        }
        let path = entry.path();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                unread.push(Skipped {
                    name,
                    reason: format!("cannot stat: {e}"),
                });
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_CONFIG_BYTES {
            unread.push(Skipped {
                name,
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
            continue;
        }
        match fs::read(&path) {
            Ok(bytes) => files.push((name, bytes)),
            Err(e) => unread.push(Skipped {
                name,
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    Ok((files, unread))
}

/// Installs meshnet on this node: copies the binary into the bin dir, then writes
/// `00-meshnet.conflist` from the primary configuration. Each step is skipped when the file is
/// already as it should be.
///
/// # Errors
/// No primary configuration ([`InstallError::NoPrimary`], naming the conf dir); the binary cannot
/// be read; a directory cannot be listed or written.
pub fn install(cfg: &InstallConfig) -> Result<InstallReport, InstallError> {
    let (files, unread) = read_conf_dir(&cfg.conf_dir)?;
    let Selection {
        primary,
        mut skipped,
    } = select_primary(&files);
    // Unreadable files count as passed over only if they sort before the one chosen.
    skipped.extend(
        unread
            .into_iter()
            .filter(|s| primary.as_ref().is_none_or(|(p, _)| s.name < *p)),
    );
    skipped.sort_by(|a, b| a.name.cmp(&b.name));
    let Some((primary, value)) = primary else {
        return Err(InstallError::NoPrimary {
            dir: cfg.conf_dir.clone(),
            skipped,
        });
    };
    let bytes = render(&with_meshnet(to_conflist(&primary, &value)?, &cfg.plugin));

    let binary = cfg.binary_path();
    let content = fs::read(&cfg.binary).map_err(io_err("reading", &cfg.binary))?;
    let binary_changed = write_atomic(&binary, &content, 0o755)?;
    let conflist = cfg.conflist_path();
    let conflist_changed = write_atomic(&conflist, &bytes, 0o644)?;
    Ok(InstallReport {
        primary,
        skipped,
        conflist,
        conflist_changed,
        binary,
        binary_changed,
    })
}

/// What [`uninstall`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallReport {
    pub removed: Vec<PathBuf>,
}

/// Removes meshnet's own files: the conflist first (so the runtime stops calling the plugin),
/// then the binary, and any temporary file an interrupted install left next to them. Files that
/// are already gone are fine; nothing else is touched.
///
/// # Errors
/// A file exists but cannot be removed.
pub fn uninstall(cfg: &InstallConfig) -> Result<UninstallReport, InstallError> {
    let mut report = UninstallReport::default();
    for path in [cfg.conflist_path(), cfg.binary_path()] {
        if remove_if_present(&path)? {
            report.removed.push(path.clone());
        }
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            // Listing may fail if the directory is gone: then there are no leftovers either.
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if is_temp_of(&entry.file_name(), name) && remove_if_present(&entry.path())? {
                    report.removed.push(entry.path());
                }
            }
        }
    }
    Ok(report)
}

fn remove_if_present(path: &Path) -> Result<bool, InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Temporary files are `.{target}.{pid}.{seq}.{nanos}.meshnet-tmp`: hidden, and without a
/// configuration extension, so no runtime ever reads one as a network configuration.
fn temp_name(target: &OsStr) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".{}.{}.{}.{}{}",
        target.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos,
        TEMP_SUFFIX
    )
}

fn is_temp_of(name: &OsStr, target: &OsStr) -> bool {
    let (Some(name), Some(target)) = (name.to_str(), target.to_str()) else {
        return false;
    };
    name.strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(target))
        .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(TEMP_SUFFIX))
}

/// Removes a temporary file unless it was renamed into place.
struct TempGuard<'a>(Option<&'a Path>);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Makes `path` hold exactly `bytes` with permissions `mode`, atomically: readers see the old
/// file or the new one, never a partial one; a running executable keeps its old inode. Returns
/// whether anything changed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_file()
        && fs::read(path).is_ok_and(|old| old == bytes)
    {
        if meta.permissions().mode() & 0o7777 == mode {
            return Ok(false);
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", path))?;
        return Ok(true);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io_err("writing", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        )));
    };
    let tmp = dir.join(temp_name(name));
    let mut guard = TempGuard(Some(&tmp));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    // The umask may have narrowed the creation mode.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
    guard.0 = None;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))?;
    Ok(true)
}

/// One pass of the watcher: [`install`]; when there is no primary, also removes our conflist
/// (whether it did is the second value). Other failures leave everything as it is.
fn refresh(
    cfg: &InstallConfig,
) -> (
    Result<InstallReport, InstallError>,
    Result<bool, InstallError>,
) {
    let result = install(cfg);
    let withdrawn = if matches!(result, Err(InstallError::NoPrimary { .. })) {
        remove_if_present(&cfg.conflist_path())
    } else {
        Ok(false)
    };
    (result, withdrawn)
}

/// What the watcher does with one inotify event on the conf dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaction {
    Ignore,
    Refresh,
    /// The watch is gone (directory deleted, moved, unmounted).
    Lost,
}

fn react(mask: EventMask, name: Option<&OsStr>) -> Reaction {
    if mask.intersects(
        EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT,
    ) {
        return Reaction::Lost;
    }
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Reaction::Refresh;
    }
    let Some(name) = name.and_then(OsStr::to_str) else {
        return Reaction::Ignore;
    };
    if name == CONFLIST_NAME {
        // Our own writes arrive as MOVED_TO (rename into place): ignored, or the watcher would
        // chase its tail. Our file removed by someone else is put back.
        return if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            Reaction::Refresh
        } else {
            Reaction::Ignore
        };
    }
    // Temporary files (ours included) have no configuration extension.
    if is_config_name(name) {
        Reaction::Refresh
    } else {
        Reaction::Ignore
    }
}

/// Keeps the installation current: watches the conf dir (inotify) and re-runs [`install`] when a
/// configuration file appears, changes or goes away — the primary network plugin installed late
/// or upgraded — or when `00-meshnet.conflist` is removed by someone else. Events are debounced
/// ([`WATCH_DEBOUNCE`]); one install pass runs right after the watch is set up, so nothing that
/// changed before is missed. Its own writes are ignored, and a pass that finds nothing to change
/// writes nothing, so it never loops. A pass that finds no primary any more removes
/// `00-meshnet.conflist` (see the module's invariants); any other failed pass is logged and the
/// existing conflist left in place.
///
/// Returns when `shutdown` resolves.
///
/// # Errors
/// The conf dir cannot be watched, or the watch ends (the directory was removed or moved away).
pub async fn watch_and_refresh(
    cfg: InstallConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), InstallError> {
    watch_loop(cfg, WATCH_DEBOUNCE, shutdown, |_| {}).await
}

/// [`watch_and_refresh`] with the debounce and an observer of each install pass (tests).
async fn watch_loop(
    cfg: InstallConfig,
    debounce: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    mut observe: impl FnMut(&Result<InstallReport, InstallError>),
) -> Result<(), InstallError> {
    let dir = cfg.conf_dir.clone();
    let watch_err = |reason: String| InstallError::Watch {
        dir: dir.clone(),
        reason,
    };
    let ino = Inotify::init().map_err(|e| watch_err(format!("inotify: {e}")))?;
    ino.watches()
        .add(
            &cfg.conf_dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )
        .map_err(|e| watch_err(e.to_string()))?;
    let mut events = ino
        .into_event_stream(vec![0u8; 16 * 1024])
        .map_err(|e| watch_err(format!("inotify: {e}")))?;
    tokio::pin!(shutdown);

    let next = |e: Option<io::Result<inotify::EventOwned>>| -> Result<Reaction, InstallError> {
        match e {
            None => Err(watch_err("inotify stream ended".into())),
            Some(Err(e)) => Err(watch_err(format!("reading inotify events: {e}"))),
            Some(Ok(ev)) => match react(ev.mask, ev.name.as_deref()) {
                Reaction::Lost => Err(watch_err("the directory went away".into())),
                r => Ok(r),
            },
        }
    };

    let mut pending = true;
    loop {
        if pending {
            // Debounce: wait until no relevant event came for `debounce`, at most
            // WATCH_DEBOUNCE_MAX in all. Events we ignore (our own writes) do not extend it.
            let deadline = Instant::now() + WATCH_DEBOUNCE_MAX.max(debounce);
            let mut quiet_at = Instant::now() + debounce;
            loop {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    e = tokio::time::timeout_at(quiet_at.min(deadline), events.next()) => match e {
                        Err(_quiet) => break,
                        Ok(e) => {
                            if next(e)? == Reaction::Refresh {
                                quiet_at = Instant::now() + debounce;
                            }
                        }
                    },
                }
            }
            pending = false;
            let c = cfg.clone();
            let (result, withdrawn) = match tokio::task::spawn_blocking(move || refresh(&c)).await {
                Ok(r) => r,
                Err(e) => (
                    Err(watch_err(format!("install task failed: {e}"))),
                    Ok(false),
                ),
            };
            match withdrawn {
                Ok(true) => tracing::warn!(conflist = %cfg.conflist_path().display(),
                    "no primary CNI configuration any more: removed meshnet's, which comes back \
                     with a primary"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot remove meshnet's CNI configuration"),
            }
            match &result {
                Ok(r) if r.changed() => tracing::info!(
                    primary = %r.primary, conflist_changed = r.conflist_changed,
                    binary_changed = r.binary_changed, "meshnet CNI installation refreshed"
                ),
                Ok(r) => tracing::debug!(primary = %r.primary, "meshnet CNI installation current"),
                Err(e) => tracing::warn!(error = %e,
                    "refreshing the meshnet CNI installation failed; keeping what is installed"),
            }
            observe(&result);
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            e = events.next() => {
                if next(e)? == Reaction::Refresh {
                    pending = true;
                }
            }
        }
    }
}
