"""Logging setup: once per process, every line carrying the instance id, and the request id inside a request.

LOG_FORMAT=text (the default): `TIME LEVEL [INSTANCE pid=N rid=REQUEST] LOGGER: MESSAGE`, the ` rid=...`
only inside a request or a consumed item; TIME is UTC to the microsecond (`2026-11-29 16:00:00.123456Z`),
so lines of different instances and hosts sort into the order they were written. LOG_FORMAT=json: one
JSON object per line, for a log shipper. `./scripts/trace` reads both.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
from typing import Any

# LOG_FORMAT's values, the default first (servicekit.settings checks the variable against them).
LOG_FORMATS = ("text", "json")


def utc_stamp(created: float) -> str:
    """A record's time as the text format writes it: UTC, microseconds, a Z."""
    return datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%fZ")


class TextFormatter(logging.Formatter):
    """The text format, its time in UTC to the microsecond (asctime would be local time, to the millisecond)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (stdlib's name)
        return utc_stamp(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, microseconds), level, logger, message, request_id, service,
    instance, pid, and the exception's text when there is one. A dozen lines of stdlib: no dependency."""

    def __init__(self, service: str = "", instance: str = ""):
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "service": self.service,
            "instance": self.instance,
            "pid": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def logconfig(instance_id: str, level: str = "INFO", service: str = "", log_format: str = "text") -> dict[str, Any]:
    """The one logging configuration, as a dictConfig dict: gunicorn takes it as `logconfig_dict`, so its
    own lines (master and workers, access lines included) carry the instance and request ids like the
    services' lines."""
    if log_format == "json":
        formatter: dict[str, Any] = {"()": JsonFormatter, "service": service, "instance": instance_id}
    else:
        tag = instance_id.replace("%", "%%")
        formatter = {
            "()": TextFormatter,
            "fmt": f"%(asctime)s %(levelname)s [{tag} pid=%(process)d%(request_tag)s] %(name)s: %(message)s",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "servicekit.request_id.LogFilter"}},
        "formatters": {"instance": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "instance",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            },
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


def configure(instance_id: str, level: str = "INFO", service: str = "", log_format: str = "text") -> None:
    logging.config.dictConfig(logconfig(instance_id, level, service, log_format))
