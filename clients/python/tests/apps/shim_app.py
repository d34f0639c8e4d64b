"""A WSGI app instrumented through fanin_shim (setup happened in gunicorn.conf.py)."""

import os
import time

import fanin_shim
from opentelemetry.metrics import Observation

meter = fanin_shim.provider().get_meter("app")
REQUESTS = meter.create_counter("app.requests", unit="{request}")
INFLIGHT = meter.create_up_down_counter("app.inflight", unit="{request}")
LATENCY = meter.create_histogram("app.latency", unit="s")
# Each live worker reports 1: the live total is the number of live workers.
meter.create_observable_gauge("app.worker.up", callbacks=[lambda _options: [Observation(1)]])


def app(environ, start_response):
    started = time.perf_counter()
    INFLIGHT.add(1)
    try:
        REQUESTS.add(1)
        body = f"{os.getpid()}\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    finally:
        INFLIGHT.add(-1)
        LATENCY.record(time.perf_counter() - started)
