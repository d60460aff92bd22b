//! The I/O shell: running commands (with time limits), child processes the harness owns,
//! reading `/proc`, and the clean-up registry that a signal handler drains.
//!
//! The harness only ever stops processes it started (by their pid) and removes labs it brought
//! up (by name, with `meshnet-lab down`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::parse::{self, CpuTimes};

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` with extra `env`, killing it after `limit`.
///
/// # Errors
/// It cannot be started, or it ran past `limit` (then it is killed).
pub fn run_limited(argv: &[&str], env: &[(&str, &str)], limit: Duration) -> anyhow::Result<Output> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let dir = tempdir_for_output()?;
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let child = spawn_registered(
        Command::new(prog)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?),
        prog,
    )?;
    let pid = child.id();
    let r = wait_limited(child, limit);
    unregister_child(pid);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    match r? {
        Some(ok) => Ok(Output { ok, stdout, stderr }),
        None => bail!(
            "`{}` did not finish within {} s (killed); stderr: {}",
            argv.join(" "),
            limit.as_secs(),
            stderr.trim()
        ),
    }
}

/// Like [`run_limited`], but a non-zero exit is an error quoting stderr; returns stdout.
///
/// # Errors
/// As [`run_limited`], or the command failed.
pub fn run_ok(argv: &[&str], env: &[(&str, &str)], limit: Duration) -> anyhow::Result<String> {
    let o = run_limited(argv, env, limit)?;
    if !o.ok {
        bail!(
            "`{}` failed: {} {}",
            argv.join(" "),
            o.stderr.trim(),
            o.stdout.trim()
        );
    }
    Ok(o.stdout)
}

/// Runs `argv` (up to 60 s); stdout, or an error quoting stderr.
///
/// # Errors
/// As [`run_ok`].
pub fn run(argv: &[&str]) -> anyhow::Result<String> {
    run_ok(argv, &[], Duration::from_secs(60))
}

/// Runs `argv` inside the named network namespace.
///
/// # Errors
/// As [`run`].
pub fn run_in(netns: &str, argv: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(argv);
    run(&full)
}

/// Waits for `child`: `Some(success)`, or `None` if it ran past `limit` and was killed.
fn wait_limited(mut child: Child, limit: Duration) -> anyhow::Result<Option<bool>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st.success()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tempdir_for_output() -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "meshnet-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// A long-running child process the harness owns (an iperf3 server, a relay). Stopped on drop.
#[derive(Debug)]
pub struct Owned {
    child: Child,
    what: String,
}

impl Owned {
    /// Starts `argv` with `env`, its output to `log` (or nowhere).
    ///
    /// # Errors
    /// It cannot be started.
    pub fn spawn(
        argv: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
        stdout_piped: bool,
    ) -> anyhow::Result<Self> {
        let (prog, args) = argv.split_first().context("empty command")?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?;
                cmd.stderr(f.try_clone()?);
                if stdout_piped {
                    cmd.stdout(Stdio::piped());
                } else {
                    cmd.stdout(f);
                }
            }
            None => {
                cmd.stderr(Stdio::null());
                cmd.stdout(if stdout_piped {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
            }
        }
        let child = spawn_registered(&mut cmd, prog)?;
        Ok(Owned {
            child,
            what: argv.join(" "),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its piped stdout (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let pid = self.child.id();
        stop_pid(pid);
        let _ = self.child.wait();
        unregister_child(pid);
    }
}

/// SIGTERM, then SIGKILL after a second: only for pids this process started.
fn stop_pid(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let p = Pid::from_raw(raw);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        // A child we have not reaped yet stays a zombie: `waitpid` in the owner reaps it.
        if std::fs::read_to_string(format!("/proc/{raw}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// What a signal handler must undo: labs up and children running.
#[derive(Debug, Default)]
struct Registry {
    labs: Vec<(PathBuf, String)>,
    children: Vec<u32>,
    /// Set by [`clean_up_everything`]: nothing new is started after it.
    stopping: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    labs: Vec::new(),
    children: Vec::new(),
    stopping: false,
});

/// Starts `cmd` and registers the child, under the registry's lock, so that a clean-up that
/// has begun either sees the child or prevents it.
fn spawn_registered(cmd: &mut Command, prog: &str) -> anyhow::Result<Child> {
    let mut r = REGISTRY
        .lock()
        .map_err(|_| anyhow::anyhow!("process registry poisoned"))?;
    if r.stopping {
        bail!("not starting {prog}: the run is being interrupted");
    }
    let child = cmd.spawn().with_context(|| format!("starting {prog}"))?;
    r.children.push(child.id());
    Ok(child)
}

fn unregister_child(pid: u32) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.children.retain(|p| *p != pid);
    }
}

/// Records lab `name` (run by the `meshnet-lab` at `lab_bin`) as up.
pub fn register_lab(lab_bin: &Path, name: &str) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.labs.push((lab_bin.to_path_buf(), name.to_string()));
    }
}

/// Forgets lab `name` (it was taken down).
pub fn unregister_lab(name: &str) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.labs.retain(|(_, n)| n != name);
    }
}

/// Stops every registered child and takes every registered lab down (after a signal).
pub fn clean_up_everything() {
    let (labs, children) = match REGISTRY.lock() {
        Ok(mut r) => {
            r.stopping = true;
            (std::mem::take(&mut r.labs), std::mem::take(&mut r.children))
        }
        Err(_) => return,
    };
    for pid in children {
        stop_pid(pid);
    }
    for (bin, name) in labs {
        let _ = Command::new(&bin)
            .args(["--lab", &name, "down"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(lab_state_root().join(format!("{name}.lock")));
        eprintln!("meshnet-bench: took lab {name} down");
    }
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

/// The machine's CPU times now.
///
/// # Errors
/// `/proc/stat` unreadable.
pub fn machine_cpu() -> anyhow::Result<CpuTimes> {
    parse::proc_stat(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
}

/// `(utime, stime)` of `pid` in ticks.
///
/// # Errors
/// The process is gone.
pub fn pid_cpu(pid: i32) -> anyhow::Result<(u64, u64)> {
    parse::pid_stat_times(
        &std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?,
    )
}

/// A `Vm…` field of `pid` in KiB.
///
/// # Errors
/// The process is gone or has no such field.
pub fn pid_status_kib(pid: i32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    parse::status_kib(&s, field).with_context(|| format!("process {pid} has no {field}"))
}

/// Names of the network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Where `meshnet-lab` keeps its labs (`$MESHNET_LAB_DIR`, default `/run/meshnet-lab`).
pub fn lab_state_root() -> PathBuf {
    std::env::var_os("MESHNET_LAB_DIR")
        .map_or_else(|| PathBuf::from("/run/meshnet-lab"), PathBuf::from)
}
