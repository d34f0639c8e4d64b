"""The proxy meter and instruments on whatever SDK release this environment holds (the tests
run on the oldest supported one and the newest tested one): they are the API's classes,
every kind reaches fanin, and a failing SDK call never reaches the application but is
logged once per instrument. Scripts run in fresh interpreters, so patches stay there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

import fanin_shim
from conftest import eventually

# What the scripts print through logging: one line per record, then any traceback.
LOGGING = "import logging; logging.basicConfig(format='LOG %(name)s %(levelname)s %(message)s')\n"


def run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOGGING + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )


def shim_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("LOG fanin_shim WARNING")]


def sdk_has_sync_gauge() -> bool:
    return hasattr(SdkMeterProvider().get_meter("probe"), "create_gauge")


def test_proxies_are_instances_of_the_api_classes():
    provider = fanin_shim.ForkAwareMeterProvider(endpoint="http://127.0.0.1:9")
    meter = provider.get_meter("types")
    no_callbacks: list = []
    # Before 1.23 the API has no synchronous gauge class at all.
    gauge_class = getattr(metrics, "Gauge", None) or getattr(metrics, "_Gauge", metrics.Synchronous)
    expected = [
        (meter.create_counter("c"), metrics.Counter),
        (meter.create_up_down_counter("u"), metrics.UpDownCounter),
        (meter.create_histogram("h"), metrics.Histogram),
        (meter.create_gauge("g"), gauge_class),
        (meter.create_observable_counter("oc", no_callbacks), metrics.ObservableCounter),
        (meter.create_observable_up_down_counter("ou", no_callbacks),
         metrics.ObservableUpDownCounter),
        (meter.create_observable_gauge("og", no_callbacks), metrics.ObservableGauge),
    ]
    assert isinstance(provider, metrics.MeterProvider)
    assert isinstance(meter, metrics.Meter)
    for proxy, api_class in expected:
        assert isinstance(proxy, api_class), (proxy, api_class)
        assert isinstance(proxy, metrics.Instrument)


def test_every_instrument_kind_reaches_fanin(fanin):
    service = f"py-kinds-{uuid.uuid4().hex[:8]}"
    done = run(
        """
        from opentelemetry.metrics import Observation
        import fanin_shim

        provider = fanin_shim.setup()
        meter = provider.get_meter("kinds", version="1.0")
        meter.create_counter("k.counter").add(3, {"route": "/"})
        meter.create_up_down_counter("k.updown").add(-2)
        meter.create_histogram("k.histogram").record(0.5)
        meter.create_gauge("k.gauge").set(7)
        meter.create_observable_counter("k.ocounter", [lambda _o: [Observation(11)]])
        meter.create_observable_up_down_counter("k.oupdown", [lambda _o: [Observation(13)]])
        meter.create_observable_gauge("k.ogauge", [lambda _o: [Observation(17)]])
        provider.shutdown()
        """,
        {**fanin.endpoint("http"), "OTEL_SERVICE_NAME": service},
    )
    assert done.returncode == 0, done.stderr
    want = {"k.counter": 3, "k.updown": -2, "k.histogram": 1, "k.ocounter": 11,
            "k.oupdown": 13, "k.ogauge": 17}
    if sdk_has_sync_gauge():
        want["k.gauge"] = 7
        assert shim_warnings(done.stderr) == [], done.stderr
    else:
        [warning] = shim_warnings(done.stderr)
        assert "Gauge 'k.gauge' failed" in warning, done.stderr
    eventually(
        lambda: {metric: fanin.total(metric, service) for metric in want} == want,
        lambda: f"totals: {fanin.answers(service)}",
    )
    assert fanin.total("k.gauge", service) == want.get("k.gauge")


def test_a_failing_sdk_call_is_dropped_and_logged_once(fanin):
    # The two failures the SDK can throw at a recording call: making the meter (as
    # MeterProvider.get_meter of an older release refusing an argument did) and recording.
    service = f"py-failing-{uuid.uuid4().hex[:8]}"
    done = run(
        """
        from opentelemetry.sdk.metrics import Counter, MeterProvider
        import fanin_shim

        real_get_meter, real_add = MeterProvider.get_meter, Counter.add

        def get_meter(self, name, *args, **kwargs):
            if name == "broken":
                raise TypeError("get_meter() takes from 2 to 4 positional arguments")
            return real_get_meter(self, name, *args, **kwargs)

        def add(self, amount, *args, **kwargs):
            if self.name == "ok.failing":
                raise RuntimeError("disk on fire")
            return real_add(self, amount, *args, **kwargs)

        MeterProvider.get_meter, Counter.add = get_meter, add
        MeterProvider.force_flush = lambda self, timeout_millis=0: 1 / 0

        provider = fanin_shim.setup()
        broken = provider.get_meter("broken")
        requests = broken.create_counter("b.requests")
        latency = broken.create_histogram("b.latency")
        ok = provider.get_meter("ok")
        failing, healthy = ok.create_counter("ok.failing"), ok.create_counter("ok.healthy")
        for _ in range(5):
            requests.add(1)
            latency.record(0.1)
            failing.add(1)
            healthy.add(1)
        assert provider.force_flush() is False
        provider.shutdown()
        print("the application went on")
        """,
        {**fanin.endpoint("http"), "OTEL_SERVICE_NAME": service},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the application went on"
    warnings = shim_warnings(done.stderr)
    assert len(warnings) == 4, done.stderr
    assert "Counter 'b.requests' failed" in warnings[0] and "TypeError: get_meter()" in warnings[0]
    assert "Histogram 'b.latency' failed" in warnings[1] and "TypeError" in warnings[1]
    assert "Counter 'ok.failing' failed" in warnings[2]
    assert "RuntimeError: disk on fire" in warnings[2]
    assert "Flushing metrics failed (ZeroDivisionError" in warnings[3]
    eventually(
        lambda: fanin.total("ok.healthy", service) == 5,
        lambda: f"totals: {fanin.answers(service)}",
    )
    assert fanin.total("ok.failing", service) is None


def test_a_pipeline_that_cannot_be_built_is_logged_once_per_process():
    done = run(
        """
        from opentelemetry.exporter.otlp.proto.http import metric_exporter
        import fanin_shim

        def refuse(self, *args, **kwargs):
            raise ValueError("no exporter today")

        metric_exporter.OTLPMetricExporter.__init__ = refuse
        provider = fanin_shim.setup(endpoint="http://127.0.0.1:9")
        counter = provider.get_meter("m").create_counter("c")
        for _ in range(3):
            counter.add(1)
        assert provider.sdk_provider() is None
        print("the application went on")
        """,
        {},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the application went on"
    [warning] = shim_warnings(done.stderr)
    assert "Cannot build the OpenTelemetry pipeline" in warning, done.stderr
    assert "ValueError: no exporter today" in warning, done.stderr
