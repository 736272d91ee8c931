"""The logs app with the app's own logging configuration, done as many apps do it at import time:
a dictConfig of the root logger (which, by default, disables every logger that exists already,
the agent's included) with a format that shows the trace ids the agent adds to each record."""

import logging.config

logging.config.dictConfig(
    {
        "version": 1,
        "formatters": {
            "app": {"format": "APP %(levelname)s %(name)s trace_id=%(trace_id)s span_id=%(span_id)s | %(message)s"}
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
    }
)

from logs_app import app  # noqa: E402,F401

logging.getLogger("logs_applog").info("logging configured")
