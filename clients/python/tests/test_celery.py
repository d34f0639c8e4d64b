"""A real Celery worker (prefork pool, 4 processes) running tests/apps/celery_app.py with
fanin_shim.celery.connect(), on kombu's filesystem transport (no broker server): one
instance per pool process, and every count flushed when the worker stops, though pool
processes leave through os._exit.

Celery comes from requirements-test.txt; a missing Celery fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from celery import Celery

from conftest import APPS, DEADLINE, eventually

POOL = 4


class Worker:
    """`celery worker` on celery_app with a prefork pool; its log goes to a file."""

    def __init__(self, tmp: Path, env: dict):
        self.log_path = tmp / "celery.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app", "worker",
                 "--pool", "prefork", "--concurrency", str(POOL), "--loglevel", "INFO",
                 "--hostname", f"fanin-{uuid.uuid4().hex[:8]}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=APPS,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {self.process.returncode}:\n{self.log}")
        return True

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): the pool processes finish and leave; returns when the
        worker has exited."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the Celery worker did not stop on SIGTERM:\n{self.log}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def celery_worker(tmp_path):
    started = []

    def start(env):
        worker = Worker(tmp_path, env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def test_pool_processes_flush_every_count_on_stop(fanin, celery_worker, tmp_path):
    service = f"py-celery-{uuid.uuid4().hex[:8]}"
    queue = tmp_path / "queue"
    markers = tmp_path / "markers"
    for folder in (queue, markers, tmp_path / "processed", tmp_path / "control"):
        folder.mkdir()
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(tmp_path / "processed"),
        # The exchange table; by default kombu writes it into the working directory.
        "control_folder": str(tmp_path / "control"),
        "polling_interval": 0.1,
    }
    # A long interval: only the flush at exit can deliver the counts.
    env = {**fanin.endpoint("http"), "APP_SERVICE": service,
           "CELERY_TRANSPORT_OPTIONS": json.dumps(options),
           "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    worker = celery_worker(env)

    sender = Celery("sender", broker="filesystem://")
    sender.conf.broker_transport_options = options
    n = 40
    for task in range(n):
        sender.send_task("count", args=[str(markers / f"task-{task}")])
    eventually(
        lambda: worker.alive() and len(list(markers.iterdir())) == n,
        lambda: f"{len(list(markers.iterdir()))} of {n} tasks done:\n{worker.log}",
    )
    ran_tasks = {int(marker.suffix[1:]) for marker in markers.iterdir()}
    assert fanin.total("tasks.done", service) is None, "nothing is exported before the stop"
    worker.stop()

    eventually(
        lambda: fanin.total("tasks.done", service) == n,
        lambda: f"tasks.done = {fanin.total('tasks.done', service)}, want {n}\n{worker.log}",
    )
    instances = fanin.instances(service)
    pids = {i["attributes"]["process.pid"] for i in instances}
    assert len(instances) == len(pids) == POOL, instances
    assert ran_tasks <= pids, (ran_tasks, instances)
    assert all(
        i["attributes"]["service.instance.id"].endswith(f"-pid-{i['attributes']['process.pid']}")
        for i in instances
    ), instances
    assert fanin.findings(service) == ([], [])
