"""messages_svc: a competing consumer of the Hazelcast queue that keeps what it took in memory."""

from __future__ import annotations

from flask import Flask

from servicekit import stack
from servicekit.gunicorn_hooks import intake
from servicekit.hz import Hazelcast
from servicekit.lifecycle import on_shutdown
from servicekit.web import configure_app

from .consumer import Consumer, MessageStore, structures
from .routes import bp
from .settings import MessagesSettings

SERVICE_NAME = "messages-service"
# Its default port is in conf/stack.env, with the other ports of the stack; PORT overrides it.
PORT_NAME = "MESSAGES_PORT"


def create_app(settings: MessagesSettings | None = None, consume: bool = True) -> Flask:
    """`consume=False` builds the app without Hazelcast, for unit tests of the routes."""
    settings = settings or MessagesSettings.from_env(SERVICE_NAME, stack.port(PORT_NAME))
    app = Flask(__name__)
    configure_app(app, settings)
    store = MessageStore(settings.messages_kept)
    app.extensions["message_store"] = store
    if consume:
        # Closed in reverse (servicekit.lifecycle.shutdown_stack): the consumer stops before the client
        # goes away, so no item is taken and then dropped.
        hz = Hazelcast(settings, structures).start()
        on_shutdown(app, hz.close)
        # The intake is the master's (shared across fork): it closes it before the instance leaves Consul.
        consumer = Consumer(hz, store, intake()).start()
        on_shutdown(app, consumer.stop)
        app.extensions["consumer"] = consumer
        app.extensions["hazelcast"] = hz
    app.register_blueprint(bp)
    return app
