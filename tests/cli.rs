//! The `fanin` binary: `serve` prints the bound addresses, takes exports, and exits 0 on
//! SIGTERM/SIGINT; bad config exits 2 with the key named; the default config is built in.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::pki::Pki;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const FANIN: &str = env!("CARGO_BIN_EXE_fanin");
const WAIT: Duration = Duration::from_secs(30);

/// A `fanin serve` child with the addresses it printed.
struct Served {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    query: SocketAddr,
    /// Everything fanin logs, read as it comes so a full pipe never stalls it.
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn serve(extra: &[&str], env: &[(&str, &str)]) -> Served {
    serve_under(&[], extra, env)
}

/// `fanin serve`, started by the program `launcher` names (which then execs fanin).
fn serve_under(launcher: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Served {
    let mut command = match launcher {
        [] => Command::new(FANIN),
        [program, arguments @ ..] => {
            let mut command = Command::new(program);
            command.args(arguments).arg(FANIN);
            command
        }
    };
    command
        .arg("serve")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start fanin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let address = |prefix: &str| -> SocketAddr {
        let line = lines_rx
            .recv_timeout(WAIT)
            .expect("fanin prints its listeners");
        let rest = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"));
        rest.trim().parse().expect("an address")
    };
    let grpc = address("otlp-grpc listening on ");
    let http = address("otlp-http listening on ");
    let query = address("query listening on ");
    Served {
        child,
        grpc,
        http,
        query,
        stderr: Some(stderr),
    }
}

const ANY_PORT: [&str; 6] = [
    "--grpc-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    "--query-listen",
    "127.0.0.1:0",
];

impl Drop for Served {
    /// A test that fails before it stops fanin must not leave fanin running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), signal).expect("signal our own child");
    }

    /// Stops fanin with SIGTERM and returns its exit status and everything it logged.
    fn stop_with_stderr(self) -> (std::process::ExitStatus, String) {
        self.signal(Signal::SIGTERM);
        self.wait_with_stderr()
    }

    /// Waits for the exit, failing after a deadline.
    fn wait(self) -> std::process::ExitStatus {
        self.wait_with_stderr().0
    }

    fn wait_with_stderr(mut self) -> (std::process::ExitStatus, String) {
        let status = fanin::check::poll_until(WAIT, || self.child.try_wait()).expect("wait");
        let Some(status) = status else {
            let _ = self.child.kill();
            panic!("fanin did not exit after the signal")
        };
        let stderr = self.stderr.take().and_then(|reader| reader.join().ok());
        (status, stderr.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_on_port_zero_takes_exports_and_stops_on_sigterm() {
    let served = serve(&ANY_PORT, &[]);
    assert_ne!(served.grpc.port(), 0);
    let body = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.instance.id","value":{"stringValue":"w1"}}]},
        "scopeMetrics":[{"metrics":[{"name":"up","gauge":{"dataPoints":[{"timeUnixNano":"1","asInt":"1"}]}}]}]}]}"#;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("http://{}/v1/metrics", served.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("export answered");
    assert_eq!(answer.status().as_u16(), 200);
    let text = client
        .get(format!("http://{}/api/v1/series?metric=up", served.query))
        .send()
        .await
        .expect("query answered")
        .text()
        .await
        .expect("body");
    let series: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(series["streams"][0]["value"], serde_json::json!(1));
    let grpc = tokio::net::TcpStream::connect(served.grpc).await;
    assert!(grpc.is_ok(), "the gRPC listener accepts connections");
    drop(grpc);

    served.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || served.wait())
        .await
        .expect("wait task");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_also_exits_zero() {
    let served = serve(&ANY_PORT, &[]);
    served.signal(Signal::SIGINT);
    assert_eq!(served.wait().code(), Some(0));
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(FANIN);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run fanin");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("fanin-cli-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write temp config");
    path
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let default = run(&["default-config"], &[]).1;
    let path = write_config("unknown", &default.replace("max_series:", "max_sieres:"));
    let (code, stdout, stderr) = run(&["serve", "--config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "nothing was bound: {stdout}");
    assert!(
        stderr.contains("config key `limits.max_sieres`: unknown field `max_sieres`"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn bad_config_value_exits_2_naming_it() {
    let default = run(&["default-config"], &[]).1;
    let path = write_config(
        "bad",
        &default.replace("shutdown_grace: 10s", "shutdown_grace: often"),
    );
    let (code, _, stderr) = run(&["serve", "--config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("config key `shutdown_grace`"), "{stderr}");
    let (code, _, stderr) = run(&["serve", "--config", "/nonexistent/fanin.yaml"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot read config file /nonexistent/fanin.yaml"),
        "{stderr}"
    );
}

#[test]
fn config_file_expands_environment_references() {
    let default = run(&["default-config"], &[]).1;
    let text = default
        .replace("listen: 127.0.0.1:4317", "listen: ${env:FANIN_TEST_GRPC}")
        .replace("listen: 127.0.0.1:4318", "listen: 127.0.0.1:0")
        .replace(
            "listen: 127.0.0.1:9464",
            "listen: ${env:FANIN_TEST_QUERY:-127.0.0.1:0}",
        );
    let path = write_config("env", &text);
    let served = serve(
        &["--config", path.to_str().expect("utf-8")],
        &[("FANIN_TEST_GRPC", "127.0.0.1:0")],
    );
    assert_eq!(served.grpc.ip().to_string(), "127.0.0.1");
    served.signal(Signal::SIGTERM);
    assert_eq!(served.wait().code(), Some(0));
    let (code, _, stderr) = run(&["serve", "--config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("environment variable FANIN_TEST_GRPC is not set"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn port_in_use_exits_1_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let (code, _, stderr) = run(
        &[
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            &address,
            "--query-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for OTLP/HTTP on {address}")),
        "{stderr}"
    );
}

/// The three address flags, each `127.0.0.1:0` unless `flag` gives it `address`.
fn listening(flag: &str, address: &'static str) -> Vec<&'static str> {
    ANY_PORT
        .chunks(2)
        .flat_map(|pair| [pair[0], if pair[0] == flag { address } else { pair[1] }])
        .collect()
}

#[test]
fn a_listener_beyond_loopback_exits_2_unless_allowed() {
    for (flag, address, key) in [
        ("--grpc-listen", "0.0.0.0:0", "`receivers.otlp.grpc.listen`"),
        ("--query-listen", "[::]:0", "`query.listen`"),
    ] {
        let (code, stdout, stderr) =
            run(&[&["serve"], &listening(flag, address)[..]].concat(), &[]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stdout.is_empty(), "nothing was bound: {stdout}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(stderr.contains("is not a loopback address"), "{stderr}");
        assert!(stderr.contains("allow_insecure: true"), "{stderr}");
    }
    // A certificate file that cannot be read is a config error too.
    let path = write_config(
        "absent-cert",
        "query:\n  tls:\n    cert_file: /nonexistent/fanin.crt\n    key_file: /nonexistent/fanin.key\n",
    );
    let (code, _, stderr) = run(
        &[
            &["serve", "--config", path.to_str().expect("utf-8")],
            &ANY_PORT[..],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("config key `query.tls.cert_file`"),
        "{stderr}"
    );
    assert!(stderr.contains("/nonexistent/fanin.crt"), "{stderr}");
    let _ = std::fs::remove_file(path);
    // A loopback address other than 127.0.0.1 is loopback too.
    let served = serve(&listening("--http-listen", "127.0.0.2:0"), &[]);
    assert_eq!(served.http.ip().to_string(), "127.0.0.2");
    let (status, stderr) = served.stop_with_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("beyond loopback"), "{stderr}");
}

#[test]
fn allow_insecure_starts_beyond_loopback_and_warns() {
    let path = write_config("insecure", "allow_insecure: true\n");
    let served = serve(
        &[
            &["--config", path.to_str().expect("utf-8")],
            &listening("--grpc-listen", "0.0.0.0:0")[..],
        ]
        .concat(),
        &[],
    );
    assert!(served.grpc.ip().is_unspecified(), "{}", served.grpc);
    // Test traffic stays on loopback, which the wildcard bind includes.
    let local = SocketAddr::from(([127, 0, 0, 1], served.grpc.port()));
    assert!(
        std::net::TcpStream::connect(local).is_ok(),
        "the listener is up"
    );
    let (status, stderr) = served.stop_with_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Listening beyond loopback"), "{stderr}");
    assert!(stderr.contains("receivers.otlp.grpc.listen"), "{stderr}");
    assert!(
        !stderr.contains("query.listen"),
        "only the exposed listener is named: {stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_loopback_with_tls_and_a_token_starts_and_sighup_reads_the_token_again() {
    let pki = Pki::new("cli-sighup");
    let tls = pki.server_files("query");
    let token_file = pki.dir.join("query.token");
    std::fs::write(&token_file, "token-one\n").expect("write the token");
    let yaml = format!(
        "query:\n  listen: 0.0.0.0:0\n  tls:\n    cert_file: {}\n    key_file: {}\n  auth:\n    token_file: {}\n",
        tls.cert_file.expect("cert").display(),
        tls.key_file.expect("key").display(),
        token_file.display(),
    );
    let path = write_config("sighup", &yaml);
    let served = serve(
        &[
            "--config",
            path.to_str().expect("utf-8"),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "debug")],
    );
    assert!(served.query.ip().is_unspecified(), "{}", served.query);
    // Test traffic stays on loopback, which the wildcard bind includes.
    let query = SocketAddr::from(([127, 0, 0, 1], served.query.port()));
    let client = common::pki::https_client(&pki.ca_pem(), None);
    let stats = |token: &'static str| {
        let client = client.clone();
        async move {
            let answer = client.get(query, "/api/v1/stats", Some(token)).await;
            answer.expect("answered over TLS").status
        }
    };
    assert_eq!(stats("token-one").await, 200);
    assert_eq!(stats("token-two").await, 401);

    std::fs::write(&token_file, "token-two\n").expect("write the new token");
    served.signal(Signal::SIGHUP);
    common::eventually(WAIT, "the new token admitted", || async {
        (stats("token-two").await == 200).then_some(())
    })
    .await;
    assert_eq!(stats("token-one").await, 401);

    let (status, stderr) = served.stop_with_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("SIGHUP: reading certificate and token files again"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("beyond loopback"),
        "protected, so no warning: {stderr}"
    );
    assert!(
        stderr.contains("Refused a request"),
        "refusals are logged: {stderr}"
    );
    assert!(
        !stderr.contains("token-one") && !stderr.contains("token-two"),
        "a token is never logged: {stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn serve_prints_a_line_per_exporter_that_is_on() {
    let path = write_config(
        "exporters",
        "exporters:\n  otlp: {endpoint: \"http://127.0.0.1:1\", protocol: http/protobuf}\n  prometheus_remote_write: {url: \"http://127.0.0.1:1/api/v1/write\"}\n",
    );
    let mut command = Command::new(FANIN);
    command
        .args(["serve", "--config", path.to_str().expect("utf-8")])
        .args(ANY_PORT)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("start fanin");
    let stdout = child.stdout.take().expect("piped stdout");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(5)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines[3..],
        [
            "exporter otlp sending to http://127.0.0.1:1/ (http/protobuf)",
            "exporter prometheus_remote_write sending to http://127.0.0.1:1/api/v1/write",
        ],
        "{lines:?}"
    );
    let (code, _, stderr) = run(
        &[
            &["serve", "--config"][..],
            &[
                write_config("bad-export", "exporters: {otlp: {endpoint: \"ftp://x\"}}\n")
                    .to_str()
                    .expect("utf-8"),
            ],
            &ANY_PORT[..],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("config key `exporters.otlp.endpoint`"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn sighup_without_files_to_read_is_logged_and_does_not_stop_fanin() {
    let served = serve(&ANY_PORT, &[]);
    served.signal(Signal::SIGHUP);
    // Still serving after the signal: a request is answered.
    let health = fanin::check::poll_until(WAIT, || {
        Ok::<_, std::io::Error>(std::net::TcpStream::connect(served.query).ok().map(|_| ()))
    });
    assert!(matches!(health, Ok(Some(()))), "fanin still listens");
    let (status, stderr) = served.stop_with_stderr();
    assert_eq!(status.code(), Some(0), "SIGHUP did not end fanin: {stderr}");
}

#[test]
fn default_config_is_built_in() {
    let (code, stdout, _) = run(&["default-config"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout, include_str!("../config.yaml"));
}

#[test]
fn a_partial_config_file_keeps_the_other_defaults() {
    let path = write_config(
        "partial",
        "receivers:\n  otlp:\n    grpc:\n      listen: 127.0.0.1:0\n    http:\n      listen: 127.0.0.1:0\nquery:\n  listen: 127.0.0.1:0\n",
    );
    let served = serve(&["--config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(served.query.ip().to_string(), "127.0.0.1");
    served.signal(Signal::SIGTERM);
    assert_eq!(served.wait().code(), Some(0));
    let _ = std::fs::remove_file(path);
}

/// `fanin check` with its own sidecar: the shim round and the naive round both pass.
#[test]
fn check_proves_the_shim_and_catches_the_naive_collision() {
    // Over the unix socket the inherited process.pid is refused before it can collide.
    for (args, caught) in [
        (
            &["--workers", "4"][..],
            "collision caught on fanin.check.requests (evidence: went_down_without_new_start",
        ),
        (
            &["--workers", "2", "--protocol", "http"][..],
            "collision caught on fanin.check.requests (evidence: went_down_without_new_start",
        ),
        (
            &["--workers", "3", "--unix"][..],
            "fanin refused their 3 point(s) (pid_mismatch)",
        ),
    ] {
        let (code, stdout, stderr) = run(&[&["check"], args].concat(), &[]);
        assert_eq!(code, Some(0), "{args:?}\n{stdout}\n{stderr}");
        let workers: usize = args[1].parse().expect("worker count");
        assert!(
            stdout.contains(&format!("shim   ok      {workers} instances")),
            "{stdout}"
        );
        assert!(stdout.contains("the final values arrived"), "{stdout}");
        assert!(stdout.contains(caught), "{args:?}: {stdout}");
        assert!(stdout.ends_with("result: ok\n"), "{stdout}");
    }
}

#[test]
fn check_needs_two_workers() {
    let (code, _, stderr) = run(&["check", "--workers", "1"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("at least 2"), "{stderr}");
}

/// Against a running sidecar: it passes as configured, and fails when the sidecar drops one
/// worker's data (a series limit that fits one worker's three streams).
#[test]
fn check_against_a_running_sidecar_fails_when_a_worker_is_dropped() {
    let target = |served: &Served| {
        [
            "check".to_string(),
            "--workers".to_string(),
            "2".to_string(),
            "--target".to_string(),
            format!("http://{}", served.grpc),
            "--query".to_string(),
            format!("http://{}", served.query),
        ]
    };
    let served = serve(&ANY_PORT, &[]);
    let args = target(&served);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run(&args, &[]);
    served.signal(Signal::SIGTERM);
    served.wait();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");

    let config = write_config("one-worker", "limits:\n  max_series: 3\n");
    let config = config.to_str().expect("utf-8 path");
    let served = serve(&[&["--config", config][..], &ANY_PORT].concat(), &[]);
    let mut args = target(&served).to_vec();
    // The right answer never comes: do not wait the default 30 s for it.
    args.extend(["--timeout".to_string(), "2s".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, _) = run(&args, &[]);
    served.signal(Signal::SIGTERM);
    served.wait();
    assert_eq!(code, Some(1), "{stdout}");
    // Which streams get the three places depends on how the two workers' exports
    // interleave: when they arrive together, each worker's `requests` stream gets in and
    // `inflight` or `latency` misses one instance. Some metric always does.
    assert!(stdout.contains("shim   FAILED  fanin.check."), "{stdout}");
    assert!(stdout.ends_with("result: FAILED\n"), "{stdout}");
}

/// The soft and hard open-file limits of process `pid`, from /proc.
fn file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open-files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap_or_default().to_string(),
        fields.next().unwrap_or_default().to_string(),
    )
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let (_, hard) = file_limits(std::process::id());
    let nofile = format!("--nofile=256:{hard}");
    let served = serve_under(&["prlimit", &nofile, "--"], &ANY_PORT, &[]);
    let (soft, now_hard) = file_limits(served.child.id());
    assert_eq!(
        (soft.as_str(), now_hard.as_str()),
        (hard.as_str(), hard.as_str())
    );
    served.signal(Signal::SIGTERM);
    assert_eq!(served.wait().code(), Some(0));
}

/// The figures of `serve`'s OTLP exporter, from its query API.
async fn otlp_exporter_figures(query: SocketAddr) -> Option<serde_json::Value> {
    let text = reqwest::get(format!("http://{query}/api/v1/stats"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let stats: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(stats["exporters"]["otlp"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_outage_shows_in_the_log_when_it_starts_and_ends() {
    let port = common::free_port();
    let path = write_config(
        "outage",
        &format!(
            "exporters:\n  otlp: {{endpoint: \"http://127.0.0.1:{port}\", interval: 200ms, timeout: 2s}}\n"
        ),
    );
    let served = serve(&["--config", path.to_str().expect("utf-8")], &[]);
    let query = served.query;
    common::eventually(WAIT, "retries while upstream is down", || async {
        let figures = otlp_exporter_figures(query).await?;
        (figures["retries"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let upstream = common::start_with(|config| {
        config.receivers.otlp.grpc.listen = format!("127.0.0.1:{port}").parse().expect("address");
    })
    .await;
    common::eventually(WAIT, "a batch delivered once upstream is back", || async {
        let figures = otlp_exporter_figures(query).await?;
        (figures["batches_sent"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let (status, stderr) = served.stop_with_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let start = stderr
        .find("Upstream does not take batches; retrying with back-off")
        .unwrap_or_else(|| panic!("the outage's start is logged: {stderr}"));
    let end = stderr
        .find("Upstream takes batches again")
        .unwrap_or_else(|| panic!("the outage's end is logged: {stderr}"));
    assert!(start < end, "{stderr}");
    assert_eq!(
        stderr.matches("Upstream does not take batches").count(),
        1,
        "logged once per outage, not per retry: {stderr}"
    );
    upstream.stop().await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_says_what_became_of_the_snapshot_at_start() {
    let dir = std::env::temp_dir().join(format!("fanin-cli-{}-storage", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = write_config(
        "storage",
        &format!(
            "storage: {{path: {:?}}}\n",
            dir.join("state").display().to_string()
        ),
    );
    let config = config.to_str().expect("UTF-8 path");
    let args = [&ANY_PORT[..], &["--config", config]].concat();

    // No directory yet: created (mode 0700), nothing to restore.
    let served = serve(&args, &[]);
    let body = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.instance.id","value":{"stringValue":"w1"}}]},
        "scopeMetrics":[{"metrics":[{"name":"jobs","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"startTimeUnixNano":"1","timeUnixNano":"2","asInt":"9"}]}}]}]}]}"#;
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/metrics", served.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("export answered");
    assert_eq!(answer.status().as_u16(), 200);
    let (status, stderr) = tokio::task::spawn_blocking(|| served.stop_with_stderr())
        .await
        .expect("stopped");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("No snapshot yet"), "{stderr}");
    assert!(
        stderr.contains("Wrote the snapshot at shutdown"),
        "{stderr}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("state"))
            .expect("created")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);

    // Restored, in one line that counts what came back.
    let served = serve(&args, &[]);
    let (_, stderr) = tokio::task::spawn_blocking(|| served.stop_with_stderr())
        .await
        .expect("stopped");
    let line = stderr
        .lines()
        .find(|line| line.contains("Restored the snapshot"))
        .unwrap_or_else(|| panic!("no restore line: {stderr}"));
    assert!(
        line.contains("instances=1") && line.contains("streams=1"),
        "{line}"
    );
    assert!(line.contains("age="), "{line}");

    // A snapshot from a newer fanin: refused, named, moved aside; fanin starts and serves.
    let snapshot = dir.join("state").join(fanin::storage::FILE);
    let mut file = {
        use prost::Message;
        let bytes = std::fs::read(&snapshot).expect("written");
        fanin::proto::v1::snapshot::SnapshotFile::decode(bytes.as_slice()).expect("decodes")
    };
    file.header.as_mut().expect("a header").format = fanin::storage::FORMAT + 1;
    std::fs::write(&snapshot, prost::Message::encode_to_vec(&file)).expect("write");
    let served = serve(&args, &[]);
    let ready = reqwest::get(format!("http://{}/readyz", served.query))
        .await
        .expect("answered");
    assert_eq!(ready.status().as_u16(), 200);
    let (status, stderr) = tokio::task::spawn_blocking(|| served.stop_with_stderr())
        .await
        .expect("stopped");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains("Snapshot refused"))
        .unwrap_or_else(|| panic!("no refusal line: {stderr}"));
    assert!(line.contains("newer"), "{line}");
    assert!(line.contains("fanin.snapshot.refused-"), "{line}");
    let aside: Vec<_> = std::fs::read_dir(dir.join("state"))
        .expect("listed")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().contains(".refused-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside, never deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_storage_path_that_is_a_file_exits_2_naming_the_key() {
    let file = write_config("not-a-dir", "");
    let config = write_config(
        "storage-file",
        &format!("storage: {{path: {:?}}}\n", file.display().to_string()),
    );
    let serve = ["serve", "--config", config.to_str().expect("UTF-8")];
    let (code, _, stderr) = run(&[&serve[..], &ANY_PORT[..]].concat(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("storage.path"), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}
