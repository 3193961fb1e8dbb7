"""gunicorn settings for logging_svc. Run: gunicorn -c logging_svc/gunicorn.conf.py (PORT picks the port)."""

from logging_svc import PORT_NAME, SERVICE_NAME
from logging_svc.settings import LoggingSettings
from servicekit import gunicorn_hooks, stack

globals().update(
    gunicorn_hooks.for_service(
        SERVICE_NAME, stack.port(PORT_NAME), wsgi_app="logging_svc:create_app()", settings_class=LoggingSettings
    )
)
