//! Real forked workers against a real `fanin serve`.
//!
//! This target has no test harness (`harness = false` in Cargo.toml): libtest runs tests on
//! threads, and forking from a multi-threaded process is what pre-fork servers avoid. `main`
//! runs each scenario in turn from a single thread, prints libtest-style lines, and exits 1
//! if any failed. The sidecar is a child process; queries use a client that spawns no
//! thread, so the master stays forkable between scenarios (fork_worker checks).

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::ExitCode;
use std::time::Duration;

use fanin::check::{GO, READY, Sidecar, SidecarProcess, Worker, fork_worker};
use fanin::shim::{Protocol, Shim};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use opentelemetry::KeyValue;
use serde_json::Value;

const FANIN: &str = env!("CARGO_BIN_EXE_fanin");
const WAIT: Duration = Duration::from_secs(30);

type Outcome = Result<(), String>;
type Scenario = (&'static str, fn() -> Outcome);

fn main() -> ExitCode {
    let scenarios: [Scenario; 6] = [
        (
            "totals_stay_exact_through_a_fanin_crash",
            totals_stay_exact_through_a_fanin_crash,
        ),
        (
            "totals_stay_exact_through_a_graceful_fanin_restart",
            totals_stay_exact_through_a_graceful_fanin_restart,
        ),
        (
            "a_killed_worker_is_retired_and_its_counts_stay",
            a_killed_worker_is_retired_and_its_counts_stay,
        ),
        (
            "two_processes_on_the_unix_socket_collide_naming_both_pids",
            two_processes_on_the_unix_socket_collide_naming_both_pids,
        ),
        (
            "dropping_the_shim_flushes_a_workers_last_values",
            dropping_the_shim_flushes_a_workers_last_values,
        ),
        // Last: its master starts a pipeline (threads) before forking, as gunicorn's master
        // does when the app records before fork.
        (
            "a_child_abandons_the_inherited_pipeline_and_builds_its_own",
            a_child_abandons_the_inherited_pipeline_and_builds_its_own,
        ),
    ];
    println!("\nrunning {} tests", scenarios.len());
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        match scenario() {
            Ok(()) => println!("test {name} ... ok"),
            Err(error) => {
                println!("test {name} ... FAILED\n    {error}");
                failed.push(name);
            }
        }
    }
    let passed = scenarios.len() - failed.len();
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out\n",
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sidecar(extra_yaml: &str) -> Result<(Sidecar, String, String), String> {
    let process = SidecarProcess::start(FANIN.as_ref(), extra_yaml).map_err(|e| e.to_string())?;
    let grpc = process.endpoint(Protocol::Grpc, false);
    let unix = process.endpoint(Protocol::Grpc, true);
    Ok((Sidecar::owning(process), grpc, unix))
}

fn shim(service: &str, endpoint: &str) -> Result<Shim, String> {
    Shim::builder()
        .service_name(service)
        .endpoint(endpoint)
        .export_interval(Duration::from_secs(3600))
        .build()
        .map_err(|error| error.to_string())
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Outcome {
    if condition { Ok(()) } else { Err(what()) }
}

/// Polls `metric`'s sum over `service` until it is `want`, or fails with what was seen.
fn wait_total(sidecar: &Sidecar, metric: &str, service: &str, want: f64) -> Outcome {
    let matcher = format!("match=service.name={service}");
    let reached = sidecar
        .poll(WAIT, |sidecar| {
            let total = sidecar.total(metric, &matcher)?;
            Ok((total.map(|(value, _)| value) == Some(want)).then_some(()))
        })
        .map_err(|error| error.to_string())?;
    let seen = sidecar.total(metric, &matcher).map_err(|e| e.to_string())?;
    ensure(reached.is_some(), || {
        format!("{metric} of {service}: expected {want}, saw {seen:?}")
    })
}

fn reap(worker: &Worker) -> Outcome {
    match worker.wait(WAIT)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        status => Err(format!("worker {} ended with {status:?}", worker.pid)),
    }
}

/// A worker SIGKILLed mid-run: fanin retires it at once (its pid is gone), keeps its counter
/// contribution, and drops its up-down counter share from the live total.
fn a_killed_worker_is_retired_and_its_counts_stay() -> Outcome {
    let (sidecar, grpc, _) = sidecar("")?;
    let service = "fork-killed";
    let shim = shim(service, &grpc)?;
    let jobs = shim.instrument("fork-test", |meter| meter.u64_counter("jobs").build());
    let busy = shim.instrument("fork-test", |meter| {
        meter.i64_up_down_counter("busy").build()
    });
    let mut workers = Vec::new();
    for (done, in_progress) in [(7, 5), (3, 2)] {
        workers.push(
            fork_worker(|link| {
                jobs.get().add(done, &[]);
                busy.get().add(in_progress, &[]);
                shim.force_flush().map_err(|error| error.to_string())?;
                link.send(READY)?;
                link.receive(WAIT * 4)?;
                shim.shutdown().map_err(|error| error.to_string())
            })
            .map_err(|error| error.to_string())?,
        );
    }
    for worker in &workers {
        worker.expect(READY, WAIT)?;
    }
    wait_total(&sidecar, "jobs", service, 10.0)?;
    wait_total(&sidecar, "busy", service, 7.0)?;

    let killed = &workers[0];
    killed.kill(Signal::SIGKILL)?;
    // Reaped, so that its pid is really gone (a zombie still answers signal 0).
    let status = killed.wait(WAIT)?;
    ensure(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
        || format!("expected death by SIGKILL, got {status:?}"),
    )?;
    let killed_id = format!("pid-{}", killed.pid);
    let retired = sidecar
        .poll(WAIT, |sidecar| {
            let instances = sidecar.instances_of(service)?;
            Ok(instances
                .iter()
                .find(|instance| {
                    instance["attributes"]["service.instance.id"]
                        .as_str()
                        .is_some_and(|id| id.ends_with(&killed_id))
                })
                .filter(|instance| instance["live"] == Value::Bool(false))
                .cloned())
        })
        .map_err(|error| error.to_string())?;
    ensure(retired.is_some(), || {
        format!("the killed worker {} was never retired", killed.pid)
    })?;
    wait_total(&sidecar, "jobs", service, 10.0)?;
    wait_total(&sidecar, "busy", service, 2.0)?;

    workers[1].send(GO)?;
    reap(&workers[1])
}

/// Two processes exporting one stream (same resource and start time) over the unix socket:
/// the kernel names both peers, the collision lists both pids, and their runs add up.
fn two_processes_on_the_unix_socket_collide_naming_both_pids() -> Outcome {
    let (sidecar, _, unix) = sidecar("")?;
    let socket = unix.trim_start_matches("unix:").to_string();
    let mut workers = Vec::new();
    for (time, value) in [(110, 40), (120, 25)] {
        let socket = socket.clone();
        workers.push(
            fork_worker(move |link| {
                link.receive(WAIT * 4)?;
                // Both claim to be instance "shared", with one start time: the naive setup.
                let request = common::export("shared").counter("requests", 100, time, value);
                export_over_unix(&socket, request.build())?;
                link.send(READY)
            })
            .map_err(|error| error.to_string())?,
        );
    }
    // One after the other, so that the second export is certain to follow the first.
    for worker in &workers {
        worker.send(GO)?;
        worker.expect(READY, WAIT)?;
    }
    for worker in &workers {
        reap(worker)?;
    }
    let found = sidecar
        .poll(WAIT, |sidecar| {
            let findings = sidecar.collisions_of("app")?;
            Ok(findings.collisions.first().cloned())
        })
        .map_err(|error| error.to_string())?
        .ok_or("no collision listed")?;
    let writers: Vec<&str> = found["writers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for worker in &workers {
        let expected = format!("pid {} (unix)", worker.pid);
        ensure(writers.contains(&expected.as_str()), || {
            format!("writers {writers:?} lack {expected}")
        })?;
    }
    let kinds = found["evidence"].to_string();
    ensure(kinds.contains("different_processes"), || {
        format!("evidence {kinds}")
    })?;
    // The pids tell the writers apart: one run each, and the total is exact.
    ensure(found["repaired"] == Value::Bool(true), || {
        format!("not repaired: {found}")
    })?;
    let total = sidecar
        .total("requests", "match=service.name=app")
        .map_err(|error| error.to_string())?;
    ensure(total.map(|(value, _)| value) == Some(65.0), || {
        format!("requests = {total:?}, want 40 + 25")
    })
}

/// A worker's command: count one more round (jobs and latencies) and flush.
const ROUND: u8 = b'+';
/// A worker's command: flush what it has (fanin may be down: a failed flush is fine).
const FLUSH: u8 = b'f';

/// The same jobs in each round of every worker: `JOBS` on the counter and `LATENCIES`
/// values on the histogram.
const JOBS: u64 = 5;
const LATENCIES: [f64; 3] = [0.05, 0.2, 3.0];

fn totals_stay_exact_through_a_fanin_crash() -> Outcome {
    restart_keeps_totals(Signal::SIGKILL)
}

fn totals_stay_exact_through_a_graceful_fanin_restart() -> Outcome {
    restart_keeps_totals(Signal::SIGTERM)
}

/// Sends `command` to each of `which` in turn and waits for its answer.
fn tell(workers: &[Worker], which: &[usize], command: u8) -> Outcome {
    for index in which {
        workers[*index].send(command)?;
        workers[*index].expect(READY, WAIT)?;
    }
    Ok(())
}

/// Three forked workers (two over OTLP/gRPC on TCP, one over the unix socket) count rounds
/// through the shim; fanin keeps a snapshot, is stopped by `signal` mid-run and started
/// again on the same ports. While it is down one worker counts another round (its export
/// fails; the SDK keeps it) and one is SIGKILLed. After the live workers' next exports the
/// totals are exactly what they counted, the dead one's included, and the dead one is
/// retired at once.
fn restart_keeps_totals(signal: Signal) -> Outcome {
    let storage = std::env::temp_dir().join(format!(
        "fanin-fork-storage-{}-{}",
        std::process::id(),
        signal as i32
    ));
    let _ = std::fs::remove_dir_all(&storage);
    let yaml = format!(
        "storage: {{path: {}, interval: 100ms}}",
        serde_json::to_string(&storage.display().to_string()).map_err(|e| e.to_string())?
    );
    let (mut sidecar, grpc, unix) = sidecar(&yaml)?;
    let service = format!("fork-restart-{}", signal as i32);
    let endpoints = [grpc.clone(), grpc, unix];
    let mut workers = Vec::new();
    for endpoint in &endpoints {
        let shim = Shim::builder()
            .service_name(&service)
            .endpoint(endpoint)
            .export_interval(Duration::from_secs(3600))
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| error.to_string())?;
        workers.push(
            fork_worker(move |link| {
                let meter = shim.meter("fork-test");
                let jobs = meter.u64_counter("jobs").build();
                let latency = meter.f64_histogram("latency").build();
                loop {
                    match link.receive(WAIT * 4)? {
                        ROUND => {
                            jobs.add(JOBS, &[]);
                            for value in LATENCIES {
                                latency.record(value, &[]);
                            }
                        }
                        FLUSH => {}
                        _ => return shim.shutdown().map_err(|error| error.to_string()),
                    }
                    // Fails while fanin is down; the cumulative values go out next time.
                    let _ = shim.force_flush();
                    link.send(READY)?;
                }
            })
            .map_err(|error| error.to_string())?,
        );
    }
    tell(&workers, &[0, 1, 2], ROUND)?;
    tell(&workers, &[0, 1], ROUND)?;
    let mut rounds = 5;
    wait_totals(&sidecar, &service, rounds)?;
    // A snapshot written after fanin had those totals.
    let seen_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|error| error.to_string())?
        .as_nanos() as u64;
    let snapshotted = sidecar
        .poll(WAIT, |sidecar| {
            let stats = sidecar.get("/api/v1/stats")?.unwrap_or_default();
            let written = stats["storage"]["last_written_unix_nano"].as_u64();
            Ok(written.filter(|written| *written > seen_at))
        })
        .map_err(|error| error.to_string())?;
    ensure(snapshotted.is_some(), || "no snapshot was written".into())?;
    // Applied after that snapshot: a crash loses it from fanin, the next export sends it again.
    tell(&workers, &[1], ROUND)?;
    rounds += 1;
    wait_totals(&sidecar, &service, rounds)?;

    let process = sidecar.process_mut().ok_or("the sidecar is not ours")?;
    let status = process.stop(signal).map_err(|error| error.to_string())?;
    ensure(
        status.code().is_none() == (signal == Signal::SIGKILL),
        || format!("fanin ended with {status} on {signal}"),
    )?;
    // While fanin is down: worker 0 counts a round it cannot export, worker 2 dies.
    tell(&workers, &[0], ROUND)?;
    rounds += 1;
    workers[2].kill(Signal::SIGKILL)?;
    let status = workers[2].wait(WAIT)?;
    ensure(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
        || format!("expected death by SIGKILL, got {status:?}"),
    )?;
    let process = sidecar.process_mut().ok_or("the sidecar is not ours")?;
    process.start_again().map_err(|error| error.to_string())?;

    // At once, before any export: the dead worker's instance is retired, its counts stay.
    let dead = format!("pid-{}", workers[2].pid);
    let instances = sidecar
        .instances_of(&service)
        .map_err(|error| error.to_string())?;
    let retired = instances.iter().any(|instance| {
        instance["attributes"]["service.instance.id"]
            .as_str()
            .is_some_and(|id| id.ends_with(&dead))
            && instance["live"] == Value::Bool(false)
    });
    ensure(retired, || {
        format!("the worker that died while fanin was down is not retired: {instances:?}")
    })?;
    let (restored, _) = sidecar
        .total("jobs", &format!("match=service.name={service}"))
        .map_err(|error| error.to_string())?
        .ok_or("no jobs after the restart")?;
    let before = (rounds - 2) * JOBS;
    ensure(restored >= before as f64, || {
        format!("jobs went down through the restart: {restored} < {before}")
    })?;

    tell(&workers, &[0, 1], FLUSH)?;
    wait_totals(&sidecar, &service, rounds)?;
    for worker in &workers[..2] {
        worker.send(GO)?;
        reap(worker)?;
    }
    let _ = std::fs::remove_dir_all(&storage);
    Ok(())
}

/// Waits until `jobs` and `latency` of `service` are exactly what `rounds` rounds counted.
fn wait_totals(sidecar: &Sidecar, service: &str, rounds: u64) -> Outcome {
    wait_total(sidecar, "jobs", service, (rounds * JOBS) as f64)?;
    let matcher = format!("match=service.name={service}");
    let want = rounds * LATENCIES.len() as u64;
    let count = sidecar
        .poll(WAIT, |sidecar| {
            let count = sidecar.histogram_count("latency", &matcher)?;
            Ok((count == Some(want)).then_some(count))
        })
        .map_err(|error| error.to_string())?;
    let seen = sidecar
        .histogram_count("latency", &matcher)
        .map_err(|error| error.to_string())?;
    ensure(count.is_some(), || {
        format!("latency count of {service}: expected {want}, saw {seen:?}")
    })
}

/// Sends one OTLP/gRPC export over the unix socket, from a runtime made in this (forked)
/// process.
fn export_over_unix(
    socket: &str,
    request: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> Outcome {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let socket = socket.to_string();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://fanin.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|error| error.to_string())?;
        MetricsServiceClient::new(channel)
            .export(request)
            .await
            .map(drop)
            .map_err(|status| status.to_string())
    })
}

/// A worker that records and then drops its (last) shim, without calling shutdown: Drop
/// flushes its values.
fn dropping_the_shim_flushes_a_workers_last_values() -> Outcome {
    let (sidecar, grpc, _) = sidecar("")?;
    let service = "fork-drop";
    let shim = shim(service, &grpc)?;
    let worker = fork_worker(move |_link| {
        let counter = shim.meter("fork-test").u64_counter("events").build();
        counter.add(11, &[KeyValue::new("kind", "last")]);
        drop(counter);
        drop(shim);
        Ok(())
    })
    .map_err(|error| error.to_string())?;
    reap(&worker)?;
    wait_total(&sidecar, "events", service, 11.0)
}

/// The master records and flushes through the shim before forking (its pipeline's threads
/// are running); the child gets a new pipeline with its own identity and never re-exports
/// the master's counts.
fn a_child_abandons_the_inherited_pipeline_and_builds_its_own() -> Outcome {
    let (sidecar, grpc, _) = sidecar("")?;
    let service = "fork-inherit";
    let shim = shim(service, &grpc)?;
    let jobs = shim.instrument("fork-test", |meter| meter.u64_counter("jobs").build());
    jobs.get().add(5, &[]);
    shim.force_flush().map_err(|error| error.to_string())?;
    wait_total(&sidecar, "jobs", service, 5.0)?;

    // fork_worker refuses a multi-threaded master; this scenario forks one on purpose.
    let child = match fanin::sys::fork_process().map_err(|error| error.to_string())? {
        fanin::sys::Forked::Child => {
            jobs.get().add(3, &[]);
            let code = i32::from(shim.shutdown().is_err());
            std::process::exit(code)
        }
        fanin::sys::Forked::Parent(pid) => pid,
    };
    let ended = fanin::check::wait_for(child, WAIT).inspect_err(|_| {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = fanin::check::wait_for(child, WAIT);
    })?;
    ensure(matches!(ended, WaitStatus::Exited(_, 0)), || {
        format!("child ended with {ended:?}")
    })?;
    // 5 from the master and 3 from the child: 13 would mean the child flushed the master's
    // counts again, 5 that the child's pipeline never worked.
    wait_total(&sidecar, "jobs", service, 8.0)?;
    let ids = sidecar
        .instance_ids_of(service)
        .map_err(|error| error.to_string())?;
    let mut expected = vec![
        format!("pid-{}", std::process::id()),
        format!("pid-{child}"),
    ];
    expected.sort();
    ensure(
        ids.len() == 2
            && ids
                .iter()
                .zip(&expected)
                .all(|(id, end)| id.ends_with(end.as_str())),
        || format!("instances {ids:?}, expected ids ending in {expected:?}"),
    )?;
    let findings = sidecar
        .collisions_of(service)
        .map_err(|error| error.to_string())?;
    ensure(findings.total() == 0, || format!("{findings:?}"))?;
    shim.shutdown().map_err(|error| error.to_string())
}
