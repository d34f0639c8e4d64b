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
  the call leaves unset.

Usage::

    import fanin_shim
    provider = fanin_shim.setup(service_name="checkout")
    requests = provider.get_meter("checkout").create_counter("http.requests")
    requests.add(1, {"route": "/cart"})
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from opentelemetry import metrics as metrics_api
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

__all__ = [
    "ForkAwareMeterProvider",
    "setup",
    "provider",
    "instance_id",
    "force_flush",
    "shutdown",
    "ShimError",
]

_log = logging.getLogger("fanin_shim")

DEFAULT_HTTP_ENDPOINT = "http://127.0.0.1:4318"
DEFAULT_GRPC_ENDPOINT = "http://127.0.0.1:4317"
PROTOCOLS = ("http/protobuf", "grpc")


class ShimError(ValueError):
    """A setting the shim cannot work with (bad endpoint or protocol)."""


def instance_id(pid: Optional[int] = None) -> str:
    """The ``service.instance.id`` the shim gives a process: ``<host>-pid-<pid>``."""
    return f"{socket.gethostname()}-pid-{os.getpid() if pid is None else pid}"


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def _resolve_target(endpoint: Optional[str], protocol: Optional[str]):
    """(kind, where): ("http", full URL), ("grpc", URL) or ("unix", path)."""
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
        if protocol == "http/protobuf":
            raise ShimError(f"{endpoint}: fanin's unix socket speaks OTLP/gRPC; use protocol grpc")
        path = endpoint[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ShimError(f"{endpoint}: the socket path must be absolute")
        return "unix", path
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
    return ("grpc" if protocol == "grpc" else "http"), url


def _exporter(kind: str, where: str, timeout: Optional[float]):
    if kind == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=where, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcExporter,
    )

    if kind == "unix":
        # grpc-core sends the socket path as :authority, which fanin's HTTP/2 server refuses
        # as malformed (RST_STREAM PROTOCOL_ERROR); any plain host name is accepted.
        return GrpcExporter(
            endpoint=f"unix://{where}",
            insecure=True,
            timeout=timeout,
            channel_options=(("grpc.default_authority", "localhost"),),
        )
    return GrpcExporter(endpoint=where, insecure=where.startswith("http://"), timeout=timeout)


class _ProcessLocalReader(PeriodicExportingMetricReader):
    """A periodic reader whose export thread is not restarted in a forked child.

    The SDK's reader restarts its thread after fork, so an inherited provider keeps
    exporting the parent's resource and counts from every child. The shim builds a new
    provider in the child instead, and the inherited one must stay silent.
    """

    def _at_fork_reinit(self) -> None:  # called by the SDK in the child
        self._daemon_thread = None


class _Pipeline:
    __slots__ = ("pid", "sdk")

    def __init__(self, pid: int, sdk: SdkMeterProvider):
        self.pid = pid
        self.sdk = sdk


class ForkAwareMeterProvider(metrics_api.MeterProvider):
    """A meter provider whose SDK pipeline belongs to the current process.

    Meters and instruments it hands out are proxies: each call goes to the instrument of
    the current process's pipeline, created on first use after a fork. Observable
    instruments are re-registered in each new pipeline with their callbacks.
    """

    def __init__(
        self,
        *,
        service_name: Optional[str] = None,
        endpoint: Optional[str] = None,
        protocol: Optional[str] = None,
        export_interval_millis: Optional[float] = None,
        timeout: Optional[float] = None,
        attributes: Optional[Mapping[str, Any]] = None,
    ):
        self._kind, self._where = _resolve_target(endpoint, protocol)
        self._service_name = service_name
        self._interval = export_interval_millis
        self._timeout = timeout
        self._attributes = dict(attributes or {})
        self._lock = threading.Lock()
        self._pipeline: Optional[_Pipeline] = None
        self._closed = False
        # (meter args, factory name, args, kwargs) of every observable instrument.
        self._observables: List[tuple] = []
        self._exit_hook_pid: Optional[int] = None
        weak_self = weakref.ref(self)

        def after_fork_in_child() -> None:
            shim = weak_self()
            if shim is not None:
                shim._forget_inherited()

        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=after_fork_in_child)

    @property
    def target(self) -> str:
        """Where this provider exports: ``http:URL``, ``grpc:URL`` or ``unix:PATH``."""
        return f"{self._kind}:{self._where}"

    # -- the pipeline of this process -------------------------------------------------

    def _forget_inherited(self) -> None:
        """In a forked child: drop the parent's pipeline without touching it.

        A lock held by another parent thread at fork time would stay held here, so the
        child gets a fresh lock rather than acquiring the inherited one.
        """
        self._lock = threading.Lock()
        self._pipeline = None
        self._exit_hook_pid = None

    def sdk_provider(self) -> Optional[SdkMeterProvider]:
        """This process's SDK provider, built on first use (None after shutdown)."""
        pipeline = self._pipeline
        pid = os.getpid()
        if pipeline is not None and pipeline.pid == pid:
            return pipeline.sdk
        with self._lock:
            if self._closed:
                return None
            pipeline = self._pipeline
            if pipeline is not None and pipeline.pid == pid:
                return pipeline.sdk
            # None, or inherited through a fork the at-fork hook did not see: abandoned.
            sdk = self._build(pid)
            self._pipeline = _Pipeline(pid, sdk)
            self._install_exit_hooks(pid)
        for meter_args, factory, args, kwargs in list(self._observables):
            getattr(sdk.get_meter(*meter_args), factory)(*args, **kwargs)
        return sdk

    def _build(self, pid: int) -> SdkMeterProvider:
        attributes: Dict[str, Any] = {}
        if self._service_name is not None:
            attributes["service.name"] = self._service_name
        attributes.update(self._attributes)
        attributes.update(
            {
                "service.instance.id": instance_id(pid),
                "process.pid": pid,
                "host.name": socket.gethostname(),
            }
        )
        reader = _ProcessLocalReader(
            _exporter(self._kind, self._where, self._timeout),
            export_interval_millis=self._interval,
        )
        # shutdown_on_exit=False: the SDK's own atexit hook would run in every child too and
        # flush the parent's pipeline from there.
        return SdkMeterProvider(
            metric_readers=[reader],
            resource=Resource.create(attributes),
            shutdown_on_exit=False,
        )

    def _install_exit_hooks(self, pid: int) -> None:
        if self._exit_hook_pid == pid:
            return
        self._exit_hook_pid = pid
        weak_self = weakref.ref(self)

        def at_exit() -> None:
            shim = weak_self()
            if shim is not None:
                shim._shutdown_if_built_in(pid)

        atexit.register(at_exit)
        # multiprocessing children leave through os._exit, which skips atexit but runs
        # multiprocessing's own finalizers.
        try:
            from multiprocessing import util

            util.Finalize(None, at_exit, exitpriority=10)
        except Exception:  # pragma: no cover - multiprocessing is in the standard library
            pass

    def _shutdown_if_built_in(self, pid: int) -> None:
        if os.getpid() == pid:
            self.shutdown()

    # -- the public interface -----------------------------------------------------------

    def get_meter(
        self,
        name: str,
        version: Optional[str] = None,
        schema_url: Optional[str] = None,
        attributes: Optional[Mapping[str, Any]] = None,
    ) -> "_ProxyMeter":
        return _ProxyMeter(self, (name, version, schema_url, attributes))

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Exports what this process recorded, now. True when nothing was left unsent."""
        pipeline = self._pipeline
        if pipeline is None or pipeline.pid != os.getpid():
            return True
        return pipeline.sdk.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 10_000) -> None:
        """Flushes this process's last values and stops its pipeline; later records are
        dropped. Safe to call more than once."""
        with self._lock:
            pipeline, self._pipeline = self._pipeline, None
            self._closed = True
        if pipeline is not None and pipeline.pid == os.getpid():
            pipeline.sdk.shutdown(timeout_millis=timeout_millis)


class _ProxyMeter(metrics_api.Meter):
    def __init__(self, shim: ForkAwareMeterProvider, meter_args: tuple):
        super().__init__(*meter_args[:3])
        self._shim = shim
        self._meter_args = meter_args

    def _sync(self, factory: str, args: tuple, kwargs: dict) -> "_ProxyInstrument":
        return _ProxyInstrument(self._shim, self._meter_args, factory, args, kwargs)

    def _observable(self, factory: str, args: tuple, kwargs: dict) -> "_ProxyInstrument":
        self._shim._observables.append((self._meter_args, factory, args, kwargs))
        proxy = _ProxyInstrument(self._shim, self._meter_args, factory, args, kwargs)
        if self._shim._pipeline is not None and self._shim._pipeline.pid == os.getpid():
            proxy._current()  # registered now in this process; later ones on their build
        return proxy

    def create_counter(self, name, unit="", description="", **kwargs):
        return self._sync("create_counter", (name, unit, description), kwargs)

    def create_up_down_counter(self, name, unit="", description="", **kwargs):
        return self._sync("create_up_down_counter", (name, unit, description), kwargs)

    def create_histogram(self, name, unit="", description="", **kwargs):
        return self._sync("create_histogram", (name, unit, description), kwargs)

    def create_gauge(self, name, unit="", description="", **kwargs):
        return self._sync("create_gauge", (name, unit, description), kwargs)

    def create_observable_counter(self, name, callbacks=None, unit="", description=""):
        return self._observable(
            "create_observable_counter", (name, callbacks, unit, description), {}
        )

    def create_observable_up_down_counter(self, name, callbacks=None, unit="", description=""):
        return self._observable(
            "create_observable_up_down_counter", (name, callbacks, unit, description), {}
        )

    def create_observable_gauge(self, name, callbacks=None, unit="", description=""):
        return self._observable(
            "create_observable_gauge", (name, callbacks, unit, description), {}
        )


class _ProxyInstrument:
    """Forwards to the current process's instrument, creating it on first use there."""

    __slots__ = ("_shim", "_meter_args", "_factory", "_args", "_kwargs", "_pid", "_real")

    def __init__(self, shim, meter_args, factory, args, kwargs):
        self._shim = shim
        self._meter_args = meter_args
        self._factory = factory
        self._args = args
        self._kwargs = kwargs
        self._pid = None
        self._real = None

    @property
    def name(self) -> str:
        return self._args[0]

    def _current(self):
        pid = os.getpid()
        if self._pid != pid or self._real is None:
            sdk = self._shim.sdk_provider()
            if sdk is None:  # shut down: records go nowhere
                return None
            meter = sdk.get_meter(*self._meter_args)
            self._real = getattr(meter, self._factory)(*self._args, **self._kwargs)
            self._pid = pid
        return self._real

    def add(self, amount, attributes=None, *args, **kwargs) -> None:
        real = self._current()
        if real is not None:
            real.add(amount, attributes, *args, **kwargs)

    def record(self, amount, attributes=None, *args, **kwargs) -> None:
        real = self._current()
        if real is not None:
            real.record(amount, attributes, *args, **kwargs)

    def set(self, amount, attributes=None, *args, **kwargs) -> None:
        real = self._current()
        if real is not None:
            real.set(amount, attributes, *args, **kwargs)


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
