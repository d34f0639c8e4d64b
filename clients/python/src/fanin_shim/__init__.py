"""Fork-aware OpenTelemetry metrics for pre-fork workers, exporting to fanin.

A process that forks workers (gunicorn, uWSGI, Celery prefork, ``multiprocessing``) hands
each child a copy of its OpenTelemetry state: every child then carries the parent's resource
(so N workers write one series), the parent's recorded counts, and, depending on the SDK, an
export thread that is gone or restarted. ``fanin_shim`` avoids all of it:

- the SDK provider is built lazily, in the process that records, and again in each child
  after ``fork()`` (a pid check, plus ``os.register_at_fork``). The inherited provider is
  abandoned untouched: its reader never restarts in the child and is never shut down
  there, so the parent's data is not exported twice;
- the resource carries ``service.instance.id = "<host>-pid-<pid>"``, ``process.pid`` and
  ``host.name`` on top of ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and the
  attributes you give (the three identity keys always win);
- meters come from the shim's own provider, returned by :func:`setup`; ``set_global=True``
  makes it the global one only if nothing else (auto-instrumentation) set one first, and
  warns otherwise;
- instruments created before the fork (at import time with ``--preload``) keep working in
  each worker: they are proxies that resolve to the current process's instrument;
- the worker's last values are flushed on orderly exit (``atexit``, the ``multiprocessing``
  exit hook, or the ready-made hooks in :mod:`fanin_shim.gunicorn`,
  :mod:`fanin_shim.uwsgi`, :mod:`fanin_shim.celery`);
- it exports over OTLP/HTTP (protobuf), OTLP/gRPC, or fanin's unix socket
  (``endpoint="unix:/run/fanin.sock"``), honouring ``OTEL_EXPORTER_OTLP_*`` for whatever
  the call leaves unset;
- instrumentation never breaks the application: a recording call that fails (an
  incompatible SDK, a broken exporter) is logged once per instrument on the ``fanin_shim``
  logger and its measurement dropped. Only :func:`setup` raises, for a bad setting.

Usage::

    import fanin_shim
    provider = fanin_shim.setup(service_name="checkout")
    requests = provider.get_meter("checkout").create_counter("http.requests")
    requests.add(1, {"route": "/cart"})

Inside: ``_export`` resolves the target and builds exporters, ``_provider`` holds the
per-process pipeline, ``_proxy`` the meter and instruments that resolve to it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from opentelemetry import metrics as metrics_api

from fanin_shim._export import ShimError
from fanin_shim._provider import ForkAwareMeterProvider, instance_id

__all__ = [
    "ForkAwareMeterProvider",
    "setup",
    "provider",
    "instance_id",
    "force_flush",
    "shutdown",
    "ShimError",
]

# Tracebacks and reprs name the public module, not the private one that defines them.
ShimError.__module__ = ForkAwareMeterProvider.__module__ = __name__

_log = logging.getLogger("fanin_shim")

_default: Optional[ForkAwareMeterProvider] = None


def setup(
    service_name: Optional[str] = None,
    endpoint: Optional[str] = None,
    protocol: Optional[str] = None,
    *,
    export_interval_millis: Optional[float] = None,
    timeout: Optional[float] = None,
    attributes: Optional[Mapping[str, Any]] = None,
    set_global: bool = False,
) -> ForkAwareMeterProvider:
    """Sets up metrics for this process and the workers it will fork; returns the provider.

    ``endpoint``: ``http://127.0.0.1:4318`` (HTTP, ``/v1/metrics`` appended),
    ``http://127.0.0.1:4317`` with ``protocol="grpc"``, or ``unix:/path/fanin.sock``.
    Unset values come from ``OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`` and ``..._PROTOCOL``,
    then fanin's HTTP port on 127.0.0.1. ``export_interval_millis`` defaults to
    ``OTEL_METRIC_EXPORT_INTERVAL`` or 60 s. Nothing is built and no thread is started
    until something records, so calling this in a pre-fork master is cheap and safe.

    With ``set_global=True`` the provider also becomes OpenTelemetry's global one, unless
    something else set a global provider first: then a warning says so and the global is
    left alone (use the returned provider).
    """
    global _default
    shim = ForkAwareMeterProvider(
        service_name=service_name,
        endpoint=endpoint,
        protocol=protocol,
        export_interval_millis=export_interval_millis,
        timeout=timeout,
        attributes=attributes,
    )
    if set_global:
        _set_global(shim)
    _default = shim
    return shim


def _set_global(shim: ForkAwareMeterProvider) -> None:
    from opentelemetry.metrics import _internal as api_internal

    current = getattr(api_internal, "_METER_PROVIDER", None)
    if current is not None and not isinstance(current, ForkAwareMeterProvider):
        _log.warning(
            "a global meter provider (%s) was set before fanin_shim.setup(), probably by "
            "auto-instrumentation; it was left in place, so meters from "
            "opentelemetry.metrics.get_meter() will not carry each worker's identity: use "
            "the provider fanin_shim.setup() returned",
            type(current).__name__,
        )
        return
    metrics_api.set_meter_provider(shim)


def provider() -> ForkAwareMeterProvider:
    """The provider the last :func:`setup` call made."""
    if _default is None:
        raise RuntimeError("call fanin_shim.setup() first")
    return _default


def force_flush(timeout_millis: float = 10_000) -> bool:
    """Flushes the default provider (a no-op before :func:`setup`)."""
    return True if _default is None else _default.force_flush(timeout_millis)


def shutdown(timeout_millis: float = 10_000) -> None:
    """Flushes and stops the default provider (a no-op before :func:`setup`)."""
    if _default is not None:
        _default.shutdown(timeout_millis)
