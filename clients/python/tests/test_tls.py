"""The official OpenTelemetry Python SDK, configured only through its standard environment
variables, exports to fanin over TLS with a bearer token (OTEL_EXPORTER_OTLP_CERTIFICATE,
OTEL_EXPORTER_OTLP_HEADERS), over OTLP/HTTP and gRPC; without the token, or with another
one, nothing is stored and fanin counts the refusals. The certificates are made here, when
the test runs."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Fanin

TOKEN = "py-writers-3c9d"


def certificates(directory: Path):
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fanin python test CA"))
        .issuer_name(name("fanin python test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("fanin"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_fanin():
    """fanin with TLS and a token (from the environment) on both OTLP listeners."""
    with tempfile.TemporaryDirectory(prefix="fanin-py-tls-") as tmp:
        ca, cert, key = certificates(Path(tmp))
        keys = (
            f"tls: {{cert_file: {json.dumps(str(cert))}, key_file: {json.dumps(str(key))}}}, "
            'auth: {token: "${env:FANIN_TEST_TOKEN}"}'
        )
        server = Fanin(Path(tmp), otlp_keys=keys, env={"FANIN_TEST_TOKEN": TOKEN})
        server.ca = ca
        try:
            yield server
        finally:
            server.stop()


# Nothing fanin-specific: the SDK's exporter takes everything from OTEL_* variables.
EXPORT = """
import sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
if sys.argv[1] == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
else:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=3_600_000)
provider = MeterProvider(
    metric_readers=[reader],
    resource=Resource.create({"service.name": sys.argv[2], "service.instance.id": "w1"}),
)
provider.get_meter("tls").create_counter("tls.jobs").add(int(sys.argv[3]))
provider.force_flush()
provider.shutdown()
"""


def export(server: Fanin, transport: str, service: str, value: int, headers: str | None):
    address = server.addresses["otlp-http" if transport == "http" else "otlp-grpc"]
    env = {
        "PATH": "/usr/bin:/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://{address}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf" if transport == "http" else "grpc",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(server.ca),
        # One attempt: a refused export is not retried for minutes.
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
    }
    if headers is not None:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = headers
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXPORT), transport, service, str(value)],
        capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sdk_exports_over_tls_with_a_token(tls_fanin, transport):
    service = f"tls-{transport}"
    done = export(tls_fanin, transport, service, 7, f"authorization=Bearer%20{TOKEN}")
    assert done.returncode == 0, done.stderr
    assert tls_fanin.total("tls.jobs", service) == 7, done.stderr
    done = export(tls_fanin, transport, service + "-2", 5, f"authorization=Bearer%20{TOKEN}")
    assert done.returncode == 0, done.stderr
    assert tls_fanin.total("tls.jobs", service + "-2") == 5, done.stderr


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_without_the_token_nothing_is_stored_and_refusals_are_counted(tls_fanin, transport):
    service = f"tls-refused-{transport}"
    for headers in (None, "authorization=Bearer%20not-the-token"):
        export(tls_fanin, transport, service, 3, headers)
    assert tls_fanin.total("tls.jobs", service) is None
    refused = tls_fanin.get("/api/v1/stats")["unauthenticated"][transport]
    assert refused >= 2, refused
