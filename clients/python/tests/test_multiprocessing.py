"""Plain multiprocessing (fork start method): each pool process is its own instance, and
the values it recorded are flushed when it exits, though it leaves through os._exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

from conftest import eventually

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    import fanin_shim

    provider = fanin_shim.setup(service_name=sys.argv[1])
    jobs = provider.get_meter("jobs").create_counter("jobs.done")

    def work(n):
        jobs.add(1)
        return os.getpid()

    if __name__ == "__main__":
        multiprocessing.set_start_method("fork")
        with multiprocessing.Pool(4) as pool:
            pids = set(pool.map(work, range(int(sys.argv[2])), chunksize=1))
            pool.close()
            pool.join()
        print(len(pids))
    """
)


def test_pool_processes_flush_on_exit(fanin, tmp_path):
    service = f"py-mp-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    n = 400
    # A long interval: only the exit flush can deliver the counts.
    env = {**os.environ, **fanin.endpoint("http"), "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    done = subprocess.run(
        [sys.executable, str(script), service, str(n)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    workers = int(done.stdout.strip())
    eventually(
        lambda: fanin.total("jobs.done", service) == n,
        lambda: f"jobs.done = {fanin.total('jobs.done', service)}, want {n}",
    )
    assert len(fanin.instances(service)) == workers
    assert fanin.findings(service) == ([], [])
