"""A real uWSGI (master, 4 processes, threads enabled) serving tests/apps/uwsgi_app.py with
fanin_shim.uwsgi.register(): one instance per worker, exact totals, the last values flushed
when uWSGI stops, and the application's own uwsgi.atexit kept and run before the flush.

uWSGI comes from requirements-test.txt (pip builds it with gcc); a missing uwsgi fails the
test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import APPS, DEADLINE, eventually

WORKERS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Uwsgi:
    """uWSGI serving uwsgi_app over HTTP on 127.0.0.1, stopped through its master FIFO."""

    def __init__(self, tmp: Path, env: dict):
        binary = Path(sys.executable).with_name("uwsgi")
        if not binary.exists():
            pytest.fail(f"{binary} is missing: install requirements-test.txt")
        self.fifo = tmp / "master.fifo"
        self.log_path = tmp / "uwsgi.log"
        self.address = f"127.0.0.1:{free_port()}"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(binary), "--strict", "--master", "--processes", str(WORKERS),
                 "--enable-threads", "--http-socket", self.address, "--home", sys.prefix,
                 "--chdir", str(APPS), "--module", "uwsgi_app:app", "--need-app",
                 "--master-fifo", str(self.fifo), "--disable-logging"],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.workers = eventually(self._spawned, lambda: f"uWSGI did not start:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def _spawned(self):
        """The pids of the workers, once all are spawned and the master listens to its FIFO."""
        if self.process.poll() is not None:
            pytest.fail(f"uWSGI exited with {self.process.returncode}:\n{self.log}")
        pids = [int(pid) for pid in re.findall(r"spawned uWSGI worker \d+ \(pid: (\d+)", self.log)]
        return len(pids) == WORKERS and self.fifo.exists() and pids

    def request(self, path: str = "/") -> str:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        """Graceful shutdown ("q" on the master FIFO): workers finish, run their exit hooks
        and leave; returns when the master has exited."""
        with open(self.fifo, "w") as fifo:
            fifo.write("q")
        try:
            self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"uWSGI did not stop:\n{self.log}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def drive_until_every_worker_answered(server: Uwsgi, at_least: int) -> Counter:
    """Sends requests, eight at a time, until there were `at_least` and every worker
    answered some; returns how many each worker pid answered.

    Only a worker that answered is known to be ready: uWSGI logs "spawned" when it forks
    one, and a worker installs its signal handlers after the postfork hooks, so a stop
    signal that reaches it before then is lost and it never leaves.
    """
    answered: Counter = Counter()

    def batch():
        with ThreadPoolExecutor(max_workers=8) as pool:
            answered.update(int(pid) for pid in pool.map(lambda _: server.request(), range(8)))
        return sum(answered.values()) >= at_least and set(answered) >= set(server.workers)

    eventually(batch, lambda: f"answered: {dict(answered)}, workers: {server.workers}")
    return answered


@pytest.fixture
def uwsgi(tmp_path):
    started = []

    def start(env):
        server = Uwsgi(tmp_path, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def test_uwsgi_workers_flush_exact_totals_on_stop(fanin, uwsgi, tmp_path):
    service = f"py-uwsgi-{uuid.uuid4().hex[:8]}"
    markers = tmp_path / "markers"
    markers.mkdir()
    # A long interval: only the flush at exit can deliver the counts.
    env = {**fanin.endpoint("http"), "APP_SERVICE": service, "APP_MARKERS": str(markers),
           "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    server = uwsgi(env)
    answered = drive_until_every_worker_answered(server, at_least=200)
    n = sum(answered.values())
    assert set(answered) == set(server.workers), (answered, server.workers)
    assert fanin.total("app.requests", service) is None, "nothing is exported before the stop"
    server.stop()

    eventually(
        lambda: fanin.total("app.requests", service) == n,
        lambda: f"app.requests = {fanin.total('app.requests', service)}, want {n}\n{server.log}",
    )
    assert fanin.total("app.latency", service) == n
    assert fanin.total("app.inflight", service) == 0
    instances = fanin.instances(service)
    pids = sorted(i["attributes"]["process.pid"] for i in instances)
    assert pids == sorted(server.workers), instances
    assert all(
        i["attributes"]["service.instance.id"].endswith(f"-pid-{i['attributes']['process.pid']}")
        for i in instances
    ), instances
    assert fanin.findings(service) == ([], [])
    # The app's own uwsgi.atexit ran in every worker, and before the flush.
    assert {f"atexit-{pid}" for pid in server.workers} <= {m.name for m in markers.iterdir()}
    assert fanin.total("app.exits", service) == WORKERS
