//! `fanin check`: fork workers the way a pre-fork server does and prove what fanin saw.
//!
//! Two rounds against one sidecar (its own, started from this binary on free loopback ports,
//! or a running one given with `--target`):
//!
//! 1. **shim**: N workers forked from a single-threaded master, each with the
//!    [`Shim`](crate::shim::Shim), record known values and flush. fanin must show N instances, each named after its
//!    worker's pid, totals equal to the truth, and no collision. The workers then record once
//!    more and exit orderly; their final values must arrive.
//! 2. **naive**: the master builds one provider before forking (the parent's resource and
//!    start time in every worker, as with OpenTelemetry Python <= 1.43 under gunicorn
//!    `--preload`); each worker records into it and exports on its own connection. fanin must
//!    list the collision, and either show the truth (the writers told apart, by pid over the
//!    unix socket) or say in its answer that the total is unreliable.
//!
//! The master forks only while it is single-threaded (checked through /proc): its own
//! sidecar runs as a separate process, and its HTTP client spawns no thread. A worker never
//! returns into the master's code: it ends with `std::process::exit`.
//!
//! `rounds.rs` holds the two rounds, `worker.rs` the fork plumbing ([`fork_worker`],
//! [`Worker`], [`WorkerLink`], the master-worker protocol), `sidecar.rs` the sidecar and its
//! query client ([`Sidecar`]); the last two are public for the fork tests in
//! `tests/fork.rs`.

mod rounds;
mod sidecar;
mod worker;

use std::io::Write;
use std::time::Duration;

use crate::shim::{self, Protocol};

pub use sidecar::{Findings, Sidecar, SidecarProcess};
pub use worker::{EXITING, GO, READY, Worker, WorkerLink, fork_worker, poll_until, wait_for};

/// Scope and metric names the check records under.
const SCOPE: &str = "fanin-check";
const REQUESTS: &str = "fanin.check.requests";
const INFLIGHT: &str = "fanin.check.inflight";
const LATENCY: &str = "fanin.check.latency";

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the sidecar: {0}")]
    Sidecar(String),
    #[error("fork: {0}")]
    Fork(String),
    #[error("query {url}: {reason}")]
    Query { url: String, reason: String },
    #[error(transparent)]
    Shim(#[from] shim::ShimError),
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
}

/// What `fanin check` was asked to do.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub workers: usize,
    /// A running sidecar; None starts one.
    pub target: Option<Target>,
    pub protocol: Protocol,
    /// Export over the sidecar's unix socket (only with the sidecar `check` starts, or with
    /// a `unix:` target endpoint).
    pub unix: bool,
    /// How long to wait for any one thing (an export to show up, a worker to exit).
    pub timeout: Duration,
}

/// A sidecar that is already running.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where the workers export (`http://HOST:PORT`, or `unix:/PATH`).
    pub endpoint: String,
    /// Base URL of its query API (`http://HOST:PORT`).
    pub query: String,
}

/// Runs both rounds, writing the report to `out`. Ok(true) when every verification passed.
pub fn run(options: &CheckOptions, out: &mut dyn Write) -> Result<bool, CheckError> {
    if options.workers < 2 {
        return Err(CheckError::Usage(
            "--workers must be at least 2: a collision needs two workers".to_string(),
        ));
    }
    let (sidecar, endpoint) = match &options.target {
        Some(target) => (Sidecar::remote(&target.query), target.endpoint.clone()),
        None => {
            let exe =
                std::env::current_exe().map_err(|error| CheckError::Sidecar(error.to_string()))?;
            let owned = SidecarProcess::start(&exe, "")?;
            writeln!(
                out,
                "fanin check: started a sidecar (pid {}), query API {}",
                owned.pid(),
                owned.query
            )?;
            let endpoint = owned.endpoint(options.protocol, options.unix);
            (Sidecar::owning(owned), endpoint)
        }
    };
    writeln!(
        out,
        "fanin check: {} workers forked from a single-threaded master, exporting to {endpoint}",
        options.workers
    )?;
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis())
            .unwrap_or_default()
    );
    let round = Round {
        sidecar: &sidecar,
        endpoint: &endpoint,
        protocol: options.protocol,
        workers: options.workers,
        timeout: options.timeout,
    };
    let shim_ok = round.with_shim(&format!("fanin-check-{run_id}-shim"), out)?;
    let naive_ok = round.naive(&format!("fanin-check-{run_id}-naive"), out)?;
    let passed = shim_ok && naive_ok;
    writeln!(out, "result: {}", if passed { "ok" } else { "FAILED" })?;
    Ok(passed)
}

/// One round's fixed inputs.
struct Round<'a> {
    sidecar: &'a Sidecar,
    endpoint: &'a str,
    protocol: Protocol,
    workers: usize,
    timeout: Duration,
}

fn describe_total(total: Option<(f64, u64)>) -> String {
    match total {
        Some((value, instances)) => format!("{value} from {instances} instance(s)"),
        None => "nothing".to_string(),
    }
}

fn report(
    out: &mut dyn Write,
    round: &str,
    problems: &[String],
    success: &str,
) -> std::io::Result<()> {
    if problems.is_empty() {
        writeln!(out, "  {round:<6} ok      {success}")
    } else {
        for problem in problems {
            writeln!(out, "  {round:<6} FAILED  {problem}")?;
        }
        Ok(())
    }
}
