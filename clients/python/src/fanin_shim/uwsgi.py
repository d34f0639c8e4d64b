"""uWSGI hooks.

uWSGI forks its workers without running Python's ``os.register_at_fork`` hooks (unless
``py-call-osafterfork = true``) and, by default, without threads in workers, so an
OpenTelemetry SDK set up in the master exports nothing from the workers. Run uWSGI with
``enable-threads = true`` (the periodic exporter is a thread) and register the hooks once,
in the application module, after setting your own ``uwsgi.atexit`` if you have one::

    import fanin_shim, fanin_shim.uwsgi
    fanin_shim.setup(service_name="my-app")
    fanin_shim.uwsgi.register()

``register`` uses ``uwsgidecorators.postfork`` to give each worker its own pipeline, and
``uwsgi.atexit`` to flush its last values when it stops. An ``uwsgi.atexit`` the
application set before is kept: it runs first, then the flush, so what it records on the
way out is exported too.
"""

from __future__ import annotations

from typing import Callable, Optional

import fanin_shim


def postfork() -> None:
    """Gives this worker its own pipeline (call it from uWSGI's postfork hook)."""
    fanin_shim.provider()._forget_inherited()
    fanin_shim.provider().sdk_provider()


def register() -> None:
    """Registers :func:`postfork` and the exit flush with uWSGI (inside uWSGI only)."""
    import uwsgi  # exists only inside a running uWSGI server
    from uwsgidecorators import postfork as uwsgi_postfork

    uwsgi_postfork(postfork)
    uwsgi.atexit = _chain(getattr(uwsgi, "atexit", None))


def _chain(previous: Optional[Callable[[], object]]) -> Callable[[], None]:
    """An exit hook that runs ``previous`` (the application's) and then the flush, even if
    ``previous`` raises."""
    if previous is None:
        return fanin_shim.shutdown

    def at_exit() -> None:
        try:
            previous()
        finally:
            fanin_shim.shutdown()

    return at_exit
