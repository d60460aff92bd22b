//! `meshnet`: the CNI plugin binary. Reads the `CNI_*` environment and stdin, logs to a file,
//! runs [`meshnet_cni::run`] on a single-threaded runtime, and prints its outcome. stdout carries
//! only the result or error JSON; logs never go there.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use meshnet_cni::daemon_client::GrpcDaemon;
use meshnet_cni::netconf::{self, MAX_STDIN_BYTES};
use meshnet_cni::{CniEnv, CniError, CniVersion, ErrorCode, Outcome};

fn main() -> ExitCode {
    let env = CniEnv::from_process();
    let mut stdin = Vec::new();
    // One byte past the bound, so that an oversized config is detected rather than truncated.
    let limit = u64::try_from(MAX_STDIN_BYTES).map_or(u64::MAX, |n| n.saturating_add(1));
    let read = std::io::stdin().lock().take(limit).read_to_end(&mut stdin);
    init_logging(&netconf::log_file(&stdin, &env));
    let _span = tracing::info_span!("meshnet", pid = std::process::id()).entered();

    let version = || netconf::sniff_version(&stdin).unwrap_or(CniVersion::LATEST);
    let outcome = match read {
        Err(e) => Outcome::failure(
            version(),
            &CniError::new(ErrorCode::Io, "reading the network config from stdin")
                .with_details(e.to_string()),
        ),
        Ok(_) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(meshnet_cni::run(&env, &stdin, GrpcDaemon::new)),
            Err(e) => Outcome::failure(
                version(),
                &CniError::new(ErrorCode::Io, "starting the async runtime")
                    .with_details(e.to_string()),
            ),
        },
    };

    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush())
    {
        tracing::error!(error = %e, "writing the result to stdout");
    }
    ExitCode::from(outcome.exit_code)
}

/// Logs to `path` (appending; concurrent invocations interleave whole lines), or to stderr when
/// it cannot be opened. Never to stdout.
fn init_logging(path: &Path) {
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => subscriber.with_writer(Arc::new(file)).init(),
        Err(e) => {
            subscriber.with_writer(std::io::stderr).init();
            tracing::warn!(log_file = %path.display(), error = %e, "cannot open the log file, logging to stderr");
        }
    }
}
