"""setup() without workers: the global provider is taken only when nobody else set one,
and bad settings fail at once with the reason. Each case runs in a fresh interpreter,
because OpenTelemetry's global provider can be set once per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str, **env):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env},
    )


def test_set_global_leaves_someone_elses_provider_and_warns():
    done = run(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        import fanin_shim
        theirs = MeterProvider()
        metrics.set_meter_provider(theirs)   # as auto-instrumentation would
        ours = fanin_shim.setup(service_name="x", set_global=True)
        assert metrics.get_meter_provider() is theirs
        print("kept")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kept"
    assert "was set before fanin_shim.setup()" in done.stderr
    assert "use the provider fanin_shim.setup() returned" in done.stderr


def test_set_global_installs_the_shim_when_nothing_else_did():
    done = run(
        """
        from opentelemetry import metrics
        import fanin_shim
        ours = fanin_shim.setup(service_name="x", set_global=True)
        assert metrics.get_meter_provider() is ours
        print("installed")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "installed"


@pytest.mark.parametrize(
    "call, message",
    [
        ('setup(protocol="http/json")', "unsupported OTLP protocol 'http/json'"),
        ('setup(endpoint="127.0.0.1:4318")', "use http://HOST:PORT"),
        ('setup(endpoint="unix:fanin.sock", protocol="grpc")', "must be absolute"),
        ('setup(endpoint="unix:/f.sock", protocol="http/protobuf")', "speaks OTLP/gRPC"),
    ],
)
def test_bad_settings_fail_at_setup(call, message):
    done = run(f"import fanin_shim\nfanin_shim.{call}")
    assert done.returncode != 0
    assert "ShimError" in done.stderr and message in done.stderr, done.stderr


def test_the_environment_fills_what_the_call_leaves_unset():
    done = run(
        """
        import fanin_shim
        print(fanin_shim.setup().target)
        print(fanin_shim.setup(protocol="grpc").target)
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9999/",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "http:http://127.0.0.1:9999/v1/metrics",
        "grpc:http://127.0.0.1:9999/",
    ]
