//! Running the machine's tools (`ip`, plugins) with errors that say what failed.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs `argv`, returning stdout; a non-zero exit is an error quoting the command and stderr.
///
/// # Errors
/// The program cannot be started or exits non-zero.
pub fn run(argv: &[&str]) -> anyhow::Result<String> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`] but a failure is only reported, for best-effort cleanup.
pub fn run_quiet(argv: &[&str]) -> bool {
    run(argv).is_ok()
}

/// Runs `argv` inside network namespace `netns` (`ip netns exec`).
///
/// # Errors
/// As [`run`].
pub fn run_in(netns: &str, argv: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(argv);
    run(&full)
}

/// Runs a program with `env`, writing `stdin`; returns (exit success, stdout, stderr).
///
/// # Errors
/// The program cannot be started.
pub fn run_with_input(
    argv: &[&str],
    env: &[(&str, String)],
    stdin: &[u8],
) -> anyhow::Result<(bool, String, String)> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin)
            .with_context(|| format!("writing stdin of {prog}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {prog}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Names of the existing network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
