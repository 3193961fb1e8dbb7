"""Where an instance's metrics live: the directory its gunicorn workers write them to, and the path they are
served on (`METRICS_PATH`, also in the instance's Consul meta so that Prometheus finds it).

Each worker has its own memory, so prometheus-client's multiprocess mode keeps every value in a file per
worker process under PROMETHEUS_MULTIPROC_DIR, and a scrape, answered by any one worker, adds up the files
of them all. The library picks file-backed or in-memory values once, when it is first imported, from that
variable; so the master sets it while gunicorn reads the config file, before anything imports the
library, and the workers (forked later, loading the app after the fork) inherit it. This module therefore
never imports prometheus_client at import time. The client's documentation asks for a directory wiped
before each start: the master empties its own instance's directory in `when_ready`, before the first fork
(not on a HUP: the workers it replaces keep their counts).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .settings import Settings

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"


def directory(settings: Settings, env: dict[str, str] | None = None) -> Path:
    """`METRICS_DIR/<instance id>`, one per instance: two instances sharing a directory would count each
    other's requests, and each would wipe the other's at start. METRICS_DIR defaults to a folder of this
    user's in the system's temporary directory."""
    env = dict(os.environ) if env is None else env
    base = env.get("METRICS_DIR") or os.path.join(tempfile.gettempdir(), f"servicekit-metrics-{os.getuid()}")
    return Path(base) / settings.instance_id


def use(settings: Settings) -> Path:
    """Point this process (the master, reading its config file) and the workers it forks at the instance's
    directory. Idempotent: a HUP reads the config file again."""
    path = directory(settings)
    os.environ[ENV] = str(path)
    return path


def reset() -> None:
    """Empty the directory and make it again; in the master before the first fork (`when_ready`): files left
    by an earlier run of the same instance would be counted again."""
    path = Path(os.environ[ENV])
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


def remove() -> None:
    """Remove the directory once every worker has stopped (`on_exit`)."""
    raw = os.environ.get(ENV)
    if raw:
        shutil.rmtree(raw, ignore_errors=True)


def child_exit(server, worker) -> None:
    """gunicorn's child_exit hook, in the master: a dead worker's live gauges (its watch's view) stop counting.
    Its counters and histograms stay in the directory, so the instance's totals survive the worker."""
    from prometheus_client import multiprocess  # only once the master set ENV (see the module)

    multiprocess.mark_process_dead(worker.pid)
