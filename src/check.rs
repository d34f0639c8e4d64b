//! `fanin check`: fork workers the way a pre-fork server does and prove what fanin saw.
//!
//! Two rounds against one sidecar (its own, started from this binary on free loopback ports,
//! or a running one given with `--target`):
//!
//! 1. **shim**: N workers forked from a single-threaded master, each with the [`Shim`],
//!    record known values and flush. fanin must show N instances, each named after its
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
//! The fork plumbing ([`fork_worker`], [`Worker`], [`WorkerLink`]) and the query client
//! ([`Sidecar`]) are public for the fork tests in `tests/fork.rs`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use serde_json::Value;

use crate::shim::{self, Protocol, Shim};
use crate::sys::{self, Forked};

/// Scope and metric names the check records under.
const SCOPE: &str = "fanin-check";
const REQUESTS: &str = "fanin.check.requests";
const INFLIGHT: &str = "fanin.check.inflight";
const LATENCY: &str = "fanin.check.latency";

/// Bytes a worker sends its master, and the master its workers.
const READY: u8 = b'r';
const GO: u8 = b'g';
const EXITING: u8 = b'x';

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
                owned.child.id(),
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

/// The values worker `slot` records, so that the truth is known in advance.
fn requests_of(slot: usize) -> u64 {
    10 * (slot as u64 + 1)
}
fn inflight_of(slot: usize) -> i64 {
    slot as i64 + 1
}
fn latencies_of(slot: usize) -> impl Iterator<Item = f64> {
    (0..=slot).map(|k| 0.005 * (k as f64 + 1.0))
}

impl Round<'_> {
    fn shim(&self, service: &str) -> Result<Shim, CheckError> {
        let builder = Shim::builder()
            .service_name(service)
            .endpoint(self.endpoint)
            // The check flushes explicitly; no periodic export should race it.
            .export_interval(Duration::from_secs(3600))
            .timeout(self.timeout);
        let builder = if self.endpoint.starts_with("unix:") {
            builder
        } else {
            builder.protocol(self.protocol)
        };
        Ok(builder.build()?)
    }

    /// Round 1: workers set up through the shim.
    fn with_shim(&self, service: &str, out: &mut dyn Write) -> Result<bool, CheckError> {
        let shim = self.shim(service)?;
        let requests = shim.instrument(SCOPE, |meter| meter.u64_counter(REQUESTS).build());
        let inflight = shim.instrument(SCOPE, |meter| meter.i64_up_down_counter(INFLIGHT).build());
        let latency = shim.instrument(SCOPE, |meter| meter.f64_histogram(LATENCY).build());
        let route = [KeyValue::new("route", "/check")];
        let deadline = self.timeout;

        let mut workers = Vec::new();
        for slot in 0..self.workers {
            let worker = fork_worker(|link| {
                for _ in 0..requests_of(slot) {
                    requests.get().add(1, &route);
                }
                inflight.get().add(inflight_of(slot), &[]);
                for value in latencies_of(slot) {
                    latency.get().record(value, &route);
                }
                shim.force_flush().map_err(|error| error.to_string())?;
                link.send(READY)?;
                link.receive(deadline * 4)?;
                requests.get().add(1, &route);
                // The worker's last values, as gunicorn's worker_exit hook would flush them.
                shim.shutdown().map_err(|error| error.to_string())?;
                link.send(EXITING)?;
                Ok(())
            })?;
            workers.push(worker);
        }
        let pids: Vec<Pid> = workers.iter().map(|worker| worker.pid).collect();
        let mut problems = Vec::new();
        for worker in &workers {
            if let Err(error) = worker.expect(READY, deadline) {
                problems.push(error);
            }
        }

        let n = self.workers;
        let truth_requests: u64 = (0..n).map(requests_of).sum();
        let truth_inflight: i64 = (0..n).map(inflight_of).sum();
        let truth_latency = (0..n).map(|slot| latencies_of(slot).count()).sum::<usize>() as u64;
        let matcher = format!("match=service.name={service}");
        let seen = self.sidecar.poll(deadline, |sidecar| {
            let total = sidecar.total(REQUESTS, &matcher)?;
            Ok((total == Some((truth_requests as f64, n as u64))).then_some(()))
        })?;
        let requests_seen = self.sidecar.total(REQUESTS, &matcher)?;
        let inflight_seen = self.sidecar.total(INFLIGHT, &matcher)?;
        let latency_seen = self.sidecar.histogram_count(LATENCY, &matcher)?;
        let instances = self.sidecar.instances_of(service)?;
        let collisions = self.sidecar.collisions_of(service)?;

        let mut expected_ids: Vec<String> = pids
            .iter()
            .map(|pid| format!("{}-pid-{pid}", shim::host_name()))
            .collect();
        expected_ids.sort();
        let mut ids: Vec<String> = instances
            .iter()
            .filter_map(|instance| instance["attributes"]["service.instance.id"].as_str())
            .map(str::to_string)
            .collect();
        ids.sort();
        if seen.is_none() {
            problems.push(format!(
                "{REQUESTS}: expected {truth_requests} from {n} instances, saw {}",
                describe_total(requests_seen)
            ));
        }
        if ids != expected_ids {
            problems.push(format!(
                "instances: expected one per worker ({}), saw {} ({})",
                expected_ids.join(", "),
                ids.len(),
                ids.join(", ")
            ));
        }
        if inflight_seen.map(|(value, _)| value) != Some(truth_inflight as f64) {
            problems.push(format!(
                "{INFLIGHT}: expected {truth_inflight}, saw {}",
                describe_total(inflight_seen)
            ));
        }
        if latency_seen != Some(truth_latency) {
            problems.push(format!(
                "{LATENCY}: expected {truth_latency} observations, saw {latency_seen:?}"
            ));
        }
        if collisions.total() > 0 {
            problems.push(format!(
                "expected no collision, saw {} collisions and {} inherited-state findings",
                collisions.collisions.len(),
                collisions.inherited.len()
            ));
        }
        report(
            out,
            "shim",
            &problems,
            &format!(
                "{n} instances ({}), {REQUESTS} = {truth_requests}, {INFLIGHT} = \
                 {truth_inflight}, {LATENCY} count = {truth_latency}, no collision",
                ids.join(", ")
            ),
        )?;
        let live_ok = problems.is_empty();

        // Orderly exit: each worker adds one more request and shuts its shim down.
        let mut problems = Vec::new();
        for worker in &workers {
            if let Err(error) = worker.send(GO) {
                problems.push(error);
            }
        }
        for worker in &workers {
            if let Err(error) = worker.expect(EXITING, deadline) {
                problems.push(error);
            }
        }
        problems.extend(wait_all(&workers, deadline));
        let final_truth = truth_requests + n as u64;
        let arrived = self.sidecar.poll(deadline, |sidecar| {
            let total = sidecar.total(REQUESTS, &matcher)?;
            Ok((total.map(|(value, _)| value) == Some(final_truth as f64)).then_some(()))
        })?;
        if arrived.is_none() {
            problems.push(format!(
                "{REQUESTS} after exit: expected {final_truth}, saw {}",
                describe_total(self.sidecar.total(REQUESTS, &matcher)?)
            ));
        }
        report(
            out,
            "shim",
            &problems,
            &format!("after orderly exit {REQUESTS} = {final_truth}: the final values arrived"),
        )?;
        Ok(live_ok && problems.is_empty())
    }

    /// The naive round's total of [`REQUESTS`]: it must be the truth when the collision is
    /// repaired, and carry an "unreliable total" note when it is not.
    fn naive_total(
        &self,
        service: &str,
        repaired: bool,
        truth: u64,
        problems: &mut Vec<String>,
    ) -> Result<String, CheckError> {
        let matcher = format!("match=service.name={service}");
        let shown = self
            .sidecar
            .total(REQUESTS, &matcher)?
            .map_or_else(|| "nothing".to_string(), |(value, _)| value.to_string());
        if repaired {
            if shown != truth.to_string() {
                problems.push(format!(
                    "the collision is listed as repaired, but {REQUESTS} = {shown}, not {truth}"
                ));
            }
        } else {
            let answer = self
                .sidecar
                .get(&format!("/api/v1/query?metric={REQUESTS}&{matcher}"))?
                .unwrap_or_default();
            let noted = answer["notes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|note| note.starts_with("unreliable total"));
            if !noted {
                problems.push(format!(
                    "{REQUESTS} = {shown} from writers fanin cannot tell apart, with no note"
                ));
            }
        }
        Ok(shown)
    }

    /// Round 2: one provider built in the master before fork, inherited by every worker.
    fn naive(&self, service: &str, out: &mut dyn Write) -> Result<bool, CheckError> {
        let reader = SharedReader(Arc::new(ManualReader::default()));
        // The master's identity, which every worker inherits.
        let resource = Resource::builder()
            .with_service_name(service.to_string())
            .with_attributes(shim::identity())
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .with_resource(resource)
            .build();
        let requests = provider.meter(SCOPE).u64_counter(REQUESTS).build();
        let route = [KeyValue::new("route", "/check")];
        let deadline = self.timeout;
        let target = self.shim(service)?;

        let mut workers = Vec::new();
        for slot in 0..self.workers {
            let worker = fork_worker(|link| {
                requests.add(requests_of(slot), &route);
                link.send(READY)?;
                link.receive(deadline * 4)?;
                // The SDK "restarts its export thread" after fork (as Python's does): a new
                // exporter in this process, exporting what the inherited reader holds.
                let mut metrics = ResourceMetrics::default();
                reader
                    .collect(&mut metrics)
                    .map_err(|error| format!("collect: {error}"))?;
                target
                    .export_once(&metrics)
                    .map_err(|error| error.to_string())?;
                link.send(EXITING)?;
                Ok(())
            })?;
            workers.push(worker);
        }
        let mut problems = Vec::new();
        for worker in &workers {
            if let Err(error) = worker.expect(READY, deadline) {
                problems.push(error);
            }
        }
        // Largest count first, one worker at a time: what the backend sees is then certain
        // to go down, whatever order the kernel would have picked.
        for worker in workers.iter().rev() {
            if let Err(error) = worker
                .send(GO)
                .and_then(|()| worker.expect(EXITING, deadline))
            {
                problems.push(error);
            }
        }
        problems.extend(wait_all(&workers, deadline));
        // The master never exports: its provider's state is what every worker inherited.
        drop(provider);

        let truth: u64 = (0..self.workers).map(requests_of).sum();
        let last_write = requests_of(0);
        let found = self.sidecar.poll(deadline, |sidecar| {
            let collisions = sidecar.collisions_of(service)?;
            Ok((!collisions.collisions.is_empty()).then_some(collisions))
        })?;
        let instances = self.sidecar.instances_of(service)?.len();
        let mut detail = String::new();
        match &found {
            Some(found) => {
                let listed = |field: &str| -> Vec<String> {
                    let mut items: Vec<String> = found
                        .collisions
                        .iter()
                        .flat_map(|collision| collision[field].as_array().into_iter().flatten())
                        .filter_map(|item| item["kind"].as_str().or(item.as_str()))
                        .map(str::to_string)
                        .collect();
                    items.sort();
                    items.dedup();
                    items
                };
                let repaired = found
                    .collisions
                    .iter()
                    .all(|collision| collision["repaired"] == Value::Bool(true));
                let shown = self.naive_total(service, repaired, truth, &mut problems)?;
                let effect = if repaired {
                    format!("fanin told the writers apart and shows {shown}, the truth")
                } else {
                    format!(
                        "fanin cannot tell them apart and its answers say the total it shows \
                         ({shown}) is unreliable"
                    )
                };
                detail = format!(
                    "provider built before fork: {} workers wrote as {instances} instance(s); \
                     collision caught on {REQUESTS} (evidence: {}; writers: {}); a \
                     last-write-wins backend would show {last_write}, the truth is {truth}; \
                     {effect}",
                    self.workers,
                    listed("evidence").join(", "),
                    listed("writers").join(", ")
                );
            }
            None => problems.push(format!(
                "{} workers shared one resource and start time, but fanin listed no collision",
                self.workers
            )),
        }
        report(out, "naive", &problems, &detail)?;
        Ok(problems.is_empty())
    }
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

/// A [`ManualReader`] the master keeps a handle to, so a forked worker can collect from the
/// provider it inherited.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

// ---------------------------------------------------------------------------------------
// Forked workers

/// The master's handle on a forked worker: its pid and two pipes.
#[derive(Debug)]
pub struct Worker {
    pub pid: Pid,
    to_worker: OwnedFd,
    from_worker: OwnedFd,
}

/// The worker's side of the pipes.
#[derive(Debug)]
pub struct WorkerLink {
    from_master: OwnedFd,
    to_master: OwnedFd,
}

/// Forks a worker that runs `body` and exits: 0 when it returns Ok, 1 (after printing the
/// error to stderr) when it fails, 101 when it panics. Refuses to fork from a
/// multi-threaded process.
pub fn fork_worker<F>(body: F) -> Result<Worker, CheckError>
where
    F: FnOnce(&WorkerLink) -> Result<(), String>,
{
    match sys::thread_count() {
        Some(1) | None => {}
        Some(threads) => {
            return Err(CheckError::Fork(format!(
                "the master has {threads} threads; forking is only safe from one"
            )));
        }
    }
    let (from_master, to_worker) = nix::unistd::pipe().map_err(fork_error)?;
    let (from_worker, to_master) = nix::unistd::pipe().map_err(fork_error)?;
    match sys::fork_process().map_err(fork_error)? {
        Forked::Parent(pid) => {
            drop((from_master, to_master));
            Ok(Worker {
                pid,
                to_worker,
                from_worker,
            })
        }
        Forked::Child => {
            drop((to_worker, from_worker));
            let link = WorkerLink {
                from_master,
                to_master,
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&link)));
            let code = match outcome {
                Ok(Ok(())) => 0,
                Ok(Err(error)) => {
                    eprintln!("fanin check: worker {}: {error}", std::process::id());
                    1
                }
                Err(_) => 101,
            };
            std::process::exit(code)
        }
    }
}

fn fork_error(error: nix::Error) -> CheckError {
    CheckError::Fork(error.to_string())
}

/// Writes one byte.
fn send_byte(fd: &OwnedFd, byte: u8) -> Result<(), String> {
    match nix::unistd::write(fd, &[byte]) {
        Ok(1) => Ok(()),
        Ok(_) => Err("short write to the pipe".to_string()),
        Err(error) => Err(format!("write to the pipe: {error}")),
    }
}

/// Reads one byte, waiting at most `timeout`.
fn receive_byte(fd: &OwnedFd, timeout: Duration) -> Result<u8, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("nothing on the pipe after {timeout:?}"));
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, wait) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(error) => return Err(format!("poll: {error}")),
        }
        let mut byte = [0u8; 1];
        return match nix::unistd::read(fd, &mut byte) {
            Ok(1) => Ok(byte[0]),
            Ok(_) => Err("the other side closed the pipe".to_string()),
            Err(error) => Err(format!("read from the pipe: {error}")),
        };
    }
}

impl WorkerLink {
    /// Tells the master something.
    pub fn send(&self, byte: u8) -> Result<(), String> {
        send_byte(&self.to_master, byte)
    }

    /// Waits for the master's next byte.
    pub fn receive(&self, timeout: Duration) -> Result<u8, String> {
        receive_byte(&self.from_master, timeout)
    }
}

impl Worker {
    /// Sends the worker a byte.
    pub fn send(&self, byte: u8) -> Result<(), String> {
        send_byte(&self.to_worker, byte).map_err(|error| format!("worker {}: {error}", self.pid))
    }

    /// Waits for `expected` from the worker.
    pub fn expect(&self, expected: u8, timeout: Duration) -> Result<(), String> {
        match receive_byte(&self.from_worker, timeout) {
            Ok(byte) if byte == expected => Ok(()),
            Ok(byte) => Err(format!(
                "worker {}: expected {:?}, got {:?}",
                self.pid, expected as char, byte as char
            )),
            Err(error) => Err(format!("worker {}: {error}", self.pid)),
        }
    }

    /// Sends the worker a signal.
    pub fn kill(&self, signal: Signal) -> Result<(), String> {
        nix::sys::signal::kill(self.pid, signal)
            .map_err(|error| format!("kill {}: {error}", self.pid))
    }

    /// Waits (polling, up to `timeout`) for the worker to end, and returns how it ended.
    pub fn wait(&self, timeout: Duration) -> Result<WaitStatus, String> {
        wait_for(self.pid, timeout)
    }
}

/// Waits (polling, up to `timeout`) for child `pid` to end, and returns how it ended; a
/// child still running at the deadline is left running.
pub fn wait_for(pid: Pid, timeout: Duration) -> Result<WaitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(WaitStatus::StillAlive) => {
                return Err(format!("process {pid} still running after {timeout:?}"));
            }
            Ok(status) => return Ok(status),
            Err(nix::Error::EINTR) => {}
            Err(error) => return Err(format!("waitpid {pid}: {error}")),
        }
    }
}

/// Waits for every worker; one message per worker that did not exit with status 0.
fn wait_all(workers: &[Worker], timeout: Duration) -> Vec<String> {
    workers
        .iter()
        .filter_map(|worker| match worker.wait(timeout) {
            Ok(WaitStatus::Exited(_, 0)) => None,
            Ok(status) => Some(format!("worker {} ended with {status:?}", worker.pid)),
            Err(error) => {
                let _ = worker.kill(Signal::SIGKILL);
                let _ = worker.wait(timeout);
                Some(error)
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The sidecar and its query API

/// A sidecar's query API, over blocking HTTP that spawns no thread (so the master stays
/// forkable).
pub struct Sidecar {
    base: String,
    agent: ureq::Agent,
    /// The sidecar `fanin check` started, stopped when this is dropped.
    owned: Option<SidecarProcess>,
}

/// The collisions and inherited-state findings of one service.
#[derive(Debug, Default)]
pub struct Findings {
    pub collisions: Vec<Value>,
    pub inherited: Vec<Value>,
}

impl Findings {
    pub fn total(&self) -> usize {
        self.collisions.len() + self.inherited.len()
    }
}

impl Sidecar {
    /// The query API at `base` (`http://HOST:PORT`).
    pub fn remote(base: &str) -> Sidecar {
        // Timeouts per phase, never a global one: ureq resolves on a helper thread when the
        // resolve step has a deadline.
        let timeout = Some(Duration::from_secs(10));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(timeout)
            .timeout_send_request(timeout)
            .timeout_recv_response(timeout)
            .timeout_recv_body(timeout)
            .build()
            .into();
        Sidecar {
            base: base.trim_end_matches('/').to_string(),
            agent,
            owned: None,
        }
    }

    /// The query API of a sidecar this value now owns.
    pub fn owning(process: SidecarProcess) -> Sidecar {
        let mut sidecar = Sidecar::remote(&process.query);
        sidecar.owned = Some(process);
        sidecar
    }

    /// GET `path` (with its query string); the JSON body of a 200, None for a 404.
    pub fn get(&self, path: &str) -> Result<Option<Value>, CheckError> {
        let url = format!("{}{path}", self.base);
        let failed = |reason: String| CheckError::Query {
            url: url.clone(),
            reason,
        };
        let mut response = self
            .agent
            .get(&url)
            .call()
            .map_err(|error| failed(error.to_string()))?;
        let status = response.status().as_u16();
        let body: Value = response
            .body_mut()
            .read_json()
            .map_err(|error| failed(format!("status {status}, body: {error}")))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(failed(format!("status {status}: {body}"))),
        }
    }

    /// Calls `probe` until it returns Some, or `timeout` passes (then Ok(None)).
    pub fn poll<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&Sidecar) -> Result<Option<T>, CheckError>,
    ) -> Result<Option<T>, CheckError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe(self)? {
                return Ok(Some(found));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The summed value of `metric` under `matcher` (`match=k=v`) and how many instances it
    /// came from; None when fanin has no such metric or series.
    pub fn total(&self, metric: &str, matcher: &str) -> Result<Option<(f64, u64)>, CheckError> {
        let answer = self.get(&format!("/api/v1/query?metric={metric}&agg=sum&{matcher}"))?;
        Ok(answer.and_then(|answer| {
            let series = answer["series"].get(0)?;
            Some((series["value"].as_f64()?, series["instances"].as_u64()?))
        }))
    }

    /// The observation count of histogram `metric` under `matcher`.
    pub fn histogram_count(&self, metric: &str, matcher: &str) -> Result<Option<u64>, CheckError> {
        let answer = self.get(&format!("/api/v1/query?metric={metric}&{matcher}"))?;
        Ok(answer.and_then(|answer| answer["series"].get(0)?["histogram"]["count"].as_u64()))
    }

    /// Instances (live and retired) whose `service.name` is `service`.
    pub fn instances_of(&self, service: &str) -> Result<Vec<Value>, CheckError> {
        let answer = self.get("/api/v1/instances")?.unwrap_or_default();
        Ok(answer["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|instance| instance["attributes"]["service.name"] == service)
            .cloned()
            .collect())
    }

    /// Collisions and inherited-state findings on instances of `service`.
    pub fn collisions_of(&self, service: &str) -> Result<Findings, CheckError> {
        let answer = self.get("/api/v1/collisions")?.unwrap_or_default();
        let of_service = |list: &Value, instance_key: &str| -> Vec<Value> {
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|finding| {
                    let instance = &finding[instance_key];
                    match instance.as_array() {
                        Some(instances) => instances
                            .iter()
                            .any(|instance| instance["service.name"] == service),
                        None => instance["service.name"] == service,
                    }
                })
                .cloned()
                .collect()
        };
        Ok(Findings {
            collisions: of_service(&answer["collisions"], "instance"),
            inherited: of_service(&answer["inherited_state"], "instances"),
        })
    }
}

/// A `fanin serve` child process on free loopback ports, with a unix socket in a temp dir:
/// the master starts its sidecar this way so that it stays single-threaded. Stopped with
/// SIGTERM when dropped.
pub struct SidecarProcess {
    child: Child,
    dir: PathBuf,
    /// `http://` URLs of the OTLP/gRPC and OTLP/HTTP listeners.
    pub grpc: String,
    pub http: String,
    pub unix: PathBuf,
    /// Base URL of the query API.
    pub query: String,
}

/// Sidecars started by this process, to give each its own directory.
static SIDECARS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl SidecarProcess {
    /// Runs `exe serve` (`exe` being the fanin binary) with the listeners on port 0 and
    /// `extra_yaml` (top-level config sections other than `receivers` and `query`) added
    /// to its config; returns once it printed every listener.
    pub fn start(exe: &std::path::Path, extra_yaml: &str) -> Result<SidecarProcess, CheckError> {
        let failed = |reason: String| CheckError::Sidecar(reason);
        let dir = std::env::temp_dir().join(format!(
            "fanin-check-{}-{}",
            std::process::id(),
            SIDECARS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|error| failed(format!("{}: {error}", dir.display())))?;
        let socket = dir.join("fanin.sock");
        let config = dir.join("config.yaml");
        let yaml = format!(
            "receivers:\n  otlp:\n    grpc: {{listen: \"127.0.0.1:0\"}}\n    http: {{listen: \
             \"127.0.0.1:0\"}}\n    unix: {{path: {}}}\nquery: {{listen: \"127.0.0.1:0\"}}\n{extra_yaml}\n",
            serde_json::to_string(&socket.display().to_string()).unwrap_or_default()
        );
        std::fs::write(&config, yaml)
            .map_err(|error| failed(format!("{}: {error}", config.display())))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| failed(error.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("no stdout".to_string()))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut grpc, mut http, mut query, mut unix) = (None, None, None, None);
        while grpc.is_none() || http.is_none() || query.is_none() || unix.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed("it exited before listening".to_string()));
            };
            let Some((name, address)) = line.split_once(" listening on ") else {
                continue;
            };
            let slot = match name {
                "otlp-grpc" => &mut grpc,
                "otlp-http" => &mut http,
                "query" => &mut query,
                "otlp-unix" => &mut unix,
                _ => continue,
            };
            *slot = Some(address.to_string());
        }
        let (Some(grpc), Some(http), Some(query), Some(unix)) = (grpc, http, query, unix) else {
            return Err(failed("incomplete listener lines".to_string()));
        };
        Ok(SidecarProcess {
            child,
            dir,
            grpc: format!("http://{grpc}"),
            http: format!("http://{http}"),
            unix: PathBuf::from(unix),
            query: format!("http://{query}"),
        })
    }

    /// The endpoint a worker exports to.
    pub fn endpoint(&self, protocol: Protocol, unix: bool) -> String {
        match (unix, protocol) {
            (true, _) => format!("unix:{}", self.unix.display()),
            (false, Protocol::Grpc) => self.grpc.clone(),
            (false, Protocol::HttpProtobuf) => self.http.clone(),
        }
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
