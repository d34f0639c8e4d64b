"""Where a worker exports and with which OTLP exporter.

:func:`resolve_target` turns the ``setup()`` arguments and the ``OTEL_EXPORTER_OTLP_*``
variables into one :class:`Target`, once, in the process that calls ``setup()``: a bad
setting fails there, before any worker forks. :func:`exporter` builds the SDK exporter for
that target, in each worker, when its pipeline is built.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from typing import NamedTuple, Optional, Tuple

from opentelemetry.sdk.metrics.export import MetricExporter

DEFAULT_HTTP_ENDPOINT = "http://127.0.0.1:4318"
DEFAULT_GRPC_ENDPOINT = "http://127.0.0.1:4317"
PROTOCOLS = ("http/protobuf", "grpc")

# The first release of the gRPC exporter that takes `channel_options`, which the unix
# socket needs (see `exporter`).
_GRPC_CHANNEL_OPTIONS_SINCE = (1, 35)


class ShimError(ValueError):
    """A setting the shim cannot work with: a bad endpoint or protocol, or a unix socket
    with a gRPC exporter too old for it."""


class Target(NamedTuple):
    """``kind`` is ``http`` (``where`` is the full URL), ``grpc`` (a URL) or ``unix`` (a
    socket path)."""

    kind: str
    where: str


def resolve_target(endpoint: Optional[str], protocol: Optional[str]) -> Target:
    """The target the arguments name, with ``OTEL_*`` variables filling what they leave unset.

    Raises :class:`ShimError` for an unknown protocol, an endpoint that is not a URL or an
    absolute unix socket path, or a unix socket the installed exporter cannot reach.
    """
    source = "protocol="
    if protocol is None:
        for variable in ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = _env(variable)
            if protocol is not None:
                source = variable
                break
    if protocol is not None and protocol not in PROTOCOLS:
        raise ShimError(
            f"unsupported OTLP protocol {protocol!r} (from {source}): use grpc or http/protobuf"
        )
    full_url = False
    if endpoint is None:
        endpoint = _env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        full_url = endpoint is not None
        if endpoint is None:
            endpoint = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint is not None and endpoint.startswith("unix:"):
        return Target("unix", _unix_path(endpoint, protocol))
    protocol = protocol or "http/protobuf"
    if protocol == "grpc":
        url = endpoint or DEFAULT_GRPC_ENDPOINT
    elif endpoint is None:
        url = DEFAULT_HTTP_ENDPOINT + "/v1/metrics"
    elif full_url or endpoint.rstrip("/").endswith("/v1/metrics"):
        url = endpoint
    else:
        url = endpoint.rstrip("/") + "/v1/metrics"
    if not (url.startswith("http://") or url.startswith("https://")):
        raise ShimError(f"{url}: use http://HOST:PORT, https://HOST:PORT or unix:/PATH")
    return Target("grpc" if protocol == "grpc" else "http", url)


def exporter(target: Target, timeout: Optional[float]) -> MetricExporter:
    """A new SDK exporter for ``target``. Imports only the exporter it needs."""
    if target.kind == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=target.where, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcExporter,
    )

    if target.kind == "unix":
        # grpc-core sends the socket path as :authority, which fanin's HTTP/2 server refuses
        # as malformed (RST_STREAM PROTOCOL_ERROR); any plain host name is accepted.
        return GrpcExporter(
            endpoint=f"unix://{target.where}",
            insecure=True,
            timeout=timeout,
            channel_options=(("grpc.default_authority", "localhost"),),
        )
    return GrpcExporter(
        endpoint=target.where, insecure=target.where.startswith("http://"), timeout=timeout
    )


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def _unix_path(endpoint: str, protocol: Optional[str]) -> str:
    if protocol == "http/protobuf":
        raise ShimError(f"{endpoint}: fanin's unix socket speaks OTLP/gRPC; use protocol grpc")
    path = endpoint[len("unix:"):]
    if path.startswith("//"):
        path = path[2:]
    if not path.startswith("/"):
        raise ShimError(f"{endpoint}: the socket path must be absolute")
    # Checked here rather than when a worker builds its exporter: there the error could only
    # be logged, and every worker would run without metrics.
    installed = metadata.version("opentelemetry-exporter-otlp-proto-grpc")
    if _release(installed) < _GRPC_CHANNEL_OPTIONS_SINCE:
        since = ".".join(map(str, _GRPC_CHANNEL_OPTIONS_SINCE))
        raise ShimError(
            f"{endpoint}: the unix socket needs opentelemetry-exporter-otlp-proto-grpc>={since}"
            f" (installed: {installed}); upgrade it, or export over http:// or grpc to a port"
        )
    return path


def _release(version: str) -> Tuple[int, ...]:
    """The leading release numbers of a version string: ``"1.35.0rc1"`` is ``(1, 35, 0)``."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group(0).split(".")) if found else ()
