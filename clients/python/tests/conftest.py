"""Fixtures for the end-to-end tests: the real fanin binary and a gunicorn launcher.

FANIN_BIN names the binary (default: target/debug/fanin of this repository, built by
`cargo build`). Every process listens on 127.0.0.1 with ports the kernel picks. Waiting is
polling with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
APPS = Path(__file__).resolve().parent / "apps"
DEADLINE = 30.0


def eventually(probe, what, timeout=DEADLINE):
    """Calls probe() until it returns something truthy; fails with `what()` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s: {what()}")
        time.sleep(0.05)


class Fanin:
    """`otlp_keys` is YAML flow-mapping text added to both OTLP listeners' keys (TLS and a
    token, say); `env` is added to fanin's environment; `storage` YAML text for the
    `storage` section (a snapshot directory), which `restart` relies on."""

    def __init__(self, tmp: Path, otlp_keys: str = "", env: dict | None = None,
                 storage: str = ""):
        self.binary = os.environ.get("FANIN_BIN", str(REPO / "target" / "debug" / "fanin"))
        self.socket = tmp / "fanin.sock"
        self.config = tmp / "fanin.yaml"
        self.otlp_keys = otlp_keys
        self.storage = storage
        self.env = {**os.environ, **(env or {})}
        self._start({"otlp-grpc": "127.0.0.1:0", "otlp-http": "127.0.0.1:0",
                     "query": "127.0.0.1:0"})

    def _start(self, listen: dict):
        extra = f", {self.otlp_keys}" if self.otlp_keys else ""
        storage = f"storage: {self.storage}\n" if self.storage else ""
        self.config.write_text(
            "receivers:\n"
            "  otlp:\n"
            f'    grpc: {{listen: "{listen["otlp-grpc"]}"{extra}}}\n'
            f'    http: {{listen: "{listen["otlp-http"]}"{extra}}}\n'
            f"    unix: {{path: {json.dumps(str(self.socket))}}}\n"
            f'query: {{listen: "{listen["query"]}"}}\n'
            f"{storage}"
        )
        self.process = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        self.addresses = {}
        for line in self.process.stdout:
            name, _, address = line.strip().partition(" listening on ")
            self.addresses[name] = address
            if {"otlp-grpc", "otlp-http", "query", "otlp-unix"} <= self.addresses.keys():
                break
        else:
            raise RuntimeError("fanin exited before listening")

    def kill(self, sig=signal.SIGKILL):
        """Stops fanin with `sig` (SIGKILL: a crash) and waits for it to exit."""
        self.process.send_signal(sig)
        self.process.wait(timeout=DEADLINE)

    def start_again(self):
        """Starts a stopped fanin with the same config on the same addresses."""
        self._start(self.addresses)

    def endpoint(self, transport: str) -> dict:
        """OTEL_* variables that point an exporter at this fanin over `transport`."""
        if transport == "http":
            return {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.addresses['otlp-http']}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            }
        if transport == "grpc":
            return {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.addresses['otlp-grpc']}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            }
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"unix:{self.socket}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }

    def get(self, path: str, **params):
        url = f"http://{self.addresses['query']}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def total(self, metric: str, service: str, agg: str = "sum"):
        """The `agg` of `metric` over `service`, all attributes together, or None."""
        answer = self.get(
            "/api/v1/query", metric=metric, agg=agg, by="", match=f"service.name={service}"
        )
        if not answer or not answer["series"]:
            return None
        assert len(answer["series"]) == 1, answer
        series = answer["series"][0]
        return series["histogram"]["count"] if "histogram" in series else series["value"]

    def by(self, metric: str, service: str, key: str) -> dict:
        """`metric` of `service` summed by attribute `key`: {value of key: total}."""
        answer = self.get("/api/v1/query", metric=metric, by=key,
                          match=f"service.name={service}")
        if not answer:
            return {}
        return {s["attributes"].get(key): s["value"] for s in answer["series"]}

    def answers(self, service: str) -> dict:
        """Every metric of `service` as /api/v1/query answers it, for failure messages."""
        listing = self.get("/api/v1/metrics") or {"metrics": []}
        return {
            m["metric"]: self.get("/api/v1/query", metric=m["metric"],
                                  match=f"service.name={service}")
            for m in listing["metrics"]
        }

    def instances(self, service: str):
        answer = self.get("/api/v1/instances") or {"instances": []}
        return [i for i in answer["instances"] if i["attributes"].get("service.name") == service]

    def findings(self, service: str):
        """(collisions, inherited-state findings) on instances of `service`."""
        answer = self.get("/api/v1/collisions")
        collisions = [c for c in answer["collisions"] if c["instance"].get("service.name") == service]
        inherited = [
            f
            for f in answer["inherited_state"]
            if any(i.get("service.name") == service for i in f["instances"])
        ]
        return collisions, inherited

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=DEADLINE)


@pytest.fixture
def fanin():
    with tempfile.TemporaryDirectory(prefix="fanin-py-") as tmp:
        server = Fanin(Path(tmp))
        try:
            yield server
        finally:
            server.stop()


class Gunicorn:
    """gunicorn serving `app` from tests/apps with `config` (a gunicorn.conf.py there)."""

    def __init__(self, python: str, app: str, config: str, env: dict, args=()):
        self.log_lines = []
        self._listening = threading.Event()
        self.process = subprocess.Popen(
            # No control socket: by default every gunicorn shares one path. A short graceful
            # timeout: a SIGTERM that reaches a worker still booting (before gunicorn installs
            # its handlers) is ignored, and the master then waits that long before SIGKILL.
            [python, "-m", "gunicorn", "-c", str(APPS / config), "-b", "127.0.0.1:0",
             "--no-control-socket", "--graceful-timeout", "5", "--chdir", str(APPS), *args, app],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._listening.wait(DEADLINE):
            self.stop()
            pytest.fail("gunicorn did not start:\n" + "".join(self.log_lines))

    def _read_log(self):
        for line in self.process.stderr:
            self.log_lines.append(line)
            found = re.search(r"Listening at: http://([\d.]+:\d+)", line)
            if found:
                self.address = found.group(1)
                self._listening.set()

    def request(self, path="/"):
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=10) as response:
            return response.read().decode()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail("gunicorn did not stop on SIGTERM:\n" + self.log)

    @property
    def log(self):
        return "".join(self.log_lines)


@pytest.fixture
def gunicorn():
    started = []

    def start(app, config, env, python=sys.executable, args=()):
        server = Gunicorn(python, app, config, env, args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
