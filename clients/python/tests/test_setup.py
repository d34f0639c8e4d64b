"""setup() without workers: the global provider is taken only when nobody else set one,
and bad settings fail at once with the reason. Each case runs in a fresh interpreter,
because OpenTelemetry's global provider can be set once per process. Also: the SDK range
pyproject.toml declares is the one the tests run on."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[1]


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


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.match(r"[\d.]*\d", version).group(0).split("."))


def test_a_unix_socket_needs_a_grpc_exporter_with_channel_options():
    # The shim sets a gRPC channel option for the unix socket, which the exporter takes
    # from 1.35: with an older one, setup() refuses rather than every worker failing later.
    installed = metadata.version("opentelemetry-exporter-otlp-proto-grpc")
    done = run('import fanin_shim\nprint(fanin_shim.setup(endpoint="unix:/run/f.sock").target)')
    if release(installed) >= (1, 35):
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "unix:/run/f.sock"
    else:
        assert done.returncode != 0
        assert (
            "ShimError: unix:/run/f.sock: the unix socket needs "
            f"opentelemetry-exporter-otlp-proto-grpc>=1.35 (installed: {installed})"
        ) in done.stderr, done.stderr


def pins(requirements: str) -> dict[str, str]:
    text = (CLIENT / requirements).read_text()
    return dict(re.findall(r"^(opentelemetry-[a-z-]+)==(\S+)$", text, re.MULTILINE))


def test_the_declared_sdk_range_is_the_tested_one():
    declared = dict(
        re.findall(r'"(opentelemetry-[a-z-]+)>=([^",]+)"', (CLIENT / "pyproject.toml").read_text())
    )
    oldest, newest = pins("requirements-oldest.txt"), pins("requirements-test.txt")
    assert declared.keys() == oldest.keys() == newest.keys() == {
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-exporter-otlp-proto-grpc",
    }, (declared, oldest, newest)
    assert declared == oldest, "pyproject.toml's lower bounds are requirements-oldest.txt"
    assert all(release(newest[name]) > release(oldest[name]) for name in declared), newest
    # And this run is one of the two.
    running = {name: metadata.version(name) for name in declared}
    assert running in (oldest, newest), running
