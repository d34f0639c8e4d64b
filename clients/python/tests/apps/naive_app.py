"""The naive setup: the OpenTelemetry SDK initialised at import time, with no shim.

Under `gunicorn --preload` the master imports this module, so the provider (and anything
recorded here) exists before the workers are forked. PRE_FORK_COUNT records that many
requests in the master, before fork.
"""

import os

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

provider = MeterProvider(
    metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=200)],
    resource=Resource.create({"service.name": os.environ["APP_SERVICE"]}),
)
REQUESTS = provider.get_meter("app").create_counter("app.requests", unit="{request}")
REQUESTS.add(int(os.environ.get("PRE_FORK_COUNT", "0")))


def app(environ, start_response):
    REQUESTS.add(1)
    body = f"{os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
