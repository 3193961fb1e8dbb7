"""gunicorn settings for messages_svc. Run: gunicorn -c messages_svc/gunicorn.conf.py (PORT picks the port)."""

from messages_svc import PORT_NAME, SERVICE_NAME
from messages_svc.settings import MessagesSettings
from servicekit import gunicorn_hooks, stack

globals().update(
    gunicorn_hooks.for_service(
        SERVICE_NAME,
        stack.port(PORT_NAME),
        wsgi_app="messages_svc:create_app()",
        settings_class=MessagesSettings,
        # Exactly one worker: the consumed messages live in this process's memory, and a second worker
        # would hold a different half of them. Threads serve concurrent GETs.
        workers=1,
    )
)
