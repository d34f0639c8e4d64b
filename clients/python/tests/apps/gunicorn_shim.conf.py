# gunicorn with fanin_shim: the two lines a user adds (plus the test's export interval).
import os

import fanin_shim

fanin_shim.setup(service_name=os.environ["APP_SERVICE"], export_interval_millis=200)
from fanin_shim.gunicorn import post_fork, worker_exit  # noqa: E402,F401
