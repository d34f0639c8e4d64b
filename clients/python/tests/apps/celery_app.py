"""A Celery app instrumented through fanin_shim, on kombu's filesystem transport: the broker
is a folder, so no broker server runs. CELERY_TRANSPORT_OPTIONS (JSON) names the folders;
the test sends tasks with the same options.

Each `count` task adds one to tasks.done, then creates the marker file `<marker>.<pid>`
(the pid of the pool process that ran it), so the test knows when every task is done. Each pool
process reports tasks.worker.up = 1, so it is an instance even if it ran no task.
"""

import json
import os
from pathlib import Path

from celery import Celery
from opentelemetry.metrics import Observation

import fanin_shim
import fanin_shim.celery

# The export interval comes from OTEL_METRIC_EXPORT_INTERVAL.
fanin_shim.setup(service_name=os.environ["APP_SERVICE"])
fanin_shim.celery.connect()

app = Celery("celery_app", broker="filesystem://")
app.conf.broker_transport_options = json.loads(os.environ["CELERY_TRANSPORT_OPTIONS"])
# Remote control needs a broadcast exchange; the test does not use it.
app.conf.worker_enable_remote_control = False

meter = fanin_shim.provider().get_meter("tasks")
DONE = meter.create_counter("tasks.done", unit="{task}")
meter.create_observable_gauge("tasks.worker.up", callbacks=[lambda _options: [Observation(1)]])


@app.task(name="count")
def count(marker):
    DONE.add(1)
    Path(f"{marker}.{os.getpid()}").touch()
