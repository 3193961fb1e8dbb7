"""Logging setup: once per process, every line carrying the instance id."""

from __future__ import annotations

import logging


def configure(instance_id: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [{instance_id} pid=%(process)d] %(name)s: %(message)s",
        force=True,
    )
    # The Hazelcast client logs every connection attempt at INFO; keep its warnings only.
    logging.getLogger("hazelcast").setLevel(logging.WARNING)
