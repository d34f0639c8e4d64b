"""uWSGI hooks.

uWSGI forks its workers without running Python's ``os.register_at_fork`` hooks (unless
``py-call-osafterfork = true``) and, by default, without threads in workers, so an
OpenTelemetry SDK set up in the master exports nothing from the workers. Run uWSGI with
``enable-threads = true`` (the periodic exporter is a thread) and register the hooks once,
in the application module::

    import fanin_shim, fanin_shim.uwsgi
    fanin_shim.setup(service_name="my-app")
    fanin_shim.uwsgi.register()

``register`` uses ``uwsgidecorators.postfork`` to give each worker its own pipeline, and
``uwsgi.atexit`` to flush its last values when it stops.
"""

from __future__ import annotations

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
    uwsgi.atexit = fanin_shim.shutdown

