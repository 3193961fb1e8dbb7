"""Logging setup: once per process, every line carrying the instance id."""

from __future__ import annotations

import logging.config
from typing import Any


def logconfig(instance_id: str, level: str = "INFO") -> dict[str, Any]:
    """The one logging configuration, as a dictConfig dict: gunicorn takes it as `logconfig_dict`, so its
    own lines (master and workers) carry the instance id like the services' lines."""
    tag = instance_id.replace("%", "%%")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "instance": {"format": f"%(asctime)s %(levelname)s [{tag} pid=%(process)d] %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "instance", "stream": "ext://sys.stderr"},
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's loggers go through the root handler, in the same format.
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            # Off, as before logconfig_dict enabled them: a line per request would swamp the logs (and the
            # bench). Set it to INFO to see them.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
            # The Hazelcast client logs every connection attempt at INFO; keep its warnings only.
            "hazelcast": {"level": "WARNING"},
        },
    }


def configure(instance_id: str, level: str = "INFO") -> None:
    logging.config.dictConfig(logconfig(instance_id, level))
