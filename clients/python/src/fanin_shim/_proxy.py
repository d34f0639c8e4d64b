"""The meter and instruments the shim hands out: proxies for the current process's SDK ones.

An instrument made before ``fork()`` (at import time in a ``--preload``-ed master) must
record into the worker's own pipeline, so each proxy resolves, on first use in a process,
to the SDK instrument of that process's pipeline. The proxies subclass the OpenTelemetry
API's instrument classes, so type checkers and ``isinstance`` see what they expect.

A proxy never raises into the application, as the OpenTelemetry API promises: a failing
SDK call (an incompatible SDK release, a bug, a broken exporter) drops the measurement and
is logged once per instrument on the ``fanin_shim`` logger.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Generic, NamedTuple, Optional, Sequence, TypeVar

from opentelemetry import metrics as metrics_api
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackT
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from opentelemetry.metrics import _Gauge as ApiGauge
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

    from fanin_shim._provider import ForkAwareMeterProvider
else:
    # The API exports the synchronous gauge as `_Gauge` while it is experimental (from 1.23;
    # `Gauge` is the name it will take when it is not). Releases before 1.23 have neither,
    # and their SDK cannot make one: `create_gauge` then gives a proxy that drops what it
    # records, as any failing instrument does.
    ApiGauge = (
        getattr(metrics_api, "Gauge", None)
        or getattr(metrics_api, "_Gauge", None)
        or metrics_api.Synchronous
    )

_log = logging.getLogger("fanin_shim")

_I = TypeVar("_I", bound=metrics_api.Instrument)

# Guards each proxy's "already logged" flag, so that concurrent failures log once.
_report_lock = threading.Lock()


class Scope(NamedTuple):
    """The arguments of ``get_meter``, replayed on each process's SDK provider."""

    name: str
    version: Optional[str]
    schema_url: Optional[str]
    attributes: Attributes

    def meter(self, sdk: SdkMeterProvider) -> metrics_api.Meter:
        # Before 1.26 the SDK's get_meter takes no attributes argument at all.
        if self.attributes is None:
            return sdk.get_meter(self.name, self.version, self.schema_url)
        return sdk.get_meter(self.name, self.version, self.schema_url, self.attributes)


class ProxyMeter(metrics_api.Meter):
    """A meter whose instruments resolve to the current process's pipeline."""

    def __init__(self, shim: ForkAwareMeterProvider, scope: Scope) -> None:
        super().__init__(scope.name, scope.version, scope.schema_url)
        self._shim = shim
        self._scope = scope

    def create_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> metrics_api.Counter:
        return _Counter(
            self._shim,
            self._scope,
            name,
            lambda meter: meter.create_counter(name, unit, description),
        )

    def create_up_down_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> metrics_api.UpDownCounter:
        return _UpDownCounter(
            self._shim,
            self._scope,
            name,
            lambda meter: meter.create_up_down_counter(name, unit, description),
        )

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Optional[Sequence[float]] = None,
    ) -> metrics_api.Histogram:
        def make(meter: metrics_api.Meter) -> metrics_api.Histogram:
            # SDK releases before the advisory (1.30) do not take the keyword at all.
            if explicit_bucket_boundaries_advisory is None:
                return meter.create_histogram(name, unit, description)
            return meter.create_histogram(
                name,
                unit,
                description,
                explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory,
            )

        return _Histogram(self._shim, self._scope, name, make)

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> ApiGauge:
        return _Gauge(
            self._shim,
            self._scope,
            name,
            lambda meter: meter.create_gauge(name, unit, description),
        )

    def create_observable_counter(
        self,
        name: str,
        callbacks: Optional[Sequence[CallbackT]] = None,
        unit: str = "",
        description: str = "",
    ) -> metrics_api.ObservableCounter:
        proxy = _ObservableCounter(
            self._shim,
            self._scope,
            name,
            lambda meter: meter.create_observable_counter(name, callbacks, unit, description),
        )
        self._shim._add_observable(proxy)
        return proxy

    def create_observable_up_down_counter(
        self,
        name: str,
        callbacks: Optional[Sequence[CallbackT]] = None,
        unit: str = "",
        description: str = "",
    ) -> metrics_api.ObservableUpDownCounter:
        proxy = _ObservableUpDownCounter(
            self._shim,
            self._scope,
            name,
            lambda meter: meter.create_observable_up_down_counter(
                name, callbacks, unit, description
            ),
        )
        self._shim._add_observable(proxy)
        return proxy

    def create_observable_gauge(
        self,
        name: str,
        callbacks: Optional[Sequence[CallbackT]] = None,
        unit: str = "",
        description: str = "",
    ) -> metrics_api.ObservableGauge:
        proxy = _ObservableGauge(
            self._shim,
            self._scope,
            name,
            lambda meter: meter.create_observable_gauge(name, callbacks, unit, description),
        )
        self._shim._add_observable(proxy)
        return proxy


class Proxy(Generic[_I]):
    """Resolves to this process's SDK instrument, made on first use here by ``make``.

    Like the API's own proxy instruments, it does not call the API base class's
    ``__init__``, which takes different arguments for synchronous and observable
    instruments and keeps nothing.
    """

    def __init__(
        self,
        shim: ForkAwareMeterProvider,
        scope: Scope,
        name: str,
        make: Callable[[metrics_api.Meter], _I],
    ) -> None:
        self._shim = shim
        self._scope = scope
        self._name = name
        self._make = make
        self._pid: Optional[int] = None
        self._real: Optional[_I] = None
        self._reported = False

    @property
    def name(self) -> str:
        return self._name

    def resolve_in(self, sdk: SdkMeterProvider, pid: int) -> Optional[_I]:
        """Makes this instrument in ``sdk``, the pipeline of process ``pid``.

        A failure is logged and not retried in this process: the instrument then drops
        what it records here.
        """
        try:
            real: Optional[_I] = self._make(self._scope.meter(sdk))
        except Exception as error:
            self._dropped(error)
            real = None
        # `_real` first: a thread that sees the new pid must see this process's instrument.
        self._real = real
        self._pid = pid
        return real

    def _current(self) -> Optional[_I]:
        pid = os.getpid()
        if self._pid == pid:
            return self._real
        sdk = self._shim.sdk_provider()
        if sdk is None:  # shut down, or this process has no pipeline: records go nowhere
            return None
        return self.resolve_in(sdk, pid)

    def _dropped(self, error: Exception) -> None:
        with _report_lock:
            if self._reported:
                return
            self._reported = True
        _log.warning(
            "%s %r failed and dropped a measurement (%s: %s); "
            "later failures of this instrument are not logged",
            type(self).__name__.lstrip("_"),
            self._name,
            type(error).__name__,
            error,
            exc_info=error,
        )


class _Counter(Proxy[metrics_api.Counter], metrics_api.Counter):
    def add(
        self, amount: float, attributes: Attributes = None, context: Optional[Context] = None
    ) -> None:
        try:
            real = self._current()
            if real is None:
                return
            # SDK releases before 1.28 take no context.
            if context is None:
                real.add(amount, attributes)
            else:
                real.add(amount, attributes, context)
        except Exception as error:
            self._dropped(error)


class _UpDownCounter(Proxy[metrics_api.UpDownCounter], metrics_api.UpDownCounter):
    def add(
        self, amount: float, attributes: Attributes = None, context: Optional[Context] = None
    ) -> None:
        try:
            real = self._current()
            if real is None:
                return
            if context is None:
                real.add(amount, attributes)
            else:
                real.add(amount, attributes, context)
        except Exception as error:
            self._dropped(error)


class _Histogram(Proxy[metrics_api.Histogram], metrics_api.Histogram):
    def record(
        self, amount: float, attributes: Attributes = None, context: Optional[Context] = None
    ) -> None:
        try:
            real = self._current()
            if real is None:
                return
            if context is None:
                real.record(amount, attributes)
            else:
                real.record(amount, attributes, context)
        except Exception as error:
            self._dropped(error)


class _Gauge(Proxy[ApiGauge], ApiGauge):
    def set(
        self, amount: float, attributes: Attributes = None, context: Optional[Context] = None
    ) -> None:
        try:
            real = self._current()
            if real is None:
                return
            if context is None:
                real.set(amount, attributes)
            else:
                real.set(amount, attributes, context)
        except Exception as error:
            self._dropped(error)


class _ObservableCounter(Proxy[metrics_api.ObservableCounter], metrics_api.ObservableCounter):
    pass


class _ObservableUpDownCounter(
    Proxy[metrics_api.ObservableUpDownCounter], metrics_api.ObservableUpDownCounter
):
    pass


class _ObservableGauge(Proxy[metrics_api.ObservableGauge], metrics_api.ObservableGauge):
    pass
