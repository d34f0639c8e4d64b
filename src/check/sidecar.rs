//! The sidecar `fanin check` talks to: a running one, or a `fanin serve` child it starts
//! ([`SidecarProcess`]), and its query API over blocking HTTP that spawns no thread
//! ([`Sidecar`]), so that the master stays forkable.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use super::CheckError;
use crate::shim::Protocol;

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

    /// What the findings are about, for a report line: each one's metric, with the
    /// collision's evidence or the shared start time and the instances that report it.
    pub fn describe(&self) -> String {
        let collisions = self.collisions.iter().map(|finding| {
            let evidence: Vec<_> = finding["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|evidence| evidence["kind"].as_str())
                .collect();
            format!(
                "collision on {} ({})",
                finding["metric"].as_str().unwrap_or("?"),
                evidence.join(", ")
            )
        });
        let inherited = self.inherited.iter().map(|finding| {
            let instances: Vec<_> = finding["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|instance| instance["service.instance.id"].as_str())
                .collect();
            format!(
                "{} starting at {} in {}",
                finding["metric"].as_str().unwrap_or("?"),
                finding["start_time_unix_nano"],
                instances.join(", ")
            )
        });
        collisions.chain(inherited).collect::<Vec<_>>().join("; ")
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

    /// The `fanin serve` child this sidecar owns, to stop and start it.
    pub fn process_mut(&mut self) -> Option<&mut SidecarProcess> {
        self.owned.as_mut()
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

    /// Points refused so far because a unix-socket writer named another `process.pid`.
    pub fn pid_mismatches(&self) -> Result<u64, CheckError> {
        let stats = self.get("/api/v1/stats")?.unwrap_or_default();
        Ok(stats["points"]["rejected"]["pid_mismatch"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Calls `probe` until it returns Some, or `timeout` passes (then Ok(None)).
    pub fn poll<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&Sidecar) -> Result<Option<T>, CheckError>,
    ) -> Result<Option<T>, CheckError> {
        super::poll_until(timeout, || probe(self))
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

    /// Instances (live and retired) whose `service.name` is `service`, from every page.
    pub fn instances_of(&self, service: &str) -> Result<Vec<Value>, CheckError> {
        let mut found = Vec::new();
        let mut path = "/api/v1/instances".to_string();
        loop {
            let answer = self.get(&path)?.unwrap_or_default();
            found.extend(
                answer["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|instance| instance["attributes"]["service.name"] == service)
                    .cloned(),
            );
            match answer["next_cursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/instances?cursor={cursor}"),
                None => return Ok(found),
            }
        }
    }

    /// The `service.instance.id`s of `service`'s instances, sorted.
    pub fn instance_ids_of(&self, service: &str) -> Result<Vec<String>, CheckError> {
        let mut ids: Vec<String> = self
            .instances_of(service)?
            .iter()
            .filter_map(|instance| instance["attributes"]["service.instance.id"].as_str())
            .map(str::to_string)
            .collect();
        ids.sort();
        Ok(ids)
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
    exe: PathBuf,
    dir: PathBuf,
    extra_yaml: String,
    /// `http://` URLs of the OTLP/gRPC and OTLP/HTTP listeners.
    pub grpc: String,
    pub http: String,
    pub unix: PathBuf,
    /// Base URL of the query API.
    pub query: String,
}

/// Sidecars started by this process, to give each its own directory.
static SIDECARS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Where each listener listens: `127.0.0.1:0` at first, the bound addresses on a restart.
struct Listen<'a> {
    grpc: &'a str,
    http: &'a str,
    query: &'a str,
}

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
        let any = "127.0.0.1:0";
        let listen = Listen {
            grpc: any,
            http: any,
            query: any,
        };
        let (child, [grpc, http, query, unix]) = spawn(exe, &dir, extra_yaml, &listen)?;
        Ok(SidecarProcess {
            child,
            exe: exe.to_path_buf(),
            dir,
            extra_yaml: extra_yaml.to_string(),
            grpc: format!("http://{grpc}"),
            http: format!("http://{http}"),
            unix: PathBuf::from(unix),
            query: format!("http://{query}"),
        })
    }

    /// Stops the sidecar with `signal` (SIGKILL: a crash) and waits for it to exit; its
    /// status, as the OS tells it.
    pub fn stop(&mut self, signal: Signal) -> Result<std::process::ExitStatus, CheckError> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
        self.child
            .wait()
            .map_err(|error| CheckError::Sidecar(error.to_string()))
    }

    /// Starts a stopped sidecar again with the same config, on the same addresses and unix
    /// socket.
    pub fn start_again(&mut self) -> Result<(), CheckError> {
        let strip = |url: &str| url.trim_start_matches("http://").to_string();
        let (grpc, http, query) = (strip(&self.grpc), strip(&self.http), strip(&self.query));
        let listen = Listen {
            grpc: &grpc,
            http: &http,
            query: &query,
        };
        let (child, _) = spawn(&self.exe, &self.dir, &self.extra_yaml, &listen)?;
        self.child = child;
        Ok(())
    }

    /// The `fanin serve` child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Writes the config into `dir` and runs `exe serve` with it; returns the child and the
/// addresses it printed (OTLP/gRPC, OTLP/HTTP, query, unix socket).
fn spawn(
    exe: &std::path::Path,
    dir: &std::path::Path,
    extra_yaml: &str,
    listen: &Listen<'_>,
) -> Result<(Child, [String; 4]), CheckError> {
    let failed = |reason: String| CheckError::Sidecar(reason);
    let socket = dir.join("fanin.sock");
    let config = dir.join("config.yaml");
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{listen: \"{}\"}}\n    http: {{listen: \"{}\"}}\n    \
         unix: {{path: {}}}\nquery: {{listen: \"{}\"}}\n{extra_yaml}\n",
        listen.grpc,
        listen.http,
        serde_json::to_string(&socket.display().to_string()).unwrap_or_default(),
        listen.query,
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
    Ok((child, [grpc, http, query, unix]))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Findings;

    #[test]
    fn findings_are_described_by_metric_evidence_start_and_instances() {
        let findings = Findings {
            collisions: vec![json!({
                "metric": "requests",
                "evidence": [{"kind": "runs_overlap"}, {"kind": "different_processes"}],
            })],
            inherited: vec![json!({
                "metric": "latency",
                "start_time_unix_nano": 1_500_000_123u64,
                "instances": [
                    {"service.instance.id": "w-1"},
                    {"service.instance.id": "w-2"},
                ],
            })],
        };
        assert_eq!(
            findings.describe(),
            "collision on requests (runs_overlap, different_processes); \
             latency starting at 1500000123 in w-1, w-2"
        );
    }
}
