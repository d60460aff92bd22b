//! Installer tests: the pure choices against golden fixtures (`daemon/tests/install/`), then the
//! I/O shell in temporary directories, then the watcher.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::*;

const KINDNET: &str = include_str!("../../tests/install/10-kindnet.conflist");
const KINDNET_OUT: &str = include_str!("../../tests/install/kindnet.expected.json");
const WEAVE: &str = include_str!("../../tests/install/weave.conf");
const WEAVE_OUT: &str = include_str!("../../tests/install/weave.expected.json");
const FLANNEL: &str = include_str!("../../tests/install/10-flannel.conflist");
const FLANNEL_OUT: &str = include_str!("../../tests/install/flannel.expected.json");
const CALICO: &str = include_str!("../../tests/install/10-calico.conflist");
const CALICO_OUT: &str = include_str!("../../tests/install/calico.expected.json");

/// (primary file name, its content, the expected 00-meshnet.conflist)
const GOLDEN: [(&str, &str, &str); 4] = [
    ("10-kindnet.conflist", KINDNET, KINDNET_OUT),
    ("weave.conf", WEAVE, WEAVE_OUT),
    ("10-flannel.conflist", FLANNEL, FLANNEL_OUT),
    ("10-calico.conflist", CALICO, CALICO_OUT),
];

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("fixture is JSON")
}

fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
        .collect()
}

/// A node: a conf dir, a bin dir, and a "meshnet binary" to copy.
struct Node {
    _tmp: TempDir,
    cfg: InstallConfig,
}

impl Node {
    fn new(conf: &[(&str, &str)]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let conf_dir = tmp.path().join("net.d");
        let bin_dir = tmp.path().join("bin");
        let image = tmp.path().join("image");
        for d in [&conf_dir, &bin_dir, &image] {
            fs::create_dir(d).expect("mkdir");
        }
        for (name, content) in conf {
            fs::write(conf_dir.join(name), content).expect("write conf");
        }
        let binary = image.join("meshnet");
        fs::write(&binary, b"\x7fELF meshnet v1").expect("write binary");
        fs::write(bin_dir.join("ptp"), b"ptp").expect("write ptp");
        Node {
            _tmp: tmp,
            cfg: InstallConfig::new(conf_dir, bin_dir, binary),
        }
    }

    fn conflist(&self) -> Value {
        let bytes = fs::read(self.cfg.conflist_path()).expect("conflist written");
        serde_json::from_slice(&bytes).expect("conflist is JSON")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

// ---- pure ---------------------------------------------------------------------------------

#[test]
fn golden_conflists() {
    for (name, input, expected) in GOLDEN {
        let (chosen, value) = choose_primary(&files(&[(name, input)])).expect(name);
        assert_eq!(chosen, name);
        let out = render(&with_meshnet(
            to_conflist(name, &value).expect(name),
            &meshnet_plugin(&PluginOptions::default()),
        ));
        let out: Value = serde_json::from_slice(&out).expect("rendered JSON");
        assert_eq!(out, parse(expected), "{name}");
    }
}

#[test]
fn conf_becomes_a_conflist_keeping_its_version() {
    // The seed README's weave example: the original object, its own cniVersion and name
    // included, is the first plugin; the list keeps 0.2.0 (the Go meshnet forced 0.3.0).
    let list = to_conflist("weave.conf", &parse(WEAVE)).expect("valid conf");
    assert_eq!(
        list,
        json!({
            "cniVersion": "0.2.0",
            "name": "weave",
            "plugins": [{"cniVersion": "0.2.0", "name": "weave", "type": "weave-net"}]
        })
    );
    // A .json file holding one plugin is a .conf too; absent keys stay absent.
    let list = to_conflist("99-bridge.json", &json!({"type": "bridge"})).expect("valid conf");
    assert_eq!(list, json!({"plugins": [{"type": "bridge"}]}));
}

#[test]
fn conflist_is_kept_as_is() {
    let v = json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": true,
                   "plugins": [{"type": "ptp"}]});
    assert_eq!(to_conflist("10-n.conflist", &v).expect("valid"), v);
    // A conflist under a .json name is recognised by its plugin list.
    assert_eq!(to_conflist("10-n.json", &v).expect("valid"), v);
}

#[test]
fn invalid_configs_are_refused_with_a_reason() {
    let cases = [
        ("a.conf", json!([1, 2]), "not a JSON object"),
        ("a.conf", json!({"name": "x"}), "\"type\""),
        ("a.conflist", json!({"name": "x"}), "\"plugins\""),
        ("a.conflist", json!({"name": "x", "plugins": []}), "empty"),
        (
            "a.conflist",
            json!({"plugins": [{"type": "ptp"}, {"name": "x"}]}),
            "plugins[1]",
        ),
    ];
    for (name, v, want) in cases {
        let e = to_conflist(name, &v).expect_err(want);
        let msg = e.to_string();
        assert!(
            msg.contains(name) && msg.contains(want),
            "{msg:?} lacks {want:?}"
        );
    }
}

#[test]
fn meshnet_is_appended_once_and_replaces_an_old_entry() {
    let old = json!({"cniVersion": "0.4.0", "name": "k", "plugins": [
        {"type": "ptp"},
        {"type": "meshnet", "name": "meshnet", "daemon_socket": "/old.sock"},
        {"type": "portmap"},
    ]});
    let plugin = meshnet_plugin(&PluginOptions {
        daemon_socket: Some("/run/x/meshnetd.sock".into()),
        ..PluginOptions::default()
    });
    let once = with_meshnet(old, &plugin);
    let twice = with_meshnet(once.clone(), &plugin);
    assert_eq!(once, twice);
    assert_eq!(
        once,
        json!({"cniVersion": "0.4.0", "name": "k", "plugins": [
            {"type": "ptp"},
            {"type": "portmap"},
            {"name": "meshnet", "type": "meshnet", "ipam": {}, "dns": {},
             "daemon_socket": "/run/x/meshnetd.sock"},
        ]})
    );
    assert!(chains_meshnet(&once));
}

#[test]
fn own_output_and_meshnet_chains_are_never_the_primary() {
    let ours = render(&with_meshnet(
        parse(KINDNET),
        &meshnet_plugin(&PluginOptions::default()),
    ));
    let ours = String::from_utf8(ours).expect("utf8");
    let sel = select_primary(&files(&[
        ("10-kindnet.conflist", KINDNET),
        (CONFLIST_NAME, &ours),
        // An older install under another name: already chains meshnet.
        ("01-meshnet-old.conflist", &ours),
    ]));
    assert_eq!(
        sel.primary.map(|(n, _)| n).as_deref(),
        Some("10-kindnet.conflist")
    );
    let skipped: Vec<&str> = sel.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(skipped, [CONFLIST_NAME, "01-meshnet-old.conflist"]);
}

#[test]
fn broken_files_earlier_by_name_are_passed_over() {
    let sel = select_primary(&files(&[
        ("10-flannel.conflist", FLANNEL),
        ("05-broken.conf", "{\"type\": \"bridge\",}"),
        ("06-notype.conf", "{\"name\": \"x\"}"),
    ]));
    assert_eq!(
        sel.primary.map(|(n, _)| n).as_deref(),
        Some("10-flannel.conflist")
    );
    assert_eq!(sel.skipped.len(), 2);
    assert_eq!(sel.skipped[0].name, "05-broken.conf");
    assert!(
        sel.skipped[0].reason.starts_with("not JSON"),
        "{:?}",
        sel.skipped[0]
    );
    assert_eq!(sel.skipped[1].name, "06-notype.conf");
}

#[test]
fn order_is_bytewise_by_name_and_only_config_extensions_count() {
    let sel = choose_primary(&files(&[
        ("9-a.conf", "{\"type\": \"a\"}"),
        ("10-b.conf", "{\"type\": \"b\"}"),
        ("00-aaa.conf.bak", "{\"type\": \"bak\"}"),
        ("calico-kubeconfig", "{\"type\": \"no\"}"),
        ("0-z.yaml", "{\"type\": \"no\"}"),
    ]));
    // "10-b" < "9-a" byte-wise, as Go's sort.Strings orders them for the runtime.
    assert_eq!(sel.map(|(n, _)| n).as_deref(), Some("10-b.conf"));
    assert_eq!(choose_primary(&[]), None);
}

#[test]
fn watcher_ignores_its_own_writes() {
    use Reaction::*;
    fn n(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }
    let tmp = temp_name(OsStr::new(CONFLIST_NAME));
    assert!(is_temp_of(OsStr::new(&tmp), OsStr::new(CONFLIST_NAME)));
    assert!(!is_config_name(&tmp));
    let cases = [
        (EventMask::CREATE, n(&tmp), Ignore),
        (EventMask::CLOSE_WRITE, n(&tmp), Ignore),
        (EventMask::MOVED_FROM, n(&tmp), Ignore),
        (EventMask::MOVED_TO, n(CONFLIST_NAME), Ignore),
        (EventMask::CLOSE_WRITE, n(CONFLIST_NAME), Ignore),
        (EventMask::DELETE, n(CONFLIST_NAME), Refresh),
        (EventMask::MOVED_FROM, n(CONFLIST_NAME), Refresh),
        (EventMask::CLOSE_WRITE, n("10-calico.conflist"), Refresh),
        (EventMask::MOVED_TO, n("10-calico.conflist"), Refresh),
        (EventMask::DELETE, n("10-calico.conflist"), Refresh),
        (EventMask::CLOSE_WRITE, n("calico-kubeconfig"), Ignore),
        (EventMask::Q_OVERFLOW, None, Refresh),
        (EventMask::DELETE_SELF, None, Lost),
        (EventMask::IGNORED, None, Lost),
    ];
    for (mask, name, want) in cases {
        assert_eq!(react(mask, name), want, "{mask:?} {name:?}");
    }
}

// ---- I/O ----------------------------------------------------------------------------------

#[test]
fn install_writes_the_golden_conflists() {
    for (name, input, expected) in GOLDEN {
        let node = Node::new(&[(name, input), ("calico-kubeconfig", "apiVersion: v1\n")]);
        let r = install(&node.cfg).expect(name);
        assert_eq!(r.primary, name);
        assert!(r.conflist_changed && r.binary_changed, "{r:?}");
        assert_eq!(node.conflist(), parse(expected), "{name}");
        // The primary is untouched.
        assert_eq!(
            fs::read_to_string(node.cfg.conf_dir.join(name)).expect("primary"),
            input
        );
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&node.cfg.conflist_path()), 0o644);
        assert_eq!(mode(&node.cfg.binary_path()), 0o755);
        assert_eq!(
            fs::read(node.cfg.binary_path()).expect("binary"),
            fs::read(&node.cfg.binary).expect("source")
        );
        // No temporary file is left behind.
        let mut want = vec![CONFLIST_NAME, name, "calico-kubeconfig"];
        want.sort_unstable();
        assert_eq!(Node::names(&node.cfg.conf_dir), want);
        assert_eq!(Node::names(&node.cfg.bin_dir), ["meshnet", "ptp"]);
    }
}

#[test]
fn reinstall_is_a_no_op() {
    let node = Node::new(&[("10-kindnet.conflist", KINDNET)]);
    assert!(install(&node.cfg).expect("first").changed());
    let stat = |p: &Path| {
        let m = fs::metadata(p).expect("stat");
        (
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            fs::read(p).expect("read"),
        )
    };
    let before = (
        stat(&node.cfg.conflist_path()),
        stat(&node.cfg.binary_path()),
    );
    let r = install(&node.cfg).expect("second");
    assert!(!r.conflist_changed && !r.binary_changed, "{r:?}");
    assert!(!r.changed());
    let after = (
        stat(&node.cfg.conflist_path()),
        stat(&node.cfg.binary_path()),
    );
    assert_eq!(before, after);
}

#[test]
fn install_replaces_what_changed_only() {
    let node = Node::new(&[("10-kindnet.conflist", KINDNET)]);
    install(&node.cfg).expect("first");
    let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
    let conflist_ino = ino(&node.cfg.conflist_path());
    let binary_ino = ino(&node.cfg.binary_path());

    // A new binary in the image: replaced by rename (a running plugin keeps its inode).
    fs::write(&node.cfg.binary, b"\x7fELF meshnet v2").expect("new binary");
    let r = install(&node.cfg).expect("second");
    assert!(r.binary_changed && !r.conflist_changed, "{r:?}");
    assert_ne!(ino(&node.cfg.binary_path()), binary_ino);
    assert_eq!(ino(&node.cfg.conflist_path()), conflist_ino);

    // Wrong mode, same bytes: fixed in place.
    fs::set_permissions(node.cfg.binary_path(), fs::Permissions::from_mode(0o600)).expect("chmod");
    let r = install(&node.cfg).expect("third");
    assert!(r.binary_changed, "{r:?}");
    assert_eq!(
        fs::metadata(node.cfg.binary_path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // A different socket: the conflist follows.
    let mut cfg = node.cfg.clone();
    cfg.plugin = meshnet_plugin(&PluginOptions {
        daemon_socket: Some("/run/other.sock".into()),
        ..PluginOptions::default()
    });
    let r = install(&cfg).expect("fourth");
    assert!(r.conflist_changed && !r.binary_changed, "{r:?}");
    let plugins = node.conflist()["plugins"].clone();
    assert_eq!(plugins[2]["daemon_socket"], "/run/other.sock");
    assert_eq!(plugins.as_array().map(Vec::len), Some(3));
}

#[test]
fn an_existing_meshnet_conflist_is_not_the_primary() {
    // A stale 00-meshnet.conflist built from some other primary: rebuilt from the real one.
    let stale = json!({"cniVersion": "0.3.0", "name": "old", "plugins": [
        {"type": "bridge"}, {"type": "meshnet", "name": "meshnet"}]});
    let node = Node::new(&[
        (CONFLIST_NAME, &stale.to_string()),
        ("10-flannel.conflist", FLANNEL),
    ]);
    let r = install(&node.cfg).expect("install");
    assert_eq!(r.primary, "10-flannel.conflist");
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(node.conflist(), parse(FLANNEL_OUT));
}

#[test]
fn a_broken_file_earlier_by_name_is_skipped() {
    let node = Node::new(&[
        ("05-broken.conflist", "{\"name\": \"half-written"),
        ("10-calico.conflist", CALICO),
    ]);
    let r = install(&node.cfg).expect("install");
    assert_eq!(r.primary, "10-calico.conflist");
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert_eq!(r.skipped[0].name, "05-broken.conflist");
    assert_eq!(node.conflist(), parse(CALICO_OUT));
}

#[test]
fn no_primary_is_an_error_naming_the_dir() {
    let node = Node::new(&[]);
    let e = install(&node.cfg).expect_err("empty dir");
    assert!(matches!(e, InstallError::NoPrimary { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&node.cfg.conf_dir.display().to_string()),
        "{msg}"
    );
    // Nothing was installed.
    assert!(!node.cfg.binary_path().exists());
    assert!(!node.cfg.conflist_path().exists());

    // Only unusable files: the message says why each was passed over.
    let node = Node::new(&[("10-x.conf", "not json"), ("README", "hello")]);
    let msg = install(&node.cfg).expect_err("no usable file").to_string();
    assert!(
        msg.contains(&node.cfg.conf_dir.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("10-x.conf: not JSON"), "{msg}");

    // Our own output alone is no primary either.
    let ours = String::from_utf8(render(&with_meshnet(
        parse(KINDNET),
        &meshnet_plugin(&PluginOptions::default()),
    )))
    .expect("utf8");
    let node = Node::new(&[(CONFLIST_NAME, &ours)]);
    let e = install(&node.cfg).expect_err("only ours");
    assert!(matches!(e, InstallError::NoPrimary { .. }), "{e:?}");
}

#[test]
fn missing_dirs_and_binary_are_errors_naming_the_path() {
    let node = Node::new(&[("10-kindnet.conflist", KINDNET)]);
    let mut cfg = node.cfg.clone();
    cfg.binary = cfg.bin_dir.join("no-such-binary");
    let msg = install(&cfg).expect_err("no binary").to_string();
    assert!(msg.contains("no-such-binary"), "{msg}");
    assert!(
        !cfg.conflist_path().exists(),
        "no conflist without the binary"
    );

    let mut cfg = node.cfg.clone();
    cfg.conf_dir = cfg.conf_dir.join("missing");
    let msg = install(&cfg).expect_err("no conf dir").to_string();
    assert!(msg.contains(&cfg.conf_dir.display().to_string()), "{msg}");
}

#[test]
fn uninstall_removes_only_our_files() {
    let node = Node::new(&[
        ("10-kindnet.conflist", KINDNET),
        ("99-other.conf", "{\"type\": \"x\"}"),
    ]);
    install(&node.cfg).expect("install");
    // A temporary file an interrupted install left behind, and look-alikes that are not ours.
    let leftover = node.cfg.conf_dir.join(temp_name(OsStr::new(CONFLIST_NAME)));
    fs::write(&leftover, b"partial").expect("leftover");
    fs::write(node.cfg.conf_dir.join("00-meshnet.conflist.bak"), b"x").expect("bak");
    fs::write(node.cfg.bin_dir.join("meshnet-other"), b"x").expect("other");

    let r = uninstall(&node.cfg).expect("uninstall");
    let mut removed = r.removed.clone();
    removed.sort();
    let mut want = vec![
        node.cfg.conflist_path(),
        node.cfg.binary_path(),
        leftover.clone(),
    ];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(
        Node::names(&node.cfg.conf_dir),
        [
            "00-meshnet.conflist.bak",
            "10-kindnet.conflist",
            "99-other.conf"
        ]
    );
    assert_eq!(Node::names(&node.cfg.bin_dir), ["meshnet-other", "ptp"]);
    assert_eq!(
        fs::read_to_string(node.cfg.conf_dir.join("10-kindnet.conflist")).expect("primary"),
        KINDNET
    );
    // Again: nothing left to remove, and that is fine.
    assert_eq!(
        uninstall(&node.cfg).expect("again"),
        UninstallReport::default()
    );
}

// ---- the watcher --------------------------------------------------------------------------

type Passes = Arc<Mutex<Vec<Result<InstallReport, String>>>>;

fn passes(p: &Passes) -> Vec<Result<InstallReport, String>> {
    p.lock().expect("lock").clone()
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start_watch(
    cfg: &InstallConfig,
) -> (
    Passes,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), InstallError>>,
) {
    let seen: Passes = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = Arc::clone(&seen);
    let task = tokio::spawn(watch_loop(
        cfg.clone(),
        Duration::from_millis(50),
        async move {
            let _ = stopped.await;
        },
        move |r| {
            let r = match r {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(e.to_string()),
            };
            s.lock().expect("lock").push(r);
        },
    ));
    (seen, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_the_primary_without_looping() {
    let node = Node::new(&[("10-kindnet.conflist", KINDNET)]);
    let (seen, stop, task) = start_watch(&node.cfg);

    // The first pass installs.
    eventually("the first pass", || !passes(&seen).is_empty()).await;
    let first = passes(&seen);
    assert!(
        first[0].as_ref().is_ok_and(InstallReport::changed),
        "{first:?}"
    );
    assert_eq!(node.conflist(), parse(KINDNET_OUT));

    // A new primary that sorts first (flannel installed later): the conflist follows it.
    fs::write(node.cfg.conf_dir.join("05-flannel.conflist"), FLANNEL).expect("write");
    eventually("the flannel pass", || {
        passes(&seen)
            .iter()
            .any(|p| p.as_ref().is_ok_and(|r| r.primary == "05-flannel.conflist"))
    })
    .await;
    assert_eq!(node.conflist(), parse(FLANNEL_OUT));

    // Our own writes trigger nothing: the pass count stays put.
    let n = passes(&seen).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(passes(&seen).len(), n, "{:?}", passes(&seen));

    // Someone removes our conflist: it is put back.
    fs::remove_file(node.cfg.conflist_path()).expect("rm");
    eventually("the conflist restored", || {
        node.cfg.conflist_path().exists()
    })
    .await;
    assert_eq!(node.conflist(), parse(FLANNEL_OUT));

    // The primary goes away entirely (the network plugin uninstalled): ours goes too, so the
    // node no longer looks network-ready; the binary stays.
    fs::remove_file(node.cfg.conf_dir.join("05-flannel.conflist")).expect("rm");
    fs::remove_file(node.cfg.conf_dir.join("10-kindnet.conflist")).expect("rm");
    eventually("a failed pass", || {
        passes(&seen)
            .last()
            .is_some_and(|p| p.as_ref().is_err_and(|e| e.contains("no primary")))
    })
    .await;
    eventually("our conflist withdrawn", || {
        !node.cfg.conflist_path().exists()
    })
    .await;
    assert_eq!(
        Node::names(&node.cfg.conf_dir),
        Vec::<String>::new(),
        "nothing else written"
    );
    assert!(node.cfg.binary_path().exists());

    // A primary comes back: so does ours, chained after it.
    fs::write(node.cfg.conf_dir.join("10-calico.conflist"), CALICO).expect("write");
    eventually("the conflist back", || node.cfg.conflist_path().exists()).await;
    assert_eq!(node.conflist(), parse(CALICO_OUT));

    stop.send(()).expect("watcher still running");
    task.await.expect("join").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reports_a_vanished_conf_dir() {
    let node = Node::new(&[("10-kindnet.conflist", KINDNET)]);
    let (seen, _stop, task) = start_watch(&node.cfg);
    eventually("the first pass", || !passes(&seen).is_empty()).await;
    fs::remove_dir_all(&node.cfg.conf_dir).expect("rm -r");
    let r = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("watcher returns")
        .expect("join");
    let e = r.expect_err("watch lost");
    assert!(matches!(e, InstallError::Watch { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&node.cfg.conf_dir.display().to_string())
    );
}

#[test]
fn plugin_options_become_the_plugins_own_keys() {
    assert_eq!(
        meshnet_plugin(&PluginOptions::default()),
        json!({"name": "meshnet", "type": "meshnet", "ipam": {}, "dns": {}}),
        "the seed's entry, no more"
    );
    let opts = PluginOptions {
        daemon_socket: Some("/run/m/d.sock".into()),
        log_file: Some("/var/log/m.log".into()),
        timeout_seconds: Some(30),
    };
    let out = render(&with_meshnet(parse(KINDNET), &meshnet_plugin(&opts)));
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    let mut want = parse(KINDNET_OUT);
    let last = want["plugins"]
        .as_array_mut()
        .and_then(|p| p.last_mut())
        .expect("meshnet entry");
    last["daemon_socket"] = json!("/run/m/d.sock");
    last["log_file"] = json!("/var/log/m.log");
    last["timeout_seconds"] = json!(30);
    assert_eq!(out, want);
}
