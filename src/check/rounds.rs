//! The two rounds of `fanin check`: workers set up through the shim, then the naive way.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

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

use super::worker::{EXITING, GO, READY, Worker, fork_worker, wait_all};
use super::{CheckError, INFLIGHT, LATENCY, REQUESTS, Round, SCOPE, describe_total, report};
use crate::shim::{self, Shim};

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

/// What `n` workers recorded in all.
fn truth_requests(n: usize) -> u64 {
    (0..n).map(requests_of).sum()
}
fn truth_inflight(n: usize) -> i64 {
    (0..n).map(inflight_of).sum()
}
fn truth_latency(n: usize) -> u64 {
    (0..n).map(|slot| latencies_of(slot).count()).sum::<usize>() as u64
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

    /// Round 1: workers set up through the shim. They record known values and flush; fanin
    /// must show one instance per worker and the truth. Then they exit orderly, and their
    /// last values must arrive.
    pub(super) fn with_shim(&self, service: &str, out: &mut dyn Write) -> Result<bool, CheckError> {
        let shim = self.shim(service)?;
        let (workers, mut problems) = self.fork_shim_workers(&shim)?;
        let ids = self.verify_live(service, &workers, &mut problems)?;
        let n = self.workers;
        report(
            out,
            "shim",
            &problems,
            &format!(
                "{n} instances ({}), {REQUESTS} = {}, {INFLIGHT} = {}, {LATENCY} count = {}, \
                 no collision",
                ids.join(", "),
                truth_requests(n),
                truth_inflight(n),
                truth_latency(n)
            ),
        )?;
        let live_ok = problems.is_empty();
        let (problems, final_truth) = self.verify_exit(service, &workers)?;
        report(
            out,
            "shim",
            &problems,
            &format!("after orderly exit {REQUESTS} = {final_truth}: the final values arrived"),
        )?;
        Ok(live_ok && problems.is_empty())
    }

    /// Forks the shim round's workers: each records its known values, flushes, says READY,
    /// and on GO records one more request, shuts its shim down and says EXITING. Returns the
    /// workers and what went wrong while they got ready.
    fn fork_shim_workers(&self, shim: &Shim) -> Result<(Vec<Worker>, Vec<String>), CheckError> {
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
        let problems = workers
            .iter()
            .filter_map(|worker| worker.expect(READY, deadline).err())
            .collect();
        Ok((workers, problems))
    }

    /// What fanin must show while the shim round's workers live: the truth, one instance per
    /// worker named after its pid, no collision. Returns the instance ids it saw.
    fn verify_live(
        &self,
        service: &str,
        workers: &[Worker],
        problems: &mut Vec<String>,
    ) -> Result<Vec<String>, CheckError> {
        let n = self.workers;
        let matcher = format!("match=service.name={service}");
        let seen = self.sidecar.poll(self.timeout, |sidecar| {
            let total = sidecar.total(REQUESTS, &matcher)?;
            Ok((total == Some((truth_requests(n) as f64, n as u64))).then_some(()))
        })?;
        let requests_seen = self.sidecar.total(REQUESTS, &matcher)?;
        let inflight_seen = self.sidecar.total(INFLIGHT, &matcher)?;
        let latency_seen = self.sidecar.histogram_count(LATENCY, &matcher)?;
        let collisions = self.sidecar.collisions_of(service)?;

        let mut expected_ids: Vec<String> = workers
            .iter()
            .map(|worker| format!("{}-pid-{}", shim::host_name(), worker.pid))
            .collect();
        expected_ids.sort();
        let ids = self.sidecar.instance_ids_of(service)?;
        if seen.is_none() {
            problems.push(format!(
                "{REQUESTS}: expected {} from {n} instances, saw {}",
                truth_requests(n),
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
        if inflight_seen.map(|(value, _)| value) != Some(truth_inflight(n) as f64) {
            problems.push(format!(
                "{INFLIGHT}: expected {}, saw {}",
                truth_inflight(n),
                describe_total(inflight_seen)
            ));
        }
        if latency_seen != Some(truth_latency(n)) {
            problems.push(format!(
                "{LATENCY}: expected {} observations, saw {latency_seen:?}",
                truth_latency(n)
            ));
        }
        if collisions.total() > 0 {
            problems.push(format!(
                "expected no collision, saw {} collisions and {} inherited-state findings: {}",
                collisions.collisions.len(),
                collisions.inherited.len(),
                collisions.describe()
            ));
        }
        Ok(ids)
    }

    /// Lets the shim round's workers exit orderly (one more request each) and waits for
    /// their last values. Returns what went wrong and the final truth.
    fn verify_exit(
        &self,
        service: &str,
        workers: &[Worker],
    ) -> Result<(Vec<String>, u64), CheckError> {
        let deadline = self.timeout;
        let mut problems = Vec::new();
        for worker in workers {
            if let Err(error) = worker.send(GO) {
                problems.push(error);
            }
        }
        for worker in workers {
            if let Err(error) = worker.expect(EXITING, deadline) {
                problems.push(error);
            }
        }
        problems.extend(wait_all(workers, deadline));
        let final_truth = truth_requests(self.workers) + self.workers as u64;
        let matcher = format!("match=service.name={service}");
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
        Ok((problems, final_truth))
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
    pub(super) fn naive(&self, service: &str, out: &mut dyn Write) -> Result<bool, CheckError> {
        let refused_before = self.sidecar.pid_mismatches()?;
        let mut problems = self.run_naive_workers(service)?;
        let detail = self.naive_finding(service, refused_before, &mut problems)?;
        report(out, "naive", &problems, &detail)?;
        Ok(problems.is_empty())
    }

    /// Builds one provider in the master and forks workers that record into it and export
    /// what they inherited, one after the other. Returns what went wrong.
    fn run_naive_workers(&self, service: &str) -> Result<Vec<String>, CheckError> {
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
        Ok(problems)
    }

    /// What fanin found of the naive round's collision, for the report; a collision not
    /// found, or a total neither exact nor noted, goes into `problems`. Over the unix socket
    /// the workers' points are refused instead (`pid_mismatch`: they carry the master's
    /// `process.pid`), which `refused_before` tells from refusals before the round.
    fn naive_finding(
        &self,
        service: &str,
        refused_before: u64,
        problems: &mut Vec<String>,
    ) -> Result<String, CheckError> {
        let truth = truth_requests(self.workers);
        let last_write = requests_of(0);
        let over_unix = self.endpoint.starts_with("unix:");
        let found = self.sidecar.poll(self.timeout, |sidecar| {
            let collisions = sidecar.collisions_of(service)?;
            if !collisions.collisions.is_empty() {
                return Ok(Some(NaiveFound::Collision(collisions)));
            }
            if !over_unix {
                return Ok(None);
            }
            let refused = sidecar.pid_mismatches()?.saturating_sub(refused_before);
            Ok((refused > 0).then_some(NaiveFound::Refused(refused)))
        })?;
        if let Some(NaiveFound::Refused(refused)) = found {
            // One point a worker; more would be another client's, fewer a worker's stored.
            if refused != self.workers as u64 {
                problems.push(format!(
                    "fanin refused {refused} point(s) for another process.pid during the \
                     round, where {} workers exported one each",
                    self.workers
                ));
            }
            let stored = self
                .sidecar
                .total(REQUESTS, &format!("match=service.name={service}"))?;
            if let Some((value, _)) = stored {
                problems.push(format!(
                    "the workers' points were refused, yet {REQUESTS} = {value} is stored"
                ));
            }
            return Ok(format!(
                "provider built before fork: {} workers exported the master's process.pid \
                 over the unix socket; fanin refused their {refused} point(s) (pid_mismatch), \
                 so none of them wrote under the master's identity (the truth was {truth}); \
                 the fix: build the provider in each worker after fork, as the shim does",
                self.workers
            ));
        }
        let Some(NaiveFound::Collision(found)) = found else {
            problems.push(format!(
                "{} workers shared one resource and start time, but fanin listed no collision",
                self.workers
            ));
            return Ok(String::new());
        };
        let instances = self.sidecar.instances_of(service)?.len();
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
        let shown = self.naive_total(service, repaired, truth, problems)?;
        let effect = if repaired {
            format!("fanin told the writers apart and shows {shown}, the truth")
        } else {
            format!(
                "fanin cannot tell them apart and its answers say the total it shows \
                 ({shown}) is unreliable"
            )
        };
        Ok(format!(
            "provider built before fork: {} workers wrote as {instances} instance(s); \
             collision caught on {REQUESTS} (evidence: {}; writers: {}); a \
             last-write-wins backend would show {last_write}, the truth is {truth}; {effect}",
            self.workers,
            listed("evidence").join(", "),
            listed("writers").join(", ")
        ))
    }
}

/// What fanin made of the naive round: a collision, or (over the unix socket) refusals of
/// the workers' points for carrying the master's `process.pid`.
enum NaiveFound {
    Collision(super::Findings),
    Refused(u64),
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
