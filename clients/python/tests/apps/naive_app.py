"""The naive setup: the OpenTelemetry SDK initialised at import time, with no shim.

Under `gunicorn --preload` the master imports this module, so the provider exists before
the workers are forked: with SDK 1.43 every worker carries the master's resource. Nothing
is recorded before fork unless PRE_FORK_COUNT asks for that many requests to be counted in
the master. OTEL_EXPORTER_OTLP_PROTOCOL picks the exporter (http/protobuf or grpc), and
OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE the temporality, as the SDK reads them.
APP_EXPORT_INTERVAL_MS sets the export interval (200 ms unless given).
"""

import os
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
else:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

provider = MeterProvider(
    metric_readers=[
        PeriodicExportingMetricReader(
            OTLPMetricExporter(),
            export_interval_millis=int(os.environ.get("APP_EXPORT_INTERVAL_MS", "200")),
        )
    ],
    resource=Resource.create({"service.name": os.environ["APP_SERVICE"]}),
)
meter = provider.get_meter("app")
REQUESTS = meter.create_counter("app.requests", unit="{request}")
INFLIGHT = meter.create_up_down_counter("app.inflight", unit="{request}")
LATENCY = meter.create_histogram("app.latency", unit="s")
if int(os.environ.get("PRE_FORK_COUNT", "0")) > 0:
    REQUESTS.add(int(os.environ["PRE_FORK_COUNT"]), {"route": "/"})
# How long each request holds its worker: with concurrent requests, every sync worker then
# gets some.
HOLD_SECONDS = float(os.environ.get("APP_HOLD_SECONDS", "0"))


def app(environ, start_response):
    started = time.perf_counter()
    route = {"route": environ.get("PATH_INFO", "/")}
    INFLIGHT.add(1)
    try:
        REQUESTS.add(1, route)
        time.sleep(HOLD_SECONDS)
        body = f"{os.getpid()}\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    finally:
        INFLIGHT.add(-1)
        LATENCY.record(time.perf_counter() - started, route)
