"""facade: the client-facing service. Logs each message through logging_svc and queues it for messages_svc."""

from __future__ import annotations

from flask import Flask

from servicekit import live_config, metrics, stack
from servicekit.consul_client import make_consul
from servicekit.hz import INVOCATION_TIMEOUT, Hazelcast, Structures
from servicekit.kvconfig import SharedConfig
from servicekit.lifecycle import on_shutdown
from servicekit.web import configure_app
from upstream import balancing
from upstream.watch import Discovery

from .backends import LOGGING_SERVICE, MESSAGES_SERVICE, Backends
from .idempotency import AnswerStore, answers_map_name
from .routes import bp
from .settings import FacadeSettings

SERVICE_NAME = "facade-service"
# Its default port is in conf/stack.env, with the other ports of the stack; PORT overrides it.
PORT_NAME = "FACADE_PORT"


def structures(shared: SharedConfig) -> Structures:
    """The facade's Hazelcast structures, made once its client is connected: the queue it offers to and the
    Idempotency-Key answers."""
    return Structures(maps=(answers_map_name(shared),), queues=(shared.queue_name,))


def create_app(settings: FacadeSettings | None = None, hz: Hazelcast | None = None) -> Flask:
    settings = settings or FacadeSettings.from_env(SERVICE_NAME, stack.port(PORT_NAME))
    app = Flask(__name__)
    configure_app(app, settings)
    if hz is None:
        hz = Hazelcast(settings, structures).start()
        on_shutdown(app, hz.close)
    backends: Backends

    def heard(service: str, instances: int, answered: bool, registered: frozenset[str] | None) -> None:
        metrics.observe_watch(service, instances, answered, registered)
        if registered is not None:
            backends.caller.forget_gone(service, registered)

    # Started here, in the worker (threads do not survive gunicorn's fork), once the backends that it tells
    # which instances left Consul exist.
    discovery = Discovery(make_consul(settings.consul), [LOGGING_SERVICE, MESSAGES_SERVICE], observe=heard)
    backends = Backends(settings, discovery, hz)
    discovery.start()
    on_shutdown(app, backends.close)
    live = live_config.LiveConfig(
        make_consul(settings.consul),
        [
            live_config.message_limit(app, settings.max_body_bytes),
            balancing.live_policy(backends.caller.use_policy, start=settings.lb_policy),
        ],
    ).start()
    on_shutdown(app, live.stop)
    app.extensions["live_config"] = live
    app.extensions["hazelcast"] = hz
    app.extensions["backends"] = backends
    # A claim outlives the longest request (the log call's deadline, then a few Hazelcast calls).
    lease = settings.request_deadline + 4 * INVOCATION_TIMEOUT
    app.extensions["answers"] = AnswerStore(hz, settings.idempotency_window, lease)
    app.register_blueprint(bp)
    return app
