"""logging_svc: keeps uuid -> message in a Hazelcast distributed map."""

from __future__ import annotations

from flask import Flask

from servicekit import live_config, stack
from servicekit.consul_client import make_consul
from servicekit.hz import Hazelcast
from servicekit.lifecycle import on_shutdown
from servicekit.web import configure_app

from .routes import bp
from .settings import LoggingSettings
from .store import HazelcastMessageLog, MessageLog, structures

SERVICE_NAME = "logging-service"
# Its default port is in conf/stack.env, with the other ports of the stack; PORT overrides it.
PORT_NAME = "LOGGING_PORT"


def create_app(settings: LoggingSettings | None = None, message_log: MessageLog | None = None) -> Flask:
    settings = settings or LoggingSettings.from_env(SERVICE_NAME, stack.port(PORT_NAME))
    app = Flask(__name__)
    configure_app(app, settings)
    if message_log is None:
        hz = Hazelcast(settings, structures).start()
        on_shutdown(app, hz.close)
        app.extensions["hazelcast"] = hz
        message_log = HazelcastMessageLog(hz, settings.log_capacity_bytes)
        # Shutdown runs in reverse: the last count goes out before the client closes.
        message_log.size.start()
        on_shutdown(app, message_log.size.close)
        # The facade's limit follows config/limits/max-message-chars; so does this one, or a raised limit
        # would reach the facade and be refused here (502).
        live = live_config.LiveConfig(
            make_consul(settings.consul), [live_config.message_limit(app, settings.max_body_bytes)]
        ).start()
        on_shutdown(app, live.stop)
        app.extensions["live_config"] = live
    app.extensions["message_log"] = message_log
    app.register_blueprint(bp)
    return app
