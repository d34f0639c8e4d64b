"""gunicorn hooks. In ``gunicorn.conf.py``::

    import fanin_shim; fanin_shim.setup(service_name="my-app")
    from fanin_shim.gunicorn import post_fork, worker_exit

``post_fork`` builds the worker's own pipeline as soon as it starts (so it exports even
before it records anything, and instruments created at import time with ``--preload``
resolve to it); ``worker_exit`` flushes the worker's last values when it stops, including a
worker recycled by ``--max-requests``.
"""

from __future__ import annotations

import fanin_shim


def post_fork(server: object, worker: object) -> None:
    """gunicorn's ``post_fork`` hook: builds this worker's pipeline."""
    fanin_shim.provider().sdk_provider()


def worker_exit(server: object, worker: object) -> None:
    """gunicorn's ``worker_exit`` hook: flushes this worker's last values."""
    fanin_shim.shutdown()
