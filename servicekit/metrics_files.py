"""Where an instance's metrics live: the directory its gunicorn workers write them to, and the port and
path they are served on (METRICS_PORT and `METRICS_PATH`, in the instance's Consul meta as `metrics_port`
and `metrics_path`, so that Prometheus, `./scripts/status --traffic` and the tests find them).

Each worker has its own memory, so prometheus-client's multiprocess mode keeps every value in a file per
worker process under PROMETHEUS_MULTIPROC_DIR, and a scrape, answered by any one worker, adds up the files
of them all. The library picks file-backed or in-memory values once, when it is first imported, from that
variable; so the master sets it while gunicorn reads the config file, before anything imports the
library, and the workers (forked later, loading the app after the fork) inherit it. This module therefore
never imports prometheus_client at import time. The client's documentation asks for a directory wiped
before each start: the master empties its own instance's directory in `when_ready`, before the first fork
(not on a HUP: the workers it replaces keep their counts).

The directory lives under the instance's run directory, never in a shared one such as /tmp: the master
creates and truncates files there, so a directory another local user made first, or a symlink, would let
that user choose where (servicekit.private_files). It is made 0700 by the instance, and an existing one
that is not the instance's own is refused: the instance stops with an error that names it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import stack
from .private_files import private_dir
from .settings import Settings

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"


def meta(settings: Settings) -> dict[str, str]:
    """What the instance's Consul registration says of its metrics (servicekit.registration)."""
    return {"metrics_path": METRICS_PATH, "metrics_port": str(settings.metrics_port)}


def metrics_url(service: Mapping[str, Any], node_address: str = "") -> str | None:
    """An instance's metrics URL from its Consul entry (a health or catalog entry's `Service`, or an agent's
    service): its address (the node's when it registered none) and the port and path of its meta. None
    without a `metrics_path` (a Hazelcast member); at the service's own port when it has no `metrics_port`
    (a revision from before the metrics had a port of their own: the bench's baselines)."""
    found = service.get("Meta") or {}
    if not found.get("metrics_path"):
        return None
    address = service.get("Address") or node_address
    return f"http://{address}:{found.get('metrics_port') or service['Port']}{found['metrics_path']}"


def directory(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """`METRICS_DIR/<instance id>`, one per instance: two instances sharing a directory would count each
    other's requests, and each would wipe the other's at start. METRICS_DIR defaults to `metrics/` in the
    run directory of ./scripts/up (STACK_RUN_DIR, by default run/ in the checkout), for an instance started
    by hand too: the checkout belongs to whoever cloned it, unlike /tmp, and the instance id, with its
    port, keeps such an instance apart from the stack's."""
    env = os.environ if env is None else env
    base = Path(env["METRICS_DIR"]) if env.get("METRICS_DIR") else stack.run_dir(env) / "metrics"
    return base / settings.instance_id


def use(settings: Settings) -> Path:
    """Point this process (the master, reading its config file) and the workers it forks at the instance's
    directory. Idempotent: a HUP reads the config file again."""
    path = directory(settings)
    os.environ[ENV] = str(path)
    return path


def reset() -> None:
    """Make the directory, or check that the existing one is the instance's own (UnsafePath otherwise), and
    empty it; in the master before the first fork (`when_ready`): files left by an earlier run of the same
    instance would be counted again."""
    path = private_dir(Path(os.environ[ENV]), "the metrics directory (METRICS_DIR/<instance id>)")
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
