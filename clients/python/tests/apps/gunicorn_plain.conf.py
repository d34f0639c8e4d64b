# gunicorn with no OpenTelemetry hooks: the naive setups.
