"""Celery prefork hooks. In the module that creates the Celery app::

    import fanin_shim, fanin_shim.celery
    fanin_shim.setup(service_name="my-worker")
    fanin_shim.celery.connect()

Each pool process then builds its own pipeline when Celery initialises it
(``worker_process_init``) and flushes its last values when it shuts down
(``worker_process_shutdown``).
"""

from __future__ import annotations

import fanin_shim


def _init(**_kwargs) -> None:
    fanin_shim.provider().sdk_provider()


def _shutdown(**_kwargs) -> None:
    fanin_shim.shutdown()


def connect() -> None:
    """Connects the shim to Celery's pool-process signals."""
    from celery.signals import worker_process_init, worker_process_shutdown

    worker_process_init.connect(_init, weak=False)
    worker_process_shutdown.connect(_shutdown, weak=False)
