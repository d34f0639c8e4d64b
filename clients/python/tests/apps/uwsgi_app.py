"""The WSGI app of tests/apps/shim_app.py under uWSGI, set up as the README says: setup()
and fanin_shim.uwsgi.register() in the application module.

The app sets its own uwsgi.atexit before register(), which must keep it. That hook leaves a
marker file per process in APP_MARKERS and, in workers, counts app.exits: the count
reaches fanin only if the shim's flush runs after the app's hook.
"""

import os
from pathlib import Path

import uwsgi

import fanin_shim
import fanin_shim.uwsgi

# The export interval comes from OTEL_METRIC_EXPORT_INTERVAL.
fanin_shim.setup(service_name=os.environ["APP_SERVICE"])
EXITS = fanin_shim.provider().get_meter("app").create_counter("app.exits")


def record_exit():
    if uwsgi.worker_id() > 0:
        EXITS.add(1)
    (Path(os.environ["APP_MARKERS"]) / f"atexit-{os.getpid()}").touch()


uwsgi.atexit = record_exit
fanin_shim.uwsgi.register()

from shim_app import app  # noqa: E402,F401 - needs setup() first
