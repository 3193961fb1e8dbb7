"""gunicorn server hooks shared by the three services.

The master registers the instance once (`when_ready`, after the socket is bound), keeps it registered,
and deregisters it once; workers never talk to Consul's agent endpoints. Before it registers, it serves
the instance's metrics on their own port (servicekit.metrics), until it exits.

Stopping happens in this order, whatever the signal: the workers stop taking work from shared queues
(the master closes the `Intake` and waits for takes in progress), the master leaves Consul, on SIGTERM
it keeps serving for `drain_seconds` while the facades' watches drop the instance, and only then
gunicorn stops the workers. Nothing is taken by an instance that no facade can reach any more, and a
rolling restart loses no request.

gunicorn's other master signals, as they meet a Consul registration:
- HUP re-executes gunicorn.conf.py and replaces the workers. Nothing here is built when the config
  file runs, so a reload builds no second keeper; the registration made in `when_ready` stays.
- USR2 is refused: gunicorn would start a second master on the same socket, so with the same instance
  id, and whichever master exits first would deregister the other.
- INT (Ctrl-C) and QUIT stop the workers at once, after leaving Consul (no drain: they are gunicorn's
  quick stop). Workers ignore SIGINT, which a terminal sends to the whole process group, and leave
  their stop to the master.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import gunicorn_config, metrics, metrics_files, registration
from .lifecycle import close_app
from .settings import Settings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

# How long the master waits for takes in progress once it closed the intake. Longer than a consumer waits
# for an item in an empty queue (messages_svc.consumer.POLL_TIMEOUT, 1 s), so a take that is waiting ends.
INTAKE_CLOSE_TIMEOUT = 3.0
# How often close() looks again while takes are in progress (flock has no timeout of its own).
_CLOSE_POLL = 0.01


class Intake:
    """The master's word to its workers: "take no more work from shared queues", with their answer.

    Made in the master before the first fork, so every worker shares it. A flag alone would not do: a
    consumer that checked it a moment before the master set it may still be inside a poll that takes an
    item after the instance left Consul. So each take holds a shared lock (flock) on a file the master
    opened, and `close` sets the flag, then waits until it can lock the file exclusively: until no take is in
    progress. The kernel drops the locks of a process that dies, so a worker killed at any moment, inside a
    take or not, leaves nothing held. (A multiprocessing Condition and a count of takes did: a worker killed
    while it held the Condition's lock stopped every later take of every worker, for good.)
    """

    def __init__(self):
        # Unlinked from the start (nothing is left on disk however the master ends); each process opens it
        # again through /proc for locks of its own: a flock belongs to an open file, which a fork shares.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the intake)
        self._closed = multiprocessing.get_context("fork").RawValue(ctypes.c_bool, False)
        self._local = threading.local()

    def _open(self):
        return open(f"/proc/self/fd/{self._file.fileno()}", "rb", buffering=0)

    def _lock_file(self):
        """This thread's own open file (made again after a fork: the parent's would share its locks)."""
        held = getattr(self._local, "file", None)
        if held is None or held[0] != os.getpid():
            held = self._local.file = (os.getpid(), self._open())
        return held[1]

    @contextmanager
    def taking(self) -> Iterator[bool]:
        """Hold the intake open for one take (a poll and what is done with its item). Yields False, and
        holds nothing, once the intake is closed. One at a time in a thread: the lock is the thread's."""
        lock = self._lock_file()
        # The flag is read after the lock is taken; close() sets it before it tries the lock, so a take
        # either sees it or is waited for.
        fcntl.flock(lock, fcntl.LOCK_SH)
        if self._closed.value:
            fcntl.flock(lock, fcntl.LOCK_UN)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self, timeout: float = INTAKE_CLOSE_TIMEOUT) -> bool:
        """Refuse new takes; wait for those in progress. False when some did not end in `timeout` (a worker
        busy: one killed holds nothing)."""
        deadline = time.monotonic() + timeout
        self._closed.value = True
        with self._open() as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(_CLOSE_POLL)
                    continue
                fcntl.flock(lock, fcntl.LOCK_UN)
                return True

    @property
    def closed(self) -> bool:
        return self._closed.value


_intake: Intake | None = None


def intake() -> Intake:
    """This process's intake: in a worker, the one its master made before forking it."""
    global _intake
    if _intake is None:
        _intake = Intake()
    return _intake


class _Master:
    """The registration and the stop sequence of one gunicorn master, made once in `when_ready`."""

    def __init__(self, server, settings: Settings):
        self._settings = settings
        self._intake = intake()  # before the first worker forks
        self._keeper = registration.RegistrationKeeper(settings)
        self._left = False
        self._graceful_stop = server.handle_term
        self._quick_stops = {"INT": server.handle_int, "QUIT": server.handle_quit}
        self._reload = server.handle_hup
        self._metrics: WSGIServer | None = None

    def start(self, server) -> None:
        # Bound before the registration names the port; an instance that cannot serve its metrics stops
        # (gunicorn prints a RuntimeError from a start hook and exits 1) rather than run unseen.
        try:
            self._metrics = metrics.serve(
                self._settings.host, self._settings.metrics_port, self._settings.accepted_host_names
            )
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve the metrics on {self._settings.host}:{self._settings.metrics_port} (METRICS_PORT): {exc}"
            ) from exc
        log.info(
            "metrics at http://%s:%d%s", self._settings.host, self._settings.metrics_port, metrics_files.METRICS_PATH
        )
        # One try here, so a missing agent never holds up the boot; the keeper retries with backoff.
        if not registration.register(self._settings):
            log.error("not registered with Consul at %s yet; retrying in the background", self._settings.consul.url)
        self._keeper.start()
        # gunicorn has no hooks around its signals; the arbiter looks up handle_<signal> on itself and calls
        # it from its main loop (not in a signal handler), so these replace its methods on this instance.
        server.handle_term = self._handle_term
        server.handle_int = self._quick_stop("INT")
        server.handle_quit = self._quick_stop("QUIT")
        server.handle_hup = self._handle_hup
        server.handle_usr2 = self._handle_usr2

    def leave(self) -> None:
        """Stop taking work, then leave Consul. Once; every way out of the master ends here."""
        if self._left:
            return
        self._left = True
        if not self._intake.close():
            log.warning(
                "a take from the queue did not end within %.0f s (a worker busy in it); leaving Consul anyway",
                INTAKE_CLOSE_TIMEOUT,
            )
        self._keeper.stop()
        registration.deregister(self._settings)

    def stop_serving_metrics(self) -> None:
        """After the workers stopped (`on_exit`): nothing is left to count."""
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None

    def _handle_term(self) -> None:
        log.info("SIGTERM: leaving Consul, draining for %.1f s before the workers stop", self._settings.drain_seconds)
        self.leave()
        time.sleep(self._settings.drain_seconds)
        self._graceful_stop()

    def _quick_stop(self, name: str) -> Callable[[], None]:
        def handle() -> None:
            log.info("SIG%s: leaving Consul, then stopping the workers at once", name)
            self.leave()
            self._quick_stops[name]()

        return handle

    def _handle_hup(self) -> None:
        log.info(
            "SIGHUP: reloading the configuration and replacing the workers; %s stays registered "
            "(what the old workers held in memory is gone)",
            self._settings.instance_id,
        )
        self._reload()

    def _handle_usr2(self) -> None:
        log.error(
            "refusing USR2: a second master would serve %s under the same Consul id, and the first "
            "one to exit would deregister both. To run new code, SIGTERM this instance and start it "
            "again, or start a new instance on another port first",
            self._settings.instance_id,
        )


_MASTER_KEY = "servicekit_master"


def registration_hooks(settings: Settings):
    """`when_ready` and `on_exit` for a service's gunicorn.conf.py.

    They build nothing when the config file runs: gunicorn runs it again on every HUP, and a keeper or
    client made there would be a second one.
    """

    def when_ready(server) -> None:
        metrics_files.reset()  # before the first worker forks
        metrics.observe_start()
        master = _Master(server, settings)
        setattr(server, _MASTER_KEY, master)
        master.start(server)

    def on_exit(server) -> None:
        master = getattr(server, _MASTER_KEY, None)
        if master is not None:
            master.leave()
            master.stop_serving_metrics()
        metrics_files.remove()

    return when_ready, on_exit


# How long a new worker waits for its Hazelcast connection before it takes requests. Bounded, so a
# missing cluster never holds up the boot; the worker then answers 503 until the client connects.
WORKER_READY_TIMEOUT = 10.0
WORKER_READY = "worker ready: taking requests"
# How long a new worker waits for its live configuration (servicekit.live_config): without it, a worker that
# a HUP or a crash replaced would serve its first requests with the environment's values, not KV's.
LIVE_CONFIG_READY_TIMEOUT = 2.0


def post_worker_init(worker) -> None:
    """Hold a new worker back from the shared socket until it can serve.

    /health reaches one worker at random; without this, Consul could see one ready worker pass the
    check while its sibling is still connecting and would answer the next request with a 503.
    """
    # A terminal's Ctrl-C reaches every process of the group; the master stops this worker after it
    # left Consul (with SIGQUIT), so the worker must not stop first on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hz = getattr(worker.wsgi, "extensions", {}).get("hazelcast")
    if hz is not None and not hz.wait_connected(WORKER_READY_TIMEOUT):
        log.warning("not connected to Hazelcast after %.0f s; serving 503s until it is", WORKER_READY_TIMEOUT)
    live = getattr(worker.wsgi, "extensions", {}).get("live_config")
    if live is not None and not live.wait_loaded(LIVE_CONFIG_READY_TIMEOUT):
        log.warning(
            "no answer from Consul KV after %.0f s; serving with the start values until then", LIVE_CONFIG_READY_TIMEOUT
        )
    log.info(WORKER_READY)


def worker_exit(server, worker) -> None:
    """Close what the app opened in this worker (Hazelcast client, consumer thread, watches)."""
    app = getattr(worker, "wsgi", None)
    if app is not None:
        close_app(app)


def for_service(
    service_name: str,
    default_port: int,
    wsgi_app: str,
    settings_class: type[Settings] = Settings,
    behind_front_door: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Every setting of one service's gunicorn.conf.py: the shared ones (servicekit.gunicorn_config) and the
    hooks of this module. Each service's file is a few lines:

        globals().update(gunicorn_hooks.for_service(SERVICE_NAME, DEFAULT_PORT, wsgi_app="facade:create_app()"))

    gunicorn reads its settings from the names the config file defines, so the file takes them from here. The
    service's own settings class reads the environment here too, so a bad value stops the master before any
    worker. Behind the front door (the facade), the instance still registers PORT, nginx's: see
    stackctl/front_door.py."""
    settings = settings_class.from_env(service_name, default_port)
    metrics_files.use(settings)  # before anything imports prometheus_client (see servicekit/metrics_files.py)
    when_ready, on_exit = registration_hooks(settings)
    return {
        **gunicorn_config.base(settings, behind_front_door),
        "settings": settings,
        "wsgi_app": wsgi_app,
        "when_ready": when_ready,
        "on_exit": on_exit,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "child_exit": metrics_files.child_exit,
        **overrides,
    }
