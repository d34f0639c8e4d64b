"""The fork-aware meter provider: one SDK pipeline per process, built in that process.

The pipeline records the pid that built it; another pid means a new pipeline. The
inherited one is abandoned untouched: its reader thread is not restarted in the child and
it is never flushed or shut down there, so the parent's data is not exported twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import weakref
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from opentelemetry import metrics as metrics_api
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.util.types import Attributes

from fanin_shim._export import exporter, resolve_target
from fanin_shim._proxy import Proxy, ProxyMeter, Scope

_log = logging.getLogger("fanin_shim")


def instance_id(pid: Optional[int] = None) -> str:
    """The ``service.instance.id`` the shim gives a process: ``<host>-pid-<pid>``."""
    return f"{socket.gethostname()}-pid-{os.getpid() if pid is None else pid}"


class _ProcessLocalReader(PeriodicExportingMetricReader):
    """A periodic reader whose export thread is not restarted in a forked child.

    The SDK's reader restarts its thread after fork, so an inherited provider keeps
    exporting the parent's resource and counts from every child. The shim builds a new
    provider in the child instead, and the inherited one must stay silent.
    """

    def _at_fork_reinit(self) -> None:  # called by the SDK in the child
        self._daemon_thread = None


class _Pipeline(NamedTuple):
    """The SDK provider built in process ``pid``; ``sdk`` is None if building it failed."""

    pid: int
    sdk: Optional[SdkMeterProvider]


class ForkAwareMeterProvider(metrics_api.MeterProvider):
    """A meter provider whose SDK pipeline belongs to the current process.

    Meters and instruments it hands out are proxies: each call goes to the instrument of
    the current process's pipeline, created on first use after a fork. Observable
    instruments are re-registered in each new pipeline with their callbacks. Nothing it
    hands out raises into the application: failures are logged and measurements dropped.
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
    ) -> None:
        self._target = resolve_target(endpoint, protocol)
        self._service_name = service_name
        self._interval = export_interval_millis
        self._timeout = timeout
        self._attributes: Dict[str, Any] = dict(attributes or {})
        self._lock = threading.Lock()
        self._pipeline: Optional[_Pipeline] = None
        self._closed = False
        self._observables: List[Proxy[Any]] = []
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
        return f"{self._target.kind}:{self._target.where}"

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
        """This process's SDK provider, built on first use here.

        None after :meth:`shutdown`, or when building it failed in this process (logged
        once; its measurements are then dropped). Never raises.
        """
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
            sdk = self._build_or_log(pid)
            if sdk is not None:
                for proxy in self._observables:
                    proxy.resolve_in(sdk, pid)
                self._install_exit_hooks(pid)
            self._pipeline = _Pipeline(pid, sdk)
        return sdk

    def _add_observable(self, proxy: Proxy[Any]) -> None:
        """Keeps ``proxy`` for every pipeline built from now on, and registers it in this
        process's pipeline if there is one. Under the lock, so a pipeline being built
        concurrently gets it exactly once."""
        with self._lock:
            self._observables.append(proxy)
            pipeline = self._pipeline
            if pipeline is not None and pipeline.pid == os.getpid() and pipeline.sdk is not None:
                proxy.resolve_in(pipeline.sdk, pipeline.pid)

    def _build_or_log(self, pid: int) -> Optional[SdkMeterProvider]:
        try:
            return self._build(pid)
        except Exception as error:
            _log.warning(
                "Cannot build the OpenTelemetry pipeline of process %d (%s: %s); "
                "its measurements are dropped",
                pid,
                type(error).__name__,
                error,
                exc_info=error,
            )
            return None

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
            exporter(self._target, self._timeout),
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
            if shim is not None and os.getpid() == pid:
                shim.shutdown()

        atexit.register(at_exit)
        # multiprocessing children leave through os._exit, which skips atexit but runs
        # multiprocessing's own finalizers.
        from multiprocessing import util

        util.Finalize(None, at_exit, exitpriority=10)

    # -- the public interface -----------------------------------------------------------

    def get_meter(
        self,
        name: str,
        version: Optional[str] = None,
        schema_url: Optional[str] = None,
        attributes: Attributes = None,
    ) -> metrics_api.Meter:
        return ProxyMeter(self, Scope(name, version, schema_url, attributes))

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Exports what this process recorded, now. True when nothing was left unsent;
        False also when the flush failed (logged)."""
        pipeline = self._pipeline
        if pipeline is None or pipeline.pid != os.getpid() or pipeline.sdk is None:
            return True
        try:
            return pipeline.sdk.force_flush(timeout_millis=timeout_millis)
        except Exception as error:
            _log.warning("Flushing metrics failed (%s: %s)", type(error).__name__, error,
                         exc_info=error)
            return False

    def shutdown(self, timeout_millis: float = 10_000) -> None:
        """Flushes this process's last values and stops its pipeline; later records are
        dropped. Safe to call more than once; never raises (a failure is logged)."""
        with self._lock:
            pipeline, self._pipeline = self._pipeline, None
            self._closed = True
        if pipeline is None or pipeline.pid != os.getpid() or pipeline.sdk is None:
            return
        try:
            pipeline.sdk.shutdown(timeout_millis=timeout_millis)
        except Exception as error:
            _log.warning("Shutting down metrics failed (%s: %s)", type(error).__name__, error,
                         exc_info=error)
