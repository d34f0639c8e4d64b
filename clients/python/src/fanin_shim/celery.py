"""Celery prefork hooks. In the module that creates the Celery app::

    import fanin_shim, fanin_shim.celery
    fanin_shim.setup(service_name="my-worker")
    fanin_shim.celery.connect()

Each pool process then builds its own pipeline when Celery initialises it
(``worker_process_init``) and flushes its last values when it shuts down
(``worker_process_shutdown``). Pool processes leave through ``os._exit``, so without the
second hook their last values would be lost.
"""

from __future__ import annotations

import fanin_shim


def connect() -> None:
    """Connects the shim to Celery's pool-process signals."""
    from celery.signals import worker_process_init, worker_process_shutdown

    worker_process_init.connect(_init, weak=False)
    worker_process_shutdown.connect(_shutdown, weak=False)


def _init(**_signal: object) -> None:
    fanin_shim.provider().sdk_provider()


def _shutdown(**_signal: object) -> None:
    fanin_shim.shutdown()
